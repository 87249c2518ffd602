//! How a backup is kept (issue 16): `<state>/backups/<id>.age`, the archive encrypted with
//! age (a post-quantum hybrid recipient; its identity is `<state>/backup.key`, 0600, made on
//! first use), next to `<id>.json`, its record: kind, source host, time, the Engine's and
//! Consul's versions, the archive's size and SHA-256, and the encrypted file's SHA-256. The
//! record is written last: a backup without one was never completed and is not listed.
//!
//! [`open`] is the only way back to the bytes, and it checks both digests: a file changed by
//! one byte is refused by its SHA-256 before it is decrypted (and age's authentication and
//! the archive's own digest would refuse it after). `recover` restores from [`latest`].

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The record's format version.
pub const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("backup key {}: {detail} (it decrypts every backup of the cluster: restore it from a state export)", path.display())]
    Key { path: PathBuf, detail: String },
    #[error("encrypting backup {id}: {detail}")]
    Encrypt { id: String, detail: String },
    #[error(
        "backup {} refused: its {what} SHA-256 is {actual}, its record says {expected} (the file was changed or damaged; restore from another backup)",
        path.display()
    )]
    Tampered { path: PathBuf, what: &'static str, expected: String, actual: String },
    #[error("backup {} refused: it does not decrypt with {}: {detail}", path.display(), key.display())]
    Decrypt { path: PathBuf, key: PathBuf, detail: String },
    #[error("backup record {}: {detail}", path.display())]
    Record { path: PathBuf, detail: String },
    #[error("no backup '{0}' in this cluster's state directory")]
    NotFound(String),
}

/// One stored backup's record (`<id>.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupMeta {
    pub format: u32,
    pub id: String,
    /// `swarm` or `consul`.
    pub kind: String,
    pub host: String,
    pub taken_unix_ms: i64,
    pub engine_version: String,
    pub consul_version: String,
    /// The archive before encryption.
    pub size_bytes: u64,
    pub sha256: String,
    /// The `.age` file as written.
    pub encrypted_bytes: u64,
    pub encrypted_sha256: String,
    /// From the coordinator's request to the stored file.
    pub duration_ms: u64,
}

/// What [`store`] needs besides the bytes.
#[derive(Clone, Debug)]
pub struct Source {
    pub kind: String,
    pub host: String,
    pub taken_unix_ms: i64,
    pub engine_version: String,
    pub consul_version: String,
    pub duration_ms: u64,
}

pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("backups")
}

pub fn key_path(state_dir: &Path) -> PathBuf {
    state_dir.join("backup.key")
}

/// The encrypted file of a record.
pub fn file_of(state_dir: &Path, meta: &BackupMeta) -> PathBuf {
    dir(state_dir).join(format!("{}.age", meta.id))
}

fn record_of(state_dir: &Path, id: &str) -> PathBuf {
    dir(state_dir).join(format!("{id}.json"))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io { path: path.to_path_buf(), source }
}

/// The cluster's backup identity, made (0600) on first use.
fn identity(state_dir: &Path, create: bool) -> Result<age::pq::Identity, ArchiveError> {
    let path = key_path(state_dir);
    let bad = |detail: String| ArchiveError::Key { path: path.clone(), detail };
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<age::pq::Identity>().map_err(|e| bad(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let id = age::pq::Identity::generate();
            let text = format!("{}\n", id.to_string().expose_secret());
            flotilla_proto::fs::write_private(&path, text.as_bytes()).map_err(|e| bad(e.to_string()))?;
            Ok(id)
        }
        Err(e) => Err(bad(e.to_string())),
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Encrypts `data` and stores it with its record; returns the record.
pub fn store(state_dir: &Path, src: &Source, data: &[u8]) -> Result<BackupMeta, ArchiveError> {
    let id = format!("{:013}-{}", src.taken_unix_ms, src.kind);
    let recipient = identity(state_dir, true)?.to_public();
    let enc = |e: &dyn std::fmt::Display| ArchiveError::Encrypt { id: id.clone(), detail: e.to_string() };
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient)).map_err(|e| enc(&e))?;
    let mut sealed = Vec::with_capacity(data.len() + 4096);
    let mut w = encryptor.wrap_output(&mut sealed).map_err(|e| enc(&e))?;
    w.write_all(data).map_err(|e| enc(&e))?;
    w.finish().map_err(|e| enc(&e))?;
    let meta = BackupMeta {
        format: FORMAT,
        id: id.clone(),
        kind: src.kind.clone(),
        host: src.host.clone(),
        taken_unix_ms: src.taken_unix_ms,
        engine_version: src.engine_version.clone(),
        consul_version: src.consul_version.clone(),
        size_bytes: data.len() as u64,
        sha256: sha256_hex(data),
        encrypted_bytes: sealed.len() as u64,
        encrypted_sha256: sha256_hex(&sealed),
        duration_ms: src.duration_ms,
    };
    let d = dir(state_dir);
    flotilla_proto::fs::private_dir(&d).map_err(io(&d))?;
    let file = file_of(state_dir, &meta);
    flotilla_proto::fs::write_private(&file, &sealed).map_err(io(&file))?;
    let record = record_of(state_dir, &id);
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| enc(&e))?;
    flotilla_proto::fs::write_private(&record, &json).map_err(io(&record))?;
    Ok(meta)
}

/// Every completed backup's record, oldest first.
pub fn list(state_dir: &Path) -> Result<Vec<BackupMeta>, ArchiveError> {
    let d = dir(state_dir);
    let entries = match std::fs::read_dir(&d) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ArchiveError::Io { path: d, source: e }),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(io(&d))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read(&path).map_err(io(&path))?;
        let meta: BackupMeta = serde_json::from_slice(&text)
            .map_err(|e| ArchiveError::Record { path: path.clone(), detail: e.to_string() })?;
        out.push(meta);
    }
    out.sort_by(|a, b| (a.taken_unix_ms, &a.id).cmp(&(b.taken_unix_ms, &b.id)));
    Ok(out)
}

/// The record of backup `id`.
pub fn find(state_dir: &Path, id: &str) -> Result<BackupMeta, ArchiveError> {
    list(state_dir)?.into_iter().find(|m| m.id == id).ok_or_else(|| ArchiveError::NotFound(id.to_string()))
}

/// The archive of `meta`, decrypted — after its file's digest, age's authentication and the
/// archive's digest all agree with its record.
pub fn open(state_dir: &Path, meta: &BackupMeta) -> Result<Vec<u8>, ArchiveError> {
    let path = file_of(state_dir, meta);
    let sealed = std::fs::read(&path).map_err(io(&path))?;
    let actual = sha256_hex(&sealed);
    if actual != meta.encrypted_sha256 {
        return Err(ArchiveError::Tampered { path, what: "file's", expected: meta.encrypted_sha256.clone(), actual });
    }
    let id = identity(state_dir, false)?;
    let key = key_path(state_dir);
    let fail = |e: &dyn std::fmt::Display| ArchiveError::Decrypt {
        path: path.clone(),
        key: key.clone(),
        detail: e.to_string(),
    };
    let decryptor = age::Decryptor::new(sealed.as_slice()).map_err(|e| fail(&e))?;
    let mut reader = decryptor.decrypt(std::iter::once(&id as &dyn age::Identity)).map_err(|e| fail(&e))?;
    let mut data = Vec::with_capacity(meta.size_bytes as usize);
    reader.read_to_end(&mut data).map_err(|e| fail(&e))?;
    let actual = sha256_hex(&data);
    if actual != meta.sha256 {
        return Err(ArchiveError::Tampered { path, what: "archive's", expected: meta.sha256.clone(), actual });
    }
    Ok(data)
}

/// A backup ready to restore, and the newer ones of its kind that were refused.
#[derive(Debug)]
pub struct Restorable {
    pub meta: BackupMeta,
    pub data: Vec<u8>,
    pub refused: Vec<(BackupMeta, ArchiveError)>,
}

/// The newest backup of `kind` that verifies (decrypted), for a restore; the newer ones
/// refused on the way are listed so the caller can say so. `None`: none verifies.
pub fn latest(state_dir: &Path, kind: &str) -> Result<Option<Restorable>, ArchiveError> {
    let mut refused = Vec::new();
    for meta in list(state_dir)?.into_iter().rev().filter(|m| m.kind == kind) {
        match open(state_dir, &meta) {
            Ok(data) => return Ok(Some(Restorable { meta, data, refused })),
            Err(e) => refused.push((meta, e)),
        }
    }
    Ok(None)
}

/// Deletes all but the newest `keep` backups of each kind; returns the ids removed.
pub fn prune(state_dir: &Path, keep: usize) -> Result<Vec<String>, ArchiveError> {
    let all = list(state_dir)?;
    let mut removed = Vec::new();
    let mut kinds: Vec<&str> = all.iter().map(|m| m.kind.as_str()).collect();
    kinds.dedup();
    kinds.sort();
    kinds.dedup();
    for kind in kinds {
        let of_kind: Vec<&BackupMeta> = all.iter().filter(|m| m.kind == kind).collect();
        let excess = of_kind.len().saturating_sub(keep);
        for meta in &of_kind[..excess] {
            // The record first: a backup without its record is no longer listed.
            let record = record_of(state_dir, &meta.id);
            std::fs::remove_file(&record).map_err(io(&record))?;
            let file = file_of(state_dir, meta);
            let _ = std::fs::remove_file(&file);
            removed.push(meta.id.clone());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(kind: &str, at: i64) -> Source {
        Source {
            kind: kind.into(),
            host: "manager1".into(),
            taken_unix_ms: at,
            engine_version: "20.10.24".into(),
            consul_version: String::new(),
            duration_ms: 1,
        }
    }

    const SECRET: &[u8] = b"-----BEGIN PRIVATE KEY-----\nSWMTKN-1-secret\n-----END PRIVATE KEY-----\n";

    #[test]
    fn issue_16_a_backup_is_encrypted_at_rest_and_opens_to_its_bytes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let meta = store(tmp.path(), &src("swarm", 1_000), SECRET).expect("store");
        assert_eq!(meta.id, "0000000001000-swarm");
        assert_eq!(meta.size_bytes, SECRET.len() as u64);
        let sealed = std::fs::read(file_of(tmp.path(), &meta)).expect("read");
        for needle in [&b"BEGIN"[..], b"PRIVATE KEY", b"SWMTKN"] {
            assert!(!sealed.windows(needle.len()).any(|w| w == needle), "{needle:?} in the clear");
        }
        assert_eq!(flotilla_proto::fs::mode_of(&key_path(tmp.path())).expect("mode"), 0o600);
        assert_eq!(flotilla_proto::fs::mode_of(&file_of(tmp.path(), &meta)).expect("mode"), 0o600);
        assert_eq!(open(tmp.path(), &meta).expect("open"), SECRET);
        assert_eq!(list(tmp.path()).expect("list"), vec![meta]);
    }

    #[test]
    fn issue_16_one_byte_changed_is_refused_by_its_digest() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let meta = store(tmp.path(), &src("consul", 5), SECRET).expect("store");
        let file = file_of(tmp.path(), &meta);
        let mut sealed = std::fs::read(&file).expect("read");
        let mid = sealed.len() / 2;
        sealed[mid] ^= 0x01;
        std::fs::write(&file, &sealed).expect("write");
        let err = open(tmp.path(), &meta).expect_err("tampered");
        assert!(matches!(err, ArchiveError::Tampered { what: "file's", .. }), "{err}");
        assert!(err.to_string().contains("SHA-256"), "{err}");
        // A record edited to match the changed file: age's authentication refuses it.
        let mut forged = meta.clone();
        forged.encrypted_sha256 = sha256_hex(&sealed);
        assert!(matches!(open(tmp.path(), &forged), Err(ArchiveError::Decrypt { .. })));
        // Another cluster's key does not open it either.
        sealed[mid] ^= 0x01;
        std::fs::write(&file, &sealed).expect("write");
        let other = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir(other.path())).expect("mkdir");
        std::fs::copy(&file, file_of(other.path(), &meta)).expect("copy");
        let _ = identity(other.path(), true).expect("other key");
        assert!(matches!(open(other.path(), &meta), Err(ArchiveError::Decrypt { .. })));
        assert_eq!(open(tmp.path(), &meta).expect("restored byte"), SECRET);
    }

    #[test]
    fn issue_16_latest_skips_a_refused_backup_and_prune_keeps_the_newest_per_kind() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for at in 1..=4 {
            store(tmp.path(), &src("swarm", at), format!("swarm {at}").as_bytes()).expect("store");
            store(tmp.path(), &src("consul", at), format!("consul {at}").as_bytes()).expect("store");
        }
        let newest = find(tmp.path(), "0000000000004-swarm").expect("find");
        std::fs::write(file_of(tmp.path(), &newest), b"garbage").expect("write");
        let l = latest(tmp.path(), "swarm").expect("latest").expect("one verifies");
        assert_eq!(l.data, b"swarm 3");
        assert_eq!(l.refused.len(), 1);
        assert_eq!(latest(tmp.path(), "consul").expect("latest").expect("one").data, b"consul 4");
        let removed = prune(tmp.path(), 2).expect("prune");
        assert_eq!(removed.len(), 4, "{removed:?}");
        let left: Vec<String> = list(tmp.path()).expect("list").into_iter().map(|m| m.id).collect();
        assert_eq!(
            left,
            ["0000000000003-consul", "0000000000003-swarm", "0000000000004-consul", "0000000000004-swarm"]
        );
        assert!(!dir(tmp.path()).join("0000000000001-swarm.age").exists(), "a pruned backup's file is deleted");
        assert!(latest(tmp.path(), "nothing").expect("latest").is_none());
    }
}
