//! The manifests in `deploy/kubernetes/`, read the way the API server would read them (no
//! control plane can be run here): every document of every `*.yaml` is deserialized into
//! its `k8s-openapi` type, and written back out to JSON to compare with the document, since
//! `k8s-openapi` skips fields it does not know: a misspelled or misplaced field (`hostPid`,
//! `capacity` beside `exactly` instead of in it) fails here instead of being dropped by the
//! API server's decoder later. Then what the design needs of them:
//!
//! - the DaemonSet runs `arbiter-supervisor serve` in the host's pid namespace (a claim's
//!   lease counts the pod's processes by cgroup), mounts the kubelet's plugin and registry
//!   directories and the CDI directory at the host's own paths, knows its node from the
//!   downward API, and runs as the ServiceAccount the ClusterRoleBinding binds;
//! - the ClusterRole grants every verb the plugin uses;
//! - the DeviceClass selects the driver by CEL, every ResourceClaimTemplate asks it for a
//!   `memory` capacity that is a valid Kubernetes quantity of whole bytes, and the Job and the
//!   Deployment hand their claims to their containers;
//! - the ConfigMap's `supervisor.toml` turns the Kubernetes mode on with the paths the
//!   DaemonSet mounts, and the real supervisor accepts it (`check-config`);
//! - `kustomization.yaml` lists every manifest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use arbiter_test_kit::binaries;
use arbiter_test_kit::processes::run_to_end;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::api::resource::v1::{DeviceClass, ResourceClaimTemplate};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const DRIVER: &str = "gpu.arbiter.dev";
const CONFIG_FILE: &str = "/etc/arbiter/supervisor.toml";

/// What the plugin does with the API server (the design's RBAC), as (API group, resource,
/// verbs).
const NEEDED: &[(&str, &str, &[&str])] = &[
    (
        "resource.k8s.io",
        "resourceslices",
        &[
            "get", "list", "watch", "create", "update", "patch", "delete",
        ],
    ),
    (
        "resource.k8s.io",
        "resourceclaims",
        &["get", "list", "watch"],
    ),
    ("", "events", &["create", "patch"]),
    ("", "nodes", &["get"]),
];

/// The `[kubernetes]` keys the supervisor reads; the ConfigMap may use no others.
const KUBERNETES_KEYS: &[&str] = &[
    "enabled",
    "driver",
    "node_name",
    "kubeconfig",
    "plugin_dir",
    "registry_dir",
    "cdi_dir",
    "nvidia_cdi_kind",
    "prepare_timeout",
    "unprepare_timeout",
    "capacity_step",
];

/// One typed object of the manifests.
#[derive(Debug)]
enum Object {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    ConfigMap(ConfigMap),
    DaemonSet(DaemonSet),
    Deployment(Deployment),
    Service(Service),
    Job(Job),
    DeviceClass(DeviceClass),
    ResourceClaimTemplate(ResourceClaimTemplate),
}

/// A document of a manifest file: where it is, and what it is.
#[derive(Debug)]
struct Manifest {
    /// `file.yaml#N`, N counting documents from 1.
    place: String,
    object: Object,
}

fn manifests_dir() -> PathBuf {
    binaries::workspace_root().join("deploy/kubernetes")
}

/// The `*.yaml` files in `deploy/kubernetes/`, by name.
fn yaml_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests_dir())
        .expect("read deploy/kubernetes")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/kubernetes");
    files
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// The documents of a YAML text, as JSON (the form the API server decodes); empty
/// documents (only comments) are left out.
fn documents(text: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for (n, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = <serde_yaml::Value as serde::Deserialize>::deserialize(document)
            .map_err(|e| format!("document {}: not YAML: {e}", n + 1))?;
        if value.is_null() {
            continue;
        }
        let json = serde_json::to_value(&value)
            .map_err(|e| format!("document {}: not expressible as JSON: {e}", n + 1))?;
        out.push(json);
    }
    Ok(out)
}

/// The paths (`spec.template.spec.hostPid`) where two JSON values differ, with what each
/// side has there.
fn differences(path: &str, file: &Value, typed: &Value, out: &mut Vec<String>) {
    match (file, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match b.get(key) {
                    Some(other) => differences(&here, value, other, out),
                    None => out.push(format!(
                        "{here}: in the manifest, unknown to Kubernetes (misspelled or misplaced?)"
                    )),
                }
            }
            for key in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}.{key}: added by the typed object"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                differences(&format!("{path}[{i}]"), x, y, out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!(
            "{path}: the manifest has {a}, the typed object {b}"
        )),
    }
}

/// `document` as a `T`, if it reads as one without losing or changing anything.
fn typed<T: DeserializeOwned + Serialize>(document: &Value) -> Result<T, String> {
    let object: T = serde_json::from_value(document.clone()).map_err(|e| e.to_string())?;
    let again = serde_json::to_value(&object).map_err(|e| e.to_string())?;
    let mut diffs = Vec::new();
    differences("", document, &again, &mut diffs);
    if diffs.is_empty() {
        Ok(object)
    } else {
        Err(diffs.join("; "))
    }
}

/// The typed object a JSON document is, by its apiVersion and kind.
fn object(document: &Value) -> Result<Object, String> {
    let field = |name: &str| {
        document
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("no {name}"))
    };
    let (api_version, kind) = (field("apiVersion")?, field("kind")?);
    let object = match (api_version, kind) {
        ("v1", "Namespace") => Object::Namespace(typed(document)?),
        ("v1", "ServiceAccount") => Object::ServiceAccount(typed(document)?),
        ("v1", "ConfigMap") => Object::ConfigMap(typed(document)?),
        ("v1", "Service") => Object::Service(typed(document)?),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => Object::ClusterRole(typed(document)?),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            Object::ClusterRoleBinding(typed(document)?)
        }
        ("apps/v1", "DaemonSet") => Object::DaemonSet(typed(document)?),
        ("apps/v1", "Deployment") => Object::Deployment(typed(document)?),
        ("batch/v1", "Job") => Object::Job(typed(document)?),
        ("resource.k8s.io/v1", "DeviceClass") => Object::DeviceClass(typed(document)?),
        ("resource.k8s.io/v1", "ResourceClaimTemplate") => {
            Object::ResourceClaimTemplate(typed(document)?)
        }
        (api_version, kind) => {
            return Err(format!(
                "{api_version} {kind} is not a kind these manifests are checked as: add it to this test"
            ));
        }
    };
    Ok(object)
}

/// Every object of every manifest (kustomization.yaml is kustomize's, not the API
/// server's); panics naming each document that does not read as its type.
fn manifests() -> Vec<Manifest> {
    let mut out = Vec::new();
    let mut failures = Vec::new();
    for path in yaml_files() {
        let name = file_name(&path);
        if name == "kustomization.yaml" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let documents = match documents(&text) {
            Ok(documents) => documents,
            Err(error) => {
                failures.push(format!("{name}: {error}"));
                continue;
            }
        };
        if documents.is_empty() {
            failures.push(format!("{name}: no objects"));
        }
        for (n, document) in documents.iter().enumerate() {
            let place = format!("{name}#{}", n + 1);
            match object(document) {
                Ok(object) => out.push(Manifest { place, object }),
                Err(error) => failures.push(format!("{place}: {error}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "manifests that do not read as Kubernetes objects:\n{}",
        failures.join("\n")
    );
    out
}

macro_rules! all_of {
    ($manifests:expr, $variant:ident) => {
        $manifests
            .iter()
            .filter_map(|m| match &m.object {
                Object::$variant(o) => Some((m.place.as_str(), o)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
}

macro_rules! one_of {
    ($manifests:expr, $variant:ident) => {{
        let all = all_of!($manifests, $variant);
        assert_eq!(
            all.len(),
            1,
            "expected one {} in deploy/kubernetes, found {:?}",
            stringify!($variant),
            all.iter().map(|(place, _)| place).collect::<Vec<_>>()
        );
        all[0].1
    }};
}

/// The supervisor's config from the ConfigMap, as TOML.
fn supervisor_toml(manifests: &[Manifest]) -> String {
    let config_map = one_of!(manifests, ConfigMap);
    config_map
        .data
        .as_ref()
        .and_then(|data| data.get("supervisor.toml"))
        .expect("the ConfigMap has supervisor.toml")
        .clone()
}

fn supervisor_config(manifests: &[Manifest]) -> toml::Table {
    let text = supervisor_toml(manifests);
    toml::from_str(&text).unwrap_or_else(|e| panic!("supervisor.toml is not TOML: {e}\n{text}"))
}

fn kubernetes_path(config: &toml::Table, key: &str, default: &str) -> String {
    config["kubernetes"]
        .get(key)
        .map(|v| v.as_str().expect("a path is a string").to_string())
        .unwrap_or_else(|| default.to_string())
}

/// The byte count a Kubernetes quantity (`20Gi`, `6e9`, `1.5G`) stands for, if it is a
/// quantity and a whole, non-negative number of bytes.
fn quantity_bytes(text: &str) -> Option<u128> {
    let digits_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits_end);
    let number = number.strip_prefix('+').unwrap_or(number);
    if number.starts_with('-') {
        return None;
    }
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mantissa: u128 = format!("{whole}{fraction}").parse().ok()?;
    // The value is mantissa * 2^two * 10^ten.
    let (two, mut ten): (u32, i32) = match suffix {
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "" => (0, 0),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        exponent if exponent.starts_with(['e', 'E']) => {
            let exp = &exponent[1..];
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (0, exp.parse().ok()?)
        }
        _ => return None,
    };
    ten -= fraction.len() as i32;
    let mut value = mantissa.checked_mul(1u128.checked_shl(two)?)?;
    if ten >= 0 {
        value = value.checked_mul(10u128.checked_pow(ten as u32)?)?;
    } else {
        let divisor = 10u128.checked_pow(ten.unsigned_abs())?;
        if value % divisor != 0 {
            return None;
        }
        value /= divisor;
    }
    Some(value)
}

#[test]
fn quantities_are_read_as_kubernetes_reads_them() {
    for (text, bytes) in [
        ("20Gi", 20u128 << 30),
        ("6Gi", 6 << 30),
        ("512Mi", 512 << 20),
        ("1.5Gi", 3 << 29),
        ("8G", 8_000_000_000),
        ("6e9", 6_000_000_000),
        // A bare E is exa; E followed by digits is an exponent.
        ("1E", 1_000_000_000_000_000_000),
        ("1E3", 1000),
        ("1024", 1024),
        ("+1k", 1000),
        ("2000m", 2),
    ] {
        assert_eq!(quantity_bytes(text), Some(bytes), "{text}");
    }
    // Not quantities, or not whole bytes.
    for text in [
        "", "Gi", "20GiB", "20 Gi", "1.5.0Gi", "-1Gi", "500m", "1.5", "20gi", "e3",
    ] {
        assert_eq!(quantity_bytes(text), None, "{text}");
    }
}

#[test]
fn the_round_trip_catches_what_k8s_openapi_would_drop() {
    let document: Value = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": "a", "lables": { "x": "y" } },
    });
    let error = object(&document).unwrap_err();
    assert!(error.contains("metadata.lables"), "{error}");
    let error = object(&serde_json::json!({ "apiVersion": "v1", "kind": "Secret" })).unwrap_err();
    assert!(error.contains("not a kind"), "{error}");
    let fine =
        serde_json::json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": "a" } });
    assert!(matches!(object(&fine), Ok(Object::Namespace(_))));
}

#[test]
fn every_manifest_reads_as_its_kubernetes_type_without_unknown_fields() {
    let manifests = manifests();
    let kinds: BTreeSet<&str> = manifests
        .iter()
        .map(|m| match m.object {
            Object::Namespace(_) => "Namespace",
            Object::ServiceAccount(_) => "ServiceAccount",
            Object::ClusterRole(_) => "ClusterRole",
            Object::ClusterRoleBinding(_) => "ClusterRoleBinding",
            Object::ConfigMap(_) => "ConfigMap",
            Object::DaemonSet(_) => "DaemonSet",
            Object::Deployment(_) => "Deployment",
            Object::Service(_) => "Service",
            Object::Job(_) => "Job",
            Object::DeviceClass(_) => "DeviceClass",
            Object::ResourceClaimTemplate(_) => "ResourceClaimTemplate",
        })
        .collect();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
        "Deployment",
        "Service",
        "Job",
        "DeviceClass",
        "ResourceClaimTemplate",
    ] {
        assert!(kinds.contains(kind), "no {kind} in deploy/kubernetes");
    }
    let namespace = one_of!(manifests, Namespace);
    assert_eq!(namespace.metadata.name.as_deref(), Some("arbiter-system"));
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let path = manifests_dir().join("kustomization.yaml");
    let text = std::fs::read_to_string(&path).expect("deploy/kubernetes/kustomization.yaml");
    let documents = documents(&text).unwrap();
    assert_eq!(documents.len(), 1, "kustomization.yaml is one document");
    let kustomization = &documents[0];
    assert_eq!(kustomization["kind"], "Kustomization");
    assert_eq!(
        kustomization["apiVersion"],
        "kustomize.config.k8s.io/v1beta1"
    );
    let listed: Vec<&str> = kustomization["resources"]
        .as_array()
        .expect("resources is a list")
        .iter()
        .map(|r| r.as_str().expect("a resource is a file name"))
        .collect();
    let unique: BTreeSet<&str> = listed.iter().copied().collect();
    assert_eq!(
        unique.len(),
        listed.len(),
        "a file listed twice: {listed:?}"
    );
    let files: BTreeSet<String> = yaml_files()
        .iter()
        .map(|p| file_name(p))
        .filter(|n| n != "kustomization.yaml")
        .collect();
    let listed: BTreeSet<String> = unique.into_iter().map(String::from).collect();
    assert_eq!(
        listed, files,
        "kustomization.yaml's resources and the *.yaml files"
    );
}

#[test]
fn the_cluster_role_grants_every_verb_the_plugin_uses() {
    let manifests = manifests();
    let role = one_of!(manifests, ClusterRole);
    let rules = role.rules.as_deref().unwrap_or_default();
    let mut granted: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in rules {
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                granted
                    .entry((group.clone(), resource.clone()))
                    .or_default()
                    .extend(rule.verbs.iter().cloned());
            }
        }
    }
    let mut needed: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for (group, resource, verbs) in NEEDED {
        let key = (group.to_string(), resource.to_string());
        needed.insert(key, verbs.iter().map(|v| v.to_string()).collect());
    }
    // Exactly these: no wildcard, nothing the plugin does not do.
    assert_eq!(granted, needed, "the ClusterRole's grants");

    let binding = one_of!(manifests, ClusterRoleBinding);
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        binding.role_ref.api_group.as_deref(),
        Some("rbac.authorization.k8s.io")
    );
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
}

/// The ServiceAccount (name, namespace) the ClusterRoleBinding binds.
fn bound_service_accounts(manifests: &[Manifest]) -> BTreeSet<(String, String)> {
    let binding = one_of!(manifests, ClusterRoleBinding);
    binding
        .subjects
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|s| s.kind == "ServiceAccount")
        .map(|s| (s.name.clone(), s.namespace.clone().unwrap_or_default()))
        .collect()
}

#[test]
fn the_daemonset_runs_the_supervisor_as_the_nodes_dra_plugin() {
    let manifests = manifests();
    let daemonset = one_of!(manifests, DaemonSet);
    let namespace = daemonset.metadata.namespace.clone().unwrap_or_default();
    assert_eq!(namespace, "arbiter-system");
    let spec = daemonset.spec.as_ref().expect("a DaemonSet spec");
    let pod = spec.template.spec.as_ref().expect("a pod spec");

    assert_eq!(
        pod.host_pid,
        Some(true),
        "leases count pods by /proc/<pid>/cgroup"
    );
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert!(
        pod.tolerations
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|t| t.key.as_deref() == Some("nvidia.com/gpu")
                && t.operator.as_deref() == Some("Exists")),
        "tolerates the nvidia.com/gpu taints"
    );

    // Its ServiceAccount is the one bound to the ClusterRole, and exists.
    let account = pod
        .service_account_name
        .clone()
        .expect("the DaemonSet names its ServiceAccount");
    assert!(
        bound_service_accounts(&manifests).contains(&(account.clone(), namespace.clone())),
        "{namespace}/{account} is not bound by the ClusterRoleBinding"
    );
    assert!(
        all_of!(manifests, ServiceAccount).iter().any(|(_, sa)| {
            sa.metadata.name.as_deref() == Some(account.as_str())
                && sa.metadata.namespace.as_deref() == Some(namespace.as_str())
        }),
        "no ServiceAccount {namespace}/{account}"
    );

    assert_eq!(pod.containers.len(), 1, "one container: the supervisor");
    let container = &pod.containers[0];
    let mut argv: Vec<String> = container.command.clone().unwrap_or_default();
    argv.extend(container.args.clone().unwrap_or_default());
    assert_eq!(
        argv,
        ["arbiter-supervisor", "serve", "--config", CONFIG_FILE],
        "the supervisor's command line"
    );

    // NODE_NAME from the downward API.
    let env = container.env.as_deref().unwrap_or_default();
    let node_name = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME is set");
    let field = node_name
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("NODE_NAME comes from a fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");
    let value = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(value("NVIDIA_VISIBLE_DEVICES").as_deref(), Some("all"));
    assert!(
        value("NVIDIA_DRIVER_CAPABILITIES")
            .is_some_and(|c| c.split(',').any(|c| c == "utility" || c == "all")),
        "NVML needs the utility capability"
    );

    // Mounts: host path -> mount path.
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let mounts = container.volume_mounts.as_deref().unwrap_or_default();
    let host_mount = |mount_path: &str| -> Option<String> {
        let mount = mounts.iter().find(|m| m.mount_path == mount_path)?;
        let volume = volumes.iter().find(|v| v.name == mount.name)?;
        volume.host_path.as_ref().map(|h| h.path.clone())
    };
    let config = supervisor_config(&manifests);
    let plugin_dir = kubernetes_path(
        &config,
        "plugin_dir",
        &format!("/var/lib/kubelet/plugins/{DRIVER}"),
    );
    let registry_dir =
        kubernetes_path(&config, "registry_dir", "/var/lib/kubelet/plugins_registry");
    let cdi_dir = kubernetes_path(&config, "cdi_dir", "/var/run/cdi");
    for (path, why) in [
        ("/var/lib/kubelet/plugins", "the DRA socket"),
        (
            "/var/lib/kubelet/plugins_registry",
            "the registration socket",
        ),
        ("/var/run/cdi", "the claims' CDI specs"),
        ("/var/lib/arbiter", "the state: prepared claims' records"),
        ("/run/arbiter", "the node-local socket"),
    ] {
        // The same path inside as on the host: the kubelet dials the endpoint the plugin
        // reports, and the runtime reads the CDI files, both on the host.
        assert_eq!(
            host_mount(path).as_deref(),
            Some(path),
            "{path} ({why}) is a hostPath mounted at the same path"
        );
    }
    for (key, dir, mount) in [
        ("plugin_dir", &plugin_dir, "/var/lib/kubelet/plugins"),
        (
            "registry_dir",
            &registry_dir,
            "/var/lib/kubelet/plugins_registry",
        ),
        ("cdi_dir", &cdi_dir, "/var/run/cdi"),
    ] {
        assert!(
            Path::new(dir).starts_with(mount),
            "[kubernetes] {key} = {dir:?} is not under the mount {mount}"
        );
    }
    let state_dir = config["jobs"]
        .get("state_dir")
        .and_then(|v| v.as_str())
        .expect("[jobs] state_dir is set (the prepared claims' records outlive the pod)");
    assert!(
        Path::new(state_dir).starts_with("/var/lib/arbiter"),
        "{state_dir}"
    );
    let socket = config["server"]
        .get("socket")
        .and_then(|v| v.as_str())
        .expect("[server] socket is set");
    assert!(Path::new(socket).starts_with("/run/arbiter"), "{socket}");

    // The config is the ConfigMap's, mounted where --config says.
    let config_mount = mounts
        .iter()
        .find(|m| Path::new(CONFIG_FILE).parent() == Some(Path::new(&m.mount_path)))
        .expect("a mount at /etc/arbiter");
    let config_volume = volumes
        .iter()
        .find(|v| v.name == config_mount.name)
        .and_then(|v| v.config_map.as_ref())
        .expect("/etc/arbiter is a ConfigMap volume");
    assert_eq!(
        Some(&config_volume.name),
        one_of!(manifests, ConfigMap).metadata.name.as_ref()
    );
    assert_eq!(
        one_of!(manifests, ConfigMap).metadata.namespace.as_deref(),
        Some(namespace.as_str())
    );

    // Probes exist (what they run is the supervisor's own `status`).
    for (name, probe) in [
        ("liveness", &container.liveness_probe),
        ("readiness", &container.readiness_probe),
    ] {
        let probe = probe.as_ref().unwrap_or_else(|| panic!("a {name} probe"));
        let command = probe
            .exec
            .as_ref()
            .and_then(|e| e.command.clone())
            .unwrap_or_default();
        assert!(
            command.first().map(String::as_str) == Some("arbiter-supervisor")
                && command.iter().any(|a| a == "status"),
            "{name} probe: {command:?}"
        );
    }
}

#[test]
fn the_device_class_selects_the_driver() {
    let manifests = manifests();
    let class = one_of!(manifests, DeviceClass);
    assert_eq!(class.metadata.name.as_deref(), Some(DRIVER));
    let expressions: Vec<&str> = class
        .spec
        .selectors
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s.cel.as_ref().map(|c| c.expression.as_str()))
        .collect();
    assert_eq!(
        expressions,
        [format!("device.driver == \"{DRIVER}\"")],
        "the DeviceClass's CEL selectors"
    );
    // And it names the driver the supervisor is configured as.
    let config = supervisor_config(&manifests);
    assert_eq!(config["kubernetes"]["driver"].as_str(), Some(DRIVER));
}

#[test]
fn every_claim_template_asks_the_device_class_for_whole_bytes_of_memory() {
    let manifests = manifests();
    let class = one_of!(manifests, DeviceClass);
    let templates = all_of!(manifests, ResourceClaimTemplate);
    assert!(templates.len() >= 2, "the video and tts examples");
    for (place, template) in templates {
        let requests = template
            .spec
            .spec
            .devices
            .as_ref()
            .and_then(|d| d.requests.as_deref())
            .unwrap_or_default();
        assert!(!requests.is_empty(), "{place}: no device requests");
        for request in requests {
            let exactly = request
                .exactly
                .as_ref()
                .unwrap_or_else(|| panic!("{place}: request {} is not `exactly`", request.name));
            assert_eq!(
                Some(&exactly.device_class_name),
                class.metadata.name.as_ref(),
                "{place}: request {}",
                request.name
            );
            let memory = exactly
                .capacity
                .as_ref()
                .and_then(|c| c.requests.as_ref())
                .and_then(|r| r.get("memory"))
                .unwrap_or_else(|| {
                    panic!(
                        "{place}: request {} asks no memory capacity (it would take the whole device)",
                        request.name
                    )
                });
            let bytes = quantity_bytes(&memory.0).unwrap_or_else(|| {
                panic!(
                    "{place}: memory {:?} is not a quantity of whole bytes",
                    memory.0
                )
            });
            assert!(bytes >= 1 << 20, "{place}: {} is under 1Mi", memory.0);
        }
    }
}

/// The names of the pod's claims (each from a template that exists in its namespace), and
/// those its containers reference.
fn claims_of(place: &str, namespace: &str, pod: &PodSpec, manifests: &[Manifest]) {
    let templates: BTreeSet<(String, String)> = all_of!(manifests, ResourceClaimTemplate)
        .iter()
        .map(|(_, t)| {
            (
                t.metadata.namespace.clone().unwrap_or_default(),
                t.metadata.name.clone().unwrap_or_default(),
            )
        })
        .collect();
    let claims = pod.resource_claims.as_deref().unwrap_or_default();
    assert!(!claims.is_empty(), "{place}: the pod has no resourceClaims");
    let mut names = BTreeSet::new();
    for claim in claims {
        let template = claim
            .resource_claim_template_name
            .clone()
            .unwrap_or_else(|| panic!("{place}: claim {} is not from a template", claim.name));
        assert!(
            templates.contains(&(namespace.to_string(), template.clone())),
            "{place}: no ResourceClaimTemplate {namespace}/{template}"
        );
        names.insert(claim.name.clone());
    }
    for container in &pod.containers {
        let used: BTreeSet<String> = container
            .resources
            .as_ref()
            .and_then(|r| r.claims.as_deref())
            .unwrap_or_default()
            .iter()
            .map(|c| c.name.clone())
            .collect();
        assert!(
            !used.is_empty(),
            "{place}: container {} references no claim",
            container.name
        );
        assert!(
            used.is_subset(&names),
            "{place}: container {} references {used:?}, the pod claims {names:?}",
            container.name
        );
    }
}

fn argv(container: &k8s_openapi::api::core::v1::Container) -> String {
    let mut argv = container.command.clone().unwrap_or_default();
    argv.extend(container.args.clone().unwrap_or_default());
    argv.join(" ")
}

#[test]
fn the_job_and_the_deployment_hand_their_claims_to_their_containers() {
    let manifests = manifests();

    let (place, job) = all_of!(manifests, Job)[0];
    let namespace = job.metadata.namespace.clone().unwrap_or_default();
    let pod = job
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a pod spec");
    claims_of(place, &namespace, pod, &manifests);
    let command = argv(&pod.containers[0]);
    assert!(
        command.contains("arbiter-video generate") && command.contains("ARBITER_LEASE_BYTES"),
        "{place}: the video job runs the worker within the claim's lease: {command}"
    );

    let (place, deployment) = all_of!(manifests, Deployment)[0];
    let namespace = deployment.metadata.namespace.clone().unwrap_or_default();
    let pod = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a pod spec");
    claims_of(place, &namespace, pod, &manifests);
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap_or_default();
    assert_eq!(
        container.command.as_deref(),
        Some(&["arbiter-tts-server".to_string()][..]),
        "{place}"
    );
    assert_eq!(args.first().map(String::as_str), Some("serve"), "{place}");
    assert!(
        args.iter().any(|a| a == "--lease-from-env"),
        "{place}: {args:?}"
    );
    assert!(
        !args.iter().any(|a| a == "--insecure-tcp"),
        "{place}: the tts service serves TLS: {args:?}"
    );

    // The Service reaches the Deployment's pods, on a port they declare.
    let service = one_of!(manifests, Service);
    let selector = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .expect("the Service selects pods");
    let labels = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    assert!(
        selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "the Service's selector {selector:?} and the pods' labels {labels:?}"
    );
    assert_eq!(service.metadata.namespace, deployment.metadata.namespace);
}

#[test]
fn the_config_map_turns_the_kubernetes_mode_on() {
    let manifests = manifests();
    let config = supervisor_config(&manifests);
    let kubernetes = config
        .get("kubernetes")
        .and_then(|k| k.as_table())
        .expect("supervisor.toml has [kubernetes]");
    assert_eq!(
        kubernetes.get("enabled").and_then(|v| v.as_bool()),
        Some(true)
    );
    assert_eq!(
        kubernetes.get("driver").and_then(|v| v.as_str()),
        Some(DRIVER)
    );
    for key in kubernetes.keys() {
        assert!(
            KUBERNETES_KEYS.contains(&key.as_str()),
            "[kubernetes] {key} is not a key the supervisor reads"
        );
    }
    // The node's name comes from NODE_NAME (the DaemonSet's downward API), not the file.
    assert_eq!(
        kubernetes
            .get("node_name")
            .and_then(|v| v.as_str())
            .unwrap_or(""),
        ""
    );
}

#[test]
fn the_supervisor_accepts_the_config_map_config() {
    let manifests = manifests();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("supervisor.toml");
    std::fs::write(&path, supervisor_toml(&manifests)).unwrap();
    let mut command = Command::new(binaries::supervisor());
    command
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .env("NODE_NAME", "node-a");
    let output = run_to_end(command, Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "check-config refused the ConfigMap's supervisor.toml:\n{stderr}\n{stdout}"
    );
    let effective: toml::Table = toml::from_str(&stdout)
        .unwrap_or_else(|e| panic!("check-config prints TOML ({e}):\n{stdout}"));
    assert_eq!(
        effective["kubernetes"]["enabled"].as_bool(),
        Some(true),
        "{stdout}"
    );
    assert_eq!(
        effective["kubernetes"]["driver"].as_str(),
        Some(DRIVER),
        "{stdout}"
    );
}
