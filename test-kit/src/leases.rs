//! Lease requests and the supervisor's answers: building a request, reading leases and
//! status, and the next update on a Hold stream.

use std::time::Duration;

use arbiter::pb::supervisor::v1 as pb;
use pb::supervisor_client::SupervisorClient;
use tonic::transport::Channel;

use crate::waiting::{eventually, within};

pub type Client = SupervisorClient<Channel>;

/// A lease request with the given holder, GPU and size; everything else default.
pub fn ask(holder: &str, gpu: &str, bytes: u64) -> pb::LeaseRequest {
    pb::LeaseRequest {
        holder: holder.into(),
        gpu: gpu.into(),
        bytes,
        ..Default::default()
    }
}

/// A duration as the wire carries it.
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).expect("a representable duration")
}

/// Waits (up to 10 s) until `holder` holds a lease, and returns it.
pub async fn lease_held_by(client: &Client, holder: &str) -> pb::Lease {
    eventually(
        Duration::from_secs(10),
        &format!("a lease held by {holder}"),
        || {
            let client = client.clone();
            async move {
                leases(&client)
                    .await
                    .into_iter()
                    .find(|l| l.holder == holder)
            }
        },
    )
    .await
}

pub async fn leases(client: &Client) -> Vec<pb::Lease> {
    client
        .clone()
        .list_leases(pb::ListLeasesRequest::default())
        .await
        .expect("ListLeases")
        .into_inner()
        .leases
}

pub async fn status(client: &Client) -> pb::SupervisorStatus {
    client
        .clone()
        .get_status(pb::GetStatusRequest {})
        .await
        .expect("GetStatus")
        .into_inner()
}

pub async fn gpu_status(client: &Client, index: u32) -> pb::GpuStatus {
    status(client)
        .await
        .gpus
        .into_iter()
        .find(|g| g.index == index)
        .unwrap_or_else(|| panic!("GetStatus lists no GPU {index}"))
}

/// Opens a Hold stream for `request`.
pub async fn hold_stream(
    client: &Client,
    request: pb::LeaseRequest,
) -> tonic::Streaming<pb::LeaseUpdate> {
    client
        .clone()
        .hold(request)
        .await
        .expect("Hold")
        .into_inner()
}

/// Some(()) once `holder`'s lease shows its process's use.
pub async fn lease_used(client: &Client, holder: &str) -> Option<()> {
    leases(client)
        .await
        .into_iter()
        .find(|l| l.holder == holder)
        .and_then(|l| l.used_bytes)
        .filter(|&used| used > 0)
        .map(|_| ())
}

/// No update arrives on `stream` within `quiet`.
pub async fn stays_quiet(stream: &mut tonic::Streaming<pb::LeaseUpdate>, quiet: Duration) {
    if let Ok(update) = tokio::time::timeout(quiet, stream.message()).await {
        panic!("expected no update yet, got {update:?}");
    }
}

/// The next update on a Hold stream, failing the test if none comes within 10s.
pub async fn next_update(
    stream: &mut tonic::Streaming<pb::LeaseUpdate>,
) -> Result<Option<pb::lease_update::Update>, tonic::Status> {
    within(
        Duration::from_secs(10),
        "waiting for a lease update",
        async { stream.message().await.map(|m| m.and_then(|m| m.update)) },
    )
    .await
}
