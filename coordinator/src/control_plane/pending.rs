//! Requests to one host's agent that wait for its answer — an agent upgrade
//! ([`crate::control_plane::agent_upgrade`]), a restore ([`crate::control_plane::backup::restore`]).
//! Each is asked of one host on its session; its payload is fetched once, and its outcome
//! reported, by that host only (a request id alone is not enough: any other host asking is
//! told the request is unknown).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::control_plane::untrusted::{DETAIL_MAX, clean};

/// The most bytes one download chunk carries (an agent binary, a backup).
pub const CHUNK: usize = 512 * 1024;

/// How an asked host answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// It did it; its account (cleaned).
    Done(String),
    /// It could not; why (cleaned).
    Failed(String),
    /// It has no open session: nothing was sent.
    NotConnected,
    /// No answer within the time given (or its request was dropped).
    TimedOut,
}

/// A request id that `host` was not asked, or whose payload it fetched already.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("'{id}' was not asked of host '{host}' (or its bytes were fetched already)")]
pub struct NotAsked {
    pub id: String,
    pub host: String,
}

struct Entry<T> {
    host: String,
    /// Taken by the one fetch allowed.
    payload: Option<T>,
    done: oneshot::Sender<Answer>,
}

/// The requests of one kind under way, by request id.
pub struct Pending<T> {
    entries: Mutex<HashMap<String, Entry<T>>>,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending { entries: Mutex::new(HashMap::new()) }
    }
}

impl<T> Pending<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry<T>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records request `id` for `host` with its payload, has `send` deliver it (false: the
    /// host has no session), and waits up to `within` for the host's report.
    pub async fn ask(&self, id: &str, host: &str, payload: T, send: impl FnOnce() -> bool, within: Duration) -> Answer {
        let (done, rx) = oneshot::channel();
        self.lock().insert(id.to_string(), Entry { host: host.to_string(), payload: Some(payload), done });
        if !send() {
            self.lock().remove(id);
            return Answer::NotConnected;
        }
        let got = tokio::time::timeout(within, rx).await;
        self.lock().remove(id);
        match got {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) | Err(_) => Answer::TimedOut,
        }
    }

    /// Request `id`'s payload for `host`, once; then [`Pending::report`] applies.
    pub fn take(&self, id: &str, host: &str) -> Result<T, NotAsked> {
        self.lock()
            .get_mut(id)
            .filter(|e| e.host == host)
            .and_then(|e| e.payload.take())
            .ok_or_else(|| not_asked(id, host))
    }

    /// `host`'s report of how request `id` ended (an empty `error` is success), to the
    /// waiting [`Pending::ask`].
    pub fn report(&self, id: &str, host: &str, error: &str, detail: &str) -> Result<(), NotAsked> {
        let entry = {
            let mut entries = self.lock();
            match entries.get(id) {
                Some(e) if e.host == host => entries.remove(id),
                _ => None,
            }
        };
        let entry = entry.ok_or_else(|| not_asked(id, host))?;
        let answer = if error.is_empty() {
            Answer::Done(clean(detail, DETAIL_MAX))
        } else {
            Answer::Failed(clean(error, DETAIL_MAX))
        };
        let _ = entry.done.send(answer);
        Ok(())
    }
}

fn not_asked(id: &str, host: &str) -> NotAsked {
    NotAsked { id: clean(id, DETAIL_MAX), host: host.to_string() }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn only_the_asked_host_fetches_once_and_reports() {
        let p: Arc<Pending<Vec<u8>>> = Arc::default();
        let (sent, delivered) = oneshot::channel();
        let asked = {
            let p = p.clone();
            let send = move || sent.send(()).is_ok();
            tokio::spawn(async move { p.ask("r1", "node0", vec![1, 2], send, Duration::from_secs(30)).await })
        };
        delivered.await.expect("the request is sent once recorded");
        assert!(p.take("r1", "node1").is_err(), "another host may not fetch it");
        assert_eq!(p.take("r1", "node0"), Ok(vec![1, 2]));
        assert!(p.take("r1", "node0").is_err(), "a payload is fetched once");
        assert!(p.report("r1", "node1", "", "mine").is_err(), "only the asked host reports");
        p.report("r1", "node0", "", "installed\u{1b}[31m").expect("the asked host reports");
        assert_eq!(asked.await.expect("task"), Answer::Done("installed\\u{1b}[31m".into()));
        assert!(p.report("r1", "node0", "", "again").is_err(), "a request ends once");
    }

    #[tokio::test]
    async fn no_session_and_no_answer_are_told_apart() {
        let p: Pending<()> = Pending::default();
        assert_eq!(p.ask("a", "h", (), || false, Duration::from_secs(5)).await, Answer::NotConnected);
        assert_eq!(p.ask("b", "h", (), || true, Duration::from_millis(20)).await, Answer::TimedOut);
        assert!(p.lock().is_empty(), "nothing is left behind");
    }
}
