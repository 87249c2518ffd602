//! Log streams: agents push log lines on their own `Logs` RPC (never on the session), and
//! the router hands them to whoever asked for that stream (a `coordinator logs` follower or
//! the failover drill). Buffers are bounded: a slow follower slows the agent's stream
//! (HTTP/2 flow control), it never grows memory.
//!
//! The follower side, `ControlPlane::follow_logs` (in `core/follow_logs.rs`),: it picks the sources a
//! `FollowLogsRequest` names, opens one stream per source on its host's agent, and merges
//! them into one stream of [`v1::LogLineOut`]; dropping that stream closes them all.
//!
//! Exactly once: a source's lines carry strictly increasing `unix_ns`. An agent whose `Logs`
//! RPC broke re-sends from the last line the coordinator acknowledged, which may repeat
//! lines already routed; the follower drops every line not after the last it passed on. A
//! client whose stream was cut (the control plane restarted) asks again with the last
//! `unix_ns` it received as `since_unix_ns`, and the agent sends only lines after it.

use std::collections::HashMap;
use std::sync::Mutex;

use flotilla_proto::v1;
use tokio::sync::mpsc;

use crate::control_plane::store::StoreError;

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
        self.lock().insert(stream_id.to_string(), Route { host: host.to_string(), tx });
        rx
    }

    pub fn unfollow(&self, stream_id: &str) {
        self.lock().remove(stream_id);
    }

    /// The follower's sender for `stream_id`, if it exists and belongs to `host` (a host
    /// cannot inject lines into another host's stream).
    pub fn route(&self, stream_id: &str, host: &str) -> Option<mpsc::Sender<LogEvent>> {
        self.lock().get(stream_id).filter(|r| r.host == host).map(|r| r.tx.clone())
    }
}

/// The `source` of the Engine's journal in [`v1::LogLineOut`].
pub const ENGINE_SOURCE: &str = "engine";

/// The container each role runs, if it runs one (Swarm mode runs inside the Engine).
pub fn role_container(role: v1::Role) -> Option<&'static str> {
    match role {
        v1::Role::Consul => Some(flotilla_agent::roles::consul::CONTAINER),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    #[error("no host named '{0}' is known to this cluster")]
    UnknownHost(String),
    #[error("host '{0}' has no open session; its logs cannot be streamed now")]
    NotConnected(String),
    #[error("nothing to follow: {0}")]
    Nothing(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What to stream from one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Container(String),
    Engine,
}

impl Source {
    pub fn name(&self) -> &str {
        match self {
            Source::Container(c) => c,
            Source::Engine => ENGINE_SOURCE,
        }
    }
}

/// One source on one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub source: Source,
}
