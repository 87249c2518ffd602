//! One session with the coordinator: Hello, then health every interval (and at once when the
//! swarm view changes or the coordinator asks), status reports, certificate renewal before
//! two thirds of its life — and whatever the coordinator says.

use std::time::{Duration, Instant};

use flotilla_proto::tls;
use flotilla_proto::v1::{
    self, AgentMessage, CoordinatorMessage, SampleTrigger, agent_message, agent_service_client::AgentServiceClient,
    coordinator_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::ctx::{Ctx, Directive, VERSION};
use crate::identity::PendingKey;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("coordinator {addr}: {status}")]
    Rpc { addr: String, status: tonic::Status },
    #[error("coordinator {addr} closed the session: {status}")]
    Closed { addr: String, status: tonic::Status },
    #[error("coordinator {addr} ended the session")]
    Ended { addr: String },
    #[error("coordinator {addr} did not send Welcome first")]
    NoWelcome { addr: String },
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("identity: {0}")]
    Identity(#[from] crate::identity::IdentityError),
}

impl SessionError {
    /// The coordinator refused *who we are* (revoked, superseded, unknown host): only a new
    /// enrollment can fix that.
    pub fn identity_refused(&self) -> bool {
        match self {
            SessionError::Rpc { status, .. } | SessionError::Closed { status, .. } => {
                matches!(status.code(), tonic::Code::PermissionDenied | tonic::Code::Unauthenticated)
            }
            _ => false,
        }
    }
}

/// How a session that did open came to an end.
pub enum Ended {
    Shutdown,
}

/// Runs one session against `addr` until it ends. Returns `Ok(Ended::Shutdown)` only when
/// the agent is shutting down; every other end is an error the caller backs off from.
/// `on_open` is called once the coordinator welcomed us (the caller resets its back-off).
pub async fn run(ctx: &mut Ctx, addr: &str, mut on_open: impl FnMut()) -> Result<Ended, SessionError> {
    let identity = ctx.identity.clone().ok_or_else(|| SessionError::Ended { addr: addr.into() })?;
    let config = tls::client_config(&ctx.ca, Some(&identity.tls))?;
    let mut client = AgentServiceClient::with_interceptor(tls::channel(addr, config)?, flotilla_proto::protocol_header);

    let (out_tx, out_rx) = mpsc::channel::<AgentMessage>(64);
    let facts = crate::facts::gather(ctx.docker.as_ref(), &ctx.engine_csr_pem).await;
    // Hashed once per process, off the reactor (`start` began it already).
    let agent_sha256 =
        tokio::task::spawn_blocking(|| crate::upgrade::own_build().sha256.clone()).await.unwrap_or_default();
    let hello = v1::Hello {
        host_name: ctx.config.host_name.clone(),
        facts: Some(facts),
        agent_version: VERSION.to_string(),
        protocol_version: flotilla_proto::PROTOCOL_VERSION,
        applied_generation: ctx.applied_generation,
        running: Vec::new(),
        agent_sha256,
    };
    let _ = out_tx.try_send(AgentMessage { body: Some(agent_message::Body::Hello(hello)) });
    let mut inbound = client
        .session(ReceiverStream::new(out_rx))
        .await
        .map_err(|status| SessionError::Rpc { addr: addr.into(), status })?
        .into_inner();

    match inbound.message().await {
        Ok(Some(CoordinatorMessage { body: Some(coordinator_message::Body::Welcome(w)) })) => {
            ctx.set_status(|s| {
                s.connected = true;
                s.sessions_opened += 1;
                s.host_id = w.host_id.clone();
                s.coordinator = addr.to_string();
                s.last_error.clear();
            });
            tracing::info!(coordinator = addr, host_id = %w.host_id, "session open");
            // [logs] Log streams dial the coordinator this session reached, as this identity.
            ctx.log_link.send_replace(Some(crate::logs::Link::new(addr, &ctx.ca, &identity.tls)?));
        }
        Ok(_) => return Err(SessionError::NoWelcome { addr: addr.into() }),
        Err(status) => {
            return Err(SessionError::Rpc { addr: addr.into(), status });
        }
    }
    on_open();

    let result = session_loop(ctx, addr, &mut inbound, &out_tx).await;
    ctx.log_link.send_replace(None); // [logs] no session: log streams wait for the next one
    ctx.set_status(|s| s.connected = false);
    result
}

/// The open session's loop: the coordinator's messages, status reports when the roles
/// change, a health sample every interval and when the swarm view changes, a renewal when
/// the certificate is due.
async fn session_loop(
    ctx: &mut Ctx,
    addr: &str,
    inbound: &mut tonic::Streaming<CoordinatorMessage>,
    out_tx: &mpsc::Sender<AgentMessage>,
) -> Result<Ended, SessionError> {
    let mut heartbeat = tokio::time::interval(ctx.config.heartbeat_interval());
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut roles = ctx.roles.clone();
    roles.mark_changed();
    // The interval's first tick samples at once; later swarm changes wake the loop.
    let mut swarm = ctx.swarm.clone();
    swarm.borrow_and_update();
    let shutdown = ctx.shutdown.clone();
    let mut open = Open { ctx, addr, out: out_tx, pending_renewal: None, sent_at: None };
    loop {
        let renew_in = open.renew_in();
        tokio::select! {
            () = shutdown.cancelled() => return Ok(Ended::Shutdown),
            msg = inbound.message() => match msg {
                Ok(Some(m)) => open.on_message(m).await?,
                Ok(None) => return Err(open.ended()),
                Err(status) => return Err(SessionError::Closed { addr: addr.into(), status }),
            },
            Ok(()) = roles.changed() => {
                let report = v1::StatusReport { generation: open.ctx.applied_generation, roles: roles.borrow_and_update().clone() };
                open.send(agent_message::Body::Status(report)).await?;
            }
            _ = heartbeat.tick() => open.heartbeat(SampleTrigger::Interval, 0).await?,
            Ok(()) = swarm.changed() => {
                swarm.borrow_and_update();
                open.heartbeat(SampleTrigger::SwarmChanged, 0).await?;
            }
            () = tokio::time::sleep(renew_in) => open.renew().await?,
        }
    }
}

/// What an open session keeps between two events of its loop.
struct Open<'a> {
    ctx: &'a mut Ctx,
    addr: &'a str,
    out: &'a mpsc::Sender<AgentMessage>,
    /// The key of a renewal the coordinator has not answered yet.
    pending_renewal: Option<PendingKey>,
    /// The last health sample's seq and when it went out, until its ack gives the round trip.
    sent_at: Option<(u64, Instant)>,
}

impl Open<'_> {
    fn ended(&self) -> SessionError {
        SessionError::Ended { addr: self.addr.into() }
    }

    /// When to renew the certificate.
    fn renew_in(&self) -> Duration {
        match (&self.pending_renewal, &self.ctx.identity) {
            (None, Some(id)) => id.renew_in(),
            // A renewal is in flight: wait for its answer (re-ask after a while).
            _ => Duration::from_secs(60),
        }
    }

    /// Sends one message up the session; the session ended when it cannot.
    async fn send(&self, body: agent_message::Body) -> Result<(), SessionError> {
        self.out.send(AgentMessage { body: Some(body) }).await.map_err(|_| self.ended())
    }

    /// Acts on one message of the coordinator.
    async fn on_message(&mut self, msg: CoordinatorMessage) -> Result<(), SessionError> {
        let ctx = &mut *self.ctx;
        match msg.body {
            Some(coordinator_message::Body::HeartbeatAck(ack)) => {
                if let Some((seq, at)) = self.sent_at
                    && seq == ack.seq
                {
                    let rtt = at.elapsed();
                    ctx.set_status(|s| s.last_rtt = Some(rtt));
                    self.sent_at = None;
                }
            }
            Some(coordinator_message::Body::Renewed(r)) => {
                if let Some(p) = self.pending_renewal.take() {
                    self.renewed(p, &r.certificate_pem)?;
                }
            }
            Some(coordinator_message::Body::Assignment(a)) => {
                if a.generation >= ctx.applied_generation {
                    ctx.applied_generation = a.generation;
                    let _ = ctx.directives.send(Directive::Assign(a));
                }
            }
            Some(coordinator_message::Body::OpenLogs(o)) => {
                let _ = ctx.directives.send(Directive::OpenLogs(o));
            }
            Some(coordinator_message::Body::CloseLogs(c)) => {
                let _ = ctx.directives.send(Directive::CloseLogs(c));
            }
            Some(coordinator_message::Body::EngineAction(e)) => {
                let _ = ctx.directives.send(Directive::Engine(e));
            }
            Some(coordinator_message::Body::TakeBackup(b)) => {
                let _ = ctx.directives.send(Directive::Backup(b));
            }
            Some(coordinator_message::Body::RestoreBackup(r)) => {
                let _ = ctx.directives.send(Directive::Restore(r));
            }
            Some(coordinator_message::Body::UpgradeAgent(u)) => {
                let _ = ctx.directives.send(Directive::Upgrade(u));
            }
            Some(coordinator_message::Body::SampleNow(now)) => {
                self.heartbeat(SampleTrigger::Requested, now.id).await?;
            }
            Some(coordinator_message::Body::Welcome(_)) | None => {}
        }
        Ok(())
    }

    /// The coordinator signed the renewal's CSR: store the new identity and use it.
    fn renewed(&mut self, pending: PendingKey, certificate_pem: &str) -> Result<(), SessionError> {
        let ctx = &mut *self.ctx;
        let id = pending.into_stored(certificate_pem)?;
        id.save(&ctx.config.state_dir)?;
        tracing::info!(serial = %id.facts.serial, not_after = id.facts.not_after_unix, "certificate renewed");
        ctx.set_status(|s| {
            s.renewals += 1;
            s.cert_serial = id.facts.serial.clone();
            s.cert_not_after_unix = id.facts.not_after_unix;
        });
        // [logs] New log connections present the renewed certificate.
        ctx.log_link.send_replace(Some(crate::logs::Link::new(self.addr, &ctx.ca, &id.tls)?));
        ctx.identity = Some(id);
        Ok(())
    }

    /// Sends a health sample with the roles' statuses and the Consul and Swarm views; says
    /// why it is sent now (`trigger`) and, when the coordinator asked, which request it answers.
    async fn heartbeat(&mut self, trigger: SampleTrigger, sample_now_id: u64) -> Result<(), SessionError> {
        let ctx = &mut *self.ctx;
        let mut sample = ctx.sampler.sample(ctx.docker.as_ref()).await;
        sample.trigger = trigger as i32;
        sample.sample_now_id = sample_now_id;
        sample.roles = ctx.roles.borrow().clone();
        let views = ctx.views.borrow().clone();
        sample.consul = views.consul;
        // Swarm's view is read fresh (leadership changes between reconcile passes); when the
        // Engine does not answer in time, the newest earlier read (its time says how old).
        let earlier = || {
            [ctx.swarm.borrow().clone(), views.swarm.clone()].into_iter().flatten().max_by_key(|v| v.observed_unix_ms)
        };
        sample.swarm = match &ctx.docker {
            // Bounded: `info` blocks while a manager has no quorum.
            Some(d) if sample.engine_ok => {
                tokio::time::timeout(crate::swarm_watch::READ_TIMEOUT, crate::roles::swarm::view(d))
                    .await
                    .ok()
                    .flatten()
                    .or_else(earlier)
            }
            _ => earlier(),
        };
        // The previous heartbeat's round trip, for the control plane's histogram.
        sample.last_rtt_us = ctx.status.borrow().last_rtt.map(|d| d.as_micros() as u64).unwrap_or(0);
        self.sent_at = Some((sample.seq, Instant::now()));
        self.send(agent_message::Body::Health(sample)).await
    }

    /// Asks the coordinator to sign a new key's CSR.
    async fn renew(&mut self) -> Result<(), SessionError> {
        let p = PendingKey::generate(&self.ctx.config.host_name)?;
        tracing::info!("renewing the client certificate");
        let body = agent_message::Body::Renew(v1::RenewRequest { csr_pem: p.csr_pem.clone() });
        self.pending_renewal = Some(p);
        self.send(body).await
    }
}
