//! Clients of a running service, for scripts and the main job, one module per command of
//! the binary: [`say`] (`arbiter-tts say`) writes what it says to a WAV file;
//! [`lip_sync_command`] (`arbiter-tts lip-sync`) writes a face's mouth frames and says where
//! they were rendered. Both speak over the service's Unix socket; their errors
//! ([`ClientError`]) say what to change, and `main` prints them on stderr before it exits
//! with code 2.

pub mod lip_sync_command;
pub mod say;

use std::path::{Path, PathBuf};

use arbiter::endpoint::{Address, ConnectError, connect};
use arbiter::pb::tts::v1::tts_client::TtsClient;
use tonic::transport::Channel;

/// Why a client command did not do its work.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0} (start it with `arbiter-tts serve`, or give its socket with --socket)")]
    Connect(#[from] ConnectError),
    /// The service answered with an error status: its code and message, as it said them.
    #[error("{:?}: {}", .0.code(), .0.message())]
    Refused(#[from] tonic::Status),
    #[error("cannot read the {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the service sent no render header before the frames: is it an arbiter-tts of this version?"
    )]
    NoRenderHeader,
    #[error("cannot encode the report as JSON: {0}")]
    Report(#[from] serde_json::Error),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// A client of the service listening on `socket`.
async fn tts(socket: &Path) -> Result<TtsClient<Channel>, ClientError> {
    let channel = connect(&Address::unix(socket)).await?;
    Ok(TtsClient::new(channel))
}
