//! Links libtorch for the crate's own tests (shared settings in build-support/) and compiles
//! the allocator shim (shim/allocator.cpp) against the same libtorch headers tch uses.

#[path = "../build-support/torch_link.rs"]
mod torch_link;

fn main() {
    torch_link::emit();
    println!("cargo:rerun-if-changed=shim/allocator.cpp");
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
        .file("shim/allocator.cpp")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("arbiter_allocator_shim");
}
