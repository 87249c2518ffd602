//! A lab cluster looked at from outside, as an operator would check it — its hosts at the
//! provider, the control plane's records, the swarm's and Consul's own views
//! ([`LabCluster::converged`]) — and acted on through `docker` (the chaos soak's faults).
//! Shared by the crash-point test and the chaos soak.

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::Cli;

/// `docker ARGS` on this machine's Engine (never `DOCKER_HOST`).
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).env_remove("DOCKER_HOST").output().expect("docker")
}

/// What a command printed, trimmed.
pub fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn lines(out: &Output) -> BTreeSet<String> {
    text(out).lines().filter(|l| !l.is_empty()).map(str::to_string).collect()
}

/// A host image that differs from `base` by one label (`flotilla.test=<label>`), built as
/// `target`: what an image upgrade replaces hosts onto.
pub fn derived_host_image(base: &str, target: &str, label: &str) -> String {
    use std::io::Write;
    let mut build = Command::new("docker")
        .args(["build", "-q", "-t", target, "-"])
        .env_remove("DOCKER_HOST")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("docker build");
    build
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("FROM {base}\nLABEL flotilla.test={label}\n").as_bytes())
        .expect("dockerfile");
    let out = build.wait_with_output().expect("docker build");
    assert!(out.status.success(), "building {target}: {}", String::from_utf8_lossy(&out.stderr));
    target.to_string()
}

/// Polls `f` (every 500 ms) until it gives a value; panics with `what` and the last note.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match f() {
            Ok(v) => return v,
            Err(note) => note,
        };
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}; last: {last}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What a cluster must be: its managers and workers by name.
#[derive(Clone, Debug)]
pub struct Planned {
    pub managers: Vec<String>,
    pub workers: Vec<String>,
}

impl Planned {
    pub fn new(managers: &[&str], workers: &[&str]) -> Self {
        Planned {
            managers: managers.iter().map(|s| s.to_string()).collect(),
            workers: workers.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn all(&self) -> BTreeSet<String> {
        self.managers.iter().chain(&self.workers).cloned().collect()
    }
}

/// One lab cluster driven through the real `coordinator` binary.
pub struct LabCluster {
    pub cli: Cli,
}

impl LabCluster {
    pub fn new(cluster: &'static str) -> Self {
        LabCluster { cli: Cli::new(cluster) }
    }

    pub fn name(&self) -> &'static str {
        self.cli.cluster
    }

    /// The lab host container of `host`.
    pub fn container(&self, host: &str) -> String {
        format!("flotilla-{}-{host}", self.cli.cluster)
    }

    /// `cmd` run inside lab host `host` (on its own Engine, systemd, iptables).
    pub fn in_host(&self, host: &str, cmd: &[&str]) -> Output {
        let c = self.container(host);
        let mut args = vec!["exec", c.as_str()];
        args.extend_from_slice(cmd);
        docker(&args)
    }

    /// The pids of this cluster's `coordinator` processes whose command line holds `words`
    /// after the cluster's name (`["serve"]`: its control plane; `["heal", "--auto"]`: the
    /// auto-heal that control plane runs), read from `/proc`.
    pub fn processes(&self, words: &[&str]) -> Vec<u32> {
        let mut pids = Vec::new();
        for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
            let Ok(raw) = std::fs::read(e.path().join("cmdline")) else { continue };
            let args: Vec<String> = raw.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).to_string()).collect();
            let Some(at) = args.windows(2).position(|w| w[0] == "--cluster" && w[1] == self.cli.cluster) else {
                continue;
            };
            let exe = args.first().map(|a| a.ends_with("/coordinator")).unwrap_or(false);
            let rest = &args[at + 2..];
            if exe && words.iter().all(|w| rest.iter().any(|a| a == w)) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Creates service `name` through manager `via`: `replicas` tasks of the lab's hello image
    /// (from the lab registry, as the hosts pull it) on the workers, with `flags` before the
    /// image and `command` after it.
    pub fn create_service(
        &self,
        via: &str,
        name: &str,
        replicas: u32,
        flags: &[&str],
        command: &[&str],
    ) -> Result<(), String> {
        let ip = self
            .addresses()
            .into_iter()
            .find(|(n, _)| n == via)
            .map(|(_, a)| a)
            .ok_or_else(|| format!("no address for {via}"))?;
        let registry = ip.rsplit_once('.').map(|(net, _)| format!("{net}.2:5000")).ok_or("registry")?;
        let image = format!("{registry}/flotilla/hello:1");
        let replicas = replicas.to_string();
        let mut args = vec!["docker", "service", "create", "--detach", "--name", name, "--replicas", &replicas];
        args.extend(["--constraint", "node.role==worker"]);
        args.extend_from_slice(flags);
        args.push(&image);
        args.extend_from_slice(command);
        let out = self.in_host(via, &args);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("service create {name}: {}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// The running tasks of `service`, as manager `via` lists them.
    pub fn running_tasks(&self, via: &str, service: &str) -> usize {
        let out = self.in_host(
            via,
            &["docker", "service", "ps", service, "--filter", "desired-state=running", "--format", "{{.CurrentState}}"],
        );
        text(&out).lines().filter(|l| l.starts_with("Running")).count()
    }

    /// `coordinator status --output json` (null when it failed).
    pub fn status(&self) -> Value {
        let out = self
            .cli
            .command()
            .args(["--cluster", self.cli.cluster, "status", "--output", "json"])
            .output()
            .expect("status");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// The first address of each recorded (not revoked) host.
    pub fn addresses(&self) -> Vec<(String, String)> {
        let st = self.status();
        st["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|h| h["revoked"] != true)
            .filter_map(|h| Some((h["name"].as_str()?.to_string(), h["addresses"][0].as_str()?.to_string())))
            .collect()
    }

    /// The labelled objects of `kind` (`ps -a`, `volume ls`, `network ls`) the cluster owns at
    /// the lab provider, with `filter` (empty: none) besides the cluster's label.
    pub fn labelled(&self, kind: &[&str], filter: &str) -> BTreeSet<String> {
        let mut args = kind.to_vec();
        let cluster = format!("label=flotilla.cluster={}", self.cli.cluster);
        args.extend(["--filter", &cluster]);
        if !filter.is_empty() {
            args.extend(["--filter", filter]);
        }
        args.extend(["--format", if kind[0] == "ps" { "{{.Names}}" } else { "{{.Name}}" }]);
        let out = docker(&args);
        assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        lines(&out)
    }

    /// A manager of `p` whose Engine lists the swarm with a leader, and the rows
    /// (`hostname status manager-status`).
    pub fn node_ls(&self, managers: &[String]) -> Result<(String, String), String> {
        for m in managers {
            let out =
                self.in_host(m, &["docker", "node", "ls", "--format", "{{.Hostname}} {{.Status}} {{.ManagerStatus}}"]);
            if out.status.success() && text(&out).contains("Leader") {
                return Ok((m.clone(), text(&out)));
            }
        }
        Err("no manager lists the swarm with a leader".into())
    }

    /// The cluster exactly as planned, or what differs: at the provider exactly the planned
    /// hosts (one container each, running, and its Engine volume; besides them only the lab's
    /// registry); the control plane records exactly them, each connected; the swarm lists
    /// exactly them, every node ready, the planned managers reachable with one leader; Consul
    /// lists every planned host alive and nothing else but members that left gracefully, and
    /// exactly the managers as servers; no smoke-test service left.
    pub fn converged(&self, p: &Planned) -> Result<(), String> {
        let all = p.all();
        let want: BTreeSet<String> = all.iter().map(|h| self.container(h)).collect();
        let hosts = self.labelled(&["ps", "-a"], "label=flotilla.kind=host");
        if hosts != want {
            return Err(format!("host containers {hosts:?}, planned {want:?}"));
        }
        let running = self.labelled(&["ps"], "label=flotilla.kind=host");
        if running != want {
            return Err(format!("running host containers {running:?}"));
        }
        let volumes = self.labelled(&["volume", "ls"], "");
        let want_volumes: BTreeSet<String> = all.iter().map(|h| format!("{}-docker", self.container(h))).collect();
        if volumes != want_volumes {
            return Err(format!("volumes {volumes:?}, planned {want_volumes:?}"));
        }
        let others = self.labelled(&["ps", "-a"], "label=flotilla.kind!=host");
        if others.len() > 1 {
            return Err(format!("containers besides the hosts: {others:?}"));
        }

        let st = self.status();
        let recorded: BTreeSet<String> = st["hosts"]
            .as_array()
            .ok_or("no status")?
            .iter()
            .filter(|h| h["revoked"] != true)
            .map(|h| h["name"].as_str().unwrap_or_default().to_string())
            .collect();
        if recorded != all {
            return Err(format!("the control plane records {recorded:?}"));
        }
        let down: Vec<&Value> = st["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|h| h["revoked"] != true && h["connected"] != true)
            .collect();
        if !down.is_empty() {
            return Err(format!("not connected: {down:?}"));
        }

        let (via, rows) = self.node_ls(&p.managers)?;
        let names: Vec<&str> = rows.lines().filter_map(|r| r.split(' ').next()).collect();
        let unique: BTreeSet<String> = names.iter().map(|s| s.to_string()).collect();
        let managers: BTreeSet<String> = rows
            .lines()
            .filter(|r| r.contains("Leader") || r.contains("Reachable"))
            .filter_map(|r| r.split(' ').next())
            .map(str::to_string)
            .collect();
        let planned_managers: BTreeSet<String> = p.managers.iter().cloned().collect();
        if names.len() != all.len()
            || unique != all
            || managers != planned_managers
            || rows.lines().filter(|r| r.contains("Leader")).count() != 1
            || rows.lines().any(|r| !r.contains(" Ready"))
        {
            return Err(format!("docker node ls: {rows}"));
        }
        let smoke = self
            .in_host(&via, &["docker", "service", "ls", "--filter", "label=flotilla.smoke", "--format", "{{.Name}}"]);
        if !text(&smoke).is_empty() {
            return Err(format!("smoke-test services left: {}", text(&smoke)));
        }

        // A member that left gracefully stays listed as `left` until Consul reaps it (72 h):
        // that is a departure, not a stale member; `failed` is, and so is an unplanned one alive.
        let members = self.consul_members(&via)?;
        let mut servers = BTreeSet::new();
        for row in members.lines().skip(1) {
            let f: Vec<&str> = row.split_whitespace().collect();
            let departed = f.len() >= 4 && f[2] == "left" && !all.contains(f[0]);
            if departed {
                continue;
            }
            if f.len() < 4 || f[2] != "alive" || !all.contains(f[0]) {
                return Err(format!("consul members: {members}"));
            }
            if f[3] == "server" {
                servers.insert(f[0].to_string());
            }
        }
        if servers != planned_managers {
            return Err(format!("consul servers {servers:?}; members:\n{members}"));
        }
        Ok(())
    }

    /// The operator's Consul token (`<state>/consul-operator.token`).
    pub fn consul_token(&self) -> Result<String, String> {
        std::fs::read_to_string(self.cli.state_root.join(self.cli.cluster).join("consul-operator.token"))
            .map(|t| t.trim().to_string())
            .map_err(|e| format!("the operator's Consul token: {e}"))
    }

    /// `consul members` as the Consul server on manager `via` answers it.
    pub fn consul_members(&self, via: &str) -> Result<String, String> {
        let env = format!("CONSUL_HTTP_TOKEN={}", self.consul_token()?);
        let out = self.in_host(via, &["docker", "exec", "-e", &env, "flotilla-consul", "consul", "members"]);
        if !out.status.success() {
            return Err(format!("consul members: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(text(&out))
    }
}
