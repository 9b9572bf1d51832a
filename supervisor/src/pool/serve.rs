//! The pool's Unix socket: one [`arbiter::pool::Ask`] per connection, answered with the
//! file's sealed memfd (SCM_RIGHTS) or a refusal that says why.
//!
//! Not gRPC: descriptors travel only as ancillary data of a Unix socket message. The socket
//! has the supervisor socket's mode and group, so whoever may hold leases may map weights;
//! what they get is read-only and limited to the files the pool serves.

use std::sync::Arc;
use std::time::Duration;

use arbiter::pool::{Answer, Ask};
use tokio::io::AsyncBufReadExt;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::Pool;

/// The longest ask read (a path).
const MAX_ASK: u64 = 16 << 10;
/// How long a client may take to send its ask.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers asks on `listener` until `stop`.
pub async fn run(pool: Arc<Pool>, listener: UnixListener, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(answer(Arc::clone(&pool), stream));
            }
            Err(error) => {
                tracing::warn!(%error, "the pool's socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(pool: Arc<Pool>, stream: UnixStream) {
    let mut reader = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    let read = tokio::time::timeout(ASK_TIMEOUT, async {
        use tokio::io::AsyncReadExt;
        (&mut reader).take(MAX_ASK).read_line(&mut line).await
    })
    .await;
    let (reply, filled) = match read {
        Ok(Ok(_)) => decide(&pool, &line).await,
        Ok(Err(error)) => {
            tracing::debug!(%error, "pool ask: read failed");
            return;
        }
        Err(_) => (refused(format!("no ask within {ASK_TIMEOUT:?}")), None),
    };
    let Ok(stream) = reader.into_inner().into_std() else {
        return;
    };
    let _ = stream.set_nonblocking(false);
    let sent = tokio::task::spawn_blocking(move || {
        arbiter::pool::answer(&stream, &reply, filled.as_ref().map(|f| f.fd()))
    })
    .await;
    if let Ok(Err(error)) = sent {
        tracing::debug!(%error, "pool answer not delivered");
    }
}

/// The answer to one ask line, and the file to send with it.
async fn decide(pool: &Pool, line: &str) -> (Answer, Option<Arc<super::Filled>>) {
    let ask = match serde_json::from_str::<Ask>(line.trim_end()) {
        Ok(ask) => ask,
        Err(error) => {
            return (
                refused(format!(
                    "an ask that does not parse ({error}): send {{\"path\": \"/absolute/file\"}} and a newline"
                )),
                None,
            );
        }
    };
    match pool.get(&ask.path).await {
        Ok(filled) => {
            // The grant names the path as asked, which the client compares with its own.
            let grant = arbiter::pool::Grant {
                path: ask.path,
                ..filled.grant().clone()
            };
            (Answer::Granted(grant), Some(filled))
        }
        Err(refusal) => {
            tracing::debug!(path = %ask.path.display(), %refusal, "pool ask refused");
            (refused(refusal.to_string()), None)
        }
    }
}

fn refused(reason: String) -> Answer {
    Answer::Refused { reason }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use super::*;
    use crate::pool::Settings;

    // Multi-threaded: the raw client below reads synchronously while the server answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_maps_the_pooled_bytes_and_is_told_why_when_refused() {
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("w.safetensors");
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::File::create(&weights)
            .unwrap()
            .write_all(&bytes)
            .unwrap();
        let pool = Arc::new(Pool::new(
            Settings {
                budget: 1 << 30,
                threads: 2,
                allow_dirs: vec![],
            },
            [weights.clone()],
        ));
        let socket = dir.path().join("pool.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(run(Arc::clone(&pool), listener, stop.clone()));

        let fetch = |path: std::path::PathBuf| {
            let socket = socket.clone();
            tokio::task::spawn_blocking(move || {
                arbiter::pool::fetch(&socket, &path, Duration::from_secs(5))
            })
        };
        let shared = fetch(weights.clone()).await.unwrap().unwrap();
        assert_eq!(shared.bytes(), &bytes[..]);
        assert_eq!(shared.grant().path, weights);
        // Two clients map the same pages: the second is a hit, not a second fill.
        let again = fetch(weights.clone()).await.unwrap().unwrap();
        assert_eq!(again.bytes(), &bytes[..]);
        assert_eq!((pool.status().fills, pool.status().hits), (1, 1));

        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"no").unwrap();
        let error = fetch(secret).await.unwrap().unwrap_err();
        assert!(
            matches!(&error, arbiter::pool::PoolError::Refused { reason, .. } if reason.contains("not a file this supervisor pools")),
            "{error}"
        );

        // The file replaced on disk after it was pooled: the old copy is stale to a client
        // that checks before the pool does (here: the pool refills on its next ask).
        drop((shared, again));
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&weights, b"new contents").unwrap();
        let fresh = fetch(weights.clone()).await.unwrap().unwrap();
        assert_eq!(fresh.bytes(), b"new contents");

        // Garbage on the socket gets an answer that says what to send.
        let mut raw = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        raw.write_all(b"hello\n").unwrap();
        let mut reply = String::new();
        std::io::Read::read_to_string(&mut raw, &mut reply).unwrap();
        assert!(reply.contains("absolute"), "{reply}");

        stop.cancel();
        server.await.unwrap();
    }
}
