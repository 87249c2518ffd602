//! A recovery under way, recorded in `<state>/recovery.json` (0600) before recover's first
//! side effect and removed once the cluster is verified at full strength.
//!
//! Its steps are found again from the world (a forced swarm already leads, Consul already has
//! a leader, a lost host already replaced), but one thing is not: that a recovery was begun.
//! Once the survivor leads and enough managers are back, the swarm has its quorum again — and
//! without this record a rerun after an interruption would be refused ("still has a quorum")
//! with the rest of the lost hosts never replaced. With it, the rerun finishes the job
//! ([`super::Route::Resume`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Route;

/// The state file's name.
pub const FILE: &str = "recovery.json";

/// What was begun, and when (seconds since the Unix epoch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Begun {
    pub route: Route,
    pub at_unix: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{}: {message} (the record of a recovery under way; if no recovery is under way, remove it and run recover again)",
        path.display()
    )]
    Parse { path: PathBuf, message: String },
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// The recovery under way, if any.
pub fn load(state_dir: &Path) -> Result<Option<Begun>, RecordError> {
    let path = path(state_dir);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| RecordError::Parse { path, message: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RecordError::Io { path, source }),
    }
}

/// Records `route` as begun now (atomically, 0600). A rerun keeps the first record.
pub fn begin(state_dir: &Path, route: &Route) -> Result<Begun, RecordError> {
    if let Some(b) = load(state_dir)? {
        return Ok(b);
    }
    let at_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let b = Begun { route: route.clone(), at_unix };
    let path = path(state_dir);
    let json =
        serde_json::to_vec_pretty(&b).map_err(|e| RecordError::Parse { path: path.clone(), message: e.to_string() })?;
    flotilla_proto::fs::write_private(&path, &json).map_err(|source| RecordError::Io { path, source })?;
    Ok(b)
}

/// The recovery is over: the record goes.
pub fn end(state_dir: &Path) -> Result<(), RecordError> {
    let path = path(state_dir);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RecordError::Io { path, source: e }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begun_once_kept_across_reruns_private_and_ended() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path()).expect("load"), None);
        let first = Route::Survivor { host: "manager1".into(), gone: vec!["manager0".into(), "manager2".into()] };
        let b = begin(dir.path(), &first).expect("begin");
        assert_eq!(b.route, first);
        assert_eq!(flotilla_proto::fs::mode_of(&dir.path().join(FILE)).expect("mode") & 0o777, 0o600);
        // A rerun that would take another route keeps what was begun.
        let again = begin(dir.path(), &Route::Restore { gone: vec![] }).expect("begin again");
        assert_eq!(again, b);
        end(dir.path()).expect("end");
        assert_eq!(load(dir.path()).expect("load"), None);
        end(dir.path()).expect("ending twice is fine");
    }

    #[test]
    fn a_damaged_record_is_named_with_the_way_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE), b"{not json").expect("write");
        let e = load(dir.path()).expect_err("damaged").to_string();
        assert!(e.contains(FILE) && e.contains("remove it"), "{e}");
    }
}
