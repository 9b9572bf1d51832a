//! The node's ResourceSlice: one device per GPU, with the memory Arbiter can lend.
//!
//! The scheduler keeps the sum of the claims it allocates on a device under the device's
//! `memory` capacity. What the ledger can lend is its budget (the card, less the reserve and
//! foreign use) less what the holders that are not claims hold and the bytes not yet seen
//! back; the claims' own leases are added back, since the scheduler counts those itself.
//! The value is rounded down to `capacity_step` and the slice re-applied whenever it
//! changes: after a grant or a release, a reading, a return.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::resource::v1::{
    Device, DeviceAttribute, DeviceCapacity, ResourcePool, ResourceSlice, ResourceSliceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use tokio_util::sync::CancellationToken;

use super::claim::{MEMORY, device_name};
use super::{Plugin, quantity};
use crate::gpu::GpuIdentity;
use crate::lease::broker::Broker;

/// How long a burst of ledger events may take to settle before the slice is computed.
const SETTLE: Duration = Duration::from_millis(50);
/// A slice that could not be applied is tried again this often (and after any change).
const RETRY: Duration = Duration::from_secs(5);

/// The slice's name: one per node and driver.
pub fn slice_name(node: &str, driver: &str) -> String {
    format!("{node}-{driver}")
}

/// What each GPU can lend to claims, rounded down to `step`.
pub fn lendable(broker: &Broker, step: u64) -> Vec<u64> {
    let (views, _) = broker.status();
    views
        .iter()
        .map(|view| {
            let claimed: u64 = broker
                .leases(Some(view.index))
                .iter()
                .filter(|(lease, _)| lease.owner.starts_with("claim:"))
                .map(|(lease, _)| lease.bytes)
                .sum();
            let bytes = view.available.saturating_add(claimed);
            bytes - bytes % step.max(1)
        })
        .collect()
}

/// The slice for `gpus` with `capacities`.
pub fn slice(
    driver: &str,
    node: &str,
    owner: Option<&str>,
    gpus: &[GpuIdentity],
    capacities: &[u64],
    generation: i64,
) -> ResourceSlice {
    let devices = gpus
        .iter()
        .zip(capacities)
        .map(|(gpu, &bytes)| Device {
            name: device_name(gpu.index),
            attributes: Some(BTreeMap::from([
                ("uuid".to_string(), string(&gpu.uuid)),
                ("model".to_string(), string(&gpu.name)),
                (
                    "index".to_string(),
                    DeviceAttribute {
                        int: Some(gpu.index.into()),
                        ..DeviceAttribute::default()
                    },
                ),
            ])),
            capacity: Some(BTreeMap::from([(
                MEMORY.to_string(),
                DeviceCapacity {
                    value: Quantity(quantity::quantity(bytes)),
                    request_policy: None,
                },
            )])),
            // Many claims share one GPU, each with its own bytes.
            allow_multiple_allocations: Some(true),
            ..Device::default()
        })
        .collect();
    ResourceSlice {
        metadata: ObjectMeta {
            name: Some(slice_name(node, driver)),
            owner_references: owner.map(|uid| {
                vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: node.into(),
                    uid: uid.into(),
                    controller: Some(true),
                    ..OwnerReference::default()
                }]
            }),
            ..ObjectMeta::default()
        },
        spec: ResourceSliceSpec {
            driver: driver.into(),
            node_name: Some(node.into()),
            pool: ResourcePool {
                name: node.into(),
                generation,
                resource_slice_count: 1,
            },
            devices: Some(devices),
            ..ResourceSliceSpec::default()
        },
    }
}

fn string(value: &str) -> DeviceAttribute {
    DeviceAttribute {
        string: Some(value.into()),
        ..DeviceAttribute::default()
    }
}

/// Applies the slice now and whenever what it says changes, until `stop`.
pub async fn publish(plugin: Arc<Plugin>, stop: CancellationToken) {
    let mut feed = plugin.broker.feed().subscribe();
    let owner = plugin.api.node_uid().await;
    let name = slice_name(&plugin.node, &plugin.settings.driver);
    let mut published: Option<Vec<u64>> = None;
    let mut generation = 0i64;
    loop {
        let capacities = lendable(&plugin.broker, plugin.settings.capacity_step.0);
        if published.as_ref() != Some(&capacities) {
            // Above any generation a previous run of the supervisor published.
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            generation = (generation + 1).max(now);
            let slice = slice(
                &plugin.settings.driver,
                &plugin.node,
                owner.as_deref(),
                plugin.broker.gpus(),
                &capacities,
                generation,
            );
            match plugin.api.apply_slice(&slice).await {
                Ok(()) => {
                    tracing::info!(slice = %name, generation, memory = ?capacities.iter().map(|b| arbiter::ByteSize(*b).to_string()).collect::<Vec<_>>(), "ResourceSlice published");
                    published = Some(capacities);
                }
                Err(error) => {
                    tracing::warn!(slice = %name, %error, "cannot publish the ResourceSlice; trying again")
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = plugin.changed.notified() => {}
            event = feed.recv() => {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = event {
                    return;
                }
            }
            () = tokio::time::sleep(RETRY) => {}
        }
        tokio::time::sleep(SETTLE).await;
        while feed.try_recv().is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::broker::test_broker;

    fn gpus() -> Vec<GpuIdentity> {
        vec![GpuIdentity {
            index: 0,
            uuid: "GPU-0".into(),
            name: "NVIDIA H100 80GB HBM3".into(),
            capacity: 80 << 30,
        }]
    }

    #[test]
    fn a_slice_has_a_device_per_gpu_with_its_memory() {
        let slice = slice(
            "gpu.arbiter.dev",
            "node-a",
            Some("n-1"),
            &gpus(),
            &[70 << 30],
            7,
        );
        let json = serde_json::to_value(&slice).unwrap();
        assert_eq!(json["metadata"]["name"], "node-a-gpu.arbiter.dev");
        assert_eq!(json["metadata"]["ownerReferences"][0]["kind"], "Node");
        assert_eq!(json["spec"]["driver"], "gpu.arbiter.dev");
        assert_eq!(json["spec"]["nodeName"], "node-a");
        assert_eq!(json["spec"]["pool"]["name"], "node-a");
        assert_eq!(json["spec"]["pool"]["generation"], 7);
        let device = &json["spec"]["devices"][0];
        assert_eq!(device["name"], "gpu-0");
        assert_eq!(device["allowMultipleAllocations"], true);
        assert_eq!(device["capacity"]["memory"]["value"], "70Gi");
        assert_eq!(device["attributes"]["uuid"]["string"], "GPU-0");
        assert_eq!(device["attributes"]["index"]["int"], 0);
    }

    #[test]
    fn claims_count_as_lendable_and_other_holders_do_not() {
        let broker = test_broker(10 << 30, 0);
        assert_eq!(lendable(&broker, 256 << 20), vec![10 << 30]);
        let ask = |owner: &str, bytes: u64| crate::lease::Ask {
            holder: owner.into(),
            gpu: crate::lease::GpuChoice::Any,
            bytes,
            priority: crate::lease::Priority::Normal,
            preemptible: false,
            reload: crate::lease::ReloadCost::default(),
            max_wait: None,
            form: crate::lease::Form::Stream,
            peer: None,
            owner: owner.into(),
            quota: None,
        };
        let _claim = broker.hold(ask("claim:u-1", 3 << 30)).unwrap();
        assert_eq!(lendable(&broker, 256 << 20), vec![10 << 30]);
        let _tts = broker.hold(ask("uid:1000", (1 << 30) + 5)).unwrap();
        // 10 GiB - (1 GiB + 5 bytes), rounded down to the step.
        assert_eq!(lendable(&broker, 256 << 20), vec![(9 << 30) - (256 << 20)]);
    }

    /// The publisher against kube-rs's mock service: the requests it makes and the
    /// ResourceSlice objects it applies, first with the whole budget, then with foreign use
    /// taken out.
    #[tokio::test]
    async fn the_publisher_applies_the_slice_and_follows_foreign_use() {
        use http::{Request, Response};
        use kube::client::Body;

        let dir = tempfile::tempdir().unwrap();
        let inventory: Arc<dyn crate::gpu::Inventory> = Arc::new(
            crate::gpu::simulated::SimulatedInventory::new(&[10 << 30], dir.path()).unwrap(),
        );
        let broker = test_broker(10 << 30, 0);
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let settings = crate::config::KubernetesConfig {
            enabled: true,
            node_name: "node-a".into(),
            ..Default::default()
        };
        let plugin = Arc::new(Plugin {
            api: super::super::Api::new(client, &settings.driver, "node-a"),
            settings,
            node: "node-a".into(),
            broker: Arc::clone(&broker),
            inventory: Arc::clone(&inventory),
            records: super::super::records::Records::open(dir.path()).unwrap(),
            simulated_dir: Some(dir.path().to_path_buf()),
            return_poll: Duration::from_millis(5),
            claims: Default::default(),
            changed: Default::default(),
        });
        let stop = CancellationToken::new();
        let publisher = tokio::spawn(publish(Arc::clone(&plugin), stop.clone()));

        let next = async |handle: &mut tower_test::mock::Handle<Request<Body>, Response<Body>>| {
            let (request, respond) =
                tokio::time::timeout(Duration::from_secs(10), handle.next_request())
                    .await
                    .expect("a request in time")
                    .expect("the client is alive");
            let method = request.method().clone();
            let uri = request.uri().clone();
            let kind = request
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string());
            let body = request.into_body().collect_bytes().await.unwrap();
            (method, uri, kind, body, respond)
        };

        let (method, uri, _, _, respond) = next(&mut handle).await;
        assert_eq!(
            (method.as_str(), uri.path()),
            ("GET", "/api/v1/nodes/node-a")
        );
        let missing = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "nodes \"node-a\" not found"});
        respond.send_response(
            Response::builder()
                .status(404)
                .body(Body::from(serde_json::to_vec(&missing).unwrap()))
                .unwrap(),
        );

        let mut applied = Vec::new();
        for _ in 0..2 {
            let (method, uri, kind, body, respond) = next(&mut handle).await;
            assert_eq!(method.as_str(), "PATCH");
            assert_eq!(
                uri.path(),
                "/apis/resource.k8s.io/v1/resourceslices/node-a-gpu.arbiter.dev"
            );
            let query = uri.query().unwrap_or("");
            assert!(
                query.contains("fieldManager=gpu.arbiter.dev") && query.contains("force=true"),
                "{query}"
            );
            assert_eq!(kind.as_deref(), Some("application/apply-patch+yaml"));
            let slice: ResourceSlice = serde_json::from_slice(&body).expect("a ResourceSlice");
            respond.send_response(Response::builder().body(Body::from(body.to_vec())).unwrap());
            applied.push(slice);
            if applied.len() == 1 {
                // A foreign process takes 2 GiB of the card.
                let mut foreign = std::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .unwrap();
                arbiter::simulated::record(dir.path(), 0, foreign.id(), 2 << 30).unwrap();
                let sample = inventory.sample(0).unwrap();
                broker.observe(0, sample, std::time::Instant::now());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(20)).await;
                    let _ = foreign.kill();
                    let _ = foreign.wait();
                });
            }
        }
        let memory = |s: &ResourceSlice| {
            s.spec.devices.as_ref().unwrap()[0]
                .capacity
                .as_ref()
                .unwrap()["memory"]
                .value
                .0
                .clone()
        };
        assert_eq!(memory(&applied[0]), "10Gi");
        assert_eq!(memory(&applied[1]), "8Gi");
        assert!(applied[1].spec.pool.generation > applied[0].spec.pool.generation);
        assert!(
            applied[0].metadata.owner_references.is_none(),
            "no node, no owner"
        );
        assert_eq!(applied[0].spec.node_name.as_deref(), Some("node-a"));
        stop.cancel();
        publisher.await.unwrap();
    }
}
