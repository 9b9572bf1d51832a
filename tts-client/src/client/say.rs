//! A client of the service for scripts: speak a text, collect the streamed chunks, write
//! one WAV file, and report the time to first audio against the whole.

use std::path::Path;
use std::time::Instant;

use arbiter::pb::tts::v1 as pb;
use arbiter::wav;

use super::ClientError;

/// Speaks `text` with `voice` (empty: the service's default) through the service on
/// `socket`, writes the WAV to `out`, and returns the line the command prints.
pub async fn say(
    socket: &Path,
    text: String,
    voice: String,
    out: &Path,
) -> Result<String, ClientError> {
    let mut client = super::tts(socket).await?;
    let start = Instant::now();
    let mut stream = client
        .synthesize(pb::SynthesizeRequest {
            text,
            voice,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut first = None;
    let mut samples = Vec::new();
    let mut rate = 0;
    let mut chunks = 0;
    while let Some(chunk) = stream.message().await? {
        first.get_or_insert_with(|| start.elapsed());
        rate = chunk.sample_rate;
        chunks += 1;
        samples.extend(
            chunk
                .audio
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]])),
        );
    }
    let total = start.elapsed();
    std::fs::write(out, wav::encode(&samples, rate, 1)).map_err(|source| ClientError::Write {
        path: out.to_path_buf(),
        source,
    })?;
    let seconds = samples.len() as f64 / f64::from(rate.max(1));
    Ok(format!(
        "wrote {} ({seconds:.2} s of audio at {rate} Hz in {chunks} chunks); first audio after {:.0} ms, all after {:.0} ms",
        out.display(),
        first.unwrap_or(total).as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3
    ))
}
