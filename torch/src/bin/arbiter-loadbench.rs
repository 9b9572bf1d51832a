//! Measures weight loading against the machine's own limits, in one run: the page-cache
//! read rate (1/8/16 threads), the pinned and pageable host-to-device copy rates, and
//! `load()` with several thread counts, each load given as a ratio to those limits.
//!
//! The page-cache rate is measured by reading into small per-thread buffers (as `prewarm`
//! does), an upper bound for any load: a load also writes every byte into fresh memory.
//!
//! `arbiter-loadbench DIR_OR_FILES... [--json OUT]` measures; `arbiter-loadbench --make 16
//! --out FILE` writes a safetensors file of random bf16 tensors to measure with.

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
    /// Thread counts for load().
    #[arg(long, value_delimiter = ',', default_value = "4,8,16")]
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
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match (args.make, &args.out) {
        (Some(gib), Some(out)) => make(gib, args.tensor_gib, out),
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

/// Writes `gib` GiB of bf16 tensors of `tensor_gib` each. They all hold the same random
/// values (one tensor's worth of memory, whatever the file's size): rates do not depend on
/// the values.
fn make(gib: f64, tensor_gib: f64, out: &Path) -> Result<(), String> {
    if !(gib > 0.0 && tensor_gib > 0.0) {
        return Err("--make and --tensor-gib must be positive".into());
    }
    let total = (gib * GIB / 2.0) as i64;
    let per_tensor = ((tensor_gib * GIB / 2.0) as i64).clamp(1, total.max(1));
    let base =
        Tensor::f_randn([per_tensor], (Kind::BFloat16, Device::Cpu)).map_err(|e| e.to_string())?;
    let mut parts = Vec::new();
    let mut left = total;
    while left > 0 {
        let n = left.min(per_tensor);
        parts.push((
            format!("blocks.{:04}.weight", parts.len()),
            base.narrow(0, 0, n),
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
    for &threads in &args.load_threads {
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
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(report))
            .map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

fn best_of(repeat: usize, mut run: impl FnMut() -> Result<f64, String>) -> Result<f64, String> {
    let mut best = 0.0f64;
    for _ in 0..repeat {
        best = best.max(run()?);
    }
    Ok(best)
}
