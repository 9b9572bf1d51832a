//! What a ResourceClaim asks of this node, read from the API server's object.
//!
//! The kubelet's Prepare names a claim only (namespace, name, UID); what it was allocated
//! (which of our devices, how many bytes of each) and for which pods is in the claim's
//! status, written by the scheduler. This module turns that object into an [`Allocation`]
//! and says precisely what is wrong with one it cannot use.

use k8s_openapi::api::resource::v1::ResourceClaim;

use super::quantity;

/// The capacity name the ResourceSlices publish and claims consume.
pub const MEMORY: &str = "memory";

/// A claim's share of this node, as the scheduler allocated it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Allocation {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// The pods the claim is reserved for: their processes are the ones charged.
    pub pods: Vec<String>,
    pub shares: Vec<Share>,
}

/// One allocated device: bytes of one GPU.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Share {
    /// The claim's request this device serves.
    pub request: String,
    /// The device's name in our ResourceSlice (`gpu-<index>`).
    pub device: String,
    pub gpu: u32,
    pub bytes: u64,
}

/// Why a claim cannot be prepared here; the text goes back to the kubelet, which shows it
/// on the pod.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimError {
    #[error(
        "the claim's UID is {found}, not {asked}: it was deleted and made again; the kubelet will retry with the new one"
    )]
    Replaced { asked: String, found: String },
    #[error("the claim is not allocated yet: the scheduler has not placed it")]
    NotAllocated,
    #[error("the claim has no device of driver {driver} on node {node}")]
    NoDevice { driver: String, node: String },
    #[error(
        "device {0:?} is not one this node publishes (gpu-0, gpu-1, …): the ResourceSlice changed under the claim"
    )]
    UnknownDevice(String),
    #[error(
        "device {device} was allocated without a consumed `memory` capacity: the cluster needs the DRAConsumableCapacity feature (Kubernetes >= 1.34, on by default from 1.36) so that several claims can share a GPU safely"
    )]
    NoMemory { device: String },
    #[error("device {device}: consumed memory {source}")]
    Quantity {
        device: String,
        source: quantity::BadQuantity,
    },
    #[error(
        "device {device} was allocated 0 bytes: ask for `capacity.requests.memory` in the claim"
    )]
    Empty { device: String },
}

/// The device name this node publishes for a GPU.
pub fn device_name(gpu: u32) -> String {
    format!("gpu-{gpu}")
}

/// The GPU of a device name, if it is one of ours.
pub fn gpu_of(device: &str, gpus: usize) -> Option<u32> {
    let index: u32 = device.strip_prefix("gpu-")?.parse().ok()?;
    (format!("gpu-{index}") == device && (index as usize) < gpus).then_some(index)
}

/// The part of `claim` that the kubelet asked this node (`driver`, pool `node`) to prepare.
pub fn allocation(
    claim: &ResourceClaim,
    asked_uid: &str,
    driver: &str,
    node: &str,
    gpus: usize,
) -> Result<Allocation, ClaimError> {
    let found = claim.metadata.uid.clone().unwrap_or_default();
    if found != asked_uid {
        return Err(ClaimError::Replaced {
            asked: asked_uid.into(),
            found,
        });
    }
    let status = claim.status.as_ref();
    let allocated = status
        .and_then(|s| s.allocation.as_ref())
        .ok_or(ClaimError::NotAllocated)?;
    let results = allocated
        .devices
        .as_ref()
        .and_then(|d| d.results.as_deref())
        .unwrap_or_default();
    let mut shares = Vec::new();
    for result in results
        .iter()
        .filter(|r| r.driver == driver && r.pool == node)
    {
        let gpu = gpu_of(&result.device, gpus)
            .ok_or_else(|| ClaimError::UnknownDevice(arbiter::echo::echo(&result.device)))?;
        let consumed = result
            .consumed_capacity
            .as_ref()
            .and_then(|c| c.get(MEMORY))
            .ok_or_else(|| ClaimError::NoMemory {
                device: result.device.clone(),
            })?;
        let bytes = quantity::bytes(&consumed.0).map_err(|source| ClaimError::Quantity {
            device: result.device.clone(),
            source,
        })?;
        if bytes == 0 {
            return Err(ClaimError::Empty {
                device: result.device.clone(),
            });
        }
        shares.push(Share {
            request: result.request.clone(),
            device: result.device.clone(),
            gpu,
            bytes,
        });
    }
    if shares.is_empty() {
        return Err(ClaimError::NoDevice {
            driver: driver.into(),
            node: node.into(),
        });
    }
    let pods = status
        .and_then(|s| s.reserved_for.as_ref())
        .map(|consumers| {
            consumers
                .iter()
                .filter(|c| c.resource == "pods" && c.api_group.as_deref().unwrap_or("").is_empty())
                .map(|c| c.uid.clone())
                .collect()
        })
        .unwrap_or_default();
    Ok(Allocation {
        uid: found,
        namespace: claim.metadata.namespace.clone().unwrap_or_default(),
        name: claim.metadata.name.clone().unwrap_or_default(),
        pods,
        shares,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A claim as the scheduler leaves it: allocated `devices` (name, memory) of `driver` in
    /// pool `node`, reserved for `pods`.
    pub(crate) fn claim(
        uid: &str,
        devices: &[(&str, Option<&str>)],
        pods: &[&str],
    ) -> ResourceClaim {
        let results: Vec<serde_json::Value> = devices
            .iter()
            .map(|(device, memory)| {
                let mut result = serde_json::json!({
                    "request": "gpu", "driver": "gpu.arbiter.dev", "pool": "node-a", "device": device,
                });
                if let Some(memory) = memory {
                    result["consumedCapacity"] = serde_json::json!({ "memory": memory });
                }
                result
            })
            .collect();
        let reserved: Vec<serde_json::Value> = pods
            .iter()
            .map(|uid| serde_json::json!({"resource": "pods", "name": "p", "uid": uid}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": "video", "namespace": "media", "uid": uid},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.arbiter.dev"}}]}},
            "status": {
                "allocation": {"devices": {"results": results}},
                "reservedFor": reserved,
            },
        }))
        .expect("a valid ResourceClaim")
    }

    fn read(claim: &ResourceClaim) -> Result<Allocation, ClaimError> {
        allocation(claim, "u-1", "gpu.arbiter.dev", "node-a", 2)
    }

    #[test]
    fn an_allocated_claim_becomes_shares_of_gpus_and_its_pods() {
        let claim = claim(
            "u-1",
            &[("gpu-1", Some("8Gi")), ("gpu-0", Some("512Mi"))],
            &["pod-1"],
        );
        let allocation = read(&claim).unwrap();
        assert_eq!(allocation.namespace, "media");
        assert_eq!(allocation.name, "video");
        assert_eq!(allocation.pods, vec!["pod-1".to_string()]);
        assert_eq!(
            allocation.shares,
            vec![
                Share {
                    request: "gpu".into(),
                    device: "gpu-1".into(),
                    gpu: 1,
                    bytes: 8 << 30
                },
                Share {
                    request: "gpu".into(),
                    device: "gpu-0".into(),
                    gpu: 0,
                    bytes: 512 << 20
                },
            ]
        );
    }

    #[test]
    fn what_cannot_be_prepared_says_why() {
        assert!(matches!(
            read(&claim("u-2", &[("gpu-0", Some("1Gi"))], &[])),
            Err(ClaimError::Replaced { .. })
        ));
        assert_eq!(
            read(&claim("u-1", &[("gpu-7", Some("1Gi"))], &[])),
            Err(ClaimError::UnknownDevice("gpu-7".into()))
        );
        let err = read(&claim("u-1", &[("gpu-0", None)], &[])).unwrap_err();
        assert!(err.to_string().contains("DRAConsumableCapacity"), "{err}");
        assert!(matches!(
            read(&claim("u-1", &[("gpu-0", Some("lots"))], &[])),
            Err(ClaimError::Quantity { .. })
        ));
        assert!(matches!(
            read(&claim("u-1", &[("gpu-0", Some("0"))], &[])),
            Err(ClaimError::Empty { .. })
        ));
        assert!(matches!(
            read(&claim("u-1", &[], &[])),
            Err(ClaimError::NoDevice { .. })
        ));
        let mut unallocated = claim("u-1", &[], &[]);
        unallocated.status = None;
        assert_eq!(read(&unallocated), Err(ClaimError::NotAllocated));
    }

    #[test]
    fn device_names_are_ours_exactly() {
        assert_eq!(gpu_of("gpu-1", 2), Some(1));
        assert_eq!(gpu_of("gpu-2", 2), None);
        assert_eq!(gpu_of("gpu-01", 2), None);
        assert_eq!(gpu_of("cpu-0", 2), None);
        assert_eq!(device_name(3), "gpu-3");
    }
}
