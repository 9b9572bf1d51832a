//! `arbiter-tts` as a library: the command users run, without libtorch.
//!
//! The tts service (`arbiter-tts-server`, crate `arbiter-tts`) links libtorch, which takes
//! about half a second and some 450 MiB just to map and initialise; a client call that only
//! sends a text over a socket should not pay that. So the command is split in two:
//!
//! - [`client`]: the commands that talk to a running service (`say`, `lip-sync`), run here;
//! - [`server`]: `serve` and `info`, which need libtorch, replace this process with
//!   `arbiter-tts-server` installed beside it (exec: the same pid and arguments, so
//!   systemd's `Type=notify` with `NotifyAccess=main` and anyone holding the pid still see
//!   the process that serves).
//!
//! Invariant: this crate never depends on tch, torch-sys or `arbiter-torch` (nor on
//! `arbiter-tts`, which does); `tests/thin.rs` checks the built binary does not load
//! libtorch. What it shares with the service (the wire, WAV files, the default socket)
//! lives in the root crate `arbiter`.

pub mod client;
pub mod server;
