//! One model's own lease: asked for before the model loads, given back after it unloads,
//! so that what the service holds from the supervisor follows what is resident. (The
//! service's own lease, [`crate::lease`], covers only the CUDA context; the lip-sync model
//! has a preemptible lease of its own with a fuller cycle, `lip_sync::residency`.)
//!
//! The lease is a `Hold` stream, so it ends by itself if the service dies. After the grant a
//! task reads the rest of the stream: a revocation or a lost stream fires
//! [`ModelLease::lost`], and the model's owner unloads it (its bytes are no longer leased).

use std::time::Duration;

use arbiter::endpoint::{Address, connect};
use arbiter::pb::supervisor::v1 as spb;
use spb::lease_update::Update;
use spb::supervisor_client::SupervisorClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Why a model got no lease; each message says what to do about it, since a request that
/// needed the model sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseAskError {
    #[error("cannot reach the supervisor at {address} for the model's lease: {detail}")]
    Unreachable { address: String, detail: String },
    #[error("the supervisor refused the model's lease of {bytes} bytes: {detail}")]
    Refused { bytes: u64, detail: String },
    #[error(
        "no GPU memory for the model's lease of {bytes} bytes within {} ms: the card is busy; retry later, or raise --lease-wait",
        waited.as_millis()
    )]
    NoRoom { bytes: u64, waited: Duration },
    #[error("the supervisor ended the model's lease request before granting it")]
    Ended,
}

/// What to ask for.
#[derive(Clone, Debug)]
pub struct Ask {
    pub supervisor: Address,
    pub holder: String,
    pub gpu: String,
    pub bytes: u64,
    pub priority: spb::Priority,
    /// How long to wait in the supervisor's queue.
    pub wait: Duration,
}

/// A granted lease; give it back with [`ModelLease::release`] (dropping it closes the
/// stream, which gives it back too, a little later).
#[derive(Debug)]
pub struct ModelLease {
    pub lease: spb::Lease,
    client: SupervisorClient<Channel>,
    lost: CancellationToken,
    watcher: tokio::task::JoinHandle<()>,
}

impl ModelLease {
    pub async fn acquire(ask: &Ask) -> Result<ModelLease, LeaseAskError> {
        let channel = connect(&ask.supervisor)
            .await
            .map_err(|e| LeaseAskError::Unreachable {
                address: ask.supervisor.to_string(),
                detail: e.to_string(),
            })?;
        let mut client = SupervisorClient::new(channel);
        let request = spb::LeaseRequest {
            holder: ask.holder.clone(),
            gpu: ask.gpu.clone(),
            bytes: ask.bytes,
            priority: ask.priority as i32,
            max_wait: prost_types::Duration::try_from(ask.wait).ok(),
            ..Default::default()
        };
        let mut stream = client
            .hold(request)
            .await
            .map_err(|s| LeaseAskError::Refused {
                bytes: ask.bytes,
                detail: s.message().to_string(),
            })?
            .into_inner();
        let lease = loop {
            match stream.message().await {
                Ok(Some(spb::LeaseUpdate {
                    update: Some(Update::Granted(lease)),
                    ..
                })) => break lease,
                Ok(Some(_)) => continue, // queued: keep waiting
                Ok(None) => return Err(LeaseAskError::Ended),
                Err(status) if status.code() == tonic::Code::DeadlineExceeded => {
                    return Err(LeaseAskError::NoRoom {
                        bytes: ask.bytes,
                        waited: ask.wait,
                    });
                }
                Err(status) => {
                    return Err(LeaseAskError::Refused {
                        bytes: ask.bytes,
                        detail: status.message().to_string(),
                    });
                }
            }
        };
        let lost = CancellationToken::new();
        let watcher = {
            let lost = lost.clone();
            let lease_id = lease.lease_id.clone();
            tokio::spawn(async move {
                loop {
                    match stream.message().await {
                        Ok(Some(spb::LeaseUpdate {
                            update: Some(Update::Revoked(revoked)),
                            ..
                        })) => {
                            tracing::warn!(lease = %lease_id, reason = %revoked.reason, "a model's lease was revoked");
                            break;
                        }
                        Ok(Some(spb::LeaseUpdate {
                            update: Some(Update::Reclaim(reclaim)),
                            ..
                        })) => {
                            // Not asked as preemptible: the supervisor should not ask.
                            tracing::warn!(lease = %lease_id, bytes = reclaim.bytes, "reclaim requested of a model's non-preemptible lease");
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
                lost.cancel();
            })
        };
        Ok(ModelLease {
            lease,
            client,
            lost,
            watcher,
        })
    }

    /// Fires when the lease ends without being released: revoked, or the stream lost.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Gives the lease back; returns the bytes the supervisor says came back.
    pub async fn release(mut self) -> u64 {
        let request = spb::ReleaseRequest {
            lease_id: self.lease.lease_id.clone(),
        };
        match self.client.release(request).await {
            Ok(reply) => reply.into_inner().bytes_returned,
            Err(status) => {
                // The stream closes as this drops, which gives it back anyway.
                tracing::warn!(lease = %self.lease.lease_id, code = ?status.code(), message = status.message(), "Release of a model's lease failed; closing its stream instead");
                self.lease.bytes
            }
        }
    }
}

impl Drop for ModelLease {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}
