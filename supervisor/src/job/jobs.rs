//! The job hub: every job's record, its watchers, and the worker-facing bookkeeping.
//!
//! Records live in memory for speed and in the [`Store`] for durability: every change goes
//! through [`Jobs::update`], which writes it to disk and then tells the job's watchers. One
//! task per job ([`super::run`]) drives it; the gRPC services only call in here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::catalog::Catalog;
use super::spec;
use super::store::{Store, StoreError};
use super::{JobError, JobRecord, JobRequest, JobState, Progress};
use crate::config::{Config, JobsConfig};
use crate::gpu::Inventory;
use crate::lease::broker::Broker;

/// A worker's standing with its job, from spawn to exit.
#[derive(Debug)]
pub struct WorkerSeat {
    pub token: String,
    pub pid: u32,
    pub claimed: bool,
    /// What the worker said at the end, if it said anything.
    pub outcome: Option<WorkerOutcome>,
}

#[derive(Clone, Debug)]
pub enum WorkerOutcome {
    Completed { video: PathBuf, metadata: PathBuf },
    Failed(String),
}

struct Live {
    record: JobRecord,
    watch: watch::Sender<JobRecord>,
    cancel: CancellationToken,
    seat: Option<WorkerSeat>,
}

/// Resolved settings the jobs need.
pub struct Settings {
    pub jobs: JobsConfig,
    pub output_dir: PathBuf,
    pub worker: PathBuf,
    pub socket: PathBuf,
    pub simulated_dir: Option<PathBuf>,
    pub embedding_cache: Option<PathBuf>,
    /// The built-in workers' working directory, the same for every job.
    pub worker_dir: PathBuf,
    /// The workers' CUDA_CACHE_PATH.
    pub kernel_cache: PathBuf,
    /// What workers are told about compute priority.
    pub compute: ComputeEnv,
    /// The weight pool's socket, told to every built-in worker; None: no pool.
    pub pool_socket: Option<PathBuf>,
}

/// What a worker is told about compute priority (set up by `compute`): its GPU's compute
/// gate, to yield at, and MPS's environment, to be a lower-priority client.
#[derive(Clone, Debug, Default)]
pub struct ComputeEnv {
    /// Gate paths by GPU uuid.
    pub gates: std::collections::BTreeMap<String, PathBuf>,
    /// Variables for every worker (empty without MPS).
    pub mps: Vec<(String, String)>,
}

pub struct Jobs {
    pub(super) store: Store,
    pub(super) catalog: Catalog,
    pub(super) broker: Arc<Broker>,
    pub(super) inventory: Arc<dyn Inventory>,
    pub(super) settings: Settings,
    /// The staged pipelines' standby workers.
    pub(super) standby: super::standby::Standbys,
    live: Mutex<HashMap<String, Live>>,
    /// Held by a submit from its check of the queue's length until its job is in `live`, so
    /// that concurrent submits cannot all take the same last place.
    admission: Mutex<()>,
    /// Fires at shutdown: runners stop their workers and leave their jobs queued.
    pub(super) stop: CancellationToken,
}

impl Jobs {
    /// Opens the database and takes over what an earlier run left: leftover workers are
    /// killed, interrupted jobs are queued again (up to `max_attempts`).
    pub fn open(
        config: &Config,
        broker: Arc<Broker>,
        inventory: Arc<dyn Inventory>,
        compute: ComputeEnv,
        stop: CancellationToken,
    ) -> Result<Arc<Jobs>, JobError> {
        let store = Store::open(&config.state_dir().join("jobs.redb"))?;
        for dir in [config.worker_dir(), config.kernel_cache_dir()] {
            std::fs::create_dir_all(&dir)
                .map_err(|source| JobError::Store(StoreError::Dir { path: dir, source }))?;
        }
        let catalog = Catalog::load(
            config.jobs.pipelines_dir.as_deref(),
            &config.jobs.default_pipeline,
        );
        let standby = super::standby::Standbys::new(
            if config.jobs.standby {
                catalog.staged()
            } else {
                Vec::new()
            },
            super::standby::Keeping {
                worker: config.worker_binary(),
                socket: config.server.socket.clone(),
                worker_dir: config.worker_dir(),
                kernel_cache: config.kernel_cache_dir(),
                kill_grace: config.jobs.kill_grace,
            },
        );
        let jobs = Arc::new(Jobs {
            store,
            standby,
            catalog,
            broker,
            settings: Settings {
                jobs: config.jobs.clone(),
                output_dir: config.output_dir(),
                worker: config.worker_binary(),
                socket: config.server.socket.clone(),
                simulated_dir: inventory.simulated().then(|| config.simulated_dir()),
                embedding_cache: config.embedding_cache_dir(),
                worker_dir: config.worker_dir(),
                kernel_cache: config.kernel_cache_dir(),
                compute,
                pool_socket: config.pool.enabled().then(|| config.pool_socket()),
            },
            inventory,
            live: Mutex::new(HashMap::new()),
            admission: Mutex::new(()),
            stop,
        });
        let worker_name = jobs
            .settings
            .worker
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for mut record in jobs.store.all()? {
            if !record.state.is_final() {
                if let Some(pid) = record.worker_pid.take()
                    && super::spawn::kill_leftover(pid, &worker_name)
                {
                    tracing::warn!(job = %record.id, pid, "killed a worker left by an earlier run");
                }
                if record.state != JobState::Queued {
                    if record.attempt >= jobs.settings.jobs.max_attempts {
                        record.state = JobState::Failed;
                        record.error = format!(
                            "interrupted {} times (supervisor restarts or crashes); giving up",
                            record.attempt
                        );
                        record.finished_at = Some(SystemTime::now());
                    } else {
                        record.attempt += 1;
                        record.state = JobState::Queued;
                        record.progress = Progress::default();
                        tracing::info!(job = %record.id, attempt = record.attempt, "re-queued after a restart");
                    }
                }
                record.lease_id.clear();
                jobs.store.put(&record)?;
            }
            jobs.insert(record);
        }
        Ok(jobs)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, record: JobRecord) {
        let (watch, _) = watch::channel(record.clone());
        self.lock().insert(
            record.id.clone(),
            Live {
                record,
                watch,
                cancel: CancellationToken::new(),
                seat: None,
            },
        );
    }

    /// Jobs to start at boot: every queued one, oldest first.
    pub fn queued(&self) -> Vec<String> {
        let live = self.lock();
        let mut queued: Vec<&JobRecord> = live
            .values()
            .map(|l| &l.record)
            .filter(|r| r.state == JobState::Queued)
            .collect();
        queued.sort_by_key(|r| r.created_at);
        queued.into_iter().map(|r| r.id.clone()).collect()
    }

    /// Validates, persists and returns the new job (not yet started), owned by `owner`,
    /// which may have at most `max_active` jobs queued or running (None: no limit).
    pub fn submit(
        &self,
        request: JobRequest,
        owner: String,
        max_active: Option<u32>,
    ) -> Result<JobRecord, JobError> {
        if self.stop.is_cancelled() {
            return Err(JobError::ShuttingDown);
        }
        let checked = spec::check(request, &self.catalog, &self.settings.jobs)?;
        let mut spec = checked.spec;
        // Refuse at once what no GPU could ever lease.
        let largest = self.broker.largest_limit();
        if spec.lease_bytes > largest {
            return Err(JobError::WontFit(format!(
                "pipeline {} needs a {} lease for this size, but the largest GPU here can lend {}: ask for a smaller video",
                spec.request.pipeline,
                arbiter::ByteSize(spec.lease_bytes),
                arbiter::ByteSize(largest)
            )));
        }
        let _admission = self.admission.lock().unwrap_or_else(|p| p.into_inner());
        let active = self
            .lock()
            .values()
            .filter(|l| !l.record.state.is_final())
            .count();
        if active >= self.settings.jobs.max_queue {
            return Err(JobError::QueueFull {
                limit: self.settings.jobs.max_queue,
            });
        }
        if let Some(limit) = max_active {
            let own = self
                .lock()
                .values()
                .filter(|l| !l.record.state.is_final() && l.record.owner == owner)
                .count();
            if own >= limit as usize {
                return Err(JobError::OverQuota {
                    identity: owner,
                    limit,
                });
            }
        }
        let id = format!("job-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let dir = self.settings.output_dir.join(&id);
        std::fs::create_dir_all(dir.join("output")).map_err(JobError::Files)?;
        for inline in checked.inline {
            let path = dir.join(inline.file_name);
            std::fs::write(&path, &inline.data).map_err(JobError::Files)?;
            match inline.field {
                "audio" => spec.request.audio = Some(path),
                _ => spec.request.reference_image = Some(path),
            }
        }
        let record = JobRecord {
            owner,
            ..JobRecord::new(id, spec, dir)
        };
        self.store.put(&record)?;
        tracing::info!(job = %record.id, pipeline = %record.spec.request.pipeline, lease = %arbiter::ByteSize(record.spec.lease_bytes), "job accepted");
        self.insert(record.clone());
        Ok(record)
    }

    pub fn get(&self, id: &str) -> Result<JobRecord, JobError> {
        self.lock()
            .get(id)
            .map(|l| l.record.clone())
            .ok_or_else(|| JobError::NotFound(arbiter::echo::echo(id)))
    }

    pub fn watch(&self, id: &str) -> Result<watch::Receiver<JobRecord>, JobError> {
        self.lock()
            .get(id)
            .map(|l| l.watch.subscribe())
            .ok_or_else(|| JobError::NotFound(arbiter::echo::echo(id)))
    }

    pub fn list(&self, states: &[JobState], limit: usize) -> Vec<JobRecord> {
        let live = self.lock();
        let mut records: Vec<JobRecord> = live
            .values()
            .map(|l| l.record.clone())
            .filter(|r| states.is_empty() || states.contains(&r.state))
            .collect();
        records.sort_by_key(|r| std::cmp::Reverse(r.created_at));
        records.truncate(limit);
        records
    }

    /// Asks the job's runner to stop it. A queued job is cancelled at once.
    pub fn cancel(&self, id: &str) -> Result<JobRecord, JobError> {
        let token = {
            let live = self.lock();
            let entry = live
                .get(id)
                .ok_or_else(|| JobError::NotFound(arbiter::echo::echo(id)))?;
            if entry.record.state.is_final() {
                return Err(JobError::Ended {
                    id: id.to_string(),
                    state: entry.record.state,
                });
            }
            entry.cancel.clone()
        };
        token.cancel();
        self.get(id)
    }

    pub(super) fn cancel_token(&self, id: &str) -> CancellationToken {
        self.lock()
            .get(id)
            .map(|l| l.cancel.clone())
            .unwrap_or_default()
    }

    /// Changes a job, persists the change, then tells its watchers.
    pub fn update(&self, id: &str, change: impl FnOnce(&mut JobRecord)) -> Option<JobRecord> {
        let record = {
            let mut live = self.lock();
            let entry = live.get_mut(id)?;
            change(&mut entry.record);
            entry.record.clone()
        };
        if let Err(error) = self.store.put(&record) {
            tracing::error!(job = %id, %error, "cannot persist a job change");
        }
        let live = self.lock();
        if let Some(entry) = live.get(id) {
            entry.watch.send_replace(record.clone());
        }
        Some(record)
    }

    /// Changes a job's progress, which is not worth a disk write per step: watchers see it,
    /// and the next state change persists it.
    pub fn progress(&self, id: &str, change: impl FnOnce(&mut Progress)) {
        let mut live = self.lock();
        if let Some(entry) = live.get_mut(id) {
            change(&mut entry.record.progress);
            entry.watch.send_replace(entry.record.clone());
        }
    }

    /// Forgets a finished job and deletes its files.
    pub fn delete(&self, id: &str) -> Result<(), JobError> {
        let record = self.lock().remove(id).map(|l| l.record);
        self.store.delete(id)?;
        if let Some(record) = record {
            let _ = std::fs::remove_dir_all(&record.dir);
        }
        Ok(())
    }

    /// Finished jobs older than the retention time.
    pub fn expired(&self, now: SystemTime) -> Vec<String> {
        let retention = self.settings.jobs.retention;
        self.lock()
            .values()
            .filter(|l| l.record.state.is_final())
            .filter(|l| l.record.finished_at.is_some_and(|at| at + retention <= now))
            .map(|l| l.record.id.clone())
            .collect()
    }

    /// The page-cache warmer for the served staged pipelines, when configured and no weight
    /// pool holds them instead (a second copy in the page cache would only double the host
    /// memory they take).
    pub fn prewarm(&self) -> Option<super::prewarm::Prewarm> {
        let jobs = &self.settings.jobs;
        let pooled = self.settings.pool_socket.is_some();
        (jobs.prewarm && !pooled).then(|| super::prewarm::Prewarm {
            worker: self.settings.worker.clone(),
            dirs: self.catalog.staged_dirs(),
            cap: (jobs.prewarm_cap.0 > 0).then_some(jobs.prewarm_cap.0),
            interval: jobs.prewarm_interval,
        })
    }

    /// The weights files of the served pipelines: what the weight pool serves.
    pub fn weights_files(&self) -> Vec<PathBuf> {
        self.catalog.weights_files()
    }

    /// Starts the keepers of the staged pipelines' standby workers, which end (killing
    /// their standbys) at shutdown.
    pub fn keep_standby(&self) {
        self.standby.keep(&self.stop);
    }

    /// Each pipeline kept with a standby worker, and whether one is ready now.
    pub fn standby_ready(&self) -> Vec<(String, bool)> {
        self.standby.ready()
    }

    /// Whether workers may write PNG frames where ffmpeg is missing.
    pub fn frames_without_ffmpeg(&self) -> bool {
        self.settings.jobs.frames_without_ffmpeg
    }

    /// Where workers cache text embeddings, and the cap (None: no cache).
    pub fn embedding_cache(&self) -> Option<(PathBuf, u64)> {
        self.settings
            .embedding_cache
            .clone()
            .map(|dir| (dir, self.settings.jobs.embedding_cache_bytes.0))
    }

    /// The directory of a pipeline that has one.
    pub fn pipeline_dir(&self, name: &str) -> Option<PathBuf> {
        self.catalog.get(name).and_then(|p| p.dir.clone())
    }

    // === the worker's side ===

    pub(super) fn seat(&self, id: &str, seat: WorkerSeat) {
        if let Some(entry) = self.lock().get_mut(id) {
            entry.seat = Some(seat);
        }
    }

    /// The token and pid of the job's worker, for the supervisor's own reading of an
    /// external pipeline's stdout.
    pub(super) fn seat_credentials(&self, id: &str) -> Option<(String, u32)> {
        self.lock()
            .get(id)
            .and_then(|l| l.seat.as_ref())
            .map(|s| (s.token.clone(), s.pid))
    }

    pub(super) fn unseat(&self, id: &str) -> Option<WorkerSeat> {
        self.lock().get_mut(id).and_then(|l| l.seat.take())
    }

    /// Finds the job a token belongs to, checking the caller is the process we started.
    fn by_token<T>(
        &self,
        token: &str,
        pid: Option<u32>,
        act: impl FnOnce(&mut Live) -> Result<T, JobError>,
    ) -> Result<T, JobError> {
        let mut live = self.lock();
        let entry = live
            .values_mut()
            .find(|l| {
                l.seat
                    .as_ref()
                    .is_some_and(|s| !token.is_empty() && s.token == token)
            })
            .ok_or(JobError::BadToken)?;
        let seat = entry.seat.as_ref().ok_or(JobError::BadToken)?;
        if pid != Some(seat.pid) && pid.and_then(crate::gpu::procfs::group) != Some(seat.pid) {
            return Err(JobError::WrongPeer);
        }
        act(entry)
    }

    /// The worker's Claim: once per token.
    pub fn claim(&self, token: &str, pid: Option<u32>) -> Result<JobRecord, JobError> {
        self.by_token(token, pid, |entry| {
            let seat = entry.seat.as_mut().ok_or(JobError::BadToken)?;
            if seat.claimed {
                return Err(JobError::BadToken);
            }
            seat.claimed = true;
            Ok(entry.record.clone())
        })
    }

    /// Progress from the worker; returns the job's id and whether to stop.
    pub fn report(
        &self,
        token: &str,
        pid: Option<u32>,
        stage: String,
        step: u32,
        total: u32,
    ) -> Result<(String, bool), JobError> {
        self.by_token(token, pid, |entry| {
            entry.record.progress.stage = stage;
            entry.record.progress.step = step;
            entry.record.progress.total_steps = total;
            if entry.record.state == JobState::Starting {
                entry.record.state = JobState::Running;
            }
            entry.watch.send_replace(entry.record.clone());
            Ok((entry.record.id.clone(), entry.cancel.is_cancelled()))
        })
    }

    pub fn finish(
        &self,
        token: &str,
        pid: Option<u32>,
        outcome: WorkerOutcome,
    ) -> Result<(), JobError> {
        self.by_token(token, pid, |entry| {
            if let Some(seat) = entry.seat.as_mut() {
                seat.outcome = Some(outcome);
            }
            Ok(())
        })
    }
}
