//! The libtorch side of a GPU, shared by `arbiter-tts` and `arbiter-video`.
//!
//! Only processes that run models depend on this crate; the supervisor never does (it must
//! not link libtorch nor create a CUDA context).
//!
//! - `pinned`: page-locked host buffers registered with the driver (fast pinning for
//!   streamed components).
//! - `jit`: the TorchScript executor without its graph optimizer (seconds saved per process).
//! - `device`, `allocator`: which device the process runs on, and libtorch's caching
//!   allocator (empty its cache, read its statistics).
//! - Loading weights fast, so that a per-job worker's model components reach the GPU at
//!   close to page-cache speed:
//!   - `safetensors`: the file format, read (every header checked against the file) and
//!     written (atomically, with a 64-byte-aligned data section);
//!   - `load`: a file onto the CPU or a GPU as views of one buffer, read by parallel
//!     `pread`s; `staging`: the pinned host ring through which GPU loads go; `readers`:
//!     what their reader threads (and `prewarm`'s) share, below both, so that `load`
//!     drives `staging` and nothing points back;
//!   - `host`: a file whose bytes another process holds (the weight pool's read-only
//!     mapping), registered with the driver in place and loaded without reading the file;
//!   - `prewarm`: pulling files into the page cache ahead of their load;
//!   - `stream`: CUDA copy streams and events, to overlap copies (e.g. transformer blocks
//!     streamed from pinned host memory) with compute.
//!   - the `arbiter-loadbench` binary measures all of it against the machine's limits.

pub mod allocator;
pub mod device;
pub mod host;
pub mod jit;
pub mod load;
pub mod pinned;
pub mod prewarm;
mod readers;
pub mod safetensors;
pub mod staging;
pub mod stream;
pub mod weights_error;

pub use load::{LoadOptions, LoadStats, Loaded, load, load_pinned, load_staged};
pub use prewarm::{PrewarmStats, evict, prewarm};
pub use staging::Staging;
pub use stream::{CopyStream, Event, StreamError};
pub use weights_error::WeightsError;
