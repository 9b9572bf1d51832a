//! The supervisor as a DRA driver, with the kubelet played over its real Unix-socket
//! protocol and the API server by the test kit's stand-in (no control plane can be run
//! here): registration, the node's ResourceSlice, Prepare taking a lease counted by the
//! pod's cgroup, and Unprepare answering only once the card shows the memory back.
//!
//! The "pod" is real processes in a real cgroup named the way the kubelet names a pod's, so
//! these tests need root and a writable cgroup hierarchy (as on the CI machine); without
//! them they fail saying so rather than pass without testing anything.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use arbiter::endpoint::{Address, connect};
use arbiter::pb::kubelet::dra::v1 as dra;
use arbiter::pb::kubelet::pluginregistration as reg;
use arbiter::pb::supervisor::v1 as pb;
use arbiter_test_kit::GIB;
use arbiter_test_kit::events::Feed;
use arbiter_test_kit::kube_api::KubeApi;
use arbiter_test_kit::leases::{gpu_status, lease_held_by, leases, status};
use arbiter_test_kit::supervisor::{Supervisor, record_usage};
use arbiter_test_kit::waiting::{SOON, eventually, within};
use pb::event::Kind;

const DRIVER: &str = "gpu.arbiter.dev";
const NODE: &str = "node-a";
const SLICE: &str = "node-a-gpu.arbiter.dev";

/// A node: the API stand-in, the supervisor in Kubernetes mode on one simulated 16 GiB GPU,
/// and the kubelet's directories.
struct Node {
    api: KubeApi,
    supervisor: Supervisor,
    dir: tempfile::TempDir,
}

impl Node {
    async fn start(unprepare_timeout: &str) -> Node {
        let api = KubeApi::start();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig);
        let config = format!(
            r#"
[kubernetes]
enabled = true
node_name = "{NODE}"
kubeconfig = "{kubeconfig}"
plugin_dir = "{plugins}"
registry_dir = "{registry}"
cdi_dir = "{cdi}"
prepare_timeout = "5s"
unprepare_timeout = "{unprepare_timeout}"
"#,
            kubeconfig = kubeconfig.display(),
            plugins = dir.path().join("plugins").join(DRIVER).display(),
            registry = dir.path().join("plugins_registry").display(),
            cdi = dir.path().join("cdi").display(),
        );
        let supervisor = Supervisor::builder()
            .gpus("16GiB")
            .config(&config)
            .start()
            .await;
        Node {
            api,
            supervisor,
            dir,
        }
    }

    fn registration_socket(&self) -> PathBuf {
        self.dir
            .path()
            .join("plugins_registry")
            .join(format!("{DRIVER}-reg.sock"))
    }

    fn cdi_spec(&self, claim: &str) -> PathBuf {
        self.dir
            .path()
            .join("cdi")
            .join(format!("arbiter.dev-claim-{claim}.json"))
    }

    /// The kubelet's side of registration: GetInfo, then the DRA service it names.
    async fn register(&self) -> dra::dra_plugin_client::DraPluginClient<tonic::transport::Channel> {
        let channel = connect(&Address::unix(self.registration_socket()))
            .await
            .expect("the registration socket answers");
        let mut registration = reg::registration_client::RegistrationClient::new(channel);
        let info = registration
            .get_info(reg::InfoRequest {})
            .await
            .expect("GetInfo")
            .into_inner();
        assert_eq!(info.r#type, "DRAPlugin");
        assert_eq!(info.name, DRIVER);
        assert_eq!(info.supported_versions, vec!["v1.DRAPlugin".to_string()]);
        assert_eq!(
            Path::new(&info.endpoint),
            self.dir
                .path()
                .join("plugins")
                .join(DRIVER)
                .join("dra.sock")
        );
        registration
            .notify_registration_status(reg::RegistrationStatus {
                plugin_registered: true,
                error: String::new(),
            })
            .await
            .expect("NotifyRegistrationStatus");
        let channel = connect(&Address::unix(&info.endpoint))
            .await
            .expect("the DRA socket answers");
        dra::dra_plugin_client::DraPluginClient::new(channel)
    }

    /// The published memory of gpu-0, as a quantity string, in every version applied.
    fn published(&self) -> Vec<String> {
        self.api
            .slice_history(SLICE)
            .into_iter()
            .map(|(_, slice)| memory(&slice))
            .collect()
    }

    async fn wait_published(&self, what: &str, quantity: &str) {
        let quantity = quantity.to_string();
        eventually(SOON, what, || {
            let last = self.published().last().cloned();
            let quantity = quantity.clone();
            async move { (last.as_deref() == Some(quantity.as_str())).then_some(()) }
        })
        .await;
    }
}

fn memory(slice: &serde_json::Value) -> String {
    slice["spec"]["devices"][0]["capacity"]["memory"]["value"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A ResourceClaim as the scheduler leaves it: `memory` of gpu-0 on our node, reserved for
/// `pod`.
fn claim(uid: &str, pod: &str, memory: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "video", "namespace": "media", "uid": uid},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": DRIVER}}]}},
        "status": {
            "allocation": {"devices": {"results": [{
                "request": "gpu", "driver": DRIVER, "pool": NODE, "device": "gpu-0",
                "consumedCapacity": {"memory": memory},
            }]}},
            "reservedFor": [{"resource": "pods", "name": "video-0", "uid": pod}],
        },
    })
}

fn request(uid: &str) -> Vec<dra::Claim> {
    vec![dra::Claim {
        namespace: "media".into(),
        uid: uid.into(),
        name: "video".into(),
    }]
}

/// A pod's cgroup, as the kubelet's cgroupfs driver names it, in the first writable
/// hierarchy; removed when dropped (its processes must be gone by then).
struct PodCgroup {
    dirs: Vec<PathBuf>,
    leaf: PathBuf,
}

impl PodCgroup {
    fn create(pod: &str) -> PodCgroup {
        let roots = [
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/pids",
        ];
        let test = format!("arbiter-test-{}", std::process::id());
        for root in roots.map(PathBuf::from) {
            if !root.join("cgroup.procs").exists() {
                continue;
            }
            let top = root.join(&test);
            let pod_dir = top
                .join("kubepods")
                .join("burstable")
                .join(format!("pod{pod}"));
            let leaf = pod_dir.join("container-0");
            if std::fs::create_dir_all(&leaf).is_ok() {
                let dirs = vec![
                    leaf.clone(),
                    pod_dir,
                    top.join("kubepods").join("burstable"),
                    top.join("kubepods"),
                    top,
                ];
                return PodCgroup { dirs, leaf };
            }
        }
        panic!(
            "these tests put processes into a pod's cgroup and need root with a writable cgroup hierarchy (tried {roots:?})"
        );
    }

    /// Starts `sleep` in the pod with the container's environment.
    fn run(&self, env: &[(String, String)]) -> Child {
        let child = Command::new("sleep")
            .arg("60")
            .envs(env.iter().cloned())
            .spawn()
            .expect("spawn sleep");
        std::fs::write(self.leaf.join("cgroup.procs"), child.id().to_string())
            .expect("move the process into the pod's cgroup");
        let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
        assert!(cgroup.contains("kubepods/burstable/pod"), "{cgroup}");
        child
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// The environment a CDI spec's container edits set.
fn cdi_env(path: &Path) -> Vec<(String, String)> {
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("the claim's CDI spec")).unwrap();
    assert_eq!(spec["kind"], "arbiter.dev/claim");
    spec["devices"][0]["containerEdits"]["env"]
        .as_array()
        .expect("env edits")
        .iter()
        .map(|e| {
            let (k, v) = e.as_str().unwrap().split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn env<'a>(env: &'a [(String, String)], key: &str) -> &'a str {
    env.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("{key} is not in {env:?}"))
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_is_a_lease_of_its_pod_and_unprepare_waits_for_the_memory() {
    let node = Node::start("20s").await;
    let client = node.supervisor.unix_client().await;
    let feed = Feed::watch(&client).await;
    node.wait_published("the whole GPU published", "16Gi").await;
    let first = node.api.slice_history(SLICE)[0].1.clone();
    assert_eq!(first["spec"]["driver"], DRIVER);
    assert_eq!(first["spec"]["nodeName"], NODE);
    assert_eq!(first["spec"]["devices"][0]["name"], "gpu-0");
    assert_eq!(
        first["spec"]["devices"][0]["allowMultipleAllocations"],
        true
    );
    let mut kubelet = node.register().await;

    let (uid, pod) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    node.api.put_claim(claim(&uid, &pod, "4Gi"));
    let prepared = within(
        SOON,
        "Prepare",
        kubelet.node_prepare_resources(dra::NodePrepareResourcesRequest {
            claims: request(&uid),
        }),
    )
    .await
    .expect("NodePrepareResources")
    .into_inner();
    let answer = &prepared.claims[&uid];
    assert_eq!(answer.error, "");
    assert_eq!(answer.devices.len(), 1);
    let device = &answer.devices[0];
    assert_eq!(
        (device.pool_name.as_str(), device.device_name.as_str()),
        (NODE, "gpu-0")
    );
    assert_eq!(device.request_names, vec!["gpu".to_string()]);
    // A simulated GPU has no NVIDIA device to hand out: Arbiter's only.
    assert_eq!(
        device.cdi_device_ids,
        vec![format!("arbiter.dev/claim={uid}")]
    );

    let lease = lease_held_by(&client, "claim media/video").await;
    assert_eq!(lease.bytes, 4 * GIB);
    assert_eq!(lease.owner, format!("claim:{uid}"));
    assert_eq!(lease.pid, None, "a pod's lease has no process of its own");
    assert!(lease.measured);
    let environment = cdi_env(&node.cdi_spec(&uid));
    assert_eq!(env(&environment, "ARBITER_LEASE_ID"), lease.lease_id);
    assert_eq!(
        env(&environment, "ARBITER_LEASE_BYTES"),
        (4 * GIB).to_string()
    );
    assert_eq!(env(&environment, "ARBITER_CLAIM_UID"), uid);
    assert_eq!(env(&environment, "CUDA_VISIBLE_DEVICES"), lease.gpu_uuid);
    // Preparing again (a container restarts) changes nothing.
    let again = kubelet
        .node_prepare_resources(dra::NodePrepareResourcesRequest {
            claims: request(&uid),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.claims[&uid], *answer);
    assert_eq!(leases(&client).await.len(), 1);
    // The scheduler counts the claim itself: what is published does not drop for it.
    assert_eq!(node.published().last().map(String::as_str), Some("16Gi"));

    // The pod: a container process using 3 GiB, and one whose 1 GiB lingers after it, both
    // in the pod's cgroup and descended from nothing the supervisor tracks.
    let cgroup = PodCgroup::create(&pod);
    let mut main = cgroup.run(&environment);
    let mut lingering = cgroup.run(&environment);
    let table = PathBuf::from(env(&environment, arbiter::simulated::DIR_ENV));
    let index: u32 = env(&environment, arbiter::simulated::INDEX_ENV)
        .parse()
        .unwrap();
    assert_eq!(table, node.supervisor.simulated_dir());
    record_usage(&table, index, main.id(), 3 * GIB);
    record_usage(&table, index, lingering.id(), GIB);
    // A process outside the pod is foreign, and the slice shrinks by it.
    let mut outsider = Command::new("sleep").arg("60").spawn().unwrap();
    record_usage(&table, 0, outsider.id(), GIB);
    eventually(SOON, "the pod's use charged to its claim", || {
        let client = client.clone();
        async move {
            let lease = leases(&client).await.into_iter().next()?;
            let gpu = gpu_status(&client, 0).await;
            (lease.used_bytes == Some(4 * GIB) && gpu.unleased_bytes == GIB).then_some(())
        }
    })
    .await;
    node.wait_published("the foreign GiB out of the slice", "15Gi")
        .await;
    kill(&mut outsider);
    node.wait_published("the foreign GiB back in the slice", "16Gi")
        .await;

    // The container exits; the kubelet unprepares while 1 GiB is still on the card.
    kill(&mut main);
    let asked = Instant::now();
    let unprepare = tokio::spawn({
        let mut kubelet = kubelet.clone();
        let uid = uid.clone();
        async move {
            let answer = kubelet
                .node_unprepare_resources(dra::NodeUnprepareResourcesRequest {
                    claims: request(&uid),
                })
                .await
                .expect("NodeUnprepareResources")
                .into_inner();
            (answer, Instant::now())
        }
    });
    node.wait_published("the bytes on their way back out of the slice", "15Gi")
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !unprepare.is_finished(),
        "Unprepare answered while the pod's memory was in use"
    );
    kill(&mut lingering);
    let freed = Instant::now();
    let (answer, answered) = within(SOON, "Unprepare's answer", unprepare).await.unwrap();
    assert_eq!(answer.claims[&uid].error, "");
    assert!(
        answered >= freed,
        "Unprepare answered before the memory was free"
    );
    assert!(answered.duration_since(asked) >= Duration::from_millis(1500));
    node.wait_published("the claim's bytes back in the slice", "16Gi")
        .await;
    // Since Unprepare was asked: down while the bytes were on their way back, then up.
    let since: Vec<String> = node
        .api
        .slice_history(SLICE)
        .into_iter()
        .filter(|(at, _)| *at >= asked)
        .map(|(_, slice)| memory(&slice))
        .collect();
    assert!(since.iter().any(|m| m != "16Gi"), "{since:?}");
    assert_eq!(since.last().map(String::as_str), Some("16Gi"), "{since:?}");

    // The feed says the same: released with bytes returning, then returned.
    let released = feed
        .wait_for("the claim's Released", |k| match k {
            Kind::Released(r) if r.lease_id == lease.lease_id => Some(r.clone()),
            _ => None,
        })
        .await;
    assert!(released.returning_bytes >= GIB, "{released:?}");
    feed.wait_for("the claim's Returned", |k| match k {
        Kind::Returned(r) if r.lease_id == lease.lease_id => Some(()),
        _ => None,
    })
    .await;
    assert!(leases(&client).await.is_empty());
    assert!(status(&client).await.returns.is_empty());
    assert!(!node.cdi_spec(&uid).exists(), "the CDI spec is removed");
    // Unprepare again (the kubelet retries) is fine.
    let again = kubelet
        .node_unprepare_resources(dra::NodeUnprepareResourcesRequest {
            claims: request(&uid),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.claims[&uid].error, "");
    drop(cgroup);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_that_never_comes_back_stays_out_of_the_slice_and_an_event_says_so() {
    let node = Node::start("1s").await;
    let client = node.supervisor.unix_client().await;
    node.wait_published("the whole GPU published", "16Gi").await;
    let mut kubelet = node.register().await;
    let (uid, pod) = (
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    );
    node.api.put_claim(claim(&uid, &pod, "2Gi"));
    let prepared = kubelet
        .node_prepare_resources(dra::NodePrepareResourcesRequest {
            claims: request(&uid),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(prepared.claims[&uid].error, "");
    let environment = cdi_env(&node.cdi_spec(&uid));
    let cgroup = PodCgroup::create(&pod);
    let mut stuck = cgroup.run(&environment);
    record_usage(node.supervisor.simulated_dir(), 0, stuck.id(), 2 * GIB);
    eventually(SOON, "the pod's use charged", || {
        let client = client.clone();
        async move {
            let lease = leases(&client).await.into_iter().next()?;
            (lease.used_bytes == Some(2 * GIB)).then_some(())
        }
    })
    .await;

    let asked = Instant::now();
    let answer = within(
        SOON,
        "Unprepare",
        kubelet.node_unprepare_resources(dra::NodeUnprepareResourcesRequest {
            claims: request(&uid),
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        answer.claims[&uid].error, "",
        "the pod is gone: the kubelet is not held up"
    );
    assert!(
        asked.elapsed() >= Duration::from_secs(1),
        "it waited its bound"
    );
    let event = eventually(SOON, "a MemoryNotReturned event on the claim", || {
        let events = node.api.events();
        async move {
            events
                .into_iter()
                .find(|e| e["reason"] == "MemoryNotReturned")
        }
    })
    .await;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["involvedObject"]["kind"], "ResourceClaim");
    assert_eq!(event["involvedObject"]["uid"], uid.as_str());
    assert_eq!(event["metadata"]["namespace"], "media");
    // The bytes are still on the card: out of what the node offers, and of every budget.
    node.wait_published("the stuck bytes out of the slice", "14Gi")
        .await;
    assert!(leases(&client).await.is_empty());
    assert_eq!(gpu_status(&client, 0).await.available_bytes, 14 * GIB);
    kill(&mut stuck);
    node.wait_published("the bytes back once the card shows them free", "16Gi")
        .await;
    drop(cgroup);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_the_node_cannot_use_are_refused_each_with_its_reason() {
    let node = Node::start("5s").await;
    let client = node.supervisor.unix_client().await;
    let mut kubelet = node.register().await;
    let missing = uuid::Uuid::new_v4().to_string();
    let too_big = uuid::Uuid::new_v4().to_string();
    node.api.put_claim({
        let mut c = claim(&too_big, "p", "20Gi");
        c["metadata"]["name"] = "huge".into();
        c
    });
    let mut claims = request(&missing);
    claims.push(dra::Claim {
        namespace: "media".into(),
        uid: too_big.clone(),
        name: "huge".into(),
    });
    let answer = within(
        Duration::from_secs(20),
        "Prepare",
        kubelet.node_prepare_resources(dra::NodePrepareResourcesRequest { claims }),
    )
    .await
    .unwrap()
    .into_inner();
    assert!(
        answer.claims[&missing]
            .error
            .contains("cannot read the claim media/video"),
        "{:?}",
        answer.claims[&missing]
    );
    let huge = &answer.claims[&too_big].error;
    assert!(huge.contains("20 GiB") || huge.contains("20GiB"), "{huge}");
    assert!(leases(&client).await.is_empty(), "nothing half-prepared");
    assert!(!node.cdi_spec(&too_big).exists());
    // Only the kubelet (root) may call: the sockets' mode here, the policy in
    // `kubernetes::tests`.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(node.registration_socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}
