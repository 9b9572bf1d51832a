//! Links libtorch for the crate's own tests and binaries (shared settings in build-support/)
//! and compiles the C++ shims (shim/allocator.cpp, shim/stream.cpp) into one static library
//! against the same libtorch headers tch uses. The shims include only libtorch's
//! device-generic headers (c10/core, ATen/DeviceAccelerator.h), so no CUDA toolkit headers
//! are needed to build them.

#[path = "../build-support/torch_link.rs"]
mod torch_link;

const SHIMS: [&str; 4] = [
    "shim/allocator.cpp",
    "shim/stream.cpp",
    "shim/jit.cpp",
    "shim/pinned.cpp",
];

fn main() {
    torch_link::emit();
    for shim in SHIMS {
        println!("cargo:rerun-if-changed={shim}");
    }
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") else {
        panic!(
            "torch-sys did not say where libtorch is (DEP_TCH_LIBTORCH_LIB): source scripts/env.sh"
        );
    };
    let root = std::path::PathBuf::from(lib)
        .parent()
        .map(std::path::Path::to_path_buf)
        .expect("libtorch's lib directory has a parent");
    cc::Build::new()
        .cpp(true)
        .files(SHIMS)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("arbiter_torch_shim");
}
