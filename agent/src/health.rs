//! Health samples: CPU, load, memory, the disk holding the Docker data root, uptime, and
//! whether the Engine answers.

use flotilla_proto::v1::HealthSample;
use sysinfo::{Disks, System};

pub struct Sampler {
    sys: Option<System>,
    seq: u64,
    /// The Engine's data root, asked once (it does not change while the Engine runs).
    data_root: Option<String>,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Sampler {
    pub fn new() -> Self {
        let mut sys = System::new().ok();
        if let Some(s) = sys.as_mut() {
            // CPU usage is a difference between two refreshes: prime the first.
            s.refresh_cpu_usage();
        }
        Self { sys, seq: 0, data_root: None }
    }

    pub async fn sample(&mut self, docker: Option<&bollard::Docker>) -> HealthSample {
        self.seq += 1;
        let mut out = HealthSample { seq: self.seq, unix_ms: now_unix_ms(), ..Default::default() };
        if let Some(s) = self.sys.as_mut() {
            s.refresh_cpu_usage();
            s.refresh_memory();
            out.cpu_percent = s.global_cpu_usage();
            out.memory_total_bytes = s.total_memory();
            out.memory_used_bytes = s.used_memory();
        }
        if let Ok(l) = System::load_average() {
            out.load1 = l.one;
            out.load5 = l.five;
            out.load15 = l.fifteen;
        }
        out.uptime_s = System::uptime().unwrap_or_default();
        match docker {
            Some(d) => match crate::engine::version(d).await {
                Ok(_) => {
                    out.engine_ok = true;
                    if self.data_root.is_none() {
                        self.data_root = crate::engine::data_root(d).await;
                    }
                }
                Err(e) => out.engine_error = e.to_string(),
            },
            None => out.engine_error = "no Docker Engine client".into(),
        }
        let root = self.data_root.clone().unwrap_or_else(|| "/var/lib/docker".to_string());
        if let Some((total, avail)) = disk_of(&root) {
            out.disk_total_bytes = total;
            out.disk_used_bytes = total.saturating_sub(avail);
        }
        out
    }
}

/// The wall clock, milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or_default()
}

/// (total, available) bytes of the file system whose mount point is the longest prefix
/// of `path`.
fn disk_of(path: &str) -> Option<(u64, u64)> {
    let disks = Disks::new_with_refreshed_list().ok()?;
    disks
        .iter()
        .filter(|d| std::path::Path::new(path).starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| (d.total_space(), d.available_space()))
}
