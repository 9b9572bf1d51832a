//! Bearer tokens, kept on disk only as SHA-256 hashes.
//!
//! The tokens file has one line per token, `NAME sha256:HEX`, and `#` comments. A stolen
//! file gives no token away; a caller's token is hashed and compared with every line
//! (in constant time per line), and the line's NAME becomes the caller's identity
//! (`token:NAME`). `arbiter-supervisor token NAME` makes a token and prints its line.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The tokens a server accepts, by hash.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], String>,
}

/// Why a tokens file could not be read; says which line to fix.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read the tokens file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "tokens file line {line}: {problem}; each line is `NAME sha256:HEX` (make one with `arbiter-supervisor token NAME`)"
    )]
    Line { line: usize, problem: String },
    #[error(
        "the tokens file {path} can be read by other users (mode {mode:o}): chmod 600 it (or 640 for a group)"
    )]
    Readable { path: PathBuf, mode: u32 },
}

/// `sha256:HEX` of `token`: what a tokens file stores.
pub fn hash(token: &str) -> String {
    format!("sha256:{}", hex(&Sha256::digest(token.as_bytes())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A new random token (32 bytes from the kernel, hex): to hand to one caller.
pub fn generate() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(hex(&bytes))
}

impl Tokens {
    /// Reads a tokens file, refusing one that every user may read.
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        use std::os::unix::fs::PermissionsExt;
        let read = |source| TokensError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o777;
        if mode & 0o004 != 0 {
            return Err(TokensError::Readable {
                path: path.to_path_buf(),
                mode,
            });
        }
        Tokens::parse(&std::fs::read_to_string(path).map_err(read)?)
    }

    pub fn parse(text: &str) -> Result<Tokens, TokensError> {
        let mut by_hash = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let problem = |problem: &str| TokensError::Line {
                line: index + 1,
                problem: problem.to_string(),
            };
            let mut words = line.split_whitespace();
            let (Some(name), Some(digest), None) = (words.next(), words.next(), words.next())
            else {
                return Err(problem("expected two words"));
            };
            let digest = digest
                .strip_prefix("sha256:")
                .and_then(unhex)
                .ok_or_else(|| problem("the hash is not `sha256:` and 64 hex digits"))?;
            if by_hash.insert(digest, name.to_string()).is_some() {
                return Err(problem("the same token is listed twice"));
            }
        }
        Ok(Tokens { by_hash })
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The name of `token`, if the file lists it.
    pub fn name_of(&self, token: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Compare with every entry without stopping early, so the time taken says nothing
        // about how close a guess came.
        let mut found = None;
        for (known, name) in &self.by_hash {
            let same = known
                .iter()
                .zip(digest.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
            if same {
                found = Some(name.as_str());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_known_by_its_hash_and_bad_lines_are_named() {
        let token = generate().unwrap();
        assert_eq!(token.len(), 64);
        let file = format!("# CI\nci {}\n\nops {}\n", hash(&token), hash("other"));
        let tokens = Tokens::parse(&file).unwrap();
        assert_eq!(tokens.name_of(&token), Some("ci"));
        assert_eq!(tokens.name_of("other"), Some("ops"));
        assert_eq!(tokens.name_of("nope"), None);
        assert!(!file.contains(&token), "the file holds only hashes");
        let bad = Tokens::parse("ci sha256:1234\n").unwrap_err();
        assert!(bad.to_string().contains("line 1"), "{bad}");
        let bad = Tokens::parse("ok sha256:00\nci\n").unwrap_err();
        assert!(bad.to_string().contains("line 1"), "{bad}");
    }

    #[test]
    fn a_world_readable_tokens_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, format!("ci {}\n", hash("t"))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Tokens::load(&path),
            Err(TokensError::Readable { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Tokens::load(&path).unwrap().name_of("t"), Some("ci"));
    }
}
