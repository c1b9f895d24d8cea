//! `switchyard.v1.Fleet`: the status of the control service and its Envoys.

use super::*;

/// `switchyard.v1.Fleet`.
pub struct FleetService {
    control: Arc<Control>,
}

impl FleetService {
    pub fn new(control: Arc<Control>) -> Self {
        Self { control }
    }
}

/// Status of the fleet as the operator API reports it (with the series' latest
/// windows: reads the store).
pub fn status(control: &Control) -> v1::StatusResponse {
    let names: Vec<String> = control
        .current()
        .map(|c| c.record.stacks.iter().map(|s| s.name.clone()).collect())
        .unwrap_or_default();
    let status = control.fleet().with_series(control.fleet_status(), &names);
    proto::status_response(&status)
}

#[tonic::async_trait]
impl v1::fleet_server::Fleet for FleetService {
    async fn status(
        &self,
        _: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        let control = self.control.clone();
        tokio::task::spawn_blocking(move || status(&control))
            .await
            .map(Response::new)
            .map_err(|e| Status::internal(e.to_string()))
    }
}
