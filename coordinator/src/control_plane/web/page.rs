//! The status page: server-rendered HTML of a [`View`], refreshed in place by a small script
//! (`page.js`, compiled in) from `/state.json`, with a live log tail over server-sent events.
//! Every string is HTML-escaped ([`escape`]) after [`clean`] made it printable; the script
//! sets text with `textContent` only.

use serde::Serialize;

use crate::control_plane::metrics::live::{HostRow, Snapshot};
use crate::control_plane::store::AuditEvent;
use crate::control_plane::untrusted::{DETAIL_MAX, KIND_MAX, NAME_MAX, clean};
use flotilla_proto::v1;

pub const SCRIPT: &str = include_str!("page.js");
pub const STYLE: &str = include_str!("page.css");

/// Everything the page shows.
#[derive(Clone, Debug, Serialize)]
pub struct View {
    pub snapshot: Snapshot,
    /// (host, address) of the Swarm leader(s) hosts report.
    pub swarm_leaders: Vec<(String, String)>,
    pub managers_reachable: usize,
    pub managers_assigned: usize,
    /// (address, voters).
    pub consul_leader: Option<(String, usize)>,
    pub audit: Vec<AuditRow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AuditRow {
    pub unix_ms: i64,
    pub kind: String,
    pub host: String,
    pub detail: String,
    pub actor: String,
}

/// One line of the live tail, cleaned.
#[derive(Clone, Debug, Serialize)]
pub struct LogLine {
    pub host: String,
    pub source: String,
    pub unix_ns: i64,
    pub text: String,
    pub error: String,
}

impl From<&v1::LogLineOut> for LogLine {
    fn from(l: &v1::LogLineOut) -> Self {
        Self {
            host: clean(&l.host, NAME_MAX),
            source: clean(&l.source, NAME_MAX),
            unix_ns: l.unix_ns,
            text: clean(&l.text, 4096),
            error: clean(&l.error, DETAIL_MAX),
        }
    }
}

impl View {
    pub fn new(snapshot: Snapshot, audit: Vec<AuditEvent>) -> Self {
        let swarm_leaders = snapshot.swarm_leaders().into_iter().map(|(h, a)| (h.to_string(), a.to_string())).collect();
        let consul_leader = snapshot.consul_leader().map(|(l, v)| (l.to_string(), v));
        // Newest first.
        let audit = audit
            .into_iter()
            .rev()
            .map(|e| AuditRow {
                unix_ms: e.unix_ms,
                kind: clean(&e.kind, KIND_MAX),
                host: clean(&e.host_name, NAME_MAX),
                detail: clean(&e.detail, DETAIL_MAX),
                actor: clean(&e.actor, NAME_MAX),
            })
            .collect();
        Self {
            managers_reachable: snapshot.managers_reachable(),
            managers_assigned: snapshot.managers_assigned(),
            swarm_leaders,
            consul_leader,
            audit,
            snapshot,
        }
    }
}

/// `s` safe inside HTML text and double-quoted attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The whole page.
pub fn render(v: &View) -> String {
    let cluster = escape(&v.snapshot.cluster);
    let mut out = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>flotilla · {cluster}</title><link rel=\"stylesheet\" href=\"/assets/page.css\"></head>\n\
         <body><header><h1>flotilla · <span id=\"cluster\">{cluster}</span></h1>\
         <p class=\"note\">read-only · refreshed every 2 s · <span id=\"updated\"></span></p></header>\n"
    );
    out.push_str(&leaders(v));
    out.push_str(&hosts(&v.snapshot.hosts));
    out.push_str(&drill(v));
    out.push_str(&log_tail(&v.snapshot.hosts));
    out.push_str(&audit(&v.audit));
    out.push_str("<script src=\"/assets/page.js\"></script>\n</body></html>\n");
    out
}

fn leaders(v: &View) -> String {
    let swarm = if v.swarm_leaders.is_empty() {
        "none reported".to_string()
    } else {
        v.swarm_leaders.iter().map(|(h, a)| format!("{} ({})", escape(h), escape(a))).collect::<Vec<_>>().join(", ")
    };
    let (consul, voters) = match &v.consul_leader {
        Some((l, n)) => (escape(l), n.to_string()),
        None => ("none reported".to_string(), "0".to_string()),
    };
    format!(
        "<section id=\"leaders\"><h2>Leaders</h2><dl>\
         <dt>Swarm leader</dt><dd id=\"swarm-leader\">{swarm}</dd>\
         <dt>Managers reachable</dt><dd id=\"managers-reachable\">{} of {}</dd>\
         <dt>Consul leader</dt><dd id=\"consul-leader\">{consul}</dd>\
         <dt>Consul voters</dt><dd id=\"consul-voters\">{voters}</dd></dl></section>\n",
        v.managers_reachable, v.managers_assigned
    )
}

/// The table's cells for one host, as text (the script builds the same cells).
pub fn host_cells(h: &HostRow) -> Vec<String> {
    let state = match (h.revoked, h.connected, h.reachable) {
        (true, _, _) => "revoked",
        (_, false, _) => "disconnected",
        (_, true, false) => "unreachable",
        _ => "connected",
    };
    let pct = |u: Option<u64>, t: Option<u64>| match (u, t) {
        (Some(u), Some(t)) if t > 0 => format!("{:.0}%", u as f64 * 100.0 / t as f64),
        _ => "-".to_string(),
    };
    vec![
        h.name.clone(),
        h.roles.join(", "),
        state.to_string(),
        h.role_states.iter().map(|(r, s, _)| format!("{r}: {s}")).collect::<Vec<_>>().join(", "),
        match h.engine_up {
            Some(true) => "up".into(),
            Some(false) => "down".into(),
            None => "-".into(),
        },
        h.heartbeat_age_s.map(|a| format!("{a:.1} s")).unwrap_or_else(|| "-".into()),
        h.cpu_ratio.map(|c| format!("{:.0}%", c * 100.0)).unwrap_or_else(|| "-".into()),
        h.load.map(|l| format!("{:.2}", l[0])).unwrap_or_else(|| "-".into()),
        pct(h.memory_used_bytes, h.memory_total_bytes),
        pct(h.disk_used_bytes, h.disk_total_bytes),
        h.agent_version.clone(),
    ]
}

pub const HOST_COLUMNS: [&str; 11] =
    ["host", "roles", "state", "role state", "engine", "heartbeat", "cpu", "load", "memory", "disk", "agent"];

fn hosts(rows: &[HostRow]) -> String {
    let mut out = String::from("<section><h2>Hosts</h2><table id=\"hosts\"><thead><tr>");
    for c in HOST_COLUMNS {
        out.push_str(&format!("<th>{c}</th>"));
    }
    out.push_str("</tr></thead><tbody>");
    for h in rows {
        out.push_str(&format!("<tr data-host=\"{}\">", escape(&h.name)));
        for c in host_cells(h) {
            out.push_str(&format!("<td>{}</td>", escape(&c)));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></section>\n");
    out
}

fn drill(v: &View) -> String {
    let mut out = String::from("<section id=\"drill\"><h2>Failover drill</h2>");
    match &v.snapshot.drill {
        None => out.push_str("<p id=\"drill-status\">no drill reported since the control plane started</p>"),
        Some(d) => {
            let status = match (d.running, d.passed) {
                (true, _) => "running".to_string(),
                (false, true) => format!("passed: {}", d.verdict),
                (false, false) => format!("FAILED: {}", d.verdict),
            };
            out.push_str(&format!(
                "<p id=\"drill-status\">{} · {}</p><ol id=\"drill-timeline\">",
                escape(&d.component),
                escape(&status)
            ));
            for (t, what) in &d.timeline {
                out.push_str(&format!("<li>{t:.1} s · {}</li>", escape(what)));
            }
            out.push_str("</ol>");
        }
    }
    out.push_str("</section>\n");
    out
}

fn audit(rows: &[AuditRow]) -> String {
    let mut out = String::from(
        "<section><h2>Recent audit events</h2><table id=\"audit\"><thead><tr><th>time</th><th>kind</th><th>host</th><th>detail</th><th>by</th></tr></thead><tbody>",
    );
    for e in rows {
        out.push_str(&format!(
            "<tr><td data-ms=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e.unix_ms,
            e.unix_ms,
            escape(&e.kind),
            escape(&e.host),
            escape(&e.detail),
            escape(&e.actor)
        ));
    }
    out.push_str("</tbody></table></section>\n");
    out
}

fn log_tail(rows: &[HostRow]) -> String {
    let mut out = String::from(
        "<section><h2>Live logs</h2><label>host <select id=\"log-host\"><option value=\"\">every connected host</option>",
    );
    for h in rows.iter().filter(|h| h.connected) {
        let n = escape(&h.name);
        out.push_str(&format!("<option value=\"{n}\">{n}</option>"));
    }
    out.push_str(
        "</select></label> <span id=\"log-state\">connecting…</span><ol id=\"log\" class=\"log\"></ol></section>\n",
    );
    out
}

#[cfg(test)]
mod tests;
