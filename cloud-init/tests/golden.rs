//! Golden files: every case in `tests/golden/<case>.yaml` is rendered from fixed inputs and
//! compared byte for byte. `UPDATE_GOLDEN=1 cargo test -p flotilla-cloud-init --test golden`
//! rewrites them instead; review the diff before committing.
//!
//! Every case is also checked for what must hold whatever the bytes: `#cloud-config` first,
//! within EC2's limit, no private key, deterministic, valid YAML whose files carry exactly the
//! intended contents and modes (parsed by PyYAML, which cloud-init uses, when present), a
//! bootstrap script that `bash -n` accepts, and `cloud-init schema` when cloud-init is installed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use flotilla_cloud_init::paths::{
    AGENT_CONFIG_PATH, AGENT_UNIT_PATH, BAKE_CA_PATH, BAKE_SCRIPT_PATH, BOOTSTRAP_PATH, CA_PATH, ENGINE_HOLD_PATHS,
    ENGINE_TLS_DROP_IN_PATH, SEAL_SCRIPT_PATH, SEAL_UNIT_PATH, TOKEN_PATH,
};
use flotilla_cloud_init::{
    AGENT_UNIT, AgentBinary, BakeInputs, BakeReport, DEFAULT_HEARTBEAT_INTERVAL_S, Engine, HostInputs, OsFamily,
    SEAL_SCRIPT, SEAL_UNIT, USER_DATA_LIMIT, render_bake, render_host,
};
use serde_json::Value;

const CA_PEM: &str = include_str!("fixtures/ca.pem");
const TOKEN: &str = "3f9a1c0e5b7d2468ace13579bdf02468ace13579bdf0246813579bdf02468ace";
/// sha256 of the bytes `flotilla-agent golden fixture`.
const AGENT_SHA256: &str = "285d31fe4a1695380e0fec2794b467c2b35615206366524ca216ad29f5633ce1";

fn agent() -> AgentBinary {
    AgentBinary {
        url: "https://10.0.0.5:7443/v1/agent/flotilla-agent".into(),
        sha256: AGENT_SHA256.into(),
        version: "0.1.0".into(),
    }
}

fn host(host_name: &str, engine: Engine) -> HostInputs {
    HostInputs {
        cluster: "demo".into(),
        host_name: host_name.into(),
        coordinator: vec!["10.0.0.5:7443".into()],
        ca_pem: CA_PEM.into(),
        join_token: Some(TOKEN.into()),
        agent: agent(),
        engine,
        insecure_registries: vec![],
        heartbeat_interval_s: DEFAULT_HEARTBEAT_INTERVAL_S,
        engine_tls: host_name.starts_with("manager"),
    }
}

enum Inputs {
    Host(HostInputs),
    Bake(BakeInputs),
}

fn cases() -> Vec<(&'static str, Inputs)> {
    let debian = Engine::InstallIfAbsent(OsFamily::Debian);
    let al2023 = Engine::InstallIfAbsent(OsFamily::AmazonLinux2023);
    vec![
        ("first-manager", Inputs::Host(host("manager0", debian))),
        (
            "manager",
            Inputs::Host(HostInputs {
                coordinator: vec!["10.0.0.5:7443".into(), "10.0.0.6:7443".into()],
                ..host("manager1", al2023)
            }),
        ),
        ("node", Inputs::Host(host("node0", al2023))),
        ("baked-image", Inputs::Host(host("node1", Engine::Preinstalled))),
        ("al2023", Inputs::Host(host("node2", al2023))),
        ("debian", Inputs::Host(host("node3", debian))),
        (
            "lab",
            Inputs::Host(HostInputs {
                cluster: "lab".into(),
                coordinator: vec!["172.28.0.1:7443".into()],
                agent: AgentBinary { url: "https://172.28.0.1:7443/v1/agent/flotilla-agent".into(), ..agent() },
                insecure_registries: vec!["172.28.0.2:5000".into()],
                heartbeat_interval_s: 2,
                ..host("manager0", Engine::Preinstalled)
            }),
        ),
        ("without-token", Inputs::Host(HostInputs { join_token: None, ..host("node4", Engine::Preinstalled) })),
        ("bake", Inputs::Bake(BakeInputs { ca_pem: CA_PEM.into(), agent: agent(), engine: al2023, report: None })),
        (
            "bake-report",
            Inputs::Bake(BakeInputs {
                ca_pem: CA_PEM.into(),
                agent: agent(),
                engine: al2023,
                report: Some(BakeReport {
                    url: "https://10.0.0.5:41234/v1/bake/report".into(),
                    nonce: "5f0c1d2e3a4b5c6d7e8f9a0b1c2d3e4f".into(),
                }),
            }),
        ),
    ]
}

fn render(inputs: &Inputs) -> String {
    match inputs {
        Inputs::Host(h) => render_host(h),
        Inputs::Bake(b) => render_bake(b),
    }
    .expect("fixture inputs render")
}

#[test]
fn golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut mismatches = vec![];
    for (name, inputs) in cases() {
        let rendered = render(&inputs);
        let path = dir.join(format!("{name}.yaml"));
        if update {
            std::fs::write(&path, &rendered).expect("write golden file");
            continue;
        }
        let golden = std::fs::read_to_string(&path).unwrap_or_default();
        if golden != rendered {
            mismatches.push(path.display().to_string());
        }
    }
    assert!(
        mismatches.is_empty(),
        "rendered user-data differs from {mismatches:?}; if the change is intended run \
         `UPDATE_GOLDEN=1 cargo test -p flotilla-cloud-init --test golden` and review the diff"
    );
}

#[test]
fn every_case_is_safe_user_data() {
    for (name, inputs) in cases() {
        let doc = render(&inputs);
        assert!(doc.starts_with("#cloud-config\n"), "{name}");
        assert!(doc.len() < 16 * 1024 && doc.len() <= USER_DATA_LIMIT, "{name}: {} bytes", doc.len());
        assert!(!doc.contains("PRIVATE KEY"), "{name}");
        assert_eq!(doc, render(&inputs), "{name}: not deterministic");
        for key in ["packages:", "package_update", "package_upgrade", "merge_how"] {
            assert!(!doc.contains(key), "{name}: {key}");
        }
        // bootcmd only trusts a lab's registries and holds a manager's Engine, both before the
        // Engine's first start.
        let registries = matches!(&inputs, Inputs::Host(h) if !h.insecure_registries.is_empty());
        let held = matches!(&inputs, Inputs::Host(h) if h.engine_tls);
        assert_eq!(doc.contains("\nbootcmd:\n"), registries || held, "{name}: bootcmd");
        assert_eq!(doc.matches("bootcmd").count(), usize::from(registries || held), "{name}: bootcmd");
        assert_eq!(doc.contains("flotilla-engine-hold"), held, "{name}: only a manager's Engine is held");
        let token_entry = format!("  - path: {TOKEN_PATH}\n    owner: 'root:root'\n    permissions: '0600'\n");
        match &inputs {
            Inputs::Host(h) if h.join_token.is_some() => {
                assert!(doc.contains(&token_entry), "{name}")
            }
            _ => assert!(!doc.contains(&format!("- path: {TOKEN_PATH}")), "{name}: token file without a token"),
        }
    }
}

#[test]
fn first_manager_agent_config_is_exactly_the_documented_one() {
    let doc = render(&cases().remove(0).1);
    let expected = "\
host_name = \"manager0\"
cluster = \"demo\"
coordinator = [\"10.0.0.5:7443\"]
ca_file = \"/etc/flotilla/ca.pem\"
token_file = \"/etc/flotilla/token\"
state_dir = \"/var/lib/flotilla\"
heartbeat_interval_s = 5
";
    let indented: String = expected.lines().map(|l| format!("      {l}\n")).collect();
    assert!(
        doc.contains(&format!(
            "  - path: {AGENT_CONFIG_PATH}\n    owner: 'root:root'\n    permissions: '0644'\n    content: |\n{indented}"
        )),
        "{doc}"
    );
}

#[test]
fn every_case_parses_to_the_intended_files() {
    for (name, inputs) in cases() {
        let doc = render(&inputs);
        let Some(parsed) = pyyaml(&doc) else { return };
        let top: Vec<&str> = parsed.as_object().expect("mapping").keys().map(String::as_str).collect();
        match &inputs {
            Inputs::Host(h) if !h.insecure_registries.is_empty() || h.engine_tls => {
                assert_eq!(top, ["bootcmd", "runcmd", "write_files"], "{name}")
            }
            _ => assert_eq!(top, ["runcmd", "write_files"], "{name}"),
        }
        let files: Vec<(&str, &str, &str, &str)> = parsed["write_files"]
            .as_array()
            .expect("write_files")
            .iter()
            .map(|f| {
                assert_eq!(f.as_object().map(|o| o.len()), Some(4), "{name}: {f}");
                (str_of(&f["path"]), str_of(&f["owner"]), str_of(&f["permissions"]), str_of(&f["content"]))
            })
            .collect();
        let ca = normalized(CA_PEM);
        match &inputs {
            Inputs::Host(h) => {
                let paths: Vec<&str> = files.iter().map(|f| f.0).collect();
                let mut expected = vec![CA_PATH, TOKEN_PATH, AGENT_CONFIG_PATH, AGENT_UNIT_PATH, BOOTSTRAP_PATH];
                if h.join_token.is_none() {
                    expected.retain(|p| *p != TOKEN_PATH);
                }
                assert_eq!(paths, expected, "{name}");
                for (path, owner, mode, content) in &files {
                    assert_eq!(*owner, "root:root", "{name} {path}");
                    match *path {
                        CA_PATH => assert_eq!((*mode, *content), ("0644", ca.as_str()), "{name}"),
                        TOKEN_PATH => assert_eq!((*mode, *content), ("0600", TOKEN), "{name}"),
                        AGENT_CONFIG_PATH => {
                            assert_eq!(*mode, "0644", "{name}");
                            check_agent_toml(name, h, content);
                        }
                        AGENT_UNIT_PATH => {
                            assert_eq!((*mode, *content), ("0644", AGENT_UNIT), "{name}")
                        }
                        BOOTSTRAP_PATH => {
                            assert_eq!(*mode, "0755", "{name}");
                            check_script(name, content, "host", &h.insecure_registries);
                        }
                        other => panic!("{name}: unexpected file {other}"),
                    }
                }
                assert_eq!(parsed["runcmd"], serde_json::json!([[BOOTSTRAP_PATH]]), "{name}");
            }
            Inputs::Bake(b) => {
                let mut expected = vec![
                    (BAKE_CA_PATH, "root:root", "0644", ca.as_str()),
                    (AGENT_UNIT_PATH, "root:root", "0644", AGENT_UNIT),
                ];
                if b.report.is_some() {
                    expected.push((SEAL_UNIT_PATH, "root:root", "0644", SEAL_UNIT));
                    expected.push((SEAL_SCRIPT_PATH, "root:root", "0755", SEAL_SCRIPT));
                }
                let n = expected.len();
                assert_eq!(files[..n], expected, "{name}");
                assert_eq!((files[n].0, files[n].2), (BAKE_SCRIPT_PATH, "0755"), "{name}");
                check_script(name, files[n].3, "bake", &[]);
                let (url, nonce) = b.report.as_ref().map(|r| (r.url.as_str(), r.nonce.as_str())).unwrap_or_default();
                assert!(
                    files[n].3.contains(&format!("\nFLOTILLA_REPORT_URL='{url}'\nFLOTILLA_REPORT_NONCE='{nonce}'\n")),
                    "{name}"
                );
                assert_eq!(files.len(), n + 1, "{name}");
                assert_eq!(parsed["runcmd"], serde_json::json!([[BAKE_SCRIPT_PATH]]), "{name}");
                // No cluster identity anywhere.
                for identity in ["demo", "manager", "node", TOKEN, "/etc/flotilla/ca.pem", "/etc/flotilla/token"] {
                    assert!(!doc.contains(identity), "{name}: bake user-data mentions {identity}");
                }
            }
        }
    }
}

fn check_agent_toml(name: &str, h: &HostInputs, content: &str) {
    let table: toml::Table = toml::from_str(content).unwrap_or_else(|e| panic!("{name}: agent.toml: {e}"));
    let keys: Vec<&str> = table.keys().map(String::as_str).collect();
    let mut expected =
        ["host_name", "cluster", "coordinator", "ca_file", "token_file", "state_dir", "heartbeat_interval_s"];
    expected.sort_unstable();
    assert_eq!(keys, expected, "{name}");
    assert_eq!(table["host_name"].as_str(), Some(h.host_name.as_str()), "{name}");
    assert_eq!(table["cluster"].as_str(), Some(h.cluster.as_str()), "{name}");
    let coordinator: Vec<&str> =
        table["coordinator"].as_array().expect("array").iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(coordinator, h.coordinator, "{name}");
    assert_eq!(table["ca_file"].as_str(), Some(CA_PATH), "{name}");
    assert_eq!(table["token_file"].as_str(), Some(TOKEN_PATH), "{name}");
    assert_eq!(table["state_dir"].as_str(), Some("/var/lib/flotilla"), "{name}");
    assert_eq!(table["heartbeat_interval_s"].as_integer(), Some(i64::from(h.heartbeat_interval_s)), "{name}");
}

/// The template the scripts are rendered from.
const TEMPLATE: &str = include_str!("../src/bootstrap.sh");

fn check_script(name: &str, script: &str, mode: &str, registries: &[String]) {
    // The parsed script is the template, byte for byte, with its marker line replaced by
    // `NAME=value` lines.
    let (head, tail) = TEMPLATE.split_once("# @flotilla-rendered-values@\n").expect("marker");
    let values = script
        .strip_prefix(head)
        .and_then(|rest| rest.strip_suffix(tail))
        .unwrap_or_else(|| panic!("{name}: the script is not the rendered template"));
    for line in values.lines().skip(1) {
        let (var, _) = line.split_once('=').unwrap_or_else(|| panic!("{name}: {line}"));
        assert!(var.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'), "{name}: {line}");
    }
    assert!(script.contains(&format!("\nFLOTILLA_MODE='{mode}'\n")), "{name}");
    assert!(script.contains(&format!("\nFLOTILLA_AGENT_SHA256='{AGENT_SHA256}'\n")), "{name}");
    let regs: Vec<String> = registries.iter().map(|r| format!("'{r}'")).collect();
    assert!(script.contains(&format!("\nFLOTILLA_INSECURE_REGISTRIES=({})\n", regs.join(" "))), "{name}");
    bash_n(name, script);
}

/// `bash -n` on the script, when bash is there.
fn bash_n(name: &str, script: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("script.sh");
    std::fs::write(&path, script).expect("write script");
    match Command::new("bash").arg("-n").arg(&path).output() {
        Ok(out) => assert!(out.status.success(), "{name}: bash -n: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => eprintln!("bash not runnable ({e}): skipping bash -n"),
    }
}

/// `cloud-init schema` on every case, when cloud-init is installed (the lab image has it).
#[test]
fn every_case_passes_cloud_init_schema() {
    for (name, inputs) in cases() {
        let doc = render(&inputs);
        let dir = tempfile::tempdir().expect("tempdir");
        let path: PathBuf = dir.path().join("user-data");
        std::fs::write(&path, &doc).expect("write user-data");
        let out = match Command::new("cloud-init").args(["schema", "--config-file"]).arg(&path).output() {
            Ok(out) => out,
            Err(_) => {
                eprintln!("cloud-init not installed: skipping `cloud-init schema`");
                return;
            }
        };
        assert!(
            out.status.success(),
            "{name}: cloud-init schema: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

fn normalized(pem: &str) -> String {
    let mut out: String = pem.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("\n");
    out.push('\n');
    out
}

/// The document parsed by PyYAML (what cloud-init parses with), as JSON. python3 with
/// PyYAML is required (`bash tests/run` installs it); a missing one fails the test.
/// The lab case's `bootcmd`, run for real with `sh` and `python3` against a daemon.json in a
/// temporary directory (the only argument changed): it merges the registry into what is
/// there, keeping other keys, and a second run (every boot) changes nothing and succeeds.
#[test]
fn the_lab_bootcmd_merges_its_registries_into_daemon_json() {
    let (_, inputs) = cases().into_iter().find(|(n, _)| *n == "lab").expect("lab case");
    let Some(parsed) = pyyaml(&render(&inputs)) else { return };
    let entries = parsed["bootcmd"].as_array().expect("bootcmd list");
    assert_eq!(entries.len(), 2, "the registries, then the manager's Engine held");
    let mut argv: Vec<String> = entries[0].as_array().expect("argv").iter().map(|a| str_of(a).to_string()).collect();
    assert_eq!(argv[5], "/etc/docker/daemon.json");
    assert_eq!(argv[6..], ["172.28.0.2:5000"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("etc/docker/daemon.json");
    argv[5] = json.display().to_string();
    let run = |argv: &[String]| Command::new(&argv[0]).args(&argv[1..]).output().expect("sh");
    let out = run(&argv);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read =
        || -> Value { serde_json::from_str(&std::fs::read_to_string(&json).expect("daemon.json")).expect("json") };
    assert_eq!(read(), serde_json::json!({"insecure-registries": ["172.28.0.2:5000"]}));
    std::fs::write(&json, r#"{"mtu": 1400, "insecure-registries": ["10.0.0.0/8"]}"#).expect("write");
    assert!(run(&argv).status.success());
    assert_eq!(read(), serde_json::json!({"mtu": 1400, "insecure-registries": ["10.0.0.0/8", "172.28.0.2:5000"]}));
    let before = std::fs::read_to_string(&json).expect("daemon.json");
    assert!(run(&argv).status.success(), "a second boot's run must succeed");
    assert_eq!(std::fs::read_to_string(&json).expect("daemon.json"), before, "and change nothing");
    std::fs::write(&json, "not json").expect("write");
    assert!(!run(&argv).status.success(), "a broken daemon.json is a failure, not a silent success");
}

/// Issue 19: the lab manager's second `bootcmd`, run for real with `sh` against paths in a
/// temporary directory and a `systemctl` that records its calls: with no TLS drop-in it writes
/// both hold files (each making its unit's start conditional on the drop-in), reloads systemd
/// and drops the boot's pending start; once the drop-in exists (a reboot after the agent wrote
/// it) it does nothing at all.
#[test]
fn the_lab_managers_bootcmd_holds_its_engine_until_the_tls_drop_in_exists() {
    let (_, inputs) = cases().into_iter().find(|(n, _)| *n == "lab").expect("lab case");
    let Some(parsed) = pyyaml(&render(&inputs)) else { return };
    let entries = parsed["bootcmd"].as_array().expect("bootcmd list");
    let mut argv: Vec<String> = entries[1].as_array().expect("argv").iter().map(|a| str_of(a).to_string()).collect();
    assert_eq!(argv[3], "flotilla-engine-hold");
    assert_eq!(argv[4..], [ENGINE_TLS_DROP_IN_PATH, ENGINE_HOLD_PATHS[0], ENGINE_HOLD_PATHS[1]]);
    let dir = tempfile::tempdir().expect("tempdir");
    let at = |rel: &str| dir.path().join(rel);
    let (tls, service, socket) =
        (at("etc/flotilla-tls.conf"), at("run/service.d/hold.conf"), at("run/socket.d/hold.conf"));
    for (i, p) in [&tls, &service, &socket].into_iter().enumerate() {
        argv[4 + i] = p.display().to_string();
    }
    std::fs::create_dir_all(at("bin")).expect("bin");
    let calls = at("calls");
    std::fs::write(at("bin/systemctl"), format!("#!/bin/sh\necho \"$*\" >> {}\n", calls.display())).expect("stub");
    std::fs::set_permissions(at("bin/systemctl"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let path = format!("{}:/usr/bin:/bin", at("bin").display());
    let run = || Command::new(&argv[0]).args(&argv[1..]).env("PATH", &path).output().expect("sh");

    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for hold in [&service, &socket] {
        let text = std::fs::read_to_string(hold).expect("hold written");
        assert!(text.contains(&format!("\n[Unit]\nConditionPathExists={}\n", tls.display())), "{text}");
    }
    assert_eq!(
        std::fs::read_to_string(&calls).expect("calls"),
        "daemon-reload\n--no-block stop docker.socket docker.service\n"
    );

    for p in [&service, &socket, &calls] {
        std::fs::remove_file(p).expect("clean");
    }
    std::fs::create_dir_all(at("etc")).expect("etc");
    std::fs::write(&tls, "[Service]\n").expect("the agent's drop-in");
    assert!(run().status.success());
    assert!(!service.exists() && !socket.exists() && !calls.exists(), "a configured Engine is not held");
}

fn pyyaml(doc: &str) -> Option<Value> {
    let script = "import json,sys,yaml; print(json.dumps(yaml.safe_load(sys.stdin.read())))";
    let Ok(mut child) = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        panic!("python3 not found: the PyYAML checks need it (`bash tests/run` sets it up)");
    };
    child.stdin.take().expect("stdin").write_all(doc.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'yaml'"),
        "PyYAML is not installed for python3: `python3 -m pip install pyyaml` (`bash tests/run` does it)"
    );
    assert!(out.status.success(), "PyYAML refused the document: {stderr}\n{doc}");
    Some(serde_json::from_slice(&out.stdout).expect("json"))
}
