//! `coordinator stop`: shut the control plane down and wait until it is gone (agents keep
//! their containers running and reconnect later). `destroy` waits the same way.

use flotilla_proto::v1;

use super::{CliError, Global};
use crate::admin_client::{ConnectError, wait_gone};
use crate::control_plane::settings::StatePaths;

pub async fn run(g: &Global) -> Result<(), CliError> {
    let mut admin = match g.admin().await {
        Ok(c) => c,
        Err(CliError::Connect(ConnectError::NotRunning { .. })) => {
            outln!("no control plane is running for cluster '{}'", g.cluster());
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    admin.shutdown(v1::ShutdownRequest {}).await?;
    wait_gone(&StatePaths::new(&g.state_dir()).admin_socket()).await;
    outln!("control plane of cluster '{}' stopped", g.cluster());
    Ok(())
}
