//! The soak's Consul trace (`CHAOS_TRACE`): what Consul did, second by second, to set a lost
//! write beside.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::lab_cluster::LabCluster;

/// Every second until `stop`, into `path`: Consul's servers as the leader's autopilot reports
/// them (node, ID, voter, last Raft index and term, the leader starred) and how many `chaos/`
/// keys each manager's server holds by its own state (a stale read), a line whenever either
/// changes (a server holding fewer keys than before is marked) and every 30 s — to set a
/// lost write beside what Consul did at the time.
pub(super) fn trace_consul(lab: &LabCluster, token: &str, stop: &AtomicBool, started: Instant, path: &std::path::Path) {
    let Ok(mut f) = std::fs::File::create(path) else {
        eprintln!("chaos: cannot write the trace {}", path.display());
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut last_servers = String::new();
    let mut last_keys: std::collections::BTreeMap<String, usize> = Default::default();
    let mut last_full = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let at = started.elapsed().as_secs_f64();
        let managers: Vec<(String, String)> =
            lab.addresses().into_iter().filter(|(n, _)| n.starts_with("manager")).collect();
        let mut servers = "no answer".to_string();
        let mut keys = Vec::new();
        for (name, ip) in &managers {
            let c = flotilla_agent::consul::Consul::new(&format!("{ip}:8500")).with_token(token);
            if servers == "no answer"
                && let Ok(list) = rt.block_on(c.autopilot_health())
            {
                servers = list
                    .iter()
                    .map(|s| {
                        format!(
                            "{}{}/{}/{}/i{}/t{}/{}",
                            if s.leader { "*" } else { "" },
                            s.name,
                            s.id.get(..8).unwrap_or(&s.id),
                            if s.voter { "voter" } else { "nonvoter" },
                            s.last_index,
                            s.last_term,
                            s.serf_status
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
            }
            let n = rt.block_on(c.keys("chaos/", true)).map(|k| k.len());
            keys.push((format!("{name}@{ip}"), n.ok()));
        }
        let mut lines = Vec::new();
        if servers != last_servers {
            lines.push(format!("servers: {servers}"));
            last_servers = servers;
        }
        let mut changed = false;
        for (who, n) in &keys {
            if let Some(n) = *n {
                let before = last_keys.insert(who.clone(), n);
                if before.is_some_and(|b| n < b) {
                    lines.push(format!(
                        "FEWER KEYS: {who} holds {n} chaos/ keys, {} a second before",
                        before.unwrap_or(0)
                    ));
                }
                changed |= before.is_none();
            }
        }
        if changed || last_full.elapsed() >= Duration::from_secs(30) {
            let counts: Vec<String> =
                keys.iter().map(|(w, n)| format!("{w}={}", n.map(|n| n.to_string()).unwrap_or("-".into()))).collect();
            lines.push(format!("keys: {}", counts.join(" ")));
            last_full = Instant::now();
        }
        for l in lines {
            let _ = writeln!(f, "[{at:7.1}s] {l}");
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
    }
}
