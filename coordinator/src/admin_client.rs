//! How the CLI reaches a cluster's control plane: its admin unix socket on this machine, or a
//! remote control plane's agent port with an operator certificate bundle.

use std::path::{Path, PathBuf};

use flotilla_proto::tls;
use flotilla_proto::v1::admin_client::AdminClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

/// The largest admin answer the CLI decodes: an audit read of its most events (10,000, each
/// under 1 KiB once its fields are cut) fits; tonic's default of 4 MiB would not.
pub const MAX_ADMIN_MESSAGE: usize = 16 * 1024 * 1024;

/// Errors reaching a control plane from the CLI.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "no control plane is running for cluster '{cluster}' (no admin socket at {socket}); start one with `coordinator serve --cluster {cluster}` (or `coordinator deploy`)"
    )]
    NotRunning { cluster: String, socket: PathBuf },
    #[error("cannot reach the control plane at {socket}: {source}")]
    Socket { socket: PathBuf, source: std::io::Error },
    #[error("remote admin: {0}")]
    Remote(String),
}

/// Dials the admin socket of a running control plane.
pub async fn connect_local(cluster: &str, socket: &Path) -> Result<AdminClient<Channel>, ConnectError> {
    if !socket.exists() {
        return Err(ConnectError::NotRunning { cluster: cluster.to_string(), socket: socket.to_path_buf() });
    }
    // Fail now, with the socket's own error, rather than on the first call.
    match tokio::net::UnixStream::connect(socket).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused || e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ConnectError::NotRunning { cluster: cluster.to_string(), socket: socket.to_path_buf() });
        }
        Err(source) => {
            return Err(ConnectError::Socket { socket: socket.to_path_buf(), source });
        }
    }
    let path = socket.to_path_buf();
    let channel = Endpoint::from_static("http://admin.local")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| ConnectError::Socket { socket: socket.to_path_buf(), source: std::io::Error::other(e) })?;
    Ok(AdminClient::new(channel).max_decoding_message_size(MAX_ADMIN_MESSAGE))
}

/// Dials a remote control plane's agent port with an operator certificate bundle (a
/// directory holding `ca.pem`, `cert.pem`, `key.pem`, `endpoint`).
pub fn connect_remote(bundle: &Path) -> Result<AdminClient<Channel>, ConnectError> {
    let read = |f: &str| {
        std::fs::read_to_string(bundle.join(f))
            .map_err(|e| ConnectError::Remote(format!("{}: {e}", bundle.join(f).display())))
    };
    let ca = tls::certs_from_pem("ca.pem", &read("ca.pem")?).map_err(|e| ConnectError::Remote(e.to_string()))?;
    let id = tls::Identity::from_pem("operator certificate", &read("cert.pem")?, &read("key.pem")?)
        .map_err(|e| ConnectError::Remote(e.to_string()))?;
    let endpoint = read("endpoint")?.trim().to_string();
    let config = tls::client_config(&ca, Some(&id)).map_err(|e| ConnectError::Remote(e.to_string()))?;
    let channel = tls::channel(&endpoint, config).map_err(|e| ConnectError::Remote(e.to_string()))?;
    Ok(AdminClient::new(channel).max_decoding_message_size(MAX_ADMIN_MESSAGE))
}

/// Waits (bounded: in-flight RPCs get 5 s, lingering sessions 5 s more) until a control
/// plane that was told to shut down removed its socket, which it does last, after closing the
/// store. Past the bound the caller goes on as if it were gone (`stop`, `destroy`).
pub async fn wait_gone(socket: &Path) {
    use crate::poll::{Attempt, poll_until};
    let _ = poll_until(
        "the control plane to remove its admin socket",
        std::time::Instant::now() + std::time::Duration::from_secs(15),
        std::time::Duration::from_millis(25),
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
