//! The distributed store: PostgreSQL, shared by the coordinator and every
//! worker, through a `deadpool-postgres` pool of `tokio-postgres` connections.
//! Every write is one statement, hence one transaction; batches travel as
//! arrays (`unnest`), so a batch is one round trip.
//!
//! # The ledger at scale
//!
//! The ledger holds one row per copied item: hundreds of millions of rows in
//! a large migration. Its plan:
//!
//! - **Hash-partitioned by mailbox** (16 partitions, `ledger_p00` to
//!   `ledger_p15`, created by the migration). The mailbox is the unit of
//!   work and every ledger statement names exactly one, so the planner prunes
//!   to one partition: resuming or verifying a mailbox reads one partition's
//!   index, never the others. Hash rather than range because mailbox ids grow
//!   with every wave: ranges would send all the inserts of a running wave to
//!   the newest partition, whereas hashing spreads the concurrent workers
//!   over 16 smaller B-trees, vacuumed and reindexed one at a time.
//! - **One index, the primary key** `(mailbox, folder, validity, item)`, with
//!   `folder` and `item` in the "C" collation (byte order, as in SQLite, and
//!   cheap comparisons). Resume and verification read a folder at a validity
//!   (`ledger`): an equality on the key's first three columns, then a sort of
//!   that one folder's rows by UID. Retried batches (`commit_items`), flag
//!   updates and re-keying after a UIDVALIDITY change look items up by the
//!   full key. No secondary index: each would be paid on every insert.
//! - **Growing.** PostgreSQL accepts hash partitions of different moduli as
//!   long as each modulus divides the next, so partitions split one at a
//!   time: detach `ledger_p03` (modulus 16, remainder 3), create two
//!   partitions with modulus 32 and remainders 3 and 19, `INSERT INTO ledger
//!   SELECT * FROM` the detached table (rows route themselves) and drop it.
//!   Done in one transaction, this locks the ledger while a sixteenth of it
//!   is copied; with `DETACH PARTITION ... CONCURRENTLY` only the mailboxes
//!   of that partition need pausing. Beyond one server, `mailbox` is the
//!   natural distribution key.
//!
//! Leases expire by the database's clock (`now()`), so the workers' clocks
//! never matter.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use tokio_postgres::config::SslMode;

use crate::error::error_chain;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Config, NoTls, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    LeaseStore, LedgerStore, PassOutcome, ReapOutcome, RecordStore, StoreError, WaveAction,
    WaveStore, reap_decision, stored_uid, uid_to_store,
};
use crate::ErrorClass;
use crate::model::{
    FailureScope, FolderCheckpoint, ItemFailure, Job, Lease, LedgerEntry, MailboxId, MailboxRecord,
    MailboxSpec, MailboxState, SourceCursor, TargetMark, WaveCounts, WaveId, WaveRecord, WaveState,
};
use crate::wave_config::WaveConfig;

mod embedded {
    refinery::embed_migrations!("migrations/postgres");
}

/// The key of the session-level advisory lock held while migrating ("mailwave").
const MIGRATION_LOCK: i64 = 0x6d61_696c_7761_7665;

/// How long opening a connection may take when the URL does not say.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a session may sit idle inside a transaction before the server
/// ends it (every transaction of ours is a few statements in a row).
const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLSTATEs (or their classes) of failures that may pass: connection
/// exceptions, serialization failures and deadlocks, insufficient resources,
/// operator intervention, system errors, lock timeouts, a read-only server
/// during a failover, a session ended for idling in a transaction, and a
/// database not accepting connections for now (maintenance).
const TRANSIENT_SQLSTATES: [&str; 9] = [
    "08", "40", "53", "57", "58", "55P03", "25006", "25P03", "55000",
];

type Param<'a> = &'a (dyn ToSql + Sync);

/// The PostgreSQL-backed [`Store`].
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        let transient = match error.code() {
            Some(state) => TRANSIENT_SQLSTATES
                .iter()
                .any(|prefix| state.code().starts_with(prefix)),
            None => {
                error.is_closed()
                    || std::error::Error::source(&error).is_some_and(|s| s.is::<std::io::Error>())
            }
        };
        if transient {
            return StoreError::Unavailable(error_chain(&error));
        }
        StoreError::Corrupt(error_chain(&error))
    }
}

impl From<PoolError> for StoreError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Backend(error) => error.into(),
            other => StoreError::Unavailable(format!("PostgreSQL connection pool: {other}")),
        }
    }
}

impl PostgresStore {
    /// How many connections a store opens at most unless told otherwise.
    pub const DEFAULT_POOL_SIZE: usize = 16;

    /// [`PostgresStore::connect_with_pool_size`] with [`Self::DEFAULT_POOL_SIZE`].
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect_with_pool_size(url, Self::DEFAULT_POOL_SIZE).await
    }

    /// [`PostgresStore::connect_with_tls`] without a CA file of its own.
    pub async fn connect_with_pool_size(
        url: &str,
        pool_size: usize,
    ) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect_with_tls(url, pool_size, None).await
    }

    /// Connects to the database at `url`
    /// (`postgres://user:password@host:port/database`) with a pool of at
    /// most `pool_size` connections, and checks that a connection can be
    /// opened. TLS, verified against Mozilla's roots and `ca_file`, is
    /// required for a host that is not this machine (see [`transport`]).
    /// Leaves the schema alone: see [`PostgresStore::migrate`].
    pub async fn connect_with_tls(
        url: &str,
        pool_size: usize,
        ca_file: Option<&Path>,
    ) -> Result<PostgresStore, StoreError> {
        if pool_size == 0 {
            return Err(StoreError::Corrupt(
                "PostgreSQL pool size must be at least 1".into(),
            ));
        }
        let mut config = Config::from_str(url)
            .map_err(|e| StoreError::Corrupt(format!("PostgreSQL URL: {}", error_chain(&e))))?;
        let tls = transport(&mut config, url, ca_file)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("mailwave");
        }
        // A process frozen inside a fenced write (SIGSTOP, a paused VM) would
        // hold its lease row's lock and stall the reaper and every other
        // worker: the server ends such a session instead.
        let options = format!(
            "{} -c idle_in_transaction_session_timeout={}",
            config.get_options().unwrap_or_default(),
            IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
        );
        config.options(options.trim_start());
        // A pooled connection the server closed (a restart, an operator's
        // `pg_terminate_backend`) is found out when it is taken from the
        // pool, not by the caller's query.
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        };
        let manager = match tls {
            Some(tls) => Manager::from_config(config, tls, manager_config),
            None => Manager::from_config(config, NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .build()
            .map_err(|e| StoreError::Corrupt(format!("PostgreSQL connection pool: {e}")))?;
        let store = PostgresStore { pool };
        // Fail now, not at the first use, when the database is out of reach.
        drop(store.client().await?);
        Ok(store)
    }

    /// [`PostgresStore::connect`], then [`PostgresStore::migrate`].
    pub async fn connect_and_migrate(url: &str) -> Result<PostgresStore, StoreError> {
        let store = PostgresStore::connect(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Brings the schema up to date (refinery, `migrations/postgres`), under a
    /// session-level advisory lock so that concurrent callers (two
    /// coordinators starting together) apply each migration once.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        // A session of its own, closed when this returns (or is dropped
        // halfway): the lock can never outlive the migration in the pool.
        let mut session = Object::take(self.client().await?);
        session
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let report = embedded::migrations::runner()
            .run_async(&mut *session)
            .await
            .map_err(|e| StoreError::Corrupt(format!("schema migration: {}", error_chain(&e))))?;
        for migration in report.applied_migrations() {
            tracing::info!(%migration, "applied PostgreSQL schema migration");
        }
        session
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await?;
        Ok(())
    }

    /// Runs one statement in a transaction that first checks (and locks)
    /// the lease: the write happens only while the lease is live.
    async fn fenced(
        &self,
        lease: &Lease,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        check_lease(&tx, lease).await?;
        let stmt = tx.prepare_cached(sql).await?;
        tx.execute(&stmt, params).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn client(&self) -> Result<Object, StoreError> {
        Ok(self.pool.get().await?)
    }
}

/// How the store reaches the server of `config`, decided before
/// connecting: `Some` verified TLS (required: `config`'s mode is set to
/// `require`), `None` plain text. Plain text only with `sslmode=disable`,
/// or for this machine (`localhost`, 127.x.x.x, ::1, a Unix socket) unless
/// TLS is asked for (`sslmode=require` or a `ca_file`). An explicit
/// `sslmode=prefer` (TLS when the server offers it, else plain text) for
/// another machine is refused.
fn transport(
    config: &mut Config,
    url: &str,
    ca_file: Option<&Path>,
) -> Result<Option<MakeRustlsConnect>, StoreError> {
    let local = config.get_hosts().iter().all(|host| match host {
        tokio_postgres::config::Host::Tcp(name) => crate::config::is_loopback_host(name),
        tokio_postgres::config::Host::Unix(_) => true,
    }) && config
        .get_hostaddrs()
        .iter()
        .all(|address| address.is_loopback());
    let mode = config.get_ssl_mode();
    if mode == SslMode::Disable {
        return Ok(None);
    }
    if mode == SslMode::Prefer && url.contains("sslmode=prefer") && !local {
        return Err(StoreError::Corrupt(
            "PostgreSQL URL: sslmode=prefer falls back to plain text for a host that is not this \
             machine; leave sslmode out (verified TLS is the default), or say sslmode=disable"
                .into(),
        ));
    }
    if mode == SslMode::Prefer && local && ca_file.is_none() {
        return Ok(None);
    }
    config.ssl_mode(SslMode::Require);
    tls_connector(ca_file).map(Some)
}

/// rustls with ring, Mozilla's roots and those of `ca_file`, as the IMAP
/// connector uses.
fn tls_connector(ca_file: Option<&Path>) -> Result<MakeRustlsConnect, StoreError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let bad = |reason: String| {
            StoreError::Corrupt(format!("PostgreSQL ca_file {}: {reason}", path.display()))
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let certificates = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certificates.is_empty() {
            return Err(bad("no PEM certificate in it".into()));
        }
        for certificate in certificates {
            roots.add(certificate).map_err(|e| bad(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Corrupt(format!("TLS configuration: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The items whose key does not come again later, in their order: one
/// statement may not upsert a row twice, and the last write must win as it
/// does in a loop of single upserts.
fn last_wins<'a, T, K: Eq + Hash>(items: &'a [T], key: impl Fn(&'a T) -> K) -> Vec<&'a T> {
    let mut seen = HashSet::with_capacity(items.len());
    let mut kept: Vec<&T> = items
        .iter()
        .rev()
        .filter(|&i| seen.insert(key(i)))
        .collect();
    kept.reverse();
    kept
}

fn u32_column(row: &Row, index: usize) -> Result<u32, StoreError> {
    let value: i64 = row.try_get(index)?;
    u32::try_from(value).map_err(|_| {
        StoreError::Corrupt(format!(
            "{} = {value} does not fit in 32 bits",
            row.columns()[index].name()
        ))
    })
}

const MAILBOX_COLUMNS: &str =
    "id, wave, source, target, state, pass, attempts, last_error, stats::text";

fn mailbox_from_row(row: &Row) -> Result<MailboxRecord, StoreError> {
    let state: &str = row.try_get(4)?;
    let stats: &str = row.try_get(8)?;
    Ok(MailboxRecord {
        id: row.try_get(0)?,
        wave: row.try_get(1)?,
        source: row.try_get(2)?,
        target: row.try_get(3)?,
        state: MailboxState::parse(state).unwrap_or(MailboxState::Failed),
        pass: row.try_get(5)?,
        attempts: row.try_get(6)?,
        last_error: row.try_get(7)?,
        stats: serde_json::from_str(stats).unwrap_or_default(),
    })
}

const WAVE_COLUMNS: &str = "id, name, state, final_pass, config::text";

fn wave_from_row(row: &Row) -> Result<WaveRecord, StoreError> {
    let state: &str = row.try_get(2)?;
    let config: &str = row.try_get(4)?;
    Ok(WaveRecord {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        state: WaveState::parse(state).unwrap_or(WaveState::Cancelled),
        final_pass: row.try_get(3)?,
        config: WaveConfig::from_stored(config),
    })
}

fn job_from_row(row: &Row) -> Result<Job, StoreError> {
    Ok(Job {
        wave: row.try_get(0)?,
        mailbox: row.try_get(1)?,
        pass: row.try_get(2)?,
    })
}

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn checkpoint_from_row(row: &Row) -> Result<FolderCheckpoint, StoreError> {
    Ok(FolderCheckpoint {
        mailbox: row.try_get(0)?,
        folder: row.try_get(1)?,
        target_folder: row.try_get(2)?,
        validity: u32_column(row, 3)?,
        high_water_mark: u32_column(row, 4)?,
        source_cursor: row.try_get::<_, Option<String>>(5)?.map(SourceCursor::new),
        target_mark: TargetMark::new(row.try_get(6)?),
        target_validity: row
            .try_get::<_, Option<i64>>(7)?
            .map(|v| {
                u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("target validity {v}")))
            })
            .transpose()?,
        subscribed: row.try_get(8)?,
    })
}

const CHECKPOINT_COLUMNS: &str = "mailbox, folder, target_folder, validity, high_water_mark,
     source_cursor, target_mark, target_validity, subscribed";

const LEDGER_COLUMNS: &str = "mailbox, folder, validity, item, uid, target_folder, target_id,
     size, content_hash, header_hash, flags, identity, source_version, target_version";

/// Fails with [`StoreError::LeaseLost`] unless `lease` is the mailbox's live
/// lease. Takes a share lock on the lease row, so that no other worker can
/// take the lease before the transaction of the fenced write ends.
async fn check_lease(
    tx: &deadpool_postgres::Transaction<'_>,
    lease: &Lease,
) -> Result<(), StoreError> {
    let stmt = tx
        .prepare_cached(
            "SELECT 1 FROM leases
             WHERE mailbox = $1 AND pass = $2 AND worker = $3 AND token = $4 AND expires_at > now()
             FOR SHARE",
        )
        .await?;
    let held = tx
        .query_opt(
            &stmt,
            &[&lease.mailbox, &lease.pass, &lease.worker, &lease.token],
        )
        .await?;
    match held {
        Some(_) => Ok(()),
        None => Err(StoreError::LeaseLost {
            mailbox: lease.mailbox,
        }),
    }
}

fn ledger_from_row(row: &Row) -> Result<LedgerEntry, StoreError> {
    Ok(LedgerEntry {
        mailbox: row.try_get(0)?,
        folder: row.try_get(1)?,
        validity: u32_column(row, 2)?,
        item: row.try_get(3)?,
        uid: stored_uid(u32_column(row, 4)?),
        target_folder: row.try_get(5)?,
        target_id: row.try_get(6)?,
        size: row.try_get::<_, i64>(7)? as u64,
        content_hash: row.try_get(8)?,
        header_hash: row.try_get(9)?,
        flags: row.try_get(10)?,
        identity: row.try_get(11)?,
        source_version: row.try_get(12)?,
        target_version: row.try_get(13)?,
    })
}

/// A failure from the columns of [`Store::failures`]'s query: a folder's
/// own failure has no item.
fn failure_from_row(row: &Row) -> Result<ItemFailure, StoreError> {
    let class: String = row.try_get(4)?;
    let scope = match row.try_get::<_, Option<String>>(2)? {
        None => FailureScope::Folder,
        Some(item) => FailureScope::Item {
            item,
            size: row.try_get::<_, Option<i64>>(3)?.map(|s| s as u64),
        },
    };
    Ok(ItemFailure {
        mailbox: row.try_get(0)?,
        folder: row.try_get(1)?,
        scope,
        class: serde_json::from_value(serde_json::Value::String(class)).unwrap_or(ErrorClass::Item),
        reason: row.try_get(5)?,
        pass: row.try_get(6)?,
        policy: row.try_get(7)?,
    })
}

/// The upsert of a folder checkpoint from parameters `$1` to `$9` (see
/// [`CheckpointParams`]); the main statement of the batch writes, whose
/// other half comes first as a data-modifying `WITH`.
macro_rules! checkpoint_upsert {
    () => {
        "INSERT INTO folder_checkpoints
             (mailbox, folder, target_folder, validity, high_water_mark, source_cursor,
              target_mark, target_validity, subscribed)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (mailbox, folder) DO UPDATE SET
             target_folder = excluded.target_folder, validity = excluded.validity,
             high_water_mark = excluded.high_water_mark,
             source_cursor = excluded.source_cursor, target_mark = excluded.target_mark,
             target_validity = excluded.target_validity,
             subscribed = excluded.subscribed"
    };
}

/// The upsert of ledger entries into `table` (`ledger`, or `intents` of the
/// same columns) from fourteen arrays (see [`LedgerColumns`]), the parameters
/// from `$first` on.
fn ledger_upsert(table: &str, first: usize) -> String {
    let types = [
        "bigint", "text", "bigint", "text", "bigint", "text", "text", "bigint", "text", "text",
        "text", "text", "text", "text",
    ];
    let arrays: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, t)| format!("${}::{t}[]", first + i))
        .collect();
    format!(
        "INSERT INTO {table} ({LEDGER_COLUMNS})
         SELECT * FROM unnest({})
         ON CONFLICT (mailbox, folder, validity, item) DO UPDATE SET
             uid = excluded.uid, target_folder = excluded.target_folder,
             target_id = excluded.target_id, size = excluded.size,
             content_hash = excluded.content_hash, header_hash = excluded.header_hash,
             flags = excluded.flags, identity = excluded.identity,
             source_version = excluded.source_version,
             target_version = excluded.target_version",
        arrays.join(", ")
    )
}

/// A folder checkpoint as the parameters `$1` to `$9` of [`checkpoint_upsert!`].
struct CheckpointParams<'a> {
    mailbox: i64,
    folder: &'a str,
    target_folder: &'a str,
    validity: i64,
    high_water_mark: i64,
    source_cursor: Option<&'a str>,
    target_mark: &'a str,
    target_validity: Option<i64>,
    subscribed: bool,
}

impl<'a> CheckpointParams<'a> {
    fn new(c: &'a FolderCheckpoint) -> Self {
        CheckpointParams {
            mailbox: c.mailbox,
            folder: &c.folder,
            target_folder: &c.target_folder,
            validity: i64::from(c.validity),
            high_water_mark: i64::from(c.high_water_mark),
            source_cursor: c.source_cursor.as_ref().map(SourceCursor::as_str),
            target_mark: c.target_mark.as_str(),
            target_validity: c.target_validity.map(i64::from),
            subscribed: c.subscribed,
        }
    }

    fn params(&self) -> Vec<Param<'_>> {
        vec![
            &self.mailbox,
            &self.folder,
            &self.target_folder,
            &self.validity,
            &self.high_water_mark,
            &self.source_cursor,
            &self.target_mark,
            &self.target_validity,
            &self.subscribed,
        ]
    }
}

/// Ledger entries as one array per column, for `unnest`.
#[derive(Default)]
struct LedgerColumns<'a> {
    mailbox: Vec<i64>,
    folder: Vec<&'a str>,
    validity: Vec<i64>,
    item: Vec<&'a str>,
    uid: Vec<i64>,
    target_folder: Vec<&'a str>,
    target_id: Vec<Option<&'a str>>,
    size: Vec<i64>,
    content_hash: Vec<&'a str>,
    header_hash: Vec<&'a str>,
    flags: Vec<&'a str>,
    identity: Vec<&'a str>,
    source_version: Vec<Option<&'a str>>,
    target_version: Vec<Option<&'a str>>,
}

impl<'a> LedgerColumns<'a> {
    fn new(entries: &[&'a LedgerEntry]) -> Self {
        let mut columns = LedgerColumns::default();
        for e in entries {
            columns.mailbox.push(e.mailbox);
            columns.folder.push(&e.folder);
            columns.validity.push(i64::from(e.validity));
            columns.item.push(&e.item);
            columns.uid.push(i64::from(uid_to_store(e.uid)));
            columns.target_folder.push(&e.target_folder);
            columns.target_id.push(e.target_id.as_deref());
            columns.size.push(e.size as i64);
            columns.content_hash.push(&e.content_hash);
            columns.header_hash.push(&e.header_hash);
            columns.flags.push(&e.flags);
            columns.identity.push(&e.identity);
            columns.source_version.push(e.source_version.as_deref());
            columns.target_version.push(e.target_version.as_deref());
        }
        columns
    }

    fn params(&self) -> [Param<'_>; 14] {
        [
            &self.mailbox,
            &self.folder,
            &self.validity,
            &self.item,
            &self.uid,
            &self.target_folder,
            &self.target_id,
            &self.size,
            &self.content_hash,
            &self.header_hash,
            &self.flags,
            &self.identity,
            &self.source_version,
            &self.target_version,
        ]
    }
}

#[async_trait]
impl RecordStore for PostgresStore {
    async fn mailbox(&self, id: MailboxId) -> Result<MailboxRecord, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE id = $1"
            ))
            .await?;
        let Some(row) = client.query_opt(&stmt, &[&id]).await? else {
            return Err(StoreError::NotFound(format!("mailbox {id}")));
        };
        mailbox_from_row(&row)
    }

    async fn failures(&self, mailbox: MailboxId) -> Result<Vec<ItemFailure>, StoreError> {
        let client = self.client().await?;
        // A folder's own failure first, then its items'.
        let stmt = client
            .prepare_cached(
                "SELECT mailbox, folder, NULL::text AS item, NULL::bigint, class, reason, pass,
                        false
                 FROM folder_failures WHERE mailbox = $1
                 UNION ALL
                 SELECT mailbox, folder, item, size, class, reason, pass, policy
                 FROM item_failures WHERE mailbox = $1
                 ORDER BY folder, item NULLS FIRST",
            )
            .await?;
        client
            .query(&stmt, &[&mailbox])
            .await?
            .iter()
            .map(failure_from_row)
            .collect()
    }

    async fn wave(&self, id: WaveId) -> Result<WaveRecord, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("SELECT {WAVE_COLUMNS} FROM waves WHERE id = $1"))
            .await?;
        let Some(row) = client.query_opt(&stmt, &[&id]).await? else {
            return Err(StoreError::NotFound(format!("wave {id}")));
        };
        wave_from_row(&row)
    }
}

#[async_trait]
impl LeaseStore for PostgresStore {
    async fn start_pass(&self, lease: &Lease) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        check_lease(&tx, lease).await?;
        let changed = tx
            .execute(
                "UPDATE mailboxes SET state = 'running', attempts = attempts + 1,
                     updated_at = now()
                 WHERE id = $1 AND pass = $2 AND state IN ('queued', 'running')",
                &[&lease.mailbox, &lease.pass],
            )
            .await?;
        tx.commit().await?;
        Ok(changed == 1)
    }

    async fn finish_pass(&self, lease: &Lease, outcome: &PassOutcome) -> Result<(), StoreError> {
        let stats = serde_json::to_string(&outcome.stats)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        check_lease(&tx, lease).await?;
        tx.execute(
            "UPDATE mailboxes SET state = $3, last_error = $4, stats = $5::text::jsonb,
                 updated_at = now()
             WHERE id = $1 AND pass = $2",
            &[
                &lease.mailbox,
                &lease.pass,
                &outcome.state.as_str(),
                &outcome.error,
                &stats,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn acquire_lease(
        &self,
        mailbox: MailboxId,
        pass: i64,
        worker: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let epoch = tx
            .query_opt(
                "UPDATE mailboxes SET lease_epoch = lease_epoch + 1 WHERE id = $1
                 RETURNING lease_epoch",
                &[&mailbox],
            )
            .await?;
        let Some(epoch) = epoch else {
            return Err(StoreError::NotFound(format!("mailbox {mailbox}")));
        };
        let token: i64 = epoch.try_get(0)?;
        let taken = tx
            .execute(
                "INSERT INTO leases (mailbox, pass, worker, expires_at, token)
                 VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5)
                 ON CONFLICT (mailbox) DO UPDATE SET
                     pass = excluded.pass, worker = excluded.worker,
                     expires_at = excluded.expires_at, token = excluded.token
                 WHERE leases.worker = excluded.worker OR leases.expires_at <= now()",
                &[&mailbox, &pass, &worker, &ttl.as_secs_f64(), &token],
            )
            .await?;
        if taken != 1 {
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(Lease {
            mailbox,
            pass,
            worker: worker.to_owned(),
            token,
        }))
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE leases SET expires_at = now() + make_interval(secs => $5)
                 FROM mailboxes
                 WHERE leases.mailbox = $1 AND leases.pass = $2 AND leases.worker = $3
                   AND leases.token = $4 AND leases.expires_at > now()
                   AND mailboxes.id = leases.mailbox AND mailboxes.pass = leases.pass",
            )
            .await?;
        let changed = client
            .execute(
                &stmt,
                &[
                    &lease.mailbox,
                    &lease.pass,
                    &lease.worker,
                    &lease.token,
                    &ttl.as_secs_f64(),
                ],
            )
            .await?;
        Ok(changed == 1)
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("DELETE FROM leases WHERE mailbox = $1 AND worker = $2 AND token = $3")
            .await?;
        client
            .execute(&stmt, &[&lease.mailbox, &lease.worker, &lease.token])
            .await?;
        Ok(())
    }

    async fn hand_back(&self, lease: &Lease) -> Result<bool, StoreError> {
        let Lease {
            mailbox,
            pass,
            worker,
            token,
        } = lease;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let found = tx
            .query_opt(
                "SELECT w.state
                 FROM leases l JOIN mailboxes m ON m.id = l.mailbox JOIN waves w ON w.id = m.wave
                 WHERE l.mailbox = $1 AND l.pass = $2 AND l.worker = $3 AND l.token = $4
                   AND m.state = 'running' AND m.pass = $2
                 FOR UPDATE OF m, l",
                &[mailbox, pass, worker, token],
            )
            .await?;
        let Some(row) = found else {
            return Ok(false);
        };
        let wave_state: &str = row.try_get(0)?;
        let (state, published) = if wave_state == WaveState::Cancelled.as_str() {
            ("pending", true)
        } else {
            ("queued", false)
        };
        tx.execute(
            "UPDATE mailboxes SET state = $3, job_published = $4,
                 attempts = greatest(attempts - 1, 0), updated_at = now()
             WHERE id = $1 AND pass = $2",
            &[&mailbox, &pass, &state, &published],
        )
        .await?;
        tx.execute(
            "DELETE FROM leases WHERE mailbox = $1 AND worker = $2",
            &[&mailbox, &worker],
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}

#[async_trait]
impl LedgerStore for PostgresStore {
    async fn checkpoints(&self, mailbox: MailboxId) -> Result<Vec<FolderCheckpoint>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {CHECKPOINT_COLUMNS}
                 FROM folder_checkpoints WHERE mailbox = $1 ORDER BY folder"
            ))
            .await?;
        client
            .query(&stmt, &[&mailbox])
            .await?
            .iter()
            .map(checkpoint_from_row)
            .collect()
    }

    async fn save_checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &FolderCheckpoint,
    ) -> Result<(), StoreError> {
        let params = CheckpointParams::new(checkpoint);
        self.fenced(lease, checkpoint_upsert!(), &params.params())
            .await
    }

    async fn commit_items(
        &self,
        lease: &Lease,
        checkpoint: &FolderCheckpoint,
        entries: &[LedgerEntry],
    ) -> Result<(), StoreError> {
        let entries = last_wins(entries, |e| (e.mailbox, &e.folder, e.validity, &e.item));
        let columns = LedgerColumns::new(&entries);
        let checkpoint = CheckpointParams::new(checkpoint);
        let mut params = checkpoint.params();
        params.extend(columns.params());
        // One statement: the entries, the intents forgotten, the checkpoint.
        let sql = format!(
            "WITH entries AS ({}),
                  forgotten AS (DELETE FROM intents WHERE mailbox = $1 AND folder = $2) {}",
            ledger_upsert("ledger", 10),
            checkpoint_upsert!()
        );
        self.fenced(lease, &sql, &params).await
    }

    async fn record_intents(
        &self,
        lease: &Lease,
        entries: &[LedgerEntry],
    ) -> Result<(), StoreError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let entries = last_wins(entries, |e| (e.mailbox, &e.folder, e.validity, &e.item));
        let columns = LedgerColumns::new(&entries);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        check_lease(&tx, lease).await?;
        tx.execute(
            "DELETE FROM intents WHERE mailbox = $1 AND folder = $2",
            &[&first.mailbox, &first.folder],
        )
        .await?;
        let stmt = tx.prepare_cached(&ledger_upsert("intents", 1)).await?;
        tx.execute(&stmt, &columns.params()).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn intents(
        &self,
        mailbox: MailboxId,
        folder: &str,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {LEDGER_COLUMNS} FROM intents WHERE mailbox = $1 AND folder = $2
                 ORDER BY uid, item"
            ))
            .await?;
        client
            .query(&stmt, &[&mailbox, &folder])
            .await?
            .iter()
            .map(ledger_from_row)
            .collect()
    }

    async fn ledger_entries(
        &self,
        mailbox: MailboxId,
        folder: &str,
        validity: u32,
        items: &[String],
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {LEDGER_COLUMNS} FROM ledger
                 WHERE mailbox = $1 AND folder = $2 AND validity = $3 AND item = ANY($4)
                 ORDER BY uid, item"
            ))
            .await?;
        client
            .query(&stmt, &[&mailbox, &folder, &i64::from(validity), &items])
            .await?
            .iter()
            .map(ledger_from_row)
            .collect()
    }

    async fn retarget_folder(
        &self,
        lease: &Lease,
        checkpoint: &FolderCheckpoint,
        target_ids: &[(String, Option<String>)],
    ) -> Result<(), StoreError> {
        let items: Vec<&str> = target_ids.iter().map(|(item, _)| item.as_str()).collect();
        let ids: Vec<Option<&str>> = target_ids.iter().map(|(_, id)| id.as_deref()).collect();
        let checkpoint = CheckpointParams::new(checkpoint);
        let mut params = checkpoint.params();
        let retarget_params: [Param<'_>; 2] = [&items, &ids];
        params.extend(retarget_params);
        let sql = concat!(
            "WITH retargeted AS (
                 UPDATE ledger SET target_id = r.target_id, target_folder = $3, target_version = NULL
                 FROM unnest($10::text[], $11::text[]) AS r (item, target_id)
                 WHERE ledger.mailbox = $1 AND ledger.folder = $2 AND ledger.validity = $4
                   AND ledger.item = r.item
             ) ",
            checkpoint_upsert!()
        );
        self.fenced(lease, sql, &params).await
    }

    async fn ledger(
        &self,
        mailbox: MailboxId,
        folder: &str,
        validity: u32,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {LEDGER_COLUMNS}
                 FROM ledger WHERE mailbox = $1 AND folder = $2 AND validity = $3
                 ORDER BY uid, item"
            ))
            .await?;
        client
            .query(&stmt, &[&mailbox, &folder, &i64::from(validity)])
            .await?
            .iter()
            .map(ledger_from_row)
            .collect()
    }

    async fn update_flags(
        &self,
        lease: &Lease,
        folder: &str,
        validity: u32,
        flags: &[(String, String)],
    ) -> Result<(), StoreError> {
        let updates = last_wins(flags, |(item, _)| item);
        let items: Vec<&str> = updates.iter().map(|(item, _)| item.as_str()).collect();
        let flags: Vec<&str> = updates.iter().map(|(_, flags)| flags.as_str()).collect();
        let validity = i64::from(validity);
        self.fenced(
            lease,
            "UPDATE ledger SET flags = u.flags
             FROM unnest($4::text[], $5::text[]) AS u (item, flags)
             WHERE ledger.mailbox = $1 AND ledger.folder = $2 AND ledger.validity = $3
               AND ledger.item = u.item",
            &[&lease.mailbox, &folder, &validity, &items, &flags],
        )
        .await
    }

    async fn rekey_folder(
        &self,
        lease: &Lease,
        checkpoint: &FolderCheckpoint,
        old_validity: u32,
        rekeys: &[(String, String, Option<u32>)],
    ) -> Result<(), StoreError> {
        let old_validity = i64::from(old_validity);
        let old_items: Vec<&str> = rekeys.iter().map(|(old, _, _)| old.as_str()).collect();
        let new_items: Vec<&str> = rekeys.iter().map(|(_, new, _)| new.as_str()).collect();
        let new_uids: Vec<i64> = rekeys
            .iter()
            .map(|(_, _, uid)| i64::from(uid_to_store(*uid)))
            .collect();
        let checkpoint = CheckpointParams::new(checkpoint);
        let mut params = checkpoint.params();
        let rekey_params: [Param<'_>; 4] = [&old_validity, &old_items, &new_items, &new_uids];
        params.extend(rekey_params);
        let sql = concat!(
            "WITH rekeyed AS (
                 UPDATE ledger SET validity = $4, item = r.new_item, uid = r.new_uid
                 FROM unnest($11::text[], $12::text[], $13::bigint[])
                     AS r (old_item, new_item, new_uid)
                 WHERE ledger.mailbox = $1 AND ledger.folder = $2 AND ledger.validity = $10
                   AND ledger.item = r.old_item
             ) ",
            checkpoint_upsert!()
        );
        self.fenced(lease, sql, &params).await
    }

    async fn record_failure(&self, lease: &Lease, failure: &ItemFailure) -> Result<(), StoreError> {
        match &failure.scope {
            FailureScope::Folder => {
                self.fenced(
                    lease,
                    "INSERT INTO folder_failures (mailbox, folder, class, reason, pass)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (mailbox, folder) DO UPDATE SET
                         class = excluded.class, reason = excluded.reason, pass = excluded.pass",
                    &[
                        &failure.mailbox,
                        &failure.folder,
                        &failure.class.as_str(),
                        &failure.reason,
                        &failure.pass,
                    ],
                )
                .await
            }
            FailureScope::Item { item, size } => {
                self.fenced(
                    lease,
                    "INSERT INTO item_failures (mailbox, folder, item, size, class, reason, pass, policy)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (mailbox, folder, item) DO UPDATE SET
                         size = excluded.size, class = excluded.class,
                         reason = excluded.reason, pass = excluded.pass, policy = excluded.policy",
                    &[
                        &failure.mailbox,
                        &failure.folder,
                        item,
                        &size.map(|s| s as i64),
                        &failure.class.as_str(),
                        &failure.reason,
                        &failure.pass,
                        &failure.policy,
                    ],
                )
                .await
            }
        }
    }
}

#[async_trait]
impl WaveStore for PostgresStore {
    async fn ensure_wave(
        &self,
        name: &str,
        config: &crate::config::Config,
    ) -> Result<WaveId, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO waves (name, config) VALUES ($1, $2::text::jsonb)
                 ON CONFLICT (name) DO UPDATE SET config = excluded.config RETURNING id",
            )
            .await?;
        let config = WaveConfig::to_stored(config).to_string();
        Ok(client
            .query_one(&stmt, &[&name, &config])
            .await?
            .try_get(0)?)
    }

    async fn add_mailboxes(
        &self,
        wave: WaveId,
        specs: &[MailboxSpec],
    ) -> Result<Vec<MailboxRecord>, StoreError> {
        let sources: Vec<&str> = specs.iter().map(|s| s.source.as_str()).collect();
        let targets: Vec<&str> = specs.iter().map(|s| s.target.as_str()).collect();
        let client = self.client().await?;
        let insert = client
            .prepare_cached(&format!(
                "INSERT INTO mailboxes (wave, source, target)
                 SELECT $1, source, target
                 FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS s (source, target, n)
                 ORDER BY n
                 ON CONFLICT (wave, source) DO NOTHING
                 RETURNING {MAILBOX_COLUMNS}"
            ))
            .await?;
        let mut by_source = HashMap::with_capacity(specs.len());
        for row in client.query(&insert, &[&wave, &sources, &targets]).await? {
            let record = mailbox_from_row(&row)?;
            by_source.insert(record.source.clone(), record);
        }
        // Mailboxes the wave had already are read back, only they.
        let known: Vec<&str> = sources
            .into_iter()
            .filter(|source| !by_source.contains_key(*source))
            .collect();
        if !known.is_empty() {
            let select = client
                .prepare_cached(&format!(
                    "SELECT {MAILBOX_COLUMNS} FROM mailboxes
                     JOIN unnest($2::text[]) AS given (source) USING (source)
                     WHERE wave = $1"
                ))
                .await?;
            for row in client.query(&select, &[&wave, &known]).await? {
                let record = mailbox_from_row(&row)?;
                by_source.insert(record.source.clone(), record);
            }
        }
        specs
            .iter()
            .map(|spec| {
                by_source.get(&spec.source).cloned().ok_or_else(|| {
                    StoreError::Corrupt(format!("mailbox {} vanished while added", spec.source))
                })
            })
            .collect()
    }

    async fn mailboxes(&self, wave: WaveId) -> Result<Vec<MailboxRecord>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE wave = $1 ORDER BY id"
            ))
            .await?;
        client
            .query(&stmt, &[&wave])
            .await?
            .iter()
            .map(mailbox_from_row)
            .collect()
    }

    async fn request_passes(&self, mailboxes: &[MailboxId]) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("DELETE FROM leases WHERE mailbox = ANY($1)", &[&mailboxes])
            .await?;
        tx.execute(
            "UPDATE mailboxes SET wanted_pass = pass + 1, job_published = true,
                 state = CASE WHEN state IN ('queued', 'running') THEN 'pending'
                              ELSE state END,
                 updated_at = now()
             WHERE id = ANY($1)",
            &[&mailboxes],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
    async fn expired_leases(&self) -> Result<Vec<(MailboxId, i64, String)>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT l.mailbox, l.pass, l.worker
                 FROM leases l JOIN mailboxes m ON m.id = l.mailbox
                 WHERE l.expires_at <= now() AND m.state = 'running' AND m.pass = l.pass
                 ORDER BY l.mailbox",
            )
            .await?;
        client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
            .collect()
    }

    async fn create_wave(
        &self,
        name: &str,
        config: &crate::config::Config,
    ) -> Result<WaveId, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO waves (name, config) VALUES ($1, $2::text::jsonb)
                 ON CONFLICT (name) DO NOTHING RETURNING id",
            )
            .await?;
        match client
            .query_opt(&stmt, &[&name, &WaveConfig::to_stored(config).to_string()])
            .await?
        {
            Some(row) => Ok(row.try_get(0)?),
            None => Err(StoreError::Conflict(format!(
                "a wave named {name:?} exists"
            ))),
        }
    }

    async fn waves(&self) -> Result<Vec<WaveRecord>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("SELECT {WAVE_COLUMNS} FROM waves ORDER BY id"))
            .await?;
        client
            .query(&stmt, &[])
            .await?
            .iter()
            .map(wave_from_row)
            .collect()
    }

    async fn transition_wave(
        &self,
        id: WaveId,
        from: &[WaveState],
        to: Option<WaveState>,
        action: WaveAction,
    ) -> Result<bool, StoreError> {
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let to = to.map(WaveState::as_str);
        let request = matches!(
            action,
            WaveAction::RequestPass | WaveAction::RequestFinalPass
        );
        let final_pass = action == WaveAction::RequestFinalPass;
        let reset = action == WaveAction::ResetQueued;
        let client = self.client().await?;
        // One statement, so one transaction; the wave's row lock orders
        // concurrent transitions, each re-checking the state it found.
        let stmt = client
            .prepare_cached(
                "WITH w AS (
                     UPDATE waves SET state = coalesce($3, state), final_pass = final_pass OR $4
                     WHERE id = $1 AND state = ANY($2::text[]) RETURNING id
                 ), requested AS (
                     UPDATE mailboxes SET wanted_pass = pass + 1
                     WHERE $5 AND wave IN (SELECT id FROM w)
                 ), reset AS (
                     UPDATE mailboxes SET state = 'pending', updated_at = now()
                     WHERE $6 AND state = 'queued' AND wave IN (SELECT id FROM w)
                 )
                 SELECT (SELECT count(*) FROM w), EXISTS (SELECT 1 FROM waves WHERE id = $1)",
            )
            .await?;
        let row = client
            .query_one(&stmt, &[&id, &from, &to, &final_pass, &request, &reset])
            .await?;
        if !row.try_get::<_, bool>(1)? {
            return Err(StoreError::NotFound(format!("wave {id}")));
        }
        Ok(row.try_get::<_, i64>(0)? == 1)
    }

    async fn complete_wave_if_done(&self, id: WaveId) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE waves SET state = 'completed'
                 WHERE id = $1 AND state = 'running' AND final_pass
                   AND NOT EXISTS (
                       SELECT 1 FROM mailboxes WHERE wave = $1
                          AND (state IN ('queued', 'running') OR wanted_pass > pass))",
            )
            .await?;
        Ok(client.execute(&stmt, &[&id]).await? == 1)
    }

    async fn wave_counts(&self, id: WaveId) -> Result<WaveCounts, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT state, sum(mailboxes)::bigint, sum(items_copied)::bigint,
                        sum(bytes_copied)::bigint, sum(items_skipped)::bigint
                 FROM wave_count_deltas WHERE wave = $1 GROUP BY state",
            )
            .await?;
        let mut counts = WaveCounts::default();
        for row in client.query(&stmt, &[&id]).await? {
            let state = MailboxState::parse(row.try_get(0)?).unwrap_or(MailboxState::Failed);
            counts.add_state(state, row.try_get::<_, i64>(1)? as u64);
            counts.items_copied += row.try_get::<_, i64>(2)? as u64;
            counts.bytes_copied += row.try_get::<_, i64>(3)? as u64;
            counts.items_skipped += row.try_get::<_, i64>(4)? as u64;
        }
        Ok(counts)
    }

    async fn in_flight(&self, wave: WaveId) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT coalesce(sum(mailboxes), 0)::bigint FROM wave_count_deltas
                 WHERE wave = $1 AND state IN ('queued', 'running')",
            )
            .await?;
        Ok(client
            .query_one(&stmt, &[&wave])
            .await?
            .try_get::<_, i64>(0)? as u64)
    }

    async fn compact_wave_counts(&self, wave: WaveId) -> Result<(), StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT compact_wave_counts($1)")
            .await?;
        client.execute(&stmt, &[&wave]).await?;
        Ok(())
    }

    async fn failed_mailboxes(
        &self,
        wave: WaveId,
        limit: usize,
    ) -> Result<Vec<MailboxRecord>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE wave = $1 AND state = 'failed'
                 ORDER BY id LIMIT $2"
            ))
            .await?;
        client
            .query(&stmt, &[&wave, &sql_limit(limit)])
            .await?
            .iter()
            .map(mailbox_from_row)
            .collect()
    }

    async fn next_to_publish(&self, wave: WaveId, limit: usize) -> Result<Vec<Job>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT wave, id, pass + 1 FROM mailboxes
                 WHERE wave = $1 AND wanted_pass > pass AND state NOT IN ('queued', 'running')
                 ORDER BY id LIMIT $2",
            )
            .await?;
        client
            .query(&stmt, &[&wave, &sql_limit(limit)])
            .await?
            .iter()
            .map(job_from_row)
            .collect()
    }

    async fn mark_published(&self, jobs: &[Job]) -> Result<Vec<Job>, StoreError> {
        let (ids, passes): (Vec<i64>, Vec<i64>) = jobs.iter().map(|j| (j.mailbox, j.pass)).unzip();
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE mailboxes m SET state = 'queued', pass = j.pass, attempts = 0,
                     last_error = NULL, stats = '{}', job_published = false, workers_lost = 0,
                     updated_at = now()
                 FROM unnest($1::bigint[], $2::bigint[]) AS j(id, pass)
                 WHERE m.id = j.id AND m.pass = j.pass - 1 AND m.wanted_pass >= j.pass
                   AND m.state NOT IN ('queued', 'running')
                   AND (SELECT state FROM waves WHERE waves.id = m.wave) = 'running'
                 RETURNING m.id",
            )
            .await?;
        let marked: HashSet<i64> = client
            .query(&stmt, &[&ids, &passes])
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        Ok(jobs
            .iter()
            .filter(|job| marked.contains(&job.mailbox))
            .cloned()
            .collect())
    }

    async fn confirm_published(&self, jobs: &[Job]) -> Result<(), StoreError> {
        let (ids, passes): (Vec<i64>, Vec<i64>) = jobs.iter().map(|j| (j.mailbox, j.pass)).unzip();
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "UPDATE mailboxes m SET job_published = true
                 FROM unnest($1::bigint[], $2::bigint[]) AS j(id, pass)
                 WHERE m.id = j.id AND m.pass = j.pass",
            )
            .await?;
        client.execute(&stmt, &[&ids, &passes]).await?;
        Ok(())
    }

    async fn unpublished_jobs(&self, wave: WaveId) -> Result<Vec<Job>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT wave, id, pass FROM mailboxes
                 WHERE wave = $1 AND state = 'queued' AND NOT job_published ORDER BY id",
            )
            .await?;
        client
            .query(&stmt, &[&wave])
            .await?
            .iter()
            .map(job_from_row)
            .collect()
    }

    async fn reap_lease(
        &self,
        mailbox: MailboxId,
        pass: i64,
        worker: &str,
        max_attempts: i64,
    ) -> Result<Option<ReapOutcome>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // The mailbox's row lock holds off a concurrent start or finish
        // until the decision is written.
        let found = tx
            .query_opt(
                "SELECT m.attempts, m.workers_lost, w.state
                 FROM leases l JOIN mailboxes m ON m.id = l.mailbox JOIN waves w ON w.id = m.wave
                 WHERE l.mailbox = $1 AND l.pass = $2 AND l.worker = $3 AND l.expires_at <= now()
                   AND m.state = 'running' AND m.pass = $2
                 FOR UPDATE OF m, l",
                &[&mailbox, &pass, &worker],
            )
            .await?;
        let Some(row) = found else {
            return Ok(None);
        };
        let attempts: i64 = row.try_get(0)?;
        let lost: i64 = row.try_get(1)?;
        let wave_state: &str = row.try_get(2)?;
        let outcome = reap_decision(attempts, lost + 1, wave_state, max_attempts);
        let (state, error, published) = match &outcome {
            ReapOutcome::Requeued => ("queued", None, false),
            ReapOutcome::Failed(error) => ("failed", Some(error.as_str()), true),
            ReapOutcome::Released => ("pending", None, true),
        };
        tx.execute(
            "UPDATE mailboxes SET state = $3, last_error = coalesce($4, last_error),
                 job_published = $5, workers_lost = workers_lost + 1, updated_at = now()
             WHERE id = $1 AND pass = $2",
            &[&mailbox, &pass, &state, &error, &published],
        )
        .await?;
        tx.execute(
            "DELETE FROM leases WHERE mailbox = $1 AND worker = $2",
            &[&mailbox, &worker],
        )
        .await?;
        tx.commit().await?;
        Ok(Some(outcome))
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::hash::{BuildHasher, RandomState};

    use super::*;
    use crate::store::suite;

    /// The local server the tests need (trust authentication).
    const ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";

    /// Runs `test` with the URL of a new, empty database on the local server,
    /// and drops the database afterwards, whether the test passed or not.
    async fn with_database<F, Fut>(test: F)
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (admin, connection) = tokio_postgres::connect(ADMIN, NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is not reachable on 127.0.0.1:5432 ({}). These tests need it: \
                     start it with `pg_ctlcluster --skip-systemctl-redirect \
                     $(ls /etc/postgresql) main start`",
                    error_chain(&e)
                )
            });
        tokio::spawn(connection);
        let name = format!(
            "mailwave_test_{:016x}",
            RandomState::new().hash_one(std::process::id())
        );
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let outcome =
            tokio::spawn(test(format!("postgres://postgres@127.0.0.1:5432/{name}"))).await;
        admin
            .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .await
            .unwrap();
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    }

    async fn on_a_fresh_database(check: suite::Check) {
        with_database(|url| async move {
            let store = PostgresStore::connect_and_migrate(&url).await.unwrap();
            check(&store).await;
        })
        .await;
    }

    mod store_suite {
        crate::store::suite::store_suite!(super::on_a_fresh_database);
    }

    #[tokio::test]
    async fn concurrent_migrations_both_succeed() {
        with_database(|url| async move {
            let first = PostgresStore::connect(&url).await.unwrap();
            let second = PostgresStore::connect(&url).await.unwrap();
            let client = first.client().await.unwrap();
            let ledger = "SELECT to_regclass('ledger') IS NOT NULL";
            let exists: bool = client.query_one(ledger, &[]).await.unwrap().get(0);
            assert!(!exists, "connect leaves the schema alone");

            let (a, b) = tokio::join!(first.migrate(), second.migrate());
            a.unwrap();
            b.unwrap();
            first.migrate().await.unwrap();

            let applied: i64 = client
                .query_one("SELECT count(*) FROM refinery_schema_history", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(applied, 7, "V1 to V7");
            let partitions: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_inherits WHERE inhparent = 'ledger'::regclass",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(partitions, 16);
        })
        .await;
    }

    /// The status of a wave and the dispatcher's cap read the wave's count
    /// deltas, never its mailboxes: they answer while another session
    /// holds the mailboxes table locked against readers.
    #[tokio::test]
    async fn wave_counts_never_read_the_mailboxes() {
        with_database(|url| async move {
            let store = PostgresStore::connect_and_migrate(&url).await.unwrap();
            let wave = store
                .ensure_wave("counted", &crate::store::suite::wave_config())
                .await
                .unwrap();
            let specs: Vec<_> = (0..1000)
                .map(|i| MailboxSpec {
                    source: format!("u{i}@x"),
                    target: format!("u{i}@y"),
                })
                .collect();
            store.add_mailboxes(wave, &specs).await.unwrap();
            let mut locker = store.client().await.unwrap();
            let lock = locker.transaction().await.unwrap();
            lock.batch_execute("LOCK TABLE mailboxes IN ACCESS EXCLUSIVE MODE")
                .await
                .unwrap();
            let counts = tokio::time::timeout(Duration::from_secs(5), async {
                store.compact_wave_counts(wave).await.unwrap();
                let in_flight = store.in_flight(wave).await.unwrap();
                (store.wave_counts(wave).await.unwrap(), in_flight)
            })
            .await
            .expect("the counts waited for the locked mailboxes table");
            lock.rollback().await.unwrap();
            assert_eq!(
                (counts.0.pending, counts.0.total(), counts.1),
                (1000, 1000, 0)
            );
        })
        .await;
    }

    #[tokio::test]
    async fn rows_written_before_connector_cursors_are_migrated() {
        with_database(|url| async move {
            let store = PostgresStore::connect(&url).await.unwrap();
            let mut session = store.client().await.unwrap();
            embedded::migrations::runner()
                .set_target(refinery::Target::Version(4))
                .run_async(&mut **session)
                .await
                .unwrap();
            session
                .batch_execute(crate::store::suite::ROWS_BEFORE_CURSORS)
                .await
                .unwrap();
            drop(session);
            store.migrate().await.unwrap();
            crate::store::suite::rows_before_cursors_read_back(&store).await;
        })
        .await;
    }

    #[tokio::test]
    async fn a_batch_of_5000_items_is_one_statement_in_one_partition() {
        with_database(|url| async move {
            let store = PostgresStore::connect_and_migrate(&url).await.unwrap();
            let wave = store
                .ensure_wave("batch", &crate::store::suite::wave_config())
                .await
                .unwrap();
            let spec = MailboxSpec {
                source: "big@x".into(),
                target: "big@y".into(),
            };
            let id = store.add_mailboxes(wave, &[spec]).await.unwrap()[0].id;
            let entries: Vec<_> = (1..=5000u32)
                .map(|uid| LedgerEntry {
                    mailbox: id,
                    folder: "INBOX".into(),
                    validity: 7,
                    item: uid.to_string(),
                    uid: Some(uid),
                    target_folder: "INBOX".into(),
                    target_id: (uid % 2 == 0).then(|| (uid + 10).to_string()),
                    size: u64::from(uid) * 10,
                    content_hash: format!("c{uid}"),
                    header_hash: format!("h{uid}"),
                    flags: "\\Seen".into(),
                    identity: format!("k{uid}:b{uid}"),
                    source_version: Some(format!("s{uid}")),
                    target_version: (uid % 3 == 0).then(|| format!("t{uid}")),
                })
                .collect();
            let checkpoint = FolderCheckpoint {
                mailbox: id,
                folder: "INBOX".into(),
                target_folder: "INBOX".into(),
                validity: 7,
                high_water_mark: 5000,
                source_cursor: None,
                target_mark: TargetMark::new("5001".into()),
                target_validity: Some(3),
                subscribed: false,
            };
            let lease = store
                .acquire_lease(id, 1, "w", Duration::from_secs(60))
                .await
                .unwrap()
                .unwrap();
            store
                .commit_items(&lease, &checkpoint, &entries)
                .await
                .unwrap();

            assert_eq!(store.ledger(id, "INBOX", 7).await.unwrap(), entries);
            assert_eq!(store.checkpoints(id).await.unwrap(), [checkpoint]);
            // One transaction wrote every row and the checkpoint; one
            // partition holds the mailbox.
            let client = store.client().await.unwrap();
            let row = client
                .query_one(
                    "SELECT count(*), count(DISTINCT l.xmin::text), count(DISTINCT l.tableoid),
                            bool_and(l.xmin::text = c.xmin::text)
                     FROM ledger l JOIN folder_checkpoints c USING (mailbox, folder)
                     WHERE l.mailbox = $1",
                    &[&id],
                )
                .await
                .unwrap();
            assert_eq!(row.get::<_, i64>(0), 5000);
            assert_eq!(row.get::<_, i64>(1), 1, "one transaction");
            assert_eq!(row.get::<_, i64>(2), 1, "one partition");
            assert!(row.get::<_, bool>(3), "with the checkpoint");
        })
        .await;
    }

    #[tokio::test]
    async fn sslmode_require_negotiates_tls() {
        with_database(|url| async move {
            let (admin, connection) = tokio_postgres::connect(ADMIN, NoTls).await.unwrap();
            tokio::spawn(connection);
            let show = |name: &'static str| {
                let admin = &admin;
                async move {
                    let row = admin.query_one(&format!("SHOW {name}"), &[]).await.unwrap();
                    row.get::<_, String>(0)
                }
            };
            assert_eq!(
                show("ssl").await,
                "on",
                "the local PostgreSQL has ssl = off: this test cannot show TLS being negotiated; \
                 turn it on (ssl = on with ssl_cert_file and ssl_key_file, as Debian's snakeoil \
                 certificate for localhost provides) and run it again"
            );
            let certificate = std::path::PathBuf::from(show("ssl_cert_file").await);
            // The certificate names localhost; the connection goes to 127.0.0.1.
            let url = url.replace("@127.0.0.1:", "@localhost:") + "?hostaddr=127.0.0.1";

            // Not trusted: the handshake fails on the certificate, which a
            // server without TLS could never make it do.
            let error = PostgresStore::connect(&format!("{url}&sslmode=require"))
                .await
                .err()
                .expect("the local server's certificate is not trusted");
            assert!(error.to_string().contains("certificate"), "{error}");

            // Trusted through ca_file: connected, and the server says the
            // session is encrypted.
            let store = PostgresStore::connect_with_tls(
                &format!("{url}&sslmode=require"),
                1,
                Some(&certificate),
            )
            .await
            .unwrap_or_else(|e| panic!("with {} trusted: {e}", certificate.display()));
            let client = store.client().await.unwrap();
            let encrypted: bool = client
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert!(encrypted, "the session is not encrypted");
        })
        .await;
    }

    #[tokio::test]
    async fn another_host_gets_verified_tls_or_is_refused_before_connecting() {
        let mode_for = |url: &str| {
            let mut config = Config::from_str(url).unwrap();
            transport(&mut config, url, None).map(|tls| (tls.is_some(), config.get_ssl_mode()))
        };
        // TEST-NET-1 addresses and example names: decided, never contacted.
        assert_eq!(
            mode_for("postgres://u@192.0.2.5/db").unwrap(),
            (true, SslMode::Require)
        );
        assert_eq!(
            mode_for("postgres://u@db.example/db").unwrap(),
            (true, SslMode::Require)
        );
        assert_eq!(
            mode_for("postgres://u@localhost/db?hostaddr=192.0.2.5").unwrap(),
            (true, SslMode::Require)
        );
        assert_eq!(
            mode_for("postgres://u@192.0.2.5/db?sslmode=disable").unwrap(),
            (false, SslMode::Disable)
        );
        assert_eq!(
            mode_for("postgres://u@127.0.0.1/db").unwrap(),
            (false, SslMode::Prefer)
        );
        assert_eq!(
            mode_for("host=/run/postgresql dbname=db").unwrap(),
            (false, SslMode::Prefer)
        );

        let started = std::time::Instant::now();
        let error = PostgresStore::connect("postgres://u@192.0.2.5/db?sslmode=prefer")
            .await
            .err()
            .expect("sslmode=prefer to another host is refused");
        assert!(
            error
                .to_string()
                .contains("sslmode=prefer falls back to plain text"),
            "{error}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "it tried to connect"
        );

        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "not a certificate\n").unwrap();
        for (ca_file, expected) in [
            (dir.path().join("missing.pem"), "No such file"),
            (not_pem, "no PEM certificate"),
        ] {
            let error =
                PostgresStore::connect_with_tls("postgres://u@192.0.2.5/db", 1, Some(&ca_file))
                    .await
                    .err()
                    .expect("a bad ca_file is an error");
            let message = error.to_string();
            assert!(message.contains("PostgreSQL ca_file"), "{message}");
            assert!(message.contains(expected), "{message}");
        }
    }

    #[tokio::test]
    async fn bad_urls_are_refused_without_connecting() {
        let error = PostgresStore::connect("postgres://h/db?no_such_option=1")
            .await
            .err()
            .expect("an unknown option is an error");
        assert!(matches!(error, StoreError::Corrupt(_)), "{error}");
    }
}
