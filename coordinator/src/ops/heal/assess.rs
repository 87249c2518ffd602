//! Which hosts are lost. Two witnesses must agree: the control plane (the agent unreachable
//! past the grace period) and the provider (the instance gone, terminated or stopped). An
//! agent that is unreachable while its instance runs is a partition or a hung agent: it is
//! reported, never replaced. A planned host the control plane no longer knows (a heal
//! interrupted after forgetting it) or has never assigned is completed.

use std::collections::HashMap;

use flotilla_proto::v1;
use serde::Serialize;

use crate::ops::plan::{PlannedHost, RoleKind};
use crate::providers::{Host, HostState};

/// What heal makes of one planned host.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    Healthy,
    /// Unreachable, but not for the grace period yet.
    Unreachable {
        for_s: f64,
    },
    /// Unreachable past the grace period while the provider says it runs: not replaced.
    Partitioned {
        for_s: f64,
        provider_state: String,
    },
    /// Unreachable past the grace period and gone or stopped at the provider: replaced.
    Lost {
        for_s: f64,
        provider_state: String,
    },
    /// Planned, but unknown to the control plane or never assigned: completed.
    Incomplete {
        provider_state: String,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct HostAssessment {
    pub name: String,
    pub manager: bool,
    #[serde(flatten)]
    pub verdict: Verdict,
}

#[derive(Clone, Debug, Serialize)]
pub struct Assessment {
    pub grace_s: u32,
    pub hosts: Vec<HostAssessment>,
}

/// A provider state in words (`gone` when the provider has no such host).
fn provider_state(h: Option<&Host>) -> String {
    match h.map(|h| &h.state) {
        None | Some(HostState::Terminated) => "gone".into(),
        Some(HostState::Other(s)) => s.clone(),
        Some(s) => format!("{s:?}").to_lowercase(),
    }
}

/// Whether the provider says the host is down for good (nothing will start it again).
pub fn is_down(h: Option<&Host>) -> bool {
    !matches!(h.map(|h| &h.state), Some(HostState::Running | HostState::Pending))
}

/// Judges every planned host from the control plane's status, how long each agent has been
/// unreachable (`unreachable_s`, as the control plane counts it) and the provider's hosts.
pub fn assess(
    planned: &[PlannedHost],
    st: &v1::StatusResponse,
    unreachable_s: &HashMap<String, f64>,
    provider: &[Host],
    grace_s: u32,
) -> Assessment {
    let hosts = planned
        .iter()
        .map(|p| {
            let at_provider = provider.iter().find(|h| h.name == p.name);
            let status = st.hosts.iter().find(|h| h.name == p.name);
            let verdict = match (status, unreachable_s.get(&p.name)) {
                (None, _) => Verdict::Incomplete { provider_state: provider_state(at_provider) },
                (Some(s), None) if s.generation == 0 => {
                    Verdict::Incomplete { provider_state: provider_state(at_provider) }
                }
                // With no grace period (recover's), the provider's word that the host is down
                // outweighs a session the control plane has not seen drop yet (a host removed
                // seconds ago: its connection is cut without a reset, and only the missed
                // heartbeats tell). With one, the grace is counted from the drop, as always.
                (Some(_), None) if grace_s == 0 && is_down(at_provider) => {
                    Verdict::Lost { for_s: 0.0, provider_state: provider_state(at_provider) }
                }
                (Some(_), None) => Verdict::Healthy,
                (Some(_), Some(&for_s)) if for_s < f64::from(grace_s) => Verdict::Unreachable { for_s },
                (Some(_), Some(&for_s)) if is_down(at_provider) => {
                    Verdict::Lost { for_s, provider_state: provider_state(at_provider) }
                }
                (Some(_), Some(&for_s)) => Verdict::Partitioned { for_s, provider_state: provider_state(at_provider) },
            };
            HostAssessment { name: p.name.clone(), manager: p.has(RoleKind::Manager), verdict }
        })
        .collect();
    Assessment { grace_s, hosts }
}

impl Assessment {
    fn managers(&self) -> impl Iterator<Item = &HostAssessment> {
        self.hosts.iter().filter(|h| h.manager)
    }

    /// Why acting now could cost quorum, if it could: a lost manager is removed from Raft
    /// only while a majority of the managers is healthy.
    pub fn quorum_refusal(&self) -> Option<String> {
        let total = self.managers().count();
        let lost: Vec<&str> =
            self.managers().filter(|h| matches!(h.verdict, Verdict::Lost { .. })).map(|h| h.name.as_str()).collect();
        let healthy = self.managers().filter(|h| h.verdict == Verdict::Healthy).count();
        let quorum = total / 2 + 1;
        if lost.is_empty() || healthy >= quorum {
            return None;
        }
        let down: Vec<&str> =
            self.managers().filter(|h| h.verdict != Verdict::Healthy).map(|h| h.name.as_str()).collect();
        Some(format!(
            "{} of {total} managers are down ({}), {} lost for good: the swarm needs {quorum} healthy managers for a quorum and has {healthy}. Heal removes a lost manager from Raft only with a quorum, so it does nothing now",
            down.len(),
            down.join(", "),
            lost.join(", "),
        ))
    }

    /// The next host to replace or complete: unfinished ones first (an interrupted heal),
    /// then lost managers, then lost nodes.
    pub fn next(&self) -> Option<&HostAssessment> {
        let incomplete = self.hosts.iter().find(|h| matches!(h.verdict, Verdict::Incomplete { .. }));
        let lost = |manager: bool| {
            self.hosts.iter().find(|h| h.manager == manager && matches!(h.verdict, Verdict::Lost { .. }))
        };
        incomplete.or_else(|| lost(true)).or_else(|| lost(false))
    }

    /// Every host heal would act on, in its order.
    pub fn to_act_on(&self) -> Vec<&HostAssessment> {
        let mut v: Vec<&HostAssessment> =
            self.hosts.iter().filter(|h| matches!(h.verdict, Verdict::Incomplete { .. })).collect();
        for manager in [true, false] {
            v.extend(self.hosts.iter().filter(|h| h.manager == manager && matches!(h.verdict, Verdict::Lost { .. })));
        }
        v
    }
}

impl HostAssessment {
    /// One line for the progress and the table.
    pub fn line(&self) -> String {
        match &self.verdict {
            Verdict::Healthy => "healthy".into(),
            Verdict::Unreachable { for_s } => {
                format!("agent unreachable for {for_s:.0} s (within the grace period; not lost yet)")
            }
            Verdict::Partitioned { for_s, provider_state } => format!(
                "agent unreachable for {for_s:.0} s but the provider says the host is {provider_state}: not replaced (a network partition or a hung agent? look at the host)"
            ),
            Verdict::Lost { for_s, provider_state } => {
                format!("lost: agent unreachable for {for_s:.0} s and the host is {provider_state} at the provider")
            }
            Verdict::Incomplete { provider_state } => format!(
                "not enrolled or not assigned yet (host {provider_state} at the provider): an earlier heal or deploy did not finish"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cluster_config::ClusterConfig;
    use crate::ops::plan;

    fn status(names: &[&str]) -> v1::StatusResponse {
        v1::StatusResponse {
            hosts: names
                .iter()
                .map(|n| v1::HostStatus { name: n.to_string(), generation: 1, ..Default::default() })
                .collect(),
            ..Default::default()
        }
    }

    fn running(name: &str) -> Host {
        Host {
            name: name.into(),
            instance_id: format!("i-{name}"),
            role: String::new(),
            state: HostState::Running,
            private_ip: None,
            image: String::new(),
        }
    }

    const ALL: [&str; 5] = ["manager0", "manager1", "manager2", "node0", "node1"];

    #[test]
    fn only_an_unreachable_host_the_provider_reports_gone_is_lost() {
        let planned = plan::plan(&ClusterConfig::default(), &Default::default());
        let st = status(&ALL);
        let mut provider: Vec<Host> = ALL.iter().map(|n| running(n)).collect();
        provider.retain(|h| h.name != "manager1");
        provider.iter_mut().filter(|h| h.name == "node1").for_each(|h| h.state = HostState::Stopped);
        let u = HashMap::from([
            ("manager1".to_string(), 75.0),
            ("manager2".to_string(), 90.0),
            ("node0".to_string(), 20.0),
            ("node1".to_string(), 61.0),
        ]);
        let a = assess(&planned, &st, &u, &provider, 60);
        let v: HashMap<&str, &Verdict> = a.hosts.iter().map(|h| (h.name.as_str(), &h.verdict)).collect();
        assert_eq!(v["manager0"], &Verdict::Healthy);
        assert_eq!(v["manager1"], &Verdict::Lost { for_s: 75.0, provider_state: "gone".into() });
        assert_eq!(v["manager2"], &Verdict::Partitioned { for_s: 90.0, provider_state: "running".into() });
        assert_eq!(v["node0"], &Verdict::Unreachable { for_s: 20.0 });
        assert_eq!(v["node1"], &Verdict::Lost { for_s: 61.0, provider_state: "stopped".into() });
        // manager1 lost and manager2 partitioned: one healthy manager of three.
        let refusal = a.quorum_refusal().expect("no quorum");
        assert!(refusal.contains("manager1, manager2") && refusal.contains("needs 2"), "{refusal}");
    }

    #[test]
    fn with_no_grace_a_host_the_provider_reports_down_is_lost_before_its_session_drops() {
        let planned = plan::plan(&ClusterConfig::default(), &Default::default());
        let provider: Vec<Host> = ["manager0", "node0", "node1"].iter().map(|n| running(n)).collect();
        // manager1 and manager2 removed a moment ago: the control plane still counts them.
        let none = HashMap::new();
        let now = assess(&planned, &status(&ALL), &none, &provider, 0);
        let v: HashMap<&str, &Verdict> = now.hosts.iter().map(|h| (h.name.as_str(), &h.verdict)).collect();
        assert_eq!(v["manager0"], &Verdict::Healthy);
        assert_eq!(v["manager1"], &Verdict::Lost { for_s: 0.0, provider_state: "gone".into() });
        assert_eq!(v["manager2"], &Verdict::Lost { for_s: 0.0, provider_state: "gone".into() });
        // With a grace period the same view keeps them healthy until their sessions drop.
        let graced = assess(&planned, &status(&ALL), &none, &provider, 60);
        assert!(graced.hosts.iter().all(|h| h.verdict == Verdict::Healthy), "{:?}", graced.hosts);
    }

    #[test]
    fn one_lost_manager_is_healed_first_and_two_are_refused() {
        let planned = plan::plan(&ClusterConfig::default(), &Default::default());
        let provider: Vec<Host> = ["manager0", "manager2", "node0"].iter().map(|n| running(n)).collect();
        let one = HashMap::from([("manager1".to_string(), 70.0), ("node1".to_string(), 70.0)]);
        let a = assess(&planned, &status(&ALL), &one, &provider, 60);
        assert_eq!(a.quorum_refusal(), None);
        assert_eq!(a.next().map(|h| h.name.as_str()), Some("manager1"));
        assert_eq!(a.to_act_on().iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["manager1", "node1"]);
        let two = HashMap::from([("manager1".to_string(), 70.0), ("manager0".to_string(), 70.0)]);
        let provider: Vec<Host> = ["manager2", "node0", "node1"].iter().map(|n| running(n)).collect();
        let a = assess(&planned, &status(&ALL), &two, &provider, 60);
        assert!(a.quorum_refusal().is_some());
    }

    #[test]
    fn a_planned_host_the_control_plane_forgot_is_completed_before_anything_else() {
        let planned = plan::plan(&ClusterConfig::default(), &Default::default());
        let st = status(&["manager0", "manager1", "manager2", "node0"]);
        let provider: Vec<Host> = ["manager0", "manager1", "manager2", "node0"].iter().map(|n| running(n)).collect();
        let a = assess(&planned, &st, &HashMap::new(), &provider, 60);
        let next = a.next().expect("node1");
        assert_eq!(
            (next.name.as_str(), &next.verdict),
            ("node1", &Verdict::Incomplete { provider_state: "gone".into() })
        );
    }
}
