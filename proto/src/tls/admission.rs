//! Who gets a place on a TLS port: the caps on connections, and which connection makes room
//! when one is reached.
//!
//! Every accepted connection holds a [`Slot`] until it closes. It starts *anonymous* (its
//! handshake is not done, or it presented no client certificate) and becomes
//! *authenticated* once rustls verified a client certificate. Three caps:
//! - all connections ([`AcceptLimits::max_connections`]);
//! - anonymous ones ([`AcceptLimits::max_anonymous`]);
//! - anonymous ones from one source ([`AcceptLimits::max_anonymous_per_source`]; a source is
//!   an IPv4 address or an IPv6 /64).
//!
//! When a cap is reached, the **oldest anonymous** connection it concerns (from the same
//! source for the per-source cap) is closed to make room: an idle flood cannot keep a newcomer
//! out, it only churns its own connections, and a newcomer that presents a certificate is
//! never evicted again. Only when every place is held by authenticated connections is a
//! newcomer refused. Authenticated connections are not capped per source: each is an
//! enrolled, revocable host (many can share an address behind NAT, or in a benchmark).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::tls::AcceptLimits;

/// The caps and counters of one port; shared by its accept loop and its connections.
#[derive(Debug)]
pub(crate) struct Admission {
    pub(crate) limits: AcceptLimits,
    state: Mutex<State>,
    pub(crate) counters: Counters,
}

/// What happened on a port since it opened.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) evicted: AtomicU64,
    pub(crate) handshakes_failed: AtomicU64,
    pub(crate) handshakes_timed_out: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) accept_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    /// Every connection holding a place: anonymous and authenticated.
    total: usize,
    /// Anonymous connections by age (ids grow), each with the switch that closes it.
    anonymous: BTreeMap<u64, Anonymous>,
    /// The anonymous connections of each source, by age.
    by_source: HashMap<IpAddr, BTreeSet<u64>>,
}

#[derive(Debug)]
struct Anonymous {
    source: IpAddr,
    evict: oneshot::Sender<()>,
}

/// Connections holding a place now.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Occupancy {
    pub(crate) total: usize,
    pub(crate) anonymous: usize,
}

impl Admission {
    pub(crate) fn new(limits: AcceptLimits) -> Self {
        Self { limits, state: Mutex::default(), counters: Counters::default() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the counts as they were: still usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn occupancy(&self) -> Occupancy {
        let s = self.lock();
        Occupancy { total: s.total, anonymous: s.anonymous.len() }
    }

    /// A place for a new connection from `peer`, making room if a cap is reached; `None`:
    /// refused (every place is held by authenticated connections).
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<(Slot, Eviction)> {
        let source = source_of(peer);
        let mut s = self.lock();
        if s.by_source.get(&source).is_some_and(|ids| ids.len() >= self.limits.max_anonymous_per_source) {
            let oldest = s.by_source.get(&source).and_then(|ids| ids.first().copied());
            if let Some(id) = oldest {
                self.evict(&mut s, id);
            }
        }
        if s.anonymous.len() >= self.limits.max_anonymous || s.total >= self.limits.max_connections {
            let oldest = s.anonymous.first_key_value().map(|(id, _)| *id);
            match oldest {
                Some(id) => self.evict(&mut s, id),
                None => {
                    Counters::bump(&self.counters.refused);
                    return None;
                }
            }
        }
        if s.total >= self.limits.max_connections {
            Counters::bump(&self.counters.refused);
            return None;
        }
        let id = s.next_id;
        s.next_id += 1;
        s.total += 1;
        let (evict, evicted) = oneshot::channel();
        s.anonymous.insert(id, Anonymous { source, evict });
        s.by_source.entry(source).or_default().insert(id);
        Some((Slot { id, admission: Arc::clone(self), authenticated: false }, Eviction(Some(evicted))))
    }

    /// Closes anonymous connection `id`: its place is free now, its task ends at its next poll.
    fn evict(&self, s: &mut State, id: u64) {
        if let Some(a) = remove_anonymous(s, id) {
            s.total -= 1;
            let _ = a.evict.send(());
            Counters::bump(&self.counters.evicted);
        }
    }

    fn release(&self, id: u64, authenticated: bool) {
        let mut s = self.lock();
        // An evicted connection gave its place back when it was evicted.
        if authenticated || remove_anonymous(&mut s, id).is_some() {
            s.total -= 1;
        }
    }
}

fn remove_anonymous(s: &mut State, id: u64) -> Option<Anonymous> {
    let a = s.anonymous.remove(&id)?;
    if let Some(ids) = s.by_source.get_mut(&a.source) {
        ids.remove(&id);
        if ids.is_empty() {
            s.by_source.remove(&a.source);
        }
    }
    Some(a)
}

/// The source a peer address counts against: the IPv4 address (also when mapped into IPv6),
/// or the IPv6 /64 (one host's usual allocation).
pub fn source_of(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// A connection's place on the port, given back when it is dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    id: u64,
    admission: Arc<Admission>,
    authenticated: bool,
}

impl Slot {
    /// The connection presented a verified client certificate: it is never evicted from now
    /// on. `false` when it was evicted before this (it must be closed).
    pub(crate) fn authenticate(&mut self) -> bool {
        let mut s = self.admission.lock();
        if remove_anonymous(&mut s, self.id).is_none() {
            return false;
        }
        self.authenticated = true;
        true
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.admission.counters
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.release(self.id, self.authenticated);
    }
}

/// Completes when the connection is evicted to make room; never for one that authenticated.
#[derive(Debug)]
pub(crate) struct Eviction(Option<oneshot::Receiver<()>>);

impl Eviction {
    pub(crate) fn poll_evicted(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(rx) = self.0.as_mut() else {
            return Poll::Pending;
        };
        match Pin::new(rx).poll(cx) {
            Poll::Ready(Ok(())) => {
                self.0 = None;
                Poll::Ready(())
            }
            // The switch is gone: the connection authenticated (or the port closed).
            Poll::Ready(Err(_)) => {
                self.0 = None;
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    }

    pub(crate) async fn evicted(&mut self) {
        std::future::poll_fn(|cx| self.poll_evicted(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(total: usize, anonymous: usize, per_source: usize) -> Arc<Admission> {
        Arc::new(Admission::new(AcceptLimits {
            max_connections: total,
            max_anonymous: anonymous,
            max_anonymous_per_source: per_source,
            handshake_timeout: Duration::from_secs(1),
            anonymous_idle: None,
            anonymous_lifetime: None,
            report_interval: Duration::from_secs(60),
        }))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn evicted(e: &mut Eviction) -> bool {
        let waker = std::task::Waker::noop();
        e.poll_evicted(&mut Context::from_waker(waker)).is_ready()
    }

    #[test]
    fn a_source_at_its_cap_loses_its_oldest_anonymous_connection_to_a_newcomer() {
        let a = limits(100, 100, 2);
        let (_s1, mut e1) = a.admit(ip("10.0.0.1")).expect("first");
        let (_s2, mut e2) = a.admit(ip("10.0.0.1")).expect("second");
        let (_other, mut e_other) = a.admit(ip("10.0.0.2")).expect("another source");
        let (_s3, mut e3) = a.admit(ip("10.0.0.1")).expect("third, making room");
        assert!(evicted(&mut e1), "the oldest of that source made room");
        assert!(!evicted(&mut e2) && !evicted(&mut e3) && !evicted(&mut e_other));
        assert_eq!(a.occupancy().total, 3);
        assert_eq!(a.counters.evicted.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn authenticated_connections_are_never_evicted_and_refusal_comes_only_when_they_fill_the_port() {
        let a = limits(2, 2, 2);
        let (mut s1, mut e1) = a.admit(ip("10.0.0.1")).expect("first");
        assert!(s1.authenticate());
        let (_s2, mut e2) = a.admit(ip("10.0.0.2")).expect("second");
        let (mut s3, _e3) = a.admit(ip("10.0.0.3")).expect("third evicts the anonymous second");
        assert!(evicted(&mut e2) && !evicted(&mut e1));
        assert!(s3.authenticate());
        assert!(a.admit(ip("10.0.0.4")).is_none(), "every place is authenticated: refused");
        assert_eq!(a.counters.refused.load(Ordering::Relaxed), 1);
        drop(s1);
        assert!(a.admit(ip("10.0.0.4")).is_some(), "a place was given back");
    }

    #[test]
    fn places_are_given_back_once_whether_closed_evicted_or_authenticated() {
        let a = limits(10, 1, 10);
        let (s1, _e1) = a.admit(ip("10.0.0.1")).expect("first");
        let (mut s2, _e2) = a.admit(ip("10.0.0.2")).expect("evicts the first");
        assert_eq!(a.occupancy().total, 1);
        drop(s1); // evicted already: nothing to give back twice
        assert_eq!(a.occupancy().total, 1);
        assert!(s2.authenticate());
        assert_eq!(a.occupancy().anonymous, 0);
        drop(s2);
        assert_eq!(a.occupancy().total, 0);
        let (mut s3, _e3) = a.admit(ip("10.0.0.3")).expect("third");
        let (_s4, _e4) = a.admit(ip("10.0.0.4")).expect("evicts the third");
        assert!(!s3.authenticate(), "an evicted connection cannot authenticate afterwards");
    }

    #[test]
    fn an_ipv6_source_is_its_64_and_a_mapped_ipv4_is_the_ipv4() {
        assert_eq!(source_of(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(source_of(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        let a = limits(10, 10, 1);
        let (_s1, mut e1) = a.admit(ip("2001:db8:1:2::1")).expect("first");
        let (_s2, _e2) = a.admit(ip("2001:db8:1:2::2")).expect("same /64");
        assert!(evicted(&mut e1));
    }
}
