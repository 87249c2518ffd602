//! `coordinator operator-cert create | list | revoke`: operator certificates, for using this
//! CLI from another machine (`--remote DIR`). `create` makes the key here, has the cluster CA
//! sign it and writes a bundle directory; `revoke` makes every certificate of a name refused
//! at its next call. Creating and revoking work only over the local admin socket (on the
//! control plane's machine): a certificate cannot mint more of itself.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use flotilla_proto::v1;
use serde::Serialize;

use super::{CliError, Global, Output, json_line};
use crate::control_plane::untrusted::{NAME_MAX, clean};

#[derive(Subcommand, Debug)]
pub enum OperatorCommand {
    /// Make an operator key here, have the cluster CA sign it, and write a bundle directory.
    Create {
        name: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// The operator certificates issued: name, serial, expiry, revoked or not, who asked.
    List {
        #[arg(long, short, value_enum, default_value = "table")]
        output: Output,
    },
    /// Revoke every certificate issued to NAME: each is refused at its next call.
    Revoke { name: String },
}

/// One certificate, as `operator-cert list --output json` prints it (one object per line).
#[derive(Debug, Serialize)]
pub struct OperatorCertView {
    pub name: String,
    pub serial: String,
    pub issued_unix_ms: i64,
    pub not_after_unix_ms: i64,
    pub revoked: bool,
    pub issued_by: String,
}

impl From<v1::OperatorCertificate> for OperatorCertView {
    fn from(c: v1::OperatorCertificate) -> Self {
        OperatorCertView {
            name: c.operator_name,
            serial: c.serial,
            issued_unix_ms: c.issued_unix_ms,
            not_after_unix_ms: c.not_after_unix_ms,
            revoked: c.revoked_unix_ms != 0,
            issued_by: c.issued_by,
        }
    }
}

impl OperatorCertView {
    pub fn row(&self) -> String {
        format!(
            "{:<16} {:<34} until {}  {:<8} issued by {}",
            clean(&self.name, NAME_MAX),
            self.serial,
            super::audit::fmt_time(self.not_after_unix_ms),
            if self.revoked { "REVOKED" } else { "valid" },
            clean(&self.issued_by, NAME_MAX),
        )
    }
}

pub async fn run(g: &Global, command: OperatorCommand) -> Result<(), CliError> {
    match command {
        OperatorCommand::Create { name, out } => create(g, &name, &out).await,
        OperatorCommand::List { output } => list(g, output).await,
        OperatorCommand::Revoke { name } => revoke(g, &name).await,
    }
}

async fn create(g: &Global, name: &str, out: &Path) -> Result<(), CliError> {
    let (key, csr) = crate::control_plane::pki::new_key_and_csr(name).map_err(CliError::OperatorKey)?;
    let mut admin = g.admin().await?;
    let r = admin
        .issue_operator_certificate(v1::IssueOperatorCertificateRequest {
            operator_name: name.to_string(),
            csr_pem: csr,
        })
        .await?
        .into_inner();
    let io = |error: std::io::Error| CliError::File { path: out.to_path_buf(), error };
    flotilla_proto::fs::private_dir(out).map_err(io)?;
    flotilla_proto::fs::write_private(&out.join("key.pem"), key.serialize_pem().as_bytes()).map_err(io)?;
    flotilla_proto::fs::write_public(&out.join("cert.pem"), r.certificate_pem.as_bytes()).map_err(io)?;
    flotilla_proto::fs::write_public(&out.join("ca.pem"), r.ca_chain_pem.join("").as_bytes()).map_err(io)?;
    flotilla_proto::fs::write_public(
        &out.join("endpoint"),
        r.endpoints.first().cloned().unwrap_or_default().as_bytes(),
    )
    .map_err(io)?;
    outln!(
        "operator bundle written to {} (key.pem is 0600); use it with `coordinator --remote {} status`",
        out.display(),
        out.display()
    );
    Ok(())
}

async fn list(g: &Global, output: Output) -> Result<(), CliError> {
    let mut admin = g.admin().await?;
    let certs = admin.list_operator_certificates(v1::ListOperatorCertificatesRequest {}).await?.into_inner();
    for c in certs.certificates.into_iter().map(OperatorCertView::from) {
        match output {
            Output::Json => println!("{}", json_line(&c)),
            Output::Table => println!("{}", c.row()),
        }
    }
    Ok(())
}

async fn revoke(g: &Global, name: &str) -> Result<(), CliError> {
    let mut admin = g.admin().await?;
    let r = admin
        .revoke_operator_certificate(v1::RevokeOperatorCertificateRequest { operator_name: name.to_string() })
        .await?
        .into_inner();
    match r.serials.len() {
        0 => println!("operator '{name}': every certificate was already revoked"),
        n => println!(
            "operator '{name}': {n} certificate(s) revoked ({}); each is refused at its next call",
            r.serials.join(", ")
        ),
    }
    Ok(())
}
