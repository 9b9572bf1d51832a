//! The thin `arbiter-tts` is thin: it does not link libtorch (nor libespeak-ng), a client
//! call does not map it, `serve` without `arbiter-tts-server` beside it says where it
//! looked, and a client with no service says how to start one.
//!
//! Nothing here needs the server or libtorch; `tts-service/tests/notify.rs` runs `serve`
//! through this binary (exec: the same pid then maps libtorch and notifies systemd).

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use arbiter_test_kit::binaries;
use arbiter_test_kit::processes::{Process, run_to_end};

/// Libraries only the server may load: libtorch's (with its CUDA and c10 parts) and eSpeak
/// NG's.
const HEAVY: [&str; 4] = ["libtorch", "libc10", "libespeak-ng", "libtorch_cpu"];

const LIMIT: Duration = Duration::from_secs(30);

/// The shared libraries `binary` names in its dynamic section (DT_NEEDED), by readelf.
fn needed(binary: &Path) -> Vec<String> {
    let mut readelf = Command::new("readelf");
    readelf.arg("--dynamic").arg(binary);
    let output = run_to_end(readelf, LIMIT);
    assert!(
        output.status.success(),
        "readelf (binutils) failed on {}: {}",
        binary.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| {
            l.split_once('[')?
                .1
                .split_once(']')
                .map(|(name, _)| name.to_string())
        })
        .collect()
}

#[test]
fn the_command_links_neither_libtorch_nor_espeak() {
    let libraries = needed(&binaries::tts());
    assert!(
        libraries.iter().any(|l| l.starts_with("libc.so")),
        "readelf should list libc at least: {libraries:?}"
    );
    for library in &libraries {
        assert!(
            !HEAVY.iter().any(|heavy| library.starts_with(heavy)),
            "arbiter-tts links {library}: the client commands must not load libtorch or eSpeak \
             (they belong to arbiter-tts-server): {libraries:?}"
        );
    }
}

/// A `say` whose service accepts the connection and never answers stays alive, fully
/// started, for as long as the test likes: its memory map is then what a client call maps.
#[test]
fn a_client_call_maps_no_libtorch() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let socket = dir.path().join("silent.sock");
    let listener = UnixListener::bind(&socket).expect("bind a socket that never answers");
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    let mut command = Command::new(binaries::tts());
    command
        .arg("say")
        .arg("--socket")
        .arg(&socket)
        .args(["--text", "Hello there."])
        .arg("--out")
        .arg(dir.path().join("never.wav"));
    let mut client = Process::spawn(command, dir.path().join("say.log"));

    let deadline = Instant::now() + LIMIT;
    let _connection = loop {
        match listener.accept() {
            Ok((connection, _)) => break connection,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept on {}: {e}", socket.display()),
        }
        if let Some(status) = client.try_wait() {
            panic!(
                "arbiter-tts say exited ({status}) before connecting: {}",
                client.output()
            );
        }
        assert!(
            Instant::now() < deadline,
            "arbiter-tts say did not connect within {LIMIT:?}: {}",
            client.output()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", client.pid()))
        .expect("the waiting client's memory map");
    let mapped: Vec<&str> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|path| path.contains(".so"))
        .collect();
    assert!(
        mapped.iter().any(|p| p.contains("libc.so")),
        "the map should show libc at least: {mapped:?}"
    );
    for path in &mapped {
        assert!(
            !HEAVY.iter().any(|heavy| path.contains(heavy)),
            "a client call maps {path}: {mapped:?}"
        );
    }
}

#[test]
fn serve_without_the_server_beside_it_says_where_it_looked() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let alone = dir.path().join("arbiter-tts");
    std::fs::copy(binaries::tts(), &alone).expect("copy arbiter-tts alone into a directory");
    let mut serve = Command::new(&alone);
    serve
        .args(["serve", "--socket"])
        .arg(dir.path().join("tts.sock"));
    let output = run_to_end(serve, LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let expected = dir.path().join("arbiter-tts-server");
    assert!(
        stderr.contains("arbiter-tts serve") && stderr.contains(&expected.display().to_string()),
        "the error should name the command and where the server should be: {stderr}"
    );
}

#[test]
fn a_client_without_a_service_says_how_to_start_one() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let socket = dir.path().join("nobody.sock");
    let mut say = Command::new(binaries::tts());
    say.arg("say")
        .arg("--socket")
        .arg(&socket)
        .args(["--text", "Hello."])
        .arg("--out")
        .arg(dir.path().join("never.wav"));
    let output = run_to_end(say, LIMIT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&socket.display().to_string()) && stderr.contains("arbiter-tts serve"),
        "the error should name the socket and how to start the service: {stderr}"
    );
    assert!(!dir.path().join("never.wav").exists());
}
