//! The control plane's configuration (`coordinator serve` flags), and where a cluster's
//! state lives on disk.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The shortest validity `coordinator serve --host-cert-validity` accepts: agents renew at
/// two thirds of it, over their session.
pub const HOST_CERT_VALIDITY_MIN: Duration = Duration::from_secs(10 * 60);
/// The longest: a stolen host key is good at most this long (renewal is automatic).
pub const HOST_CERT_VALIDITY_MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// Settings for one control plane.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub cluster: String,
    /// `<state root>/<cluster>`: the store, the PKI, the admin socket.
    pub state_dir: PathBuf,
    /// Addresses (IPs or DNS names) agents use to reach the agent port; the server
    /// certificate's SANs. Empty: the listener's own IP.
    pub advertise: Vec<String>,
    pub heartbeat_interval: Duration,
    pub host_cert_validity: Duration,
    /// Also serve the admin API on the agent port to operator certificates.
    pub remote_admin: bool,
    /// The agent binary served at `/v1/agent/flotilla-agent` (see `agent_binary`); `None`
    /// serves none.
    pub agent_binary: Option<PathBuf>,
    /// What the agent port lets clients use (issue 14).
    pub limits: PortLimits,
    /// Where `/metrics` and the status page listen (`web.rs`); `None`: nowhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The command auto-heal runs (`coordinator … heal --auto`), argv; `None`: auto-heal is
    /// unavailable (a control plane embedded in tests).
    pub heal_command: Option<Vec<std::ffi::OsString>>,
}

impl ServeConfig {
    pub fn new(cluster: &str, state_dir: PathBuf) -> Self {
        Self {
            cluster: cluster.to_string(),
            state_dir,
            advertise: Vec::new(),
            heartbeat_interval: Duration::from_secs(5),
            host_cert_validity: crate::control_plane::pki::HOST_CERT_VALIDITY,
            remote_admin: true,
            agent_binary: None,
            limits: PortLimits::default(),
            metrics_listen: None,
            heal_command: None,
        }
    }
}

/// What the agent port lets clients use. The connection caps left `None` are derived at start
/// from the descriptor limit (see [`crate::control_plane::descriptors`]), so the control plane
/// never runs out of descriptors.
#[derive(Clone, Debug)]
pub struct PortLimits {
    /// Connections at once, all kinds.
    pub max_connections: Option<usize>,
    /// Of which without a client certificate (enrolling hosts, agent binary downloads,
    /// handshakes in progress).
    pub max_anonymous: Option<usize>,
    /// Of which from one source address (an IPv6 /64). Enrolling hosts use one connection
    /// each; `benches/sessions.sh` enrolls 64 at a time from one address.
    pub max_anonymous_per_source: usize,
    pub handshake_timeout: Duration,
    /// A connection without a client certificate is closed after this long without a byte
    /// either way (twice the keep-alive PING interval of every Flotilla client channel, so an
    /// enrollment waiting on a slow commit is not cut) ...
    pub anonymous_idle: Duration,
    /// ... and this long after it was accepted (an enrollment takes one round trip; the agent
    /// binary's download is the longest legitimate use).
    pub anonymous_lifetime: Duration,
    /// HTTP/2 streams per connection: an agent's session and one `Logs` stream per source
    /// followed share one or two connections.
    pub max_concurrent_streams: u32,
    /// Enrollment attempts: per source address, and in total. A successful enrollment gives
    /// its token back (a valid join token is the operator's say-so); refusals spend them.
    pub enroll_per_source: RateLimit,
    pub enroll_total: RateLimit,
}

impl Default for PortLimits {
    fn default() -> Self {
        Self {
            max_connections: None,
            max_anonymous: None,
            max_anonymous_per_source: 128,
            handshake_timeout: Duration::from_secs(5),
            anonymous_idle: Duration::from_secs(20),
            anonymous_lifetime: Duration::from_secs(600),
            max_concurrent_streams: 128,
            enroll_per_source: RateLimit { burst: 64, per_second: 4.0 },
            enroll_total: RateLimit { burst: 256, per_second: 32.0 },
        }
    }
}

/// A token bucket: `burst` at once, refilled at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub burst: u32,
    pub per_second: f64,
}

/// The files of a cluster's state directory.
#[derive(Clone, Debug)]
pub struct StatePaths {
    pub dir: PathBuf,
}

impl StatePaths {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }
    pub fn store(&self) -> PathBuf {
        self.dir.join("state.redb")
    }
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.join("pki").join("ca.pem")
    }
    /// Written by `serve` once it listens: the agent port's address.
    pub fn endpoint_file(&self) -> PathBuf {
        self.dir.join("endpoint")
    }
    /// Written by `deploy` when it starts the control plane: the agent port's listen address
    /// (`ip:port`), reused by every later deploy of the cluster.
    pub fn listen_file(&self) -> PathBuf {
        self.dir.join("listen")
    }
    /// Written by `serve` once `/metrics` and the status page listen: their address.
    pub fn metrics_address_file(&self) -> PathBuf {
        self.dir.join("metrics-address")
    }
    /// `serve --log-file` as `deploy` starts it: rotated past 10 MiB (`coordinator.log.1`, …).
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("coordinator.log")
    }
    /// What a `serve` that `deploy` started printed before its log began (and a fatal error).
    /// What auto-heal's runs print (appended).
    pub fn heal_log(&self) -> PathBuf {
        self.dir.join("heal.log")
    }

    pub fn output_file(&self) -> PathBuf {
        self.dir.join("coordinator.out")
    }
}

/// The default root of all clusters' state: `$FLOTILLA_STATE_DIR`, else
/// `$XDG_STATE_HOME/flotilla`, else `~/.local/state/flotilla`.
pub fn default_state_root() -> PathBuf {
    if let Some(d) = std::env::var_os("FLOTILLA_STATE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("flotilla");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".local").join("state").join("flotilla")
}

/// Cluster and host names: DNS labels, so they are safe in certificates, file names,
/// container names and tags.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}
