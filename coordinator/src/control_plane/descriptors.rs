//! The control plane's file descriptors: its limit (RLIMIT_NOFILE, raised to the hard limit
//! at start), how many it has open, and the agent port's connection caps derived from the
//! limit so that the control plane never reaches it (issue 14: 20,000 idle connections used
//! to exhaust it, and then neither agents nor the operator's admin socket could connect).

use std::time::Duration;

use flotilla_proto::tls::AcceptLimits;

use crate::control_plane::settings::PortLimits;

/// Descriptors kept out of the agent port's reach, at least: the store, the log, the
/// listeners, the admin socket's clients (status, logs followers), the runtime's own.
pub const RESERVED_MIN: u64 = 256;
/// ... or this fraction of the limit, whichever is more (but never more than half).
pub const RESERVED_FRACTION: u64 = 10;
/// Connections without a client certificate: at most this many whatever the limit (each
/// may carry a 64 KiB enrollment; the rest of the port is for hosts' sessions).
pub const MAX_ANONYMOUS: usize = 4096;

/// Raises the soft descriptor limit to the hard limit; returns the soft limit in force (as
/// it was when raising fails, e.g. on a system without RLIMIT_NOFILE).
pub fn raise_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    // "Unlimited" is not a real descriptor limit: Linux caps it at fs.nr_open.
    let cap = |v: Option<u64>| v.unwrap_or(1 << 20);
    let hard = cap(current.maximum);
    let soft = cap(current.current);
    if soft >= hard {
        return soft;
    }
    match setrlimit(Resource::Nofile, Rlimit { current: Some(hard), maximum: current.maximum }) {
        Ok(()) => hard,
        Err(e) => {
            tracing::warn!(soft, hard, error = %e, "could not raise the descriptor limit");
            soft
        }
    }
}

/// Descriptors this process has open (`/proc/self/fd`); `None` where that cannot be read.
pub fn in_use() -> Option<u64> {
    // The directory's own descriptor, open while it is read, is not counted.
    std::fs::read_dir("/proc/self/fd").ok().map(|d| (d.count() as u64).saturating_sub(1))
}

/// The agent port's limits for a process allowed `limit` descriptors: `limits`, with the
/// connection caps it leaves open derived from the limit.
pub fn accept_limits(limits: &PortLimits, limit: u64) -> AcceptLimits {
    let reserved = RESERVED_MIN.max(limit / RESERVED_FRACTION).min(limit / 2);
    let derived = usize::try_from(limit - reserved).unwrap_or(usize::MAX).max(1);
    let max_connections = limits.max_connections.unwrap_or(derived).min(derived);
    let max_anonymous = limits.max_anonymous.unwrap_or(MAX_ANONYMOUS).min(max_connections);
    AcceptLimits {
        max_connections,
        max_anonymous,
        max_anonymous_per_source: limits.max_anonymous_per_source.min(max_anonymous),
        handshake_timeout: limits.handshake_timeout,
        anonymous_idle: Some(limits.anonymous_idle),
        anonymous_lifetime: Some(limits.anonymous_lifetime),
        report_interval: Duration::from_secs(60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_leave_a_tenth_of_the_limit_and_never_less_than_256_descriptors() {
        let d = PortLimits::default();
        let l = accept_limits(&d, 20_000);
        assert_eq!((l.max_connections, l.max_anonymous, l.max_anonymous_per_source), (18_000, 4096, 128));
        let l = accept_limits(&d, 1024);
        assert_eq!((l.max_connections, l.max_anonymous), (768, 768));
        let l = accept_limits(&d, 300);
        assert_eq!(l.max_connections, 150, "at most half is reserved");
    }

    #[test]
    fn configured_caps_apply_but_never_above_what_the_limit_allows() {
        let mut d = PortLimits { max_connections: Some(100), max_anonymous: Some(10), ..Default::default() };
        let l = accept_limits(&d, 20_000);
        assert_eq!((l.max_connections, l.max_anonymous, l.max_anonymous_per_source), (100, 10, 10));
        d.max_connections = Some(1_000_000);
        assert_eq!(accept_limits(&d, 20_000).max_connections, 18_000);
    }

    #[test]
    fn the_limit_is_raised_to_the_hard_limit_and_descriptors_are_counted() {
        let limit = raise_limit();
        let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum.unwrap_or(1 << 20);
        assert_eq!(limit, hard);
        let open = in_use().expect("/proc/self/fd");
        assert!(open >= 3 && open < limit, "{open} open of {limit}");
    }
}
