//! The kit every whole-system test of the workspace uses: the root crate's tests (`tests/`)
//! and `arbiter-tts`'s (`tts-service/tests/`). A dev-only crate (never published), so that
//! one copy serves every test target and each target takes only what it needs.
//!
//! By concern:
//! - [`binaries`]: the workspace's binaries, found beside the test and built first when they
//!   are missing or older than their sources;
//! - [`processes`]: child processes that log to a file and are killed when dropped, signals,
//!   waiting for an exit, stand-ins for foreign GPU users;
//! - [`supervisor`]: the real `arbiter-supervisor` on simulated GPUs ([`Builder`],
//!   [`Supervisor`]) and its simulated process table;
//! - [`leases`]: lease requests and the supervisor's answers (leases, status, updates);
//! - [`events`]: the event feed, collected in the background and waited on;
//! - [`jobs`]: video jobs: the test pipeline, the generated staged pipeline, submitting and
//!   waiting for jobs, checking what they wrote;
//! - [`kube_api`]: a stand-in for the Kubernetes API server (the REST subset the
//!   supervisor's DRA driver uses), with the writes it received;
//! - [`tts`]: the real `arbiter-tts serve`, its generated models and its requests;
//! - `generated` (internal): fixtures that take seconds to generate (models, the staged
//!   pipeline) are generated once per key under `<target>/tmp/arbiter-test-kit` and copied
//!   into each test's directory;
//! - [`media`]: WAV files and tones, pictures, and ffprobe's view of a file;
//! - [`metrics`]: HTTP GETs to a metrics endpoint or Prometheus, samples read from the
//!   exposition, and the metrics the Grafana dashboard queries;
//! - [`tools`]: the stock gRPC clients (grpcurl, the venv's python with grpcio);
//! - [`notify`]: systemd's notify socket, played by the test (READY, WATCHDOG, STOPPING);
//! - [`raw`]: calls whose request is raw bytes, as a broken or hostile client sends;
//! - [`tls`]: a CA and certificates made per test, tokens files, bearer tokens on calls;
//! - [`waiting`]: bounded waits ([`within`], [`eventually`]).
//!
//! Failures say what the process under test saw: a [`Supervisor`] or a
//! [`Process`](processes::Process) prints its log when the test that owns it panics (set
//! `ARBITER_TEST_LOGS=1` to print every log, with `--nocapture`).
//!
//! [`Builder`]: supervisor::Builder
//! [`Supervisor`]: supervisor::Supervisor
//! [`within`]: waiting::within
//! [`eventually`]: waiting::eventually

pub mod binaries;
pub mod events;
mod generated;
pub mod jobs;
pub mod kube_api;
pub mod leases;
pub mod media;
pub mod metrics;
pub mod notify;
pub mod processes;
pub mod raw;
pub mod supervisor;
pub mod tls;
pub mod tools;
pub mod tts;
pub mod waiting;

/// One GiB in bytes.
pub const GIB: u64 = 1 << 30;

/// Asserts a refusal's code, and that its message is specific: it contains each of `needles`.
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    needles: &[&str],
) -> tonic::Status {
    let status = match result {
        Ok(value) => panic!("expected {code:?}, got a success: {value:?}"),
        Err(status) => status,
    };
    assert_eq!(
        status.code(),
        code,
        "wrong code; message: {}",
        status.message()
    );
    assert!(
        !status.message().trim().is_empty(),
        "{code:?} with an empty message"
    );
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "the {code:?} message should mention {needle:?}: {}",
            status.message()
        );
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_must_have_the_code_and_name_every_needle() {
        let refusal = || Err::<(), _>(tonic::Status::invalid_argument("width 100 is not allowed"));
        assert_refused(refusal(), tonic::Code::InvalidArgument, &["width", "100"]);
        for wrong in [
            std::panic::catch_unwind(|| {
                assert_refused(refusal(), tonic::Code::NotFound, &[]);
            }),
            std::panic::catch_unwind(|| {
                assert_refused(refusal(), tonic::Code::InvalidArgument, &["height"]);
            }),
            std::panic::catch_unwind(|| {
                assert_refused(
                    Ok::<(), tonic::Status>(()),
                    tonic::Code::InvalidArgument,
                    &[],
                );
            }),
        ] {
            assert!(wrong.is_err());
        }
    }
}
