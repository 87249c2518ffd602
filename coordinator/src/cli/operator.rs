//! `coordinator operator-cert create`: an operator key made here, signed by the cluster CA,
//! written as a bundle directory that `--remote` uses from another machine.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use flotilla_proto::v1;

use super::{CliError, Global};

#[derive(Subcommand, Debug)]
pub enum OperatorCommand {
    /// Make an operator key here, have the cluster CA sign it, and write a bundle directory.
    Create {
        name: String,
        #[arg(long)]
        out: PathBuf,
    },
}

pub async fn run(g: &Global, command: OperatorCommand) -> Result<(), CliError> {
    let OperatorCommand::Create { name, out } = command;
    create(g, &name, &out).await
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
