//! The Flotilla agent: one per host. It enrolls once with a join token, then keeps an mTLS
//! session to the coordinator for as long as it runs, reconnecting with capped, jittered
//! back-off; it streams health, and hands what the coordinator asks for to the parts that
//! act on the local Docker Engine.
//!
//! - [`config`]: the settings file, `/etc/flotilla/agent.toml`.
//! - [`identity`]: the key + certificate in the state directory, CSRs, renewal timing.
//! - [`enroll`]: token + CSR → certificate.
//! - [`ctx`]: what the agent carries across sessions ([`Ctx`]), its [`AgentStatus`], and the
//!   [`Directive`]s a session hands to the parts that act on the host.
//! - [`session`]: one session: Hello, heartbeats, renewal, the coordinator's messages.
//! - [`backoff`]: exponential back-off with full jitter.
//! - [`cli`]: the binary's main (shared with the multi-call `coordinator` binary).
//! - [`facts`], [`health`]: what the host is and how it is doing; [`swarm_watch`]: the swarm
//!   view read every second, so a change is reported at once.
//! - [`engine`]: the local Docker Engine client; [`engine_tls`]: its TLS listener (managers),
//!   whose key [`engine_key`] makes once and keeps (the coordinator only gets a CSR).
//! - [`reconcile`]: the controller converging the Engine to the assignment, through
//!   [`roles`] (consul, manager, node); [`consul`]: the Consul HTTP client they use.
//! - [`backup`]: the backups the coordinator asks for (Swarm's state with the Engine stopped,
//!   a Consul snapshot), uploaded on their own `UploadBackup` call.
//! - [`logs`]: the log streams the coordinator opens, pushed on their own `Logs` RPC and
//!   resumed after a cut; one file per source ([`logs::container`], [`logs::journal`]).
//!
//! Every client of the coordinator's agent port (enroll, session, logs) sends the protocol
//! version through [`flotilla_proto::protocol_header`]. Modules depend on each other one way
//! (no cycles): this root wires them together, and only [`cli`] calls back into it ([`run`]).
//!
//! [`start`] runs the agent in the background and returns an [`AgentHandle`] whose status
//! can be watched (tests await it instead of sleeping); [`run`] is the binary's loop.

pub mod backoff;
pub mod backup;
pub mod cli;
pub mod config;
pub mod consul;
pub mod ctx;
pub mod engine;
pub mod engine_key;
pub mod engine_tls;
pub mod enroll;
pub mod facts;
pub mod health;
pub mod identity;
pub mod logs;
pub mod reconcile;
pub mod restore;
pub mod roles;
pub mod session;
pub mod swarm_watch;
pub mod upgrade;

use std::time::Duration;

use flotilla_proto::tls;
use flotilla_proto::v1;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::identity::StoredIdentity;

pub use crate::ctx::{AgentStatus, Ctx, Directive, VERSION};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("CA file {path}: {source}")]
    CaRead { path: std::path::PathBuf, source: std::io::Error },
    #[error("CA file {path}: {source}")]
    CaParse { path: std::path::PathBuf, source: tls::TlsError },
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    EngineKey(#[from] engine_key::EngineKeyError),
}

/// A running agent.
pub struct AgentHandle {
    pub status: watch::Receiver<AgentStatus>,
    /// The reconciler's role statuses.
    pub roles: watch::Receiver<Vec<v1::RoleStatus>>,
    /// Completed reconcile passes.
    pub passes: watch::Receiver<u64>,
    shutdown: CancellationToken,
    /// Cancelled once a new build is installed (`upgrade`): the binary's `run` stops, and
    /// systemd starts the new build.
    pub upgraded: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl AgentHandle {
    /// Stops the agent and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
        for w in self.workers {
            let _ = w.await;
        }
    }

    /// Waits until `pred` holds for the agent's status, or `timeout` passes.
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&AgentStatus) -> bool,
    ) -> Result<AgentStatus, AgentStatus> {
        let got = match tokio::time::timeout(timeout, self.status.wait_for(|s| pred(s))).await {
            Ok(Ok(s)) => Some(s.clone()),
            _ => None,
        };
        got.ok_or_else(|| self.status.borrow().clone())
    }
}

/// Loads the CA and any stored identity, then runs the agent loop in the background.
pub async fn start(config: AgentConfig) -> Result<AgentHandle, AgentError> {
    tls::install_default_provider();
    let ca_pem = std::fs::read_to_string(&config.ca_file)
        .map_err(|source| AgentError::CaRead { path: config.ca_file.clone(), source })?;
    let ca = tls::certs_from_pem("cluster CA", &ca_pem)
        .map_err(|source| AgentError::CaParse { path: config.ca_file.clone(), source })?;
    let identity = StoredIdentity::load(&config.state_dir)?;
    let engine_key = engine_key::EngineKey::load_or_create(&config.state_dir, &config.host_name)?;
    let docker = engine::connect().await.ok();
    // The executable's digest, for every Hello: hashed once, off the reactor, now.
    tokio::task::spawn_blocking(|| {
        upgrade::own_build();
    });
    let (status_tx, status_rx) = watch::channel(AgentStatus {
        enrolled: identity.is_some(),
        cert_serial: identity.as_ref().map(|i| i.facts.serial.clone()).unwrap_or_default(),
        cert_not_after_unix: identity.as_ref().map(|i| i.facts.not_after_unix).unwrap_or_default(),
        ..Default::default()
    });
    let (dir_tx, dir_rx) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let upgraded = CancellationToken::new();
    let (desired_tx, desired_rx) = watch::channel(None);
    let (roles_tx, roles_rx) = watch::channel(Vec::new());
    let (views_tx, views_rx) = watch::channel(reconcile::Views::default());
    let (passes_tx, passes_rx) = watch::channel(0u64);
    let (holds_tx, holds_rx) = watch::channel(reconcile::Holds::default());
    let (swarm_tx, swarm_rx) = watch::channel(None);
    let mut workers = Vec::new();
    if let Some(docker) = docker.clone() {
        let d = docker.clone();
        let read = move || {
            let d = d.clone();
            async move { roles::swarm::view(&d).await }
        };
        workers.push(tokio::spawn(swarm_watch::run(read, swarm_tx, swarm_watch::INTERVAL, shutdown.clone())));
        let r = reconcile::Reconciler {
            docker,
            host: config.host_name.clone(),
            engine_key_pem: engine_key.key_pem.clone(),
            desired: desired_rx,
            holds: holds_rx,
            statuses: roles_tx,
            views: views_tx,
            passes: passes_tx,
            shutdown: shutdown.clone(),
        };
        workers.push(tokio::spawn(r.run()));
    }
    let (link_tx, link_rx) = watch::channel(None);
    let log_streams = logs::LogStreams::new(docker.clone(), link_rx.clone(), shutdown.clone());
    let acts = Acts {
        desired: desired_tx,
        holds: holds_tx,
        docker: docker.clone(),
        link: link_rx,
        upgraded: upgraded.clone(),
    };
    workers.push(tokio::spawn(dispatch(dir_rx, acts, log_streams, shutdown.clone())));
    let ctx = Ctx {
        config,
        ca,
        identity,
        engine_csr_pem: engine_key.csr_pem,
        docker,
        sampler: health::Sampler::new(),
        applied_generation: 0,
        status: status_tx,
        directives: dir_tx,
        roles: roles_rx.clone(),
        views: views_rx,
        swarm: swarm_rx,
        log_link: link_tx,
        shutdown: shutdown.clone(),
    };
    let task = tokio::spawn(run_loop(ctx));
    Ok(AgentHandle { status: status_rx, roles: roles_rx, passes: passes_rx, shutdown, upgraded, task, workers })
}

/// What the directives act through.
struct Acts {
    desired: watch::Sender<Option<v1::Assignment>>,
    holds: watch::Sender<reconcile::Holds>,
    docker: Option<bollard::Docker>,
    /// Where uploads dial (the session's coordinator, as this identity).
    link: watch::Receiver<Option<logs::Link>>,
    /// Cancelled after a new build is installed.
    upgraded: CancellationToken,
}

/// Routes the coordinator's directives to the parts that act on them.
async fn dispatch(
    mut rx: mpsc::UnboundedReceiver<Directive>,
    acts: Acts,
    mut log_streams: logs::LogStreams,
    shutdown: CancellationToken,
) {
    let Acts { desired, holds, docker, link, upgraded } = acts;
    loop {
        let d = tokio::select! {
            d = rx.recv() => match d { Some(d) => d, None => return },
            () = shutdown.cancelled() => return,
        };
        match d {
            Directive::Assign(a) => {
                tracing::info!(generation = a.generation, roles = a.roles.len(), "assignment received");
                desired.send_replace(Some(a));
            }
            Directive::Engine(action) => engine::act(docker.as_ref(), action, &holds).await,
            Directive::OpenLogs(open) => log_streams.open(open),
            Directive::CloseLogs(close) => log_streams.close(&close.stream_id),
            Directive::Backup(req) => {
                let assignment = desired.borrow().clone();
                tokio::spawn(backup::take(req, docker.clone(), assignment, link.clone()));
            }
            Directive::Restore(req) => {
                let assignment = desired.borrow().clone();
                tokio::spawn(restore::restore(req, docker.clone(), assignment, link.clone()));
            }
            Directive::Upgrade(req) => {
                tokio::spawn(upgrade::upgrade(req, link.clone(), upgraded.clone()));
            }
        }
    }
}

/// Enroll if needed, hold a session, back off, repeat — until shut down.
async fn run_loop(mut ctx: Ctx) {
    let mut backoff =
        Backoff::new(Duration::from_millis(ctx.config.backoff_base_ms), Duration::from_secs(ctx.config.backoff_cap_s));
    let mut attempt: usize = 0;
    loop {
        if ctx.shutdown.is_cancelled() {
            return;
        }
        let addr = ctx.config.coordinator[attempt % ctx.config.coordinator.len()].clone();
        attempt = attempt.wrapping_add(1);

        // An expired certificate cannot open a session: enroll again if a token is there.
        if ctx.identity.as_ref().is_some_and(|i| i.is_expired()) && ctx.config.token_file.exists() {
            tracing::warn!("client certificate expired; re-enrolling with the join token on disk");
            ctx.identity = None;
        }

        let error = if ctx.identity.is_none() {
            let facts = facts::gather(ctx.docker.as_ref(), &ctx.engine_csr_pem).await;
            match enroll::enroll(&ctx.config, &ctx.ca, &addr, facts).await {
                Ok((id, host_id)) => {
                    ctx.set_status(|s| {
                        s.enrolled = true;
                        s.host_id = host_id;
                        s.cert_serial = id.facts.serial.clone();
                        s.cert_not_after_unix = id.facts.not_after_unix;
                    });
                    ctx.identity = Some(id);
                    backoff.reset();
                    continue;
                }
                Err(e) => e.to_string(),
            }
        } else {
            let mut opened = false;
            match session::run(&mut ctx, &addr, || opened = true).await {
                Ok(session::Ended::Shutdown) => return,
                Err(e) => {
                    if opened {
                        backoff.reset();
                    }
                    if e.identity_refused() && ctx.config.token_file.exists() {
                        tracing::warn!(error = %e, "coordinator refused this identity; re-enrolling with the join token on disk");
                        ctx.identity = None;
                    }
                    e.to_string()
                }
            }
        };
        let delay = backoff.next_delay();
        tracing::warn!(error = %error, retry_in = ?delay, "not connected to the coordinator");
        ctx.set_status(|s| {
            s.connected = false;
            s.last_error = error;
            s.failures += 1;
        });
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = ctx.shutdown.cancelled() => return,
        }
    }
}

/// The binary's entry: runs until `shutdown` completes.
pub async fn run(config: AgentConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<(), AgentError> {
    let handle = start(config).await?;
    let upgraded = handle.upgraded.clone();
    tokio::select! {
        () = shutdown => {}
        () = upgraded.cancelled() => tracing::warn!("a new agent build is installed: stopping, for systemd to start it"),
    }
    handle.stop().await;
    Ok(())
}
