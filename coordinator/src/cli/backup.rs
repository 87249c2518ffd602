//! `coordinator backup` — take a backup now, through the control plane (Swarm's Raft state
//! from a manager that does not lead, then a Consul snapshot; see
//! `control_plane/backup.rs`) — and `coordinator backups`, the stored ones, read from the
//! cluster's state directory; `--verify` checks each one (its file's SHA-256, decryption
//! with the cluster's backup key, the archive's SHA-256) and fails when any is refused.

use clap::{Args, ValueEnum};
use flotilla_proto::v1;
use serde::Serialize;

use super::audit::fmt_time;
use super::{CliError, Global, Output, json_line};
use crate::control_plane::backup::archive::{self, BackupMeta};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Swarm,
    Consul,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Only this kind (default: both, Swarm first).
    #[arg(long, value_enum)]
    pub kind: Option<Kind>,
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct BackupsArgs {
    /// Check every backup (digests and decryption); exit 1 when any is refused.
    #[arg(long)]
    pub verify: bool,
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
}

/// One backup, as both commands print it (one JSON object per line).
#[derive(Debug, Serialize)]
pub struct BackupView {
    pub id: String,
    pub kind: String,
    pub host: String,
    pub taken_unix_ms: i64,
    pub engine_version: String,
    pub consul_version: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub path: String,
    pub duration_ms: u64,
    /// With `--verify`: whether it opened, and why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl BackupView {
    fn of_meta(state_dir: &std::path::Path, m: &BackupMeta) -> Self {
        Self {
            id: m.id.clone(),
            kind: m.kind.clone(),
            host: m.host.clone(),
            taken_unix_ms: m.taken_unix_ms,
            engine_version: m.engine_version.clone(),
            consul_version: m.consul_version.clone(),
            size_bytes: m.size_bytes,
            sha256: m.sha256.clone(),
            path: archive::file_of(state_dir, m).display().to_string(),
            duration_ms: m.duration_ms,
            verified: None,
            problem: None,
        }
    }

    fn of_record(r: v1::BackupRecord) -> Self {
        let kind = v1::BackupKind::try_from(r.kind).map(crate::control_plane::backup::kind_name).unwrap_or("unknown");
        Self {
            id: r.id,
            kind: kind.to_string(),
            host: r.host,
            taken_unix_ms: r.taken_unix_ms,
            engine_version: r.engine_version,
            consul_version: r.consul_version,
            size_bytes: r.size_bytes,
            sha256: r.sha256,
            path: r.path,
            duration_ms: r.duration_ms,
            verified: None,
            problem: None,
        }
    }

    fn row(&self) -> String {
        let version = if self.consul_version.is_empty() {
            format!("engine {}", self.engine_version)
        } else {
            format!("consul {}", self.consul_version)
        };
        let mut row = format!(
            "{}  {:<7} {:<10} {:>10} B  {:<16} {:>6.1} s  sha256 {}",
            fmt_time(self.taken_unix_ms),
            self.kind,
            self.host,
            self.size_bytes,
            version,
            self.duration_ms as f64 / 1000.0,
            &self.sha256[..self.sha256.len().min(16)]
        );
        match (self.verified, &self.problem) {
            (Some(true), _) => row.push_str("  verified"),
            (Some(false), Some(p)) => row.push_str(&format!("  REFUSED: {p}")),
            _ => {}
        }
        row
    }
}

fn print(views: &[BackupView], output: Output) {
    for v in views {
        match output {
            Output::Json => outln!("{}", json_line(v)),
            Output::Table => outln!("{}", v.row()),
        }
    }
}

pub async fn backup(g: &Global, args: BackupArgs) -> Result<(), CliError> {
    let kinds = match args.kind {
        None => vec![],
        Some(Kind::Swarm) => vec![v1::BackupKind::Swarm as i32],
        Some(Kind::Consul) => vec![v1::BackupKind::Consul as i32],
    };
    let mut admin = g.admin().await?;
    let taken = admin.take_backup(v1::TakeBackupRequest { kinds }).await?.into_inner();
    let views: Vec<BackupView> = taken.backups.into_iter().map(BackupView::of_record).collect();
    print(&views, args.output);
    Ok(())
}

pub async fn backups(g: &Global, args: BackupsArgs) -> Result<(), CliError> {
    let dir = g.state_dir();
    let all = archive::list(&dir).map_err(CliError::Backup)?;
    let mut refused = 0;
    let mut views = Vec::new();
    for m in &all {
        let mut v = BackupView::of_meta(&dir, m);
        if args.verify {
            let checked = archive::open(&dir, m).map(|_| ());
            v.verified = Some(checked.is_ok());
            v.problem = checked.err().map(|e| e.to_string());
            refused += usize::from(v.problem.is_some());
        }
        views.push(v);
    }
    if views.is_empty() && args.output == Output::Table {
        outln!("no backups of cluster '{}' (take one: `coordinator backup`)", g.cluster());
    }
    print(&views, args.output);
    if refused > 0 {
        return Err(CliError::BackupsRefused { refused, total: all.len() });
    }
    Ok(())
}
