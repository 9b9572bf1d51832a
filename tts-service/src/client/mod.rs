//! Clients of a running service, for scripts and the main job, one module per command of
//! the binary: [`say`] (`arbiter-tts say`) writes what it says to a WAV file;
//! [`lip_sync_command`] (`arbiter-tts lip-sync`) writes a face's mouth frames and says where
//! they were rendered. Both speak over the service's Unix socket and report gRPC errors as
//! text, which `main` prints on stderr before it exits with code 2.

pub mod lip_sync_command;
pub mod say;

use std::path::Path;

use arbiter::endpoint::{Address, connect};
use arbiter::pb::tts::v1::tts_client::TtsClient;
use tonic::transport::Channel;

/// A client of the service listening on `socket`.
async fn tts(socket: &Path) -> Result<TtsClient<Channel>, String> {
    let channel = connect(&Address::unix(socket))
        .await
        .map_err(|e| e.to_string())?;
    Ok(TtsClient::new(channel))
}

/// A refused or failed call, as the command says it.
fn grpc(status: tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}
