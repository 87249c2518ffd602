//! `coordinator init`: write the commented example `flotilla.toml`.

use std::path::PathBuf;

use clap::Args;

use super::CliError;

#[derive(Args, Debug)]
pub struct InitArgs {
    #[arg(long, short = 'f', default_value = "flotilla.toml")]
    pub file: PathBuf,
}

pub fn run(args: InitArgs) -> Result<(), CliError> {
    let file = args.file;
    if file.exists() {
        return Err(CliError::WouldOverwrite { path: file });
    }
    std::fs::write(&file, crate::ops::cluster_config::EXAMPLE)
        .map_err(|error| CliError::File { path: file.clone(), error })?;
    outln!("wrote {} — edit it, then `{} deploy`", file.display(), crate::ui::self_command());
    Ok(())
}
