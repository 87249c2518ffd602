//! What a certificate holds open (issue 14): every session and `Logs` stream authenticated
//! with a host's certificate watches one cancellation token per (host, serial). Revoking the
//! host, re-enrolling it, or dropping a serial from the host's kept set cancels the tokens, and
//! with them every stream the old identity still holds — a stolen certificate's live streams
//! end when the operator acts, not when the thief hangs up.
//!
//! Ordering that makes it race-free: whoever invalidates a serial commits the store first and
//! cancels after; whoever opens a stream takes its token first and checks the store after
//! (`agent_api::authenticate`). A stream that checked before the commit took its token before
//! the cancel, so it is cancelled; one that checks after sees the commit and is refused.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub struct Grants {
    tokens: Mutex<HashMap<String, HashMap<String, CancellationToken>>>,
}

impl Grants {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, CancellationToken>>> {
        // Every critical section is one insert, remove or lookup: a poisoned lock is usable.
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The token of `host`'s certificate `serial`: cancelled when that certificate stops
    /// being valid for the host.
    pub fn token(&self, host: &str, serial: &str) -> CancellationToken {
        self.lock().entry(host.to_string()).or_default().entry(serial.to_string()).or_default().clone()
    }

    /// Ends everything `host` holds open, whatever the certificate (revocation, re-enrollment).
    /// Returns how many certificates had streams watching.
    pub fn cancel_host(&self, host: &str) -> usize {
        let Some(serials) = self.lock().remove(host) else { return 0 };
        serials.values().for_each(CancellationToken::cancel);
        serials.len()
    }

    /// Ends what `host` holds open with a certificate not in `kept` (a renewal dropped it).
    pub fn cancel_except(&self, host: &str, kept: &[&str]) {
        let mut all = self.lock();
        let Some(serials) = all.get_mut(host) else { return };
        serials.retain(|serial, token| {
            let keep = kept.contains(&serial.as_str());
            if !keep {
                token.cancel();
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_cancels_every_serial_and_renewal_only_the_dropped_ones() {
        let g = Grants::default();
        let (a, b, other) = (g.token("node0", "aa"), g.token("node0", "bb"), g.token("node1", "aa"));
        g.cancel_except("node0", &["bb", "cc"]);
        assert!(a.is_cancelled() && !b.is_cancelled());
        assert_eq!(g.cancel_host("node0"), 1);
        assert!(b.is_cancelled() && !other.is_cancelled());
        // A token taken after a cancel is a fresh one: the store check decides (module doc).
        assert!(!g.token("node0", "bb").is_cancelled());
    }
}
