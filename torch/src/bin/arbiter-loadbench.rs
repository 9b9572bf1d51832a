//! Measures weight loading against the machine's own limits, in one run: the page-cache
//! read rate (1/8/16 threads), the pinned and pageable host-to-device copy rates, and
//! `load()` with several thread counts, each load given as a ratio to those limits.
//!
//! The page-cache rate is measured by reading into small per-thread buffers (as `prewarm`
//! does), an upper bound for any load: a load also writes every byte into fresh memory.
//!
//! `arbiter-loadbench DIR_OR_FILES... [--json OUT]` measures; `arbiter-loadbench --make 16
//! --out FILE` writes a safetensors file of random bf16 tensors to measure with.
//!
//! `arbiter-loadbench --once FILES... [--checksum NAME,...]` only loads: once, with the
//! worker's settings, without reading the files first (so a file dropped from the page cache
//! loads cold), timed from the call to the last tensor on the device, and prints one JSON
//! line. examples/gpu-loader-compare.py runs it beside other loaders, each in a fresh process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use arbiter_torch::load::{LoadOptions, load_staged};
use arbiter_torch::stream::host_to_device_rate;
use arbiter_torch::{Staging, allocator, load, prewarm, safetensors};
use clap::Parser;
use serde_json::json;
use tch::{Device, Kind, Tensor};

const GIB: f64 = (1u64 << 30) as f64;

#[derive(Parser, Debug)]
#[command(about = "Measures safetensors loading against page-cache and host-to-device limits")]
struct Args {
    /// Safetensors files, or directories whose *.safetensors files are all measured.
    paths: Vec<PathBuf>,
    /// Thread counts for the page-cache read rate.
    #[arg(long, value_delimiter = ',', default_value = "1,8,16")]
    read_threads: Vec<usize>,
    /// Thread counts for load() [default: 4,8,16; with --once, one count, default 16].
    #[arg(long, value_delimiter = ',')]
    load_threads: Vec<usize>,
    /// Load chunk (and staging slot) size in MiB [default: LoadOptions's].
    #[arg(long)]
    chunk_mib: Option<usize>,
    /// Pinned staging slots for GPU loads [default: LoadOptions's].
    #[arg(long)]
    slots: Option<usize>,
    /// Size of the tensor copied host-to-device to measure the copy rates, in GiB.
    #[arg(long, default_value_t = 2)]
    copy_gib: usize,
    /// Runs of each measurement; the best is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Load onto the CPU even when a GPU is present.
    #[arg(long)]
    cpu: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Instead of measuring, write a file of this many GiB of random bf16 tensors to --out.
    #[arg(long, requires = "out")]
    make: Option<f64>,
    #[arg(long)]
    out: Option<PathBuf>,
    /// Size of each tensor --make writes, in GiB.
    #[arg(long, default_value_t = 1.0)]
    tensor_gib: f64,
    /// Instead of measuring: load the files once, with the worker's settings and without
    /// reading them first, timed from the call to the last tensor on the device; prints one
    /// JSON line.
    #[arg(long, conflicts_with = "make")]
    once: bool,
    /// With --once: tensors whose bytes to checksum after the load, the sum of b_i * (i % 65521
    /// + 1) over their bytes b_i.
    #[arg(long, value_delimiter = ',', requires = "once")]
    checksum: Vec<String>,
    /// Also measure loading from the supervisor's host weight pool at this socket (its
    /// `[pool]` must serve the files, e.g. through `allow_dirs`): mapping, registering the
    /// pool's pages with the driver, and the copy from them, against the pinned copy rate and
    /// against pinning the file in this process (`load_pinned`, what streamed components do).
    #[arg(long, conflicts_with_all = ["once", "make"])]
    pool: Option<PathBuf>,
}

/// The reader threads of a worker's loads (video-service's job settings).
const WORKER_THREADS: usize = 16;

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match (args.make, &args.out) {
        (Some(gib), Some(out)) => make(gib, args.tensor_gib, out),
        _ if args.once => once(&args).and_then(|report| {
            let line = serde_json::to_string(&report).map_err(|e| e.to_string())?;
            println!("{line}");
            match &args.json {
                Some(path) => std::fs::write(path, line + "\n")
                    .map_err(|e| format!("{}: {e}", path.display())),
                None => Ok(()),
            }
        }),
        _ => bench(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("arbiter-loadbench: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `gib` GiB of bf16 tensors of `tensor_gib` each. They are views of one random
/// tensor (one tensor's worth of memory, whatever the file's size: rates do not depend on
/// the values), tensor `i` starting at its element `i`, so that no two tensors hold the same
/// bytes and a load that swaps them fails its checksums.
fn make(gib: f64, tensor_gib: f64, out: &Path) -> Result<(), String> {
    if !(gib > 0.0 && tensor_gib > 0.0) {
        return Err("--make and --tensor-gib must be positive".into());
    }
    let total = (gib * GIB / 2.0) as i64;
    let per_tensor = ((tensor_gib * GIB / 2.0) as i64).clamp(1, total.max(1));
    let count = (total + per_tensor - 1) / per_tensor;
    let base = Tensor::f_randn([per_tensor + count], (Kind::BFloat16, Device::Cpu))
        .map_err(|e| e.to_string())?;
    let mut parts = Vec::new();
    let mut left = total;
    while left > 0 {
        let n = left.min(per_tensor);
        let index = parts.len();
        parts.push((
            format!("blocks.{index:04}.weight"),
            base.narrow(0, index as i64, n),
        ));
        left -= n;
    }
    let refs: Vec<(&str, &Tensor)> = parts.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let metadata = BTreeMap::from([("generator".to_string(), "arbiter-loadbench".to_string())]);
    let started = Instant::now();
    let bytes = safetensors::write(out, &refs, &metadata).map_err(|e| e.to_string())?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "wrote {} ({:.2} GiB, {} tensors) in {seconds:.1} s, {:.2} GB/s",
        out.display(),
        bytes as f64 / GIB,
        refs.len(),
        bytes as f64 / seconds / 1e9
    );
    Ok(())
}

fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries =
                std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    if files.is_empty() {
        return Err("no safetensors files given (files or directories)".into());
    }
    Ok(files)
}

/// The `--once` load: the files onto the GPU (the CPU with --cpu or without one) with the
/// worker's options, every tensor held until the checksums are taken. The CUDA context is
/// made first and timed apart, as a worker has one before its first load.
fn once(args: &Args) -> Result<serde_json::Value, String> {
    let files = files(&args.paths)?;
    let threads = match args.load_threads[..] {
        [] => WORKER_THREADS,
        [threads] => threads,
        _ => return Err("--once loads with one --load-threads count".into()),
    };
    let defaults = LoadOptions::default();
    let options = LoadOptions {
        threads,
        chunk_bytes: args
            .chunk_mib
            .map_or(defaults.chunk_bytes, |mib| mib.max(1) << 20),
        staging_slots: args.slots.unwrap_or(defaults.staging_slots),
    };
    let device = if !args.cpu && tch::Cuda::is_available() {
        Device::Cuda(0)
    } else {
        Device::Cpu
    };
    let context = Instant::now();
    if device.is_cuda() {
        let _warm = Tensor::f_zeros([1], (Kind::Float, device)).map_err(|e| e.to_string())?;
        tch::Cuda::synchronize(0);
    }
    let context_ms = context.elapsed().as_secs_f64() * 1e3;

    let started = Instant::now();
    let mut loaded = Vec::new();
    for file in &files {
        loaded.push(load(file, device, &options).map_err(|e| e.to_string())?);
    }
    if device.is_cuda() {
        tch::Cuda::synchronize(0);
    }
    let seconds = started.elapsed().as_secs_f64();

    let bytes: u64 = loaded.iter().map(|l| l.stats.bytes).sum();
    let mut checksums = serde_json::Map::new();
    for name in &args.checksum {
        let tensor = loaded
            .iter()
            .flat_map(|l| &l.tensors)
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| format!("--checksum {name}: no such tensor in the files"))?;
        checksums.insert(name.clone(), json!(checksum(tensor)?));
    }
    Ok(json!({
        "loader": "arbiter",
        "version": env!("CARGO_PKG_VERSION"),
        "files": files,
        "device": format!("{device:?}"),
        "threads": options.threads,
        "chunk_bytes": options.chunk_bytes,
        "staging_slots": options.staging_slots,
        "context_ms": context_ms,
        "bytes": bytes,
        "tensors": loaded.iter().map(|l| l.tensors.len()).sum::<usize>(),
        "seconds": seconds,
        "gb_per_s": bytes as f64 / seconds / 1e9,
        "loads": loaded.iter().map(|l| &l.stats).collect::<Vec<_>>(),
        "checksums": checksums,
    }))
}

/// A position-weighted sum of a tensor's bytes `b_i`: the sum of `b_i * (i % 65521 + 1)`,
/// exact in an i64 for tensors up to ~500 GB. Unlike a plain sum it changes when pieces of
/// the tensor trade places. examples/gpu-loader-compare.py computes the same, of the file's
/// bytes and of what other loaders loaded. Computed on the tensor's device, in pieces.
fn checksum(tensor: &Tensor) -> Result<i64, String> {
    const PIECE: i64 = 16 << 20;
    let torch = |e: tch::TchError| e.to_string();
    let bytes = tensor
        .f_contiguous()
        .and_then(|t| t.f_flatten(0, -1))
        .and_then(|t| t.f_view_dtype(Kind::Uint8))
        .map_err(torch)?;
    let len = bytes.size()[0];
    let mut sum = 0i64;
    let mut start = 0;
    while start < len {
        let n = PIECE.min(len - start);
        let weights = Tensor::f_arange_start(start, start + n, (Kind::Int64, bytes.device()))
            .and_then(|w| w.f_remainder(65521))
            .and_then(|w| w.f_add_scalar(1))
            .map_err(torch)?;
        let piece = bytes
            .f_narrow(0, start, n)
            .and_then(|b| b.f_to_kind(Kind::Int64))
            .and_then(|b| b.f_mul(&weights))
            .and_then(|p| p.f_sum(Kind::Int64))
            .and_then(|s| s.f_int64_value(&[]))
            .map_err(torch)?;
        sum += piece;
        start += n;
    }
    Ok(sum)
}

fn bench(args: &Args) -> Result<(), String> {
    let files = files(&args.paths)?;
    let repeat = args.repeat.max(1);
    let device = if !args.cpu && tch::Cuda::is_available() {
        Device::Cuda(0)
    } else {
        Device::Cpu
    };
    let mut report = serde_json::Map::new();

    let first = prewarm(&files, 16, None).map_err(|e| e.to_string())?;
    let total = first.bytes;
    println!(
        "files: {} ({:.2} GiB); device {device:?}",
        files.len(),
        total as f64 / GIB
    );
    println!(
        "prewarm, 16 threads (cold if not cached): {:.2} GB/s",
        first.gb_per_s()
    );
    report.insert("files".into(), json!(files));
    report.insert("bytes".into(), json!(total));
    report.insert("prewarm".into(), json!(first));

    let mut page_cache = Vec::new();
    for &threads in &args.read_threads {
        let best = best_of(repeat, || {
            prewarm(&files, threads, None)
                .map(|s| s.gb_per_s())
                .map_err(|e| e.to_string())
        })?;
        println!("page cache, {threads:2} threads: {best:.2} GB/s");
        page_cache.push(json!({"threads": threads, "gb_per_s": best}));
    }
    let cache_limit = page_cache
        .iter()
        .filter_map(|r| r["gb_per_s"].as_f64())
        .fold(0.0, f64::max);
    report.insert("page_cache".into(), json!(page_cache));

    let mut pinned_limit = None;
    if let Device::Cuda(_) = device {
        let context = Instant::now();
        let _warm = Tensor::f_zeros([1], (Kind::Float, device)).map_err(|e| e.to_string())?;
        println!(
            "CUDA context: {:.0} ms",
            context.elapsed().as_secs_f64() * 1e3
        );
        let bytes = (args.copy_gib.max(1) as i64) << 30;
        let pinned = host_to_device_rate(bytes as usize, device, true, repeat)?;
        let pageable = host_to_device_rate(bytes as usize, device, false, repeat)?;
        println!(
            "host-to-device, pinned:   {pinned:.2} GB/s ({} GiB)",
            args.copy_gib
        );
        println!("host-to-device, pageable: {pageable:.2} GB/s");
        report.insert("h2d_pinned_gb_per_s".into(), json!(pinned));
        report.insert("h2d_pageable_gb_per_s".into(), json!(pageable));
        pinned_limit = Some(pinned);
    }

    let defaults = LoadOptions::default();
    let chunk_bytes = args
        .chunk_mib
        .map_or(defaults.chunk_bytes, |mib| mib.max(1) << 20);
    let slots = args.slots.unwrap_or(defaults.staging_slots);
    let mut staging = match device {
        Device::Cuda(_) => {
            Some(Staging::new(device, chunk_bytes, slots).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    let mut loads = Vec::new();
    let load_threads = match &args.load_threads[..] {
        [] => &[4, 8, 16][..],
        given => given,
    };
    for &threads in load_threads {
        let options = LoadOptions {
            threads,
            chunk_bytes,
            staging_slots: slots,
        };
        let mut best: Option<(f64, f64)> = None;
        for _ in 0..repeat {
            let (mut bytes, mut seconds, mut read, mut capacity) = (0u64, 0.0, 0.0, 0.0);
            for file in &files {
                let loaded = match staging.as_mut() {
                    Some(staging) => load_staged(file, staging, threads),
                    None => load(file, device, &options),
                }
                .map_err(|e| e.to_string())?;
                bytes += loaded.stats.bytes;
                seconds += loaded.stats.seconds;
                read += loaded.stats.read_seconds;
                capacity += loaded.stats.seconds * loaded.stats.threads as f64;
                drop(loaded);
                if device != Device::Cpu {
                    // Each load pays for its own device memory, as a worker's first does.
                    allocator::empty_cache().map_err(|e| e.to_string())?;
                }
            }
            let rate = bytes as f64 / seconds / 1e9;
            // How busy the readers were: 1.0 means always inside pread.
            let busy = read / capacity;
            if best.is_none_or(|(r, _)| rate > r) {
                best = Some((rate, busy));
            }
        }
        let (rate, busy) = best.unwrap_or_default();
        let of_cache = rate / cache_limit;
        let of_pinned = pinned_limit.map(|p| rate / p);
        print!(
            "load -> {device:?}, {threads:2} threads: {rate:.2} GB/s = {of_cache:.2} of page cache"
        );
        if let Some(of_pinned) = of_pinned {
            print!(", {of_pinned:.2} of pinned copy");
        }
        println!(" (readers {:.0}% in pread)", busy * 100.0);
        loads.push(json!({
            "threads": threads,
            "gb_per_s": rate,
            "of_page_cache": of_cache,
            "of_pinned": of_pinned,
            "reader_busy": busy,
        }));
    }
    report.insert("device".into(), json!(format!("{device:?}")));
    report.insert("chunk_bytes".into(), json!(chunk_bytes));
    report.insert("staging_slots".into(), json!(slots));
    report.insert("load".into(), json!(loads));
    if let Some(socket) = &args.pool {
        let options = LoadOptions {
            threads: WORKER_THREADS,
            chunk_bytes,
            staging_slots: slots,
        };
        let pool = pool_bench(socket, &files, device, repeat, pinned_limit, &options)?;
        report.insert("pool".into(), pool);
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(report))
            .map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// Loads from the weight pool at `socket`, as a worker does, `repeat` times (best kept): each
/// time the files are asked for and mapped, their pages registered with the driver (or not,
/// on the CPU) and copied to `device`, then everything dropped (unregistered, unmapped, the
/// device memory emptied). Beside it, `load_pinned` from the file (this process pinning its
/// own copy), the way a streamed component loads without the pool.
fn pool_bench(
    socket: &Path,
    files: &[PathBuf],
    device: Device,
    repeat: usize,
    pinned_limit: Option<f64>,
    options: &LoadOptions,
) -> Result<serde_json::Value, String> {
    use std::sync::Arc;

    use arbiter_torch::host::{HostBytes, load_host};

    let ratio = |rate: f64| pinned_limit.map(|p| rate / p);
    #[derive(Default, Clone, Copy)]
    struct Run {
        bytes: u64,
        mapped: u64,
        fetch_s: f64,
        register_s: f64,
        copy_s: f64,
    }
    let mut best: Option<Run> = None;
    let mut grants = Vec::new();
    for round in 0..repeat {
        let mut run = Run::default();
        for file in files {
            let started = Instant::now();
            let shared = arbiter::pool::fetch(socket, file, std::time::Duration::from_secs(600))
                .map_err(|e| e.to_string())?;
            run.fetch_s += started.elapsed().as_secs_f64();
            run.mapped += shared.mapped_len() as u64;
            if round == 0 {
                grants.push(json!(shared.grant()));
            }
            let host = if device.is_cuda() {
                let host = HostBytes::registered(shared);
                run.register_s += host.registration().map_err(|e| {
                    format!("{}: registering the pool's pages: {e}", file.display())
                })?;
                host
            } else {
                HostBytes::unregistered(shared)
            };
            let host = Arc::new(host);
            let loaded = load_host(file, &host, device).map_err(|e| e.to_string())?;
            if device.is_cuda() {
                tch::Cuda::synchronize(0);
            }
            run.bytes += loaded.stats.bytes;
            run.copy_s += loaded.stats.seconds;
            drop((loaded, host));
            if device.is_cuda() {
                allocator::empty_cache().map_err(|e| e.to_string())?;
            }
        }
        let total = |r: &Run| r.fetch_s + r.register_s + r.copy_s;
        if best.as_ref().is_none_or(|b| total(&run) < total(b)) {
            best = Some(run);
        }
    }
    let run = best.unwrap_or_default();
    let rate = |seconds: f64| load::rate(run.bytes, seconds);
    let whole = run.fetch_s + run.register_s + run.copy_s;
    // What registering costs, in pinned copies of the same bytes.
    let register_in_copies = pinned_limit
        .filter(|_| run.bytes > 0)
        .map(|p| run.register_s / (run.bytes as f64 / (p * 1e9)));
    println!(
        "pool: fetch+map {:.1} ms, register {:.1} ms ({:.1} GB/s of mapped pages{}), copy {:.2} GB/s{}; whole {:.2} GB/s{}",
        run.fetch_s * 1e3,
        run.register_s * 1e3,
        load::rate(run.mapped, run.register_s),
        register_in_copies.map_or(String::new(), |c| format!(" = {c:.2} pinned copies")),
        rate(run.copy_s),
        ratio(rate(run.copy_s)).map_or(String::new(), |r| format!(" = {r:.2} of pinned copy")),
        rate(whole),
        ratio(rate(whole)).map_or(String::new(), |r| format!(" = {r:.2} of pinned copy")),
    );
    // The same bytes pinned by this process from the file, as a streamed component does.
    let mut pinned_best = 0.0f64;
    if device.is_cuda() {
        for _ in 0..repeat {
            let (mut bytes, mut seconds) = (0u64, 0.0);
            for file in files {
                let loaded = load::load_pinned(file, device, options).map_err(|e| e.to_string())?;
                bytes += loaded.stats.bytes;
                seconds += loaded.stats.seconds;
            }
            pinned_best = pinned_best.max(load::rate(bytes, seconds));
        }
        println!(
            "pinning from the file (load_pinned, {} threads): {pinned_best:.2} GB/s{}",
            options.threads,
            ratio(pinned_best).map_or(String::new(), |r| format!(" = {r:.2} of pinned copy"))
        );
    }
    Ok(json!({
        "socket": socket,
        "grants": grants,
        "bytes": run.bytes,
        "mapped_bytes": run.mapped,
        "fetch_s": run.fetch_s,
        "register_s": run.register_s,
        "register_gb_per_s": load::rate(run.mapped, run.register_s),
        "register_in_pinned_copies": register_in_copies,
        "copy_gb_per_s": rate(run.copy_s),
        "copy_of_pinned": ratio(rate(run.copy_s)),
        "whole_gb_per_s": rate(whole),
        "whole_of_pinned": ratio(rate(whole)),
        "load_pinned_gb_per_s": device.is_cuda().then_some(pinned_best),
        "load_pinned_of_pinned": device.is_cuda().then(|| ratio(pinned_best)).flatten(),
    }))
}

fn best_of(repeat: usize, mut run: impl FnMut() -> Result<f64, String>) -> Result<f64, String> {
    let mut best = 0.0f64;
    for _ in 0..repeat {
        best = best.max(run()?);
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checksum as the Python side computes it, by hand over the file's bytes.
    fn reference(bytes: &[u8]) -> i64 {
        bytes
            .iter()
            .enumerate()
            .map(|(i, &b)| i64::from(b) * (i as i64 % 65521 + 1))
            .sum()
    }

    #[test]
    fn the_checksum_weighs_each_byte_by_its_place() {
        let t = Tensor::from_slice(&[1u8, 2, 3]);
        assert_eq!(checksum(&t).unwrap(), 1 + 2 * 2 + 3 * 3);
        // Bytes of a wider dtype, little-endian: 0x0201 is [1, 2].
        let t = Tensor::from_slice(&[0x0201i16, 0x0003]).view([2, 1]);
        assert_eq!(checksum(&t).unwrap(), 1 + 2 * 2 + 3 * 3);
        // Past the modulus, the weights start again at 1.
        let mut long = vec![0u8; 65523];
        long[65521] = 5;
        assert_eq!(checksum(&Tensor::from_slice(&long)).unwrap(), 5);
    }

    #[test]
    fn once_loads_a_made_file_and_its_checksums_match_the_files_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("made.safetensors");
        // 1 MiB in tensors of 256 KiB: four of them, each shifted by one element.
        make(1.0 / 1024.0, 1.0 / 4096.0, &path).unwrap();
        let header = safetensors::read_header(&path).unwrap();
        assert_eq!(header.entries.len(), 4);
        let data = std::fs::read(&path).unwrap();
        let of = |entry: &safetensors::Entry| {
            let start = (header.data_start + entry.begin) as usize;
            reference(&data[start..start + entry.byte_len() as usize])
        };
        let names: Vec<String> = header.entries.iter().map(|e| e.name.clone()).collect();
        let args = Args::parse_from(
            [
                "arbiter-loadbench",
                "--once",
                "--cpu",
                "--load-threads",
                "3",
            ]
            .into_iter()
            .map(String::from)
            .chain([
                path.display().to_string(),
                "--checksum".into(),
                names.join(","),
            ]),
        );
        let report = once(&args).unwrap();
        assert_eq!(report["bytes"], json!(header.data_len()));
        assert_eq!(report["tensors"], json!(4));
        assert_eq!(report["threads"], json!(3));
        assert_eq!(report["device"], json!("Cpu"));
        assert!(report["gb_per_s"].as_f64().unwrap() > 0.0);
        let mut seen = std::collections::HashSet::new();
        for entry in &header.entries {
            let sum = report["checksums"][&entry.name].as_i64().unwrap();
            assert_eq!(sum, of(entry), "{}", entry.name);
            assert!(
                seen.insert(sum),
                "{} holds another tensor's bytes",
                entry.name
            );
        }

        let two = Args::parse_from([
            "arbiter-loadbench",
            "--once",
            "--load-threads",
            "4,8",
            &path.display().to_string(),
        ]);
        assert!(once(&two).unwrap_err().contains("one --load-threads"));
        let missing = Args::parse_from([
            "arbiter-loadbench",
            "--once",
            "--cpu",
            &path.display().to_string(),
            "--checksum",
            "nope",
        ]);
        assert!(once(&missing).unwrap_err().contains("nope"));
    }
}
