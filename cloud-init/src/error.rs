//! The one error type of this crate: every way an input can be refused, each variant naming the
//! field it is about. Secrets (the join token) are never echoed back.

/// Why user-data could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `cluster` or `host_name` is not a DNS label.
    #[error(
        "{field}: {value:?} is not a valid name: {reason} \
         (expected 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-')"
    )]
    InvalidName { field: &'static str, value: String, reason: &'static str },

    /// The coordinator list is empty.
    #[error("coordinator: at least one coordinator endpoint (host:port) is required")]
    NoCoordinator,

    /// One coordinator endpoint is not `host:port`.
    #[error("coordinator[{index}]: {value:?} is not a valid host:port endpoint: {reason}")]
    InvalidCoordinator { index: usize, value: String, reason: &'static str },

    /// One insecure registry is not `host:port`.
    #[error("insecure_registries[{index}]: {value:?} is not a valid host:port registry address: {reason}")]
    InvalidInsecureRegistry { index: usize, value: String, reason: &'static str },

    /// The CA PEM contains a private key. User-data is readable through the instance metadata
    /// service and is kept by cloud-init on disk: it must never carry one.
    #[error(
        "ca_pem: contains a private key; pass only the CA certificate(s) \
         (the user-data must never carry a private key)"
    )]
    PrivateKeyInCa,

    /// The CA PEM is not one or more `-----BEGIN CERTIFICATE-----` blocks.
    #[error("ca_pem: not a PEM certificate or certificate chain: {reason}")]
    InvalidCaPem { reason: String },

    /// The join token is empty, too long, or has characters outside `[A-Za-z0-9._~+/=-]`.
    /// The token itself is not repeated in the message.
    #[error("join_token: {reason}")]
    InvalidToken { reason: &'static str },

    /// The agent binary's checksum is not 64 hexadecimal digits.
    #[error("{field}: {value:?} is not a SHA-256 digest (expected 64 hexadecimal digits)")]
    InvalidSha256 { field: &'static str, value: String },

    /// The agent binary's URL is not a plain `https://` URL.
    #[error("agent.url: {value:?} is not a valid agent download URL: {reason}")]
    InvalidAgentUrl { value: String, reason: &'static str },

    /// The bake report URL is not a plain `https://` URL.
    #[error("report.url: {value:?} is not a valid bake report URL: {reason}")]
    InvalidReportUrl { value: String, reason: &'static str },

    /// The bake report nonce is not 16 to 128 ASCII letters and digits.
    #[error("report.nonce: not 16 to 128 ASCII letters and digits")]
    InvalidReportNonce,

    /// The agent version is empty or has unexpected characters.
    #[error(
        "agent.version: {value:?} is not a valid version \
         (expected 1-64 characters of A-Z, a-z, 0-9, '.', '_', '+', '-')"
    )]
    InvalidAgentVersion { value: String },

    /// The heartbeat interval is 0 or more than an hour.
    #[error("heartbeat_interval_s: {value} is out of range (expected 1..=3600 seconds)")]
    InvalidHeartbeatInterval { value: u32 },

    /// The rendered document is over EC2's user-data limit.
    #[error(
        "user-data is {size} bytes, over the {limit}-byte limit of EC2 user-data \
         (is the CA chain unusually long?)"
    )]
    TooLarge { size: usize, limit: usize },

    /// The rendered document contains `PRIVATE KEY`. Unreachable with validated inputs; checked
    /// on every output anyway.
    #[error("rendered user-data contains \"PRIVATE KEY\"; refusing to emit it")]
    PrivateKeyInOutput,
}
