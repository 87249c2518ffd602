//! One-time join tokens: 256 random bits, bound to one host name, short-lived, stored only
//! as a SHA-256 hash, and consumed by the enrollment that uses them.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::control_plane::store::{StoreError, TokenRecord, Tx};

/// Default lifetime of a join token.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// The longest lifetime a token may be given.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why a token was refused. Each has its own message, so the operator knows what to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenRefusal {
    #[error(
        "join token is not valid (unknown to this cluster); mint one with `coordinator token create --host <name>`"
    )]
    Unknown,
    #[error(
        "join token was already used (at {used_unix_ms} ms since epoch); tokens are single-use — mint a new one with `coordinator token create --host {host}`"
    )]
    AlreadyUsed { host: String, used_unix_ms: i64 },
    #[error("join token expired {ago_s} s ago; mint a new one with `coordinator token create --host {host}`")]
    Expired { host: String, ago_s: i64 },
    #[error("join token was minted for host '{minted_for}', not for '{presented_by}'")]
    WrongHost { minted_for: String, presented_by: String },
    #[error("join token is malformed: expected 64 hex characters")]
    Malformed,
}

impl TokenRefusal {
    /// The audit event kind's suffix.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::AlreadyUsed { .. } => "reused",
            Self::Expired { .. } => "expired",
            Self::WrongHost { .. } => "wrong-host",
            Self::Malformed => "malformed",
        }
    }
}

/// A freshly minted token: the secret, shown once, and its record.
pub struct Minted {
    pub token: String,
    pub hash: String,
    pub record: TokenRecord,
}

/// Mints a token for `host`, valid for `ttl` from `now_ms`. The caller stores `hash` →
/// `record`; `token` goes to the host and nowhere else.
pub fn mint(host: &str, ttl: Duration, now_ms: i64) -> Minted {
    let bytes: [u8; 32] = rand::random();
    let token = hex::encode(bytes);
    Minted {
        hash: hash(&token),
        record: TokenRecord {
            host_name: host.to_string(),
            created_unix_ms: now_ms,
            expires_unix_ms: now_ms + ttl.as_millis() as i64,
            used_unix_ms: None,
        },
        token,
    }
}

/// The stored form of a token.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

/// Checks `token` for `host` inside a write transaction without consuming it.
pub fn check(tx: &Tx<'_>, token: &str, host: &str, now_ms: i64) -> Result<Result<String, TokenRefusal>, StoreError> {
    check_with(|h| tx.token(h), token, host, now_ms)
}

/// [`check`] against any lookup (a read transaction, for the cheap first look).
pub fn check_with(
    lookup: impl FnOnce(&str) -> Result<Option<TokenRecord>, StoreError>,
    token: &str,
    host: &str,
    now_ms: i64,
) -> Result<Result<String, TokenRefusal>, StoreError> {
    let token = token.trim();
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(Err(TokenRefusal::Malformed));
    }
    let h = hash(token);
    let Some(rec) = lookup(&h)? else {
        return Ok(Err(TokenRefusal::Unknown));
    };
    if let Some(used) = rec.used_unix_ms {
        return Ok(Err(TokenRefusal::AlreadyUsed { host: rec.host_name, used_unix_ms: used }));
    }
    if now_ms >= rec.expires_unix_ms {
        return Ok(Err(TokenRefusal::Expired { host: rec.host_name, ago_s: (now_ms - rec.expires_unix_ms) / 1000 }));
    }
    if rec.host_name != host {
        return Ok(Err(TokenRefusal::WrongHost { minted_for: rec.host_name, presented_by: host.to_string() }));
    }
    Ok(Ok(h))
}

/// Marks the token with hash `h` used. Used tokens are kept until they would have expired,
/// so a replay is reported as a reuse rather than as an unknown token.
pub fn consume(tx: &mut Tx<'_>, h: &str, now_ms: i64) -> Result<(), StoreError> {
    if let Some(mut rec) = tx.token(h)? {
        rec.used_unix_ms = Some(now_ms);
        tx.put_token(h, &rec)?;
    }
    Ok(())
}

/// Drops tokens past their expiry by more than a day (they can only be "unknown" then).
pub fn prune(tx: &mut Tx<'_>, now_ms: i64) -> Result<usize, StoreError> {
    tx.remove_tokens(|r| now_ms > r.expires_unix_ms + 24 * 3600 * 1000)
}
