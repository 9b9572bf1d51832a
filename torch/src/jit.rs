//! The TorchScript executor as a model process wants it: no graph optimizer.
//!
//! libtorch's profiling executor runs a graph a few times, then optimizes and specializes it.
//! On the H100, a generated 48-block transformer spent ~10 s of its first denoising stage in
//! that work, in every worker process (a fresh process per job pays it every time), while the
//! optimized graph is no faster for large matmuls. [`plain_executor`] turns it off for the
//! process, through a line of C++ (shim/jit.cpp) since tch does not expose the switch.

use std::os::raw::c_int;

unsafe extern "C" {
    fn arbiter_jit_plain_executor() -> c_int;
}

/// Turns the TorchScript graph optimizer and the profiling executor off for this process.
/// Call it before the first module runs. Returns whether libtorch accepted it.
pub fn plain_executor() -> bool {
    // SAFETY: a C function with no arguments; it catches every C++ exception.
    unsafe { arbiter_jit_plain_executor() == 0 }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_switch_is_accepted() {
        assert!(super::plain_executor());
    }
}
