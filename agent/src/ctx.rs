//! What one agent carries across sessions ([`Ctx`]), what it says about itself
//! ([`AgentStatus`], [`VERSION`]), and what a session hands to the parts that act on the
//! host ([`Directive`]). The agent's loop in the crate root owns a `Ctx`; a session borrows it.

use std::time::Duration;

use flotilla_proto::v1;
use rustls_pki_types::CertificateDer;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::identity::StoredIdentity;
use crate::{health, logs, reconcile};

/// This agent's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the agent is doing, for tests and for the operator's logs.
#[derive(Clone, Debug, Default)]
pub struct AgentStatus {
    pub enrolled: bool,
    pub connected: bool,
    /// Sessions the coordinator welcomed since start.
    pub sessions_opened: u64,
    pub host_id: String,
    pub coordinator: String,
    pub cert_serial: String,
    pub cert_not_after_unix: i64,
    pub renewals: u64,
    pub last_rtt: Option<Duration>,
    pub last_error: String,
    /// Consecutive failed connection attempts.
    pub failures: u64,
}

/// Something the coordinator asked for that acts on the host.
#[derive(Debug)]
pub enum Directive {
    Assign(v1::Assignment),
    OpenLogs(v1::OpenLogStream),
    CloseLogs(v1::CloseLogStream),
    Engine(v1::EngineAction),
    Backup(v1::TakeBackup),
    Restore(v1::RestoreBackup),
    Upgrade(v1::UpgradeAgent),
}

/// The state one agent carries across sessions.
pub struct Ctx {
    pub config: AgentConfig,
    pub ca: Vec<CertificateDer<'static>>,
    pub identity: Option<StoredIdentity>,
    /// The CSR for the Engine's key ([`crate::engine_key`]), sent in every `HostFacts`.
    pub engine_csr_pem: String,
    pub docker: Option<bollard::Docker>,
    pub sampler: health::Sampler,
    pub applied_generation: u64,
    pub status: watch::Sender<AgentStatus>,
    pub directives: mpsc::UnboundedSender<Directive>,
    /// Role statuses and Consul/Swarm views, published by the reconciler.
    pub roles: watch::Receiver<Vec<v1::RoleStatus>>,
    pub views: watch::Receiver<reconcile::Views>,
    /// The swarm view as last read by [`crate::swarm_watch`]; notified when it changed.
    pub swarm: watch::Receiver<Option<v1::SwarmView>>,
    /// Where log streams dial; the session publishes it (see [`logs::Link`]).
    pub log_link: watch::Sender<Option<logs::Link>>,
    pub shutdown: CancellationToken,
}

impl Ctx {
    pub fn set_status(&self, f: impl FnOnce(&mut AgentStatus)) {
        self.status.send_modify(f);
    }
}
