//! The follower side of log streams: [`ControlPlane::follow_logs`] picks the sources a
//! `FollowLogsRequest` names, opens one stream per source on its host's agent through the
//! [`crate::control_plane::log_router`], and merges them into one stream of
//! [`v1::LogLineOut`]; dropping that stream closes them all.

use std::sync::{Arc, Weak};

use flotilla_proto::v1;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::control_plane::core::ControlPlane;
use crate::control_plane::log_router::{LogEvent, LogsError, Source, Target, role_container};

impl ControlPlane {
    /// The sources `req` names, host by host (see `FollowLogsRequest` in `admin.proto`).
    pub fn log_targets(&self, req: &v1::FollowLogsRequest) -> Result<Vec<Target>, LogsError> {
        let role = v1::Role::try_from(req.role).ok().filter(|r| *r != v1::Role::Unspecified);
        let records = self.store.hosts()?;
        let hosts: Vec<_> = if req.hosts.is_empty() {
            records.iter().filter(|r| self.sessions.view(&r.name).is_some()).collect()
        } else {
            let mut named = Vec::new();
            for h in &req.hosts {
                let rec = records.iter().find(|r| &r.name == h).ok_or_else(|| LogsError::UnknownHost(h.clone()))?;
                if self.sessions.view(h).is_none() {
                    return Err(LogsError::NotConnected(h.clone()));
                }
                named.push(rec);
            }
            named
        };
        let mut targets = Vec::new();
        for rec in hosts {
            let roles: Vec<v1::Role> = rec
                .roles
                .iter()
                .filter_map(|r| v1::Role::from_name(r))
                .filter(|r| role.is_none_or(|want| *r == want))
                .collect();
            if role.is_some() && roles.is_empty() {
                continue;
            }
            let mut sources: Vec<Source> = req.containers.iter().cloned().map(Source::Container).collect();
            if req.containers.is_empty() && !req.engine {
                for r in &roles {
                    let s = match role_container(*r) {
                        Some(c) => Source::Container(c.to_string()),
                        None => Source::Engine,
                    };
                    if !sources.contains(&s) {
                        sources.push(s);
                    }
                }
            }
            if req.engine && !sources.contains(&Source::Engine) {
                sources.push(Source::Engine);
            }
            targets.extend(sources.into_iter().map(|source| Target { host: rec.name.clone(), source }));
        }
        if targets.is_empty() {
            let why = match role {
                Some(r) => format!("no connected host of those asked runs the {} role", r.name()),
                None if req.hosts.is_empty() && self.sessions.count() == 0 => "no host is connected".to_string(),
                None => "the hosts run no role; name containers or ask for the Engine's journal".to_string(),
            };
            return Err(LogsError::Nothing(why));
        }
        Ok(targets)
    }

    /// Opens a log stream on every source `req` names and merges them. Each source's lines
    /// come in order, once each; its last item has `eof` or `error` set. The stream ends when
    /// every source has ended, or when the control plane shuts down. Dropping it closes the
    /// agents' streams.
    pub fn follow_logs(
        self: &Arc<Self>,
        req: v1::FollowLogsRequest,
    ) -> Result<impl Stream<Item = v1::LogLineOut> + Send + 'static, LogsError> {
        let targets = self.log_targets(&req)?;
        let mut opened = Opened { cp: Arc::downgrade(self), streams: Vec::new() };
        let mut parts = Vec::new();
        for t in targets {
            let stream_id = format!("{:032x}", rand::random::<u128>());
            let rx = self.logs.follow(&stream_id, &t.host);
            opened.streams.push((t.host.clone(), stream_id.clone()));
            let open = v1::OpenLogStream {
                stream_id,
                source: Some(match &t.source {
                    Source::Container(c) => v1::open_log_stream::Source::Container(c.clone()),
                    Source::Engine => v1::open_log_stream::Source::Engine(true),
                }),
                since_unix_ns: req.since_unix_ns,
                follow: req.follow,
                tail: req.tail,
            };
            let sent = self
                .sessions
                .send(&t.host, v1::CoordinatorMessage { body: Some(v1::coordinator_message::Body::OpenLogs(open)) });
            if sent {
                parts.push(source_lines(t, rx, req.since_unix_ns));
            } else {
                let end = LogEvent::End { error: Some(LogsError::NotConnected(t.host.clone()).to_string()) };
                parts.push(futures::stream::iter(vec![end_line(&t, end)]).boxed());
            }
        }
        let shutdown = self.shutdown.clone();
        Ok(futures::stream::select_all(parts)
            .take_until(shutdown.cancelled_owned())
            // The stream owns `opened`: dropping it closes the agents' streams.
            .map(move |line| {
                let _keep = &opened;
                line
            }))
    }
}

/// One source's events as lines, without repeats: only lines after the last one passed on.
fn source_lines(
    t: Target,
    rx: mpsc::Receiver<LogEvent>,
    since: i64,
) -> futures::stream::BoxStream<'static, v1::LogLineOut> {
    futures::stream::unfold(Some((rx, since)), move |state| {
        let t = t.clone();
        async move {
            let (mut rx, mut last) = state?;
            match rx.recv().await {
                Some(LogEvent::Lines(lines)) => {
                    let received = lines.len();
                    let out: Vec<_> = lines
                        .into_iter()
                        .filter(|l| {
                            let fresh = l.unix_ns > last;
                            last = last.max(l.unix_ns);
                            fresh
                        })
                        .map(|l| v1::LogLineOut {
                            host: t.host.clone(),
                            source: t.source.name().to_string(),
                            unix_ns: l.unix_ns,
                            stream: l.stream,
                            text: l.text,
                            eof: false,
                            error: String::new(),
                        })
                        .collect();
                    if out.len() < received {
                        tracing::debug!(host = %t.host, source = t.source.name(), repeated = received - out.len(), "dropped lines an agent sent again after resuming");
                    }
                    Some((out, Some((rx, last))))
                }
                Some(end @ LogEvent::End { .. }) => Some((vec![end_line(&t, end)], None)),
                None => None,
            }
        }
    })
    .flat_map(futures::stream::iter)
    .boxed()
}

fn end_line(t: &Target, end: LogEvent) -> v1::LogLineOut {
    let error = match end {
        LogEvent::End { error } => error.unwrap_or_default(),
        LogEvent::Lines(_) => String::new(),
    };
    v1::LogLineOut {
        host: t.host.clone(),
        source: t.source.name().to_string(),
        eof: error.is_empty(),
        error,
        ..Default::default()
    }
}

/// The streams a follower opened; closed (on the agents and in the router) when dropped.
struct Opened {
    cp: Weak<ControlPlane>,
    streams: Vec<(String, String)>,
}

impl Drop for Opened {
    fn drop(&mut self) {
        let Some(cp) = self.cp.upgrade() else { return };
        for (host, stream_id) in self.streams.drain(..) {
            cp.logs.unfollow(&stream_id);
            cp.sessions.send(
                &host,
                v1::CoordinatorMessage {
                    body: Some(v1::coordinator_message::Body::CloseLogs(v1::CloseLogStream { stream_id })),
                },
            );
        }
    }
}
