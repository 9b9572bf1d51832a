//! The supervisor as a Kubernetes DRA driver on its node (`[kubernetes]`, off by default).
//!
//! Kubernetes keeps the cluster's books: the scheduler places claims against the capacity
//! each node publishes and keeps the sum of what it allocated under it. What it cannot know
//! is whether the bytes of a finished pod really came back, whether a pod uses more than it
//! claimed, or what a process outside any claim holds. Arbiter knows those on the node, so
//! the driver is the ledger's edge towards the cluster:
//!
//! - [`slices`] publishes one device per GPU with a `memory` capacity of what the ledger can
//!   lend (its budget, less the holders that are not claims and the bytes not yet seen back);
//! - [`node`] serves the kubelet's DRA service: Prepare takes a lease for each allocated
//!   device of a claim, charged to the processes of the claim's pods by cgroup
//!   (`lease::scope`), and hands the containers a CDI device ([`cdi`]); Unprepare gives the
//!   lease back and answers only once the card shows the memory free (or its bound passed:
//!   then the bytes stay out of what is published and an event on the claim says so);
//! - [`registration`] tells the kubelet's plugin watcher where the DRA service is.
//!
//! Prepared claims are kept on disk ([`records`]) so a restarted supervisor takes their
//! leases again. This module may use everything below `rpc` in the supervisor's layers;
//! nothing below it knows Kubernetes.

mod api;
pub mod cdi;
pub mod claim;
mod node;
pub mod quantity;
mod records;
mod registration;
mod slices;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arbiter::auth::{Authorize, Caller, Identity, Tokens};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use api::Api;
use claim::{Allocation, ClaimError};

use crate::config::{Config, KubernetesConfig};
use crate::gpu::Inventory;
use crate::lease::broker::{Broker, Holding, Note};
use crate::lease::scope::PodScope;
use crate::lease::{
    Ask, Form, GpuChoice, Lease, Peer, Priority, ReleaseReason, ReloadCost, WaitEnd,
};

/// Why the Kubernetes mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("kubernetes: this node's name is unknown: set kubernetes.node_name or NODE_NAME")]
    NoNode,
    #[error("kubernetes: cannot reach the API server: {0}")]
    Kubeconfig(String),
    #[error("kubernetes: {0}")]
    Listen(#[from] arbiter::listen::ListenError),
    #[error("kubernetes: cannot use the state directory {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why one claim could not be prepared: the text goes to the kubelet, which retries.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("cannot read the claim {namespace}/{name} from the API server: {reason}")]
    Api {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error(transparent)]
    Claim(#[from] ClaimError),
    #[error("GPU {gpu}: {bytes} for the claim: {reason}")]
    Lease {
        gpu: u32,
        bytes: arbiter::ByteSize,
        reason: String,
    },
    #[error("cannot write the claim's {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

/// A device of a prepared claim, as the kubelet is told of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedDevice {
    pub request: String,
    pub pool: String,
    pub device: String,
    pub cdi_ids: Vec<String>,
}

/// How an Unprepare went.
#[derive(Clone, Debug)]
pub struct Unprepared {
    pub took: Duration,
    /// False when the bound passed with bytes still in use: they stay out of the budget.
    pub complete: bool,
}

/// A claim prepared on this node.
struct Live {
    allocation: Allocation,
    /// The pod scope its leases are charged through.
    key: u32,
    held: Vec<(Holding, Lease)>,
    devices: Vec<PreparedDevice>,
}

pub struct Plugin {
    settings: KubernetesConfig,
    node: String,
    broker: Arc<Broker>,
    inventory: Arc<dyn Inventory>,
    api: Api,
    records: records::Records,
    /// The simulated GPU's process table, passed to the containers (simulated GPUs only).
    simulated_dir: Option<PathBuf>,
    return_poll: Duration,
    /// One lock per claim, so Prepare and Unprepare of one claim never interleave while
    /// different claims wait for their leases at once.
    claims: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Live>>>>>,
    /// Wakes the slice publisher: the claims changed.
    changed: Notify,
}

/// Starts the plugin: the API client, the claims kept from before a restart, the DRA and
/// registration sockets and the slice publisher. Resolves when `stop` is cancelled and all
/// of it has stopped.
pub async fn start(
    config: &Config,
    broker: &Arc<Broker>,
    inventory: &Arc<dyn Inventory>,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, KubernetesError> {
    let settings = config.kubernetes.clone();
    let node = settings.node().ok_or(KubernetesError::NoNode)?;
    let api = Api::connect(&settings, &node).await?;
    let state = config.state_dir();
    let records = records::Records::open(&state).map_err(|source| KubernetesError::State {
        path: state.clone(),
        source,
    })?;
    let plugin = Arc::new(Plugin {
        settings: settings.clone(),
        node,
        broker: Arc::clone(broker),
        inventory: Arc::clone(inventory),
        api,
        records,
        simulated_dir: inventory.simulated().then(|| config.simulated_dir()),
        return_poll: config.gpu.return_poll,
        claims: Mutex::new(HashMap::new()),
        changed: Notify::new(),
    });
    for allocation in plugin.records.load() {
        let plugin = Arc::clone(&plugin);
        tokio::spawn(async move { plugin.restore(allocation).await });
    }
    let dra_path = settings.plugin_dir().join("dra.sock");
    let registration_path = settings
        .registry_dir
        .join(format!("{}-reg.sock", settings.driver));
    // The DRA service first: the kubelet dials it as soon as it sees the registration.
    let dra = socket(&dra_path).bind()?;
    let registration = socket(&registration_path).bind()?;
    let layer = || arbiter::auth::AuthLayer::new(Tokens::default(), Arc::new(KubeletOnly));
    let dra_router = tonic::transport::Server::builder()
        .layer(layer())
        .add_service(node::server(Arc::clone(&plugin)));
    let registration_router = tonic::transport::Server::builder()
        .layer(layer())
        .add_service(registration::server(&settings.driver, &dra_path));
    tracing::info!(
        driver = %settings.driver,
        node = %plugin.node,
        dra = %dra_path.display(),
        registration = %registration_path.display(),
        "serving the kubelet as a DRA driver"
    );
    let publisher = tokio::spawn(slices::publish(Arc::clone(&plugin), stop.clone()));
    Ok(tokio::spawn(async move {
        let (a, b) = tokio::join!(
            arbiter::listen::serve(dra_router, dra, None, stop.clone()),
            arbiter::listen::serve(registration_router, registration, None, stop.clone()),
        );
        for result in [a, b] {
            if let Err(error) = result {
                tracing::error!(%error, "a kubelet plugin socket stopped serving");
            }
        }
        let _ = publisher.await;
        // Gone sockets tell the kubelet the plugin is gone.
        for path in [&registration_path, &dra_path] {
            let _ = std::fs::remove_file(path);
        }
    }))
}

fn socket(path: &std::path::Path) -> arbiter::listen::UnixSocket {
    arbiter::listen::UnixSocket {
        path: path.to_path_buf(),
        // The kubelet runs as root; nobody else has business here.
        mode: 0o600,
        group: None,
    }
}

/// Only root (the kubelet) and the supervisor's own user may call the plugin's services.
struct KubeletOnly;

impl Authorize for KubeletOnly {
    fn authorize(&self, identity: Identity, method: &str) -> Result<Caller, tonic::Status> {
        let me = nix::unistd::geteuid().as_raw();
        match identity {
            Identity::Unix { uid, .. } if uid == 0 || uid == me => Ok(Caller {
                identity,
                operator: true,
                rate: None,
            }),
            other => Err(tonic::Status::permission_denied(format!(
                "{other} may not call {method}: the DRA plugin answers the kubelet (root) only"
            ))),
        }
    }
}

impl Plugin {
    fn entry(&self, uid: &str) -> Arc<tokio::sync::Mutex<Option<Live>>> {
        let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(claims.entry(uid.to_string()).or_default())
    }

    fn forget_entry(&self, uid: &str) {
        let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = claims.get(uid)
            && entry.try_lock().is_ok_and(|live| live.is_none())
        {
            claims.remove(uid);
        }
    }

    /// Prepares claim `namespace/name` (`uid`): its devices, the same for a claim already
    /// prepared (whose pods are read again: a shared claim may serve one more).
    pub async fn prepare(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<Vec<PreparedDevice>, PrepareError> {
        let entry = self.entry(uid);
        let mut slot = entry.lock().await;
        let object = self
            .api
            .claim(namespace, name)
            .await
            .map_err(|e| PrepareError::Api {
                namespace: namespace.into(),
                name: name.into(),
                reason: e.to_string(),
            })?;
        let allocation = claim::allocation(
            &object,
            uid,
            &self.settings.driver,
            &self.node,
            self.broker.gpus().len(),
        )?;
        if let Some(live) = slot.as_mut() {
            if live.allocation.pods != allocation.pods {
                self.broker.set_scope(
                    live.key,
                    PodScope {
                        pods: allocation.pods.clone(),
                    },
                );
                live.allocation.pods = allocation.pods.clone();
                self.save(&live.allocation)?;
            }
            return Ok(live.devices.clone());
        }
        let live = self.take(allocation, self.settings.prepare_timeout).await?;
        let devices = live.devices.clone();
        *slot = Some(live);
        drop(slot);
        self.changed.notify_one();
        Ok(devices)
    }

    /// Takes the leases of `allocation`, writes its CDI spec and its record.
    async fn take(&self, allocation: Allocation, wait: Duration) -> Result<Live, PrepareError> {
        let key = self.broker.scope(PodScope {
            pods: allocation.pods.clone(),
        });
        let mut held = Vec::new();
        for share in &allocation.shares {
            match self.lease(&allocation, share, key, wait).await {
                Ok(pair) => held.push(pair),
                Err(error) => {
                    self.give_back(held, key);
                    return Err(error);
                }
            }
        }
        match self.write_out(&allocation, &held) {
            Ok(devices) => Ok(Live {
                allocation,
                key,
                held,
                devices,
            }),
            Err(error) => {
                self.give_back(held, key);
                let _ = cdi::remove(&self.settings.cdi_dir, &allocation.uid);
                Err(error)
            }
        }
    }

    /// Nothing half-prepared: what a failed Prepare was granted goes back.
    fn give_back(&self, held: Vec<(Holding, Lease)>, key: u32) {
        for (holding, _) in held {
            holding.end(ReleaseReason::Released);
        }
        self.broker.unpin_scope(key);
    }

    async fn lease(
        &self,
        allocation: &Allocation,
        share: &claim::Share,
        key: u32,
        wait: Duration,
    ) -> Result<(Holding, Lease), PrepareError> {
        let refused = |reason: String| PrepareError::Lease {
            gpu: share.gpu,
            bytes: arbiter::ByteSize(share.bytes),
            reason,
        };
        let ask = Ask {
            holder: format!("claim {}/{}", allocation.namespace, allocation.name),
            gpu: GpuChoice::Index(share.gpu),
            bytes: share.bytes,
            // The scheduler already placed the claim: it waits behind nobody it need not.
            priority: Priority::Interactive,
            // A pod cannot give memory back on request.
            preemptible: false,
            reload: ReloadCost::default(),
            max_wait: Some(wait),
            form: Form::Stream,
            peer: Some(Peer { pid: key, uid: 0 }),
            owner: format!("claim:{}", allocation.uid),
            quota: None,
        };
        let mut holding = self.broker.hold(ask).map_err(|e| refused(e.to_string()))?;
        let granted = tokio::time::timeout(wait + Duration::from_secs(1), async {
            loop {
                match holding.notes.recv().await {
                    Some(Note::Granted(lease)) => return Ok(lease),
                    Some(Note::Queued { .. }) | Some(Note::Reclaim(_)) => continue,
                    Some(Note::WaitEnded {
                        reason: WaitEnd::DeadlineExceeded,
                        waited,
                    }) => {
                        return Err(format!(
                            "not free after {}: the node's memory is held outside the claims the scheduler knows, or still on its way back from a finished pod; the kubelet will retry",
                            humantime::format_duration(Duration::from_millis(waited.as_millis() as u64))
                        ));
                    }
                    Some(Note::WaitEnded { reason, .. }) => return Err(reason.as_str().to_string()),
                    Some(Note::Revoked { reason, .. }) => return Err(reason),
                    None => return Err("the supervisor is shutting down".into()),
                }
            }
        })
        .await
        .unwrap_or_else(|_| Err("no answer from the ledger in time".into()));
        match granted {
            Ok(lease) => {
                tracing::info!(claim = %allocation.uid, lease = %lease.id, gpu = lease.gpu, bytes = %arbiter::ByteSize(lease.bytes), "claim's lease granted");
                Ok((holding, lease))
            }
            Err(reason) => Err(refused(reason)),
        }
    }

    /// The CDI spec and the record of a claim whose leases are held; its devices.
    fn write_out(
        &self,
        allocation: &Allocation,
        held: &[(Holding, Lease)],
    ) -> Result<Vec<PreparedDevice>, PrepareError> {
        let uuids: Vec<String> = held
            .iter()
            .map(|(_, lease)| self.broker.gpus()[lease.gpu as usize].uuid.clone())
            .collect();
        use arbiter::leased;
        let ids: Vec<&str> = held.iter().map(|(_, l)| l.id.as_str()).collect();
        let mut env = vec![
            format!("{}={}", leased::VISIBLE_DEVICES, uuids.join(",")),
            format!("{}={}", leased::LEASE_ID, ids.join(",")),
            format!("{}={}", leased::LEASE_BYTES, held[0].1.bytes),
            format!("{}={}", leased::CLAIM_UID, allocation.uid),
        ];
        if let Some(dir) = &self.simulated_dir {
            env.push(format!("{}={}", arbiter::simulated::DIR_ENV, dir.display()));
            env.push(format!(
                "{}={}",
                arbiter::simulated::INDEX_ENV,
                held[0].1.gpu
            ));
        }
        let ours = cdi::write(&self.settings.cdi_dir, &allocation.uid, &env).map_err(|source| {
            PrepareError::Io {
                what: "CDI spec",
                source,
            }
        })?;
        self.save(allocation)?;
        let nvidia = !self.settings.nvidia_cdi_kind.is_empty() && self.simulated_dir.is_none();
        Ok(allocation
            .shares
            .iter()
            .zip(&uuids)
            .enumerate()
            .map(|(i, (share, uuid))| {
                let mut cdi_ids = Vec::new();
                // Arbiter's device once per claim: its edits cover every GPU of the claim.
                if i == 0 {
                    cdi_ids.push(ours.clone());
                }
                if nvidia {
                    cdi_ids.push(format!("{}={uuid}", self.settings.nvidia_cdi_kind));
                }
                PreparedDevice {
                    request: share.request.clone(),
                    pool: self.node.clone(),
                    device: share.device.clone(),
                    cdi_ids,
                }
            })
            .collect())
    }

    fn save(&self, allocation: &Allocation) -> Result<(), PrepareError> {
        self.records
            .save(allocation)
            .map_err(|source| PrepareError::Io {
                what: "record",
                source,
            })
    }

    /// A claim prepared before a restart: its leases again, as long as it takes (the pods
    /// run; until then their memory counts as foreign, which keeps it out of every budget).
    async fn restore(self: Arc<Self>, allocation: Allocation) {
        let uid = allocation.uid.clone();
        let entry = self.entry(&uid);
        let mut slot = entry.lock().await;
        if slot.is_some() {
            return;
        }
        let wait = self.broker.limits().max_wait;
        match self.take(allocation, wait).await {
            Ok(live) => {
                tracing::info!(claim = %uid, "prepared claim restored after a restart");
                *slot = Some(live);
                self.changed.notify_one();
            }
            Err(error) => {
                tracing::error!(claim = %uid, %error, "cannot restore a prepared claim; its record is kept")
            }
        }
    }

    /// Unprepares claim `uid`: its leases go back, and this resolves once the card shows
    /// their memory free, or the bound passed (the bytes then stay out of the budget).
    /// A claim not prepared here is fine: the kubelet retries Unprepare.
    pub async fn unprepare(&self, uid: &str) -> Unprepared {
        let start = Instant::now();
        let entry = self.entry(uid);
        let mut slot = entry.lock().await;
        let Some(live) = slot.take() else {
            drop(slot);
            let _ = cdi::remove(&self.settings.cdi_dir, uid);
            let _ = self.records.remove(uid);
            self.forget_entry(uid);
            return Unprepared {
                took: start.elapsed(),
                complete: true,
            };
        };
        let ids: HashSet<String> = live.held.iter().map(|(_, l)| l.id.clone()).collect();
        let gpus: BTreeSet<u32> = live.held.iter().map(|(_, l)| l.gpu).collect();
        for (holding, _) in live.held {
            holding.end(ReleaseReason::Released);
        }
        self.broker.unpin_scope(live.key);
        self.changed.notify_one();
        let deadline = start + self.settings.unprepare_timeout;
        let complete = loop {
            let pending = self
                .broker
                .returns()
                .iter()
                .any(|(ret, _)| ids.contains(&ret.lease_id));
            if !pending {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            for &gpu in &gpus {
                let inventory = Arc::clone(&self.inventory);
                let taken_at = Instant::now();
                if let Ok(Ok(sample)) =
                    tokio::task::spawn_blocking(move || inventory.sample(gpu)).await
                {
                    self.broker.observe(gpu, sample, taken_at);
                }
            }
            tokio::time::sleep(self.return_poll).await;
        };
        let took = start.elapsed();
        if complete {
            tracing::info!(claim = %uid, took = ?took, "claim unprepared: its memory is back");
        } else {
            let message = format!(
                "the pod's GPU memory was not free {} after its claim ended: the bytes stay out of what this node offers until the card shows them free",
                humantime::format_duration(self.settings.unprepare_timeout)
            );
            tracing::warn!(claim = %uid, "{message}");
            self.api
                .warn(&live.allocation, "MemoryNotReturned", &message)
                .await;
        }
        let _ = cdi::remove(&self.settings.cdi_dir, uid);
        if let Err(error) = self.records.remove(uid) {
            tracing::warn!(claim = %uid, %error, "cannot remove the claim's record");
        }
        drop(slot);
        self.forget_entry(uid);
        self.changed.notify_one();
        Unprepared { took, complete }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_and_our_own_user_may_call_the_plugin() {
        let unix = |uid| Identity::Unix {
            uid,
            gid: uid,
            pid: Some(1),
        };
        let method = "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources";
        assert!(KubeletOnly.authorize(unix(0), method).is_ok());
        let me = nix::unistd::geteuid().as_raw();
        assert!(KubeletOnly.authorize(unix(me), method).is_ok());
        let stranger = if me == 4242 { 4243 } else { 4242 };
        let refused = KubeletOnly.authorize(unix(stranger), method).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused.message().contains("kubelet"),
            "{}",
            refused.message()
        );
        for other in [Identity::Token("ci".into()), Identity::InsecureTcp] {
            assert!(KubeletOnly.authorize(other, method).is_err());
        }
    }
}
