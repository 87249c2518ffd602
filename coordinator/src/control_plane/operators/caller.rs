//! Who is calling the admin API, as the audit names it (see [`super`]).

use std::fmt;

/// Who is calling the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// The state directory's unix socket; the peer's uid when the kernel said.
    LocalSocket { uid: Option<u32> },
    /// An operator certificate on the agent port, checked against the store.
    Operator { name: String, serial: String, peer: String },
}

impl Caller {
    pub fn is_local(&self) -> bool {
        matches!(self, Caller::LocalSocket { .. })
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::LocalSocket { uid: Some(uid) } => write!(f, "local socket (uid {uid})"),
            Caller::LocalSocket { uid: None } => write!(f, "local socket"),
            Caller::Operator { name, serial, peer } => write!(f, "operator {name} (serial {serial}) from {peer}"),
        }
    }
}
