//! `pluginregistration.Registration`: tells the kubelet who we are and hears back
//! whether it accepted us.

use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::proto::pluginregistration::{
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse, registration_server::Registration,
};

/// The registration service.
#[derive(Debug, Clone)]
pub struct RegistrationService {
    info: PluginInfo,
    registered: watch::Sender<Option<bool>>,
}

impl RegistrationService {
    /// Advertises `info`; verdicts go to `registered`.
    pub fn new(info: PluginInfo, registered: watch::Sender<Option<bool>>) -> Self {
        RegistrationService { info, registered }
    }
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn get_info(&self, _: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(self.info.clone()))
    }

    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            tracing::info!(driver = self.info.name, "kubelet registered the plugin");
        } else {
            tracing::error!(driver = self.info.name, error = status.error, "kubelet rejected the plugin registration");
        }
        // When rejected, the agent shuts the servers down after this answer is sent.
        let _ = self.registered.send(Some(status.plugin_registered));
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}
