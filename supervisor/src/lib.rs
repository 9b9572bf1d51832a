//! The Arbiter supervisor: owns each GPU's memory budget and lends it out as leases.
//!
//! Layout, from the inside out:
//! - [`budget`]: what may be lent on one GPU (capacity − reserve − foreign use);
//! - [`lease`]: the ledger of grants and waits (pure) and the broker that serves it;
//! - [`gpu`]: the inventory the budgets come from, NVML or a simulation;
//! - [`sampler`]: folds GPU readings into the broker (periodic, and on demand);
//! - [`job`]: video jobs, one leased worker process each: persisted, spawned, verified;
//! - [`rpc`]: the gRPC services, the only module that sees prost types, and the mapping of
//!   domain errors to gRPC status codes;
//! - [`kubernetes`]: the DRA driver for the kubelet (`[kubernetes]`): claims prepared as
//!   leases counted by the pod's cgroup, released only once the card shows them free, and
//!   the node's ResourceSlice;
//! - [`metrics`]: the Prometheus metrics (`[metrics] listen`), from the event feed and
//!   from the broker and the jobs at each scrape;
//! - [`server`]: wiring, listeners, shutdown (and systemd's notifications, through
//!   `arbiter::systemd`); [`logging`]: the process's surroundings; [`config`], [`cli`]:
//!   settings; [`client`]: the operator's commands.
//!
//! Invariant: this crate never links libtorch and never creates a CUDA context. It sees
//! GPUs only through NVML, which is why it can watch every card without holding any of it.

pub mod budget;
pub mod cli;
pub mod client;
pub mod compute;
pub mod config;
pub mod gpu;
pub mod job;
pub mod kubernetes;
pub mod lease;
pub mod logging;
pub mod metrics;
pub mod pool;
pub mod rpc;
pub mod sampler;
pub mod server;
