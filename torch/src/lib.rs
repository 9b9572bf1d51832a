//! The libtorch side of a GPU, shared by `arbiter-tts` and `arbiter-video`.
//!
//! Only processes that run models depend on this crate; the supervisor never does (it must
//! not link libtorch nor create a CUDA context).

pub mod allocator;
pub mod device;
