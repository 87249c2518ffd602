//! `coordinator serve`: one control plane per cluster. Opens the store, ensures the PKI,
//! serves the agent port (TLS 1.3; `AgentService`, and `Admin` for operator certificates)
//! and the admin unix socket, until shut down.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::tls;
use flotilla_proto::v1::{admin_server::AdminServer, agent_service_server::AgentServiceServer};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;
use tonic::transport::Server;

use crate::control_plane::admin_api::AdminApi;
use crate::control_plane::agent_api::{self, AgentApi};
use crate::control_plane::agent_binary::{AgentBinary, AgentBinaryError};
use crate::control_plane::clock::Clock;
use crate::control_plane::consul::{ConsulSecrets, ConsulSecretsError};
use crate::control_plane::core::ControlPlane;
use crate::control_plane::descriptors;
use crate::control_plane::enroll_limit::EnrollLimit;
use crate::control_plane::pki::{Pki, PkiError};
use crate::control_plane::settings::{ServeConfig, StatePaths};
use crate::control_plane::store::{Store, StoreError};

/// How long in-flight RPCs get to finish after a shutdown request.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("state directory {path}: {source}")]
    StateDir { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Consul(#[from] ConsulSecretsError),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error(
        "listening on {0}, which is not an address agents can dial: pass --advertise with the address (or DNS name) hosts reach this machine at"
    )]
    NoAdvertise(SocketAddr),
    #[error("admin socket {path}: {source}")]
    AdminSocket { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    AgentBinary(#[from] AgentBinaryError),
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("listener: {0}")]
    Listener(std::io::Error),
    #[error(transparent)]
    Web(#[from] crate::control_plane::web::WebError),
}

/// A running control plane.
pub struct Running {
    pub cp: Arc<ControlPlane>,
    pub addr: SocketAddr,
    pub paths: StatePaths,
    /// Where `/metrics` and the status page listen, when they do.
    pub metrics_addr: Option<SocketAddr>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Running {
    /// Asks the control plane to stop and waits for it.
    pub async fn stop(self) -> Result<(), ServeError> {
        self.cp.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the control plane stops (shutdown requested through the admin API or
    /// [`ControlPlane::shutdown`]).
    pub async fn wait(self) -> Result<(), ServeError> {
        let result = match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ServeError::Listener(std::io::Error::other(e))),
        };
        // Session and log tasks hold the control plane (and so the store's file lock) until
        // they notice the shutdown; give them a bounded moment so a restart can reopen it.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while Arc::strong_count(&self.cp) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        result
    }
}

/// Starts a control plane on `listener` and returns once it accepts connections.
pub async fn start(config: ServeConfig, listener: TcpListener) -> Result<Running, ServeError> {
    start_with_clock(config, listener, Clock::default()).await
}

/// [`start`] with a given clock (tests move it forward to expire tokens).
pub async fn start_with_clock(config: ServeConfig, listener: TcpListener, clock: Clock) -> Result<Running, ServeError> {
    tls::install_default_provider();
    // First, before the store and the listeners count against it.
    let descriptor_limit = descriptors::raise_limit();
    let paths = StatePaths::new(&config.state_dir);
    flotilla_proto::fs::private_dir(&paths.dir)
        .map_err(|source| ServeError::StateDir { path: paths.dir.clone(), source })?;
    let store = Store::open(&paths.store())?;
    let addr = listener.local_addr().map_err(ServeError::Listener)?;
    let advertise = advertised_addresses(&config, addr)?;
    let pki = Pki::load_or_create(&paths.dir, &config.cluster, &advertise)?;
    let consul = ConsulSecrets::load_or_create(&paths.dir, &store, &config.cluster)?;
    let server_tls = tls::server_config(pki.server_identity(), &pki.ca_certs()?)?;
    let agent_endpoint = endpoint_of(&advertise[0], addr.port());
    let agent_binary = load_agent_binary(&config).await?;
    let port = tls::Port::new(descriptors::accept_limits(&config.limits, descriptor_limit));
    let enroll_limit = EnrollLimit::new(config.limits.enroll_per_source, config.limits.enroll_total);

    let cp = Arc::new(ControlPlane {
        config: config.clone(),
        store,
        pki,
        consul,
        sessions: Default::default(),
        logs: Default::default(),
        clock,
        agent_endpoint: agent_endpoint.clone(),
        agent_binary: agent_binary.clone(),
        shutdown: tokio_util::sync::CancellationToken::new(),
        port,
        descriptor_limit,
        enroll_limit,
        grants: Default::default(),
        renewing: Default::default(),
        refusals: Default::default(),
        metrics: Default::default(),
        healer: Default::default(),
        backups: Default::default(),
        agent_upgrades: Default::default(),
        metrics_address: Default::default(),
    });
    cp.load_heal_policy()?;

    let unix = bind_admin_socket(&paths)?;
    flotilla_proto::fs::write_public(&paths.endpoint_file(), agent_endpoint.as_bytes())
        .map_err(|source| ServeError::StateDir { path: paths.endpoint_file(), source })?;
    let agent_server = spawn_agent_server(&cp, listener, server_tls, agent_binary);
    let admin_server = spawn_admin_server(&cp, unix);
    let limits = cp.port.limits();
    tracing::info!(
        cluster = %config.cluster, %addr, endpoint = %agent_endpoint, socket = %paths.admin_socket().display(),
        descriptor_limit, max_connections = limits.max_connections, max_anonymous = limits.max_anonymous,
        "control plane serving"
    );
    tokio::spawn(crate::control_plane::audit::flush_refusals(Arc::clone(&cp)));
    let metrics_addr = match config.metrics_listen {
        Some(at) => Some(crate::control_plane::web::start(&cp, at, &paths).await?),
        None => None,
    };
    if let Some(command) = config.heal_command.clone() {
        tokio::spawn(crate::control_plane::healer::supervise(Arc::clone(&cp), command));
    }
    tokio::spawn(crate::control_plane::backup::policy::run(Arc::clone(&cp)));
    let task = tokio::spawn(stop_when_asked(Arc::clone(&cp), agent_server, admin_server));
    Ok(Running { cp, addr, paths, metrics_addr, task })
}

/// The addresses agents dial (and the server certificate names): `--advertise`, or the
/// listening address when it is a specific one.
fn advertised_addresses(config: &ServeConfig, addr: SocketAddr) -> Result<Vec<String>, ServeError> {
    if !config.advertise.is_empty() {
        return Ok(config.advertise.clone());
    }
    if addr.ip().is_unspecified() {
        return Err(ServeError::NoAdvertise(addr));
    }
    Ok(vec![addr.ip().to_string()])
}

/// `host:port`, with an IPv6 address in brackets.
fn endpoint_of(host: &str, port: u16) -> String {
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        _ => format!("{host}:{port}"),
    }
}

/// The agent binary user-data downloads, when the control plane serves one.
async fn load_agent_binary(config: &ServeConfig) -> Result<Option<Arc<AgentBinary>>, ServeError> {
    let Some(path) = config.agent_binary.clone() else {
        return Ok(None);
    };
    let loaded = tokio::task::spawn_blocking(move || AgentBinary::load(&path))
        .await
        .map_err(|e| ServeError::Listener(std::io::Error::other(e)))??;
    tracing::info!(path = %loaded.path.display(), sha256 = %loaded.sha256, "serving the agent binary");
    Ok(Some(Arc::new(loaded)))
}

/// The admin socket, 0600. We hold the store's lock, so no other control plane of this
/// cluster is running and a leftover socket file is stale.
fn bind_admin_socket(paths: &StatePaths) -> Result<UnixListener, ServeError> {
    let sock = paths.admin_socket();
    let _ = std::fs::remove_file(&sock);
    let unix = UnixListener::bind(&sock).map_err(|source| ServeError::AdminSocket { path: sock.clone(), source })?;
    std::fs::set_permissions(&sock, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|source| ServeError::AdminSocket { path: sock.clone(), source })?;
    Ok(unix)
}

type ServerTask = JoinHandle<Result<(), tonic::transport::Error>>;

/// The agent port: `AgentService` (and `Admin` for operator certificates when remote admin
/// is on) plus the agent binary's HTTPS route, over TLS 1.3, behind [`agent_api::gate`] and
/// within the port's limits (`tls/accept.rs`).
fn spawn_agent_server(
    cp: &Arc<ControlPlane>,
    listener: TcpListener,
    server_tls: Arc<rustls::ServerConfig>,
    agent_binary: Option<Arc<AgentBinary>>,
) -> ServerTask {
    use tower::ServiceExt;
    let api = Arc::new(AgentApi { cp: Arc::clone(cp) });
    let agent = AgentServiceServer::from_arc(Arc::clone(&api)).max_decoding_message_size(agent_api::MAX_AGENT_MESSAGE);
    // `Enroll` on its own route, for its own message cap (tonic's is per service).
    let enroll = AgentServiceServer::from_arc(api)
        .max_decoding_message_size(agent_api::MAX_ENROLL_MESSAGE)
        .map_request(|req: axum::http::Request<axum::body::Body>| req.map(tonic::body::Body::new));
    let mut routes = tonic::service::Routes::new(agent);
    if cp.config.remote_admin {
        routes = routes.add_service(AdminServer::new(AdminApi { cp: Arc::clone(cp) }));
    }
    let axum_router = routes.into_axum_router().route_service(agent_api::ENROLL_PATH, enroll);
    let axum_router = crate::control_plane::agent_binary::routes(axum_router, agent_binary)
        .layer(axum::middleware::from_fn_with_state(Arc::clone(cp), crate::control_plane::admin_api::count_rpcs))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(cp), agent_api::gate));
    let router = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(15)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // tonic's defaults (`None`) lift hyper's bounds on concurrent streams and on resets
        // a client can provoke; put them back, and pin h2's bound on rapid resets.
        .max_concurrent_streams(cp.config.limits.max_concurrent_streams)
        .http2_max_pending_accept_reset_streams(Some(HTTP2_MAX_PENDING_RESETS))
        .http2_max_local_error_reset_streams(Some(HTTP2_MAX_LOCAL_RESETS))
        .tcp_nodelay(true)
        .add_routes(tonic::service::Routes::from(axum_router));
    let incoming = tls::incoming_with(listener, server_tls, cp.port.clone());
    let shutdown = cp.shutdown.clone();
    tokio::spawn(async move { router.serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()).await })
}

/// Streams a client may open and reset before the server accepts them (the "rapid reset"
/// attack): h2's default.
const HTTP2_MAX_PENDING_RESETS: usize = 20;
/// Streams the server may have to reset for a client's protocol errors before it sends
/// GOAWAY: hyper's default.
const HTTP2_MAX_LOCAL_RESETS: usize = 1024;

/// The operator's `Admin` API on the unix socket.
fn spawn_admin_server(cp: &Arc<ControlPlane>, unix: UnixListener) -> ServerTask {
    let routes = tonic::service::Routes::new(AdminServer::new(AdminApi { cp: Arc::clone(cp) }))
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(Arc::clone(cp), crate::control_plane::admin_api::count_rpcs));
    let router = Server::builder().add_routes(tonic::service::Routes::from(routes));
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(unix);
    let shutdown = cp.shutdown.clone();
    tokio::spawn(async move { router.serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()).await })
}

/// Waits for the shutdown request, tells every agent, and gives in-flight RPCs
/// [`SHUTDOWN_GRACE`] to finish.
async fn stop_when_asked(cp: Arc<ControlPlane>, agent: ServerTask, admin: ServerTask) -> Result<(), ServeError> {
    cp.shutdown.cancelled().await;
    // Tell every agent first, so they start their back-off now rather than on a timeout.
    cp.sessions.close_all();
    drop(cp);
    let flatten = |r: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>| match r {
        Ok(r) => r.map_err(ServeError::from),
        Err(e) => Err(ServeError::Listener(std::io::Error::other(e))),
    };
    match tokio::time::timeout(SHUTDOWN_GRACE, async { (agent.await, admin.await) }).await {
        Ok((a, b)) => flatten(a).and(flatten(b)),
        Err(_) => {
            tracing::warn!("in-flight requests did not finish within {SHUTDOWN_GRACE:?}; stopping anyway");
            Ok(())
        }
    }
}

/// Runs a control plane until `shutdown` completes or the admin API asks it to stop.
pub async fn run(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let running = start(config, listener).await?;
    let cp = Arc::clone(&running.cp);
    let socket = running.paths.admin_socket();
    tokio::select! {
        () = shutdown => cp.shutdown.cancel(),
        () = cp.shutdown.cancelled() => {}
    }
    drop(cp);
    let result = running.wait().await;
    // Last: the socket disappears only once the store is closed, so `coordinator stop`
    // (which waits for it to go) returns when a new control plane can open the state.
    let _ = std::fs::remove_file(socket);
    result
}
