//! `coordinator env`: the environment that points the plain `docker` CLI at the swarm
//! leader ([`EnvView`]), read from `status`'s view of the cluster; `env --unset` (Docker
//! Machine's `env -u`) the lines that undo it ([`UnsetView`]).

use std::collections::BTreeMap;

use clap::Args;
use flotilla_proto::v1;
use serde::{Serialize, Serializer};

use super::status::StatusView;
use super::{CliError, Global, Output, json_line};
use crate::ops::verify::DOCKER_ENV_VARS;
use crate::ui::self_command;

#[derive(Args, Debug)]
pub struct EnvArgs {
    #[arg(long, short, value_enum, default_value = "table")]
    pub output: Output,
    /// Print the `unset` lines that point `docker` back at this machine's Engine (needs no
    /// cluster).
    #[arg(long, short = 'u')]
    pub unset: bool,
}

/// `env --output json`: one object of the variables, `{"DOCKER_HOST": …, …}`.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct EnvView {
    /// The variables in the order `export` lines print them.
    #[serde(serialize_with = "as_map")]
    pub vars: Vec<(String, String)>,
    /// The leader's host name (the table's closing comment).
    #[serde(skip)]
    pub leader: String,
    #[serde(skip)]
    pub cluster: String,
    /// How to run this program in the closing comment (`coordinator`, or its path).
    #[serde(skip)]
    pub command: String,
}

fn as_map<S: Serializer>(vars: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(vars.iter().cloned().collect::<BTreeMap<_, _>>())
}

impl EnvView {
    /// `export` lines for `eval`, and a comment naming the leader.
    pub fn table(&self) -> String {
        let mut out: String = self.vars.iter().map(|(k, val)| format!("export {k}={val}\n")).collect();
        out.push_str(&format!(
            "# leader: {} — run: eval \"$({} --cluster {} env)\"; undo: eval \"$({} env --unset)\"",
            self.leader, self.command, self.cluster, self.command
        ));
        out
    }
}

/// `env --unset --output json`: `{"unset": ["DOCKER_HOST", …]}`.
#[derive(Debug, Serialize)]
pub struct UnsetView {
    pub unset: Vec<&'static str>,
    #[serde(skip)]
    pub command: String,
}

impl UnsetView {
    pub fn new(command: String) -> Self {
        Self { unset: DOCKER_ENV_VARS.to_vec(), command }
    }

    /// `unset` lines for `eval`, and how to run them.
    pub fn table(&self) -> String {
        let mut out: String = self.unset.iter().map(|k| format!("unset {k}\n")).collect();
        out.push_str(&format!("# run: eval \"$({} env --unset)\"", self.command));
        out
    }
}

pub async fn run(g: &Global, args: EnvArgs) -> Result<(), CliError> {
    if args.unset {
        let view = UnsetView::new(self_command());
        match args.output {
            Output::Json => outln!("{}", json_line(&view)),
            Output::Table => outln!("{}", view.table()),
        }
        return Ok(());
    }
    let mut admin = g.admin().await?;
    let st = admin.status(v1::StatusRequest::default()).await?.into_inner();
    let mut swarm = StatusView::from(&st).swarm;
    if swarm.leader_addr.is_empty() {
        // The last samples may predate the swarm's last change (right after a deploy, or an
        // election): ask the agents for fresh ones before giving up.
        let st = admin.status(v1::StatusRequest { fresh: true }).await?.into_inner();
        swarm = StatusView::from(&st).swarm;
    }
    if swarm.leader_addr.is_empty() {
        return Err(CliError::NoLeader { cluster: g.cluster() });
    }
    let ip = swarm.leader_addr.split(':').next().unwrap_or_default();
    let view = EnvView {
        vars: crate::ops::verify::docker_env(ip, &g.state_dir().join("docker")),
        leader: swarm.leader,
        cluster: g.cluster(),
        command: self_command(),
    };
    match args.output {
        Output::Json => outln!("{}", json_line(&view)),
        Output::Table => outln!("{}", view.table()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_one_object_of_the_variables_and_the_table_exports_them_in_order() {
        let vars = crate::ops::verify::docker_env("10.0.0.5", std::path::Path::new("/state/docker"));
        let old = serde_json::json!(vars.iter().cloned().collect::<BTreeMap<_, _>>());
        let view = EnvView {
            vars: vars.clone(),
            leader: "manager0".into(),
            cluster: "demo".into(),
            command: "coordinator".into(),
        };
        assert_eq!(json_line(&view), old.to_string());
        let mut expected: Vec<String> = vars.iter().map(|(k, v)| format!("export {k}={v}")).collect();
        expected.push(
            "# leader: manager0 — run: eval \"$(coordinator --cluster demo env)\"; undo: eval \"$(coordinator env --unset)\""
                .into(),
        );
        assert_eq!(view.table(), expected.join("\n"));
    }

    #[test]
    fn unset_undoes_every_variable_env_exports() {
        let view = UnsetView::new("/opt/bin/coordinator".into());
        let exported: Vec<String> = crate::ops::verify::docker_env("10.0.0.5", std::path::Path::new("/d"))
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let table = view.table();
        for k in &exported {
            assert!(table.lines().any(|l| l == format!("unset {k}")), "{k} is unset: {table}");
        }
        assert!(table.ends_with("# run: eval \"$(/opt/bin/coordinator env --unset)\""), "{table}");
        assert_eq!(json_line(&view), r#"{"unset":["DOCKER_HOST","DOCKER_TLS_VERIFY","DOCKER_CERT_PATH"]}"#);
    }
}
