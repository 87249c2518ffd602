//! The cluster's durable state: one redb file in the cluster's state directory.
//!
//! Tables hold JSON values so records can grow fields without a migration:
//! - `hosts`: host name → [`HostRecord`] (identity, facts, roles, certificate serials).
//! - `tokens`: sha256(token) hex → [`TokenRecord`]; the token itself is never stored.
//! - `audit`: sequence → [`AuditEvent`], its text fields cleaned ([`super::untrusted`]).
//! - `refusals`: `<kind> <source>` → [`RefusalRecord`]: refused calls counted, not one event
//!   each (at most [`MAX_REFUSAL_SOURCES`] sources, then `other`).
//! - `operators`: operator name → [`OperatorRecord`]: the operator certificates issued, and
//!   which are revoked.
//! - `assignments`: host name → its current `Assignment` (protobuf bytes).
//! - `meta`: small cluster-wide values (schema version, Consul's gossip key, …).
//!
//! Every mutation is one transaction: a crash leaves either all of it or none.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::de::DeserializeOwned;

mod records;
pub use records::{
    AuditEvent, Facts, HostRecord, IssuedCert, OperatorCert, OperatorRecord, RefusalRecord, TokenRecord,
};

const HOSTS: TableDefinition<&str, &[u8]> = TableDefinition::new("hosts");
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const REFUSALS: TableDefinition<&str, &[u8]> = TableDefinition::new("refusals");
const OPERATORS: TableDefinition<&str, &[u8]> = TableDefinition::new("operators");
/// host name → the host's current `Assignment`, protobuf-encoded.
const ASSIGNMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("assignments");

/// How many audit events are kept; older ones are dropped as new ones arrive.
pub const AUDIT_RETENTION: u64 = 100_000;
/// The most audit events one read returns (and what a limit of 0 means).
pub const MAX_AUDIT_READ: usize = 10_000;
/// The most `(kind, source)` rows of refusals kept; past it, new sources count as `other`.
pub const MAX_REFUSAL_SOURCES: usize = 1024;
/// The source refusals from sources past [`MAX_REFUSAL_SOURCES`] are counted under.
pub const OTHER_SOURCE: &str = "other";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cluster state {path} is in use by another process (is a `coordinator serve` for this cluster already running?): {source}"
    )]
    Locked { path: PathBuf, source: redb::DatabaseError },
    #[error("cluster state {path}: {source}")]
    Open { path: PathBuf, source: redb::DatabaseError },
    #[error("cluster state: {0}")]
    Db(#[from] redb::Error),
    #[error("cluster state: corrupt record {table}/{key}: {source}")]
    Corrupt { table: &'static str, key: String, source: serde_json::Error },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(e.into()) }
        }
    )*};
}
db_err!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// [`StoreError::Locked`] when another process holds the file, else [`StoreError::Open`].
fn open_error(path: &Path, source: redb::DatabaseError) -> StoreError {
    match source {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked { path: path.to_path_buf(), source },
        source => StoreError::Open { path: path.to_path_buf(), source },
    }
}

/// The store. Cheap to share behind an `Arc`; redb serialises writers internally.
pub struct Store {
    db: Database,
    /// Bumped after every commit that wrote the `hosts` table.
    hosts_version: AtomicU64,
    /// The `hosts` table decoded, and the [`Store::hosts_version`] it was read at: what every
    /// scrape of `/metrics` reads, decoded again only after a write (issue 18).
    hosts_cache: Mutex<Option<(u64, Arc<Vec<HostRecord>>)>>,
}

impl Store {
    /// Opens (or creates) the state file. Fails with [`StoreError::Locked`] when another
    /// process holds it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|source| open_error(path, source))?;
        let txn = db.begin_write()?;
        {
            txn.open_table(HOSTS)?;
            txn.open_table(TOKENS)?;
            txn.open_table(AUDIT)?;
            txn.open_table(ASSIGNMENTS)?;
            txn.open_table(REFUSALS)?;
            txn.open_table(OPERATORS)?;
            let mut meta = txn.open_table(META)?;
            if meta.get("schema")?.is_none() {
                meta.insert("schema", b"1".as_slice())?;
            }
        }
        txn.commit()?;
        Ok(Self { db, hosts_version: AtomicU64::new(0), hosts_cache: Mutex::new(None) })
    }

    /// Fails with [`StoreError::Locked`] while another process holds the state file (a
    /// control plane running, or one still shutting down); a file that does not exist yet is
    /// free. The look opens the file read-only for a moment and changes nothing.
    pub fn check_free(path: &Path) -> Result<(), StoreError> {
        if !path.exists() {
            return Ok(());
        }
        redb::ReadOnlyDatabase::open(path).map(drop).map_err(|source| open_error(path, source))
    }

    /// The names of the hosts a state file records, read without holding it (no control
    /// plane may run on it: [`StoreError::Locked`] then); a file that does not exist records
    /// none. `destroy` checks them against what the provider finds.
    pub fn recorded_host_names(path: &Path) -> Result<Vec<String>, StoreError> {
        if !path.exists() {
            return Ok(Vec::new());
        }
        let db = redb::ReadOnlyDatabase::open(path).map_err(|source| open_error(path, source))?;
        let txn = db.begin_read()?;
        let table = match txn.open_table(HOSTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for entry in table.iter()? {
            out.push(entry?.0.value().to_string());
        }
        Ok(out)
    }

    pub fn host(&self, name: &str) -> Result<Option<HostRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(HOSTS)?;
        get_json(&table, "hosts", name)
    }

    pub fn hosts(&self) -> Result<Vec<HostRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(HOSTS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push(decode("hosts", k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Every host record, shared: decoded from the store only when a write changed the
    /// `hosts` table since the last call (a scrape of 10,000 hosts decodes none of them while
    /// nothing changes). Never older than the last write committed before the call.
    pub fn hosts_shared(&self) -> Result<Arc<Vec<HostRecord>>, StoreError> {
        // Read before the read transaction begins: a write that commits meanwhile bumps the
        // version after its commit, so the next call reads again.
        let version = self.hosts_version.load(Ordering::Acquire);
        let cache = || self.hosts_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((v, hosts)) = cache().as_ref()
            && *v == version
        {
            return Ok(Arc::clone(hosts));
        }
        let hosts = Arc::new(self.hosts()?);
        *cache() = Some((version, Arc::clone(&hosts)));
        Ok(hosts)
    }

    pub fn token(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TOKENS)?;
        get_json(&table, "tokens", hash)
    }

    /// Runs `f` in one write transaction and commits it when `f` returns `Ok`; on `Err`
    /// nothing is written.
    pub fn write<T, E>(&self, f: impl FnOnce(&mut Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let txn = self.db.begin_write().map_err(StoreError::from)?;
        let (out, hosts_written) = {
            let mut tx = Tx {
                hosts_written: false,
                assignments: txn.open_table(ASSIGNMENTS).map_err(StoreError::from)?,
                hosts: txn.open_table(HOSTS).map_err(StoreError::from)?,
                tokens: txn.open_table(TOKENS).map_err(StoreError::from)?,
                audit: txn.open_table(AUDIT).map_err(StoreError::from)?,
                refusals: txn.open_table(REFUSALS).map_err(StoreError::from)?,
                operators: txn.open_table(OPERATORS).map_err(StoreError::from)?,
            };
            let out = f(&mut tx)?;
            (out, tx.hosts_written)
        };
        txn.commit().map_err(StoreError::from)?;
        if hosts_written {
            self.hosts_version.fetch_add(1, Ordering::Release);
        }
        Ok(out)
    }

    /// A host's current assignment (protobuf bytes).
    pub fn assignment(&self, host: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ASSIGNMENTS)?;
        Ok(table.get(host)?.map(|v| v.value().to_vec()))
    }

    /// A cluster-wide value.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(META)?;
        Ok(table.get(key)?.map(|v| v.value().to_vec()))
    }

    /// Sets a cluster-wide value.
    pub fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(META)?.insert(key, value)?;
        txn.commit()?;
        Ok(())
    }

    /// Sets a cluster-wide value only if it is absent; returns the value in force.
    pub fn meta_get_or_insert(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let txn = self.db.begin_write()?;
        let out = {
            let mut table = txn.open_table(META)?;
            let existing = table.get(key)?.map(|v| v.value().to_vec());
            match existing {
                Some(v) => v,
                None => {
                    table.insert(key, value)?;
                    value.to_vec()
                }
            }
        };
        txn.commit()?;
        Ok(out)
    }

    /// Appends one audit event in its own transaction.
    pub fn audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        self.write(|tx| tx.audit(&event))
    }

    /// The newest `limit` audit events (0, or more than [`MAX_AUDIT_READ`]: that many), oldest
    /// first.
    pub fn audit_events(&self, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let limit = if limit == 0 { MAX_AUDIT_READ } else { limit.min(MAX_AUDIT_READ) };
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AUDIT)?;
        let mut out = Vec::new();
        for entry in table.iter()?.rev() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = entry?;
            out.push(decode("audit", &k.value().to_string(), v.value())?);
        }
        out.reverse();
        Ok(out)
    }

    /// Every row of refused calls, the most recent first.
    pub fn refusals(&self) -> Result<Vec<RefusalRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REFUSALS)?;
        let mut out: Vec<RefusalRecord> = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push(decode("refusals", k.value(), v.value())?);
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.last_unix_ms));
        Ok(out)
    }

    pub fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OPERATORS)?;
        get_json(&table, "operators", name)
    }

    pub fn operators(&self) -> Result<Vec<OperatorRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OPERATORS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push(decode("operators", k.value(), v.value())?);
        }
        Ok(out)
    }
}

/// An open write transaction over the tables.
pub struct Tx<'t> {
    /// Whether this transaction wrote the `hosts` table (the store's hosts cache is then
    /// read again after the commit).
    hosts_written: bool,
    assignments: redb::Table<'t, &'static str, &'static [u8]>,
    hosts: redb::Table<'t, &'static str, &'static [u8]>,
    tokens: redb::Table<'t, &'static str, &'static [u8]>,
    audit: redb::Table<'t, u64, &'static [u8]>,
    refusals: redb::Table<'t, &'static str, &'static [u8]>,
    operators: redb::Table<'t, &'static str, &'static [u8]>,
}

impl Tx<'_> {
    pub fn host(&self, name: &str) -> Result<Option<HostRecord>, StoreError> {
        get_json(&self.hosts, "hosts", name)
    }

    pub fn put_host(&mut self, host: &HostRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(host).map_err(|source| StoreError::Corrupt {
            table: "hosts",
            key: host.name.clone(),
            source,
        })?;
        self.hosts.insert(host.name.as_str(), bytes.as_slice())?;
        self.hosts_written = true;
        Ok(())
    }

    pub fn token(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        get_json(&self.tokens, "tokens", hash)
    }

    pub fn assignment(&self, host: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.assignments.get(host)?.map(|v| v.value().to_vec()))
    }

    pub fn put_assignment(&mut self, host: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.assignments.insert(host, bytes)?;
        Ok(())
    }

    pub fn remove_host(&mut self, host: &str) -> Result<(), StoreError> {
        self.hosts.remove(host)?;
        self.hosts_written = true;
        self.assignments.remove(host)?;
        Ok(())
    }

    pub fn put_token(&mut self, hash: &str, token: &TokenRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(token).map_err(|source| StoreError::Corrupt {
            table: "tokens",
            key: hash.to_string(),
            source,
        })?;
        self.tokens.insert(hash, bytes.as_slice())?;
        Ok(())
    }

    /// Removes tokens that satisfy `pred` (expired ones, or a revoked host's).
    pub fn remove_tokens(&mut self, pred: impl Fn(&TokenRecord) -> bool) -> Result<usize, StoreError> {
        let mut doomed = Vec::new();
        for entry in self.tokens.iter()? {
            let (k, v) = entry?;
            let rec: TokenRecord = decode("tokens", k.value(), v.value())?;
            if pred(&rec) {
                doomed.push(k.value().to_string());
            }
        }
        for k in &doomed {
            self.tokens.remove(k.as_str())?;
        }
        Ok(doomed.len())
    }

    /// Appends `event`, its text cleaned ([`AuditEvent::cleaned`]), dropping the oldest past
    /// [`AUDIT_RETENTION`].
    pub fn audit(&mut self, event: &AuditEvent) -> Result<(), StoreError> {
        let next = match self.audit.last()? {
            Some((k, _)) => k.value() + 1,
            None => 1,
        };
        let bytes = serde_json::to_vec(&event.cleaned()).map_err(|source| StoreError::Corrupt {
            table: "audit",
            key: next.to_string(),
            source,
        })?;
        self.audit.insert(next, bytes.as_slice())?;
        if next > AUDIT_RETENTION {
            self.audit.remove(next - AUDIT_RETENTION)?;
        }
        Ok(())
    }
}

impl Tx<'_> {
    /// Adds counted refusals to their row (text cleaned); a new source past
    /// [`MAX_REFUSAL_SOURCES`] rows is counted under [`OTHER_SOURCE`].
    pub fn add_refusals(&mut self, batch: &RefusalRecord) -> Result<(), StoreError> {
        use crate::control_plane::untrusted::{DETAIL_MAX, KIND_MAX, NAME_MAX, clean};
        let mut r = RefusalRecord {
            kind: clean(&batch.kind, KIND_MAX),
            source: clean(&batch.source, KIND_MAX),
            last_host_name: clean(&batch.last_host_name, NAME_MAX),
            last_detail: clean(&batch.last_detail, DETAIL_MAX),
            ..batch.clone()
        };
        if get_json::<RefusalRecord>(&self.refusals, "refusals", &r.key())?.is_none()
            && self.refusals.len()? as usize >= MAX_REFUSAL_SOURCES
        {
            r.source = OTHER_SOURCE.to_string();
        }
        let key = r.key();
        let row = match get_json::<RefusalRecord>(&self.refusals, "refusals", &key)? {
            Some(mut old) => {
                old.absorb(&r);
                old
            }
            None => r,
        };
        let bytes = serde_json::to_vec(&row).map_err(|source| StoreError::Corrupt {
            table: "refusals",
            key: key.clone(),
            source,
        })?;
        self.refusals.insert(key.as_str(), bytes.as_slice())?;
        Ok(())
    }

    pub fn operator(&self, name: &str) -> Result<Option<OperatorRecord>, StoreError> {
        get_json(&self.operators, "operators", name)
    }

    pub fn put_operator(&mut self, op: &OperatorRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(op).map_err(|source| StoreError::Corrupt {
            table: "operators",
            key: op.name.clone(),
            source,
        })?;
        self.operators.insert(op.name.as_str(), bytes.as_slice())?;
        Ok(())
    }
}

fn get_json<T: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &'static str,
    key: &str,
) -> Result<Option<T>, StoreError> {
    match table.get(key)? {
        Some(v) => Ok(Some(decode(name, key, v.value())?)),
        None => Ok(None),
    }
}

fn decode<T: DeserializeOwned>(table: &'static str, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt { table, key: key.to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host record as stored before facts carried the Engine's CSR still decodes.
    #[test]
    fn host_records_from_before_the_engine_csr_decode() {
        let old = r#"{"name":"manager0","host_id":"h-1","enrolled_unix_ms":1,"last_seen_unix_ms":2,"roles":["manager"],
            "certs":[],"revoked":false,"agent_version":"0.1.0","facts":{"hostname":"manager0","instance_id":"",
            "private_addresses":["10.0.0.5"],"os":"Debian","kernel":"6","arch":"x86_64","cpus":2,"memory_bytes":1,
            "engine_version":"20.10"}}"#;
        let rec: HostRecord = decode("hosts", "manager0", old.as_bytes()).expect("old record decodes");
        assert_eq!(rec.facts.private_addresses, ["10.0.0.5"]);
        assert_eq!(rec.facts.engine_csr_pem, "");
    }

    #[test]
    fn records_survive_reopen_and_failed_transactions_write_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        {
            let store = Store::open(&path).expect("open");
            store
                .write(|tx| {
                    tx.put_host(&HostRecord { name: "node0".into(), host_id: "h-1".into(), ..Default::default() })
                })
                .expect("write");
            let failed: Result<(), StoreError> = store.write(|tx| {
                tx.put_host(&HostRecord { name: "node1".into(), ..Default::default() })?;
                Err(StoreError::Db(redb::Error::Corrupted("test abort".into())))
            });
            assert!(failed.is_err());
        }
        let store = Store::open(&path).expect("reopen");
        let names: Vec<_> = store.hosts().expect("hosts").into_iter().map(|h| h.name).collect();
        assert_eq!(names, vec!["node0".to_string()]);
    }

    /// Issue 18: the shared host records are decoded again after a write that changed the
    /// `hosts` table — a put, a removal — and only then (not after a failed transaction, nor
    /// after a write to another table).
    #[test]
    fn shared_hosts_are_read_again_only_after_a_host_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state.redb")).expect("open");
        let names = |h: &Arc<Vec<HostRecord>>| h.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
        let empty = store.hosts_shared().expect("hosts");
        assert!(empty.is_empty());
        store.write(|tx| tx.put_host(&HostRecord { name: "node0".into(), ..Default::default() })).expect("put");
        let one = store.hosts_shared().expect("hosts");
        assert_eq!(names(&one), ["node0"]);
        store.audit(AuditEvent { kind: "x".into(), ..Default::default() }).expect("audit");
        let failed: Result<(), StoreError> = store.write(|tx| {
            tx.put_host(&HostRecord { name: "node1".into(), ..Default::default() })?;
            Err(StoreError::Db(redb::Error::Corrupted("test abort".into())))
        });
        assert!(failed.is_err());
        assert!(Arc::ptr_eq(&one, &store.hosts_shared().expect("hosts")), "nothing changed: not decoded again");
        store
            .write(|tx| {
                tx.put_host(&HostRecord { name: "node0".into(), revoked: true, ..Default::default() })?;
                tx.put_host(&HostRecord { name: "node2".into(), ..Default::default() })
            })
            .expect("put");
        let two = store.hosts_shared().expect("hosts");
        assert_eq!(names(&two), ["node0", "node2"]);
        assert!(two[0].revoked);
        store.write(|tx| tx.remove_host("node0")).expect("remove");
        assert_eq!(names(&store.hosts_shared().expect("hosts")), ["node2"]);
    }

    /// Issue 14: an attacker's megabyte of text is stored cut and escaped, and refusals past
    /// the row cap land in `other` instead of growing the table.
    #[test]
    fn audit_text_is_cleaned_and_refusal_rows_are_capped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("state.redb")).expect("open");
        let huge = format!("\u{1b}[31m{}", "h".repeat(1 << 20));
        store
            .audit(AuditEvent { kind: "enroll.ok".into(), host_name: huge.clone(), detail: huge, ..Default::default() })
            .expect("audit");
        let e = &store.audit_events(0).expect("events")[0];
        assert!(e.host_name.len() <= 128 && e.detail.len() <= 512, "{e:?}");
        assert!(e.host_name.starts_with("\\u{1b}[31m") && !e.host_name.contains('\u{1b}'), "{e:?}");
        let refusal = |source: String| RefusalRecord {
            kind: "enroll.refused.unknown".into(),
            source,
            count: 2,
            first_unix_ms: 1,
            last_unix_ms: 2,
            ..Default::default()
        };
        store
            .write(|tx| {
                for i in 0..MAX_REFUSAL_SOURCES + 10 {
                    tx.add_refusals(&refusal(format!("10.0.{}.{}", i / 256, i % 256)))?;
                }
                tx.add_refusals(&refusal("10.0.0.0".into()))
            })
            .expect("refusals");
        let rows = store.refusals().expect("rows");
        assert_eq!(rows.len(), MAX_REFUSAL_SOURCES + 1, "capped rows plus 'other'");
        let other = rows.iter().find(|r| r.source == OTHER_SOURCE).expect("other");
        assert_eq!(other.count, 2 * 10);
        let first = rows.iter().find(|r| r.source == "10.0.0.0").expect("first source");
        assert_eq!(first.count, 4, "a known source keeps counting in its own row");
    }

    #[test]
    fn a_second_open_of_the_same_file_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        let _first = Store::open(&path).expect("open");
        let err = Store::open(&path).err().expect("second open must fail");
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("already running"), "{err}");
    }

    #[test]
    fn check_free_sees_the_lock_of_an_open_store_and_its_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        Store::check_free(&path).expect("a file that does not exist is free");
        let first = Store::open(&path).expect("open");
        let err = Store::check_free(&path).expect_err("held by the open store");
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        drop(first);
        Store::check_free(&path).expect("released");
        Store::open(&path).expect("and open again");
    }
}
