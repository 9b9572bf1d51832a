//! Loading a safetensors file onto a device as fast as the page cache can deliver it.
//!
//! The file's whole data section goes into ONE uint8 buffer on the target device, and every
//! tensor returned is a view of it: one allocation instead of hundreds, and no per-tensor
//! copies. Reading is parallel, because one thread cannot drain the page cache.
//!
//! - To the CPU, reader threads `pread` chunks straight into the buffer.
//! - To a GPU, they `pread` into a small ring of pinned host buffers ([`Staging`]) while the
//!   main thread copies each filled buffer to the GPU on a side stream; pinned copies run
//!   at 51-55 GB/s on the H100 host, pageable ones at 6.5-9 GB/s, and the whole component
//!   is never held in pageable memory first.
//!
//! Measured on H100 hosts (arbiter-loadbench, a warm 16 GiB bf16 file, 2026-11-23, three
//! machines): to the GPU, 8 threads with the default options load at 40-48 GB/s, 0.72-0.87
//! of the pinned copy rate measured in the same run; 16 threads at 45-48 GB/s; 4 threads at
//! 26-32 GB/s. Chunks of 2-16 MiB did equally well, 64 MiB chunks worse (31-43 GB/s at 8
//! threads). The page cache read into small buffers gave 47-63 GB/s with 8 threads (the
//! older 22 GB/s figure was taken another way). To the CPU, 8/16 threads: 20/29 GB/s.
//!
//! Because the tensors share one buffer, its memory is returned only when the last of them
//! is dropped: load one file per component that is dropped as a whole.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
use tch::{Device, Kind, Tensor};

use crate::readers::{ReadTime, reader_died};
use crate::safetensors::{Header, io, read_header_of};
use crate::staging::{Staging, check_ring, fill_staged};
use crate::weights_error::WeightsError;

/// How a load reads and copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Reader threads. On the H100 host 8 reach the pinned-copy ceiling of a GPU load; the
    /// page cache itself scales a little further, which only CPU loads can use.
    pub threads: usize,
    /// The unit of reading (CPU) or of staging and host-to-device copy (GPU). Keep it a
    /// power of two: libtorch's pinned allocator rounds every buffer up to one.
    pub chunk_bytes: usize,
    /// Pinned buffers in the GPU ring; the pinned memory used is `staging_slots *
    /// chunk_bytes` (128 MiB by default). The threads share the chunks being filled
    /// (`chunk_bytes / threads` each), so the slots only need to cover the copies in flight.
    pub staging_slots: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            threads: 8,
            chunk_bytes: 8 << 20,
            staging_slots: 16,
        }
    }
}

impl LoadOptions {
    pub(crate) fn check(&self) -> Result<(), WeightsError> {
        if self.threads == 0 {
            return Err(WeightsError::Options("threads must be at least 1".into()));
        }
        check_ring(self.chunk_bytes, self.staging_slots)
    }
}

/// A loaded file: its tensors in file order, and how the load went.
#[derive(Debug)]
pub struct Loaded {
    pub tensors: Vec<(String, Tensor)>,
    pub stats: LoadStats,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LoadStats {
    /// The data section's size: what was read and moved.
    pub bytes: u64,
    /// Wall time of the whole load, from opening the file to the last tensor view.
    pub seconds: f64,
    /// Time spent inside `pread`, summed over the reader threads (so up to `threads *
    /// seconds`); well below that means the readers waited for copies or staging slots.
    pub read_seconds: f64,
    pub threads: usize,
    /// Whether the data went through pinned staging buffers (every GPU load).
    pub pinned: bool,
}

impl LoadStats {
    pub fn gb_per_s(&self) -> f64 {
        rate(self.bytes, self.seconds)
    }
}

/// Bytes per second in GB/s (10^9), 0 for an instant: how every load and copy rate here is
/// given.
pub fn rate(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / seconds / 1e9
    } else {
        0.0
    }
}

/// Loads every tensor of the safetensors file at `path` onto `device`. On a CUDA device this
/// sets up pinned staging buffers for this one load; a process that loads several files
/// keeps a [`Staging`] and calls [`load_staged`].
pub fn load(path: &Path, device: Device, options: &LoadOptions) -> Result<Loaded, WeightsError> {
    options.check()?;
    match device {
        Device::Cpu => load_cpu(path, options),
        Device::Cuda(_) => {
            let mut staging = Staging::new(device, options.chunk_bytes, options.staging_slots)?;
            load_staged(path, &mut staging, options.threads)
        }
        other => Err(WeightsError::Options(format!(
            "loading onto {other:?} is not supported (CPU or CUDA only)"
        ))),
    }
}

/// Loads the file onto `staging`'s GPU through its pinned buffers, with `threads` readers.
pub fn load_staged(
    path: &Path,
    staging: &mut Staging,
    threads: usize,
) -> Result<Loaded, WeightsError> {
    if threads == 0 {
        return Err(WeightsError::Options("threads must be at least 1".into()));
    }
    let start = Instant::now();
    let (file, header) = open(path)?;
    let buffer = allocate(path, &header, staging.device())?;
    let read = fill_staged(path, &file, &header, &buffer, staging, threads)?;
    finish(path, &header, &buffer, start, read, true)
}

/// Loads the file into one pinned (page-locked) host buffer for `device`, read by parallel
/// `pread`s straight into it: what block streaming copies from, so that each block crosses
/// PCIe at the pinned rate. Pinning tensor by tensor after a pageable load costs a second
/// copy and one driver call per tensor; this pins once. Without a CUDA device it is an
/// ordinary CPU load.
pub fn load_pinned(
    path: &Path,
    device: Device,
    options: &LoadOptions,
) -> Result<Loaded, WeightsError> {
    options.check()?;
    if !device.is_cuda() {
        return load_cpu(path, options);
    }
    let start = Instant::now();
    let (file, header) = open(path)?;
    let len = usize::try_from(header.data_len()).map_err(|_| {
        WeightsError::Options(format!(
            "{}: the data section is too large to index",
            path.display()
        ))
    })?;
    // Fast path: fill ordinary huge-page memory with parallel reads, then register it.
    if len > 0
        && let Some(mapping) = crate::pinned::Mapping::new(len)
    {
        // SAFETY: the view is dropped below, before the mapping is pinned or dropped.
        let view = unsafe { mapping.view() };
        let read = fill_cpu(path, &file, &header, &view, options)?;
        drop(view);
        if let Ok(pinned) = mapping.pin() {
            let buffer = first_bytes(path, &pinned, len)?;
            return finish(path, &header, &buffer, start, read, true);
        }
    }
    // Else through libtorch's pinned allocator (slower to pin; rounds up to a power of two).
    let pinned =
        crate::stream::empty_pinned(len.max(1), device).map_err(|source| WeightsError::Stream {
            path: path.to_path_buf(),
            source,
        })?;
    let buffer = first_bytes(path, &pinned, len)?;
    let read = fill_cpu(path, &file, &header, &buffer, options)?;
    finish(path, &header, &buffer, start, read, true)
}

fn load_cpu(path: &Path, options: &LoadOptions) -> Result<Loaded, WeightsError> {
    let start = Instant::now();
    let (file, header) = open(path)?;
    let buffer = allocate(path, &header, Device::Cpu)?;
    advise_huge_pages(&buffer, header.data_len());
    let read = fill_cpu(path, &file, &header, &buffer, options)?;
    finish(path, &header, &buffer, start, read, false)
}

fn open(path: &Path) -> Result<(File, Header), WeightsError> {
    let file = File::open(path).map_err(io(path, "opening"))?;
    let header = read_header_of(&file, path)?;
    advise(&file, header.data_start, header.data_len());
    Ok((file, header))
}

/// Tells the kernel the range will be read soon and in order, so it reads ahead for a cold
/// file. Advice only: a kernel that refuses it costs speed, not correctness, so failures are
/// ignored.
pub(crate) fn advise(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    let _ = posix_fadvise(file, offset, len, PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL);
    let _ = posix_fadvise(file, offset, len, PosixFadviseAdvice::POSIX_FADV_WILLNEED);
}

/// Asks for 2 MiB pages under a fresh CPU buffer. Reading into fresh memory is bound by
/// page faults, one per 4 KiB page: on the development machine a 256 MiB load ran at
/// 1.9 GB/s with small pages and 7 GB/s with huge ones. Where transparent huge pages are
/// set to `madvise` (the common default) nothing else enables them. Advice only: failures
/// are ignored.
fn advise_huge_pages(buffer: &Tensor, len: u64) {
    const HUGE: usize = 2 << 20;
    let start = buffer.data_ptr() as usize;
    let Some(end) = usize::try_from(len)
        .ok()
        .and_then(|len| start.checked_add(len))
    else {
        return;
    };
    // Only whole huge pages inside the buffer.
    let (first, last) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
    let Some(addr) = std::ptr::NonNull::new(first as *mut std::ffi::c_void) else {
        return;
    };
    if last > first {
        // SAFETY: [first, last) lies inside the buffer's allocation, which nothing has
        // touched yet; MADV_HUGEPAGE changes how its pages are backed, never their contents.
        let _ = unsafe {
            nix::sys::mman::madvise(
                addr,
                last - first,
                nix::sys::mman::MmapAdvise::MADV_HUGEPAGE,
            )
        };
    }
}

/// The one buffer every tensor will view.
pub(crate) fn allocate(
    path: &Path,
    header: &Header,
    device: Device,
) -> Result<Tensor, WeightsError> {
    let len = i64::try_from(header.data_len()).map_err(|_| {
        WeightsError::Options(format!(
            "{}: the data section is too large to index",
            path.display()
        ))
    })?;
    Tensor::f_empty([len], (Kind::Uint8, device)).map_err(|source| WeightsError::Torch {
        path: path.to_path_buf(),
        action: "allocating the buffer for the data section",
        source,
    })
}

/// The first `len` bytes of a pinned buffer (which may be larger: rounded up to pages or
/// to a power of two).
fn first_bytes(path: &Path, pinned: &Tensor, len: usize) -> Result<Tensor, WeightsError> {
    pinned
        .f_narrow(0, 0, len as i64)
        .map_err(|source| WeightsError::Torch {
            path: path.to_path_buf(),
            action: "viewing the pinned buffer",
            source,
        })
}

/// Reads the data section into a CPU `buffer` with up to `options.threads` threads, each
/// taking the next `chunk_bytes` piece in turn.
fn fill_cpu(
    path: &Path,
    file: &File,
    header: &Header,
    buffer: &Tensor,
    options: &LoadOptions,
) -> Result<ReadTime, WeightsError> {
    let len = header.data_len() as usize;
    if len == 0 {
        return Ok(ReadTime::default());
    }
    // SAFETY: `buffer` is a freshly allocated, contiguous CPU uint8 tensor of exactly `len`
    // bytes (len > 0, so its pointer is non-null). Nothing else reads or writes its memory
    // while the slice lives: the handle is not shared and no view of it exists yet, and the
    // slice is gone when this function returns, before `finish` makes the views.
    let data = unsafe { std::slice::from_raw_parts_mut(buffer.data_ptr().cast::<u8>(), len) };
    let pieces = data.chunks_mut(options.chunk_bytes);
    let threads = options.threads.min(pieces.len());
    // Each piece is a disjoint `&mut [u8]` handed out once, so the threads never share bytes.
    let pieces = Mutex::new(pieces.enumerate());
    let failed = AtomicBool::new(false);
    let reader = || -> Result<Duration, WeightsError> {
        let mut spent = Duration::ZERO;
        while !failed.load(Ordering::Relaxed) {
            // A poisoned lock means another reader panicked; the iterator itself is intact.
            let next = pieces
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .next();
            let Some((index, piece)) = next else { break };
            let offset = header.data_start + (index * options.chunk_bytes) as u64;
            let started = Instant::now();
            if let Err(e) = file.read_exact_at(piece, offset) {
                failed.store(true, Ordering::Relaxed);
                return Err(io(path, "reading")(e));
            }
            spent += started.elapsed();
        }
        Ok(spent)
    };
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads).map(|_| scope.spawn(reader)).collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let mut total = ReadTime {
        spent: Duration::ZERO,
        threads,
    };
    for result in results {
        total.spent += result.map_err(|panic| reader_died(path, &panic))??;
    }
    Ok(total)
}

/// Cuts the filled buffer into the file's tensors.
pub(crate) fn finish(
    path: &Path,
    header: &Header,
    buffer: &Tensor,
    start: Instant,
    read: ReadTime,
    pinned: bool,
) -> Result<Loaded, WeightsError> {
    let tensors = header
        .entries
        .iter()
        .map(|entry| Ok((entry.name.clone(), view(path, buffer, entry)?)))
        .collect::<Result<Vec<_>, WeightsError>>()?;
    Ok(Loaded {
        tensors,
        stats: LoadStats {
            bytes: header.data_len(),
            seconds: start.elapsed().as_secs_f64(),
            read_seconds: read.spent.as_secs_f64(),
            threads: read.threads,
            pinned,
        },
    })
}

/// The entry's bytes of `buffer` as a tensor of its dtype and shape: a view, or a copy of
/// its own when its offset is not a multiple of its element size (libtorch cannot view
/// misaligned memory as a wider dtype; our writer never produces such files).
fn view(
    path: &Path,
    buffer: &Tensor,
    entry: &crate::safetensors::Entry,
) -> Result<Tensor, WeightsError> {
    let torch = |action| {
        move |source| WeightsError::Torch {
            path: path.to_path_buf(),
            action,
            source,
        }
    };
    // Offsets were checked against the data section, whose length fits in an i64.
    let (begin, len) = (entry.begin as i64, entry.byte_len() as i64);
    let bytes = buffer
        .f_narrow(0, begin, len)
        .map_err(torch("slicing a tensor out of the buffer"))?;
    let bytes = if entry
        .begin
        .is_multiple_of(entry.kind.elt_size_in_bytes() as u64)
    {
        bytes
    } else {
        let mut own = Tensor::f_empty([len], (Kind::Uint8, buffer.device()))
            .map_err(torch("allocating a copy of a misaligned tensor"))?;
        own.f_copy_(&bytes)
            .map_err(torch("copying a misaligned tensor"))?;
        own
    };
    bytes
        .f_view_dtype(entry.kind)
        .and_then(|t| t.f_view_(&entry.shape))
        .map_err(|source| WeightsError::BadEntry {
            path: path.to_path_buf(),
            name: entry.name.clone(),
            problem: format!(
                "cannot view its bytes as {:?} {:?}: {source}",
                entry.kind, entry.shape
            ),
        })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;
    use crate::safetensors::{assemble, write};

    fn tensors() -> Vec<(&'static str, Tensor)> {
        let cpu = Device::Cpu;
        vec![
            ("bf16", Tensor::randn([33, 7], (Kind::BFloat16, cpu))),
            ("f16", Tensor::randn([5, 3], (Kind::Half, cpu))),
            ("f32", Tensor::randn([1000], (Kind::Float, cpu))),
            ("f64", Tensor::randn([3, 3, 3], (Kind::Double, cpu))),
            ("i64", Tensor::arange(11, (Kind::Int64, cpu)) - 5),
            ("i32", Tensor::arange(9, (Kind::Int, cpu)) * -3),
            ("i16", Tensor::arange(13, (Kind::Int16, cpu))),
            ("i8", Tensor::arange(7, (Kind::Int8, cpu)) - 3),
            ("u8", Tensor::arange(250, (Kind::Uint8, cpu))),
            (
                "f8",
                Tensor::randn([17, 5], (Kind::Float, cpu)).to_kind(Kind::Float8e4m3fn),
            ),
            (
                "bool",
                Tensor::arange(6, (Kind::Int64, cpu)).remainder(2).eq(0),
            ),
            ("scalar", Tensor::from(2.5f32)),
            ("empty", Tensor::zeros([0, 4], (Kind::Float, cpu))),
        ]
    }

    fn written(dir: &tempfile::TempDir) -> (PathBuf, Vec<(&'static str, Tensor)>) {
        let path = dir.path().join("model.safetensors");
        let tensors = tensors();
        let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
        write(&path, &refs, &BTreeMap::new()).unwrap();
        (path, tensors)
    }

    /// Equal bit for bit (libtorch cannot compare float8 tensors on the CPU, so those are
    /// compared as their bytes).
    fn same(a: &Tensor, b: &Tensor) -> bool {
        if a.kind() == Kind::Float8e4m3fn && b.kind() == Kind::Float8e4m3fn {
            a.view_dtype(Kind::Uint8).equal(&b.view_dtype(Kind::Uint8))
        } else {
            a.equal(b)
        }
    }

    #[test]
    fn every_dtype_round_trips_exactly_with_one_and_four_threads_and_small_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let (path, expected) = written(&dir);
        for (threads, chunk_bytes) in [(1, 64 << 20), (1, 100), (4, 100), (4, 4096), (4, 7)] {
            let options = LoadOptions {
                threads,
                chunk_bytes,
                staging_slots: 2,
            };
            let loaded = load(&path, Device::Cpu, &options).unwrap();
            assert_eq!(loaded.tensors.len(), expected.len());
            for (name, tensor) in &expected {
                let (_, got) = loaded.tensors.iter().find(|(n, _)| n == name).unwrap();
                assert_eq!(got.kind(), tensor.kind(), "{name}");
                assert_eq!(got.size(), tensor.size(), "{name}");
                assert!(same(got, tensor), "{name} with {options:?}");
            }
            let stats = &loaded.stats;
            assert_eq!(
                stats.bytes,
                crate::safetensors::read_header(&path).unwrap().data_len()
            );
            assert!(stats.threads >= 1 && stats.threads <= threads);
            assert!(!stats.pinned);
            assert!(stats.seconds > 0.0 && stats.gb_per_s() > 0.0);
        }
    }

    #[test]
    fn the_tensors_are_views_of_one_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = written(&dir);
        let loaded = load(&path, Device::Cpu, &LoadOptions::default()).unwrap();
        let header = crate::safetensors::read_header(&path).unwrap();
        let mut base = None;
        for ((name, tensor), entry) in loaded.tensors.iter().zip(&header.entries) {
            assert_eq!(name, &entry.name);
            if entry.byte_len() > 0 {
                let start = tensor.data_ptr() as usize - entry.begin as usize;
                assert_eq!(
                    *base.get_or_insert(start),
                    start,
                    "{name} is not in the buffer"
                );
            }
        }
        assert!(base.is_some());
    }

    #[test]
    fn a_misaligned_tensor_is_copied_out_and_still_exact() {
        // A u8 at offset 0 pushes the f32 to offset 3 and the i16 to offset 15.
        let f32s: Vec<f32> = vec![1.5, -2.25, 3.0];
        let i16s: Vec<i16> = vec![-7, 300];
        let mut data = vec![9u8, 8, 7];
        data.extend(f32s.iter().flat_map(|v| v.to_le_bytes()));
        data.extend(i16s.iter().flat_map(|v| v.to_le_bytes()));
        let json = r#"{"u":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},"f":{"dtype":"F32","shape":[3],"data_offsets":[3,15]},"s":{"dtype":"I16","shape":[1,2],"data_offsets":[15,19]}}"#;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd.safetensors");
        std::fs::write(&path, assemble(json, &data)).unwrap();
        for threads in [1, 4] {
            let options = LoadOptions {
                threads,
                chunk_bytes: 5,
                staging_slots: 1,
            };
            let loaded = load(&path, Device::Cpu, &options).unwrap();
            let get = |name: &str| &loaded.tensors.iter().find(|(n, _)| n == name).unwrap().1;
            assert!(get("u").equal(&Tensor::from_slice(&[9u8, 8, 7])));
            assert!(get("f").equal(&Tensor::from_slice(&f32s)));
            assert!(get("s").equal(&Tensor::from_slice(&i16s).view([1, 2])));
        }
    }

    #[test]
    fn an_empty_file_loads_and_bad_options_or_devices_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.safetensors");
        write(&path, &[], &BTreeMap::new()).unwrap();
        let loaded = load(&path, Device::Cpu, &LoadOptions::default()).unwrap();
        assert!(loaded.tensors.is_empty());
        assert_eq!(loaded.stats.bytes, 0);
        for options in [
            LoadOptions {
                threads: 0,
                ..LoadOptions::default()
            },
            LoadOptions {
                chunk_bytes: 0,
                ..LoadOptions::default()
            },
            LoadOptions {
                staging_slots: 0,
                ..LoadOptions::default()
            },
        ] {
            assert!(matches!(
                load(&path, Device::Cpu, &options),
                Err(WeightsError::Options(_))
            ));
        }
        assert!(matches!(
            load(&path, Device::Mps, &LoadOptions::default()),
            Err(WeightsError::Options(_))
        ));
        if !tch::Cuda::is_available() {
            let err = load(&path, Device::Cuda(0), &LoadOptions::default()).unwrap_err();
            assert!(
                matches!(
                    err,
                    WeightsError::StagingStream {
                        source: crate::stream::StreamError::NoDevice,
                        ..
                    }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn a_file_truncated_after_its_header_was_checked_fails_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = written(&dir);
        let file = File::open(&path).unwrap();
        let header = read_header_of(&file, &path).unwrap();
        let short = File::options().write(true).open(&path).unwrap();
        short.set_len(header.data_start + 10).unwrap();
        let buffer = allocate(&path, &header, Device::Cpu).unwrap();
        let err = fill_cpu(&path, &file, &header, &buffer, &LoadOptions::default()).unwrap_err();
        assert!(matches!(err, WeightsError::Io { .. }), "{err}");
        assert!(err.to_string().contains("model.safetensors"), "{err}");
    }

    #[test]
    fn on_a_gpu_a_load_matches_the_cpu_load() {
        if !tch::Cuda::is_available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (path, expected) = written(&dir);
        let gpu = Device::Cuda(0);
        let mut staging = Staging::new(gpu, 256, 2).unwrap();
        for threads in [1, 3] {
            let loaded = load_staged(&path, &mut staging, threads).unwrap();
            assert!(loaded.stats.pinned);
            for (name, tensor) in &expected {
                let (_, got) = loaded.tensors.iter().find(|(n, _)| n == name).unwrap();
                assert_eq!(got.device(), gpu);
                assert!(same(&got.to(Device::Cpu), tensor), "{name}");
            }
        }
        let loaded = load(&path, gpu, &LoadOptions::default()).unwrap();
        assert_eq!(loaded.tensors.len(), expected.len());
    }
}
