//! `coordinator stop`: shut the control plane down and wait until it is gone (agents keep
//! their containers running and reconnect later). `destroy` waits the same way.

use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_proto::v1;

use super::{CliError, Global};
use crate::admin_client::ConnectError;
use crate::control_plane::settings::StatePaths;
use crate::poll::{Attempt, poll_until};

pub async fn run(g: &Global) -> Result<(), CliError> {
    let mut admin = match g.admin().await {
        Ok(c) => c,
        Err(CliError::Connect(ConnectError::NotRunning { .. })) => {
            println!("no control plane is running for cluster '{}'", g.cluster());
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    admin.shutdown(v1::ShutdownRequest {}).await?;
    wait_gone(&StatePaths::new(&g.state_dir()).admin_socket()).await;
    println!("control plane of cluster '{}' stopped", g.cluster());
    Ok(())
}

/// Waits (bounded: in-flight RPCs get 5 s, lingering sessions 5 s more) until the control
/// plane removed its socket, which it does last, after closing the store. Past the bound the
/// command goes on as if it were gone.
pub(super) async fn wait_gone(socket: &Path) {
    let _ = poll_until(
        "the control plane to remove its admin socket",
        Instant::now() + Duration::from_secs(15),
        Duration::from_millis(25),
        || async {
            Ok::<_, std::convert::Infallible>(if socket.exists() {
                Attempt::NotYet(format!("{} is still there", socket.display()))
            } else {
                Attempt::Done(())
            })
        },
    )
    .await;
}
