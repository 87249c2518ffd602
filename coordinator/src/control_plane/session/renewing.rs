//! Hosts with a certificate renewal in progress: at most one each (see [`super`]).

use std::collections::HashSet;
use std::sync::Mutex;

/// Hosts with a renewal in progress: at most one each.
#[derive(Default)]
pub struct Renewing {
    hosts: Mutex<HashSet<String>>,
}

/// A host's place in [`Renewing`], given back when dropped.
pub struct RenewSlot<'a> {
    renewing: &'a Renewing,
    host: String,
}

impl Renewing {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The host's slot, or `None` while another renewal of it is in progress.
    pub fn begin(&self, host: &str) -> Option<RenewSlot<'_>> {
        self.lock().insert(host.to_string()).then(|| RenewSlot { renewing: self, host: host.to_string() })
    }
}

impl Drop for RenewSlot<'_> {
    fn drop(&mut self) {
        self.renewing.lock().remove(&self.host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_renewal_per_host_at_a_time() {
        let r = Renewing::default();
        let slot = r.begin("node0").expect("first");
        assert!(r.begin("node0").is_none(), "a second renewal of node0 while the first runs");
        assert!(r.begin("node1").is_some(), "another host is not held up");
        drop(slot);
        assert!(r.begin("node0").is_some(), "free again once the first ended");
    }
}
