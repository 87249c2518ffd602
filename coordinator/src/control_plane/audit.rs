//! The audit trail's two ways in (issue 14):
//!
//! - [`ControlPlane::audit`]: one event, one committed transaction — for what happened
//!   (enrollments, renewals, revocations, an operator's mutations, with who made it).
//! - [`ControlPlane::refused`]: a refused call (a bad join token, a session or log stream
//!   without a valid certificate, a refused renewal). An attacker makes as many of these as
//!   they like, so they are never one event each: they are counted in memory per source
//!   address and kind ([`refusals::Refusals`]), and [`flush_refusals`] writes the counts — count, first
//!   and last seen, the last host name and reason — in one transaction every
//!   [`FLUSH_EVERY`], off the reactor, into the store's bounded `refusals` table.
//!
//! Text from outside is cleaned ([`super::untrusted`]) before it is logged or kept.

pub mod refusals;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::control_plane::core::ControlPlane;
use crate::control_plane::store::AuditEvent;
use crate::control_plane::untrusted::{DETAIL_MAX, NAME_MAX, clean};
use refusals::source_of;

/// How often counted refusals are written to the store.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);

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
        self.metrics.refused(kind);
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
