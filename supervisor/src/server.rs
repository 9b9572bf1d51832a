//! Wires the supervisor together and serves it until a shutdown signal.
//!
//! Start-up order matters: the GPUs are sampled once before the socket opens, so the first
//! request already sees foreign use; systemd hears READY only once both listeners accept.
//! Shutdown runs the other way: health says NOT_SERVING, holders are told their leases are
//! revoked, streams end, connections drain (bounded by `shutdown_grace`), the socket goes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arbiter::auth::AuthLayer;
use arbiter::listen::{UnixSocket, bind_tcp_as, reflection, serve};
use arbiter::pb::supervisor::v1::supervisor_server::SupervisorServer;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::config::Config;
use crate::gpu::Inventory;
use crate::job::jobs::Jobs;
use crate::lease::broker::{Broker, Limits};
use crate::lease::events::EventFeed;
use crate::lease::ledger::Policy;
use crate::rpc::auth::CallerPolicy;
use crate::rpc::supervisor::SupervisorService;
use crate::rpc::video::VideoService;
use crate::rpc::worker::WorkerService;
use crate::sampler;
use arbiter::systemd;

pub use arbiter::listen::signals;
use arbiter::pb::video::v1::video_server::VideoServer;
use arbiter::pb::worker::v1::worker_server::WorkerServer;

/// How often the broker's clocks are checked: wait deadlines, TTLs, reclaim deadlines and
/// aging take effect within this much of their time.
const TICK: Duration = Duration::from_millis(50);

/// Why the supervisor could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Listen(#[from] arbiter::listen::ListenError),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Jobs(#[from] crate::job::JobError),
    #[error("{0}")]
    Tokens(#[from] arbiter::auth::tokens::TokensError),
    #[error("{0}")]
    Kubernetes(#[from] crate::kubernetes::KubernetesError),
    #[error("{0} (the [compute] section)")]
    Gate(#[from] arbiter::gate::GateError),
    #[error("{0}")]
    Mps(#[from] crate::compute::mps::MpsError),
    #[error("{0} (the [metrics] section)")]
    Metrics(#[from] arbiter::scrape::ScrapeError),
}

/// Serves until `shutdown` completes.
pub async fn run(
    config: Config,
    inventory: Arc<dyn Inventory>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    config.validate()?;
    let stop = CancellationToken::new();
    let broker = Broker::new(
        inventory.gpus().to_vec(),
        config.gpu.reserve.0,
        Policy {
            aging: config.lease.aging_interval,
            reclaim_grace: config.lease.reclaim_grace,
            fresh_within: Some(config.gpu.fresh_reading),
            return_timeout: config.gpu.return_timeout,
            tolerance: config.gpu.overuse_tolerance.0,
            overuse: config.overuse.by_class(),
        },
        Limits {
            default_ttl: config.lease.default_ttl,
            max_ttl: config.lease.max_ttl,
            max_wait: config.lease.max_wait,
            visible_above: config.lease.require_visible_above.map(|b| b.0),
            max_waiting: config.lease.max_waiting,
        },
        EventFeed::new(4096),
    );
    sampler::sample_all(&inventory, &broker).await;
    for gpu in broker.status().0 {
        tracing::info!(
            gpu = gpu.index,
            uuid = %gpu.uuid,
            name = %gpu.name,
            total = %arbiter::ByteSize(gpu.total),
            budget = %arbiter::ByteSize(gpu.budget),
            unleased = %arbiter::ByteSize(gpu.unleased),
            "GPU"
        );
    }

    let gates = Arc::new(crate::compute::Gates::open(
        &config.compute,
        &config.compute_gate_dir(),
        inventory.gpus(),
    )?);
    let mps = if config.compute.mps.enabled {
        let (pipe, log) = config.mps_dirs();
        Some(crate::compute::Mps::start(&config.compute.mps, &pipe, &log).await?)
    } else {
        None
    };
    let jobs = Jobs::open(
        &config,
        Arc::clone(&broker),
        Arc::clone(&inventory),
        crate::job::jobs::ComputeEnv {
            gates: gates.list().into_iter().collect(),
            mps: mps
                .as_ref()
                .map(crate::compute::Mps::worker_env)
                .unwrap_or_default(),
        },
        stop.clone(),
    )?;

    // Made now (the status reports it), served once our own socket is bound.
    let pool = config.pool.enabled().then(|| {
        Arc::new(crate::pool::Pool::new(
            crate::pool::Settings {
                budget: config.pool.host_bytes.0,
                threads: config.pool.threads,
                allow_dirs: config.pool.allow_dirs.clone(),
            },
            jobs.weights_files(),
        ))
    });
    let pool_socket = UnixSocket {
        path: config.pool_socket(),
        mode: config.socket_mode().unwrap_or(0o660),
        group: config.server.socket_group.clone(),
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<SupervisorServer<SupervisorService>>()
        .await;
    let (reflection_v1, reflection_v1alpha) = reflection(&[
        arbiter::pb::supervisor::v1::supervisor_server::SERVICE_NAME,
        arbiter::pb::video::v1::video_server::SERVICE_NAME,
        arbiter::pb::worker::v1::worker_server::SERVICE_NAME,
    ]);
    // Before anything listens: a tokens file or TLS files that cannot be read stop start-up.
    let tokens = match &config.auth.tokens_file {
        Some(path) => arbiter::auth::Tokens::load(path)?,
        None => arbiter::auth::Tokens::default(),
    };
    let tls = match (&config.server.tls.cert, &config.server.tls.key) {
        (Some(cert), Some(key)) => Some(arbiter::listen::tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: config.server.tls.client_ca.clone(),
        }),
        _ => None,
    };
    let policy = Arc::new(CallerPolicy::new(&config.auth, &config.quota));
    let mut service = SupervisorService::new(
        Arc::clone(&broker),
        Arc::clone(&policy),
        inventory.simulated(),
        config.server.listen.is_some() && config.server.insecure_tcp,
        Arc::clone(&gates),
        mps.as_ref().map(|m| m.pipe_dir().to_owned()),
        stop.clone(),
    );
    if let Some(pool) = &pool {
        service = service.with_pool(Arc::clone(pool), pool_socket.path.clone());
    }
    let service = SupervisorServer::new(service);
    health.set_serving::<VideoServer<VideoService>>().await;
    let video = VideoServer::new(VideoService::new(
        Arc::clone(&jobs),
        Arc::clone(&policy),
        stop.clone(),
    ));
    let worker = WorkerServer::new(WorkerService::new(Arc::clone(&jobs)));
    let router = Server::builder()
        .tcp_nodelay(true)
        // Detects holders whose host or network vanished without closing the connection.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // Every call gets its caller's identity here, or is refused, before any handler.
        .layer(AuthLayer::new(tokens.clone(), policy))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service)
        .add_service(video)
        .add_service(worker);

    let socket = UnixSocket {
        path: config.server.socket.clone(),
        mode: config.socket_mode().unwrap_or(0o660),
        group: config.server.socket_group.clone(),
    };
    // TCP first: if it fails, no socket file is left behind.
    let tcp = match config.server.listen {
        Some(address) => Some(
            bind_tcp_as(
                &address.to_string(),
                tls.as_ref(),
                config.server.insecure_tcp,
            )
            .await?,
        ),
        None => None,
    };
    // Before the socket, like TCP; and before any job or request, so the metrics' fold of
    // the event feed misses no grant.
    if let Some(endpoint) = config.metrics.endpoint() {
        let readers = (!config.metrics.readers.is_empty()).then(|| arbiter::scrape::Readers {
            tokens: tokens.clone(),
            allowed: config.metrics.readers.clone(),
        });
        let address = crate::metrics::start(
            endpoint,
            readers,
            &broker,
            &jobs,
            pool.clone(),
            stop.clone(),
        )
        .await?;
        tracing::info!(%address, "serving metrics at /metrics");
    }
    let unix = socket.bind()?;
    tracing::info!(socket = %socket.path.display(), "listening on the Unix socket");
    if let Some(pool) = &pool {
        let listener = pool_socket.bind()?;
        tracing::info!(
            socket = %pool_socket.path.display(),
            budget = config.pool.host_bytes.0,
            files = pool.served().len(),
            "serving the weight pool"
        );
        tokio::spawn(crate::pool::serve::run(
            Arc::clone(pool),
            listener,
            stop.clone(),
        ));
        if config.pool.prefill {
            tokio::spawn(crate::pool::prefill(Arc::clone(pool), stop.clone()));
        }
    }
    // After our own socket (a second supervisor fails there first), before READY.
    let kubelet = if config.kubernetes.enabled {
        Some(crate::kubernetes::start(&config, &broker, &inventory, stop.clone()).await?)
    } else {
        None
    };

    let ticker = tokio::spawn(tick(Arc::clone(&broker), stop.clone()));
    let retention = tokio::spawn(expire(Arc::clone(&jobs), stop.clone()));
    if let Some(prewarm) = jobs.prewarm() {
        tokio::spawn(prewarm.run(stop.clone()));
    }
    jobs.keep_standby();
    crate::job::run::start_in_order(&jobs, jobs.queued()).await;
    let sampler = tokio::spawn(sampler::run(
        Arc::clone(&inventory),
        Arc::clone(&broker),
        config.gpu.sample_interval,
        config.gpu.return_poll,
        stop.clone(),
    ));

    let servers = serve(router, unix, tcp, stop.clone());
    tokio::pin!(servers);

    systemd::ready(&format!("serving {} GPU(s)", inventory.gpus().len()));
    let outcome = tokio::select! {
        result = &mut servers => result,
        () = shutdown => {
            tracing::info!("shutting down: revoking leases and draining connections");
            systemd::stopping();
            health.set_not_serving::<SupervisorServer<SupervisorService>>().await;
            broker.close();
            stop.cancel();
            match tokio::time::timeout(config.server.shutdown_grace, &mut servers).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(grace = ?config.server.shutdown_grace, "connections did not drain in time; closing them");
                    Ok(())
                }
            }
        }
    };
    stop.cancel();
    let _ = ticker.await;
    let _ = retention.await;
    let _ = sampler.await;
    if let Some(kubelet) = kubelet {
        let _ = kubelet.await;
    }
    // After the workers: MPS's servers end once their clients have.
    if let Some(mps) = &mps {
        mps.stop().await;
    }
    if let Err(error) = std::fs::remove_file(&socket.path) {
        tracing::debug!(%error, "socket already gone");
    }
    if pool.is_some() {
        let _ = std::fs::remove_file(&pool_socket.path);
    }
    tracing::info!("stopped");
    outcome.map_err(ServeError::from)
}

/// The broker's clock, which doubles as the watchdog's heartbeat: a ping proves that the
/// runtime runs timers and that the broker's lock is free (each tick takes it); if the lock
/// wedges, the pings stop and systemd restarts us.
async fn tick(broker: Arc<Broker>, stop: CancellationToken) {
    let mut watchdog = systemd::Watchdog::from_env();
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {
                broker.tick();
                watchdog.beat();
            }
        }
    }
}

/// Deletes finished jobs, files included, once they are older than the retention time.
async fn expire(jobs: Arc<Jobs>, stop: CancellationToken) {
    let mut interval = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {
                for id in jobs.expired(std::time::SystemTime::now()) {
                    match jobs.delete(&id) {
                        Ok(()) => tracing::info!(job = %id, "deleted after the retention time"),
                        Err(error) => tracing::warn!(job = %id, %error, "cannot delete an expired job"),
                    }
                }
            }
        }
    }
}
