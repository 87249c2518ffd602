//! Issue 3 — the agent binary service: the coordinator serves the agent it was built with
//! over HTTPS pinned to the cluster CA, and that binary runs on Amazon Linux 2023.

use std::process::Command;

use flotilla_tests::{Coord, agent_binary_path};

/// Amazon Linux 2023 ships glibc 2.34: the agent may need no newer symbol version.
const AL2023_GLIBC: (u32, u32) = (2, 34);

/// Both binaries: `flotilla-agent`, and `coordinator`, which is served as the agent when no
/// separate agent binary sits next to it (it acts as the agent under that name).
#[test]
fn the_agent_binaries_need_no_glibc_newer_than_amazon_linux_2023s() {
    let agent = agent_binary_path();
    let coordinator = agent.with_file_name("coordinator");
    for bin in [agent, coordinator] {
        check_glibc(&bin);
    }
}

fn check_glibc(bin: &std::path::Path) {
    let out = Command::new("objdump").arg("-T").arg(bin).output().expect("objdump (binutils) must be installed");
    assert!(out.status.success(), "objdump failed on {}", bin.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut newest = (0, 0);
    for word in text.split(|c: char| c.is_whitespace() || c == '(' || c == ')') {
        if let Some(v) = word.strip_prefix("GLIBC_") {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            let ver = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
            newest = newest.max(ver);
        }
    }
    assert!(newest > (2, 0), "no GLIBC versions found in {}: is it dynamically linked?", bin.display());
    assert!(
        newest <= AL2023_GLIBC,
        "{} needs GLIBC_{}.{}, newer than Amazon Linux 2023's {}.{}",
        bin.display(),
        newest.0,
        newest.1,
        AL2023_GLIBC.0,
        AL2023_GLIBC.1
    );
}

#[tokio::test]
async fn the_coordinator_serves_its_agent_binary_over_https_pinned_to_the_cluster_ca() {
    let bin = agent_binary_path();
    let coord = Coord::start(|c| c.agent_binary = Some(bin.clone())).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, coord.ca_pem()).expect("ca");
    let out = dir.path().join("flotilla-agent");
    let url = format!("https://{}/v1/agent/flotilla-agent", coord.endpoint());
    // Exactly how user-data fetches it: the cluster CA is the only trust root.
    let status = tokio::process::Command::new("curl")
        .args(["--fail", "--silent", "--show-error", "--cacert"])
        .arg(&ca)
        .arg("-o")
        .arg(&out)
        .arg(&url)
        .status()
        .await
        .expect("curl");
    assert!(status.success(), "download of {url} failed");
    let served = std::fs::read(&out).expect("downloaded");
    let original = std::fs::read(&bin).expect("agent binary");
    assert_eq!(served.len(), original.len());
    assert!(served == original, "the served binary differs from {}", bin.display());

    // The digest endpoint agrees with sha256sum of the download.
    let digest = tokio::process::Command::new("curl")
        .args(["--fail", "--silent", "--cacert"])
        .arg(&ca)
        .arg(format!("{url}.sha256"))
        .output()
        .await
        .expect("curl");
    let sum = Command::new("sha256sum").arg(&out).output().expect("sha256sum");
    let ours = String::from_utf8_lossy(&sum.stdout);
    let theirs = String::from_utf8_lossy(&digest.stdout);
    assert_eq!(
        ours.split_whitespace().next(),
        theirs.split_whitespace().next(),
        "digest endpoint disagrees with the bytes"
    );

    // Without the cluster CA (system roots only), the download is refused.
    let status = tokio::process::Command::new("curl")
        .args(["--fail", "--silent", "-o", "/dev/null"])
        .arg(&url)
        .status()
        .await
        .expect("curl");
    assert!(!status.success(), "a client that does not trust the cluster CA must not connect");

    // The downloaded binary runs and reports its version.
    let v = Command::new(&bin).arg("--version").output().expect("run agent");
    assert!(String::from_utf8_lossy(&v.stdout).contains(flotilla_agent::VERSION));
}

#[test]
fn the_coordinator_binary_is_the_agent_when_invoked_as_flotilla_agent() {
    let coordinator = agent_binary_path().with_file_name("coordinator");
    let dir = tempfile::tempdir().expect("tempdir");
    let as_agent = dir.path().join("flotilla-agent");
    std::fs::copy(&coordinator, &as_agent).expect("copy");
    let v = Command::new(&as_agent).arg("--version").output().expect("run");
    assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), format!("flotilla-agent {}", flotilla_agent::VERSION));
    // A bad config is the agent's usage error (64), naming the file.
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "host_name = \"x\"\nbogus = 1\n").expect("write");
    let o = Command::new(&as_agent).arg("--config").arg(&cfg).output().expect("run");
    assert_eq!(o.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&o.stderr).contains("agent.toml"));
}
