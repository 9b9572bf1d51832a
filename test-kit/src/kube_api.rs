//! A stand-in for the Kubernetes API server, for whole-system tests of the supervisor's
//! Kubernetes mode (its DRA driver).
//!
//! Why it exists: no control plane can be run on the machines these tests run on (there is
//! no kube-apiserver, kind or k3s to install), yet the driver's part of the protocol (read a
//! ResourceClaim, server-side apply the node's ResourceSlice, post Events) is what the tests
//! must see. So this speaks the REST subset the driver uses, over plain HTTP/1.1 on
//! 127.0.0.1, with a bearer token taken from the kubeconfig it writes, and records every
//! request and every write for the test to assert on. It is not the whole API (no watches,
//! no pagination, no admission, no field ownership beyond "who applied last"), and it is a
//! peer for tests, not part of the product.
//!
//! What it serves, for the resources it knows (ResourceSlices and ResourceClaims of
//! `resource.k8s.io/v1`, Events of the core group and of `events.k8s.io/v1`, Nodes):
//! - `GET` of an object, and of a collection (a list, with `labelSelector` and
//!   `fieldSelector` applied; a field selector names any dotted path, such as
//!   `spec.nodeName` or `spec.driver`);
//! - `POST` to a collection (create; 409 AlreadyExists if the name is taken; a
//!   `generateName` is honoured);
//! - `PUT` of an object (replace; 409 Conflict if the body's `metadata.resourceVersion` is
//!   not the stored one);
//! - `PATCH` of an object: `application/apply-patch+yaml` (server-side apply, JSON bodies
//!   as kube-rs sends them: creates or replaces the object wholesale; `fieldManager` is
//!   required, and applying over another manager's object without `force` is a 409), and
//!   `application/merge-patch+json` (RFC 7386);
//! - `DELETE` of an object (with the preconditions of its DeleteOptions).
//!
//! Everything stored gets `metadata.uid` (kept if given), `metadata.resourceVersion` (one
//! counter for the whole store, as a string) and `metadata.creationTimestamp`; answers are
//! the stored object, and failures are `Status` objects as the real server sends them.
//! Objects are keyed by their REST path (`/apis/resource.k8s.io/v1/resourceslices/x`).
//!
//! The server runs on its own thread (with its own Tokio runtime) for as long as the
//! [`KubeApi`] lives, so it serves sync tests and async ones alike, and the test's API is
//! sync. Dropped while the test is failing (or with `ARBITER_TEST_LOGS` set), it prints
//! every request it answered.

use std::collections::BTreeMap;
use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};

/// One write the stand-in accepted over HTTP (a create, replace, patch or delete).
#[derive(Clone, Debug)]
pub struct Write {
    /// `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: String,
    /// The object's REST path (for a `POST`, its collection's path and the new name).
    pub path: String,
    /// The request's query string, as sent (`fieldManager=...&force=true`).
    pub query: String,
    /// When the request arrived.
    pub at: Instant,
    /// The object as stored (for a `DELETE`, as it was when deleted).
    pub object: Value,
}

/// One request answered: its method, its path (without the query) and the status code.
pub type Answered = (String, String, u16);

/// The API server's stand-in, serving on 127.0.0.1 until dropped.
pub struct KubeApi {
    address: SocketAddr,
    token: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    token: String,
    store: Mutex<Store>,
}

#[derive(Default)]
struct Store {
    objects: BTreeMap<String, Entry>,
    revision: u64,
    writes: Vec<Write>,
    requests: Vec<Answered>,
}

struct Entry {
    object: Value,
    /// The revision it was created at: the order of creation.
    created: u64,
}

/// A resource the stand-in knows.
struct Resource {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    /// Its `status` is a subresource: a write to the object itself leaves it as it was.
    status_subresource: bool,
}

const RESOURCES: &[Resource] = &[
    Resource {
        group: "resource.k8s.io",
        version: "v1",
        plural: "resourceslices",
        kind: "ResourceSlice",
        namespaced: false,
        status_subresource: false,
    },
    Resource {
        group: "resource.k8s.io",
        version: "v1",
        plural: "resourceclaims",
        kind: "ResourceClaim",
        namespaced: true,
        status_subresource: true,
    },
    Resource {
        group: "",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        status_subresource: false,
    },
    Resource {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        kind: "Event",
        namespaced: true,
        status_subresource: false,
    },
    Resource {
        group: "",
        version: "v1",
        plural: "nodes",
        kind: "Node",
        namespaced: false,
        status_subresource: true,
    },
];

impl Resource {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn collection(&self, namespace: Option<&str>) -> String {
        let root = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        match namespace {
            Some(ns) => format!("{root}/namespaces/{ns}/{}", self.plural),
            None => format!("{root}/{}", self.plural),
        }
    }

    /// How the real server names it in messages: `resourceslices.resource.k8s.io`.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// What a request's path names: a resource's collection (in a namespace, or across all of
/// them), or one object of it.
struct Target {
    resource: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
}

impl Target {
    fn object_path(&self, name: &str) -> String {
        format!(
            "{}/{name}",
            self.resource.collection(self.namespace.as_deref())
        )
    }
}

fn route(path: &str) -> Option<Target> {
    let (group, version, rest) = if let Some(rest) = path.strip_prefix("/api/") {
        let (version, rest) = rest.split_once('/')?;
        ("", version, rest)
    } else {
        let rest = path.strip_prefix("/apis/")?;
        let (group, rest) = rest.split_once('/')?;
        let (version, rest) = rest.split_once('/')?;
        (group, version, rest)
    };
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return None;
    }
    let (namespace, plural, name) = match segments.as_slice() {
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        _ => return None,
    };
    let resource = RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)?;
    match (resource.namespaced, namespace, name) {
        (false, Some(_), _) | (true, None, Some(_)) => return None,
        _ => {}
    }
    Some(Target {
        resource,
        namespace: namespace.map(String::from),
        name: name.map(String::from),
    })
}

/// An HTTP answer: the status code and the JSON body.
struct Answer {
    code: StatusCode,
    body: Value,
}

type Outcome = Result<Answer, Answer>;

fn ok(code: StatusCode, body: Value) -> Outcome {
    Ok(Answer { code, body })
}

/// A `Status` failure, as the real server writes one.
fn failure(code: StatusCode, reason: &str, message: impl Into<String>) -> Answer {
    Answer {
        code,
        body: json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message.into(),
            "reason": reason,
            "code": code.as_u16(),
        }),
    }
}

/// A failure about one named object (with the `details` the real server adds).
fn about(resource: &Resource, name: &str, mut answer: Answer) -> Answer {
    answer.body["details"] = json!({
        "name": name,
        "group": resource.group,
        "kind": resource.plural,
    });
    answer
}

fn not_found(resource: &Resource, name: &str) -> Answer {
    about(
        resource,
        name,
        failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", resource.qualified()),
        ),
    )
}

fn bad_request(message: impl Into<String>) -> Answer {
    failure(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn conflict(resource: &Resource, name: &str, why: &str) -> Answer {
    about(
        resource,
        name,
        failure(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                resource.qualified()
            ),
        ),
    )
}

impl KubeApi {
    /// Binds 127.0.0.1:0 and serves there, on a thread of its own, until dropped.
    pub fn start() -> KubeApi {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let address = listener.local_addr().expect("the listener's address");
        let token = format!("arbiter-test-{:016x}{:016x}", random(), random());
        let shared = Arc::new(Shared {
            token: token.clone(),
            store: Mutex::new(Store::default()),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("kube-api".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || serve(listener, shared, stopped)
            })
            .expect("spawn the API stand-in's thread");
        KubeApi {
            address,
            token,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The bearer token every request must carry.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Writes a kubeconfig (JSON, which is YAML too) whose current context reaches this
    /// server with its token.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "arbiter-test", "cluster": {"server": self.url()}}],
            "users": [{"name": "arbiter-test", "user": {"token": self.token}}],
            "contexts": [{
                "name": "arbiter-test",
                "context": {"cluster": "arbiter-test", "user": "arbiter-test", "namespace": "default"},
            }],
            "current-context": "arbiter-test",
            "preferences": {},
        });
        let text = serde_json::to_string_pretty(&config).expect("a kubeconfig");
        std::fs::write(path, text)
            .unwrap_or_else(|e| panic!("write the kubeconfig {}: {e}", path.display()));
    }

    /// Stores `object` (of a kind the stand-in knows, placed by its apiVersion, kind and
    /// metadata), replacing what was at its path, as if some other client had written it;
    /// returns it as stored. Not one of [`writes`](KubeApi::writes).
    pub fn put(&self, object: Value) -> Value {
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        let resource = RESOURCES
            .iter()
            .find(|r| r.api_version() == api_version && r.kind == kind)
            .unwrap_or_else(|| panic!("the API stand-in does not know {api_version} {kind}"));
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("a {kind} to put needs metadata.name: {object}"));
        let namespace = object["metadata"]["namespace"].as_str();
        assert_eq!(
            resource.namespaced,
            namespace.is_some(),
            "a {kind} {} a namespace: {object}",
            if resource.namespaced {
                "needs"
            } else {
                "has no"
            }
        );
        let path = format!("{}/{name}", resource.collection(namespace));
        let mut store = self.store();
        let created = store.objects.get(&path).map(|e| e.created);
        let object = store.stamp(object, None);
        let created = created.unwrap_or(store.revision);
        store.objects.insert(
            path,
            Entry {
                object: object.clone(),
                created,
            },
        );
        object
    }

    /// Stores a ResourceClaim (`apiVersion` and `kind` are filled in if missing; its
    /// `metadata.uid` is kept if given); returns it as stored.
    pub fn put_claim(&self, mut claim: Value) -> Value {
        fill_type(&mut claim, "resource.k8s.io/v1", "ResourceClaim");
        self.put(claim)
    }

    /// Stores a Node named `name` (so a driver can read its UID); returns it as stored.
    pub fn put_node(&self, name: &str) -> Value {
        self.put(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}))
    }

    /// The object stored at `path`, if any.
    pub fn get(&self, path: &str) -> Option<Value> {
        self.store().objects.get(path).map(|e| e.object.clone())
    }

    /// Removes the object stored at `path` (not one of [`writes`](KubeApi::writes)).
    pub fn remove(&self, path: &str) -> Option<Value> {
        self.store().objects.remove(path).map(|e| e.object)
    }

    /// Every write accepted over HTTP, in order of arrival.
    pub fn writes(&self) -> Vec<Write> {
        self.store().writes.clone()
    }

    /// The ResourceSlices stored now, by name.
    pub fn slices(&self) -> Vec<Value> {
        self.of_plural("resourceslices")
    }

    /// Every version of the ResourceSlice `name` written over HTTP, in order, with when its
    /// request arrived (deletions are not versions: see [`writes`](KubeApi::writes)).
    pub fn slice_history(&self, name: &str) -> Vec<(Instant, Value)> {
        let path = format!("/apis/resource.k8s.io/v1/resourceslices/{name}");
        self.store()
            .writes
            .iter()
            .filter(|w| w.path == path && w.method != "DELETE")
            .map(|w| (w.at, w.object.clone()))
            .collect()
    }

    /// The Events stored now (core and `events.k8s.io`), in order of creation.
    pub fn events(&self) -> Vec<Value> {
        self.of_plural("events")
    }

    /// Every request answered, in order: method, path (without the query), status code.
    pub fn requests(&self) -> Vec<Answered> {
        self.store().requests.clone()
    }

    /// Polls `cond` every 20ms until it holds, for at most `limit`; panics with every
    /// request answered if it never does. It blocks the calling thread: in an async test,
    /// poll with [`eventually`](crate::waiting::eventually) instead.
    #[track_caller]
    pub fn wait_for(&self, mut cond: impl FnMut(&KubeApi) -> bool, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !cond(self) {
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {limit:?} waiting on the API stand-in; it answered:\n{}",
                    self.request_log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn of_plural(&self, plural: &str) -> Vec<Value> {
        let store = self.store();
        let mut found: Vec<&Entry> = store
            .objects
            .iter()
            .filter(|(path, _)| route(path).is_some_and(|t| t.resource.plural == plural))
            .map(|(_, entry)| entry)
            .collect();
        found.sort_by_key(|e| e.created);
        found.into_iter().map(|e| e.object.clone()).collect()
    }

    fn request_log(&self) -> String {
        self.requests()
            .iter()
            .map(|(method, path, code)| format!("  {code} {method} {path}\n"))
            .collect()
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.shared.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if std::thread::panicking() || std::env::var_os("ARBITER_TEST_LOGS").is_some() {
            eprintln!(
                "----- the API stand-in at {} answered -----\n{}----- end of requests -----",
                self.address,
                self.request_log()
            );
        }
    }
}

/// The server's thread: accepts until `stopped`, then drops its runtime (and with it every
/// open connection).
fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the API stand-in's runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("a Tokio listener");
        loop {
            let accepted = tokio::select! {
                _ = &mut stopped => break,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let shared = Arc::clone(&shared);
                    async move { Ok::<_, Infallible>(answer(&shared, request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

async fn answer(
    shared: &Shared,
    request: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let at = Instant::now();
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes());
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or_default().to_string();
    let authorized = parts
        .headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t.trim() == shared.token);
    let content_type = parts
        .headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut store = shared.store.lock().unwrap_or_else(|e| e.into_inner());
    let outcome = if !authorized {
        Err(failure(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized",
        ))
    } else {
        match body {
            Err(e) => Err(bad_request(format!("cannot read the request's body: {e}"))),
            Ok(body) => {
                let call = Call {
                    method: &parts.method,
                    path: &path,
                    query: &query,
                    content_type: &content_type,
                    body: &body,
                    at,
                };
                store.handle(&call)
            }
        }
    };
    let Answer { code, body } = outcome.unwrap_or_else(|failure| failure);
    store
        .requests
        .push((parts.method.to_string(), path, code.as_u16()));
    drop(store);
    hyper::Response::builder()
        .status(code)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(&body).expect("JSON"),
        )))
        .expect("a response")
}

/// One authorized request, its body read.
struct Call<'a> {
    method: &'a Method,
    path: &'a str,
    query: &'a str,
    content_type: &'a str,
    body: &'a [u8],
    at: Instant,
}

impl Call<'_> {
    fn param(&self, key: &str) -> Option<String> {
        query_params(self.query)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// The body as a JSON object.
    fn object(&self) -> Result<Value, Answer> {
        match serde_json::from_slice::<Value>(self.body) {
            Ok(value @ Value::Object(_)) => Ok(value),
            Ok(other) => Err(bad_request(format!("the body is not an object: {other}"))),
            Err(e) => Err(bad_request(format!(
                "the body is not JSON ({e}); this stand-in reads JSON bodies only"
            ))),
        }
    }
}

impl Store {
    fn handle(&mut self, call: &Call) -> Outcome {
        let target = route(call.path).ok_or_else(|| {
            failure(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!(
                    "the server could not find the requested resource ({} {})",
                    call.method, call.path
                ),
            )
        })?;
        let not_allowed = || {
            failure(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!(
                    "the server does not allow this method on the requested resource ({} {})",
                    call.method, call.path
                ),
            )
        };
        match (call.method, target.name.as_deref()) {
            (&Method::GET, Some(name)) => self.read(&target, name),
            (&Method::GET, None) => self.list(&target, call),
            (&Method::POST, None) if target.namespace.is_some() || !target.resource.namespaced => {
                self.create(&target, call)
            }
            (&Method::PUT, Some(name)) => self.replace(&target, name, call),
            (&Method::PATCH, Some(name)) => self.patch(&target, name, call),
            (&Method::DELETE, Some(name)) => self.delete(&target, name, call),
            _ => Err(not_allowed()),
        }
    }

    fn read(&self, target: &Target, name: &str) -> Outcome {
        match self.objects.get(&target.object_path(name)) {
            Some(entry) => ok(StatusCode::OK, entry.object.clone()),
            None => Err(not_found(target.resource, name)),
        }
    }

    fn list(&self, target: &Target, call: &Call) -> Outcome {
        if call
            .param("watch")
            .is_some_and(|w| w != "false" && w != "0")
        {
            return Err(bad_request("this stand-in does not serve watches"));
        }
        let labels = match call.param("labelSelector") {
            Some(s) => parse_label_selector(&s).map_err(bad_request)?,
            None => Vec::new(),
        };
        let fields = match call.param("fieldSelector") {
            Some(s) => parse_field_selector(&s).map_err(bad_request)?,
            None => Vec::new(),
        };
        let mut items: Vec<&Entry> = self
            .objects
            .iter()
            .filter(|(path, _)| {
                route(path).is_some_and(|t| {
                    std::ptr::eq(t.resource, target.resource)
                        && (target.namespace.is_none() || t.namespace == target.namespace)
                })
            })
            .map(|(_, entry)| entry)
            .filter(|e| labels.iter().all(|r| r.matches(&e.object)))
            .filter(|e| fields.iter().all(|r| r.matches(&e.object)))
            .collect();
        items.sort_by_key(|e| e.created);
        ok(
            StatusCode::OK,
            json!({
                "kind": format!("{}List", target.resource.kind),
                "apiVersion": target.resource.api_version(),
                "metadata": {"resourceVersion": self.revision.to_string()},
                "items": items.into_iter().map(|e| e.object.clone()).collect::<Vec<_>>(),
            }),
        )
    }

    fn create(&mut self, target: &Target, call: &Call) -> Outcome {
        let mut object = call.object()?;
        check_type(target.resource, &mut object)?;
        check_namespace(target, &mut object)?;
        let meta = &object["metadata"];
        if meta["resourceVersion"]
            .as_str()
            .is_some_and(|v| !v.is_empty())
        {
            return Err(bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name = match (meta["name"].as_str(), meta["generateName"].as_str()) {
            (Some(name), _) if !name.is_empty() => name.to_string(),
            (_, Some(prefix)) if !prefix.is_empty() => format!("{prefix}{}", suffix()),
            _ => {
                return Err(failure(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!(
                        "{} is invalid: metadata.name: Required value: name or generateName is required",
                        target.resource.kind
                    ),
                ));
            }
        };
        object["metadata"]["name"] = name.clone().into();
        let path = target.object_path(&name);
        if self.objects.contains_key(&path) {
            return Err(about(
                target.resource,
                &name,
                failure(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("{} \"{name}\" already exists", target.resource.qualified()),
                ),
            ));
        }
        let object = self.stamp(object, None);
        Ok(self.write(call, path, object, StatusCode::CREATED))
    }

    fn replace(&mut self, target: &Target, name: &str, call: &Call) -> Outcome {
        let path = target.object_path(name);
        let Some(old) = self.objects.get(&path).map(|e| e.object.clone()) else {
            return Err(not_found(target.resource, name));
        };
        let mut object = call.object()?;
        check_type(target.resource, &mut object)?;
        check_namespace(target, &mut object)?;
        check_name(&object, name)?;
        check_preconditions(target.resource, name, &object["metadata"], &old)?;
        let object = self.stamp(object, Some(&old));
        let object = keep_status(target.resource, object, &old);
        Ok(self.write(call, path, object, StatusCode::OK))
    }

    fn patch(&mut self, target: &Target, name: &str, call: &Call) -> Outcome {
        let path = target.object_path(name);
        let old = self.objects.get(&path).map(|e| e.object.clone());
        let media = call
            .content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim();
        match media {
            "application/apply-patch+yaml" => {
                let Some(manager) = call.param("fieldManager").filter(|m| !m.is_empty()) else {
                    return Err(bad_request(
                        "PATCH /apply requires fieldManager to be set (query fieldManager=...)",
                    ));
                };
                let force = call.param("force").is_some_and(|f| f == "true");
                let mut object = call.object()?;
                if object["apiVersion"].as_str().is_none() || object["kind"].as_str().is_none() {
                    return Err(bad_request(
                        "an apply patch must name its apiVersion and kind",
                    ));
                }
                check_type(target.resource, &mut object)?;
                check_namespace(target, &mut object)?;
                check_name(&object, name)?;
                let now = timestamp(SystemTime::now());
                if let Some(old) = &old {
                    check_preconditions(target.resource, name, &object["metadata"], old)?;
                    let others: Vec<&str> = old["metadata"]["managedFields"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|m| m["manager"].as_str())
                        .filter(|m| *m != manager)
                        .collect();
                    if !force && !others.is_empty() {
                        return Err(conflict(
                            target.resource,
                            name,
                            &format!(
                                "apply by {manager:?} conflicts with fields managed by {others:?} (apply with force to take them)"
                            ),
                        ));
                    }
                }
                object["metadata"]["managedFields"] = json!([{
                    "manager": manager,
                    "operation": "Apply",
                    "apiVersion": target.resource.api_version(),
                    "time": now,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": {},
                }]);
                let object = self.stamp(object, old.as_ref());
                match old {
                    Some(old) => {
                        let object = keep_status(target.resource, object, &old);
                        Ok(self.write(call, path, object, StatusCode::OK))
                    }
                    None => Ok(self.write(call, path, object, StatusCode::CREATED)),
                }
            }
            "application/merge-patch+json" => {
                let Some(old) = old else {
                    return Err(not_found(target.resource, name));
                };
                let patch = call.object()?;
                check_preconditions(target.resource, name, &patch["metadata"], &old)?;
                let mut object = old.clone();
                merge(&mut object, &patch);
                // What names the object stays as it was.
                for key in ["name", "namespace", "uid", "creationTimestamp"] {
                    match old["metadata"].get(key) {
                        Some(value) => object["metadata"][key] = value.clone(),
                        None => {
                            if let Some(meta) = object["metadata"].as_object_mut() {
                                meta.remove(key);
                            }
                        }
                    }
                }
                fill_type(
                    &mut object,
                    &target.resource.api_version(),
                    target.resource.kind,
                );
                let object = self.stamp(object, Some(&old));
                Ok(self.write(call, path, object, StatusCode::OK))
            }
            other => Err(failure(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format ({other:?}): this stand-in takes application/apply-patch+yaml and application/merge-patch+json"
                ),
            )),
        }
    }

    fn delete(&mut self, target: &Target, name: &str, call: &Call) -> Outcome {
        let path = target.object_path(name);
        let Some(old) = self.objects.get(&path).map(|e| e.object.clone()) else {
            return Err(not_found(target.resource, name));
        };
        if !call.body.is_empty() {
            let options = call.object()?;
            check_preconditions(target.resource, name, &options["preconditions"], &old)?;
        }
        self.objects.remove(&path);
        self.revision += 1;
        self.writes.push(Write {
            method: call.method.to_string(),
            path,
            query: call.query.to_string(),
            at: call.at,
            object: old.clone(),
        });
        ok(StatusCode::OK, old)
    }

    /// Gives `object` a new resourceVersion, and the uid and creationTimestamp of `old` (if
    /// it replaces one) or its own (new ones if it has none); it keeps `old`'s managers
    /// unless it names its own.
    fn stamp(&mut self, mut object: Value, old: Option<&Value>) -> Value {
        self.revision += 1;
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        let meta = &mut object["metadata"];
        for key in ["uid", "creationTimestamp"] {
            let kept = old.and_then(|o| o["metadata"].get(key)).cloned();
            if let Some(kept) = kept {
                meta[key] = kept;
            }
        }
        if meta.get("managedFields").is_none()
            && let Some(managers) = old.and_then(|o| o["metadata"].get("managedFields"))
        {
            meta["managedFields"] = managers.clone();
        }
        if meta["uid"].as_str().is_none_or(str::is_empty) {
            meta["uid"] = uid().into();
        }
        if meta["creationTimestamp"].as_str().is_none_or(str::is_empty) {
            meta["creationTimestamp"] = timestamp(SystemTime::now()).into();
        }
        meta["resourceVersion"] = self.revision.to_string().into();
        object
    }

    /// Stores `object` at `path` and records the write.
    fn write(&mut self, call: &Call, path: String, object: Value, code: StatusCode) -> Answer {
        let created = self.objects.get(&path).map_or(self.revision, |e| e.created);
        self.objects.insert(
            path.clone(),
            Entry {
                object: object.clone(),
                created,
            },
        );
        self.writes.push(Write {
            method: call.method.to_string(),
            path,
            query: call.query.to_string(),
            at: call.at,
            object: object.clone(),
        });
        Answer { code, body: object }
    }
}

/// Fills in `apiVersion` and `kind` where they are missing.
fn fill_type(object: &mut Value, api_version: &str, kind: &str) {
    if object["apiVersion"].as_str().is_none() {
        object["apiVersion"] = api_version.into();
    }
    if object["kind"].as_str().is_none() {
        object["kind"] = kind.into();
    }
}

/// The body is of the path's resource (filled in where it does not say).
fn check_type(resource: &Resource, object: &mut Value) -> Result<(), Answer> {
    let api_version = resource.api_version();
    let said = (object["apiVersion"].as_str(), object["kind"].as_str());
    if said.0 == Some("") || said.1 == Some("") {
        return Err(bad_request("empty apiVersion or kind"));
    }
    if said.0.is_some_and(|v| v != api_version) || said.1.is_some_and(|k| k != resource.kind) {
        return Err(bad_request(format!(
            "the object ({} {}) is not a {api_version} {}",
            said.0.unwrap_or("?"),
            said.1.unwrap_or("?"),
            resource.kind
        )));
    }
    fill_type(object, &api_version, resource.kind);
    Ok(())
}

/// The body's namespace is the path's (filled in where it does not say).
fn check_namespace(target: &Target, object: &mut Value) -> Result<(), Answer> {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    let said = object["metadata"]["namespace"]
        .as_str()
        .filter(|n| !n.is_empty());
    match (&target.namespace, said) {
        (Some(path), Some(said)) if path != said => Err(bad_request(format!(
            "the namespace of the provided object ({said}) does not match the namespace sent on the request ({path})"
        ))),
        (Some(path), _) => {
            object["metadata"]["namespace"] = path.clone().into();
            Ok(())
        }
        (None, Some(said)) => Err(bad_request(format!(
            "a {} has no namespace, but the object names {said}",
            target.resource.kind
        ))),
        (None, None) => Ok(()),
    }
}

fn check_name(object: &Value, name: &str) -> Result<(), Answer> {
    match object["metadata"]["name"].as_str() {
        Some(said) if said == name => Ok(()),
        said => Err(bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            said.unwrap_or("")
        ))),
    }
}

/// A resourceVersion or uid the request names must be the stored object's.
fn check_preconditions(
    resource: &Resource,
    name: &str,
    said: &Value,
    old: &Value,
) -> Result<(), Answer> {
    if let Some(version) = said["resourceVersion"].as_str().filter(|v| !v.is_empty())
        && Some(version) != old["metadata"]["resourceVersion"].as_str()
    {
        return Err(conflict(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ));
    }
    if let Some(uid) = said["uid"].as_str().filter(|u| !u.is_empty())
        && Some(uid) != old["metadata"]["uid"].as_str()
    {
        return Err(conflict(
            resource,
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                old["metadata"]["uid"].as_str().unwrap_or("")
            ),
        ));
    }
    Ok(())
}

/// A write to an object whose status is a subresource leaves its status as it was.
fn keep_status(resource: &Resource, mut object: Value, old: &Value) -> Value {
    if resource.status_subresource
        && let Some(map) = object.as_object_mut()
    {
        match old.get("status") {
            Some(status) => {
                map.insert("status".into(), status.clone());
            }
            None => {
                map.remove("status");
            }
        }
    }
    object
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let map = target.as_object_mut().expect("an object");
    for (key, value) in patch {
        if value.is_null() {
            map.remove(key);
        } else {
            merge(map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// One requirement of a label selector.
#[derive(Debug, PartialEq)]
enum Label {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    Absent(String),
}

impl Label {
    fn matches(&self, object: &Value) -> bool {
        let label = |key: &str| object["metadata"]["labels"][key].as_str().map(String::from);
        match self {
            Label::Equals(k, v) => label(k).as_ref() == Some(v),
            Label::NotEquals(k, v) => label(k).as_ref() != Some(v),
            Label::In(k, vs) => label(k).is_some_and(|l| vs.contains(&l)),
            Label::NotIn(k, vs) => !label(k).is_some_and(|l| vs.contains(&l)),
            Label::Exists(k) => label(k).is_some(),
            Label::Absent(k) => label(k).is_none(),
        }
    }
}

fn parse_label_selector(selector: &str) -> Result<Vec<Label>, String> {
    // Split on the commas outside parentheses.
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&selector[start..]);
    let mut labels = Vec::new();
    for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        let set = |rest: &str| -> Result<Vec<String>, String> {
            let inner = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| {
                    format!("unable to parse requirement {part:?}: expected (values)")
                })?;
            Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
        };
        let label = if let Some(key) = part.strip_prefix('!') {
            Label::Absent(key.trim().into())
        } else if let Some((key, value)) = part.split_once("!=") {
            Label::NotEquals(key.trim().into(), value.trim().into())
        } else if let Some((key, value)) = part.split_once("==") {
            Label::Equals(key.trim().into(), value.trim().into())
        } else if let Some((key, value)) = part.split_once('=') {
            Label::Equals(key.trim().into(), value.trim().into())
        } else if let Some((key, rest)) = part.split_once(" notin ") {
            Label::NotIn(key.trim().into(), set(rest)?)
        } else if let Some((key, rest)) = part.split_once(" in ") {
            Label::In(key.trim().into(), set(rest)?)
        } else if part.contains(|c: char| c.is_whitespace() || "()<>".contains(c)) {
            return Err(format!("unable to parse requirement {part:?}"));
        } else {
            Label::Exists(part.into())
        };
        labels.push(label);
    }
    Ok(labels)
}

/// One requirement of a field selector: a dotted path into the object (`spec.nodeName`),
/// equal or not to a value (a missing field reads as "").
#[derive(Debug, PartialEq)]
struct Field {
    path: String,
    value: String,
    equal: bool,
}

impl Field {
    fn matches(&self, object: &Value) -> bool {
        let mut at = object;
        for key in self.path.split('.') {
            at = &at[key];
        }
        let found = match at {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        (found == self.value) == self.equal
    }
}

fn parse_field_selector(selector: &str) -> Result<Vec<Field>, String> {
    let mut fields = Vec::new();
    for part in selector.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (path, value, equal) = if let Some((p, v)) = part.split_once("!=") {
            (p, v, false)
        } else if let Some((p, v)) = part.split_once("==") {
            (p, v, true)
        } else if let Some((p, v)) = part.split_once('=') {
            (p, v, true)
        } else {
            return Err(format!(
                "invalid field selector {part:?}: expected field=value"
            ));
        };
        fields.push(Field {
            path: path.trim().into(),
            value: value.trim().into(),
            equal,
        });
    }
    Ok(fields)
}

/// A query string's pairs, percent-decoded (`+` is a space, as kube-rs encodes them).
fn query_params(query: &str) -> Vec<(String, String)> {
    fn decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                    match u8::from_str_radix(hex, 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(pair), String::new()),
        })
        .collect()
}

/// RFC 3339 in UTC to the second, as the API server writes metadata times.
fn timestamp(at: SystemTime) -> String {
    let seconds = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let (days, rest) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (proleptic Gregorian, 400-year eras).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// 64 random bits (from the standard library's randomly keyed hasher).
fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.finish()
}

/// A version-4-shaped UUID.
fn uid() -> String {
    let (a, b) = (random(), random());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// The five characters a `generateName` gets, from the API server's alphabet.
fn suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut bits = random();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(bits % ALPHABET.len() as u64) as usize] as char;
            bits /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference};
    use k8s_openapi::api::events::v1::Event as EventsEvent;
    use k8s_openapi::api::resource::v1::{
        Device, DeviceCapacity, ResourceClaim, ResourcePool, ResourceSlice, ResourceSliceSpec,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};

    const SLICE: &str = "node-a-gpu.arbiter.dev";

    async fn client(api: &KubeApi) -> kube::Client {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        api.write_kubeconfig(&path);
        client_from(&path).await
    }

    async fn client_from(path: &Path) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("a readable kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("a config from the kubeconfig");
        kube::Client::try_from(config).expect("a client")
    }

    fn slice(memory: &str) -> ResourceSlice {
        ResourceSlice {
            metadata: ObjectMeta {
                name: Some(SLICE.into()),
                labels: Some([("app".to_string(), "arbiter".to_string())].into()),
                ..ObjectMeta::default()
            },
            spec: ResourceSliceSpec {
                driver: "gpu.arbiter.dev".into(),
                node_name: Some("node-a".into()),
                pool: ResourcePool {
                    name: "node-a".into(),
                    generation: 1,
                    resource_slice_count: 1,
                },
                devices: Some(vec![Device {
                    name: "gpu-0".into(),
                    capacity: Some(
                        [(
                            "memory".to_string(),
                            DeviceCapacity {
                                value: Quantity(memory.into()),
                                request_policy: None,
                            },
                        )]
                        .into(),
                    ),
                    allow_multiple_allocations: Some(true),
                    ..Device::default()
                }]),
                ..ResourceSliceSpec::default()
            },
        }
    }

    fn code(error: kube::Error) -> (u16, String) {
        match error {
            kube::Error::Api(status) => (status.code, status.reason.clone()),
            other => panic!("expected an API error, got {other:?}"),
        }
    }

    fn memory(slice: &ResourceSlice) -> String {
        slice.spec.devices.as_ref().unwrap()[0]
            .capacity
            .as_ref()
            .unwrap()["memory"]
            .value
            .0
            .clone()
    }

    #[tokio::test]
    async fn kube_api_serves_kube_rs_applies_lists_gets_and_deletes_of_a_slice() {
        let api = KubeApi::start();
        let slices = Api::<ResourceSlice>::all(client(&api).await);
        let apply = PatchParams::apply("arbiter").force();

        let created = slices
            .patch(SLICE, &apply, &Patch::Apply(&slice("16Gi")))
            .await
            .expect("the first apply creates");
        let first_version = created.metadata.resource_version.clone().unwrap();
        let uid = created.metadata.uid.clone().expect("a uid");
        assert!(created.metadata.creation_timestamp.is_some());
        let replaced = slices
            .patch(SLICE, &apply, &Patch::Apply(&slice("15Gi")))
            .await
            .expect("the second apply replaces");
        assert_eq!(memory(&replaced), "15Gi");
        assert_eq!(replaced.metadata.uid.as_deref(), Some(uid.as_str()));
        assert_eq!(
            replaced.metadata.creation_timestamp,
            created.metadata.creation_timestamp
        );
        let second_version = replaced.metadata.resource_version.clone().unwrap();
        assert!(
            second_version.parse::<u64>().unwrap() > first_version.parse::<u64>().unwrap(),
            "{first_version} then {second_version}"
        );

        let history = api.slice_history(SLICE);
        assert_eq!(history.len(), 2);
        assert!(history[0].0 <= history[1].0);
        assert_eq!(
            history[1].1["spec"]["devices"][0]["capacity"]["memory"]["value"],
            "15Gi"
        );
        let writes = api.writes();
        assert!(writes.iter().all(|w| w.method == "PATCH"));
        assert!(
            writes[0].query.contains("fieldManager=arbiter"),
            "{}",
            writes[0].query
        );
        assert_eq!(api.slices().len(), 1);

        // Lists, with field and label selectors.
        let on = |fields: &str| ListParams::default().fields(fields);
        let listed = slices
            .list(&on("spec.nodeName=node-a,spec.driver=gpu.arbiter.dev"))
            .await
            .unwrap();
        assert_eq!(listed.items.len(), 1);
        assert_eq!(listed.items[0].metadata.name.as_deref(), Some(SLICE));
        assert_eq!(
            listed.metadata.resource_version.as_deref(),
            Some(second_version.as_str())
        );
        assert!(
            slices
                .list(&on("spec.nodeName=node-b"))
                .await
                .unwrap()
                .items
                .is_empty()
        );
        assert!(
            slices
                .list(&on("spec.driver!=gpu.arbiter.dev"))
                .await
                .unwrap()
                .items
                .is_empty()
        );
        let labelled = |labels: &str| ListParams::default().labels(labels);
        assert_eq!(
            slices
                .list(&labelled("app=arbiter"))
                .await
                .unwrap()
                .items
                .len(),
            1
        );
        assert_eq!(
            slices
                .list(&labelled("app in (x,arbiter)"))
                .await
                .unwrap()
                .items
                .len(),
            1
        );
        assert!(
            slices
                .list(&labelled("app,!app"))
                .await
                .unwrap()
                .items
                .is_empty()
        );

        // Get, replace with a stale version, create over it, a merge patch.
        let got = slices.get(SLICE).await.expect("get");
        assert_eq!(memory(&got), "15Gi");
        let mut stale = got.clone();
        stale.metadata.resource_version = Some(first_version.clone());
        let refused = slices.replace(SLICE, &PostParams::default(), &stale).await;
        assert_eq!(code(refused.unwrap_err()), (409, "Conflict".into()));
        let mut fresh = slice("14Gi");
        fresh.metadata.resource_version = got.metadata.resource_version.clone();
        let put = slices
            .replace(SLICE, &PostParams::default(), &fresh)
            .await
            .expect("replace");
        assert_eq!(memory(&put), "14Gi");
        let taken = slices.create(&PostParams::default(), &slice("1Gi")).await;
        assert_eq!(code(taken.unwrap_err()), (409, "AlreadyExists".into()));
        let patched = slices
            .patch(
                SLICE,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"app": null, "tier": "gpu"}}})),
            )
            .await
            .expect("merge patch");
        let labels = patched.metadata.labels.clone().unwrap();
        assert_eq!(labels.get("tier").map(String::as_str), Some("gpu"));
        assert!(!labels.contains_key("app"));
        assert_eq!(memory(&patched), "14Gi");
        // Another manager's apply without force conflicts.
        let other = slices
            .patch(
                SLICE,
                &PatchParams::apply("someone-else"),
                &Patch::Apply(&slice("2Gi")),
            )
            .await;
        assert_eq!(code(other.unwrap_err()).0, 409);

        // Delete.
        slices
            .delete(SLICE, &DeleteParams::default())
            .await
            .expect("delete");
        assert_eq!(
            code(slices.get(SLICE).await.unwrap_err()),
            (404, "NotFound".into())
        );
        assert!(api.slices().is_empty());
        assert_eq!(api.writes().last().unwrap().method, "DELETE");
        assert_eq!(
            api.slice_history(SLICE).len(),
            4,
            "deletions are not versions"
        );
        let deleted = slices.delete(SLICE, &DeleteParams::default()).await;
        assert_eq!(code(deleted.unwrap_err()).0, 404);
    }

    #[tokio::test]
    async fn kube_api_hands_out_put_claims_typed_and_404s_for_missing_ones() {
        let api = KubeApi::start();
        let claims = Api::<ResourceClaim>::namespaced(client(&api).await, "media");
        let stored = api.put_claim(json!({
            "metadata": {"name": "video", "namespace": "media", "uid": "claim-uid-1"},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.arbiter.dev"}}]}},
            "status": {
                "allocation": {"devices": {"results": [{
                    "request": "gpu", "driver": "gpu.arbiter.dev", "pool": "node-a", "device": "gpu-0",
                    "consumedCapacity": {"memory": "4Gi"},
                }]}},
                "reservedFor": [{"resource": "pods", "name": "video-0", "uid": "pod-uid-1"}],
            },
        }));
        assert_eq!(stored["kind"], "ResourceClaim");
        let claim = claims.get("video").await.expect("the claim");
        assert_eq!(claim.metadata.uid.as_deref(), Some("claim-uid-1"));
        assert!(claim.metadata.resource_version.is_some());
        let status = claim.status.expect("its status");
        let result = &status.allocation.unwrap().devices.unwrap().results.unwrap()[0];
        assert_eq!(result.device, "gpu-0");
        assert_eq!(
            result.consumed_capacity.as_ref().unwrap()["memory"].0,
            "4Gi"
        );
        assert_eq!(status.reserved_for.unwrap()[0].uid, "pod-uid-1");

        match claims.get("missing").await.unwrap_err() {
            kube::Error::Api(status) => {
                assert_eq!(status.code, 404);
                assert_eq!(status.reason, "NotFound");
                assert!(
                    status.message.contains("\"missing\" not found"),
                    "{}",
                    status.message
                );
            }
            other => panic!("expected a 404, got {other:?}"),
        }
        // In another namespace it is not there.
        let elsewhere = Api::<ResourceClaim>::namespaced(client(&api).await, "other");
        assert_eq!(code(elsewhere.get("video").await.unwrap_err()).0, 404);
        assert_eq!(
            api.requests().last().unwrap(),
            &(
                "GET".to_string(),
                "/apis/resource.k8s.io/v1/namespaces/other/resourceclaims/video".to_string(),
                404
            )
        );
    }

    #[tokio::test]
    async fn kube_api_refuses_a_wrong_token_and_unknown_paths() {
        let api = KubeApi::start();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        api.write_kubeconfig(&path);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace(api.token(), "not-the-token")).unwrap();
        let claims = Api::<ResourceClaim>::namespaced(client_from(&path).await, "media");
        assert_eq!(
            code(claims.get("video").await.unwrap_err()),
            (401, "Unauthorized".into())
        );
        assert_eq!(api.requests().last().unwrap().2, 401);

        let bearer = format!("Authorization: Bearer {}\r\n", api.token());
        let (status, body) =
            crate::metrics::get_with(api.address(), "/apis/apps/v1/deployments", &bearer)
                .await
                .unwrap();
        assert_eq!(status, 404);
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (
                &body["kind"],
                &body["apiVersion"],
                &body["status"],
                &body["reason"],
                &body["code"]
            ),
            (
                &json!("Status"),
                &json!("v1"),
                &json!("Failure"),
                &json!("NotFound"),
                &json!(404)
            )
        );
        let (status, _) =
            crate::metrics::get(api.address(), "/apis/resource.k8s.io/v1/resourceslices")
                .await
                .unwrap();
        assert_eq!(status, 401, "no token");

        // An apply without a field manager, and a patch of a type it does not take.
        let client = client(&api).await;
        let patch = |content_type: &str, query: &str| {
            hyper::Request::patch(format!(
                "/apis/resource.k8s.io/v1/resourceslices/{SLICE}{query}"
            ))
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(serde_json::to_vec(&slice("1Gi")).unwrap())
            .unwrap()
        };
        let unmanaged = client
            .request_text(patch("application/apply-patch+yaml", ""))
            .await;
        assert_eq!(code(unmanaged.unwrap_err()), (400, "BadRequest".into()));
        let strategic = client
            .request_text(patch(
                "application/strategic-merge-patch+json",
                "?fieldManager=x",
            ))
            .await;
        assert_eq!(code(strategic.unwrap_err()).0, 415);
        assert!(api.slices().is_empty() && api.writes().is_empty());
    }

    #[tokio::test]
    async fn kube_api_stores_events_of_both_groups() {
        let api = KubeApi::start();
        let client = client(&api).await;
        let core = CoreEvent {
            metadata: ObjectMeta {
                name: Some("video.1".into()),
                namespace: Some("media".into()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                kind: Some("ResourceClaim".into()),
                name: Some("video".into()),
                uid: Some("claim-uid-1".into()),
                ..ObjectReference::default()
            },
            reason: Some("MemoryNotReturned".into()),
            type_: Some("Warning".into()),
            ..CoreEvent::default()
        };
        let created = Api::<CoreEvent>::namespaced(client.clone(), "media")
            .create(&PostParams::default(), &core)
            .await
            .expect("create a core event");
        assert!(created.metadata.uid.is_some());
        let wrong = Api::<CoreEvent>::namespaced(client.clone(), "elsewhere")
            .create(&PostParams::default(), &core)
            .await;
        assert_eq!(
            code(wrong.unwrap_err()).0,
            400,
            "a namespace that is not the path's"
        );
        let modern = EventsEvent {
            metadata: ObjectMeta {
                generate_name: Some("video.".into()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            reason: Some("Prepared".into()),
            type_: Some("Normal".into()),
            ..EventsEvent::default()
        };
        let created = Api::<EventsEvent>::namespaced(client.clone(), "media")
            .create(&PostParams::default(), &modern)
            .await
            .expect("create an events.k8s.io event");
        let name = created.metadata.name.unwrap();
        assert!(
            name.starts_with("video.") && name.len() == "video.".len() + 5,
            "{name}"
        );
        assert_eq!(created.metadata.namespace.as_deref(), Some("media"));

        let events = api.events();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["reason"], "MemoryNotReturned");
        assert_eq!(events[0]["involvedObject"]["uid"], "claim-uid-1");
        assert_eq!(events[0]["metadata"]["namespace"], "media");
        assert_eq!(events[1]["apiVersion"], "events.k8s.io/v1");
        assert_eq!(
            api.writes()
                .iter()
                .map(|w| w.path.as_str())
                .collect::<Vec<_>>(),
            [
                "/api/v1/namespaces/media/events/video.1",
                &*format!("/apis/events.k8s.io/v1/namespaces/media/events/{name}")
            ]
        );
    }

    #[test]
    fn kube_api_waits_and_writes_times_as_the_api_server_does() {
        let api = KubeApi::start();
        let node = api.put_node("node-a");
        assert_eq!(
            api.get("/api/v1/nodes/node-a").unwrap()["metadata"]["uid"],
            node["metadata"]["uid"]
        );
        api.wait_for(
            |api| api.get("/api/v1/nodes/node-a").is_some(),
            Duration::from_secs(1),
        );
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            api.wait_for(|api| !api.slices().is_empty(), Duration::from_millis(100))
        }));
        assert!(waited.is_err());

        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_secs(951_827_696)),
            "2000-02-29T12:34:56Z"
        );
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_secs(4_102_444_799)),
            "2099-12-31T23:59:59Z"
        );
        let uid = uid();
        assert_eq!(uid.len(), 36, "{uid}");
        assert_ne!(uid, super::uid());
        assert_eq!(
            parse_label_selector("a=b, c!=d,e in (f, g),h notin (i),j,!k").unwrap(),
            [
                Label::Equals("a".into(), "b".into()),
                Label::NotEquals("c".into(), "d".into()),
                Label::In("e".into(), vec!["f".into(), "g".into()]),
                Label::NotIn("h".into(), vec!["i".into()]),
                Label::Exists("j".into()),
                Label::Absent("k".into()),
            ]
        );
        assert_eq!(
            query_params("fieldSelector=spec.nodeName%3Dnode-a&labelSelector=a+in+%28b%29&x"),
            [
                (
                    "fieldSelector".to_string(),
                    "spec.nodeName=node-a".to_string()
                ),
                ("labelSelector".to_string(), "a in (b)".to_string()),
                ("x".to_string(), String::new()),
            ]
        );
    }
}
