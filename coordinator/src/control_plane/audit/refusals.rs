//! Refused calls counted in memory, per kind and source address, between two flushes to the
//! store (see [`super`]): no I/O, a bounded map.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::control_plane::store::{OTHER_SOURCE, RefusalRecord};
use crate::control_plane::untrusted::{DETAIL_MAX, NAME_MAX, clean};

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
