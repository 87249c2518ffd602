//! The IAM policy `coordinator iam-policy` prints (issue 14), checked by **parliament** (PyPI,
//! an IAM policy linter nobody here wrote; `bash tests/run` installs it in
//! `target/parliament-venv`) and by the provider's own structural check
//! (`iam::check::check`). Nothing leaves the machine: parliament reads the policy from
//! `--string` (never stdin: it reads stdin whenever stdin is not a terminal) and checks it
//! against the IAM definitions it ships.
//!
//! parliament runs with `tests/parliament.yaml`, which lowers its known noise to LOW and lists,
//! per finding, the statements (by Sid) it is accepted on and why; the test fails on any
//! finding above LOW, on such noise anywhere else, and on an entry that excuses nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use flotilla_coordinator::providers::aws::iam::{self, check};
use serde_json::{Value, json};

const CLUSTER: &str = "prod";
const CONFIG: &str = include_str!("../parliament.yaml");
const ABOVE_LOW: [&str; 3] = ["MEDIUM", "HIGH", "CRITICAL"];

/// `target/parliament-venv/bin/parliament`; fails loudly when `bash tests/run` did not make it.
fn parliament_path() -> PathBuf {
    let p =
        flotilla_tests::target_dir().parent().map(|t| t.join("parliament-venv/bin/parliament")).expect("target dir");
    assert!(
        p.is_file(),
        "{} missing: `bash tests/run` prepares parliament's venv \
         (python3 -m venv target/parliament-venv && target/parliament-venv/bin/pip install 'parliament==1.6.4')",
        p.display()
    );
    p
}

/// The text `coordinator iam-policy` prints for `policy` (without the final newline).
fn text(policy: &Value) -> String {
    serde_json::to_string_pretty(policy).expect("policy as JSON")
}

/// Every finding parliament reports on `policy_text` (severity LOW and up), with `config`.
fn parliament(policy_text: &str, config: Option<&Path>) -> Vec<Value> {
    let mut cmd = Command::new(parliament_path());
    cmd.args(["--json", "--string", policy_text]).stdin(Stdio::null());
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let out = cmd.output().expect("run parliament");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 0: no finding; 1: findings (printed one JSON object a line); anything else: it broke.
    assert!(matches!(out.status.code(), Some(0 | 1)), "parliament failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(!stderr.contains("Traceback"), "parliament raised:\n{stderr}");
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("parliament printed a non-JSON line ({e}): {l}")))
        .collect()
}

fn above_low(findings: &[Value]) -> Vec<&Value> {
    findings.iter().filter(|f| ABOVE_LOW.contains(&f["severity"].as_str().unwrap_or_default())).collect()
}

/// The line (1-based) of each statement's opening brace in `policy_text`, by Sid: where
/// parliament locates a statement's findings.
fn statement_lines(policy_text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut open = 0;
    for (i, line) in policy_text.lines().enumerate() {
        if line == "    {" {
            open = i + 1;
        }
        if let Some(sid) = line.trim().strip_prefix("\"Sid\": \"") {
            out.push((sid.trim_end_matches([',', '"']).to_string(), open));
        }
    }
    out
}

/// tests/parliament.yaml, for parliament's `--config`.
fn config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("parliament.yaml")
}

/// The accepted noise in tests/parliament.yaml: (issue, Sid) for each statement listed under
/// an issue's `excused`.
fn excused() -> BTreeSet<(String, String)> {
    let mut issue = String::new();
    let mut out = BTreeSet::new();
    for line in CONFIG.lines() {
        if !line.starts_with([' ', '#']) && line.ends_with(':') {
            issue = line.trim_end_matches(':').to_string();
        } else if let Some(sid) = line.trim().strip_prefix("- ") {
            assert!(!issue.is_empty(), "tests/parliament.yaml: `- {sid}` outside an issue");
            out.insert((issue.clone(), sid.trim().to_string()));
        }
    }
    out
}

/// The issues tests/parliament.yaml lowers to LOW.
fn lowered() -> BTreeSet<String> {
    excused().into_iter().map(|(issue, _)| issue).collect()
}

/// (issue, Sid) of each finding, by the statement its line falls in.
fn located(policy_text: &str, findings: &[&Value]) -> BTreeSet<(String, String)> {
    let lines = statement_lines(policy_text);
    findings
        .iter()
        .map(|f| {
            let line = f["location"]["line"].as_u64().unwrap_or_default() as usize;
            let sid = lines.iter().rev().find(|(_, n)| *n <= line).map(|(s, _)| s.clone()).unwrap_or_default();
            (f["issue"].as_str().unwrap_or_default().to_string(), sid)
        })
        .collect()
}

fn show(findings: &[Value]) -> String {
    findings.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
}

#[test]
fn parliament_finds_nothing_above_low_in_the_policy() {
    let policy_text = text(&iam::policy(CLUSTER));
    let findings = parliament(&policy_text, Some(&config_path()));
    println!(
        "coordinator --cluster {CLUSTER} iam-policy:\n{policy_text}\n\nparliament --config tests/parliament.yaml:"
    );
    println!("{}", if findings.is_empty() { "(no finding)".to_string() } else { show(&findings) });
    assert!(
        above_low(&findings).is_empty(),
        "parliament finds more than LOW in the policy:\n{}\n\
         fix the policy (tests/parliament.yaml is for parliament's known noise only)",
        show(&findings)
    );
    // The lowered noise is on exactly the statements tests/parliament.yaml excuses.
    let lowered = lowered();
    let noise: Vec<&Value> =
        findings.iter().filter(|f| lowered.contains(f["issue"].as_str().unwrap_or_default())).collect();
    assert_eq!(
        located(&policy_text, &noise),
        excused(),
        "parliament's findings (left) and the statements tests/parliament.yaml excuses (right) differ"
    );
}

#[test]
fn the_parliament_harness_reports_what_parliament_finds() {
    let one = |statement: Value| json!({ "Version": "2012-10-17", "Statement": [statement] });
    let issues = |findings: &[Value]| -> Vec<String> {
        above_low(findings).iter().filter_map(|f| f["issue"].as_str().map(str::to_string)).collect()
    };
    // A finding parliament is known for (MEDIUM): a resource no action of the statement takes.
    let mismatch = one(
        json!({ "Sid": "M", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": "arn:aws:ec2:*:*:instance/*" }),
    );
    let findings = parliament(&text(&mismatch), None);
    assert_eq!(issues(&findings), ["RESOURCE_MISMATCH"], "{}", show(&findings));
    // With the repo's config, what it does not lower still counts: a condition key the action
    // does not have.
    let odd = one(json!({
        "Sid": "Odd", "Effect": "Allow", "Action": ["ec2:StopInstances"], "Resource": "arn:aws:ec2:*:*:instance/*",
        "Condition": { "StringEquals": { "ec2:CreateAction": "RunInstances" } }
    }));
    let findings = parliament(&text(&odd), Some(&config_path()));
    assert_eq!(issues(&findings), ["UNKNOWN_CONDITION_FOR_ACTION"], "{}", show(&findings));
}

/// The audit's statement: CreateTags on existing instances and groups whenever the request
/// carries a `flotilla:bake` tag (any value) — tag a production host, then stop, image or
/// terminate it through the bake's statements.
fn audit_statement() -> Value {
    json!({
        "Sid": "AuditBakeCreateTagged",
        "Effect": "Allow",
        "Action": ["ec2:CreateTags"],
        "Resource": ["arn:aws:ec2:*:*:instance/*", "arn:aws:ec2:*:*:security-group/*"],
        "Condition": { "StringLike": { "aws:RequestTag/flotilla:bake": "*" } }
    })
}

#[test]
fn a_statement_that_lets_tagging_unlock_resources_is_caught() {
    let mut bad = iam::policy(CLUSTER);
    bad["Statement"].as_array_mut().expect("statements").push(audit_statement());

    // The hole is real in the bad policy: the production host can be tagged, then stopped.
    let host_tags = [("flotilla:cluster".to_string(), CLUSTER.to_string())];
    let tag_it = check::Request {
        action: "ec2:CreateTags".into(),
        resource: check::example_arn("instance"),
        resource_tags: host_tags.clone().into(),
        request_tags: [("flotilla:bake".to_string(), CLUSTER.to_string())].into(),
        create_action: None,
    };
    assert_eq!(check::allows(&bad, &tag_it), Ok(true));
    assert_eq!(check::allows(&iam::policy(CLUSTER), &tag_it), Ok(false), "the real policy refuses it");

    // The structural check names it: tags on existing instances and groups, and a scope that
    // is not this cluster's name.
    let violations = check::check(&bad, CLUSTER);
    let tags_existing: BTreeSet<&str> = violations
        .iter()
        .filter_map(|v| match v {
            check::Violation::TagsExisting { sid, kind } if sid == "AuditBakeCreateTagged" => Some(kind.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(tags_existing, BTreeSet::from(["instance", "security-group"]), "{violations:#?}");
    assert!(
        violations
            .iter()
            .any(|v| matches!(v, check::Violation::WrongScope { operator, .. } if operator == "StringLike")),
        "{violations:#?}"
    );
    assert!(violations.iter().any(|v| matches!(v, check::Violation::UnlimitedTags { .. })), "{violations:#?}");
    for v in &violations {
        println!("check: {v}");
    }

    // parliament has no rule for tag-based escalation: it reports nothing above LOW for the
    // added statement (recorded here so a parliament that learns it shows up).
    let bad_text = text(&bad);
    let findings = parliament(&bad_text, Some(&config_path()));
    println!("parliament on the policy with the audit's statement:\n{}", show(&findings));
    let all: Vec<&Value> = findings.iter().collect();
    let on_it: Vec<_> =
        located(&bad_text, &all).into_iter().filter(|(_, sid)| sid == "AuditBakeCreateTagged").collect();
    println!("parliament's findings on AuditBakeCreateTagged: {on_it:?}");
}

#[test]
fn a_create_tags_without_create_action_on_anything_is_caught() {
    for resource in [json!("*"), json!("arn:aws:ec2:*:*:instance/*"), json!("arn:aws:ec2:*:*:volume/*")] {
        let mut bad = iam::policy(CLUSTER);
        let keys = iam::tag_keys(iam::Owner::Cluster);
        bad["Statement"].as_array_mut().expect("statements").push(json!({
            "Sid": "TagExisting",
            "Effect": "Allow",
            "Action": "ec2:CreateTags",
            "Resource": resource,
            "Condition": {
                "StringEquals": { "aws:RequestTag/flotilla:cluster": CLUSTER },
                "ForAllValues:StringEquals": { "aws:TagKeys": keys }
            }
        }));
        let violations = check::check(&bad, CLUSTER);
        assert!(
            violations.iter().any(|v| matches!(v, check::Violation::TagsExisting { sid, .. } if sid == "TagExisting")),
            "{resource}: {violations:#?}"
        );
    }
}
