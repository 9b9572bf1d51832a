//! Block streaming: a component's blocks stay in pinned host memory and pass through two
//! device slots, the next block copied on a side CUDA stream while the current one
//! computes.
//!
//! The component's code exposes `pre(inputs) -> (h, c)`, `block(h, c, i) -> h` and
//! `post(h, c, first_input)`; everything outside the blocks is on the device already.
//! Before block `i` runs, the module's parameters of block `i` are pointed (`set_data`)
//! at slot `i % 2`. The ordering, all of it asynchronous to the host:
//! - the copy of block `i + 1` into slot `(i + 1) % 2` waits for an event recorded after
//!   block `i - 1` computed (the last reader of that slot), so no weights are overwritten
//!   while a kernel still reads them;
//! - block `i` waits for the event recorded after its copy.
//!
//! This is LTX-2's layer streaming (two GPU slots, pinned buffers, a side stream, events
//! both ways), but chosen per component rather than for the whole pipeline. Without a GPU
//! the same code runs with plain copies, so tests exercise it on the CPU.

use arbiter_torch::stream::{CopyStream, Event, StreamError as CudaError};
use tch::{CModule, Device, TchError, Tensor};

use super::blocks;
use super::yielding::Yielding;

/// Why a streamed call failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("block streaming needs blocks.<i>.* parameters, and this code has none")]
    NoBlocks,
    #[error(
        "block {index} does not have the shapes of block 0 ({detail}): streaming needs identical blocks"
    )]
    Uneven { index: usize, detail: String },
    #[error("{method} failed: {source}")]
    Call {
        method: &'static str,
        source: TchError,
    },
    #[error(transparent)]
    Block(#[from] blocks::CallError),
    #[error(transparent)]
    Cuda(#[from] CudaError),
}

fn call(method: &'static str) -> impl Fn(TchError) -> StreamError {
    move |source| StreamError::Call { method, source }
}

/// One block: the module's parameter handles and the host copies of their weights, in
/// the same order for every block.
struct Block {
    params: Vec<Tensor>,
    host: Vec<Tensor>,
}

/// The device side of a streamed component.
pub struct Streamer {
    blocks: Vec<Block>,
    /// Two sets of device buffers shaped like one block.
    slots: [Vec<Tensor>; 2],
    /// `None` on the CPU: copies are plain and ordered by the host.
    cuda: Option<Cuda>,
}

struct Cuda {
    copy: CopyStream,
    copied: [Event; 2],
    computed: [Event; 2],
    /// Whether `computed[slot]` has been recorded yet (a stream must not wait on an event
    /// that was never recorded... it may, as a no-op, but saying so is clearer).
    used: [bool; 2],
}

impl Streamer {
    /// Takes the blocks' `(name, module parameter, host weights)`; pins the host weights
    /// unless they are `pinned` already, and allocates the two slots on `device`.
    pub fn new(
        mut entries: Vec<(String, Tensor, Tensor)>,
        device: Device,
        pinned: bool,
    ) -> Result<Streamer, StreamError> {
        // Group by block index, keeping a stable order of names inside a block.
        let index_of = |name: &str| -> Option<(usize, String)> {
            let rest = name.strip_prefix("blocks.")?;
            let (index, tail) = rest.split_once('.')?;
            Some((index.parse().ok()?, tail.to_string()))
        };
        entries.sort_by_key(|(name, _, _)| index_of(name));
        let mut blocks: Vec<(Vec<String>, Block)> = Vec::new();
        for (name, param, host) in entries {
            let Some((index, tail)) = index_of(&name) else {
                return Err(StreamError::Call {
                    method: "blocks",
                    source: TchError::Kind(format!(
                        "parameter {name} is not named blocks.<index>.<name>"
                    )),
                });
            };
            while blocks.len() <= index {
                blocks.push((
                    Vec::new(),
                    Block {
                        params: Vec::new(),
                        host: Vec::new(),
                    },
                ));
            }
            let host = if device.is_cuda() && !pinned {
                host.f_pin_memory(device).map_err(call("pin_memory"))?
            } else {
                host
            };
            blocks[index].0.push(tail);
            blocks[index].1.params.push(param);
            blocks[index].1.host.push(host);
        }
        let Some((first_names, first)) = blocks.first() else {
            return Err(StreamError::NoBlocks);
        };
        let shapes = |b: &Block| {
            b.host
                .iter()
                .map(|t| (t.size(), t.kind()))
                .collect::<Vec<_>>()
        };
        let reference = (first_names.clone(), shapes(first));
        for (index, (names, block)) in blocks.iter().enumerate() {
            if *names != reference.0 || shapes(block) != reference.1 {
                return Err(StreamError::Uneven {
                    index,
                    detail: format!("{} tensors", names.len()),
                });
            }
        }
        let slot = || -> Result<Vec<Tensor>, StreamError> {
            first
                .host
                .iter()
                .map(|t| Tensor::f_empty(t.size(), (t.kind(), device)).map_err(call("empty")))
                .collect()
        };
        let slots = [slot()?, slot()?];
        let cuda = if device.is_cuda() {
            Some(Cuda {
                copy: CopyStream::new(device, true)?,
                copied: [Event::new(device)?, Event::new(device)?],
                computed: [Event::new(device)?, Event::new(device)?],
                used: [false; 2],
            })
        } else {
            None
        };
        Ok(Streamer {
            blocks: blocks.into_iter().map(|(_, b)| b).collect(),
            slots,
            cuda,
        })
    }

    /// What the two slots hold on the device.
    pub fn device_bytes(&self) -> u64 {
        self.slots
            .iter()
            .flatten()
            .map(|t| (t.numel() * t.kind().elt_size_in_bytes()) as u64)
            .sum()
    }

    /// Starts copying block `index` into its slot.
    fn fetch(&mut self, index: usize) -> Result<(), StreamError> {
        let slot = index % 2;
        let host = &self.blocks[index].host;
        match self.cuda.as_mut() {
            Some(cuda) => {
                if cuda.used[slot] {
                    cuda.copy.wait(&cuda.computed[slot])?;
                }
                for (dst, src) in self.slots[slot].iter().zip(host) {
                    cuda.copy.copy_async(dst, src)?;
                }
                cuda.copied[slot].record(&cuda.copy)?;
            }
            None => {
                for (dst, src) in self.slots[slot].iter_mut().zip(host) {
                    dst.f_copy_(src).map_err(call("copy"))?;
                }
            }
        }
        Ok(())
    }

    /// Runs `pre`, every block through the slots, and `post`, yielding at each block
    /// boundary when a compute gate is given.
    pub fn run(
        &mut self,
        module: &CModule,
        inputs: &[Tensor],
        mut yielding: Option<&mut Yielding>,
    ) -> Result<Tensor, StreamError> {
        let (mut h, c) = blocks::pre(module, inputs)?;
        let count = self.blocks.len();
        self.fetch(0)?;
        for index in 0..count {
            if let Some(y) = yielding.as_deref_mut() {
                y.before_block(index)?;
            }
            if index + 1 < count {
                self.fetch(index + 1)?;
            }
            let slot = index % 2;
            if let Some(cuda) = self.cuda.as_ref() {
                cuda.copied[slot].block_current()?;
            }
            for (param, weights) in self.blocks[index].params.iter_mut().zip(&self.slots[slot]) {
                param.f_set_data(weights).map_err(call("set_data"))?;
            }
            h = blocks::block(module, h, &c, index)?;
            if let Some(cuda) = self.cuda.as_mut() {
                cuda.computed[slot].record_current()?;
                cuda.used[slot] = true;
            }
            if let Some(y) = yielding.as_deref_mut() {
                y.after_block(index)?;
            }
        }
        Ok(blocks::post(module, h, c, inputs)?)
    }
}

impl Drop for Streamer {
    /// A prefetch may still be copying from the host weights when a run stops early (a
    /// cancel, an error): wait for the copy stream before those buffers can go, since memory
    /// registered with the driver is not kept alive by libtorch the way its own pinned
    /// allocations are.
    fn drop(&mut self) {
        if let Some(cuda) = &self.cuda
            && let Err(error) = cuda.copy.synchronize()
        {
            tracing::warn!(%error, "could not wait for the block copies before freeing");
        }
    }
}
