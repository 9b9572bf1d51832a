//! The workspace's binaries, as the tests run them: found in the target directory of the
//! profile the test was built with, and built first (once per test process) when one is
//! missing or older than the sources it is made of.
//!
//! A test binary is `<target>/<profile>/deps/<test>-<hash>`, and cargo puts the binaries at
//! `<target>/<profile>/<name>`. `cargo test` of one package does not build other packages'
//! binaries (the root crate's tests, and `arbiter-tts`'s, need the supervisor's; both need
//! the thin `arbiter-tts` of `arbiter-tts-client`), hence the explicit build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

/// The binaries built here, together: the supervisor and the video worker it spawns from
/// beside its own binary, each with the sources (directories and files, relative to the
/// workspace root) it is made of.
const BINARIES: &[(&str, &[&str])] = &[
    (
        "arbiter-supervisor",
        &[
            "src",
            "proto",
            "build.rs",
            "supervisor/src",
            "supervisor/Cargo.toml",
        ],
    ),
    (
        "arbiter-video",
        &[
            "src",
            "proto",
            "build.rs",
            "video-service/src",
            "video-service/build.rs",
            "video-service/Cargo.toml",
            "torch/src",
            "torch/shim",
            "torch/build.rs",
            "torch/Cargo.toml",
            "build-support",
        ],
    ),
];

/// The thin `arbiter-tts` (package `arbiter-tts-client`, no libtorch) and its sources.
const TTS: (&str, &str, &[&str]) = (
    "arbiter-tts-client",
    "arbiter-tts",
    &[
        "src",
        "proto",
        "build.rs",
        "tts-client/src",
        "tts-client/Cargo.toml",
    ],
);

/// `arbiter-tts-server` (package `arbiter-tts`, linked with libtorch), which the thin
/// `arbiter-tts` execs for `serve`, and its sources.
const TTS_SERVER: (&str, &str, &[&str]) = (
    "arbiter-tts",
    "arbiter-tts-server",
    &[
        "src",
        "proto",
        "build.rs",
        "tts-service/src",
        "tts-service/build.rs",
        "tts-service/Cargo.toml",
        "torch/src",
        "torch/shim",
        "torch/build.rs",
        "torch/Cargo.toml",
        "build-support",
    ],
);

/// The root of the workspace (this crate lives in `<root>/test-kit`).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the test kit lives in the workspace root")
}

/// `arbiter-supervisor`, built first (with the `arbiter-video` worker beside it) if either
/// is missing or stale.
pub fn supervisor() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let profile_dir = profile_dir();
        let fresh = BINARIES.iter().all(|(name, sources)| {
            let path = profile_dir.join(name);
            path.is_file() && !stale(&path, sources)
        });
        if !fresh {
            let names: Vec<&str> = BINARIES.iter().map(|(name, _)| *name).collect();
            build(&profile_dir, &names, &names);
        }
        profile_dir.join("arbiter-supervisor")
    })
}

/// `arbiter-video`, the worker the supervisor spawns from beside itself.
pub fn video() -> PathBuf {
    supervisor().with_file_name("arbiter-video")
}

/// The thin `arbiter-tts` (`say`, `lip-sync`; `serve` and `info` exec `arbiter-tts-server`
/// from beside it), built first if it is missing or stale: it has no libtorch, so that is
/// quick.
pub fn tts() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| fresh(TTS)).clone()
}

/// `arbiter-tts-server`, which cargo builds for `arbiter-tts`'s own tests and benches (then
/// it is fresh and found as it is), built first elsewhere if it is missing or stale.
pub fn tts_server() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| fresh(TTS_SERVER)).clone()
}

/// `binary` of `package` in this profile, built first if it is missing or older than one of
/// its `sources`.
fn fresh((package, binary, sources): (&str, &str, &[&str])) -> PathBuf {
    let profile_dir = profile_dir();
    let path = profile_dir.join(binary);
    if !path.is_file() || stale(&path, sources) {
        build(&profile_dir, &[package], &[binary]);
    }
    path
}

/// Where the kit keeps what it generates once for many tests: `<target>/tmp/arbiter-test-kit`
/// (cargo's scratch directory for tests, `CARGO_TARGET_TMPDIR`).
pub(crate) fn cache_dir() -> PathBuf {
    profile_dir()
        .parent()
        .expect("the profile directory lives in the target directory")
        .join("tmp/arbiter-test-kit")
}

/// `<target>/<profile>`, where this test's profile puts the binaries.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's own path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <target>/<profile>/deps")
        .to_path_buf()
}

/// Builds the binaries of `packages` into `profile_dir` with the cargo that runs the tests,
/// and checks that each of `binaries` is there.
fn build(profile_dir: &Path, packages: &[&str], binaries: &[&str]) {
    let target_dir = profile_dir
        .parent()
        .expect("the profile directory lives in the target directory");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a profile directory name");
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(&cargo);
    build.current_dir(workspace_root()).arg("build");
    for package in packages {
        build.args(["-p", package]);
    }
    build.arg("--bins").arg("--target-dir").arg(target_dir);
    match profile {
        // `dev` and `test` both build into `debug`.
        "debug" => {}
        "release" => {
            build.arg("--release");
        }
        other => {
            build.args(["--profile", other]);
        }
    }
    let output = build
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo:?} to build the binaries: {e}"));
    assert!(
        output.status.success(),
        "{build:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    for name in binaries {
        let path = profile_dir.join(name);
        assert!(
            path.is_file(),
            "cargo built {name} but {} does not exist",
            path.display()
        );
    }
}

/// True when a source the binary is built from (a directory's files, or a file) changed
/// after the binary was linked.
fn stale(binary: &Path, sources: &[&str]) -> bool {
    let Ok(built) = binary.metadata().and_then(|m| m.modified()) else {
        return true;
    };
    let root = workspace_root();
    let newest = sources
        .iter()
        .map(|source| newest_in(&root.join(source)))
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    newest > built
}

/// The newest modification time of `path` (a file) or of any file below it (a directory).
fn newest_in(path: &Path) -> SystemTime {
    let Ok(meta) = path.metadata() else {
        return SystemTime::UNIX_EPOCH;
    };
    if !meta.is_dir() {
        return meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return SystemTime::UNIX_EPOCH;
    };
    entries
        .flatten()
        .map(|entry| newest_in(&entry.path()))
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_binary_older_than_a_file_in_its_sources_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let sources = dir.path().join("src/nested");
        std::fs::create_dir_all(&sources).unwrap();
        let source = sources.join("lib.rs");
        std::fs::write(&source, "").unwrap();
        let binary = dir.path().join("binary");
        std::fs::write(&binary, "").unwrap();
        let at = |path: &Path, time: SystemTime| {
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(time)
                .unwrap();
        };
        let now = SystemTime::now();
        at(&source, now - Duration::from_secs(60));
        at(&binary, now);
        // `stale` takes paths relative to the workspace root; an absolute one replaces it.
        let src = dir.path().join("src");
        let src = src.to_str().unwrap();
        assert!(!stale(&binary, &[src]));
        at(&source, now + Duration::from_secs(60));
        assert!(stale(&binary, &[src]));
        assert!(stale(&dir.path().join("missing"), &[src]));
        assert!(!stale(&binary, &["no/such/source"]));
    }
}
