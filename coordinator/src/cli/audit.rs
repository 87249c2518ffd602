//! `coordinator audit`: the control plane's audit trail (enrollments, refusals, renewals,
//! revocations), one event per line as a table row or a JSON object ([`AuditEventView`]).

use clap::Args;
use flotilla_proto::v1;
use serde::Serialize;

use super::{CliError, Global, Output, json_line};

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
}

impl From<v1::AuditEvent> for AuditEventView {
    fn from(e: v1::AuditEvent) -> Self {
        AuditEventView { unix_ms: e.unix_ms, kind: e.kind, host: e.host_name, detail: e.detail, peer: e.peer }
    }
}

impl AuditEventView {
    /// The event as a table row: time, kind, host, detail and (if known) where it came from.
    pub fn row(&self) -> String {
        format!(
            "{}  {:<28} {:<12} {} {}",
            fmt_time(self.unix_ms),
            self.kind,
            self.host,
            self.detail,
            if self.peer.is_empty() { String::new() } else { format!("(from {})", self.peer) }
        )
    }
}

pub async fn run(g: &Global, args: AuditArgs) -> Result<(), CliError> {
    let mut admin = g.admin().await?;
    let events = admin.audit(v1::AuditRequest { limit: args.limit }).await?.into_inner().events;
    for e in events.into_iter().map(AuditEventView::from) {
        match args.output {
            Output::Json => outln!("{}", json_line(&e)),
            Output::Table => outln!("{}", e.row()),
        }
    }
    Ok(())
}

fn fmt_time(unix_ms: i64) -> String {
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
        };
        let old = serde_json::json!({"unix_ms": e.unix_ms, "kind": e.kind, "host": e.host_name, "detail": e.detail, "peer": e.peer});
        let view = AuditEventView::from(e);
        assert_eq!(json_line(&view), old.to_string());
        assert_eq!(
            view.row(),
            "2023-11-14T22:13:20Z  enroll.ok                    node0        serial 01 (from 10.0.0.7:51000)"
        );
    }
}
