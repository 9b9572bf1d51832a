//! The kubelet's DRA service (`k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin`) over [`Plugin`].
//!
//! Each claim of a call is handled at once beside the others; a claim that fails gets its
//! error in its own entry, as the kubelet expects, and is asked for again.

use std::sync::Arc;

use arbiter::pb::kubelet::dra::v1 as pb;
use pb::dra_plugin_server::{DraPlugin, DraPluginServer};
use tonic::{Request, Response, Status};

use super::Plugin;

pub fn server(plugin: Arc<Plugin>) -> DraPluginServer<Service> {
    DraPluginServer::new(Service { plugin })
}

pub struct Service {
    plugin: Arc<Plugin>,
}

#[tonic::async_trait]
impl DraPlugin for Service {
    async fn node_prepare_resources(
        &self,
        request: Request<pb::NodePrepareResourcesRequest>,
    ) -> Result<Response<pb::NodePrepareResourcesResponse>, Status> {
        let claims = request.into_inner().claims;
        let mut tasks = tokio::task::JoinSet::new();
        for claim in claims {
            let plugin = Arc::clone(&self.plugin);
            tasks.spawn(async move {
                let answer = if claim.uid.is_empty() || claim.name.is_empty() {
                    pb::NodePrepareResourceResponse {
                        devices: Vec::new(),
                        error: "the claim needs a uid, a namespace and a name".into(),
                    }
                } else {
                    match plugin.prepare(&claim.namespace, &claim.name, &claim.uid).await {
                        Ok(devices) => pb::NodePrepareResourceResponse {
                            devices: devices
                                .into_iter()
                                .map(|d| pb::Device {
                                    request_names: vec![d.request],
                                    pool_name: d.pool,
                                    device_name: d.device,
                                    cdi_device_ids: d.cdi_ids,
                                })
                                .collect(),
                            error: String::new(),
                        },
                        Err(error) => {
                            tracing::warn!(claim = %claim.uid, namespace = %claim.namespace, name = %claim.name, %error, "cannot prepare the claim");
                            pb::NodePrepareResourceResponse {
                                devices: Vec::new(),
                                error: arbiter::echo::cap_message(error.to_string()),
                            }
                        }
                    }
                };
                (claim.uid, answer)
            });
        }
        let mut response = pb::NodePrepareResourcesResponse::default();
        while let Some(joined) = tasks.join_next().await {
            let (uid, answer) = joined.map_err(|e| Status::internal(e.to_string()))?;
            response.claims.insert(uid, answer);
        }
        Ok(Response::new(response))
    }

    async fn node_unprepare_resources(
        &self,
        request: Request<pb::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<pb::NodeUnprepareResourcesResponse>, Status> {
        let claims = request.into_inner().claims;
        let mut tasks = tokio::task::JoinSet::new();
        for claim in claims {
            let plugin = Arc::clone(&self.plugin);
            tasks.spawn(async move {
                plugin.unprepare(&claim.uid).await;
                // Memory that did not come back stays out of the budget either way; the
                // pod is gone, so the kubelet must not be held up retrying.
                (claim.uid, pb::NodeUnprepareResourceResponse::default())
            });
        }
        let mut response = pb::NodeUnprepareResourcesResponse::default();
        while let Some(joined) = tasks.join_next().await {
            let (uid, answer) = joined.map_err(|e| Status::internal(e.to_string()))?;
            response.claims.insert(uid, answer);
        }
        Ok(Response::new(response))
    }
}
