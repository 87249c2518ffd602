//! One operation at a time per cluster: `deploy`, `heal` (by hand or auto-heal's), `recover` and
//! `destroy` each hold `<state>/ops.lock` (an advisory `flock`, released by the kernel when
//! the process ends, even by SIGKILL) while they change hosts, so two of them never launch
//! the same host twice or destroy what the other is launching. The file names its holder.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another operation is changing cluster '{cluster}' now ({holder}); wait for it (`coordinator status` shows a heal's progress) and run this again"
    )]
    Busy { cluster: String, holder: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

/// Held until dropped.
#[derive(Debug)]
pub struct OpsLock {
    _file: File,
}

impl OpsLock {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("ops.lock")
    }

    /// Takes the lock now, or says who holds it.
    pub fn take(state_dir: &Path, cluster: &str, what: &str) -> Result<Self, LockError> {
        Self::wait(state_dir, cluster, what, Duration::ZERO)
    }

    /// Takes the lock, waiting at most `bound` for its holder to finish.
    pub fn wait(state_dir: &Path, cluster: &str, what: &str, bound: Duration) -> Result<Self, LockError> {
        let path = Self::path(state_dir);
        let io = |source| LockError::Io { path: path.clone(), source };
        let mut file =
            OpenOptions::new().create(true).read(true).write(true).truncate(false).open(&path).map_err(io)?;
        let deadline = Instant::now() + bound;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    let holder = match holder.trim() {
                        "" => "its holder did not say what it is".to_string(),
                        h => h.to_string(),
                    };
                    return Err(LockError::Busy { cluster: cluster.to_string(), holder });
                }
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        write!(file, "`coordinator {what}`, pid {}", std::process::id()).map_err(io)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_is_refused_naming_the_holder_until_the_first_lets_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = OpsLock::take(dir.path(), "c", "heal").expect("first");
        let e = OpsLock::take(dir.path(), "c", "deploy").expect_err("busy");
        let m = e.to_string();
        assert!(m.contains("`coordinator heal`") && m.contains(&std::process::id().to_string()), "{m}");
        drop(first);
        OpsLock::take(dir.path(), "c", "deploy").expect("free again");
    }
}
