//! The systemd units in `deploy/systemd/` and the supervisor's side of systemd's notify
//! protocol, checked with systemd's own tools and a socket that plays systemd:
//!
//! - every unit passes `systemd-analyze verify` without a word about it (scripts/setup.sh
//!   installs Debian's `systemd` package, which has the tool);
//! - the real `arbiter-supervisor`, started with `NOTIFY_SOCKET` and `WATCHDOG_USEC`, says
//!   READY=1, pings WATCHDOG=1 while it serves and says STOPPING=1 after SIGTERM.
//!
//! `arbiter-tts`'s notifications are checked in `tts-service/tests/notify.rs`, where cargo
//! builds its server. Waits are bounded; nothing asserts how fast anything happened.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use arbiter_test_kit::binaries;
use arbiter_test_kit::notify::NotifySocket;
use arbiter_test_kit::processes::run_to_end;
use arbiter_test_kit::supervisor::Supervisor;

/// Where the units say the binaries are installed.
const INSTALL_DIR: &str = "/usr/local/bin/";

/// How long `systemd-analyze verify` may take (it loads the units' dependencies too).
const VERIFY_LIMIT: Duration = Duration::from_secs(60);

/// Generous bounds for the notifications of a service on a loaded 2-core machine.
const NOTIFY_LIMIT: Duration = Duration::from_secs(30);

fn units_dir() -> PathBuf {
    binaries::workspace_root().join("deploy/systemd")
}

/// The units in `deploy/systemd/`, by file name.
fn units() -> Vec<PathBuf> {
    let mut units: Vec<PathBuf> = std::fs::read_dir(units_dir())
        .expect("read deploy/systemd")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "service"))
        .collect();
    units.sort();
    assert!(!units.is_empty(), "no units in deploy/systemd");
    units
}

/// The unit's text with each `/usr/local/bin/NAME` in an `Exec*=` line pointed at the built
/// binary `binary(NAME)` and everything else byte for byte: verify checks that the programs
/// a unit runs exist, and the tests run before anything is installed.
fn with_built_binaries(text: &str, binary: &dyn Fn(&str) -> PathBuf) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if !line.starts_with("Exec") {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find(INSTALL_DIR) {
            out.push_str(&rest[..at]);
            let after = &rest[at + INSTALL_DIR.len()..];
            let end = after
                .find(|c: char| c.is_whitespace())
                .unwrap_or(after.len());
            out.push_str(&binary(&after[..end]).display().to_string());
            rest = &after[end..];
        }
        out.push_str(rest);
    }
    out
}

/// The built binary a unit names as `/usr/local/bin/NAME`.
fn built(name: &str) -> PathBuf {
    match name {
        "arbiter-supervisor" => binaries::supervisor().to_path_buf(),
        "arbiter-tts" => binaries::tts(),
        other => panic!(
            "a unit runs {INSTALL_DIR}{other}, which this workspace does not build: fix the \
             unit or teach this test where the binary is"
        ),
    }
}

/// The lines of verify's output that are about `ours` (unit file names) or files in
/// `dir`, where the copies are.
///
/// verify also loads every unit ours depend on (`multi-user.target` and whatever it pulls
/// in on this machine) and reports their problems too; those are the distribution's, not
/// ours to fix, and they differ from machine to machine. So a line is left out only when it
/// names another unit, by its file (`/lib/systemd/system/x.service:12: ...`) or by its name
/// (`x.service: ...`); a line that names nothing is kept, because it may be about ours.
fn about_ours<'a>(output: &'a str, ours: &[String], dir: &Path) -> Vec<&'a str> {
    const UNIT_TYPES: [&str; 11] = [
        ".service",
        ".socket",
        ".target",
        ".device",
        ".mount",
        ".automount",
        ".swap",
        ".path",
        ".timer",
        ".slice",
        ".scope",
    ];
    let dir = dir.display().to_string();
    output
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .filter(|line| {
            if line.starts_with('/') {
                return line.starts_with(&dir);
            }
            match line.split_once(": ") {
                Some((subject, _))
                    if !subject.contains(char::is_whitespace)
                        && UNIT_TYPES.iter().any(|t| subject.ends_with(t)) =>
                {
                    ours.iter().any(|unit| unit == subject)
                }
                _ => true,
            }
        })
        .collect()
}

/// Runs `systemd-analyze verify` on copies of `units` (name, text) in a temporary directory
/// and returns its exit status and the lines about ours.
fn verify(units: &[(String, String)]) -> (std::process::ExitStatus, Vec<String>) {
    let tool = Path::new("/usr/bin/systemd-analyze");
    assert!(
        tool.is_file(),
        "{} is missing: install Debian's systemd package (scripts/setup.sh does)",
        tool.display()
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut command = Command::new(tool);
    command.arg("verify");
    for (name, text) in units {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write a unit");
        command.arg(path);
    }
    let output = run_to_end(command, VERIFY_LIMIT);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let ours: Vec<String> = units.iter().map(|(name, _)| name.clone()).collect();
    let lines = about_ours(&text, &ours, dir.path())
        .into_iter()
        .map(String::from)
        .collect();
    (output.status, lines)
}

#[test]
fn every_unit_passes_systemd_analyze_verify() {
    let units: Vec<(String, String)> = units()
        .iter()
        .map(|path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("a unit file name")
                .to_string();
            let text = std::fs::read_to_string(path).expect("read a unit");
            (name, with_built_binaries(&text, &built))
        })
        .collect();
    let (status, lines) = verify(&units);
    assert!(
        lines.is_empty() && status.success(),
        "systemd-analyze verify ({status}) has something to say about deploy/systemd:\n{}",
        lines.join("\n")
    );
}

#[test]
fn the_check_hears_what_verify_says_about_a_broken_unit() {
    let broken = "[Unit]\nDescription=broken\n\n[Service]\nType=notify\nExecStart=/bin/true\n\
                  WatchdogSecs=30s\nRestart=sometimes\n";
    let (_, lines) = verify(&[("arbiter-broken.service".into(), broken.into())]);
    assert!(
        lines.iter().any(|l| l.contains("WatchdogSecs"))
            && lines.iter().any(|l| l.contains("sometimes")),
        "verify's complaints about the unknown key and the bad value should be kept: {lines:?}"
    );
}

#[test]
fn lines_about_other_units_are_left_out_and_the_rest_kept() {
    let dir = Path::new("/tmp/units");
    let ours = vec!["arbiter-tts.service".to_string()];
    let output = "/lib/systemd/system/plymouth.service:3: Unknown key\n\
                  getty@tty1.service: Command /sbin/agetty is not executable\n\
                  /tmp/units/arbiter-tts.service:9: Unknown key name 'X'\n\
                  arbiter-tts.service: Command /x is not executable\n\
                  Something failed for no unit in particular\n\n";
    assert_eq!(
        about_ours(output, &ours, dir),
        [
            "/tmp/units/arbiter-tts.service:9: Unknown key name 'X'",
            "arbiter-tts.service: Command /x is not executable",
            "Something failed for no unit in particular",
        ]
    );
}

#[test]
fn exec_lines_point_at_the_built_binaries_and_nothing_else_changes() {
    let unit = "[Service]\nExecStart=/usr/local/bin/arbiter-tts serve --socket /run/a.sock\n\
                Description=/usr/local/bin/arbiter-tts stays\nExecReload=/bin/kill -TERM $MAINPID\n";
    let rewritten = with_built_binaries(unit, &|name| PathBuf::from("/built").join(name));
    assert_eq!(
        rewritten,
        "[Service]\nExecStart=/built/arbiter-tts serve --socket /run/a.sock\n\
         Description=/usr/local/bin/arbiter-tts stays\nExecReload=/bin/kill -TERM $MAINPID\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_says_ready_pings_the_watchdog_and_says_stopping() {
    let mut notify = NotifySocket::bind();
    let mut builder = Supervisor::builder();
    for (key, value) in notify.env(Duration::from_secs(1)) {
        builder = builder.env(key, &value);
    }
    let mut supervisor = builder.start().await;
    notify
        .wait_for("READY=1", 1, NOTIFY_LIMIT, "READY once serving")
        .await;
    notify
        .wait_for(
            "WATCHDOG=1",
            2,
            NOTIFY_LIMIT,
            "watchdog pings while serving",
        )
        .await;
    let status = supervisor.terminate().await;
    assert!(status.success(), "the supervisor exited with {status}");
    notify
        .wait_for("STOPPING=1", 1, NOTIFY_LIMIT, "STOPPING after SIGTERM")
        .await;
    assert_eq!(notify.count("READY=1"), 1, "{:?}", notify.lines());
    assert!(
        notify.position("READY=1") < notify.position("STOPPING=1"),
        "READY must come before STOPPING: {:?}",
        notify.lines()
    );
}
