//! How often enrollments may be attempted: a token bucket per source (an IPv4 address or an
//! IPv6 /64, as `flotilla_proto::tls::source_of` groups them) and one for the whole control
//! plane. An attempt takes a token from both before its body is read (so a flood of
//! enrollments costs neither a decode nor a signature nor a commit); a successful
//! enrollment gives them back — a valid join token is the operator's say-so, so deploying a
//! thousand hosts (or `benches/sessions.sh` enrolling from one address) is never slowed —
//! while refusals spend them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

use crate::control_plane::settings::RateLimit;

/// Sources tracked at most; past it, the ones whose bucket is full again are forgotten (and
/// if that is not enough, all of them: the total bucket still holds).
const MAX_SOURCES: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Throttled {
    #[error("too many enrollment attempts from {0}; retry later")]
    Source(IpAddr),
    #[error("too many enrollment attempts; retry later")]
    Total,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(limit: RateLimit, now: Instant) -> Self {
        Self { tokens: f64::from(limit.burst), at: now }
    }

    fn refill(&mut self, limit: RateLimit, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limit.per_second).min(f64::from(limit.burst));
        self.at = now;
    }

    fn give_back(&mut self, limit: RateLimit) {
        self.tokens = (self.tokens + 1.0).min(f64::from(limit.burst));
    }
}

#[derive(Debug)]
pub struct EnrollLimit {
    per_source: RateLimit,
    total: RateLimit,
    buckets: Mutex<(Bucket, HashMap<IpAddr, Bucket>)>,
    throttled: AtomicU64,
}

impl EnrollLimit {
    pub fn new(per_source: RateLimit, total: RateLimit) -> Self {
        let now = Instant::now();
        Self {
            per_source,
            total,
            buckets: Mutex::new((Bucket::full(total, now), HashMap::new())),
            throttled: AtomicU64::new(0),
        }
    }

    /// Attempts refused since start.
    pub fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }

    /// Takes a token for an attempt from `source`, or says which bucket is empty.
    pub fn take(&self, source: IpAddr) -> Result<(), Throttled> {
        let now = Instant::now();
        let mut guard = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (total, sources) = &mut *guard;
        if sources.len() >= MAX_SOURCES && !sources.contains_key(&source) {
            forget_idle(sources, self.per_source, now);
        }
        let mine = sources.entry(source).or_insert_with(|| Bucket::full(self.per_source, now));
        mine.refill(self.per_source, now);
        total.refill(self.total, now);
        let refused = if mine.tokens < 1.0 {
            Some(Throttled::Source(source))
        } else if total.tokens < 1.0 {
            Some(Throttled::Total)
        } else {
            None
        };
        if let Some(t) = refused {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            return Err(t);
        }
        mine.tokens -= 1.0;
        total.tokens -= 1.0;
        Ok(())
    }

    /// Gives back the token of an attempt from `source` that enrolled.
    pub fn give_back(&self, source: IpAddr) {
        let mut guard = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (total, sources) = &mut *guard;
        total.give_back(self.total);
        if let Some(b) = sources.get_mut(&source) {
            b.give_back(self.per_source);
        }
    }
}

fn forget_idle(sources: &mut HashMap<IpAddr, Bucket>, limit: RateLimit, now: Instant) {
    sources.retain(|_, b| {
        b.refill(limit, now);
        b.tokens < f64::from(limit.burst)
    });
    if sources.len() >= MAX_SOURCES {
        sources.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_spend_a_sources_burst_and_time_refills_it() {
        let l = EnrollLimit::new(RateLimit { burst: 3, per_second: 1.0 }, RateLimit { burst: 100, per_second: 100.0 });
        for _ in 0..3 {
            l.take(ip("10.0.0.1")).expect("within the burst");
        }
        assert_eq!(l.take(ip("10.0.0.1")), Err(Throttled::Source(ip("10.0.0.1"))));
        l.take(ip("10.0.0.2")).expect("another source has its own bucket");
        tokio::time::advance(Duration::from_millis(1100)).await;
        l.take(ip("10.0.0.1")).expect("refilled");
        assert_eq!(l.throttled(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn successful_enrollments_give_their_tokens_back_and_the_total_bucket_holds_for_all() {
        let l = EnrollLimit::new(RateLimit { burst: 2, per_second: 0.0 }, RateLimit { burst: 3, per_second: 0.0 });
        for _ in 0..10 {
            l.take(ip("10.0.0.1")).expect("enrolls");
            l.give_back(ip("10.0.0.1"));
        }
        l.take(ip("10.0.0.2")).expect("a");
        l.take(ip("10.0.0.3")).expect("b");
        l.take(ip("10.0.0.4")).expect("c");
        assert_eq!(l.take(ip("10.0.0.5")), Err(Throttled::Total));
    }

    #[tokio::test(start_paused = true)]
    async fn sources_are_forgotten_once_their_bucket_is_full_again() {
        let l =
            EnrollLimit::new(RateLimit { burst: 1, per_second: 1.0 }, RateLimit { burst: 1_000_000, per_second: 0.0 });
        for i in 0..MAX_SOURCES as u32 {
            l.take(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i))).expect("first attempt");
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        l.take(ip("192.168.0.1")).expect("a new source");
        let guard = l.buckets.lock().expect("lock");
        assert_eq!(guard.1.len(), 1, "the refilled sources were forgotten");
    }
}
