//! `arbiter-video`: the per-request video worker. The supervisor spawns one per video job,
//! under a lease sized for it, with `CUDA_VISIBLE_DEVICES` set to the leased GPU; the
//! process runs its pipeline one stage at a time, writes the video and exits, so its CUDA
//! context and every byte it allocated go back to the GPU.
//!
//! Commands: `run` (what the supervisor starts: claim the job named by the token in the
//! environment, run it, exit with the outcome's code), `standby` (what the supervisor starts
//! ahead of a job: read the pipeline's code, say READY, run the job handed over on stdin),
//! `info` (what libtorch sees in a
//! process started the way the supervisor starts workers), `make-pipeline` (generate a
//! pipeline of realistic shapes with random weights), `inspect` (a manifest with its
//! memory estimate per stage), `prewarm`, `generate` (a job without a supervisor) and
//! `cuda-start` (a bare CUDA context start, the floor for a worker's start-up). The work is
//! in the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use arbiter::pipeline::{Manifest, Placements};
use arbiter_video::local::Local;
use arbiter_video::make::{self, Made, Make, Preset};
use arbiter_video::parking::Parking;
use arbiter_video::worker::{SOCKET_ENV, TOKEN_ENV};
use arbiter_video::{inspect, job};
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "arbiter-video",
    version,
    about = "Runs one video job on a leased GPU, then exits."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what libtorch sees (CUDA, devices) and run a small self-check on the device.
    Info,
    /// Claim the job the supervisor spawned this process for, run it and report the result.
    /// Exit codes: 0 done, 1 failed (the supervisor was told why), 2 could not claim the
    /// job, 3 cancelled.
    Run(RunArgs),
    /// Start ahead of a job of the pipeline: read its TorchScript (on the CPU; no CUDA, no
    /// GPU memory), print READY, then read one job's handoff (a JSON line) on stdin and run
    /// that job as `run` does. End of input instead: exit 0 without a job.
    Standby(StandbyArgs),
    /// Write a generated pipeline: TorchScript components with the shapes and sizes of a
    /// real one and RANDOM weights (its video is noise), and its manifest. Needs Python 3
    /// with PyTorch (scripts/setup.sh installs them).
    MakePipeline(MakeArgs),
    /// Print a pipeline's components, stages and the GPU memory each stage holds.
    Inspect(InspectArgs),
    /// Load and run text encoders one after the other on the same prompts (a pipeline's,
    /// or the components.toml of `make-pipeline --only text_encoder`): stored bytes, load
    /// time (with the pinned copy rate measured first on a GPU), forward time, memory, and
    /// each output's error against the first encoder's.
    CompareEncoders(CompareArgs),
    /// Pull a pipeline's files (or those of `make-pipeline --only`) into the page cache (or
    /// drop them from it with --evict), and report the read rate.
    Prewarm(PrewarmArgs),
    /// Run one job in this process, without a supervisor or a lease (for trying a
    /// pipeline, and for benchmarks): writes video.mp4 (or PNG frames when ffmpeg is
    /// missing) and metadata.json into --out.
    Generate(GenerateArgs),
    /// Start a CUDA context and nothing else, and print (as JSON) how long that took from
    /// main and, when ARBITER_SPAWNED_AT_NS holds the spawn's time, from the spawn: the
    /// floor a worker's start-up (its metadata's first_step_overhead_ms) is held against.
    /// The same binary as the worker, so exec and linking libtorch cost the same.
    CudaStart,
}

#[derive(Args)]
struct GenerateArgs {
    /// A pipeline directory, or `tiny` for the built-in model.
    #[arg(long)]
    pipeline: PathBuf,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value = "")]
    negative_prompt: String,
    /// The soundtrack: WAV, FLAC, MP3 or OGG Vorbis.
    #[arg(long)]
    audio: Option<PathBuf>,
    /// A reference image: PNG, JPEG, WebP or BMP.
    #[arg(long)]
    image: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    width: u32,
    #[arg(long, default_value_t = 0)]
    height: u32,
    #[arg(long, default_value_t = 0)]
    frames: u32,
    #[arg(long, default_value_t = 0)]
    fps: u32,
    #[arg(long, default_value_t = 0)]
    steps: u32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where a component runs, `COMPONENT=PLACEMENT`; repeat for several.
    #[arg(long = "placement", value_name = "COMPONENT=PLACEMENT")]
    placement: Vec<String>,
    /// The memory `auto` placement may plan with (0: no limit), such as 40GiB.
    #[arg(long, default_value = "0")]
    lease: arbiter::ByteSize,
    /// A text-embedding cache directory to use.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    #[arg(long, default_value = "4GiB")]
    cache_size: arbiter::ByteSize,
    /// The output directory.
    #[arg(long)]
    out: PathBuf,
    /// Run the job this many times in this one process, `resident` components loaded once
    /// (the persistent-serving comparison); run K writes into OUT/run-K.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Pause between repeats, to see the idle memory of a persistent process.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pause: std::time::Duration,
    /// With --repeat: park the resident components after each run (their weights stay in
    /// the host weight pool, their VRAM goes back) and wake them before the next, admitted
    /// against --lease and the device's free memory; the figures go to OUT/park.json. Needs
    /// the pool (ARBITER_POOL_SOCKET).
    #[arg(long, requires = "repeat")]
    park: bool,
}

#[derive(Args)]
struct PrewarmArgs {
    /// A pipeline directory.
    pipeline: PathBuf,
    #[arg(long, default_value_t = 16)]
    threads: usize,
    /// Read at most this much (the page cache it may take).
    #[arg(long)]
    cap: Option<arbiter::ByteSize>,
    /// Drop the pipeline's files from the page cache instead (posix_fadvise DONTNEED), so
    /// that the next load is cold: for measuring first calls from disk.
    #[arg(long)]
    evict: bool,
}

#[derive(Args)]
struct MakeArgs {
    #[arg(long, value_enum)]
    preset: Preset,
    /// The pipeline directory to write.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The pipeline's name (default: the directory's name).
    #[arg(long)]
    name: Option<String>,
    /// The Python that has PyTorch.
    #[arg(long, env = "ARBITER_PYTHON", default_value = "python3")]
    python: String,
    /// Where the random weights are drawn: auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Store the text encoder in this dtype instead of the preset's: bf16, f16, f32, nf4 or
    /// fp8-e4m3 (the -nf4 and -fp8 presets are their base preset with this set).
    #[arg(long, value_name = "DTYPE")]
    text_encoder_dtype: Option<arbiter::pipeline::Dtype>,
    /// Generate only this component (repeat for several), each with the weights it has in
    /// the whole pipeline, and write their manifest entries to components.toml instead of a
    /// manifest: for benchmarking a component alone (`compare-encoders`).
    #[arg(long, value_name = "COMPONENT")]
    only: Vec<String>,
}

#[derive(Args)]
struct CompareArgs {
    /// The reference encoder's directory first (bf16), then the others.
    #[arg(required = true, num_args = 2..)]
    encoders: Vec<PathBuf>,
    #[arg(
        long,
        default_value = "a lighthouse at dusk, waves breaking on the rocks"
    )]
    prompt: String,
    /// A second prompt in the batch, as guidance encodes the negative one beside it.
    #[arg(long, default_value = "blurry, low quality")]
    negative_prompt: String,
    /// Where the encoders run: gpu (on the GPU when there is one, else the CPU), stream or cpu.
    #[arg(long, default_value = "gpu")]
    placement: arbiter::pipeline::Placement,
    /// Timed forwards after the first.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Size of the pinned host-to-device copy measured first, in MiB.
    #[arg(long, default_value_t = 2048)]
    copy_mib: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct InspectArgs {
    /// A pipeline directory (with manifest.toml); `tiny` for the built-in one.
    pipeline: PathBuf,
    #[arg(long)]
    width: Option<u32>,
    #[arg(long)]
    height: Option<u32>,
    #[arg(long)]
    frames: Option<u32>,
    #[arg(long)]
    fps: Option<u32>,
    #[arg(long)]
    steps: Option<u32>,
    /// Override a component's placement, `COMPONENT=PLACEMENT`; repeat for several.
    #[arg(long = "placement", value_name = "COMPONENT=PLACEMENT")]
    placement: Vec<String>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct StandbyArgs {
    /// The pipeline's directory (with manifest.toml).
    #[arg(long, value_name = "DIR")]
    pipeline: PathBuf,
}

#[derive(Args)]
struct RunArgs {
    /// The supervisor's Unix socket.
    #[arg(long, env = SOCKET_ENV, value_name = "PATH")]
    supervisor_socket: PathBuf,
    /// The one-time token that stands for the job (the supervisor passes it in the
    /// environment, which other users cannot read).
    #[arg(long, env = TOKEN_ENV, hide_env_values = true)]
    token: String,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Info => arbiter_torch::device::info(),
        Command::Run(args) => {
            init_logging();
            let outcome = job::run(&args.supervisor_socket, args.token);
            ExitCode::from(outcome.exit_code())
        }
        Command::Standby(args) => {
            init_logging();
            match arbiter_video::standby::run(&args.pipeline) {
                Ok(arbiter_video::standby::Ended::NoJob) => ExitCode::SUCCESS,
                Ok(arbiter_video::standby::Ended::Ran(outcome)) => {
                    ExitCode::from(outcome.exit_code())
                }
                Err(error) => {
                    tracing::error!(%error, "standby worker stopping");
                    // As a worker that could not claim its job.
                    ExitCode::from(job::outcome::Outcome::Unclaimed.exit_code())
                }
            }
        }
        Command::MakePipeline(args) => make_pipeline(args),
        Command::Inspect(args) => inspect_pipeline(args),
        Command::CompareEncoders(args) => {
            init_logging();
            compare_encoders(args)
        }
        Command::Generate(args) => {
            init_logging();
            generate(args)
        }
        Command::Prewarm(args) => prewarm(args),
        Command::CudaStart => cuda_start(),
    }
}

fn cuda_start() -> ExitCode {
    let started = std::time::Instant::now();
    let spawned = arbiter::spawn::since_spawn();
    let device = arbiter_torch::device::preferred();
    let Some(startup) = job::device::start_device(device, started) else {
        eprintln!(
            "arbiter-video cuda-start: libtorch sees no CUDA device (see `arbiter-video info`)"
        );
        return ExitCode::FAILURE;
    };
    let spawn_ms = spawned.map(arbiter_video::metadata::ms);
    let report = serde_json::json!({
        "device": job::device::device_name(device),
        "spawn_ms": spawn_ms,
        "ready_ms": startup.ready_ms,
        "cuda_context_ms": startup.context_ms,
        "spawn_to_ready_ms": spawn_ms.map(|s| s + startup.ready_ms),
    });
    println!("{report}");
    ExitCode::SUCCESS
}

fn parse_placements(pairs: &[String]) -> Result<Placements, String> {
    let pairs = arbiter::pipeline::placement_pairs(pairs)?;
    arbiter::pipeline::parse_placements(&pairs).map_err(|e| format!("--placement {e}"))
}

fn generate(args: GenerateArgs) -> ExitCode {
    let fail = |message: String| {
        eprintln!("arbiter-video generate: {message}");
        ExitCode::FAILURE
    };
    let mut local = match Local::new(&args.pipeline, args.out.clone()) {
        Ok(local) => local,
        Err(error) => return fail(error.to_string()),
    };
    let placements = match parse_placements(&args.placement) {
        Ok(p) => p,
        Err(message) => return fail(message),
    };
    let job = &mut local.job;
    job.request.prompt = args.prompt;
    job.request.negative_prompt = args.negative_prompt;
    job.request.audio = args.audio;
    job.request.reference_image = args.image;
    (
        job.request.shape.width,
        job.request.shape.height,
        job.request.shape.frames,
        job.request.shape.fps,
        job.request.shape.steps,
    ) = (args.width, args.height, args.frames, args.fps, args.steps);
    job.request.seed = args.seed;
    job.request.placement = placements;
    job.lease_bytes = args.lease.0;
    job.embedding_cache = args.cache_dir.map(|dir| (dir, args.cache_size.0));
    let mut parking = args.park.then(|| Parking::new(args.lease.0));
    for round in 1..=args.repeat.max(1) {
        if args.repeat > 1 {
            local.job.output_dir = args.out.join(format!("run-{round}"));
            if round > 1 && !args.pause.is_zero() {
                std::thread::sleep(args.pause);
            }
        }
        if round > 1
            && let Some(parking) = parking.as_mut()
            && let Err(error) = parking.wake(&mut local.session)
        {
            return fail(error.to_string());
        }
        match local.run() {
            Ok(written) => println!(
                "wrote {} and {} in {:.2} s{}",
                written.video.display(),
                written.metadata.display(),
                written.seconds,
                if local.session.loaded().is_empty() {
                    String::new()
                } else {
                    format!(" (kept loaded: {})", local.session.loaded().join(", "))
                }
            ),
            Err(error) => return fail(error.to_string()),
        }
        if round < args.repeat
            && let Some(parking) = parking.as_mut()
            && let Err(error) = parking.park(&mut local.session)
        {
            return fail(error.to_string());
        }
    }
    if let Some(parking) = &parking
        && let Err(error) = parking.write(&args.out.join("park.json"))
    {
        return fail(error);
    }
    if args.repeat > 1 && !args.pause.is_zero() {
        // The persistent process's idle memory, for whoever samples NVML.
        std::thread::sleep(args.pause);
    }
    ExitCode::SUCCESS
}

fn prewarm(args: PrewarmArgs) -> ExitCode {
    let fail = |message: String| {
        eprintln!("arbiter-video prewarm: {message}");
        ExitCode::FAILURE
    };
    // A pipeline's weights in stage order, so that a cap keeps what is needed first; or
    // the components `make-pipeline --only` wrote.
    let only = args.pipeline.join(make::COMPONENTS_FILE);
    let (name, components): (String, Vec<arbiter::pipeline::Component>) = if !args
        .pipeline
        .join(arbiter::pipeline::MANIFEST_FILE)
        .exists()
        && only.exists()
    {
        match make::Partial::load(&args.pipeline) {
            Ok(p) => (p.name, p.components.into_values().collect()),
            Err(message) => return fail(message),
        }
    } else {
        match Manifest::load(&args.pipeline) {
            Ok(m) => {
                let ordered = m
                    .stages
                    .iter()
                    .filter_map(|s| m.components.get(&s.component).cloned())
                    .collect();
                (m.name, ordered)
            }
            Err(error) => return fail(error.to_string()),
        }
    };
    let mut files = Vec::new();
    for c in &components {
        for path in [args.pipeline.join(&c.code), args.pipeline.join(&c.weights)] {
            if !files.contains(&path) {
                files.push(path);
            }
        }
    }
    if args.evict {
        return match arbiter_torch::evict(&files) {
            Ok(bytes) => {
                println!(
                    "dropped {} ({} files) of pipeline {} from the page cache",
                    arbiter::ByteSize(bytes),
                    files.len(),
                    name
                );
                ExitCode::SUCCESS
            }
            Err(error) => fail(error.to_string()),
        };
    }
    match arbiter_torch::prewarm(&files, args.threads, args.cap.map(|c| c.0)) {
        Ok(stats) => {
            println!(
                "read {} of pipeline {} ({} files) in {:.2} s: {:.2} GB/s with {} threads",
                arbiter::ByteSize(stats.bytes),
                name,
                stats.files,
                stats.seconds,
                stats.gb_per_s(),
                stats.threads
            );
            ExitCode::SUCCESS
        }
        Err(error) => fail(error.to_string()),
    }
}

fn make_pipeline(args: MakeArgs) -> ExitCode {
    let request = Make {
        preset: args.preset,
        out: args.out,
        name: args.name,
        python: args.python,
        device: args.device,
        seed: args.seed,
        text_encoder_dtype: args.text_encoder_dtype,
        only: args.only,
    };
    let (what, name, components) = match make::make(&request) {
        Ok(Made::Pipeline(manifest)) => {
            let manifest = *manifest;
            ("pipeline", manifest.name, manifest.components)
        }
        Ok(Made::Components(partial)) => {
            ("components of pipeline", partial.name, partial.components)
        }
        Err(error) => {
            eprintln!("arbiter-video make-pipeline: {error}");
            return ExitCode::FAILURE;
        }
    };
    let bytes: u64 = components.values().map(|c| c.parameter_bytes.0).sum();
    println!(
        "wrote {what} {name} to {} ({} of random weights in {} components)",
        request.out.display(),
        arbiter::ByteSize(bytes),
        components.len()
    );
    ExitCode::SUCCESS
}

fn compare_encoders(args: CompareArgs) -> ExitCode {
    use arbiter_video::compare::{self, Encoder};
    let fail = |message: String| {
        eprintln!("arbiter-video compare-encoders: {message}");
        ExitCode::FAILURE
    };
    let encoders = match args
        .encoders
        .iter()
        .map(|dir| Encoder::find(dir))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(e) => e,
        Err(error) => return fail(error.to_string()),
    };
    let device = arbiter_torch::device::preferred();
    let pinned = if device.is_cuda() {
        // Also starts the CUDA context, so that the first load does not pay for it.
        match arbiter_torch::stream::host_to_device_rate(args.copy_mib << 20, device, true, 3) {
            Ok(rate) => Some(rate),
            Err(error) => return fail(format!("measuring the pinned copy rate: {error}")),
        }
    } else {
        None
    };
    let prompts = [args.prompt.as_str(), args.negative_prompt.as_str()];
    let measured = match compare::compare(
        &encoders,
        &prompts,
        device,
        args.placement,
        args.repeat,
        &arbiter_torch::LoadOptions::default(),
    ) {
        Ok(m) => m,
        Err(error) => return fail(error.to_string()),
    };
    let device_name = job::device::device_name(device);
    println!(
        "device {device_name}; pinned host-to-device {}",
        pinned.map_or("not measured (no GPU)".into(), |r| format!("{r:.2} GB/s"))
    );
    println!(
        "{:10} {:>11} {:>7} {:>9} {:>9} {:>8} {:>10} {:>10} {:>10} {:>9} {:>10} {:>8}",
        "dtype",
        "file",
        "x fewer",
        "load s",
        "GB/s",
        "of pin",
        "first ms",
        "fwd ms",
        "peak",
        "max abs",
        "relative",
        "min cos"
    );
    let reference = &measured[0];
    for m in &measured {
        let error = m.error;
        println!(
            "{:10} {:>11} {:>7.2} {:>9.3} {:>9.2} {:>8} {:>10.1} {:>10.1} {:>10} {:>9} {:>10} {:>8}",
            m.dtype,
            arbiter::ByteSize(m.file_bytes).to_string(),
            reference.file_bytes as f64 / m.file_bytes.max(1) as f64,
            m.load_s,
            m.load_gb_per_s,
            pinned.map_or("-".into(), |p| format!("{:.2}", m.load_gb_per_s / p)),
            m.first_call_ms,
            m.forward_ms_median,
            arbiter::ByteSize(m.forward_peak_bytes).to_string(),
            error.map_or("-".into(), |e| format!("{:.4}", e.max_abs)),
            error.map_or("-".into(), |e| format!("{:.5}", e.relative)),
            error.map_or("-".into(), |e| format!("{:.5}", e.min_cosine)),
        );
    }
    println!(
        "(the weights are random: the errors say how closely each format reproduces the reference's arithmetic, nothing about a real model's quality)"
    );
    if let Some(path) = &args.json {
        let report = serde_json::json!({
            "device": device_name,
            "pinned_gb_per_s": pinned,
            "prompts": prompts,
            "repeat": args.repeat,
            "weights": "random",
            "encoders": measured,
        });
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(error) = std::fs::write(path, text) {
            return fail(format!("{}: {error}", path.display()));
        }
    }
    ExitCode::SUCCESS
}

fn inspect_pipeline(args: InspectArgs) -> ExitCode {
    let fail = |message: String| {
        eprintln!("arbiter-video inspect: {message}");
        ExitCode::FAILURE
    };
    let manifest =
        if args.pipeline.as_os_str() == arbiter::pipeline::TINY && !args.pipeline.exists() {
            Manifest::tiny()
        } else {
            match Manifest::load(&args.pipeline) {
                Ok(m) => m,
                Err(error) => return fail(error.to_string()),
            }
        };
    let placements = match parse_placements(&args.placement) {
        Ok(p) => p,
        Err(message) => return fail(message),
    };
    if let Err(v) = manifest.check_placements(&placements) {
        return fail(v.to_string());
    }
    let shape = match manifest.shape(
        args.width.unwrap_or(0),
        args.height.unwrap_or(0),
        args.frames.unwrap_or(0),
        args.fps.unwrap_or(0),
        args.steps.unwrap_or(0),
    ) {
        Ok(shape) => shape,
        Err(v) => return fail(v.to_string()),
    };
    let report = inspect::report(&manifest, &shape, &placements);
    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(error) => return fail(error.to_string()),
        }
    } else {
        print!("{}", inspect::text(&report));
    }
    ExitCode::SUCCESS
}

/// Human lines on stderr, which the supervisor sends to the job's log file; `RUST_LOG`
/// filters (default `info`).
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
