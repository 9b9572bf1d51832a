//! Leases whose processes are found by cgroup, not by ancestry: a Kubernetes pod's.
//!
//! A lease normally counts the processes descended from its holder's pid. A claim prepared
//! for a pod has no such pid: the kubelet asks for the memory before the pod's containers
//! exist, and the containers' processes descend from the runtime's shim, not from anything
//! the supervisor knows. They do share the pod's cgroup, which the kubelet names after the
//! pod's UID, and which no process in the pod can leave (moving between cgroups needs
//! privileges a pod does not have). So a pod-scoped lease is charged every process whose
//! `/proc/<pid>/cgroup` names one of its pods.
//!
//! The ledger keys what it charges by pid. A scope gets a key of its own at or above
//! [`FIRST_KEY`], which no process can have (Linux's pid limit is 2^22), so the ledger's
//! books, returns and overuse rules apply unchanged.

use std::collections::HashMap;

/// Linux's PID_MAX_LIMIT on 64-bit: every pid is below it.
pub const FIRST_KEY: u32 = 1 << 22;

/// Whether a peer's pid is a scope's key rather than a process (the wire shows no pid for it).
pub fn is_key(pid: u32) -> bool {
    pid >= FIRST_KEY
}

/// The pods whose processes count against one key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodScope {
    /// Pod UIDs as the API server writes them (`8d0c…-…`).
    pub pods: Vec<String>,
}

impl PodScope {
    /// Whether a process in these cgroups (the paths of `/proc/<pid>/cgroup`) belongs to
    /// one of the pods. Both layouts of the kubelet are known: cgroupfs
    /// (`/kubepods/burstable/pod<uid>/<container>`) and systemd
    /// (`/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/…`).
    pub fn contains(&self, cgroups: &[String]) -> bool {
        cgroups.iter().any(|path| {
            path.split('/').any(|segment| {
                let segment = segment.strip_suffix(".slice").unwrap_or(segment);
                self.pods.iter().any(|uid| {
                    !uid.is_empty()
                        && (segment.ends_with(&format!("pod{uid}"))
                            || segment.ends_with(&format!("pod{}", uid.replace('-', "_"))))
                })
            })
        })
    }
}

/// The scopes the broker knows, by key. A scope is pinned while its claim is prepared (its
/// lease may still be waiting, so the ledger does not know the key yet); once unpinned it
/// lives as long as the ledger still tracks its key (bytes on their way back).
#[derive(Debug, Default)]
pub struct Scopes {
    next: u32,
    by_key: HashMap<u32, (PodScope, bool)>,
}

impl Scopes {
    /// A fresh, pinned key for `scope`.
    pub fn insert(&mut self, scope: PodScope) -> u32 {
        let key = FIRST_KEY + self.next;
        self.next += 1;
        self.by_key.insert(key, (scope, true));
        key
    }

    /// Replaces the pods of `key` (a shared claim reserved for one more pod).
    pub fn set(&mut self, key: u32, scope: PodScope) {
        if let Some(entry) = self.by_key.get_mut(&key) {
            entry.0 = scope;
        }
    }

    /// The claim is no longer prepared: the key goes once the ledger stops tracking it.
    pub fn unpin(&mut self, key: u32) {
        if let Some(entry) = self.by_key.get_mut(&key) {
            entry.1 = false;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The key among `candidates` whose scope holds a process in `cgroups`.
    pub fn owner(&self, cgroups: &[String], candidates: impl Fn(u32) -> bool) -> Option<u32> {
        self.by_key
            .iter()
            .find(|(key, (scope, _))| candidates(**key) && scope.contains(cgroups))
            .map(|(key, _)| *key)
    }

    /// Forgets the unpinned keys for which `tracked` is false (their leases ended and their
    /// returns closed).
    pub fn retain(&mut self, tracked: impl Fn(u32) -> bool) {
        self.by_key
            .retain(|key, (_, pinned)| *pinned || tracked(*key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "3f1c2a9e-7b1d-4c55-9a0e-2b8f6d1e4c7a";

    fn scope() -> PodScope {
        PodScope {
            pods: vec![UID.into()],
        }
    }

    #[test]
    fn both_kubelet_layouts_are_recognised() {
        let cgroupfs = format!("/kubepods/burstable/pod{UID}/0a1b2c3d");
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-0a1b.scope",
            UID.replace('-', "_")
        );
        let guaranteed = format!(
            "/kubepods.slice/kubepods-pod{}.slice",
            UID.replace('-', "_")
        );
        for path in [cgroupfs, systemd, guaranteed] {
            assert!(scope().contains(std::slice::from_ref(&path)), "{path}");
        }
    }

    #[test]
    fn other_pods_and_prefixes_are_not_matched() {
        let other = "/kubepods/burstable/pod11111111-2222-3333-4444-555555555555/x".to_string();
        assert!(!scope().contains(&[other]));
        // A pod whose UID merely ends with ours is not ours.
        let longer = format!("/kubepods/pod{UID}0/x");
        assert!(!scope().contains(&[longer]));
        assert!(!scope().contains(&["/".to_string()]));
        assert!(!PodScope::default().contains(&["/kubepods/pod/x".to_string()]));
    }

    #[test]
    fn keys_are_never_pids_and_are_forgotten_when_told() {
        let mut scopes = Scopes::default();
        let a = scopes.insert(scope());
        let b = scopes.insert(PodScope::default());
        assert!(a >= FIRST_KEY && b > a);
        let path = vec![format!("/kubepods/pod{UID}/c")];
        assert_eq!(scopes.owner(&path, |_| true), Some(a));
        assert_eq!(scopes.owner(&path, |k| k != a), None);
        scopes.retain(|_| false);
        assert_eq!(scopes.owner(&path, |_| true), Some(a), "pinned keys stay");
        scopes.unpin(a);
        scopes.retain(|k| k != a);
        assert_eq!(scopes.owner(&path, |_| true), None);
        assert!(!scopes.is_empty(), "b is still pinned");
    }
}
