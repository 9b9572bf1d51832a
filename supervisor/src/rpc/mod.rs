//! The gRPC edge: the only part of the supervisor that knows about prost types.
//!
//! [`convert`] turns wire messages into validated domain values and back; [`service`]
//! implements `arbiter.supervisor.v1.Supervisor` on top of the lease broker; [`video`] the
//! video jobs' client API and the workers' internal one; [`until`] ends
//! long server streams when the supervisor shuts down.

pub mod convert;
pub mod service;
pub mod until;
pub mod video;
