//! `[kubernetes]`: the supervisor as a Kubernetes DRA driver on its node (off by default).

use std::path::PathBuf;
use std::time::Duration;

use arbiter::ByteSize;
use serde::{Deserialize, Serialize};

/// The driver's name where none is configured: the DeviceClass in deploy/kubernetes selects it.
pub const DEFAULT_DRIVER: &str = "gpu.arbiter.dev";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    pub enabled: bool,
    /// The DRA driver name: the kubelet, the ResourceSlices and the DeviceClass all use it.
    pub driver: String,
    /// This node's name as the API server knows it; empty: `$NODE_NAME` (the downward API).
    pub node_name: String,
    /// A kubeconfig to reach the API server; None: the pod's service account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
    /// Where the DRA service's socket (`dra.sock`) is created; None:
    /// `/var/lib/kubelet/plugins/<driver>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin_dir: Option<PathBuf>,
    /// The kubelet's plugin watcher directory, where `<driver>-reg.sock` is created.
    pub registry_dir: PathBuf,
    /// Where the container runtime reads CDI specs; one file per prepared claim.
    pub cdi_dir: PathBuf,
    /// NVIDIA's CDI kind (from `nvidia-ctk cdi generate`), whose device for the claim's GPU
    /// is handed out beside Arbiter's, so the runtime mounts the card; "" hands out only
    /// Arbiter's (on simulated GPUs it is never added).
    pub nvidia_cdi_kind: String,
    /// How long Prepare waits for the claim's lease before it reports the claim failed (the
    /// kubelet calls again).
    #[serde(with = "humantime_serde")]
    pub prepare_timeout: Duration,
    /// How long Unprepare waits for the card to show the claim's memory free; past it the
    /// claim is unprepared and the bytes stay out of what the node publishes.
    #[serde(with = "humantime_serde")]
    pub unprepare_timeout: Duration,
    /// Published capacity is rounded down to a multiple of this, so small changes in foreign
    /// use do not rewrite the ResourceSlice at every reading.
    pub capacity_step: ByteSize,
}

impl Default for KubernetesConfig {
    fn default() -> KubernetesConfig {
        KubernetesConfig {
            enabled: false,
            driver: DEFAULT_DRIVER.into(),
            node_name: String::new(),
            kubeconfig: None,
            plugin_dir: None,
            registry_dir: "/var/lib/kubelet/plugins_registry".into(),
            cdi_dir: "/var/run/cdi".into(),
            nvidia_cdi_kind: "nvidia.com/gpu".into(),
            prepare_timeout: Duration::from_secs(20),
            unprepare_timeout: Duration::from_secs(30),
            capacity_step: ByteSize(256 << 20),
        }
    }
}

impl KubernetesConfig {
    pub fn plugin_dir(&self) -> PathBuf {
        self.plugin_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/kubelet/plugins").join(&self.driver))
    }

    /// The node name from the config or `$NODE_NAME`.
    pub fn node(&self) -> Option<String> {
        if !self.node_name.is_empty() {
            return Some(self.node_name.clone());
        }
        std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty())
    }

    /// What an enabled section must satisfy; the message says what to change.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if !dns_subdomain(&self.driver) || !self.driver.contains('.') {
            return Err(format!(
                "kubernetes.driver = {:?} is not a DRA driver name: use a DNS subdomain with a dot, such as {DEFAULT_DRIVER:?}",
                arbiter::echo::echo(&self.driver)
            ));
        }
        if self.node().is_none() {
            return Err("kubernetes.enabled needs this node's name: set kubernetes.node_name, or NODE_NAME from the downward API (fieldRef spec.nodeName)".into());
        }
        if !self.nvidia_cdi_kind.is_empty() && !cdi_kind(&self.nvidia_cdi_kind) {
            return Err(format!(
                "kubernetes.nvidia_cdi_kind = {:?} is not a CDI kind (vendor/class, such as \"nvidia.com/gpu\"); \"\" hands out no NVIDIA device",
                arbiter::echo::echo(&self.nvidia_cdi_kind)
            ));
        }
        if self.capacity_step.0 == 0 {
            return Err("kubernetes.capacity_step must be at least 1 byte (default 256MiB)".into());
        }
        if self.prepare_timeout.is_zero() || self.unprepare_timeout.is_zero() {
            return Err(
                "kubernetes.prepare_timeout and unprepare_timeout must be above zero".into(),
            );
        }
        Ok(())
    }
}

/// RFC 1123 subdomain: what Kubernetes accepts as a driver name.
fn dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn cdi_kind(kind: &str) -> bool {
    kind.split_once('/').is_some_and(|(vendor, class)| {
        dns_subdomain(vendor)
            && !class.is_empty()
            && class
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled() -> KubernetesConfig {
        KubernetesConfig {
            enabled: true,
            node_name: "node-a".into(),
            ..KubernetesConfig::default()
        }
    }

    #[test]
    fn the_defaults_are_valid_once_a_node_is_named() {
        assert_eq!(enabled().validate(), Ok(()));
        assert_eq!(
            enabled().plugin_dir(),
            PathBuf::from("/var/lib/kubelet/plugins/gpu.arbiter.dev")
        );
        assert_eq!(KubernetesConfig::default().validate(), Ok(()));
    }

    #[test]
    fn bad_names_are_refused_with_what_to_use() {
        for driver in ["Arbiter", "nodot", "-a.b", "a..b", ""] {
            let config = KubernetesConfig {
                driver: driver.into(),
                ..enabled()
            };
            let err = config.validate().unwrap_err();
            assert!(err.contains("gpu.arbiter.dev"), "{err}");
        }
        let config = KubernetesConfig {
            nvidia_cdi_kind: "nvidia".into(),
            ..enabled()
        };
        assert!(config.validate().unwrap_err().contains("vendor/class"));
        let config = KubernetesConfig {
            nvidia_cdi_kind: String::new(),
            ..enabled()
        };
        assert_eq!(config.validate(), Ok(()));
    }
}
