//! `arbiter.supervisor.v1.Supervisor`: the lease broker over gRPC.
//!
//! Handlers stay thin: take the caller's identity from the connection, convert and validate
//! the request, call the broker, convert the answer. Errors become statuses in `crate::status`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arbiter::auth::{Caller, Identity};
use arbiter::pb::supervisor::v1 as pb;
use pb::supervisor_server::Supervisor;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::auth::{CallerPolicy, actor, quota};
use super::convert::{self, Via};
use super::until::Until;
use crate::lease::broker::{Broker, Holding, Note};
use crate::lease::events::EventKind;
use crate::lease::{Ask, LeaseError, Peer, WaitEnd};

pub struct SupervisorService {
    broker: Arc<Broker>,
    policy: Arc<CallerPolicy>,
    simulated: bool,
    /// TCP is served in plaintext: `status` says so, as a warning.
    insecure_tcp: bool,
    /// The GPUs' compute gates, for interactive holders to find.
    gates: Arc<crate::compute::Gates>,
    /// MPS's pipe directory, when the supervisor runs MPS.
    mps_pipe_dir: Option<std::path::PathBuf>,
    /// Fires at shutdown, so event feeds end and the server can drain.
    shutdown: CancellationToken,
    /// The weight pool and its socket, when `[pool]` is on.
    pool: Option<(Arc<crate::pool::Pool>, std::path::PathBuf)>,
}

impl SupervisorService {
    pub fn new(
        broker: Arc<Broker>,
        policy: Arc<CallerPolicy>,
        simulated: bool,
        insecure_tcp: bool,
        gates: Arc<crate::compute::Gates>,
        mps_pipe_dir: Option<std::path::PathBuf>,
        shutdown: CancellationToken,
    ) -> SupervisorService {
        SupervisorService {
            broker,
            policy,
            insecure_tcp,
            gates,
            mps_pipe_dir,
            simulated,
            shutdown,
            pool: None,
        }
    }

    /// Reports `pool`, served at `socket`, in GetStatus.
    pub fn with_pool(mut self, pool: Arc<crate::pool::Pool>, socket: std::path::PathBuf) -> Self {
        self.pool = Some((pool, socket));
        self
    }
}

/// The caller's pid and uid when it came over the Unix socket (pid 0 for one in another
/// pid namespace, which the ledger counts by bytes); None over TCP.
fn peer(caller: &Caller) -> Option<Peer> {
    match caller.identity {
        Identity::Unix { uid, pid, .. } => Some(Peer {
            pid: pid.unwrap_or(0),
            uid,
        }),
        _ => None,
    }
}

impl SupervisorService {
    /// A lease request as the broker takes it: validated, with its caller as owner and
    /// the caller's quota.
    fn ask(&self, request: &Request<pb::LeaseRequest>, via: Via) -> Result<Ask, Status> {
        let caller = Caller::of(request)?;
        let limits = self.policy.limits(&caller.identity);
        Ok(convert::ask(
            request.get_ref().clone(),
            &self.broker,
            via,
            peer(&caller),
            caller.owner(),
            Some(quota(&limits)),
        )?)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Supervisor for SupervisorService {
    type HoldStream = BoxStream<pb::LeaseUpdate>;
    type WatchEventsStream = BoxStream<pb::Event>;

    async fn hold(
        &self,
        request: Request<pb::LeaseRequest>,
    ) -> Result<Response<Self::HoldStream>, Status> {
        let ask = self.ask(&request, Via::Hold)?;
        let holding = self.broker.hold(ask)?;
        let stream = HoldStream {
            holding: Some(holding),
            broker: Arc::clone(&self.broker),
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn acquire(
        &self,
        request: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::Lease>, Status> {
        let ask = self.ask(&request, Via::Acquire)?;
        let lease = self.broker.acquire(ask).await?;
        Ok(Response::new(convert::lease(&self.broker, &lease, None)))
    }

    async fn keep_alive(
        &self,
        request: Request<pb::KeepAliveRequest>,
    ) -> Result<Response<pb::Lease>, Status> {
        let actor = actor(&Caller::of(&request)?);
        let lease = self
            .broker
            .keep_alive(&request.into_inner().lease_id, &actor)?;
        Ok(Response::new(convert::lease(&self.broker, &lease, None)))
    }

    async fn shrink(
        &self,
        request: Request<pb::ShrinkRequest>,
    ) -> Result<Response<pb::Lease>, Status> {
        let actor = actor(&Caller::of(&request)?);
        let request = request.into_inner();
        let lease = self
            .broker
            .shrink(&request.lease_id, request.bytes, &actor)?;
        Ok(Response::new(convert::lease(&self.broker, &lease, None)))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseReply>, Status> {
        let actor = actor(&Caller::of(&request)?);
        let bytes_returned = self
            .broker
            .release(&request.into_inner().lease_id, &actor)?;
        Ok(Response::new(pb::ReleaseReply { bytes_returned }))
    }

    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::SupervisorStatus>, Status> {
        let caller = Caller::of(&request)?;
        let (gpus, queue) = self.broker.status();
        let mut returns: Vec<pb::Return> = self
            .broker
            .returns()
            .iter()
            .map(|(ret, waited)| convert::giveback(&self.broker, ret, *waited))
            .collect();
        if !caller.operator {
            // Lease ids are for their owners and operators: an id is all a Release needs.
            for ret in &mut returns {
                ret.lease_id.clear();
            }
        }
        let mut warnings = Vec::new();
        if self.insecure_tcp {
            warnings.push(
                "TCP is served in plaintext (--insecure-tcp): anyone who can reach it acts as `insecure-tcp`, and traffic can be read and changed on the way; set [server.tls]".to_string(),
            );
        }
        Ok(Response::new(pb::SupervisorStatus {
            warnings,
            caller: caller.owner(),
            operator: caller.operator,
            version: env!("CARGO_PKG_VERSION").into(),
            simulated: self.simulated,
            uptime: prost_types::Duration::try_from(self.broker.uptime()).ok(),
            gpus: gpus.into_iter().map(convert::gpu).collect(),
            queue: queue
                .into_iter()
                .map(|w| convert::waiter(&self.broker, w))
                .collect(),
            returns,
            compute_gates: self
                .gates
                .list()
                .into_iter()
                .map(|(gpu_uuid, path)| pb::ComputeGate {
                    gpu_uuid,
                    path: path.display().to_string(),
                })
                .collect(),
            mps_pipe_directory: self
                .mps_pipe_dir
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            weight_pool: self
                .pool
                .as_ref()
                .map(|(pool, socket)| convert::weight_pool(socket, pool.status())),
        }))
    }

    async fn list_leases(
        &self,
        request: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesReply>, Status> {
        let actor = actor(&Caller::of(&request)?);
        let gpu = match self.broker.resolve_gpu(&request.into_inner().gpu)? {
            crate::lease::GpuChoice::Any => None,
            crate::lease::GpuChoice::Index(i) => Some(i),
        };
        let leases = self
            .broker
            .leases(gpu)
            .iter()
            // Only operators see other identities' leases (and so their ids).
            .filter(|(lease, _)| actor.may_act_for(&lease.owner))
            .map(|(lease, process)| convert::lease(&self.broker, lease, process.as_ref()))
            .collect();
        Ok(Response::new(pb::ListLeasesReply { leases }))
    }

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let include_samples = request.into_inner().include_samples;
        let broker = Arc::clone(&self.broker);
        let events = tokio_stream::wrappers::BroadcastStream::new(self.broker.feed().subscribe())
            .filter_map(move |item| match item {
                Ok(event) if !include_samples && matches!(event.kind, EventKind::Sample(_)) => None,
                Ok(event) => Some(Ok(convert::event(&broker, event))),
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(skipped)) => {
                    tracing::warn!(skipped, "an event watcher fell behind; events were skipped");
                    None
                }
            });
        Ok(Response::new(Box::pin(Until::new(
            events,
            self.shutdown.clone(),
        ))))
    }

    async fn ping(&self, _: Request<pb::PingRequest>) -> Result<Response<pb::PingReply>, Status> {
        Ok(Response::new(pb::PingReply {
            version: env!("CARGO_PKG_VERSION").into(),
        }))
    }
}

/// A Hold stream. Dropping it (the client went away, the connection died) ends the
/// request, which is what ties a streaming lease to its holder.
struct HoldStream {
    holding: Option<Holding>,
    broker: Arc<Broker>,
}

impl Stream for HoldStream {
    type Item = Result<pb::LeaseUpdate, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(holding) = self.holding.as_mut() else {
            return Poll::Ready(None);
        };
        let note = match holding.notes.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(note) => note,
        };
        let item = match note {
            Some(Note::WaitEnded { reason, waited }) => {
                self.holding = None;
                let error = match reason {
                    WaitEnd::DeadlineExceeded => LeaseError::DeadlineExceeded {
                        waited: humantime::format_duration(std::time::Duration::from_millis(
                            waited.as_millis() as u64,
                        ))
                        .to_string(),
                    },
                    WaitEnd::Cancelled | WaitEnd::Shutdown => LeaseError::ShuttingDown,
                };
                Err(Status::from(error))
            }
            Some(note @ Note::Revoked { .. }) => {
                // The lease is gone; say why, then end the stream.
                let update = convert::update(&self.broker, note);
                self.holding = None;
                Ok(update)
            }
            Some(note) => Ok(convert::update(&self.broker, note)),
            None => {
                self.holding = None;
                Err(Status::from(LeaseError::ShuttingDown))
            }
        };
        Poll::Ready(Some(item))
    }
}
