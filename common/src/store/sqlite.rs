//! The embedded store: one SQLite file (WAL, so a `kill -9` loses nothing
//! that was committed), used by `mailwave run`. Calls run on tokio's blocking
//! pool behind one connection; every write is one short transaction.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{
    LeaseStore, LedgerStore, PassOutcome, ReapOutcome, RecordStore, StoreError, WaveAction,
    WaveStore, reap_decision, stored_uid, uid_to_store,
};
use crate::config::Config;
use crate::model::{
    FailureScope, FolderCheckpoint, ItemFailure, Job, Lease, LedgerEntry, MailboxId, MailboxRecord,
    MailboxSpec, MailboxState, SourceCursor, TargetMark, WaveCounts, WaveId, WaveRecord, WaveState,
};
use crate::wave_config::WaveConfig;

mod embedded {
    refinery::embed_migrations!("migrations/sqlite");
}

/// The SQLite-backed [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        match error {
            rusqlite::Error::SqliteFailure(e, _)
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) =>
            {
                StoreError::Unavailable(error.to_string())
            }
            other => StoreError::Corrupt(other.to_string()),
        }
    }
}

impl SqliteStore {
    /// Opens (or creates, readable by its owner only: mode 0600) the store
    /// file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        use std::os::unix::fs::OpenOptionsExt;

        let unavailable =
            |e: std::io::Error| StoreError::Unavailable(format!("{}: {e}", path.display()));
        // Created here, not by SQLite, which would follow the umask. Its
        // `-wal` and `-shm` files take the main file's mode.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(unavailable)?;
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        SqliteStore::setup(conn)
    }

    /// A store that lives in memory only (tests).
    pub fn in_memory() -> Result<SqliteStore, StoreError> {
        SqliteStore::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> Result<SqliteStore, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        embedded::migrations::runner()
            .run(&mut conn)
            .map_err(|e| StoreError::Corrupt(format!("schema migration: {e}")))?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| StoreError::Corrupt("store connection poisoned".into()))?;
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task: {e}")))?
    }
}

const MAILBOX_COLUMNS: &str = "id, wave, source, target, state, pass, attempts, last_error, stats";

fn mailbox_from_row(row: &Row<'_>) -> rusqlite::Result<MailboxRecord> {
    let state: String = row.get(4)?;
    let stats: String = row.get(8)?;
    Ok(MailboxRecord {
        id: row.get(0)?,
        wave: row.get(1)?,
        source: row.get(2)?,
        target: row.get(3)?,
        state: MailboxState::parse(&state).unwrap_or(MailboxState::Failed),
        pass: row.get(5)?,
        attempts: row.get(6)?,
        last_error: row.get(7)?,
        stats: serde_json::from_str(&stats).unwrap_or_default(),
    })
}

const WAVE_COLUMNS: &str = "id, name, state, final_pass, config";

fn wave_from_row(row: &Row<'_>) -> rusqlite::Result<WaveRecord> {
    let state: String = row.get(2)?;
    let config: String = row.get(4)?;
    Ok(WaveRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        state: WaveState::parse(&state).unwrap_or(WaveState::Cancelled),
        final_pass: row.get(3)?,
        config: WaveConfig::from_stored(&config),
    })
}

/// The store's clock in milliseconds since the Unix epoch (leases).
const NOW_MS: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";

fn checkpoint_from_row(row: &Row<'_>) -> rusqlite::Result<FolderCheckpoint> {
    Ok(FolderCheckpoint {
        mailbox: row.get(0)?,
        folder: row.get(1)?,
        target_folder: row.get(2)?,
        validity: row.get(3)?,
        high_water_mark: row.get(4)?,
        source_cursor: row.get::<_, Option<String>>(5)?.map(SourceCursor::new),
        target_mark: TargetMark::new(row.get(6)?),
        target_validity: row.get(7)?,
        subscribed: row.get(8)?,
    })
}

fn ledger_from_row(row: &Row<'_>) -> rusqlite::Result<LedgerEntry> {
    Ok(LedgerEntry {
        mailbox: row.get(0)?,
        folder: row.get(1)?,
        validity: row.get(2)?,
        item: row.get(3)?,
        uid: stored_uid(row.get(4)?),
        target_folder: row.get(5)?,
        target_id: row.get(6)?,
        size: row.get::<_, i64>(7)? as u64,
        content_hash: row.get(8)?,
        header_hash: row.get(9)?,
        flags: row.get(10)?,
        identity: row.get(11)?,
        source_version: row.get(12)?,
        target_version: row.get(13)?,
    })
}

const LEDGER_COLUMNS: &str = "mailbox, folder, validity, item, uid, target_folder, target_id, size,
     content_hash, header_hash, flags, identity, source_version, target_version";

const CHECKPOINT_COLUMNS: &str = "mailbox, folder, target_folder, validity, high_water_mark,
     source_cursor, target_mark, target_validity, subscribed";

/// Fails with [`StoreError::LeaseLost`] unless `lease` is the mailbox's live
/// lease; called inside the transaction of the write it fences.
fn check_lease(conn: &Connection, lease: &Lease) -> Result<(), StoreError> {
    let held: bool = conn
        .prepare_cached(&format!(
            "SELECT EXISTS (SELECT 1 FROM leases
                 WHERE mailbox = ?1 AND pass = ?2 AND worker = ?3 AND token = ?4
                   AND expires_at > {NOW_MS})"
        ))?
        .query_row(
            params![lease.mailbox, lease.pass, lease.worker, lease.token],
            |r| r.get(0),
        )?;
    if held {
        Ok(())
    } else {
        Err(StoreError::LeaseLost {
            mailbox: lease.mailbox,
        })
    }
}

/// A write transaction that takes the database's write lock at once, so
/// that the lease check and the write it fences see the same state.
fn write_tx(conn: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

/// Inserts or replaces entries in `table` (`ledger`, or `intents`, which
/// has the same columns).
fn put_ledger_entries(
    conn: &Connection,
    table: &str,
    entries: &[LedgerEntry],
) -> rusqlite::Result<()> {
    let mut insert = conn.prepare_cached(&format!(
        "INSERT INTO {table} ({LEDGER_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
         ON CONFLICT (mailbox, folder, validity, item) DO UPDATE SET
             uid = excluded.uid, target_folder = excluded.target_folder,
             target_id = excluded.target_id, size = excluded.size,
             content_hash = excluded.content_hash, header_hash = excluded.header_hash,
             flags = excluded.flags, identity = excluded.identity,
             source_version = excluded.source_version,
             target_version = excluded.target_version"
    ))?;
    for e in entries {
        insert.execute(params![
            e.mailbox,
            e.folder,
            e.validity,
            e.item,
            uid_to_store(e.uid),
            e.target_folder,
            e.target_id,
            e.size as i64,
            e.content_hash,
            e.header_hash,
            e.flags,
            e.identity,
            e.source_version,
            e.target_version
        ])?;
    }
    Ok(())
}

fn put_checkpoint(conn: &Connection, c: &FolderCheckpoint) -> rusqlite::Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO folder_checkpoints ({CHECKPOINT_COLUMNS})
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (mailbox, folder) DO UPDATE SET
             target_folder = excluded.target_folder, validity = excluded.validity,
             high_water_mark = excluded.high_water_mark, source_cursor = excluded.source_cursor,
             target_mark = excluded.target_mark, target_validity = excluded.target_validity, subscribed = excluded.subscribed"
    ))?
    .execute(params![
        c.mailbox,
        c.folder,
        c.target_folder,
        c.validity,
        c.high_water_mark,
        c.source_cursor.as_ref().map(SourceCursor::as_str),
        c.target_mark.as_str(),
        c.target_validity,
        c.subscribed
    ])?;
    Ok(())
}

#[async_trait]
impl RecordStore for SqliteStore {
    async fn mailbox(&self, id: MailboxId) -> Result<MailboxRecord, StoreError> {
        self.with(move |conn| {
            conn.query_row(
                &format!("SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE id = ?1"),
                [id],
                mailbox_from_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("mailbox {id}")))
        })
        .await
    }

    async fn failures(&self, mailbox: MailboxId) -> Result<Vec<ItemFailure>, StoreError> {
        self.with(move |conn| {
            // A folder's own failure first, then its items'.
            let mut stmt = conn.prepare_cached(
                "SELECT mailbox, folder, NULL AS item, NULL, class, reason, pass, 0
                 FROM folder_failures WHERE mailbox = ?1
                 UNION ALL
                 SELECT mailbox, folder, item, size, class, reason, pass, policy
                 FROM item_failures WHERE mailbox = ?1
                 ORDER BY folder, item NULLS FIRST",
            )?;
            let rows = stmt.query_map([mailbox], |row| {
                let class: String = row.get(4)?;
                let scope = match row.get::<_, Option<String>>(2)? {
                    None => FailureScope::Folder,
                    Some(item) => FailureScope::Item {
                        item,
                        size: row.get::<_, Option<i64>>(3)?.map(|s| s as u64),
                    },
                };
                Ok(ItemFailure {
                    mailbox: row.get(0)?,
                    folder: row.get(1)?,
                    scope,
                    class: serde_json::from_value(serde_json::Value::String(class))
                        .unwrap_or(crate::ErrorClass::Item),
                    reason: row.get(5)?,
                    pass: row.get(6)?,
                    policy: row.get(7)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn wave(&self, id: WaveId) -> Result<WaveRecord, StoreError> {
        self.with(move |conn| {
            conn.query_row(
                &format!("SELECT {WAVE_COLUMNS} FROM waves WHERE id = ?1"),
                [id],
                wave_from_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("wave {id}")))
        })
        .await
    }
}

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn start_pass(&self, lease: &Lease) -> Result<bool, StoreError> {
        let lease = lease.clone();
        self.with(move |conn| {
            let tx = write_tx(conn)?;
            check_lease(&tx, &lease)?;
            let changed = tx.execute(
                "UPDATE mailboxes SET state = 'running', attempts = attempts + 1,
                     updated_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now')
                 WHERE id = ?1 AND pass = ?2 AND state IN ('queued', 'running')",
                params![lease.mailbox, lease.pass],
            )?;
            tx.commit()?;
            Ok(changed == 1)
        })
        .await
    }

    async fn finish_pass(&self, lease: &Lease, outcome: &PassOutcome) -> Result<(), StoreError> {
        let lease = lease.clone();
        let state = outcome.state.as_str();
        let error = outcome.error.clone();
        let stats = serde_json::to_string(&outcome.stats)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.with(move |conn| {
            let tx = write_tx(conn)?;
            check_lease(&tx, &lease)?;
            tx.execute(
                "UPDATE mailboxes SET state = ?3, last_error = ?4, stats = ?5,
                     updated_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now')
                 WHERE id = ?1 AND pass = ?2",
                params![lease.mailbox, lease.pass, state, error, stats],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn acquire_lease(
        &self,
        mailbox: MailboxId,
        pass: i64,
        worker: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let worker = worker.to_owned();
        self.with(move |conn| {
            let tx = write_tx(conn)?;
            let token: Option<i64> = tx
                .query_row(
                    "UPDATE mailboxes SET lease_epoch = lease_epoch + 1 WHERE id = ?1
                     RETURNING lease_epoch",
                    [mailbox],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(token) = token else {
                return Err(StoreError::NotFound(format!("mailbox {mailbox}")));
            };
            let taken = tx.execute(
                &format!(
                    "INSERT INTO leases (mailbox, pass, worker, expires_at, token)
                     VALUES (?1, ?2, ?3, {NOW_MS} + ?4, ?5)
                     ON CONFLICT (mailbox) DO UPDATE SET
                         pass = excluded.pass, worker = excluded.worker,
                         expires_at = excluded.expires_at, token = excluded.token
                     WHERE leases.worker = excluded.worker OR leases.expires_at <= {NOW_MS}"
                ),
                params![mailbox, pass, worker, ttl_millis(ttl), token],
            )?;
            if taken != 1 {
                return Ok(None);
            }
            tx.commit()?;
            Ok(Some(Lease {
                mailbox,
                pass,
                worker,
                token,
            }))
        })
        .await
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StoreError> {
        let lease = lease.clone();
        self.with(move |conn| {
            let changed = conn.execute(
                &format!(
                    "UPDATE leases SET expires_at = {NOW_MS} + ?5
                     WHERE mailbox = ?1 AND pass = ?2 AND worker = ?3 AND token = ?4
                       AND expires_at > {NOW_MS}
                       AND pass = (SELECT pass FROM mailboxes WHERE id = ?1)"
                ),
                params![
                    lease.mailbox,
                    lease.pass,
                    lease.worker,
                    lease.token,
                    ttl_millis(ttl)
                ],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let lease = lease.clone();
        self.with(move |conn| {
            conn.execute(
                "DELETE FROM leases WHERE mailbox = ?1 AND worker = ?2 AND token = ?3",
                params![lease.mailbox, lease.worker, lease.token],
            )?;
            Ok(())
        })
        .await
    }

    async fn hand_back(&self, lease: &Lease) -> Result<bool, StoreError> {
        let Lease {
            mailbox,
            pass,
            worker,
            token,
        } = lease.clone();
        self.with(move |conn| {
            let tx = write_tx(conn)?;
            let found: Option<String> = tx
                .query_row(
                    "SELECT w.state
                     FROM leases l JOIN mailboxes m ON m.id = l.mailbox
                          JOIN waves w ON w.id = m.wave
                     WHERE l.mailbox = ?1 AND l.pass = ?2 AND l.worker = ?3 AND l.token = ?4
                       AND m.state = 'running' AND m.pass = ?2",
                    params![mailbox, pass, worker, token],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(wave_state) = found else {
                return Ok(false);
            };
            let (state, published) = if wave_state == WaveState::Cancelled.as_str() {
                ("pending", true)
            } else {
                ("queued", false)
            };
            tx.execute(
                "UPDATE mailboxes SET state = ?3, job_published = ?4,
                     attempts = max(attempts - 1, 0),
                     updated_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now')
                 WHERE id = ?1 AND pass = ?2",
                params![mailbox, pass, state, published],
            )?;
            tx.execute(
                "DELETE FROM leases WHERE mailbox = ?1 AND worker = ?2",
                params![mailbox, worker],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }
}

#[async_trait]
impl LedgerStore for SqliteStore {
    async fn checkpoints(&self, mailbox: MailboxId) -> Result<Vec<FolderCheckpoint>, StoreError> {
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {CHECKPOINT_COLUMNS}
                 FROM folder_checkpoints WHERE mailbox = ?1 ORDER BY folder"
            ))?;
            let rows = stmt.query_map([mailbox], checkpoint_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn save_checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &FolderCheckpoint,
    ) -> Result<(), StoreError> {
        let lease = lease.clone();
        let checkpoint = checkpoint.clone();
        self.with(move |conn| {
            let tx = write_tx(conn)?;
            check_lease(&tx, &lease)?;
            put_checkpoint(&tx, &checkpoint)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn commit_items(
        &self,
        lease: &Lease,
        checkpoint: &FolderCheckpoint,
        entries: &[LedgerEntry],
    ) -> Result<(), StoreError> {
        let lease = lease.clone();
        let checkpoint = checkpoint.clone();
        let entries = entries.to_vec();
        self.with(move |conn| {
            let tx = write_tx(conn)?;
            check_lease(&tx, &lease)?;
            put_ledger_entries(&tx, "ledger", &entries)?;
            put_checkpoint(&tx, &checkpoint)?;
            tx.execute(
                "DELETE FROM intents WHERE mailbox = ?1 AND folder = ?2",
                params![checkpoint.mailbox, checkpoint.folder],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn record_intents(
        &self,
        lease: &Lease,
        entries: &[LedgerEntry],
    ) -> Result<(), StoreError> {
        let lease = lease.clone();
        let entries = entries.to_vec();
        self.with(move |conn| {
            let tx = write_tx(conn)?;
            check_lease(&tx, &lease)?;
            if let Some(first) = entries.first() {
                tx.execute(
                    "DELETE FROM intents WHERE mailbox = ?1 AND folder = ?2",
                    params![first.mailbox, first.folder],
                )?;
            }
            put_ledger_entries(&tx, "intents", &entries)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn intents(
        &self,
        mailbox: MailboxId,
        folder: &str,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let folder = folder.to_owned();
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {LEDGER_COLUMNS} FROM intents WHERE mailbox = ?1 AND folder = ?2
                 ORDER BY uid, item"
            ))?;
            let rows = stmt.query_map(params![mailbox, folder], ledger_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn ledger_entries(
        &self,
        mailbox: MailboxId,
        folder: &str,
        validity: u32,
        items: &[String],
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let folder = folder.to_owned();
        let items = items.to_vec();
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {LEDGER_COLUMNS} FROM ledger
                 WHERE mailbox = ?1 AND folder = ?2 AND validity = ?3 AND item = ?4"
            ))?;
            let mut found = Vec::new();
            for item in &items {
                found.extend(
                    stmt.query_row(params![mailbox, folder, validity, item], ledger_from_row)
                        .optional()?,
                );
            }
            Ok(found)
        })
        .await
    }

    async fn retarget_folder(
        &self,
        lease: &Lease,
        checkpoint: &FolderCheckpoint,
        target_ids: &[(String, Option<String>)],
    ) -> Result<(), StoreError> {
        let lease = lease.clone();
        let checkpoint = checkpoint.clone();
        let target_ids = target_ids.to_vec();
        self.with(move |conn| {
            let tx = write_tx(conn)?;
            check_lease(&tx, &lease)?;
            {
                let mut update = tx.prepare_cached(
                    "UPDATE ledger SET target_id = ?4, target_folder = ?5, target_version = NULL
                     WHERE mailbox = ?1 AND folder = ?2 AND validity = ?3 AND item = ?6",
                )?;
                for (item, target_id) in &target_ids {
                    update.execute(params![
                        checkpoint.mailbox,
                        checkpoint.folder,
                        checkpoint.validity,
                        target_id,
                        checkpoint.target_folder,
                        item
                    ])?;
                }
            }
            put_checkpoint(&tx, &checkpoint)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn ledger(
        &self,
        mailbox: MailboxId,
        folder: &str,
        validity: u32,
    ) -> Result<Vec<LedgerEntry>, StoreError> {
        let folder = folder.to_owned();
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {LEDGER_COLUMNS}
                 FROM ledger WHERE mailbox = ?1 AND folder = ?2 AND validity = ?3
                 ORDER BY uid, item"
            ))?;
            let rows = stmt.query_map(params![mailbox, folder, validity], ledger_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn update_flags(
        &self,
        lease: &Lease,
        folder: &str,
        validity: u32,
        flags: &[(String, String)],
    ) -> Result<(), StoreError> {
        let lease = lease.clone();
        let folder = folder.to_owned();
        let flags = flags.to_vec();
        self.with(move |conn| {
            let tx = write_tx(conn)?;
            check_lease(&tx, &lease)?;
            {
                let mut update = tx.prepare_cached(
                    "UPDATE ledger SET flags = ?5
                     WHERE mailbox = ?1 AND folder = ?2 AND validity = ?3 AND item = ?4",
                )?;
                for (item, flags) in &flags {
                    update.execute(params![lease.mailbox, folder, validity, item, flags])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn rekey_folder(
        &self,
        lease: &Lease,
        checkpoint: &FolderCheckpoint,
        old_validity: u32,
        rekeys: &[(String, String, Option<u32>)],
    ) -> Result<(), StoreError> {
        let lease = lease.clone();
        let checkpoint = checkpoint.clone();
        let rekeys = rekeys.to_vec();
        self.with(move |conn| {
            let tx = write_tx(conn)?;
            check_lease(&tx, &lease)?;
            {
                let mut update = tx.prepare_cached(
                    "UPDATE ledger SET validity = ?4, item = ?6, uid = ?7
                     WHERE mailbox = ?1 AND folder = ?2 AND validity = ?3 AND item = ?5",
                )?;
                for (old_item, new_item, new_uid) in &rekeys {
                    update.execute(params![
                        checkpoint.mailbox,
                        checkpoint.folder,
                        old_validity,
                        checkpoint.validity,
                        old_item,
                        new_item,
                        uid_to_store(*new_uid)
                    ])?;
                }
            }
            put_checkpoint(&tx, &checkpoint)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn record_failure(&self, lease: &Lease, failure: &ItemFailure) -> Result<(), StoreError> {
        let lease = lease.clone();
        let f = failure.clone();
        self.with(move |conn| {
            let tx = write_tx(conn)?;
            check_lease(&tx, &lease)?;
            match &f.scope {
                FailureScope::Folder => tx.execute(
                    "INSERT INTO folder_failures (mailbox, folder, class, reason, pass)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (mailbox, folder) DO UPDATE SET
                         class = excluded.class, reason = excluded.reason, pass = excluded.pass",
                    params![f.mailbox, f.folder, f.class.as_str(), f.reason, f.pass],
                )?,
                FailureScope::Item { item, size } => tx.execute(
                    "INSERT INTO item_failures (mailbox, folder, item, size, class, reason, pass, policy)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (mailbox, folder, item) DO UPDATE SET
                         size = excluded.size, class = excluded.class,
                         reason = excluded.reason, pass = excluded.pass, policy = excluded.policy",
                    params![
                        f.mailbox,
                        f.folder,
                        item,
                        size.map(|s| s as i64),
                        f.class.as_str(),
                        f.reason,
                        f.pass,
                        f.policy
                    ],
                )?,
            };
            tx.commit()?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl WaveStore for SqliteStore {
    async fn ensure_wave(&self, name: &str, config: &Config) -> Result<WaveId, StoreError> {
        let name = name.to_owned();
        let config = WaveConfig::to_stored(config).to_string();
        self.with(move |conn| {
            Ok(conn.query_row(
                "INSERT INTO waves (name, config) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET config = excluded.config RETURNING id",
                params![name, config],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn add_mailboxes(
        &self,
        wave: WaveId,
        specs: &[MailboxSpec],
    ) -> Result<Vec<MailboxRecord>, StoreError> {
        let specs = specs.to_vec();
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let mut records = Vec::with_capacity(specs.len());
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO mailboxes (wave, source, target) VALUES (?1, ?2, ?3)
                     ON CONFLICT (wave, source) DO NOTHING",
                )?;
                let mut select = tx.prepare_cached(&format!(
                    "SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE wave = ?1 AND source = ?2"
                ))?;
                for spec in &specs {
                    insert.execute(params![wave, spec.source, spec.target])?;
                    records.push(select.query_row(params![wave, spec.source], mailbox_from_row)?);
                }
            }
            tx.commit()?;
            Ok(records)
        })
        .await
    }

    async fn mailboxes(&self, wave: WaveId) -> Result<Vec<MailboxRecord>, StoreError> {
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE wave = ?1 ORDER BY id"
            ))?;
            let rows = stmt.query_map([wave], mailbox_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn request_passes(&self, mailboxes: &[MailboxId]) -> Result<(), StoreError> {
        let mailboxes = mailboxes.to_vec();
        self.with(move |conn| {
            let tx = write_tx(conn)?;
            {
                let mut drop_lease = tx.prepare_cached("DELETE FROM leases WHERE mailbox = ?1")?;
                let mut request = tx.prepare_cached(
                    "UPDATE mailboxes SET wanted_pass = pass + 1, job_published = 1,
                         state = CASE WHEN state IN ('queued', 'running') THEN 'pending'
                                      ELSE state END,
                         updated_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now')
                     WHERE id = ?1",
                )?;
                for id in mailboxes {
                    drop_lease.execute([id])?;
                    request.execute([id])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn expired_leases(&self) -> Result<Vec<(MailboxId, i64, String)>, StoreError> {
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT l.mailbox, l.pass, l.worker
                 FROM leases l JOIN mailboxes m ON m.id = l.mailbox
                 WHERE l.expires_at <= CAST(unixepoch('subsec') * 1000 AS INTEGER)
                   AND m.state = 'running' AND m.pass = l.pass
                 ORDER BY l.mailbox",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn create_wave(&self, name: &str, config: &Config) -> Result<WaveId, StoreError> {
        let name = name.to_owned();
        let config = WaveConfig::to_stored(config).to_string();
        self.with(move |conn| {
            conn.query_row(
                "INSERT INTO waves (name, config) VALUES (?1, ?2)
                 ON CONFLICT (name) DO NOTHING RETURNING id",
                params![name, config],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| StoreError::Conflict(format!("a wave named {name:?} exists")))
        })
        .await
    }

    async fn waves(&self) -> Result<Vec<WaveRecord>, StoreError> {
        self.with(move |conn| {
            let mut stmt =
                conn.prepare_cached(&format!("SELECT {WAVE_COLUMNS} FROM waves ORDER BY id"))?;
            let rows = stmt.query_map([], wave_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn transition_wave(
        &self,
        id: WaveId,
        from: &[WaveState],
        to: Option<WaveState>,
        action: WaveAction,
    ) -> Result<bool, StoreError> {
        let from = from.to_vec();
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let state: String = tx
                .query_row("SELECT state FROM waves WHERE id = ?1", [id], |r| r.get(0))
                .optional()?
                .ok_or_else(|| StoreError::NotFound(format!("wave {id}")))?;
            if !from.iter().any(|s| s.as_str() == state) {
                return Ok(false);
            }
            let to = to.map_or(state, |s| s.as_str().to_owned());
            tx.execute(
                "UPDATE waves SET state = ?2, final_pass = final_pass OR ?3 WHERE id = ?1",
                params![id, to, action == WaveAction::RequestFinalPass],
            )?;
            match action {
                WaveAction::None => {}
                WaveAction::RequestPass | WaveAction::RequestFinalPass => {
                    tx.execute(
                        "UPDATE mailboxes SET wanted_pass = pass + 1 WHERE wave = ?1",
                        [id],
                    )?;
                }
                WaveAction::ResetQueued => {
                    tx.execute(
                        "UPDATE mailboxes SET state = 'pending',
                             updated_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now')
                         WHERE wave = ?1 AND state = 'queued'",
                        [id],
                    )?;
                }
            }
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn complete_wave_if_done(&self, id: WaveId) -> Result<bool, StoreError> {
        self.with(move |conn| {
            let changed = conn.execute(
                "UPDATE waves SET state = 'completed'
                 WHERE id = ?1 AND state = 'running' AND final_pass
                   AND NOT EXISTS (
                       SELECT 1 FROM mailboxes WHERE wave = ?1
                          AND (state IN ('queued', 'running') OR wanted_pass > pass))",
                [id],
            )?;
            Ok(changed == 1)
        })
        .await
    }

    async fn wave_counts(&self, id: WaveId) -> Result<WaveCounts, StoreError> {
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT state, count(*),
                        coalesce(sum(json_extract(stats, '$.items_copied')), 0),
                        coalesce(sum(json_extract(stats, '$.bytes_copied')), 0),
                        coalesce(sum(json_extract(stats, '$.items_skipped')), 0)
                 FROM mailboxes WHERE wave = ?1 GROUP BY state",
            )?;
            let mut counts = WaveCounts::default();
            let mut rows = stmt.query([id])?;
            while let Some(row) = rows.next()? {
                let state: String = row.get(0)?;
                let state = MailboxState::parse(&state).unwrap_or(MailboxState::Failed);
                counts.add_state(state, row.get::<_, i64>(1)? as u64);
                counts.items_copied += row.get::<_, i64>(2)? as u64;
                counts.bytes_copied += row.get::<_, i64>(3)? as u64;
                counts.items_skipped += row.get::<_, i64>(4)? as u64;
            }
            Ok(counts)
        })
        .await
    }

    async fn in_flight(&self, wave: WaveId) -> Result<u64, StoreError> {
        self.with(move |conn| {
            let n: i64 = conn.query_row(
                "SELECT count(*) FROM mailboxes WHERE wave = ?1 AND state IN ('queued', 'running')",
                [wave],
                |r| r.get(0),
            )?;
            Ok(n as u64)
        })
        .await
    }

    /// Nothing to fold: the counts are read from the mailboxes themselves.
    async fn compact_wave_counts(&self, _wave: WaveId) -> Result<(), StoreError> {
        Ok(())
    }

    async fn failed_mailboxes(
        &self,
        wave: WaveId,
        limit: usize,
    ) -> Result<Vec<MailboxRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE wave = ?1 AND state = 'failed'
                 ORDER BY id LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![wave, limit], mailbox_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn next_to_publish(&self, wave: WaveId, limit: usize) -> Result<Vec<Job>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT wave, id, pass + 1 FROM mailboxes
                 WHERE wave = ?1 AND wanted_pass > pass AND state NOT IN ('queued', 'running')
                 ORDER BY id LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![wave, limit], |r| {
                Ok(Job {
                    wave: r.get(0)?,
                    mailbox: r.get(1)?,
                    pass: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn mark_published(&self, jobs: &[Job]) -> Result<Vec<Job>, StoreError> {
        let jobs = jobs.to_vec();
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let mut marked = Vec::with_capacity(jobs.len());
            {
                let mut stmt = tx.prepare_cached(
                    "UPDATE mailboxes SET state = 'queued', pass = ?2, attempts = 0,
                         last_error = NULL, stats = '{}', job_published = 0, workers_lost = 0,
                         updated_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now')
                     WHERE id = ?1 AND pass = ?2 - 1 AND wanted_pass >= ?2
                       AND state NOT IN ('queued', 'running')
                       AND (SELECT state FROM waves WHERE waves.id = mailboxes.wave) = 'running'",
                )?;
                for job in jobs {
                    if stmt.execute(params![job.mailbox, job.pass])? == 1 {
                        marked.push(job);
                    }
                }
            }
            tx.commit()?;
            Ok(marked)
        })
        .await
    }

    async fn confirm_published(&self, jobs: &[Job]) -> Result<(), StoreError> {
        let jobs = jobs.to_vec();
        self.with(move |conn| {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "UPDATE mailboxes SET job_published = 1 WHERE id = ?1 AND pass = ?2",
                )?;
                for job in jobs {
                    stmt.execute(params![job.mailbox, job.pass])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn unpublished_jobs(&self, wave: WaveId) -> Result<Vec<Job>, StoreError> {
        self.with(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT wave, id, pass FROM mailboxes
                 WHERE wave = ?1 AND state = 'queued' AND job_published = 0 ORDER BY id",
            )?;
            let rows = stmt.query_map([wave], |r| {
                Ok(Job {
                    wave: r.get(0)?,
                    mailbox: r.get(1)?,
                    pass: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn reap_lease(
        &self,
        mailbox: MailboxId,
        pass: i64,
        worker: &str,
        max_attempts: i64,
    ) -> Result<Option<ReapOutcome>, StoreError> {
        let worker = worker.to_owned();
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let found: Option<(i64, i64, String)> = tx
                .query_row(
                    &format!(
                        "SELECT m.attempts, m.workers_lost, w.state
                         FROM leases l JOIN mailboxes m ON m.id = l.mailbox
                              JOIN waves w ON w.id = m.wave
                         WHERE l.mailbox = ?1 AND l.pass = ?2 AND l.worker = ?3
                           AND l.expires_at <= {NOW_MS}
                           AND m.state = 'running' AND m.pass = ?2"
                    ),
                    params![mailbox, pass, worker],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((attempts, lost, wave_state)) = found else {
                return Ok(None);
            };
            let outcome = reap_decision(attempts, lost + 1, &wave_state, max_attempts);
            let (state, error, published) = match &outcome {
                ReapOutcome::Requeued => ("queued", None, false),
                ReapOutcome::Failed(error) => ("failed", Some(error.clone()), true),
                ReapOutcome::Released => ("pending", None, true),
            };
            tx.execute(
                "UPDATE mailboxes SET state = ?3, last_error = coalesce(?4, last_error),
                     job_published = ?5, workers_lost = workers_lost + 1,
                     updated_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now')
                 WHERE id = ?1 AND pass = ?2",
                params![mailbox, pass, state, error, published],
            )?;
            tx.execute(
                "DELETE FROM leases WHERE mailbox = ?1 AND worker = ?2",
                params![mailbox, worker],
            )?;
            tx.commit()?;
            Ok(Some(outcome))
        })
        .await
    }
}

/// A lease's time to live in milliseconds, saturated far beyond any real use.
fn ttl_millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).map_or(i64::MAX / 2, |ms| ms.min(i64::MAX / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn on_a_fresh_store(check: crate::store::suite::Check) {
        let store = SqliteStore::in_memory().unwrap();
        check(&store).await;
    }

    mod suite {
        crate::store::suite::store_suite!(super::on_a_fresh_store);
    }

    #[tokio::test]
    async fn rows_written_before_connector_cursors_are_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            embedded::migrations::runner()
                .set_target(refinery::Target::Version(5))
                .run(&mut conn)
                .unwrap();
            conn.execute_batch(crate::store::suite::ROWS_BEFORE_CURSORS)
                .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        crate::store::suite::rows_before_cursors_read_back(&store).await;
    }

    #[tokio::test]
    async fn sqlite_store_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let wave = {
            let store = SqliteStore::open(&path).unwrap();
            store
                .ensure_wave("w", &crate::store::suite::wave_config())
                .await
                .unwrap()
        };
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(
            store
                .ensure_wave("w", &crate::store::suite::wave_config())
                .await
                .unwrap(),
            wave
        );
    }

    #[tokio::test]
    async fn the_state_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = SqliteStore::open(&path).unwrap();
        store
            .ensure_wave("w", &crate::store::suite::wave_config())
            .await
            .unwrap();
        for file in ["state.db", "state.db-wal", "state.db-shm"] {
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}: mode {:o}", mode & 0o777);
        }
    }
}
