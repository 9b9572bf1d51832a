//! The gRPC edge: the only part of the supervisor that knows about prost types.
//!
//! [`auth`] is who may call what (roles, quotas), for `arbiter::auth`'s layer; [`convert`] turns wire messages into domain values and back; [`supervisor`] implements
//! `arbiter.supervisor.v1.Supervisor` on top of the lease broker; [`video`] the video jobs'
//! client API and [`worker`] the workers' internal one, both over the job hub; [`status`]
//! maps every domain error to a gRPC code, in one place; [`until`] ends long server streams
//! when the supervisor shuts down. Nothing outside this module (and `client`, which is a
//! gRPC client) imports `arbiter::pb`.

pub mod auth;
pub mod convert;
pub mod status;
pub mod supervisor;
pub mod until;
pub mod video;
pub mod worker;
