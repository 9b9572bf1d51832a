//! The GPU half of `load`: a ring of pinned host buffers that reader threads fill from the
//! page cache while the main thread copies filled ones to the GPU.
//!
//! Pinned memory is what makes the copy fast (51-54 GB/s against 6.5 GB/s from pageable
//! memory on the GPU host) but it is scarce and slow to allocate, so the ring is small
//! (`slots * chunk_bytes`, 128 MiB by default) and a process keeps one [`Staging`] for all
//! its loads.
//!
//! The pipeline: a chunk of the file is staged in one slot. The readers share the chunks
//! being filled, `chunk_bytes / threads` at a time, so a handful of slots keeps every thread
//! busy. When a slot's last piece lands, the main thread queues its copy on the side stream
//! and records the slot's event; the slot goes back to the readers only once that event has
//! completed, so a slot is never refilled while the GPU still reads it.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tch::{Device, Tensor};

use crate::readers::{ReadTime, reader_died};
use crate::safetensors::{Header, io};
use crate::stream::{CopyStream, Event, StreamError, empty_pinned};
use crate::weights_error::WeightsError;

/// Pinned host buffers, their events and the copy stream, kept between loads.
#[derive(Debug)]
pub struct Staging {
    device: Device,
    chunk_bytes: usize,
    /// Pinned uint8 tensors of `chunk_bytes` each; they own the memory `addresses` point to.
    slots: Vec<Tensor>,
    addresses: Vec<usize>,
    /// One per slot: recorded after the copy out of the slot.
    events: Vec<Event>,
    stream: CopyStream,
}

impl Staging {
    /// `slots` pinned buffers of `chunk_bytes` each for loads onto the CUDA device `device`.
    /// Errors without a GPU ([`StreamError::NoDevice`]).
    pub fn new(device: Device, chunk_bytes: usize, slots: usize) -> Result<Self, WeightsError> {
        let stream_error = |source| WeightsError::StagingStream { device, source };
        let stream = CopyStream::new(device, false).map_err(stream_error)?;
        check_ring(chunk_bytes, slots)?;
        let mut staging = Self {
            device,
            chunk_bytes,
            slots: Vec::with_capacity(slots),
            addresses: Vec::with_capacity(slots),
            events: Vec::with_capacity(slots),
            stream,
        };
        for _ in 0..slots {
            let slot = empty_pinned(chunk_bytes, device).map_err(stream_error)?;
            staging.addresses.push(slot.data_ptr() as usize);
            staging.slots.push(slot);
            staging
                .events
                .push(Event::new(device).map_err(stream_error)?);
        }
        Ok(staging)
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn chunk_bytes(&self) -> usize {
        self.chunk_bytes
    }

    /// Page-locked host memory held by this staging.
    pub fn pinned_bytes(&self) -> u64 {
        (self.slots.len() * self.chunk_bytes) as u64
    }
}

/// Checks a ring's shape: chunks libtorch can index (it sizes tensors in `i64`) and at least
/// one slot. `LoadOptions::check` applies the same rule to every load, whose chunks are the
/// unit of reading too.
pub(crate) fn check_ring(chunk_bytes: usize, slots: usize) -> Result<(), WeightsError> {
    if chunk_bytes == 0 || i64::try_from(chunk_bytes).is_err() {
        return Err(WeightsError::Options(format!(
            "chunk_bytes must be between 1 and 2^63, not {chunk_bytes}"
        )));
    }
    if slots == 0 {
        return Err(WeightsError::Options(
            "staging_slots must be at least 1".into(),
        ));
    }
    Ok(())
}

/// Fills the device `buffer` with the data section of `file` through `staging`.
pub(crate) fn fill_staged(
    path: &Path,
    file: &File,
    header: &Header,
    buffer: &Tensor,
    staging: &mut Staging,
    threads: usize,
) -> Result<ReadTime, WeightsError> {
    let stream_error = |source| WeightsError::Stream {
        path: path.to_path_buf(),
        source,
    };
    // A failed earlier load may have left copies out of the slots in flight.
    staging.stream.synchronize().map_err(stream_error)?;
    // The buffer may reuse memory that kernels queued on the compute stream still read: the
    // copies wait for them.
    let mut ready = Event::new(staging.device).map_err(stream_error)?;
    ready.record_current().map_err(stream_error)?;
    staging.stream.wait(&ready).map_err(stream_error)?;

    let data_len = header.data_len();
    let schedule = Schedule::new(
        data_len,
        staging.chunk_bytes as u64,
        staging.slots.len(),
        threads,
    );
    if schedule.chunks == 0 {
        return Ok(ReadTime::default());
    }
    let threads = threads.min(schedule.pieces_total());
    let shared = Shared {
        schedule: Mutex::new(schedule),
        changed: Condvar::new(),
    };
    let (filled_tx, filled_rx) = mpsc::channel();
    let Staging {
        slots,
        addresses,
        events,
        stream,
        ..
    } = staging;
    let addresses = &*addresses;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let filled = filled_tx.clone();
                let shared = &shared;
                scope.spawn(move || {
                    read_pieces(path, file, header.data_start, addresses, shared, &filled)
                })
            })
            .collect();
        drop(filled_tx);
        let copied = copy_filled(path, buffer, (slots, events, stream), &shared, &filled_rx);
        // On failure the readers must not wait for slots that will never come back.
        shared.lock().stop = true;
        shared.changed.notify_all();
        let mut spent = Duration::ZERO;
        for handle in handles {
            spent += handle.join().map_err(|panic| reader_died(path, &panic))?;
        }
        copied?;
        stream.synchronize().map_err(stream_error)?;
        Ok(ReadTime { spent, threads })
    })
}

/// A filled slot holding chunk `chunk`, or why the readers stopped.
type Filled = Result<(usize, usize), WeightsError>;

/// The main thread's side: copy each filled slot to its place in `buffer`, hand slots back
/// as their copies complete.
fn copy_filled(
    path: &Path,
    buffer: &Tensor,
    (slots, events, stream): (&[Tensor], &mut [Event], &CopyStream),
    shared: &Shared,
    filled: &Receiver<Filled>,
) -> Result<(), WeightsError> {
    let stream_error = |source: StreamError| WeightsError::Stream {
        path: path.to_path_buf(),
        source,
    };
    let (chunks, chunk_bytes, data_len) = {
        let s = shared.lock();
        (s.chunks, s.chunk_bytes, s.data_len)
    };
    let release = |slot: usize| {
        shared.lock().free.push(slot);
        shared.changed.notify_all();
    };
    let mut in_flight: VecDeque<usize> = VecDeque::with_capacity(slots.len());
    for _ in 0..chunks {
        let (slot, chunk) = loop {
            // Copies on one stream complete in order: hand back the finished prefix.
            while let Some(&slot) = in_flight.front() {
                if !events[slot].query().map_err(stream_error)? {
                    break;
                }
                in_flight.pop_front();
                release(slot);
            }
            match filled.try_recv() {
                Ok(message) => break message?,
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => return Err(readers_gone(path)),
            }
            // Nothing filled yet: wait for the oldest copy (readers may be short of slots),
            // or, with none in flight, for the readers.
            if let Some(slot) = in_flight.pop_front() {
                events[slot].synchronize().map_err(stream_error)?;
                release(slot);
            } else {
                break filled.recv().map_err(|_| readers_gone(path))??;
            }
        };
        let offset = chunk as u64 * chunk_bytes;
        let len = chunk_bytes.min(data_len - offset);
        // Both fit in an i64: the data section's length does (checked when allocating).
        let torch = |source| WeightsError::Torch {
            path: path.to_path_buf(),
            action: "slicing a chunk for its copy",
            source,
        };
        let dst = buffer
            .f_narrow(0, offset as i64, len as i64)
            .map_err(torch)?;
        let src = slots[slot].f_narrow(0, 0, len as i64).map_err(torch)?;
        stream.copy_async(&dst, &src).map_err(stream_error)?;
        events[slot].record(stream).map_err(stream_error)?;
        in_flight.push_back(slot);
    }
    Ok(())
}

fn readers_gone(path: &Path) -> WeightsError {
    WeightsError::Reader {
        path: path.to_path_buf(),
        message: "the readers stopped before the last chunk".into(),
    }
}

/// A reader thread: take pieces, `pread` them into their slots, report slots whose last
/// piece landed. Returns the time spent inside `pread`.
fn read_pieces(
    path: &Path,
    file: &File,
    data_start: u64,
    addresses: &[usize],
    shared: &Shared,
    filled: &Sender<Filled>,
) -> Duration {
    let mut spent = Duration::ZERO;
    loop {
        let piece = {
            let mut s = shared.lock();
            loop {
                if s.stop {
                    return spent;
                }
                if let Some(piece) = s.take() {
                    if s.exhausted() {
                        // Wake the readers waiting for work: there is none left.
                        shared.changed.notify_all();
                    }
                    break piece;
                }
                if s.exhausted() {
                    return spent;
                }
                s = shared
                    .changed
                    .wait(s)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        // SAFETY: `addresses[piece.slot]` is the start of a live pinned buffer of
        // `chunk_bytes` (owned by the `Staging`, which outlives this scoped thread), and
        // `piece.offset + piece.len <= chunk_bytes`. The schedule hands each piece of a slot
        // to one reader only, and hands a slot out only while no copy reads it (it is free
        // again only after its event completed); the main thread reads it only through the
        // copy it queues after the slot's last piece is reported below.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(
                (addresses[piece.slot] as *mut u8).add(piece.offset as usize),
                piece.len as usize,
            )
        };
        let started = Instant::now();
        let result = file.read_exact_at(dst, data_start + piece.file_offset());
        spent += started.elapsed();
        if let Err(e) = result {
            shared.lock().stop = true;
            shared.changed.notify_all();
            let _ = filled.send(Err(io(path, "reading")(e)));
            return spent;
        }
        if shared.lock().finish(piece.slot) {
            // The main thread may have stopped already; then nobody needs the slot.
            let _ = filled.send(Ok((piece.slot, piece.chunk)));
        }
    }
}

/// The schedule and its condition variable, shared by the readers and the main thread.
struct Shared {
    schedule: Mutex<Schedule>,
    /// Signalled when a slot is freed, work runs out, or the load stops.
    changed: Condvar,
}

impl Shared {
    /// A poisoned lock means a reader panicked between statements that keep the schedule
    /// consistent (every update is a plain assignment), so the state is still usable; the
    /// panic itself is reported when the thread is joined.
    fn lock(&self) -> MutexGuard<'_, Schedule> {
        self.schedule.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Which piece of which chunk goes where: pure bookkeeping, no I/O.
#[derive(Debug)]
struct Schedule {
    data_len: u64,
    chunk_bytes: u64,
    piece_bytes: u64,
    chunks: usize,
    next_chunk: usize,
    /// The chunk whose pieces are being handed out.
    open: Option<Open>,
    free: Vec<usize>,
    /// Per slot: pieces handed out and not yet read.
    remaining: Vec<u64>,
    stop: bool,
}

#[derive(Debug)]
struct Open {
    slot: usize,
    chunk: usize,
    next_piece: u64,
    pieces: u64,
}

/// `len` bytes at `offset` within the chunk `chunk`, staged in `slot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Piece {
    slot: usize,
    chunk: usize,
    offset: u64,
    len: u64,
    chunk_bytes: u64,
}

impl Piece {
    /// Where the piece starts in the data section.
    fn file_offset(&self) -> u64 {
        self.chunk as u64 * self.chunk_bytes + self.offset
    }
}

impl Schedule {
    fn new(data_len: u64, chunk_bytes: u64, slots: usize, threads: usize) -> Self {
        Self {
            data_len,
            chunk_bytes,
            piece_bytes: chunk_bytes.div_ceil(threads.max(1) as u64),
            chunks: data_len.div_ceil(chunk_bytes) as usize,
            next_chunk: 0,
            open: None,
            // Popped from the back: slot 0 first.
            free: (0..slots).rev().collect(),
            remaining: vec![0; slots],
            stop: false,
        }
    }

    fn chunk_len(&self, chunk: usize) -> u64 {
        self.chunk_bytes
            .min(self.data_len - chunk as u64 * self.chunk_bytes)
    }

    fn pieces_total(&self) -> usize {
        (0..self.chunks)
            .map(|c| self.chunk_len(c).div_ceil(self.piece_bytes) as usize)
            .sum()
    }

    /// The next piece to read, or `None` when none can start now (no free slot, or none
    /// left).
    fn take(&mut self) -> Option<Piece> {
        if self.open.is_none() && self.next_chunk < self.chunks {
            let slot = self.free.pop()?;
            let chunk = self.next_chunk;
            self.next_chunk += 1;
            let pieces = self.chunk_len(chunk).div_ceil(self.piece_bytes);
            self.remaining[slot] = pieces;
            self.open = Some(Open {
                slot,
                chunk,
                next_piece: 0,
                pieces,
            });
        }
        let open = self.open.as_mut()?;
        let (slot, chunk, index) = (open.slot, open.chunk, open.next_piece);
        open.next_piece += 1;
        if open.next_piece == open.pieces {
            self.open = None;
        }
        let offset = index * self.piece_bytes;
        Some(Piece {
            slot,
            chunk,
            offset,
            len: self.piece_bytes.min(self.chunk_len(chunk) - offset),
            chunk_bytes: self.chunk_bytes,
        })
    }

    /// Every piece has been handed out.
    fn exhausted(&self) -> bool {
        self.next_chunk == self.chunks && self.open.is_none()
    }

    /// A piece of `slot` was read; true when it was the slot's last.
    fn finish(&mut self, slot: usize) -> bool {
        self.remaining[slot] = self.remaining[slot].saturating_sub(1);
        self.remaining[slot] == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives the schedule as the readers and the copier would, in an arbitrary but
    /// deterministic interleaving, and checks that every byte is read exactly once, into a
    /// slot not in use by another chunk, and that pieces never cross their chunk.
    fn simulate(data_len: u64, chunk_bytes: u64, slots: usize, threads: usize) {
        let mut s = Schedule::new(data_len, chunk_bytes, slots, threads);
        let mut covered = vec![0u8; data_len as usize];
        let mut slot_chunk: Vec<Option<usize>> = vec![None; slots];
        let mut reading: VecDeque<Piece> = VecDeque::new();
        let mut copied = 0;
        let mut round = 0usize;
        while copied < s.chunks {
            round += 1;
            assert!(round < 100_000, "no progress");
            // Up to `threads` pieces in flight at once.
            while reading.len() < threads {
                let Some(piece) = s.take() else { break };
                match slot_chunk[piece.slot] {
                    None => slot_chunk[piece.slot] = Some(piece.chunk),
                    Some(c) => assert_eq!(c, piece.chunk, "a slot shared by two chunks"),
                }
                assert!(piece.offset + piece.len <= s.chunk_len(piece.chunk));
                reading.push_back(piece);
            }
            // Finish pieces in a scrambled order.
            let Some(piece) = (if round.is_multiple_of(3) {
                reading.pop_back()
            } else {
                reading.pop_front()
            }) else {
                panic!(
                    "stuck: nothing to read and {copied} of {} chunks copied",
                    s.chunks
                );
            };
            for b in &mut covered[piece.file_offset() as usize..][..piece.len as usize] {
                *b += 1;
            }
            if s.finish(piece.slot) {
                // The copy: then the slot is free again.
                slot_chunk[piece.slot] = None;
                s.free.push(piece.slot);
                copied += 1;
            }
        }
        assert!(s.exhausted());
        assert!(
            covered.iter().all(|&c| c == 1),
            "{data_len} {chunk_bytes} {slots} {threads}"
        );
    }

    #[test]
    fn the_schedule_reads_every_byte_once_through_the_slots() {
        for (data_len, chunk_bytes, slots, threads) in [
            (1, 1, 1, 1),
            (1000, 64, 4, 8),
            (1000, 64, 1, 3),
            (1000, 1000, 2, 16),
            (999, 100, 3, 7),
            (64, 1000, 4, 8),
            (10_000, 333, 2, 2),
        ] {
            simulate(data_len, chunk_bytes, slots, threads);
        }
    }

    #[test]
    fn without_a_gpu_staging_says_why_not() {
        if tch::Cuda::is_available() {
            return;
        }
        let err = Staging::new(Device::Cuda(0), 1 << 20, 2).unwrap_err();
        assert!(
            matches!(
                err,
                WeightsError::StagingStream {
                    source: StreamError::NoDevice,
                    ..
                }
            ),
            "{err}"
        );
    }
}
