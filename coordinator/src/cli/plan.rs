//! `coordinator plan` (and `deploy --dry-run`): what `deploy` would create, change or delete,
//! without doing it. A file of its own so the command is found by its name; it takes
//! `deploy`'s flags ([`DeployArgs`]) because it answers "what would this deploy do".

use super::deploy::{DeployArgs, load_config};
use super::{CliError, Global, Output, json_pretty};

pub async fn run(g: &Global, args: DeployArgs) -> Result<(), CliError> {
    let (config, origin) = load_config(g, &args)?;
    let ch = crate::ops::deploy::dry_run(&config, &origin, &g.state_root(), args.rolling).await?;
    match args.output {
        Output::Json => outln!("{}", json_pretty(&ch)),
        Output::Table => print_table(&ch),
    }
    Ok(())
}

fn print_table(ch: &crate::ops::deploy::Changes) {
    outln!("cluster '{}' on the {} provider (dry run: nothing was changed)", ch.cluster, ch.provider);
    for (title, items) in [("create", &ch.create), ("change", &ch.change), ("delete", &ch.delete), ("keep", &ch.keep)] {
        if !items.is_empty() {
            outln!("\n{title}:");
            for i in items {
                outln!(
                    "  {}{i}",
                    match title {
                        "create" => "+ ",
                        "change" => "~ ",
                        "delete" => "- ",
                        _ => "  ",
                    }
                );
            }
        }
    }
    if ch.is_empty() {
        outln!("\nnothing to create, change or delete");
    }
    if !ch.image_drift.is_empty() && !ch.rolling {
        outln!(
            "\nimage drift: {} host(s) run another image than the one hosts are launched from ({}); deploy keeps them:",
            ch.image_drift.len(),
            ch.host_image
        );
        for h in &ch.image_drift {
            outln!("  {:<12} {}", h.host, h.image);
        }
        outln!("{}", crate::ops::deploy::drift::fix(&ch.cluster, &ch.host_image));
    }
}
