//! Log streams: agents push log lines on their own `Logs` RPC (never on the session), and
//! the router hands them to whoever asked for that stream (a `coordinator logs` follower or
//! the failover drill). Buffers are bounded: a slow follower slows the agent's stream
//! (HTTP/2 flow control), it never grows memory.

use std::collections::HashMap;
use std::sync::Mutex;

use flotilla_proto::v1;
use tokio::sync::mpsc;

/// Lines buffered per stream between the agent's RPC and the follower.
pub const FOLLOWER_CAPACITY: usize = 256;

/// What a follower receives: batches of lines, then the end (with the source's error, if
/// it failed).
#[derive(Debug)]
pub enum LogEvent {
    Lines(Vec<v1::LogLine>),
    End { error: Option<String> },
}

#[derive(Default)]
pub struct LogRouter {
    routes: Mutex<HashMap<String, Route>>,
}

struct Route {
    host: String,
    tx: mpsc::Sender<LogEvent>,
}

impl LogRouter {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Route>> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a follower for `stream_id`, expected from `host`.
    pub fn follow(&self, stream_id: &str, host: &str) -> mpsc::Receiver<LogEvent> {
        let (tx, rx) = mpsc::channel(FOLLOWER_CAPACITY);
        self.lock().insert(
            stream_id.to_string(),
            Route {
                host: host.to_string(),
                tx,
            },
        );
        rx
    }

    pub fn unfollow(&self, stream_id: &str) {
        self.lock().remove(stream_id);
    }

    /// The follower's sender for `stream_id`, if it exists and belongs to `host` (a host
    /// cannot inject lines into another host's stream).
    pub fn route(&self, stream_id: &str, host: &str) -> Option<mpsc::Sender<LogEvent>> {
        self.lock()
            .get(stream_id)
            .filter(|r| r.host == host)
            .map(|r| r.tx.clone())
    }
}
