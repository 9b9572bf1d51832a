//! Who is calling, and what they may do: the identity every Arbiter server gives each
//! caller before any handler runs.
//!
//! A caller on the Unix socket is who the kernel says (its uid, gid and pid). A caller over
//! TCP proves who it is with TLS: a client certificate the server's CA signed (the name is
//! the certificate's first DNS or URI name, else its subject's common name), or a bearer
//! token from the server's tokens file (kept there only as a SHA-256 hash). A plaintext TCP
//! listener exists only where the operator asked for one, and every caller on it without a
//! token is one shared identity, `insecure-tcp`.
//!
//! [`layer`] resolves the identity in one tower layer in front of every service, asks the
//! server's [`Authorize`] policy whether that identity may call the method, applies the
//! identity's request rate, and hands the handlers a [`Caller`]. Handlers then decide only
//! what depends on the request itself (whose lease or job it names).
//!
//! [`Authorize`]: layer::Authorize

pub mod identity;
pub mod layer;
pub mod pattern;
pub mod rate;
pub mod tokens;

pub use identity::Identity;
pub use layer::{AuthLayer, Authorize, Caller};
pub use pattern::Pattern;
pub use tokens::Tokens;
