//! Per-slot host generations (issue 17): a host replaced onto a new image cannot share its
//! name with the host it replaces while both exist — Consul node names, Swarm hostnames, the
//! control plane's records and identities and lab container names are keyed by name — so each
//! slot of the plan (`manager0`, `node1`) has a current name: the slot's own (generation 0),
//! then `manager0-u1`, `manager0-u2`… Recorded in `<state>/hosts.json` (0600); no file means
//! generation 0 everywhere (every cluster deployed before, every test). The planner
//! ([`crate::ops::plan::plan`]) names hosts from it; the slot keeps its index (AWS: subnet).
//!
//! A replacement under way is recorded first ([`Replacement`]: slot, old and new name, target
//! image) so an interrupted `upgrade --image` continues it, and `deploy`/`heal` refuse until
//! it is finished.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The state file's name.
pub const FILE: &str = "hosts.json";

/// A host replacement under way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replacement {
    pub slot: String,
    /// The host being replaced (still running until the replacement is counted).
    pub old: String,
    /// Its replacement: the slot's current name from the moment this is recorded.
    pub new: String,
    /// The image the replacement is launched from (as the provider reports it).
    pub image: String,
}

/// Every slot's current name, and the replacement under way.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostNames {
    /// slot → current name; a slot absent here goes by its own name.
    #[serde(default)]
    pub current: BTreeMap<String, String>,
    #[serde(default)]
    pub pending: Option<Replacement>,
}

#[derive(Debug, thiserror::Error)]
pub enum HostNamesError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: {message} (the host generations `upgrade --image` records; restore it from a state export)", path.display())]
    Parse { path: PathBuf, message: String },
}

impl HostNames {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(FILE)
    }

    /// The recorded names; none recorded: every slot at generation 0.
    pub fn load(state_dir: &Path) -> Result<Self, HostNamesError> {
        let path = Self::path(state_dir);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| HostNamesError::Parse { path, message: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(HostNamesError::Io { path, source }),
        }
    }

    /// Writes the record atomically, 0600.
    pub fn save(&self, state_dir: &Path) -> Result<(), HostNamesError> {
        let path = Self::path(state_dir);
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| HostNamesError::Parse { path: path.clone(), message: e.to_string() })?;
        flotilla_proto::fs::write_private(&path, &json).map_err(|source| HostNamesError::Io { path, source })
    }

    /// The current name of `slot`.
    pub fn name_of(&self, slot: &str) -> String {
        self.current.get(slot).cloned().unwrap_or_else(|| slot.to_string())
    }

    /// Records the replacement of host `old` (the slot's next generation) onto `image`; the
    /// slot is named by the replacement from now on. Saved by the caller.
    pub fn begin(&mut self, old: &str, image: &str) -> Replacement {
        let r = Replacement {
            slot: slot_of(old).to_string(),
            old: old.to_string(),
            new: next_name(old),
            image: image.to_string(),
        };
        self.current.insert(r.slot.clone(), r.new.clone());
        self.pending = Some(r.clone());
        r
    }
}

/// The slot of a host name: `manager0-u2` → `manager0`; a generation-0 name is its slot.
pub fn slot_of(name: &str) -> &str {
    split(name).0
}

/// The generation of a host name: `manager0` → 0, `manager0-u2` → 2.
pub fn generation(name: &str) -> u32 {
    split(name).1
}

/// The name of the host that replaces `name`: `node1` → `node1-u1`, `node1-u1` → `node1-u2`.
pub fn next_name(name: &str) -> String {
    let (slot, g) = split(name);
    format!("{slot}-u{}", g + 1)
}

fn split(name: &str) -> (&str, u32) {
    if let Some((slot, g)) = name.rsplit_once("-u")
        && !g.is_empty()
        && !g.starts_with('0')
        && g.bytes().all(|b| b.is_ascii_digit())
        && let Ok(g) = g.parse()
    {
        return (slot, g);
    }
    (name, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_count_up_from_the_slot_name_and_parse_back() {
        assert_eq!(next_name("manager0"), "manager0-u1");
        assert_eq!(next_name("manager0-u1"), "manager0-u2");
        assert_eq!(next_name("node1-u9"), "node1-u10");
        assert_eq!((slot_of("node1-u10"), generation("node1-u10")), ("node1", 10));
        assert_eq!((slot_of("manager2"), generation("manager2")), ("manager2", 0));
        // Not a generation suffix: the whole name is the slot.
        for odd in ["node-u", "node-u01", "node-ux", "node-u1x"] {
            assert_eq!((slot_of(odd), generation(odd)), (odd, 0), "{odd}");
        }
    }

    #[test]
    fn a_replacement_renames_its_slot_and_survives_a_round_trip_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut n = HostNames::load(dir.path()).expect("absent file");
        assert_eq!(n, HostNames::default());
        assert_eq!(n.name_of("manager1"), "manager1");
        let r = n.begin("manager1", "img:2");
        assert_eq!((r.slot.as_str(), r.new.as_str()), ("manager1", "manager1-u1"));
        assert_eq!(n.name_of("manager1"), "manager1-u1");
        n.save(dir.path()).expect("save");
        assert_eq!(flotilla_proto::fs::mode_of(&HostNames::path(dir.path())).expect("mode"), 0o600);
        let back = HostNames::load(dir.path()).expect("load");
        assert_eq!(back, n);
        assert_eq!(back.pending, Some(r));
        let mut again = back.clone();
        let r2 = again.begin("manager1-u1", "img:3");
        assert_eq!((r2.old.as_str(), r2.new.as_str()), ("manager1-u1", "manager1-u2"));
    }
}
