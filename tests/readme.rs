//! The README's "operator's five minutes" is a tested script: its block is
//! `scripts/five-minutes.sh`'s body, word for word, and the script runs to its end on a
//! simulated GPU with the real binaries and the Python client (which scripts/test.sh
//! installs into the setup script's venv before the tests).

use std::path::PathBuf;
use std::time::Duration;

use arbiter_test_kit::supervisor::free_port;
use arbiter_test_kit::{binaries, processes, tools};

const MARK: &str = "# --- the five minutes ---\n";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The script's body: what follows its marker line.
fn script_body() -> String {
    let script = std::fs::read_to_string(repo().join("scripts/five-minutes.sh")).unwrap();
    let (_, body) = script
        .split_once(MARK)
        .expect("scripts/five-minutes.sh has its marker line");
    body.to_string()
}

#[test]
fn the_readme_shows_the_script_word_for_word() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme
        .split_once("## The operator's five minutes")
        .expect("README.md has the operator's five minutes")
        .1;
    let block = section
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a sh block in that section")
        .0;
    assert_eq!(
        block,
        script_body(),
        "README.md's block and scripts/five-minutes.sh differ: keep them the same"
    );
}

#[test]
fn the_five_minutes_run_to_their_end() {
    let dir = tempfile::tempdir().unwrap();
    let bin = binaries::supervisor().parent().unwrap().to_path_buf();
    let venv_bin = tools::python().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}:{}",
        bin.display(),
        venv_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut child = std::process::Command::new("bash")
        .arg(repo().join("scripts/five-minutes.sh"))
        .env("PATH", path)
        .env("ARBITER_STATE_DIR", dir.path())
        .env("METRICS", &metrics)
        .env_remove("ARBITER_SOCKET")
        .env_remove("NOTIFY_SOCKET")
        .stdout(std::fs::File::create(dir.path().join("out")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("err")).unwrap())
        .spawn()
        .expect("run the script");
    let status = processes::wait_for_exit(&mut child, Duration::from_secs(180));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    let (out, err) = (read("out"), read("err"));
    let log = read("supervisor.log");
    assert!(
        status.is_some_and(|s| s.success()),
        "the script failed ({status:?})\nstdout:\n{out}\nstderr:\n{err}\nsupervisor:\n{log}"
    );
    for needle in [
        "you are uid:",
        "arbiter_gpu_budget_bytes{gpu=\"0\"}",
        "holding 4294967296 bytes as lease-",
        "lease lease-",
        "succeeded",
        "worker memory returned",
    ] {
        assert!(
            out.contains(needle),
            "{needle:?} is not in:\n{out}\nstderr:\n{err}"
        );
    }
}
