//! `arbiter-supervisor token NAME`: makes a bearer token for a TCP caller. The token is
//! printed once, for the operator to hand over; the tokens file gets only its hash, so
//! the file can be read back (or leak) without giving any token away.

use std::io::Write;
use std::path::Path;

use super::ClientError;

/// Prints a new token for `name`, and appends its line to `file` when given (creating the
/// file with mode 0600), or prints the line to add.
pub fn run(name: &str, file: Option<&Path>) -> Result<(), ClientError> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{}` cannot name a token: use letters, digits and punctuation, no spaces (such as ci or render-01)",
            arbiter::echo::echo(name)
        )
        .into());
    }
    let token = arbiter::auth::tokens::generate()
        .map_err(|e| format!("cannot read random bytes from /dev/urandom: {e}"))?;
    let line = format!("{name} {}", arbiter::auth::tokens::hash(&token));
    match file {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            writeln!(out, "{line}").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            eprintln!(
                "added token:{name} to {} (restart the supervisor to load it)",
                path.display()
            );
        }
        None => eprintln!("add this line to the tokens file ([auth] tokens_file):\n{line}"),
    }
    println!("{token}");
    Ok(())
}
