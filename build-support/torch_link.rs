//! Link settings every binary that uses tch needs (the tts and video binaries, and the
//! torch crate's own tests), shared by their build scripts through `#[path]`: build scripts
//! cannot share a library crate's link flags, since `rustc-link-arg` only reaches the
//! package that prints it.
//!
//! - An rpath to libtorch's lib directory, so the binary runs without LD_LIBRARY_PATH on the
//!   machine that built it (elsewhere, point LD_LIBRARY_PATH at torch/lib).
//! - `--no-as-needed` around libtorch and libtorch_cuda: nothing references them by symbol,
//!   so the linker would drop them and `tch::Cuda::is_available()` would be false (tch-rs #980).

pub fn emit() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let lib = std::path::PathBuf::from(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
}
