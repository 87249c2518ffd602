//! Every error of the control plane becomes a `tonic::Status` here, and only here: the
//! gRPC edges ([`super::agent_api`], [`super::admin_api`]) call [`IntoStatus::into_status`].

use tonic::Status;

use crate::control_plane::agent_upgrade::AgentUpgradeError;
use crate::control_plane::backup::restore::RestoreError;
use crate::control_plane::backup::{BackupError, UploadError};
use crate::control_plane::core::ControlError;
use crate::control_plane::enroll::EnrollError;
use crate::control_plane::log_router::LogsError;
use crate::control_plane::operators::OperatorError;
use crate::control_plane::session::{AuthError, SessionError};
use crate::control_plane::tokens::TokenRefusal;

/// The single mapping from the control plane's errors to gRPC statuses.
pub trait IntoStatus {
    fn into_status(self) -> Status;
}

impl IntoStatus for AuthError {
    fn into_status(self) -> Status {
        match self {
            AuthError::NoCertificate | AuthError::Unparseable => Status::unauthenticated(self.to_string()),
            AuthError::Protocol(_) => Status::failed_precondition(self.to_string()),
            _ => Status::permission_denied(self.to_string()),
        }
    }
}

impl IntoStatus for EnrollError {
    fn into_status(self) -> Status {
        match &self {
            EnrollError::Token(TokenRefusal::Malformed) => Status::unauthenticated(self.to_string()),
            EnrollError::Token(_) => Status::unauthenticated(self.to_string()),
            EnrollError::Csr(_) | EnrollError::BadHostName(_) => Status::invalid_argument(self.to_string()),
            EnrollError::Store(_) | EnrollError::Pki(_) => {
                Status::internal(format!("enrollment failed on the coordinator: {self}"))
            }
        }
    }
}

impl IntoStatus for SessionError {
    fn into_status(self) -> Status {
        match &self {
            SessionError::NoHello => Status::invalid_argument(self.to_string()),
            SessionError::HelloTimeout(_) => Status::deadline_exceeded(self.to_string()),
            SessionError::IdentityMismatch { .. } => Status::permission_denied(self.to_string()),
            SessionError::Protocol(_) => Status::failed_precondition(self.to_string()),
            SessionError::Stream(s) => s.clone(),
            SessionError::Invalidated(_) => Status::permission_denied(self.to_string()),
            SessionError::Store(_) | SessionError::Task(_) => Status::internal(self.to_string()),
        }
    }
}

impl IntoStatus for ControlError {
    fn into_status(self) -> Status {
        match &self {
            ControlError::BadHostName(_) | ControlError::TtlTooLong(_) => Status::invalid_argument(self.to_string()),
            ControlError::UnknownHost(_) => Status::not_found(self.to_string()),
            ControlError::BadAssignment { .. } | ControlError::NoActionKind | ControlError::NoRoleContainer => {
                Status::invalid_argument(self.to_string())
            }
            ControlError::NotConnected(_) => Status::unavailable(self.to_string()),
            ControlError::EngineCsr { .. } => Status::failed_precondition(self.to_string()),
            ControlError::Store(_) | ControlError::Pki(_) => Status::internal(self.to_string()),
        }
    }
}

impl IntoStatus for LogsError {
    fn into_status(self) -> Status {
        match &self {
            LogsError::UnknownHost(_) => Status::not_found(self.to_string()),
            LogsError::NotConnected(_) => Status::unavailable(self.to_string()),
            LogsError::Nothing(_) => Status::invalid_argument(self.to_string()),
            LogsError::Store(_) => Status::internal(self.to_string()),
        }
    }
}

impl IntoStatus for OperatorError {
    fn into_status(self) -> Status {
        match &self {
            OperatorError::NoCertificate => Status::unauthenticated(self.to_string()),
            OperatorError::EngineClient { .. }
            | OperatorError::NotAnOperator { .. }
            | OperatorError::Unknown { .. }
            | OperatorError::Revoked { .. }
            | OperatorError::Expired { .. }
            | OperatorError::LocalOnly { .. } => Status::permission_denied(self.to_string()),
            OperatorError::BadName(_) | OperatorError::Csr(_) => Status::invalid_argument(self.to_string()),
            OperatorError::UnknownName(_) => Status::not_found(self.to_string()),
            OperatorError::Pki(_) | OperatorError::Store(_) => Status::internal(self.to_string()),
        }
    }
}

impl IntoStatus for BackupError {
    fn into_status(self) -> Status {
        match &self {
            BackupError::Busy => Status::aborted(self.to_string()),
            BackupError::Unsafe(_) | BackupError::NoConsul(_) => Status::failed_precondition(self.to_string()),
            BackupError::NotConnected(_) => Status::unavailable(self.to_string()),
            BackupError::Agent { .. } => Status::failed_precondition(self.to_string()),
            BackupError::TimedOut { .. } => Status::deadline_exceeded(self.to_string()),
            BackupError::Control(_) | BackupError::Archive(_) | BackupError::Task(_) => {
                Status::internal(self.to_string())
            }
        }
    }
}

impl IntoStatus for AgentUpgradeError {
    fn into_status(self) -> Status {
        match &self {
            AgentUpgradeError::NotLocal => Status::permission_denied(self.to_string()),
            AgentUpgradeError::Read { .. } | AgentUpgradeError::BadDigest(_) => {
                Status::invalid_argument(self.to_string())
            }
            AgentUpgradeError::NotConnected(_) => Status::unavailable(self.to_string()),
            AgentUpgradeError::Agent { .. } => Status::failed_precondition(self.to_string()),
            AgentUpgradeError::TimedOut { .. } => Status::deadline_exceeded(self.to_string()),
            AgentUpgradeError::Unknown { .. } => Status::not_found(self.to_string()),
            AgentUpgradeError::Task(_) => Status::internal(self.to_string()),
        }
    }
}

impl IntoStatus for RestoreError {
    fn into_status(self) -> Status {
        match &self {
            RestoreError::Archive(crate::control_plane::backup::archive::ArchiveError::Tampered { .. }) => {
                Status::failed_precondition(self.to_string())
            }
            RestoreError::Archive(_) | RestoreError::Kind(_) => Status::not_found(self.to_string()),
            RestoreError::NotConnected(_) => Status::unavailable(self.to_string()),
            RestoreError::Agent { .. } => Status::failed_precondition(self.to_string()),
            RestoreError::TimedOut { .. } => Status::deadline_exceeded(self.to_string()),
            RestoreError::Unknown { .. } => Status::not_found(self.to_string()),
            RestoreError::Task(_) => Status::internal(self.to_string()),
        }
    }
}

impl IntoStatus for UploadError {
    fn into_status(self) -> Status {
        match &self {
            UploadError::Empty | UploadError::Truncated { .. } => Status::invalid_argument(self.to_string()),
            UploadError::Unknown { .. } => Status::not_found(self.to_string()),
            UploadError::TooLarge { .. } => Status::resource_exhausted(self.to_string()),
            UploadError::Digest { .. } => Status::data_loss(self.to_string()),
        }
    }
}
