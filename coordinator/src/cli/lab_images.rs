//! `coordinator lab-images`: build the lab's images that are missing and print their tags.

use super::CliError;

pub async fn run() -> Result<(), CliError> {
    let i = crate::providers::lab::images::ensure(false).await.map_err(CliError::LabImages)?;
    println!("host={}\nconsul={}\nhello={}\nregistry={}", i.host, i.consul, i.hello, i.registry);
    Ok(())
}
