//! Living under a lease: the service's GPU memory is held from the supervisor as one
//! streaming lease, re-acquired with backoff whenever it is lost (the supervisor restarted,
//! the lease was revoked). While the service holds no lease, health says NOT_SERVING for
//! the Tts service, so a load balancer stops sending work that would use unleased memory;
//! CPU voices keep answering anyway.
//!
//! The lease asks for the card the models run on ([`crate::card`] settles it before CUDA
//! starts), and its grant completes what the service reports about that card.

use std::time::Duration;

use arbiter::endpoint::{Address, connect};
use arbiter::pb::supervisor::v1 as spb;
use spb::lease_update::Update;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::card::CardState;

/// The service name health reports on.
const SERVICE: &str = "arbiter.tts.v1.Tts";

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub supervisor: Address,
    pub holder: String,
    pub bytes: u64,
    /// The card to ask for: a uuid, an index, or "" (any); see [`crate::card::Plan`].
    pub gpu: String,
    /// Where the service runs, kept current with the lease.
    pub card: CardState,
}

/// Holds the lease until `stop`: acquire, keep, and after a loss re-acquire with a backoff
/// from 250 ms doubling to 5 s.
pub async fn hold(settings: LeaseSettings, health: HealthReporter, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(250);
    loop {
        health
            .set_service_status(SERVICE, ServingStatus::NotServing)
            .await;
        tokio::select! {
            () = stop.cancelled() => return,
            held = once(&settings, &health) => {
                settings.card.lost();
                match held {
                    Ok(()) => {
                        tracing::warn!("the lease ended; acquiring it again");
                        backoff = Duration::from_millis(250);
                    }
                    Err(error) => tracing::warn!(%error, retry_in = ?backoff, "no lease from the supervisor"),
                }
            }
        }
        health
            .set_service_status(SERVICE, ServingStatus::NotServing)
            .await;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One lease, from request to loss. Ok when it was granted and later ended.
async fn once(settings: &LeaseSettings, health: &HealthReporter) -> Result<(), String> {
    let channel = connect(&settings.supervisor)
        .await
        .map_err(|e| e.to_string())?;
    let mut client = spb::supervisor_client::SupervisorClient::new(channel);
    let request = spb::LeaseRequest {
        holder: settings.holder.clone(),
        gpu: settings.gpu.clone(),
        bytes: settings.bytes,
        priority: spb::Priority::Interactive as i32,
        ..Default::default()
    };
    let mut stream = client
        .hold(request)
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    let mut granted = false;
    loop {
        let update = match stream.message().await {
            Ok(Some(update)) => update,
            Ok(None) => break,
            Err(status) if granted => {
                tracing::warn!(code = ?status.code(), message = status.message(), "lease stream ended");
                break;
            }
            Err(status) => return Err(format!("{:?}: {}", status.code(), status.message())),
        };
        match update.update {
            Some(Update::Queued(q)) => {
                tracing::info!(position = q.position, "waiting for GPU memory")
            }
            Some(Update::Granted(lease)) => {
                granted = true;
                tracing::info!(lease = %lease.lease_id, bytes = lease.bytes, gpu = %lease.gpu_uuid, gpu_index = lease.gpu_index, "holding the GPU lease");
                if let Some(warning) = settings.card.granted(&lease) {
                    tracing::warn!("{warning}");
                }
                health
                    .set_service_status(SERVICE, ServingStatus::Serving)
                    .await;
            }
            Some(Update::Reclaim(r)) => {
                // Nothing here is preemptible yet (the lease is not asked as preemptible), so
                // the supervisor should not ask; log it if it does.
                tracing::warn!(bytes = r.bytes, reason = %r.reason, "reclaim requested of a non-preemptible lease");
            }
            Some(Update::Revoked(r)) => {
                tracing::warn!(reason = %r.reason, "lease revoked");
                break;
            }
            None => {}
        }
    }
    if granted {
        Ok(())
    } else {
        Err("the supervisor ended the request before granting it".into())
    }
}
