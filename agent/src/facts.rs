//! Host facts: what this host is, for enrollment and every Hello.

use flotilla_proto::v1::HostFacts;
use sysinfo::{Networks, System};

/// Gathers facts. `instance_id` comes from cloud-init's instance data when present (EC2's
/// `i-…`, the lab container's name), never from the metadata service directly;
/// `engine_csr_pem` is the CSR for the Engine's key ([`crate::engine_key`]).
pub async fn gather(docker: Option<&bollard::Docker>, engine_csr_pem: &str) -> HostFacts {
    let engine_version = match docker {
        Some(d) => crate::engine::version(d).await.unwrap_or_default(),
        None => String::new(),
    };
    let mut sys = System::new().ok();
    if let Some(s) = sys.as_mut() {
        s.refresh_memory();
    }
    HostFacts {
        hostname: System::host_name().unwrap_or_default(),
        instance_id: instance_id(),
        private_addresses: private_addresses(),
        os: System::long_os_version().unwrap_or_default(),
        kernel: System::kernel_version().unwrap_or_default(),
        arch: System::cpu_arch(),
        cpus: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
        memory_bytes: sys.map(|s| s.total_memory()).unwrap_or_default(),
        engine_version,
        engine_csr_pem: engine_csr_pem.to_string(),
    }
}

/// cloud-init records the instance id it booted with.
fn instance_id() -> String {
    std::fs::read_to_string("/var/lib/cloud/data/instance-id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// IPv4 addresses of non-loopback, non-Docker-bridge interfaces.
pub fn private_addresses() -> Vec<String> {
    let Ok(networks) = Networks::new_with_refreshed_list() else {
        return Vec::new();
    };
    let mut out: Vec<String> = networks
        .iter()
        .filter(|(name, _)| {
            let name = name.to_string_lossy();
            !(name.starts_with("lo")
                || name.starts_with("docker")
                || name.starts_with("br-")
                || name.starts_with("veth")
                || name.starts_with("docker_gwbridge"))
        })
        .flat_map(|(_, data)| data.ip_networks().iter().map(|n| n.addr))
        .filter(|a| a.is_ipv4())
        .map(|a| a.to_string())
        .collect();
    out.sort();
    out.dedup();
    out
}
