//! `arbiter-supervisor run`: any command (a ComfyUI or diffusers server, say) run for its
//! lifetime under a streaming lease.
//!
//! The order, and why:
//! 1. Everything that can be refused without the supervisor first (a TCP address, a command
//!    that is not there), so a bad invocation never takes memory from anyone.
//! 2. A Hold over the Unix socket, with this process's pid: the supervisor charges every
//!    process descended from the holder's pid against the lease, so the command's NVML use
//!    counts as the lease's, not as foreign use. Over TCP there is no pid, hence the refusal.
//! 3. The event feed is watched from before the Hold, so no Overuse or Returned event of the
//!    lease can slip past between the grant and the command's exit.
//! 4. Once granted, the command starts in its own process group (`job::spawn`'s
//!    `Worker::start`: the parent-death signal, no descriptor of ours but stdio) with the
//!    lease in its environment; it keeps our environment, directory and terminal. Being in
//!    its own group, a command that reads the terminal is stopped (SIGTTIN): this is for
//!    servers and batch commands.
//! 5. Signals to `run` (INT, TERM, HUP, QUIT, USR1, USR2) go to the command's group; `run`
//!    exits only after the command has. A revoked or lost lease, `--on-overuse kill` and
//!    `--on-reclaim kill` stop the group: SIGTERM, then SIGKILL after `--kill-grace`.
//! 6. When the leader exits, what it left in its group is killed (its memory must come
//!    back), the lease is released, and `run` waits (at most `--verify-timeout`) for the
//!    supervisor to see the memory free: a Returned event for every byte the Released event
//!    said was on its way back.
//!
//! Exit status: the command's own (128+N when signal N ended it), or one of the codes
//! below, documented in `--help` (`cli::RunArgs`).

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use arbiter::ByteSize;
use arbiter::endpoint::{Address, ConnectError, connect};
use arbiter::leased;
use arbiter::pb::supervisor::v1 as pb;
use nix::sys::signal::Signal;
use pb::event::Kind;
use pb::lease_update::Update;
use pb::supervisor_client::SupervisorClient;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::Streaming;
use tonic::transport::Channel;

use super::{UnknownPriority, address, priority_by_name, reload_request};
use crate::cli::{OnReclaim, RunArgs};
use crate::config::{Config, OveruseAction};
use crate::job::spawn::Worker;

/// The command was stopped on a reclaim request (`--on-reclaim kill`).
pub const EXIT_RECLAIMED: u8 = 122;
/// The command was stopped for using more than its lease (`--on-overuse kill`).
pub const EXIT_OVERUSE: u8 = 123;
/// The lease was revoked or lost under the command, which was stopped.
pub const EXIT_REVOKED: u8 = 124;
/// `run` failed before the command started.
pub const EXIT_FAILED: u8 = 125;
/// The command exists but cannot be executed (as shells say).
pub const EXIT_CANNOT_EXECUTE: u8 = 126;
/// The command was not found (as shells say).
pub const EXIT_NOT_FOUND: u8 = 127;

/// The signals `run` passes on to the command's process group.
const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Why `run` could not run the command under a lease.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "the supervisor at {0} is reached over TCP, where it cannot see the command's processes, so their GPU use would not count against the lease: pass --address with the supervisor's Unix socket"
    )]
    Tcp(String),
    #[error("no supervisor to lease from: {0}")]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Priority(#[from] UnknownPriority),
    #[error("no command given: put it after `--`, such as `run --bytes 8GiB -- python server.py`")]
    NoCommand,
    #[error("`{0}` not found: check its name, or give its path (PATH is searched)")]
    NotFound(String),
    #[error("`{program}` cannot be executed: {reason}")]
    CannotExecute { program: String, reason: String },
    #[error("cannot watch for signals: {0}")]
    Signals(std::io::Error),
    #[error("the supervisor answered {what} with {code:?}: {message}")]
    Supervisor {
        what: &'static str,
        code: tonic::Code,
        message: String,
    },
    #[error("the supervisor refused the lease ({code:?}): {message}")]
    Refused { code: tonic::Code, message: String },
    #[error("the lease was not granted: {0}")]
    NotGranted(String),
    #[error("{0} for --auto")]
    NoGpu(String),
    #[error(
        "nothing is available on GPU {0} now, so --auto has nothing to lease: pass --bytes to wait in the queue for that much, or pick another --gpu"
    )]
    NothingAvailable(String),
    #[error(
        "the supervisor cannot see this process (another pid namespace), so the command's GPU use would not count against the lease: run it where the supervisor sees its pid"
    )]
    Unmeasured,
}

impl RunError {
    fn exit_code(&self) -> u8 {
        match self {
            RunError::NotFound(_) => EXIT_NOT_FOUND,
            RunError::CannotExecute { .. } => EXIT_CANNOT_EXECUTE,
            _ => EXIT_FAILED,
        }
    }

    fn supervisor(what: &'static str) -> impl FnOnce(tonic::Status) -> RunError {
        move |status| RunError::Supervisor {
            what,
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    fn refused(status: tonic::Status) -> RunError {
        RunError::Refused {
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}

/// Runs the command under a lease and returns its exit status (or `run`'s own code).
pub async fn run(args: &RunArgs, config: &Config) -> ExitCode {
    match drive(args, config).await {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            say(&error.to_string());
            ExitCode::from(error.exit_code())
        }
    }
}

/// One line to stderr, so the command's stdout stays its own.
fn say(text: &str) {
    eprintln!("arbiter-supervisor run: {text}");
}

/// How the command's run ended.
enum Ending {
    Exited(ExitStatus),
    Overuse {
        used: u64,
        leased: u64,
    },
    Reclaimed {
        bytes: u64,
        reason: String,
    },
    Revoked(String),
    /// The stream broke without a word: the supervisor died or the connection did.
    Lost(String),
}

async fn drive(args: &RunArgs, config: &Config) -> Result<u8, RunError> {
    let address = address(&args.client, config);
    let socket = match &address {
        Address::Unix(path) => std::path::absolute(path).unwrap_or_else(|_| path.clone()),
        Address::Tcp(url) => return Err(RunError::Tcp(url.clone())),
    };
    let (program, program_args) = args.command.split_first().ok_or(RunError::NoCommand)?;
    find_program(program)?;
    let holder = match &args.holder {
        Some(holder) => holder.clone(),
        None => Path::new(program)
            .file_name()
            .unwrap_or(program)
            .to_string_lossy()
            .into_owned(),
    };
    let priority = priority_by_name(&args.priority)?;
    let mut signals = forward_signals()?;
    let mut client = SupervisorClient::new(connect(&address).await?);
    let (bytes, gpu) = match args.bytes {
        Some(bytes) => (bytes.0, args.gpu.clone()),
        None => auto(&mut client, &args.gpu).await?,
    };
    let mut events = Some(
        client
            .watch_events(pb::WatchEventsRequest {
                include_samples: false,
            })
            .await
            .map_err(RunError::supervisor("WatchEvents"))?
            .into_inner(),
    );
    let request = pb::LeaseRequest {
        holder,
        gpu,
        bytes,
        priority: priority as i32,
        max_wait: args
            .max_wait
            .and_then(|d| prost_types::Duration::try_from(d).ok()),
        preemptible: args.preemptible,
        ttl: None,
        reload: reload_request(&args.reload),
    };
    let mut stream = client
        .hold(request)
        .await
        .map_err(RunError::refused)?
        .into_inner();
    let lease = loop {
        let update = tokio::select! {
            Some(signal) = signals.recv() => {
                say(&format!("{} before the lease was granted: the command was not started", signal.as_str()));
                return Ok(128 + signal as u8);
            }
            update = stream.next() => update,
        };
        match update {
            None => {
                return Err(RunError::NotGranted(
                    "the supervisor ended the stream".into(),
                ));
            }
            Some(Err(status)) => return Err(RunError::refused(status)),
            Some(Ok(update)) => match update.update {
                Some(Update::Queued(q)) => say(&format!(
                    "queued at position {} of {}",
                    q.position, q.queue_length
                )),
                Some(Update::Granted(lease)) => break lease,
                Some(Update::Revoked(r)) => return Err(RunError::NotGranted(r.reason)),
                Some(Update::Reclaim(_)) | None => {}
            },
        }
    };
    if !lease.measured {
        release(&mut client, &lease.lease_id).await;
        return Err(RunError::Unmeasured);
    }

    let mut command = tokio::process::Command::new(program);
    command
        .args(program_args)
        .env(leased::VISIBLE_DEVICES, &lease.gpu_uuid)
        .env(leased::LEASE_ID, &lease.lease_id)
        .env(leased::LEASE_BYTES, lease.bytes.to_string())
        .env("ARBITER_SUPERVISOR_SOCKET", &socket);
    let mut child = match Worker::start(command) {
        Ok(child) => child,
        Err(error) => {
            release(&mut client, &lease.lease_id).await;
            return Err(spawn_error(program, error));
        }
    };
    say(&format!(
        "lease {} granted: {} on GPU {} ({}); started {} (pid {})",
        lease.lease_id,
        ByteSize(lease.bytes),
        lease.gpu_index,
        lease.gpu_uuid,
        program.to_string_lossy(),
        child.pid()
    ));

    let mut giveback = GiveBack::new(&lease.lease_id);
    let ending = loop {
        let step = tokio::select! {
            status = child.wait() => Step::Exited(status),
            Some(signal) = signals.recv() => Step::Signal(signal),
            update = stream.next() => Step::Update(update),
            event = next_event(&mut events) => Step::Event(event),
        };
        match step {
            Step::Exited(Ok(status)) => break Ending::Exited(status),
            // The child cannot be waited for: nothing to do but stop its group.
            Step::Exited(Err(error)) => {
                break Ending::Lost(format!("cannot wait for the command: {error}"));
            }
            Step::Signal(signal) => child.signal(signal),
            Step::Update(None) => {
                break Ending::Lost("the supervisor ended the lease stream".into());
            }
            Step::Update(Some(Err(status))) => break Ending::Lost(status.message().to_string()),
            Step::Update(Some(Ok(update))) => match update.update {
                Some(Update::Revoked(r)) => break Ending::Revoked(r.reason),
                Some(Update::Reclaim(r)) => match args.on_reclaim.unwrap_or(OnReclaim::Ignore) {
                    OnReclaim::Kill => {
                        break Ending::Reclaimed {
                            bytes: r.bytes,
                            reason: r.reason,
                        };
                    }
                    OnReclaim::Signal(signal) => {
                        say(&format!(
                            "the supervisor asks for {} back ({}); sent {} to the command (--on-reclaim)",
                            ByteSize(r.bytes),
                            r.reason,
                            signal.as_str()
                        ));
                        child.signal(signal);
                    }
                    OnReclaim::Ignore => say(&format!(
                        "the supervisor asks for {} back ({}); ignored (--on-reclaim ignore): unless the command frees it, the lease is revoked at the deadline and the command stopped",
                        ByteSize(r.bytes),
                        r.reason
                    )),
                },
                Some(Update::Granted(_)) => say("the reclaim request was withdrawn"),
                Some(Update::Queued(_)) | None => {}
            },
            Step::Event(Some(Ok(event))) => {
                let Some(kind) = event.kind else { continue };
                giveback.see(&kind);
                if let Kind::Overuse(o) = kind
                    && o.lease_id == lease.lease_id
                {
                    if args.on_overuse == OveruseAction::Kill {
                        break Ending::Overuse {
                            used: o.used_bytes,
                            leased: o.lease_bytes,
                        };
                    }
                    say(&format!(
                        "the command's processes use {} of GPU memory on a lease of {} (--on-overuse log)",
                        ByteSize(o.used_bytes),
                        ByteSize(o.lease_bytes)
                    ));
                }
            }
            // Without the feed, overuse goes unseen and the give-back unverified; the lease
            // itself still holds.
            Step::Event(_) => events = None,
        }
    };

    let code = match &ending {
        Ending::Exited(status) => exit_code(*status),
        _ => {
            let stopped = child.stop(args.kill_grace).await;
            match &ending {
                Ending::Overuse { used, leased } => say(&format!(
                    "the command's processes used {} of GPU memory on a lease of {} and were stopped (--on-overuse kill): ask for more with --bytes",
                    ByteSize(*used),
                    ByteSize(*leased)
                )),
                Ending::Reclaimed { bytes, reason } => say(&format!(
                    "the supervisor asked for {} back ({reason}); the command was stopped (--on-reclaim kill)",
                    ByteSize(*bytes)
                )),
                Ending::Revoked(reason) => say(&format!(
                    "lease {} was revoked ({reason}); the command was stopped",
                    lease.lease_id
                )),
                Ending::Lost(reason) => say(&format!(
                    "lost the lease ({reason}); the command was stopped"
                )),
                Ending::Exited(_) => {}
            }
            if let Err(error) = stopped {
                say(&format!("cannot reap the stopped command: {error}"));
            }
            match ending {
                Ending::Overuse { .. } => EXIT_OVERUSE,
                Ending::Reclaimed { .. } => EXIT_RECLAIMED,
                _ => EXIT_REVOKED,
            }
        }
    };

    match ending {
        // The supervisor is gone, or ended the lease itself: nothing to release.
        Ending::Lost(_) => {}
        Ending::Revoked(_) => {
            drop(stream);
            verify(&mut events, &mut giveback, "revoked", args.verify_timeout).await;
        }
        _ => {
            let released = client
                .release(pb::ReleaseRequest {
                    lease_id: lease.lease_id.clone(),
                })
                .await;
            drop(stream);
            match released {
                Ok(_) => verify(&mut events, &mut giveback, "released", args.verify_timeout).await,
                Err(status) => say(&format!(
                    "cannot release lease {} ({}); it ends with this process's stream",
                    lease.lease_id,
                    status.message()
                )),
            }
        }
    }
    Ok(code)
}

/// What woke the watch loop.
enum Step {
    Exited(std::io::Result<ExitStatus>),
    Signal(Signal),
    Update(Option<Result<pb::LeaseUpdate, tonic::Status>>),
    Event(Option<Result<pb::Event, tonic::Status>>),
}

/// Catches the forwarded signals from now on (so `run` is not ended by them) and hands
/// each over as it comes.
fn forward_signals() -> Result<mpsc::UnboundedReceiver<Signal>, RunError> {
    use tokio::signal::unix::{SignalKind, signal};
    let (sender, receiver) = mpsc::unbounded_channel();
    for kind in FORWARDED {
        let mut stream = signal(SignalKind::from_raw(kind as i32)).map_err(RunError::Signals)?;
        let sender = sender.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if sender.send(kind).is_err() {
                    return;
                }
            }
        });
    }
    Ok(receiver)
}

/// The next event of the feed; never, once the feed is gone.
async fn next_event(
    events: &mut Option<Streaming<pb::Event>>,
) -> Option<Result<pb::Event, tonic::Status>> {
    match events {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// `--auto`'s lease: everything available now on the named GPU, else on the one with the
/// most available (the lowest index among equals). Returns the bytes and the GPU's uuid.
async fn auto(
    client: &mut SupervisorClient<Channel>,
    gpu: &str,
) -> Result<(u64, String), RunError> {
    let status = client
        .get_status(pb::GetStatusRequest {})
        .await
        .map_err(RunError::supervisor("GetStatus"))?
        .into_inner();
    let gpu = gpu.trim();
    let chosen = if gpu.is_empty() {
        status
            .gpus
            .iter()
            .min_by_key(|g| (std::cmp::Reverse(g.available_bytes), g.index))
            .ok_or_else(|| RunError::NoGpu("the supervisor has no GPU".into()))?
    } else {
        status
            .gpus
            .iter()
            .find(|g| g.uuid.eq_ignore_ascii_case(gpu) || g.index.to_string() == gpu)
            .ok_or_else(|| {
                let known: Vec<String> = status
                    .gpus
                    .iter()
                    .map(|g| format!("{} ({})", g.index, g.uuid))
                    .collect();
                RunError::NoGpu(format!("no GPU `{gpu}` (known: {})", known.join(", ")))
            })?
    };
    if chosen.available_bytes == 0 {
        return Err(RunError::NothingAvailable(format!(
            "{} ({})",
            chosen.index, chosen.uuid
        )));
    }
    Ok((chosen.available_bytes, chosen.uuid.clone()))
}

/// Checks that `program` can be started, as a shell would look for it: a name with a slash
/// is a path, any other is searched on PATH. Checked before asking for a lease, so a typo
/// costs nobody memory.
fn find_program(program: &OsStr) -> Result<PathBuf, RunError> {
    let name = program.to_string_lossy().into_owned();
    let candidates: Vec<PathBuf> = if name.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        let path =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        std::env::split_paths(&path)
            .map(|dir| {
                let dir = if dir.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    dir
                };
                dir.join(program)
            })
            .collect()
    };
    let mut refusal = None;
    for candidate in candidates {
        match std::fs::metadata(&candidate) {
            Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => {
                return Ok(candidate);
            }
            Ok(meta) if meta.is_dir() => {
                refusal.get_or_insert_with(|| format!("{} is a directory", candidate.display()));
            }
            Ok(_) => {
                refusal.get_or_insert_with(|| {
                    format!("{} is not executable (chmod +x it)", candidate.display())
                });
            }
            Err(_) => {}
        }
    }
    Err(match refusal {
        Some(reason) => RunError::CannotExecute {
            program: name,
            reason,
        },
        None => RunError::NotFound(name),
    })
}

fn spawn_error(program: &OsStr, error: std::io::Error) -> RunError {
    let program = program.to_string_lossy().into_owned();
    match error.kind() {
        std::io::ErrorKind::NotFound => RunError::NotFound(program),
        _ => RunError::CannotExecute {
            program,
            reason: error.to_string(),
        },
    }
}

/// The status a shell would report for the command: its code, or 128+N for signal N.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.saturating_add(signal as u8),
        (None, None) => EXIT_FAILED,
    }
}

/// Releases a lease the command never used (best effort: the stream's end would too).
async fn release(client: &mut SupervisorClient<Channel>, lease_id: &str) {
    let _ = client
        .release(pb::ReleaseRequest {
            lease_id: lease_id.to_string(),
        })
        .await;
}

/// The lease's give-back as the event feed tells it: how many bytes the Released (or
/// Revoked) event said were on their way back, and how many Returned events have seen free.
struct GiveBack {
    lease_id: String,
    returning: Option<u64>,
    returned: u64,
    overdue: Option<u64>,
}

impl GiveBack {
    fn new(lease_id: &str) -> GiveBack {
        GiveBack {
            lease_id: lease_id.to_string(),
            returning: None,
            returned: 0,
            overdue: None,
        }
    }

    fn see(&mut self, kind: &Kind) {
        match kind {
            Kind::Released(r) if r.lease_id == self.lease_id => {
                *self.returning.get_or_insert(0) += r.returning_bytes;
            }
            Kind::Revoked(r) if r.lease_id == self.lease_id => {
                *self.returning.get_or_insert(0) += r.returning_bytes;
            }
            Kind::Returned(r) if r.lease_id == self.lease_id => self.returned += r.bytes,
            Kind::ReturnOverdue(r) if r.lease_id == self.lease_id => self.overdue = Some(r.bytes),
            _ => {}
        }
    }

    fn settled(&self) -> bool {
        self.returning.is_some_and(|r| self.returned >= r)
    }
}

/// Waits (at most `limit`) until the supervisor has seen the lease's memory free, and says
/// how it went (`ended`: how the lease ended, "released" or "revoked"). The exit status does not depend on it: the supervisor keeps what was not
/// seen free out of the budget either way.
async fn verify(
    events: &mut Option<Streaming<pb::Event>>,
    giveback: &mut GiveBack,
    ended: &str,
    limit: Duration,
) {
    let id = giveback.lease_id.clone();
    if events.is_none() {
        say(&format!(
            "lease {id} {ended}; without the event feed, its memory's return is not verified"
        ));
        return;
    }
    let waited = tokio::time::timeout(limit, async {
        while !giveback.settled() && giveback.overdue.is_none() {
            match next_event(events).await {
                Some(Ok(event)) => {
                    if let Some(kind) = event.kind {
                        giveback.see(&kind);
                    }
                }
                _ => return false,
            }
        }
        true
    })
    .await;
    match (waited, giveback.overdue) {
        (Ok(true), None) => say(&format!(
            "lease {id} {ended}; the supervisor saw its memory free"
        )),
        (Ok(true), Some(bytes)) => say(&format!(
            "lease {id} {ended}, but {} of it is still in use past the supervisor's return timeout: it stays out of the budget until NVML shows it free",
            ByteSize(bytes)
        )),
        (Ok(false), _) => say(&format!(
            "lease {id} {ended}; the event feed ended before the supervisor saw its memory free"
        )),
        (Err(_), _) => say(&format!(
            "lease {id} {ended}; its memory was not seen free within {} (see `arbiter-supervisor status`): the supervisor keeps it out of the budget until it is",
            humantime::format_duration(limit)
        )),
    }
}
