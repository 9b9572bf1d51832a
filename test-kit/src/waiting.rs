//! Bounded waits: every wait in a test has a limit, and says what it waited for when it
//! runs out. Nothing here asserts how fast something happened.

use std::future::Future;
use std::time::{Duration, Instant};

/// Long enough for anything the supervisor should do "soon" on a loaded 2-core machine.
pub const SOON: Duration = Duration::from_secs(10);

/// Awaits `future`, failing the test if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?} {what}"),
    }
}

/// Polls `probe` every 50ms until it returns Some, failing the test after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(value)) = tokio::time::timeout(limit, probe()).await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn eventually_polls_until_the_probe_answers() {
        let calls = AtomicU32::new(0);
        let value = eventually(SOON, "the third call", || async {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            (n == 3).then_some(n)
        })
        .await;
        assert_eq!(value, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for nothing at all")]
    async fn eventually_gives_up_after_its_limit() {
        eventually(Duration::from_millis(120), "nothing at all", || async {
            None::<()>
        })
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 50ms the sleep")]
    async fn within_fails_a_future_that_outlasts_its_limit() {
        assert_eq!(within(SOON, "a ready value", async { 7 }).await, 7);
        within(
            Duration::from_millis(50),
            "the sleep",
            tokio::time::sleep(SOON),
        )
        .await;
    }
}
