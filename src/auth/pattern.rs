//! Which identities a role or a quota applies to, as an operator writes them in a config.

use std::fmt;

use serde::de::{Deserialize, Deserializer};

use super::Identity;

/// One entry of a role or quota list: `uid:0`, `user:alice`, `gid:1001`, `group:render`,
/// `cert:render-01`, `token:ci`, `insecure-tcp`, `unix` (anyone on the Unix socket) or `*`
/// (anyone with an identity). Users and groups are looked up when the config is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    Uid(u32),
    Gid(u32),
    Certificate(String),
    Token(String),
    InsecureTcp,
    AnyUnix,
    Anyone,
}

/// Why a pattern could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatternError {
    #[error(
        "`{0}` is not an identity: write uid:N, user:NAME, gid:N, group:NAME, cert:NAME, token:NAME, insecure-tcp, unix or *"
    )]
    Unknown(String),
    #[error("no user `{0}` on this host (getent passwd {0})")]
    NoUser(String),
    #[error("no group `{0}` on this host (getent group {0})")]
    NoGroup(String),
}

impl std::str::FromStr for Pattern {
    type Err = PatternError;

    fn from_str(text: &str) -> Result<Pattern, PatternError> {
        let unknown = || PatternError::Unknown(crate::echo::echo(text));
        match text {
            "*" => return Ok(Pattern::Anyone),
            "unix" => return Ok(Pattern::AnyUnix),
            "insecure-tcp" => return Ok(Pattern::InsecureTcp),
            _ => {}
        }
        let (kind, value) = text.split_once(':').ok_or_else(unknown)?;
        if value.is_empty() {
            return Err(unknown());
        }
        Ok(match kind {
            "uid" => Pattern::Uid(value.parse().map_err(|_| unknown())?),
            "gid" => Pattern::Gid(value.parse().map_err(|_| unknown())?),
            "user" => Pattern::Uid(
                nix::unistd::User::from_name(value)
                    .ok()
                    .flatten()
                    .ok_or_else(|| PatternError::NoUser(value.to_string()))?
                    .uid
                    .as_raw(),
            ),
            "group" => Pattern::Gid(
                nix::unistd::Group::from_name(value)
                    .ok()
                    .flatten()
                    .ok_or_else(|| PatternError::NoGroup(value.to_string()))?
                    .gid
                    .as_raw(),
            ),
            "cert" => Pattern::Certificate(value.to_string()),
            "token" => Pattern::Token(value.to_string()),
            _ => return Err(unknown()),
        })
    }
}

impl Pattern {
    /// Whether `identity` is one this pattern names. `gid` is the caller's primary group, as
    /// the kernel reports it for the socket (supplementary groups are not visible there).
    pub fn matches(&self, identity: &Identity) -> bool {
        match (self, identity) {
            (Pattern::Anyone, _) => true,
            (Pattern::AnyUnix, Identity::Unix { .. }) => true,
            (Pattern::Uid(want), Identity::Unix { uid, .. }) => want == uid,
            (Pattern::Gid(want), Identity::Unix { gid, .. }) => want == gid,
            (Pattern::Certificate(want), Identity::Certificate(name)) => want == name,
            (Pattern::Token(want), Identity::Token(name)) => want == name,
            (Pattern::InsecureTcp, Identity::InsecureTcp) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Uid(uid) => write!(f, "uid:{uid}"),
            Pattern::Gid(gid) => write!(f, "gid:{gid}"),
            Pattern::Certificate(name) => write!(f, "cert:{name}"),
            Pattern::Token(name) => write!(f, "token:{name}"),
            Pattern::InsecureTcp => f.write_str("insecure-tcp"),
            Pattern::AnyUnix => f.write_str("unix"),
            Pattern::Anyone => f.write_str("*"),
        }
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Pattern, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether any of `patterns` names `identity`.
pub fn any_matches(patterns: &[Pattern], identity: &Identity) -> bool {
    patterns.iter().any(|p| p.matches(identity))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_read_and_match_what_they_name() {
        let unix = Identity::Unix {
            uid: 1000,
            gid: 1001,
            pid: Some(7),
        };
        let root_user: Pattern = "user:root".parse().unwrap();
        assert_eq!(root_user, Pattern::Uid(0));
        assert!("uid:1000".parse::<Pattern>().unwrap().matches(&unix));
        assert!("gid:1001".parse::<Pattern>().unwrap().matches(&unix));
        assert!("unix".parse::<Pattern>().unwrap().matches(&unix));
        assert!(!"uid:0".parse::<Pattern>().unwrap().matches(&unix));
        let ci = Identity::Token("ci".into());
        assert!("token:ci".parse::<Pattern>().unwrap().matches(&ci));
        assert!(!"unix".parse::<Pattern>().unwrap().matches(&ci));
        assert!("*".parse::<Pattern>().unwrap().matches(&ci));
        assert!(!"cert:ci".parse::<Pattern>().unwrap().matches(&ci));
        assert!(matches!(
            "admin".parse::<Pattern>(),
            Err(PatternError::Unknown(_))
        ));
        assert!(matches!(
            "uid:".parse::<Pattern>(),
            Err(PatternError::Unknown(_))
        ));
        assert!(matches!(
            "user:no-such-user-xyz".parse::<Pattern>(),
            Err(PatternError::NoUser(_))
        ));
    }
}
