//! The kubelet's plugin watcher protocol: who we are and where our DRA service listens.

use std::path::Path;

use arbiter::pb::kubelet::pluginregistration as pb;
use pb::registration_server::{Registration, RegistrationServer};
use tonic::{Request, Response, Status};

/// The plugin type the kubelet routes to its DRA manager.
pub const TYPE: &str = "DRAPlugin";
/// The DRA service this plugin serves (Kubernetes >= 1.34).
pub const SERVICE: &str = "v1.DRAPlugin";

pub fn server(driver: &str, endpoint: &Path) -> RegistrationServer<Service> {
    RegistrationServer::new(Service {
        info: pb::PluginInfo {
            r#type: TYPE.into(),
            name: driver.into(),
            endpoint: endpoint.display().to_string(),
            supported_versions: vec![SERVICE.into()],
        },
    })
}

pub struct Service {
    info: pb::PluginInfo,
}

#[tonic::async_trait]
impl Registration for Service {
    async fn get_info(
        &self,
        _request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::PluginInfo>, Status> {
        Ok(Response::new(self.info.clone()))
    }

    async fn notify_registration_status(
        &self,
        request: Request<pb::RegistrationStatus>,
    ) -> Result<Response<pb::RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            tracing::info!(driver = %self.info.name, "the kubelet registered the DRA plugin");
        } else {
            tracing::error!(driver = %self.info.name, error = %status.error, "the kubelet refused the DRA plugin");
        }
        Ok(Response::new(pb::RegistrationStatusResponse {}))
    }
}
