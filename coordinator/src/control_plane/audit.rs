//! The audit trail's two ways in (issue 14):
//!
//! - [`ControlPlane::audit`]: one event, one committed transaction — for what happened
//!   (enrollments, renewals, revocations, an operator's mutations, with who made it).
//! - [`ControlPlane::refused`]: a refused call (a bad join token, a session or log stream
//!   without a valid certificate, a refused renewal). An attacker makes as many of these as
//!   they like, so they are never one event each: they are counted in memory per source
//!   address and kind ([`Refusals`]), and [`flush_refusals`] writes the counts — count, first
//!   and last seen, the last host name and reason — in one transaction every
//!   [`FLUSH_EVERY`], off the reactor, into the store's bounded `refusals` table.
//!
//! Text from outside is cleaned ([`super::untrusted`]) before it is logged or kept.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::control_plane::core::ControlPlane;
use crate::control_plane::store::{AuditEvent, OTHER_SOURCE, RefusalRecord};
use crate::control_plane::untrusted::{DETAIL_MAX, NAME_MAX, clean};

/// How often counted refusals are written to the store.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);
/// The most `(kind, source)` pairs counted between two flushes; past it, new sources count
/// as [`OTHER_SOURCE`].
pub const MAX_PENDING: usize = 4096;

/// Refused calls counted since the last flush.
#[derive(Default)]
pub struct Refusals {
    pending: Mutex<HashMap<(String, String), RefusalRecord>>,
    total: AtomicU64,
}

impl Refusals {
    /// Counts one refusal of `kind` from `source`.
    pub fn record(&self, kind: &str, source: &str, host: &str, detail: &str, now_ms: i64) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let one = RefusalRecord {
            kind: kind.to_string(),
            source: source.to_string(),
            count: 1,
            first_unix_ms: now_ms,
            last_unix_ms: now_ms,
            last_host_name: clean(host, NAME_MAX),
            last_detail: clean(detail, DETAIL_MAX),
        };
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = (one.kind.clone(), one.source.clone());
        if !pending.contains_key(&key) && pending.len() >= MAX_PENDING {
            key.1 = OTHER_SOURCE.to_string();
        }
        match pending.get_mut(&key) {
            Some(row) => row.absorb(&one),
            None => {
                pending.insert(key.clone(), RefusalRecord { source: key.1, ..one });
            }
        }
    }

    /// What was counted since the last call.
    pub fn take(&self) -> Vec<RefusalRecord> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *pending).into_values().collect()
    }

    /// Refusals counted since the control plane started.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// The source a refusal counts against: the address grouped as the port's caps group it
/// (an IPv6 /64), or `unknown`.
pub fn source_of(remote: Option<SocketAddr>) -> String {
    remote.map(|a| flotilla_proto::tls::source_of(a.ip())).map(|ip: IpAddr| ip.to_string()).unwrap_or("unknown".into())
}

impl ControlPlane {
    /// Records one event (committed before it returns) and logs it; `actor` is who made an
    /// admin mutation (empty for an agent's doing).
    pub fn audit_by(&self, kind: &str, host: &str, detail: impl Into<String>, peer: &str, actor: &str) {
        let event = AuditEvent {
            unix_ms: self.clock.now_ms(),
            kind: kind.to_string(),
            host_name: host.to_string(),
            detail: detail.into(),
            peer: peer.to_string(),
            actor: actor.to_string(),
        }
        .cleaned();
        tracing::info!(kind, host = %event.host_name, detail = %event.detail, peer = %event.peer, actor = %event.actor, "audit");
        if let Err(e) = self.store.audit(event) {
            tracing::error!(error = %e, "could not record an audit event");
        }
    }

    /// [`Self::audit_by`] for what an agent did.
    pub fn audit(&self, kind: &str, host: &str, detail: impl Into<String>, peer: &str) {
        self.audit_by(kind, host, detail, peer, "");
    }

    /// Counts a refused call (see the module's doc): no I/O, logged at DEBUG only.
    pub fn refused(&self, kind: &str, host: &str, detail: &str, remote: Option<SocketAddr>) {
        let source = source_of(remote);
        tracing::debug!(kind, %source, host = %clean(host, NAME_MAX), detail = %clean(detail, DETAIL_MAX), "refused");
        self.refusals.record(kind, &source, host, detail, self.clock.now_ms());
    }

    /// Writes the refusals counted since the last flush, in one transaction, on a blocking
    /// thread. Returns how many calls and rows it wrote.
    pub async fn flush_refusals_now(self: &Arc<Self>) -> (u64, usize) {
        let batch = self.refusals.take();
        if batch.is_empty() {
            return (0, 0);
        }
        let calls: u64 = batch.iter().map(|r| r.count).sum();
        let rows = batch.len();
        let cp = Arc::clone(self);
        let written =
            tokio::task::spawn_blocking(move || cp.store.write(|tx| batch.iter().try_for_each(|r| tx.add_refusals(r))))
                .await;
        match written {
            Ok(Ok(())) => tracing::info!(calls, sources = rows, "refused calls recorded (see `coordinator audit`)"),
            Ok(Err(e)) => tracing::error!(error = %e, calls, "could not record refused calls"),
            Err(e) => tracing::error!(error = %e, calls, "the refusal writer failed"),
        }
        (calls, rows)
    }
}

/// Flushes counted refusals every [`FLUSH_EVERY`] until the control plane shuts down, then
/// once more.
pub async fn flush_refusals(cp: Arc<ControlPlane>) {
    let shutdown = cp.shutdown.clone();
    loop {
        tokio::select! {
            () = tokio::time::sleep(FLUSH_EVERY) => { cp.flush_refusals_now().await; }
            () = shutdown.cancelled() => break,
        }
    }
    cp.flush_refusals_now().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_per_kind_and_source_with_first_and_last_seen() {
        let r = Refusals::default();
        for t in 0..1000 {
            r.record("enroll.refused.unknown", "127.0.0.1", &format!("h{t}\u{1b}[2J"), "bad token", t);
        }
        r.record("session.refused", "127.0.0.1", "", "no cert", 5);
        r.record("enroll.refused.unknown", "::", "x", "bad token", 7);
        let mut rows = r.take();
        rows.sort_by(|a, b| (&a.kind, &a.source).cmp(&(&b.kind, &b.source)));
        assert_eq!(rows.len(), 3);
        let flood = &rows[0];
        assert_eq!((flood.count, flood.first_unix_ms, flood.last_unix_ms), (1000, 0, 999));
        assert_eq!(flood.last_host_name, "h999\\u{1b}[2J");
        assert_eq!(r.total(), 1002);
        assert!(r.take().is_empty(), "taken once");
    }

    #[test]
    fn pending_sources_are_capped() {
        let r = Refusals::default();
        for i in 0..MAX_PENDING + 50 {
            r.record("logs.refused", &format!("s{i}"), "", "", 1);
        }
        let rows = r.take();
        assert_eq!(rows.len(), MAX_PENDING + 1);
        assert_eq!(rows.iter().find(|r| r.source == OTHER_SOURCE).map(|r| r.count), Some(50));
    }
}
