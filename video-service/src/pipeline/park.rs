//! Park and wake: a persistent process's resident components give their VRAM back between
//! calls and get it again at the pinned copy rate (the mission table's hibernate row).
//!
//! A component loaded from the host weight pool keeps the pool's mapping of its file,
//! registered with the driver. Parking points every parameter at its bytes in that mapping
//! (views, no copy) and drops the device buffer, so the component holds nothing on the GPU
//! while its TorchScript module, its kernels and the process's CUDA context stay; waking
//! copies the mapping to one device buffer again (one pinned copy) and points the parameters
//! back. Waking asks first ([`admit`]): the bytes must fit the lease the process was given
//! and the device's free memory, or the wake is refused with both figures.
//!
//! Only resident components park, and only those whose weights came from the pool: without
//! it there is no copy of the weights outside the GPU to wake from but the file.

use std::collections::HashMap;
use std::time::Instant;

use arbiter_torch::host::load_host;
use tch::Tensor;

use super::component::{ComponentError, Live, device_index};

/// Why a component cannot park or wake.
#[derive(Debug, thiserror::Error)]
pub enum ParkError {
    #[error(
        "component {0}: its weights did not come from the host weight pool, so there is nothing to wake it from (run under a supervisor with [pool], or set ARBITER_POOL_SOCKET)"
    )]
    NotPooled(String),
    #[error(
        "waking needs {need} bytes on the device: {detail} (free memory or a larger lease, or wake fewer components)"
    )]
    Refused { need: u64, detail: String },
    #[error(transparent)]
    Component(#[from] ComponentError),
}

/// What one park or wake moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Moved {
    pub components: usize,
    pub bytes: u64,
    pub seconds: f64,
}

impl Moved {
    pub fn gb_per_s(&self) -> f64 {
        arbiter_torch::load::rate(self.bytes, self.seconds)
    }

    fn add(&mut self, bytes: u64) {
        self.components += 1;
        self.bytes += bytes;
    }
}

/// The admission check before a wake: `need` more bytes on the device, with `held` already
/// held by the process, must fit the lease (`lease` 0: none given) and the device's free
/// memory (`free`, when the driver says).
pub fn admit(need: u64, held: u64, lease: u64, free: Option<u64>) -> Result<(), ParkError> {
    if lease > 0 && held.saturating_add(need) > lease {
        return Err(ParkError::Refused {
            need,
            detail: format!("the process holds {held} of its {lease}-byte lease"),
        });
    }
    if let Some(free) = free
        && need > free
    {
        return Err(ParkError::Refused {
            need,
            detail: format!("the device has {free} bytes free"),
        });
    }
    Ok(())
}

impl Live {
    pub fn is_parked(&self) -> bool {
        self.parked
    }

    /// Parks the component: its parameters become views of the pool's pages and its device
    /// buffer is dropped (the caller empties the allocator's cache). Returns its weights'
    /// bytes, which left the device (on a GPU).
    pub fn park(&mut self) -> Result<u64, ParkError> {
        if self.parked {
            return Ok(0);
        }
        let (path, host) = self
            .pooled
            .clone()
            .ok_or_else(|| ParkError::NotPooled(self.name.clone()))?;
        let loaded = load_host(&path, &host, tch::Device::Cpu).map_err(|source| {
            ComponentError::Weights {
                name: self.name.clone(),
                source: Box::new(source),
            }
        })?;
        self.bind(loaded.tensors)?;
        self.parked = true;
        self.device_bytes = 0;
        Ok(self.load.bytes)
    }

    /// Wakes a parked component: one copy of its weights from the pool's registered pages
    /// into a device buffer, synchronized. Returns the bytes copied.
    pub fn wake(&mut self) -> Result<u64, ParkError> {
        if !self.parked {
            return Ok(0);
        }
        let (path, host) = self
            .pooled
            .clone()
            .ok_or_else(|| ParkError::NotPooled(self.name.clone()))?;
        let loaded =
            load_host(&path, &host, self.device).map_err(|source| ComponentError::Weights {
                name: self.name.clone(),
                source: Box::new(source),
            })?;
        let bytes = loaded.stats.bytes;
        self.bind(loaded.tensors)?;
        if self.device.is_cuda() {
            tch::Cuda::synchronize(device_index(self.device));
        }
        self.parked = false;
        // Counted as the load counts it: device bytes only on a GPU.
        self.device_bytes = if self.device.is_cuda() { bytes } else { 0 };
        Ok(bytes)
    }

    /// Points every parameter at the tensor of its name (checked once, at load) and keeps
    /// those tensors as the component's weights, dropping the previous ones.
    fn bind(&mut self, tensors: Vec<(String, Tensor)>) -> Result<(), ComponentError> {
        let mut by_name: HashMap<String, Tensor> = tensors.into_iter().collect();
        let params = self
            .module
            .named_parameters()
            .map_err(|source| ComponentError::Call {
                name: self.name.clone(),
                method: "named_parameters",
                source,
            })?;
        let mut kept = Vec::with_capacity(params.len());
        for (pname, mut param) in params {
            let value = by_name
                .remove(&pname)
                .ok_or_else(|| ComponentError::Mismatch {
                    name: self.name.clone(),
                    detail: format!("no tensor named {pname}"),
                })?;
            param
                .f_set_data(&value)
                .map_err(|e| ComponentError::Mismatch {
                    name: self.name.clone(),
                    detail: format!("{pname}: {e}"),
                })?;
            kept.push(value);
        }
        self.weights = kept;
        Ok(())
    }
}

/// Parks or wakes every component in `live`, timed (`wake`: false parks).
pub(super) fn each<'a>(
    live: impl Iterator<Item = &'a mut Live>,
    wake: bool,
) -> Result<Moved, ParkError> {
    let started = Instant::now();
    let mut moved = Moved::default();
    for component in live {
        let bytes = if wake {
            component.wake()?
        } else {
            component.park()?
        };
        if bytes > 0 {
            moved.add(bytes);
        }
    }
    moved.seconds = started.elapsed().as_secs_f64();
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_must_fit_the_lease_and_the_free_memory() {
        assert!(admit(10, 50, 100, Some(20)).is_ok());
        assert!(
            admit(10, 50, 0, None).is_ok(),
            "no lease, no driver: nothing to check"
        );
        let lease = admit(60, 50, 100, Some(1000)).unwrap_err();
        assert!(
            lease.to_string().contains("50 of its 100-byte lease"),
            "{lease}"
        );
        let free = admit(30, 0, 0, Some(20)).unwrap_err();
        assert!(free.to_string().contains("20 bytes free"), "{free}");
    }
}
