//! `coordinator status`: the hosts of the cluster as the control plane sees them. The
//! admin API's answer becomes a [`StatusView`]; `--output json` prints that view and the
//! table ([`StatusView::table`]) renders from it. `env` reads the swarm leader from it too.

use std::time::Duration;

use clap::Args;
use flotilla_proto::v1;
use serde::Serialize;

use super::args::parse_duration;
use super::{CliError, Global, Output, json_line};
use crate::control_plane::untrusted::clean;

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
    /// Redraw every interval until interrupted.
    #[arg(long)]
    pub watch: bool,
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Ask every connected agent for a sample now (waits up to 3 s) instead of showing the
    /// last ones (taken every heartbeat, and at once when a host's swarm view changes).
    #[arg(long)]
    pub fresh: bool,
}

pub async fn run(g: &Global, args: StatusArgs) -> Result<(), CliError> {
    let mut admin = g.admin().await?;
    loop {
        let st = admin.status(v1::StatusRequest { fresh: args.fresh }).await?.into_inner();
        if args.watch && args.output == Output::Table {
            out!("\x1b[2J\x1b[H");
        }
        let view = StatusView::from(&st);
        match args.output {
            Output::Json => outln!("{}", json_line(&view)),
            Output::Table => outln!("{}", view.table()),
        }
        if !args.watch {
            return Ok(());
        }
        tokio::time::sleep(args.interval).await;
    }
}

/// `status --output json` (what [`status_json`] returns): the cluster, its hosts, and the
/// swarm's leader and managers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusView {
    pub cluster: String,
    pub agent_endpoint: String,
    pub heartbeat_interval_s: u32,
    pub hosts: Vec<HostView>,
    pub swarm: SwarmSummary,
    /// The agent port's limits and use (absent from control planes older than the field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<PortView>,
    /// Healing: the policy, what auto-heal is doing, hosts unreachable now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heal: Option<HealView>,
    /// Where the status page (`/`) and `/metrics` listen, `ip:port` (absent when the control
    /// plane serves neither, or is older than the field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<String>,
}

/// `status`'s view of healing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealView {
    /// "auto" or "off" (`[heal] mode`); absent before a deploy set it.
    pub mode: Option<&'static str>,
    pub grace_s: u32,
    /// idle | healing | backing-off | refused | off | unavailable
    pub state: String,
    pub message: String,
    pub since_unix_ms: i64,
    pub next_attempt_unix_ms: i64,
    pub replaced: u64,
    pub failed: u64,
    /// Hosts whose agents are unreachable now, seconds.
    pub unreachable_s: std::collections::BTreeMap<String, f64>,
}

impl From<&v1::HealStatus> for HealView {
    fn from(h: &v1::HealStatus) -> Self {
        HealView {
            mode: h.policy.map(|p| if p.auto { "auto" } else { "off" }),
            grace_s: h.policy.map(|p| p.grace_s).unwrap_or_default(),
            state: clean(&h.state, 64),
            message: clean(&h.message, 512),
            since_unix_ms: h.since_unix_ms,
            next_attempt_unix_ms: h.next_attempt_unix_ms,
            replaced: h.replaced,
            failed: h.failed,
            unreachable_s: h.unreachable_s.iter().map(|(k, v)| (clean(k, 128), *v)).collect(),
        }
    }
}

impl HealView {
    /// The line under the table: `heal: auto (grace 60 s), healing — manager1: launched …`.
    pub fn line(&self) -> String {
        let mode = match self.mode {
            Some(m) => format!("{m} (grace {} s)", self.grace_s),
            None => "not set".into(),
        };
        let mut line = format!("heal: {mode}, {}", self.state);
        if !self.message.is_empty() {
            line.push_str(&format!(" — {}", self.message));
        }
        if self.replaced + self.failed > 0 {
            line.push_str(&format!(
                " [{} replaced, {} failed runs since the control plane started]",
                self.replaced, self.failed
            ));
        }
        if !self.unreachable_s.is_empty() {
            let u: Vec<String> = self.unreachable_s.iter().map(|(h, s)| format!("{h} {s:.0} s")).collect();
            line.push_str(&format!(
                "
unreachable now: {}",
                u.join(", ")
            ));
        }
        line
    }
}

/// What the agent port may use and uses: descriptors, connection caps, refusals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PortView {
    pub descriptor_limit: u64,
    pub descriptors_in_use: u64,
    pub max_connections: u64,
    pub max_anonymous_connections: u64,
    pub connections: u64,
    pub anonymous_connections: u64,
    pub refused_connections: u64,
    pub evicted_connections: u64,
    pub failed_handshakes: u64,
    pub expired_connections: u64,
    pub throttled_enrollments: u64,
    /// Calls refused by the control plane, counted in `coordinator audit`.
    pub refused_calls: u64,
}

impl From<&v1::PortStatus> for PortView {
    fn from(p: &v1::PortStatus) -> Self {
        PortView {
            descriptor_limit: p.descriptor_limit,
            descriptors_in_use: p.descriptors_in_use,
            max_connections: p.max_connections,
            max_anonymous_connections: p.max_anonymous_connections,
            connections: p.connections,
            anonymous_connections: p.anonymous_connections,
            refused_connections: p.refused_connections,
            evicted_connections: p.evicted_connections,
            failed_handshakes: p.failed_handshakes,
            expired_connections: p.expired_connections,
            throttled_enrollments: p.throttled_enrollments,
            refused_calls: p.refused_calls,
        }
    }
}

impl PortView {
    /// One line under the table.
    fn line(&self) -> String {
        format!(
            "agent port: {}/{} connections ({}/{} without a certificate), descriptors {}/{}; since start: {} refused, {} evicted, {} failed handshakes, {} idle-closed, {} enrollments throttled, {} calls refused (see `coordinator audit`)",
            self.connections,
            self.max_connections,
            self.anonymous_connections,
            self.max_anonymous_connections,
            self.descriptors_in_use,
            self.descriptor_limit,
            self.refused_connections,
            self.evicted_connections,
            self.failed_handshakes,
            self.expired_connections,
            self.throttled_enrollments,
            self.refused_calls,
        )
    }
}

/// One host: its identity, session, facts, last health sample and roles.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostView {
    pub name: String,
    pub host_id: String,
    /// The assigned roles' names (numbers this build does not know are left out).
    pub roles: Vec<&'static str>,
    pub connected: bool,
    pub since_unix_ms: i64,
    /// `None` (null) when no heartbeat was ever received.
    pub last_heartbeat_age_s: Option<f64>,
    pub unreachable: bool,
    /// How old the host's swarm view is, seconds (`None`: it reported none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swarm_age_s: Option<f64>,
    pub revoked: bool,
    pub agent_version: String,
    /// The SHA-256 of the agent's executable (empty: an agent older than the field).
    pub agent_sha256: String,
    pub cert_not_after_unix_ms: i64,
    pub addresses: Vec<String>,
    pub instance_id: String,
    pub engine_version: String,
    pub health: Option<HealthView>,
    pub generation: u64,
    pub role_status: Vec<RoleStatusView>,
    pub swarm: Option<HostSwarmView>,
}

/// The host's last health sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthView {
    pub cpu_percent: f32,
    pub load1: f64,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
    pub uptime_s: u64,
    pub engine_ok: bool,
    pub engine_error: String,
}

/// One role's state as the agent last reported it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoleStatusView {
    /// The role's name; `unspecified` for a number this build does not know.
    pub role: &'static str,
    pub state: String,
    pub message: String,
}

/// The host's own view of its swarm membership.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostSwarmView {
    pub state: String,
    pub is_manager: bool,
    pub manager_status: String,
}

/// Swarm's view, as the managers' agents last reported it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SwarmSummary {
    /// The leader's host name; empty when no manager reports itself leader.
    pub leader: String,
    /// The leader's address as it sees it (`ip:port`); empty without a leader.
    pub leader_addr: String,
    pub managers: Vec<ManagerView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ManagerView {
    pub name: String,
    pub manager_status: String,
}

/// `status --output json`: an object with a `hosts` array.
pub fn status_json(st: &v1::StatusResponse) -> serde_json::Value {
    serde_json::to_value(StatusView::from(st)).unwrap_or_default()
}

impl From<&v1::StatusResponse> for StatusView {
    fn from(st: &v1::StatusResponse) -> Self {
        let mut swarm = SwarmSummary::default();
        for h in &st.hosts {
            if let Some(sw) = h.health.as_ref().and_then(|s| s.swarm.as_ref()) {
                if sw.is_manager {
                    swarm
                        .managers
                        .push(ManagerView { name: h.name.clone(), manager_status: sw.manager_status.clone() });
                }
                if sw.manager_status == "leader" {
                    swarm.leader = h.name.clone();
                    swarm.leader_addr = sw.leader_addr.clone();
                }
            }
        }
        StatusView {
            cluster: st.cluster.clone(),
            agent_endpoint: st.agent_endpoint.clone(),
            heartbeat_interval_s: st.heartbeat_interval_s,
            hosts: st.hosts.iter().map(HostView::from).collect(),
            port: st.port.as_ref().map(PortView::from),
            heal: st.heal.as_ref().map(HealView::from),
            metrics_address: Some(clean(&st.metrics_address, 64)).filter(|a| !a.is_empty()),
            swarm,
        }
    }
}

impl From<&v1::HostStatus> for HostView {
    fn from(h: &v1::HostStatus) -> Self {
        let f = h.facts.clone().unwrap_or_default();
        HostView {
            name: h.name.clone(),
            host_id: h.host_id.clone(),
            roles: h.roles.iter().filter_map(|r| v1::Role::try_from(*r).ok()).map(v1::Role::name).collect(),
            connected: h.connected,
            since_unix_ms: h.since_unix_ms,
            last_heartbeat_age_s: (h.last_heartbeat_age_s >= 0.0 || h.last_heartbeat_age_s.is_nan())
                .then_some(h.last_heartbeat_age_s),
            unreachable: h.unreachable,
            swarm_age_s: (h.swarm_age_s > 0.0).then_some(h.swarm_age_s),
            revoked: h.revoked,
            agent_version: h.agent_version.clone(),
            agent_sha256: h.agent_sha256.clone(),
            cert_not_after_unix_ms: h.cert_not_after_unix_ms,
            addresses: f.private_addresses,
            instance_id: f.instance_id,
            engine_version: f.engine_version,
            health: h.health.as_ref().map(HealthView::from),
            generation: h.generation,
            role_status: h
                .role_status
                .iter()
                .map(|s| RoleStatusView {
                    role: v1::Role::try_from(s.role).map(v1::Role::name).unwrap_or("unspecified"),
                    state: v1::RoleState::name_of(s.state),
                    message: s.message.clone(),
                })
                .collect(),
            swarm: h.health.as_ref().and_then(|s| s.swarm.as_ref()).map(|s| HostSwarmView {
                state: s.local_state.clone(),
                is_manager: s.is_manager,
                manager_status: s.manager_status.clone(),
            }),
        }
    }
}

impl From<&v1::HealthSample> for HealthView {
    fn from(s: &v1::HealthSample) -> Self {
        HealthView {
            cpu_percent: s.cpu_percent,
            load1: s.load1,
            memory_used_bytes: s.memory_used_bytes,
            memory_total_bytes: s.memory_total_bytes,
            disk_used_bytes: s.disk_used_bytes,
            disk_total_bytes: s.disk_total_bytes,
            uptime_s: s.uptime_s,
            engine_ok: s.engine_ok,
            engine_error: s.engine_error.clone(),
        }
    }
}

impl StatusView {
    /// The `status` table: a title line, then one row per host.
    pub fn table(&self) -> String {
        let mut t = comfy_table::Table::new();
        t.load_style(comfy_table::presets::NOTHING);
        t.set_header(["HOST", "ROLES", "SWARM", "SESSION", "HEARTBEAT", "CPU", "LOAD", "MEM", "DISK", "ENGINE"]);
        for h in &self.hosts {
            // Cells carry what agents reported (swarm state, roles): a compromised host
            // must not reach the operator's terminal with escape sequences.
            t.add_row(h.row().map(|cell| clean(&cell, usize::MAX)));
        }
        let mut port = self.endpoint_line();
        port.push_str(&self.metrics_line());
        port.push_str(&self.port.as_ref().map(|p| format!("\n{}", p.line())).unwrap_or_default());
        port.push_str(&self.heal.as_ref().map(|h| format!("\n{}", h.line())).unwrap_or_default());
        port.push_str(&self.agents_line());
        if let Some(age) = self.hosts.iter().filter_map(|h| h.swarm_age_s).reduce(f64::max) {
            port.push_str(&format!("\nswarm view: at most {age:.1} s old (`status --fresh` asks the agents now)"));
        }
        format!("cluster {} — {} hosts\n{t}{port}", self.cluster, self.hosts.len())
    }
}

impl StatusView {
    /// Which agent builds run (issue 17): version and the first 12 hex digits of each
    /// build's SHA-256 with the hosts running it; nothing when no agent reported a digest.
    fn agents_line(&self) -> String {
        let mut builds: std::collections::BTreeMap<(String, String), Vec<&str>> = Default::default();
        for h in self.hosts.iter().filter(|h| !h.agent_sha256.is_empty()) {
            let short = h.agent_sha256.chars().take(12).collect::<String>();
            builds.entry((h.agent_version.clone(), short)).or_default().push(&h.name);
        }
        let one =
            |((v, d), hosts): (&(String, String), &Vec<&str>)| format!("{v} (sha256 {d}…) on {}", hosts.join(", "));
        match builds.len() {
            0 => String::new(),
            1 => format!("\nagent: {}", builds.iter().map(one).collect::<String>()),
            _ => format!(
                "\nagents: {} — mixed builds (`coordinator upgrade --agent` puts every host on one)",
                builds.iter().map(one).collect::<Vec<_>>().join("; ")
            ),
        }
    }

    /// Where hosts reach the control plane: its own port on this machine (issue 13).
    fn endpoint_line(&self) -> String {
        if self.agent_endpoint.is_empty() {
            return String::new();
        }
        format!("\ncontrol plane: hosts dial {} (this cluster's own port)", self.agent_endpoint)
    }

    /// Where the status page and `/metrics` are (issue 18).
    fn metrics_line(&self) -> String {
        match &self.metrics_address {
            Some(a) => format!("\nstatus page: http://{a}/ (Prometheus: http://{a}/metrics)"),
            None => String::new(),
        }
    }
}

impl HostView {
    /// The host's cells, in the order of [`StatusView::table`]'s header.
    fn row(&self) -> [String; 10] {
        let [cpu, load, mem, disk, engine] = match &self.health {
            Some(s) => [
                format!("{:.0}%", s.cpu_percent),
                format!("{:.2}", s.load1),
                pct(s.memory_used_bytes, s.memory_total_bytes),
                pct(s.disk_used_bytes, s.disk_total_bytes),
                if s.engine_ok { "ok".to_string() } else { "DOWN".to_string() },
            ],
            None => ["-".into(), "-".into(), "-".into(), "-".into(), "-".into()],
        };
        let roles = self.roles_cell();
        [
            self.name.clone(),
            if roles.is_empty() { "-".into() } else { roles },
            self.swarm_cell(),
            self.session_cell(),
            match self.last_heartbeat_age_s {
                Some(age) => format!("{age:.1}s ago"),
                None => "-".to_string(),
            },
            cpu,
            load,
            mem,
            disk,
            engine,
        ]
    }

    fn session_cell(&self) -> String {
        if self.revoked {
            "revoked".to_string()
        } else if self.connected && !self.unreachable {
            format!("up {}", ago(self.since_unix_ms))
        } else if self.connected {
            "unreachable".to_string()
        } else {
            format!("down (seen {} ago)", ago(self.since_unix_ms))
        }
    }

    /// Each role with its state as the agent last reported it (e.g. "manager:running").
    fn roles_cell(&self) -> String {
        self.roles
            .iter()
            .map(|r| {
                let state = self
                    .role_status
                    .iter()
                    .find(|s| s.role == *r)
                    .map(|s| s.state.clone())
                    .unwrap_or_else(|| "pending".into());
                format!("{r}:{state}")
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    fn swarm_cell(&self) -> String {
        self.swarm
            .as_ref()
            .map(|s| match (s.state.as_str(), s.manager_status.as_str()) {
                ("active", "") => "worker".to_string(),
                ("active", m) => m.to_string(),
                (other, _) => other.to_string(),
            })
            .unwrap_or_else(|| "-".into())
    }
}

fn pct(used: u64, total: u64) -> String {
    if total == 0 { "-".into() } else { format!("{:.0}%", used as f64 * 100.0 / total as f64) }
}

fn ago(unix_ms: i64) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let s = ((now - unix_ms).max(0) / 1000) as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

#[cfg(test)]
mod tests;
