#[path = "../build-support/torch_link.rs"]
mod torch_link;

fn main() {
    torch_link::emit();
    // The text front end and default voice: libespeak-ng (Debian's libespeak-ng-dev, which
    // scripts/setup.sh installs). Declared by hand in src/espeak.rs, so no bindgen.
    println!("cargo:rustc-link-lib=espeak-ng");
}
