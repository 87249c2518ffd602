//! The registry of live agent sessions: at most one per host. It is how the rest of the
//! control plane talks to an agent ([`Sessions::send`]), closes one ([`Sessions::close`]),
//! and reads what agents last said (health, status) for `coordinator status` — or asks them
//! for a sample now ([`Sessions::request_samples`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use flotilla_proto::v1::{CoordinatorMessage, HealthSample, RoleStatus, SampleNow, coordinator_message};
use tokio::sync::{mpsc, watch};
use tonic::Status;

/// What goes down a session's outbound stream.
pub type Outbound = Result<CoordinatorMessage, Status>;

/// Capacity of a session's outbound queue. Control messages are few; a full queue means the
/// agent stopped reading, and the session is closed rather than buffering without bound.
pub const OUTBOUND_CAPACITY: usize = 64;

struct Live {
    session_id: u64,
    tx: mpsc::Sender<Outbound>,
    close: tokio_util::sync::CancellationToken,
    since_ms: i64,
    last_heartbeat_ms: Option<i64>,
    health: Option<HealthSample>,
    status: Vec<RoleStatus>,
    cert_not_after_unix: i64,
    /// The highest `SampleNow` id this session's agent has answered.
    answered: watch::Sender<u64>,
}

/// A snapshot of one live session.
#[derive(Clone, Debug)]
pub struct LiveView {
    pub since_ms: i64,
    pub last_heartbeat_ms: Option<i64>,
    pub health: Option<HealthSample>,
    pub status: Vec<RoleStatus>,
    pub cert_not_after_unix: i64,
}

/// Handed to a session when it registers; it must call [`Sessions::unregister`] with it.
pub struct Registration {
    pub session_id: u64,
    pub close: tokio_util::sync::CancellationToken,
}

#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, Live>>,
    next_id: AtomicU64,
    /// The last `SampleNow` id handed out.
    sample_now_id: AtomicU64,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        // A panic while holding this lock cannot leave the map half-updated (every critical
        // section is a single insert/remove/field write), so a poisoned lock is still usable.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers the session of `host`, replacing (and closing) an older one: an agent that
    /// reconnects after a network fault must not be shut out by its own half-open session.
    pub fn register(
        &self,
        host: &str,
        tx: mpsc::Sender<Outbound>,
        now_ms: i64,
        cert_not_after_unix: i64,
    ) -> Registration {
        let session_id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let close = tokio_util::sync::CancellationToken::new();
        let old = self.lock().insert(
            host.to_string(),
            Live {
                session_id,
                tx,
                close: close.clone(),
                since_ms: now_ms,
                last_heartbeat_ms: None,
                health: None,
                status: Vec::new(),
                cert_not_after_unix,
                answered: watch::Sender::new(0),
            },
        );
        if let Some(old) = old {
            let _ = old.tx.try_send(Err(Status::aborted("replaced by a newer session of the same host")));
            old.close.cancel();
        }
        Registration { session_id, close }
    }

    /// Removes the session if it is still the registered one.
    pub fn unregister(&self, host: &str, session_id: u64) {
        let mut live = self.lock();
        if live.get(host).is_some_and(|l| l.session_id == session_id) {
            live.remove(host);
        }
    }

    /// Closes the session of `host` with `status` as its final word. Returns whether one
    /// was open.
    pub fn close(&self, host: &str, status: Status) -> bool {
        let Some(l) = self.lock().remove(host) else {
            return false;
        };
        let _ = l.tx.try_send(Err(status));
        l.close.cancel();
        true
    }

    /// Queues `msg` for `host`. Returns false when the host has no session or its queue is
    /// full (then the session is closed: the agent will reconnect and get a fresh state).
    pub fn send(&self, host: &str, msg: CoordinatorMessage) -> bool {
        let mut live = self.lock();
        let Some(l) = live.get(host) else {
            return false;
        };
        match l.tx.try_send(Ok(msg)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if let Some(l) = live.remove(host) {
                    l.close.cancel();
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Asks every live session's agent for a health sample now (`SampleNow`). Returns the
    /// request's id and, for each host asked, a receiver of the highest id its session has
    /// answered: the host answered this request once that is at least the id (ids only grow,
    /// so a later request's answer is newer still). A receiver whose session ends errs.
    pub fn request_samples(&self) -> (u64, Vec<(String, watch::Receiver<u64>)>) {
        let id = self.sample_now_id.fetch_add(1, Ordering::Relaxed) + 1;
        // Subscribed before asking, so an answer cannot slip in between.
        let subscribed: Vec<_> = self.lock().iter().map(|(h, l)| (h.clone(), l.answered.subscribe())).collect();
        let msg = CoordinatorMessage { body: Some(coordinator_message::Body::SampleNow(SampleNow { id })) };
        let asked = subscribed.into_iter().filter(|(h, _)| self.send(h, msg.clone())).collect();
        (id, asked)
    }

    pub fn record_health(&self, host: &str, session_id: u64, sample: HealthSample, now_ms: i64) {
        if let Some(l) = self.lock().get_mut(host).filter(|l| l.session_id == session_id) {
            l.last_heartbeat_ms = Some(now_ms);
            if !sample.roles.is_empty() {
                l.status = sample.roles.clone();
            }
            let answers = sample.sample_now_id;
            l.health = Some(sample);
            // After the sample is stored: whoever waits for the answer reads it next.
            l.answered.send_if_modified(|a| {
                let newer = answers > *a;
                if newer {
                    *a = answers;
                }
                newer
            });
        }
    }

    pub fn record_status(&self, host: &str, session_id: u64, roles: Vec<RoleStatus>) {
        if let Some(l) = self.lock().get_mut(host).filter(|l| l.session_id == session_id) {
            l.status = roles;
        }
    }

    pub fn record_cert(&self, host: &str, session_id: u64, not_after_unix: i64) {
        if let Some(l) = self.lock().get_mut(host).filter(|l| l.session_id == session_id) {
            l.cert_not_after_unix = not_after_unix;
        }
    }

    pub fn view(&self, host: &str) -> Option<LiveView> {
        self.lock().get(host).map(|l| LiveView {
            since_ms: l.since_ms,
            last_heartbeat_ms: l.last_heartbeat_ms,
            health: l.health.clone(),
            status: l.status.clone(),
            cert_not_after_unix: l.cert_not_after_unix,
        })
    }

    /// Every live session's view, in one pass (a scrape, the status page).
    pub fn views(&self) -> Vec<(String, LiveView)> {
        self.lock()
            .iter()
            .map(|(h, l)| {
                let view = LiveView {
                    since_ms: l.since_ms,
                    last_heartbeat_ms: l.last_heartbeat_ms,
                    health: l.health.clone(),
                    status: l.status.clone(),
                    cert_not_after_unix: l.cert_not_after_unix,
                };
                (h.clone(), view)
            })
            .collect()
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Closes every session (shutdown).
    pub fn close_all(&self) {
        for (_, l) in self.lock().drain() {
            let _ = l.tx.try_send(Err(Status::unavailable("coordinator shutting down")));
            l.close.cancel();
        }
    }
}
