//! The root crate of Arbiter: the wire protocol and the few types every process shares.
//!
//! Layout:
//! - [`pb`]: the generated gRPC protocol (from `proto/`), the one definition of the wire;
//! - [`auth`]: who each caller is (Unix credentials, a client certificate, a bearer token)
//!   and the layer that puts that identity on every request;
//! - [`bytesize`]: byte counts as operators write them (`80GiB`, `512MiB`);
//! - [`codec`]: the generated services' codec (a request that does not decode is INVALID_ARGUMENT);
//! - [`echo`]: input repeated in an error message, cut short;
//! - [`gate`]: the compute gate, where a voice marks GPU work in flight and video workers
//!   yield to it at block boundaries;
//! - [`endpoint`]: where the supervisor listens by default and how a client connects to it;
//! - [`job`]: a video job's request in the one shape the supervisor stores, the worker runs
//!   and the metadata records;
//! - [`listen`]: the listeners every Arbiter server shares (a Unix socket with a mode and a
//!   group, optional TCP) and the reflection and health services that make grpcurl work;
//! - [`pipeline`]: a video pipeline's manifest: input rules and the memory a job needs;
//! - [`pool`]: the host weight pool's wire, and a file's pooled bytes mapped read-only;
//! - [`scrape`]: the HTTP endpoint Prometheus scrapes (`GET /metrics`), with the same
//!   address rules as the other listeners;
//! - [`simulated`]: the simulated GPU's process table, written by workers on a simulated GPU;
//! - [`spawn`]: the spawn time a spawner passes to its child, so start-up is timed from it;
//! - [`standby`]: the handoff of a job to a worker started before it (READY, then one line);
//! - [`leased`]: the environment a process under someone else's lease gets;
//! - [`systemd`]: readiness, stopping and watchdog notifications, for every service;
//! - [`wav`]: the WAV files the tts service speaks in and its clients write (and read back).
//!
//! Nothing here touches a GPU or links libtorch, so the supervisor can depend on it freely.

pub mod auth;
pub mod bytesize;
pub mod codec;
pub mod echo;
pub mod endpoint;
pub mod gate;
pub mod job;
pub mod leased;
pub mod listen;
pub mod pipeline;
pub mod pool;
pub mod scrape;
pub mod simulated;
pub mod spawn;
pub mod standby;
pub mod systemd;
pub mod wav;

/// The generated protocol. Messages are prost types; they stay at the edge of each crate
/// and are converted to domain types there.
pub mod pb {
    pub mod supervisor {
        pub mod v1 {
            tonic::include_proto!("arbiter.supervisor.v1");
        }
    }
    pub mod video {
        pub mod v1 {
            tonic::include_proto!("arbiter.video.v1");
        }
    }
    pub mod tts {
        pub mod v1 {
            tonic::include_proto!("arbiter.tts.v1");
        }
    }
    pub mod worker {
        pub mod v1 {
            tonic::include_proto!("arbiter.worker.v1");
        }
    }
    /// The kubelet's APIs, served by the supervisor's Kubernetes mode: not Arbiter's to
    /// change (see the comment at the top of each proto).
    pub mod kubelet {
        /// Dynamic Resource Allocation: NodePrepareResources, NodeUnprepareResources.
        pub mod dra {
            pub mod v1 {
                tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");
            }
        }
        /// Plugin registration: GetInfo, NotifyRegistrationStatus.
        pub mod pluginregistration {
            tonic::include_proto!("pluginregistration");
        }
    }
    /// Every proto file, encoded, for the reflection service.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("arbiter_descriptor");
}

pub use bytesize::ByteSize;
