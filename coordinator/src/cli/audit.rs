//! `coordinator audit`: the control plane's audit trail (enrollments, renewals, revocations,
//! operators' mutations with who made them), one event per line as a table row or a JSON
//! object ([`AuditEventView`]); then the refused calls, counted per source and kind
//! ([`RefusalView`]). Every field is printed escaped ([`clean`]): whatever an attacker put in
//! a host name, no escape sequence reaches the terminal.

use clap::Args;
use flotilla_proto::v1;
use serde::Serialize;

use super::{CliError, Global, Output, json_line};
use crate::control_plane::untrusted::{DETAIL_MAX, KIND_MAX, NAME_MAX, clean};

#[derive(Args, Debug)]
pub struct AuditArgs {
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
}

/// One audit event, as `audit --output json` prints it (one object per line).
#[derive(Debug, Serialize)]
pub struct AuditEventView {
    pub unix_ms: i64,
    pub kind: String,
    pub host: String,
    pub detail: String,
    /// Where the call came from; empty when not recorded.
    pub peer: String,
    /// Who made an admin mutation; absent for an agent's doing.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub actor: String,
}

impl From<v1::AuditEvent> for AuditEventView {
    fn from(e: v1::AuditEvent) -> Self {
        AuditEventView {
            unix_ms: e.unix_ms,
            kind: clean(&e.kind, KIND_MAX),
            host: clean(&e.host_name, NAME_MAX),
            detail: clean(&e.detail, DETAIL_MAX),
            peer: clean(&e.peer, KIND_MAX),
            actor: clean(&e.actor, NAME_MAX * 2),
        }
    }
}

impl AuditEventView {
    /// The event as a table row: time, kind, host, detail and (if known) where it came from
    /// and who made it.
    pub fn row(&self) -> String {
        let mut row = format!("{}  {:<28} {:<12} {}", fmt_time(self.unix_ms), self.kind, self.host, self.detail);
        if !self.peer.is_empty() {
            row.push_str(&format!(" (from {})", self.peer));
        }
        if !self.actor.is_empty() {
            row.push_str(&format!(" [by {}]", self.actor));
        }
        row
    }
}

/// Refused calls of one kind from one source, as `audit --output json` prints them (after
/// the events, one object per line, told apart by `count`).
#[derive(Debug, Serialize)]
pub struct RefusalView {
    pub kind: String,
    pub source: String,
    pub count: u64,
    pub first_unix_ms: i64,
    pub last_unix_ms: i64,
    /// The last refusal's host name and reason.
    pub host: String,
    pub detail: String,
}

impl From<v1::RefusalSummary> for RefusalView {
    fn from(r: v1::RefusalSummary) -> Self {
        RefusalView {
            kind: clean(&r.kind, KIND_MAX),
            source: clean(&r.source, KIND_MAX),
            count: r.count,
            first_unix_ms: r.first_unix_ms,
            last_unix_ms: r.last_unix_ms,
            host: clean(&r.last_host_name, NAME_MAX),
            detail: clean(&r.last_detail, DETAIL_MAX),
        }
    }
}

impl RefusalView {
    pub fn row(&self) -> String {
        format!(
            "{:>9}×  {:<28} from {:<16} {} .. {}  last: '{}' {}",
            self.count,
            self.kind,
            self.source,
            fmt_time(self.first_unix_ms),
            fmt_time(self.last_unix_ms),
            self.host,
            self.detail
        )
    }
}

pub async fn run(g: &Global, args: AuditArgs) -> Result<(), CliError> {
    let mut admin = g.admin().await?;
    let r = admin.audit(v1::AuditRequest { limit: args.limit }).await?.into_inner();
    for e in r.events.into_iter().map(AuditEventView::from) {
        match args.output {
            Output::Json => outln!("{}", json_line(&e)),
            Output::Table => outln!("{}", e.row()),
        }
    }
    let shown = if args.limit == 0 { r.refusals.len() } else { args.limit as usize };
    let total = r.refusals.len();
    if total > 0 && args.output == Output::Table {
        println!("\nrefused calls, counted per source and kind (most recent first):");
    }
    for v in r.refusals.into_iter().take(shown).map(RefusalView::from) {
        match args.output {
            Output::Json => println!("{}", json_line(&v)),
            Output::Table => println!("{}", v.row()),
        }
    }
    if total > shown && args.output == Output::Table {
        println!("… and {} more (--limit 0 shows all)", total - shown);
    }
    Ok(())
}

pub(super) fn fmt_time(unix_ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_ms / 1000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix_ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_prints_the_json_and_row_it_did_before_the_typed_view() {
        let e = v1::AuditEvent {
            unix_ms: 1_700_000_000_123,
            kind: "enroll.ok".into(),
            host_name: "node0".into(),
            detail: "serial 01".into(),
            peer: "10.0.0.7:51000".into(),
            actor: String::new(),
        };
        let old = serde_json::json!({"unix_ms": e.unix_ms, "kind": e.kind, "host": e.host_name, "detail": e.detail, "peer": e.peer});
        let view = AuditEventView::from(e);
        assert_eq!(json_line(&view), old.to_string());
        assert_eq!(
            view.row(),
            "2023-11-14T22:13:20Z  enroll.ok                    node0        serial 01 (from 10.0.0.7:51000)"
        );
    }

    /// Issue 14: whatever a stored field holds (an older store's, or a newer coordinator's),
    /// the terminal gets no escape sequence.
    #[test]
    fn fields_are_escaped_when_printed() {
        let e = v1::AuditEvent {
            unix_ms: 0,
            kind: "enroll.ok".into(),
            host_name: "\u{1b}]0;owned\u{7}\u{1b}[2J".into(),
            detail: "x".repeat(10_000),
            peer: String::new(),
            actor: "local socket (uid 0)".into(),
        };
        let row = AuditEventView::from(e).row();
        assert!(!row.chars().any(|c| c.is_control()), "{row:?}");
        assert!(row.contains("\\u{1b}]0;owned") && row.ends_with("[by local socket (uid 0)]"), "{row}");
        assert!(row.len() < 1024, "{}", row.len());
    }
}
