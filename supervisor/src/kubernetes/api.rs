//! The API server, as the driver uses it: read claims, apply the node's ResourceSlice, and
//! post events on claims.

use k8s_openapi::api::core::v1::{Event, EventSource, Node, ObjectReference};
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Patch, PatchParams, PostParams};

use super::KubernetesError;
use super::claim::Allocation;
use crate::config::KubernetesConfig;

#[derive(Clone)]
pub struct Api {
    client: kube::Client,
    /// The field manager of our server-side applies: the driver's name.
    manager: String,
    node: String,
}

impl Api {
    /// A client from the configured kubeconfig, or the pod's service account.
    pub async fn connect(settings: &KubernetesConfig, node: &str) -> Result<Api, KubernetesError> {
        let config = match &settings.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                    KubernetesError::Kubeconfig(format!("{}: {e}", path.display()))
                })?;
                kube::Config::from_custom_kubeconfig(
                    kubeconfig,
                    &kube::config::KubeConfigOptions::default(),
                )
                .await
                .map_err(|e| KubernetesError::Kubeconfig(format!("{}: {e}", path.display())))?
            }
            None => kube::Config::incluster().map_err(|e| {
                KubernetesError::Kubeconfig(format!(
                    "not in a pod ({e}): set kubernetes.kubeconfig to reach the API server from outside a cluster"
                ))
            })?,
        };
        let client = kube::Client::try_from(config)
            .map_err(|e| KubernetesError::Kubeconfig(e.to_string()))?;
        Ok(Api::new(client, &settings.driver, node))
    }

    pub fn new(client: kube::Client, driver: &str, node: &str) -> Api {
        Api {
            client,
            manager: driver.to_string(),
            node: node.to_string(),
        }
    }

    pub async fn claim(&self, namespace: &str, name: &str) -> Result<ResourceClaim, kube::Error> {
        kube::Api::<ResourceClaim>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await
    }

    /// Creates or replaces the slice (server-side apply, forced: the driver owns it).
    pub async fn apply_slice(&self, slice: &ResourceSlice) -> Result<(), kube::Error> {
        let name = slice.metadata.name.clone().unwrap_or_default();
        kube::Api::<ResourceSlice>::all(self.client.clone())
            .patch(
                &name,
                &PatchParams::apply(&self.manager).force(),
                &Patch::Apply(slice),
            )
            .await
            .map(|_| ())
    }

    /// The node's UID, for the slice's owner reference (so the slice goes with the node);
    /// None when the API server will not say.
    pub async fn node_uid(&self) -> Option<String> {
        match kube::Api::<Node>::all(self.client.clone())
            .get(&self.node)
            .await
        {
            Ok(node) => node.metadata.uid,
            Err(error) => {
                tracing::warn!(node = %self.node, %error, "cannot read this node: its ResourceSlice gets no owner reference");
                None
            }
        }
    }

    /// A Warning event on the claim (best effort: an event that cannot be posted is logged).
    pub async fn warn(&self, claim: &Allocation, reason: &str, message: &str) {
        let now = k8s_openapi::jiff::Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{}", claim.name, uuid::Uuid::new_v4().simple())),
                namespace: Some(claim.namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("resource.k8s.io/v1".into()),
                kind: Some("ResourceClaim".into()),
                name: Some(claim.name.clone()),
                namespace: Some(claim.namespace.clone()),
                uid: Some(claim.uid.clone()),
                ..ObjectReference::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some("Warning".into()),
            source: Some(EventSource {
                component: Some(self.manager.clone()),
                host: Some(self.node.clone()),
            }),
            reporting_component: Some(self.manager.clone()),
            reporting_instance: Some(self.node.clone()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            action: Some("Unprepare".into()),
            count: Some(1),
            ..Event::default()
        };
        if let Err(error) = kube::Api::<Event>::namespaced(self.client.clone(), &claim.namespace)
            .create(&PostParams::default(), &event)
            .await
        {
            tracing::warn!(claim = %claim.uid, %error, "cannot post an event on the claim");
        }
    }
}
