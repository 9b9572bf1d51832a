//! Container Device Interface specs: how a prepared claim reaches its containers.
//!
//! The kubelet hands the CDI device names that Prepare returns to the container runtime,
//! which reads the specs in its CDI directory and applies their container edits. Arbiter's
//! device for a claim only sets the environment (which card, which lease); the card itself
//! is NVIDIA's CDI device, handed out beside it, so the runtime mounts what the driver
//! needs exactly as NVIDIA's tooling describes it.

use std::path::{Path, PathBuf};

/// The CDI kind of Arbiter's claim devices.
pub const KIND: &str = "arbiter.dev/claim";
/// The CDI spec version written: 0.6.0 is what containerd 1.7 and CRI-O read.
pub const VERSION: &str = "0.6.0";

/// The spec file of a claim in `dir`.
pub fn spec_path(dir: &Path, claim_uid: &str) -> PathBuf {
    dir.join(format!("arbiter.dev-claim-{claim_uid}.json"))
}

/// The fully qualified CDI name of a claim's device.
pub fn device_id(claim_uid: &str) -> String {
    format!("{KIND}={claim_uid}")
}

/// Writes the claim's spec (atomically: a runtime never reads half a file) with `env`
/// (`NAME=value`) as its container edits, and returns its device's CDI name.
pub fn write(dir: &Path, claim_uid: &str, env: &[String]) -> std::io::Result<String> {
    std::fs::create_dir_all(dir)?;
    let spec = serde_json::json!({
        "cdiVersion": VERSION,
        "kind": KIND,
        "devices": [{
            "name": claim_uid,
            "containerEdits": { "env": env },
        }],
    });
    let path = spec_path(dir, claim_uid);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&spec)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(device_id(claim_uid))
}

/// Removes the claim's spec; one already gone is fine (Unprepare is retried).
pub fn remove(dir: &Path, claim_uid: &str) -> std::io::Result<()> {
    match std::fs::remove_file(spec_path(dir, claim_uid)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_names_its_device_and_sets_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let env = vec![
            "CUDA_VISIBLE_DEVICES=GPU-1".to_string(),
            "ARBITER_LEASE_ID=l".into(),
        ];
        let id = write(dir.path(), "u-1", &env).unwrap();
        assert_eq!(id, "arbiter.dev/claim=u-1");
        let spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(spec_path(dir.path(), "u-1")).unwrap()).unwrap();
        assert_eq!(spec["kind"], KIND);
        assert_eq!(spec["cdiVersion"], VERSION);
        assert_eq!(spec["devices"][0]["name"], "u-1");
        assert_eq!(
            spec["devices"][0]["containerEdits"]["env"][1],
            "ARBITER_LEASE_ID=l"
        );
        remove(dir.path(), "u-1").unwrap();
        remove(dir.path(), "u-1").unwrap();
        assert!(!spec_path(dir.path(), "u-1").exists());
    }
}
