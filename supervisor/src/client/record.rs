//! `arbiter-supervisor events --record FILE`: the supervisor's own NVML samples, per
//! process, written as the CSV that `arbiter-supervisor plot` reads (`t_seconds,label,bytes`).
//!
//! The supervisor already samples every GPU's processes to enforce leases; recording that
//! feed (rather than running nvidia-smi beside it) puts on the plot exactly what the budget
//! was computed from, with each process named by the lease it counts against. Every label
//! seen so far gets a row at every sample, 0 once its process is gone, so the plot shows the
//! memory coming back rather than a line that simply stops.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use arbiter::pb::supervisor::v1 as pb;

/// Turns sample events into CSV rows.
pub struct Recorder<W: Write> {
    out: W,
    /// lease id -> holder, from the stream's grants (and the leases listed at start).
    holders: HashMap<String, String>,
    /// Every label written so far, per GPU, so absent ones get a 0 at that GPU's samples.
    seen: HashMap<u32, BTreeMap<String, ()>>,
    start: Option<SystemTime>,
    /// The last sample written per GPU: the feed may repeat one (a status sent again
    /// after a change), which must not become a second row at the same time.
    last: HashMap<u32, SystemTime>,
}

impl<W: Write> Recorder<W> {
    pub fn new(mut out: W, leases: &[pb::Lease]) -> std::io::Result<Recorder<W>> {
        writeln!(out, "t_seconds,label,bytes")?;
        Ok(Recorder {
            out,
            holders: leases
                .iter()
                .map(|l| (l.lease_id.clone(), l.holder.clone()))
                .collect(),
            seen: HashMap::new(),
            start: None,
            last: HashMap::new(),
        })
    }

    /// Takes one event of the feed; writes rows for samples.
    pub fn event(&mut self, event: &pb::Event) -> std::io::Result<()> {
        use pb::event::Kind;
        match &event.kind {
            Some(Kind::Granted(lease)) => {
                self.holders
                    .insert(lease.lease_id.clone(), lease.holder.clone());
                Ok(())
            }
            Some(Kind::Sample(gpu)) => self.sample(gpu),
            _ => Ok(()),
        }
    }

    fn sample(&mut self, gpu: &pb::GpuStatus) -> std::io::Result<()> {
        let Some(at) = gpu.sampled_at.and_then(|t| SystemTime::try_from(t).ok()) else {
            return Ok(());
        };
        let start = *self.start.get_or_insert(at);
        let seconds = |time: SystemTime| {
            format!(
                "{:.3}",
                time.duration_since(start).unwrap_or_default().as_secs_f64()
            )
        };
        let t = seconds(at);
        // A repeated sample, or one under a millisecond after the last (the periodic one and
        // one taken to verify a release), would be a second row at the same time, which a
        // plot cannot stack: keep the first.
        if self
            .last
            .get(&gpu.index)
            .is_some_and(|last| *last >= at || seconds(*last) == t)
        {
            return Ok(());
        }
        self.last.insert(gpu.index, at);
        let mut now: BTreeMap<String, u64> = BTreeMap::new();
        for process in &gpu.processes {
            let gpu_suffix = if gpu.index == 0 {
                String::new()
            } else {
                format!(" on GPU {}", gpu.index)
            };
            let label = match self.holders.get(&process.lease_id) {
                // Holders often name their pid already (`arbiter-tts (pid 42)`).
                Some(holder) if holder.contains(&format!("pid {}", process.pid)) => {
                    format!("{holder}{gpu_suffix}")
                }
                Some(holder) => format!("{holder} (pid {}){gpu_suffix}", process.pid),
                None if process.lease_id.is_empty() => {
                    format!("pid {} (no lease){gpu_suffix}", process.pid)
                }
                None => format!("{} (pid {}){gpu_suffix}", process.lease_id, process.pid),
            };
            *now.entry(label).or_default() += process.used_bytes;
        }
        let seen = self.seen.entry(gpu.index).or_default();
        for label in now.keys() {
            seen.insert(label.clone(), ());
        }
        for label in seen.keys() {
            let bytes = now.get(label).copied().unwrap_or(0);
            // Labels may hold commas; the plot reads the last field as bytes and the rest
            // after the first as the label.
            writeln!(self.out, "{t},{label},{bytes}")?;
        }
        self.out.flush()
    }
}

/// Opens `path` for the recording.
pub fn open(path: &Path) -> std::io::Result<std::io::BufWriter<std::fs::File>> {
    Ok(std::io::BufWriter::new(std::fs::File::create(path)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(secs: i64, processes: Vec<pb::GpuProcess>) -> pb::Event {
        pb::Event {
            at: None,
            kind: Some(pb::event::Kind::Sample(pb::GpuStatus {
                processes,
                sampled_at: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000 + secs,
                    nanos: 0,
                }),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn samples_become_rows_named_by_lease_and_gone_processes_read_zero() {
        let mut out = Vec::new();
        let mut recorder = Recorder::new(&mut out, &[]).unwrap();
        recorder
            .event(&pb::Event {
                at: None,
                kind: Some(pb::event::Kind::Granted(pb::Lease {
                    lease_id: "lease-1".into(),
                    holder: "video job".into(),
                    ..Default::default()
                })),
            })
            .unwrap();
        let process = |pid, lease: &str, bytes| pb::GpuProcess {
            pid,
            used_bytes: bytes,
            lease_id: lease.into(),
        };
        recorder
            .event(&sample(
                0,
                vec![process(7, "lease-1", 100), process(9, "", 5)],
            ))
            .unwrap();
        recorder.event(&sample(2, vec![process(9, "", 5)])).unwrap();
        // The same sample again writes nothing, nor does one under a millisecond later.
        recorder
            .event(&pb::Event {
                at: None,
                kind: Some(pb::event::Kind::Sample(pb::GpuStatus {
                    processes: vec![process(9, "", 6)],
                    sampled_at: Some(prost_types::Timestamp {
                        seconds: 1_700_000_002,
                        nanos: 300_000,
                    }),
                    ..Default::default()
                })),
            })
            .unwrap();
        recorder.event(&sample(2, vec![process(9, "", 5)])).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "t_seconds,label,bytes\n\
             0.000,pid 9 (no lease),5\n\
             0.000,video job (pid 7),100\n\
             2.000,pid 9 (no lease),5\n\
             2.000,video job (pid 7),0\n"
        );
    }

    #[test]
    fn a_holder_that_names_its_pid_is_not_labelled_twice() {
        let mut out = Vec::new();
        let lease = pb::Lease {
            lease_id: "lease-2".into(),
            holder: "arbiter-tts (pid 42)".into(),
            ..Default::default()
        };
        let mut recorder = Recorder::new(&mut out, &[lease]).unwrap();
        let tts = pb::GpuProcess {
            pid: 42,
            used_bytes: 7,
            lease_id: "lease-2".into(),
        };
        recorder.event(&sample(0, vec![tts])).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "t_seconds,label,bytes\n0.000,arbiter-tts (pid 42),7\n"
        );
    }
}
