//! `coordinator iam-policy`: the least IAM policy the AWS provider needs for this cluster, as
//! JSON (every owner-tag condition names the cluster).

use super::{CliError, Global};

pub fn run(g: &Global) -> Result<(), CliError> {
    outln!("{}", super::json_pretty(&crate::providers::aws::iam::policy(&g.cluster())));
    Ok(())
}
