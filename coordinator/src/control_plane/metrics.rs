//! The control plane's Prometheus metrics (issue 18): one scrape target for the whole
//! cluster. Two kinds of series:
//!
//! - **counted as things happen** — [`Metrics`], held by the [`ControlPlane`]: enrollments,
//!   refusals by kind, log lines streamed and dropped, admin RPCs by method, heartbeat round
//!   trips (a histogram of what agents measured), heals done and failed, the last failover
//!   drill;
//! - **read at scrape time** — [`live::Live`], a prometheus-client `Collector` that reads the
//!   sessions' last samples, the store's host records and the agent port's counters when
//!   Prometheus asks, so nothing per host is kept twice and an idle cluster costs nothing.
//!
//! Rendered with the maintained `prometheus-client` crate (OpenMetrics text, which Prometheus
//! negotiates); nothing here writes the format by hand. No series carries a secret: host
//! names, roles, versions, addresses and numbers only (see docs/SECURITY.md).
//!
//! Heals: the `heal` operation calls [`Metrics::heal_finished`] once per heal it finishes
//! (`ok` = healed), which counts `flotilla_heals_total{outcome="done"|"failed"}`.

pub mod live;

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::control_plane::core::ControlPlane;

/// Heartbeat round-trip buckets, seconds: 0.5 ms … ~4 s.
const RTT_BUCKETS: [f64; 14] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

/// The last failover drill, as the drill reported it (`RecordDrill` on the admin API).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DrillRecord {
    /// When it finished, ms since the epoch (0: still running).
    pub finished_unix_ms: i64,
    pub started_unix_ms: i64,
    pub component: String,
    pub passed: bool,
    pub verdict: String,
    /// Phase → seconds from the fault (`detect`, `elect`, `api_back`, `workload`, …).
    pub timings: Vec<(String, f64)>,
    /// The timeline as it happened: seconds from the fault, what.
    pub timeline: Vec<(f64, String)>,
}

/// The most timeline events kept of one drill.
pub const DRILL_TIMELINE_MAX: usize = 256;

/// Counters the control plane bumps as things happen; cheap (atomics), lock-free except the
/// drill record.
pub struct Metrics {
    heartbeat_rtt: Histogram,
    enrollments: Family<KindLabel, Counter>,
    refusals: Family<KindLabel, Counter>,
    log_lines_streamed: Counter,
    log_lines_dropped: Counter,
    admin_rpcs: Family<MethodLabel, Counter>,
    heals: Family<OutcomeLabel, Counter>,
    drill: Mutex<Option<DrillRecord>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let heals = Family::<OutcomeLabel, Counter>::default();
        // Both outcomes exist from the start, so `increase()` sees the first heal.
        for outcome in ["done", "failed"] {
            drop(heals.get_or_create(&OutcomeLabel { outcome: outcome.into() }));
        }
        Self {
            heartbeat_rtt: Histogram::new(RTT_BUCKETS),
            enrollments: Family::default(),
            refusals: Family::default(),
            log_lines_streamed: Counter::default(),
            log_lines_dropped: Counter::default(),
            admin_rpcs: Family::default(),
            heals,
            drill: Mutex::new(None),
        }
    }
}

impl Metrics {
    /// One heartbeat's round trip as the agent measured it.
    pub fn heartbeat_round_trip(&self, seconds: f64) {
        self.heartbeat_rtt.observe(seconds);
    }

    /// A host enrolled: `again` when the host name was already known (a re-enrollment).
    pub fn enrolled(&self, again: bool) {
        let kind = if again { "again" } else { "new" };
        self.enrollments.get_or_create(&KindLabel { kind: kind.into() }).inc();
    }

    /// A refused call of `kind` (`enroll.refused.expired`, `logs.refused`, …; kinds are made
    /// by the control plane's code, never by a caller).
    pub fn refused(&self, kind: &str) {
        self.refusals.get_or_create(&KindLabel { kind: kind.to_string() }).inc();
    }

    /// `n` log lines passed to a follower.
    pub fn log_lines_streamed(&self, n: usize) {
        self.log_lines_streamed.inc_by(n as u64);
    }

    /// `n` log lines not passed on (their follower went away).
    pub fn log_lines_dropped(&self, n: usize) {
        self.log_lines_dropped.inc_by(n as u64);
    }

    /// One admin RPC, by method name (`other` for a path no method answers: callers cannot
    /// make new label values).
    pub fn admin_rpc(&self, method: &str) {
        self.admin_rpcs.get_or_create(&MethodLabel { method: method.to_string() }).inc();
    }

    /// A heal finished: `ok` = the host was healed (`flotilla_heals_total{outcome="done"}`),
    /// else `outcome="failed"`. The `heal` operation calls this once per heal.
    pub fn heal_finished(&self, ok: bool) {
        let outcome = if ok { "done" } else { "failed" };
        self.heals.get_or_create(&OutcomeLabel { outcome: outcome.into() }).inc();
    }

    /// Heals finished so far: (done, failed).
    pub fn heals(&self) -> (u64, u64) {
        let get = |o: &str| self.heals.get_or_create(&OutcomeLabel { outcome: o.into() }).get();
        (get("done"), get("failed"))
    }

    /// A failover drill started (or reported an event, or finished): replaces or updates the
    /// record of the last drill.
    pub fn drill_update(&self, f: impl FnOnce(&mut Option<DrillRecord>)) {
        let mut d = self.drill.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut d);
        if let Some(d) = d.as_mut() {
            let extra = d.timeline.len().saturating_sub(DRILL_TIMELINE_MAX);
            d.timeline.drain(..extra);
        }
    }

    /// The last drill's record, if any drill reported.
    pub fn drill(&self) -> Option<DrillRecord> {
        self.drill.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Registers the counted series in `registry`.
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "flotilla_heartbeat_round_trip_seconds",
            "Heartbeat round trips (health sample sent to its ack received), as agents measured them",
            self.heartbeat_rtt.clone(),
        );
        registry.register("flotilla_enrollments", "Hosts enrolled, by kind (new, again)", self.enrollments.clone());
        registry.register("flotilla_refusals", "Calls the control plane refused, by kind", self.refusals.clone());
        registry.register(
            "flotilla_log_lines_streamed",
            "Log lines passed to followers",
            self.log_lines_streamed.clone(),
        );
        registry.register(
            "flotilla_log_lines_dropped",
            "Log lines not passed on: their follower went away",
            self.log_lines_dropped.clone(),
        );
        registry.register("flotilla_admin_rpcs", "Admin API calls, by method", self.admin_rpcs.clone());
        registry.register("flotilla_heals", "Heals finished, by outcome (done, failed)", self.heals.clone());
    }
}

/// The registry a scrape encodes: the counted series of `cp` plus [`live::Live`] reading its
/// live state. Holds `cp` weakly, so the metrics listener never keeps a stopped control
/// plane alive.
pub fn registry(cp: &std::sync::Arc<ControlPlane>) -> Registry {
    let mut registry = Registry::default();
    cp.metrics.register(&mut registry);
    registry.register_collector(Box::new(live::Live { cp: std::sync::Arc::downgrade(cp) }));
    registry
}

/// The registry encoded in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    encode_sized(registry, 64 * 1024)
}

/// [`encode`] into a buffer of `capacity` bytes to start with (the last scrape's size: 10,000
/// hosts make about 8.6 MB, which a growing buffer would copy again and again).
pub fn encode_sized(registry: &Registry, capacity: usize) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(capacity);
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// The OpenMetrics text `encode` made, as the classic Prometheus text format (0.0.4) for a
/// client that does not ask for OpenMetrics (curl, `promtool check metrics`): the samples are
/// the same; a counter's `# HELP`/`# TYPE` name its `_total` samples, and `# EOF` goes.
pub fn to_classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) { "_total" } else { "" };
                out.push_str(&format!("{kind}{name}{suffix} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The most timings one drill report keeps.
const DRILL_TIMINGS_MAX: usize = 32;

impl ControlPlane {
    /// A failover drill's report (`RecordDrill`): a start replaces the last drill's record;
    /// events are appended; the end sets the verdict and timings. Text is cleaned and cut.
    pub fn record_drill(&self, r: flotilla_proto::v1::DrillReport) {
        use crate::control_plane::untrusted::{DETAIL_MAX, KIND_MAX, clean};
        let now = self.clock.now_ms();
        self.metrics.drill_update(|d| {
            if r.started || d.is_none() {
                *d = Some(DrillRecord { started_unix_ms: now, ..Default::default() });
            }
            let Some(d) = d.as_mut() else { return };
            if !r.component.is_empty() {
                d.component = clean(&r.component, KIND_MAX);
            }
            let fresh = r.events.iter().rev().take(DRILL_TIMELINE_MAX).rev();
            d.timeline.extend(fresh.map(|e| (e.t_s, clean(&e.what, DETAIL_MAX))));
            if r.finished {
                d.finished_unix_ms = now;
                d.passed = r.passed;
                d.verdict = clean(&r.verdict, DETAIL_MAX);
                let mut timings: Vec<(String, f64)> = r
                    .timings_s
                    .iter()
                    .filter(|(_, s)| s.is_finite())
                    .map(|(k, s)| (clean(k, KIND_MAX), *s))
                    .take(DRILL_TIMINGS_MAX)
                    .collect();
                timings.sort_by(|a, b| a.1.total_cmp(&b.1));
                d.timings = timings;
            }
        });
    }
}

#[cfg(test)]
mod tests;
