//! `arbiter-video generate --repeat N --park`: a persistent process that parks its resident
//! components between calls and wakes them before the next ([`crate::pipeline::park`]), the
//! way a resident server would hibernate while idle. Each round's park and wake are timed,
//! with the process's GPU memory by NVML around them, and the wake rate is given against
//! the pinned copy rate measured once at the start, in the same process.

use crate::pipeline::staged::Session;

/// `generate --park`'s rounds: each park and wake with the process's GPU memory by NVML
/// around it, against the pinned copy rate measured once at the start.
pub struct Parking {
    lease: u64,
    device: tch::Device,
    memory: crate::gpu_memory::ProcessMemory,
    pinned_gb_per_s: Option<f64>,
    rounds: Vec<serde_json::Value>,
}

impl Parking {
    pub fn new(lease: u64) -> Parking {
        let device = arbiter_torch::device::preferred();
        let pinned_gb_per_s = device
            .is_cuda()
            .then(|| arbiter_torch::stream::host_to_device_rate(1 << 30, device, true, 3).ok());
        Parking {
            lease,
            device,
            memory: crate::gpu_memory::ProcessMemory::open(""),
            pinned_gb_per_s: pinned_gb_per_s.flatten(),
            rounds: Vec::new(),
        }
    }

    pub fn park(&mut self, session: &mut Session) -> Result<(), String> {
        let before = self.memory.sample();
        let moved = session.park(self.device).map_err(|e| e.to_string())?;
        let after = self.memory.sample();
        println!(
            "parked {} components ({:.2} GB) in {:.1} ms; the process holds {} on the GPU (was {})",
            moved.components,
            moved.bytes as f64 / 1e9,
            moved.seconds * 1e3,
            after.map_or("?".into(), |b| arbiter::ByteSize(b).to_string()),
            before.map_or("?".into(), |b| arbiter::ByteSize(b).to_string()),
        );
        self.rounds.push(serde_json::json!({
            "park": moved, "nvml_before_bytes": before, "nvml_parked_bytes": after,
        }));
        Ok(())
    }

    pub fn wake(&mut self, session: &mut Session) -> Result<(), String> {
        let free = self.memory.device_free();
        let moved = session.wake(self.lease, free).map_err(|e| e.to_string())?;
        let of_pinned = self.pinned_gb_per_s.map(|p| moved.gb_per_s() / p);
        println!(
            "woke {} components ({:.2} GB) in {:.1} ms: {:.2} GB/s{}",
            moved.components,
            moved.bytes as f64 / 1e9,
            moved.seconds * 1e3,
            moved.gb_per_s(),
            of_pinned.map_or(String::new(), |r| format!(
                " = {r:.2} of the pinned copy rate"
            )),
        );
        if let Some(round) = self.rounds.last_mut() {
            round["wake"] = serde_json::json!(moved);
            round["wake_of_pinned"] = serde_json::json!(of_pinned);
            round["nvml_woken_bytes"] = serde_json::json!(self.memory.sample());
            round["device_free_before_wake"] = serde_json::json!(free);
        }
        Ok(())
    }

    pub fn write(&self, path: &std::path::Path) -> Result<(), String> {
        let report = serde_json::json!({
            "pinned_gb_per_s": self.pinned_gb_per_s,
            "lease_bytes": self.lease,
            "rounds": self.rounds,
        });
        std::fs::write(path, format!("{report:#}\n"))
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}
