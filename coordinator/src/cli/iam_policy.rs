//! `coordinator iam-policy`: the least IAM policy the AWS provider needs, as JSON.

use super::CliError;

pub fn run() -> Result<(), CliError> {
    println!("{}", super::json_pretty(&crate::providers::aws::iam::policy()));
    Ok(())
}
