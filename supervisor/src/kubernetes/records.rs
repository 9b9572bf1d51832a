//! Prepared claims on disk, so a restarted supervisor takes their leases again.
//!
//! The kubelet prepares a claim once and remembers it: after a supervisor restart it does
//! not ask again for the pods already running. Each prepared claim's [`Allocation`] is
//! written to `<state_dir>/kubernetes/claims/<uid>.json` before Prepare answers, and removed
//! once Unprepare has seen the memory back.

use std::path::{Path, PathBuf};

use super::claim::Allocation;

pub struct Records {
    dir: PathBuf,
}

impl Records {
    pub fn open(state_dir: &Path) -> std::io::Result<Records> {
        let dir = state_dir.join("kubernetes").join("claims");
        std::fs::create_dir_all(&dir)?;
        Ok(Records { dir })
    }

    fn path(&self, uid: &str) -> PathBuf {
        self.dir.join(format!("{uid}.json"))
    }

    /// Writes `allocation` durably (write, sync, rename).
    pub fn save(&self, allocation: &Allocation) -> std::io::Result<()> {
        use std::io::Write;
        let path = self.path(&allocation.uid);
        let tmp = path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(allocation)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    }

    pub fn remove(&self, uid: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(uid)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every readable record; an unreadable one is logged and left for the operator.
    pub fn load(&self) -> Vec<Allocation> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Allocation>(&b).map_err(|e| e.to_string()))
            {
                Ok(allocation) => found.push(allocation),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "cannot read a prepared claim's record; left in place")
                }
            }
        }
        found.sort_by(|a, b| a.uid.cmp(&b.uid));
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::claim::Share;

    #[test]
    fn records_survive_and_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::open(dir.path()).unwrap();
        let allocation = Allocation {
            uid: "u-1".into(),
            namespace: "ns".into(),
            name: "c".into(),
            pods: vec!["p".into()],
            shares: vec![Share {
                request: "gpu".into(),
                device: "gpu-0".into(),
                gpu: 0,
                bytes: 1 << 30,
            }],
        };
        records.save(&allocation).unwrap();
        std::fs::write(dir.path().join("kubernetes/claims/bad.json"), b"{").unwrap();
        let again = Records::open(dir.path()).unwrap();
        assert_eq!(again.load(), vec![allocation]);
        again.remove("u-1").unwrap();
        again.remove("u-1").unwrap();
        assert!(again.load().is_empty());
    }
}
