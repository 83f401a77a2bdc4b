//! The state store: waves, mailboxes, folder checkpoints, the item ledger,
//! item failures and job leases, behind narrow traits split by who calls
//! them ([`WaveStore`]: the coordinator; [`LeaseStore`]: a worker's jobs;
//! [`LedgerStore`]: the engine's pass; [`RecordStore`]: reads both roles
//! make); [`Store`] is their sum. The embedded SQLite backend and the PostgreSQL backend of
//! distributed mode run the same code and pass the same test suite
//! (`store::suite`).

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(any(test, feature = "test-suite"))]
pub mod suite;

use std::time::Duration;

use async_trait::async_trait;

#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

use crate::config::Config;
use crate::error::{Classify, ErrorClass};
use crate::model::{
    FolderCheckpoint, ItemFailure, Job, Lease, LedgerEntry, MailboxId, MailboxRecord, MailboxSpec,
    MailboxState, PassStats, WaveCounts, WaveId, WaveRecord, WaveState,
};

/// What the ledger's `uid` column holds for `uid`: 0 for an item without
/// one (IMAP UIDs start at 1), so that old rows and their keys stay as they are.
fn uid_to_store(uid: Option<u32>) -> u32 {
    uid.unwrap_or(0)
}

/// The UID a ledger row's `uid` column names (see [`uid_to_store`]).
fn stored_uid(stored: u32) -> Option<u32> {
    (stored != 0).then_some(stored)
}

/// A failure of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store: {0} not found")]
    NotFound(String),
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    #[error("state store: {0}")]
    Corrupt(String),
    /// The write would break a uniqueness rule (a wave name already taken).
    #[error("state store: {0}")]
    Conflict(String),
    /// A write of a pass whose lease is no longer the writer's (expired,
    /// taken by another worker, released): nothing was written, and the
    /// writer must stop working on the mailbox.
    #[error("state store: the lease of mailbox {mailbox} is no longer this worker's")]
    LeaseLost { mailbox: MailboxId },
}

impl Classify for StoreError {
    fn class(&self) -> ErrorClass {
        match self {
            StoreError::Unavailable(_) => ErrorClass::Transient,
            StoreError::NotFound(_)
            | StoreError::Corrupt(_)
            | StoreError::Conflict(_)
            | StoreError::LeaseLost { .. } => ErrorClass::Mailbox,
        }
    }
}

/// How a pass over a mailbox ended.
#[derive(Debug, Clone, PartialEq)]
pub struct PassOutcome {
    pub state: MailboxState,
    pub error: Option<String>,
    pub stats: PassStats,
}

/// What a wave's change of state does to its mailboxes, in the same transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaveAction {
    /// Nothing (pause, resume).
    None,
    /// Every mailbox of the wave is asked for its next pass (start, sync):
    /// one after the pass it is in or last ran.
    RequestPass,
    /// The same, and these passes are the final ones (complete).
    RequestFinalPass,
    /// Mailboxes queued but not started go back to `Pending` (cancel): the
    /// jobs still on the queue find them so and are dropped as stale.
    ResetQueued,
}

/// What the reaper did with an expired lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReapOutcome {
    /// The pass is `Queued` again, its job to be published again.
    Requeued,
    /// The pass reached its attempts: `Failed` with this error.
    Failed(String),
    /// The wave was cancelled: the mailbox went back to `Pending`.
    Released,
}

/// The records both roles read: a wave, a mailbox, its item failures.
#[async_trait]
pub trait RecordStore: Send + Sync + 'static {
    async fn mailbox(&self, id: MailboxId) -> Result<MailboxRecord, StoreError>;

    /// Item failures of a mailbox, by folder and item.
    async fn failures(&self, mailbox: MailboxId) -> Result<Vec<ItemFailure>, StoreError>;

    async fn wave(&self, id: WaveId) -> Result<WaveRecord, StoreError>;
}

/// What a worker does with a job: the mailbox's lease and its pass's
/// start and end.
#[async_trait]
pub trait LeaseStore: RecordStore {
    /// The lease's worker starts its pass: `Running`, attempts raised.
    /// `false` when the mailbox is not queued or running for that pass (a
    /// stale job).
    async fn start_pass(&self, lease: &Lease) -> Result<bool, StoreError>;

    /// Records how the lease's pass ended. Ignored when a newer pass was
    /// asked for.
    async fn finish_pass(&self, lease: &Lease, outcome: &PassOutcome) -> Result<(), StoreError>;

    /// Takes the mailbox for `pass` on behalf of `worker` until the store's
    /// clock passes now + `ttl`, with a new fencing token (larger than any
    /// earlier lease's of the mailbox). `None` when another worker holds a
    /// live lease; a live lease of `worker` itself is replaced (a restarted
    /// worker of the same name), which fences its earlier holder.
    /// [`StoreError::NotFound`] when there is no such mailbox (a job of
    /// another deployment, or of a database that was reset).
    async fn acquire_lease(
        &self,
        mailbox: MailboxId,
        pass: i64,
        worker: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError>;

    /// Moves the lease's expiry to now + `ttl`. `false` when it is no longer
    /// the live lease (expired, taken by another worker, released) or a newer
    /// pass of the mailbox was asked for: the caller must stop working on
    /// the mailbox.
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StoreError>;

    /// Gives the lease up; does nothing when it is not the mailbox's lease.
    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError>;

    /// A worker stopping on purpose (graceful shutdown) gives a mailbox
    /// back: when the lease is still the mailbox's (live or expired, not
    /// taken since) and the mailbox is still running its pass, the lease is
    /// dropped and the pass becomes `Queued` again with its job unpublished,
    /// so that the dispatcher publishes it again; the attempt it started is
    /// not counted. In a cancelled wave the mailbox goes back to `Pending`
    /// instead. `false` (nothing changed) when the lease or the pass is not
    /// there.
    async fn hand_back(&self, lease: &Lease) -> Result<bool, StoreError>;
}

/// What one pass reads and writes while it copies: folder checkpoints,
/// the item ledger, write-ahead intents and item failures (the engine's
/// part, through the worker's fenced `PassStore`).
#[async_trait]
pub trait LedgerStore: RecordStore {
    /// All folder checkpoints of a mailbox.
    async fn checkpoints(&self, mailbox: MailboxId) -> Result<Vec<FolderCheckpoint>, StoreError>;

    /// Creates or replaces a folder checkpoint.
    async fn save_checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &FolderCheckpoint,
    ) -> Result<(), StoreError>;

    /// Adds ledger entries, moves the folder checkpoint and forgets the
    /// folder's intents, atomically.
    async fn commit_items(
        &self,
        lease: &Lease,
        checkpoint: &FolderCheckpoint,
        entries: &[LedgerEntry],
    ) -> Result<(), StoreError>;

    /// Write-ahead before appending a batch: these items (entries without a
    /// target id, all of one source folder) are about to be written to the
    /// target. They replace the folder's earlier intents; `commit_items`
    /// forgets them. After a crash they are exactly the copies in doubt.
    async fn record_intents(
        &self,
        lease: &Lease,
        entries: &[LedgerEntry],
    ) -> Result<(), StoreError>;

    /// The intents of a source folder (see [`LedgerStore::record_intents`]).
    async fn intents(
        &self,
        mailbox: MailboxId,
        folder: &str,
    ) -> Result<Vec<LedgerEntry>, StoreError>;

    /// The ledger entries of these items of one source folder at one
    /// validity (those that have one).
    async fn ledger_entries(
        &self,
        mailbox: MailboxId,
        folder: &str,
        validity: u32,
        items: &[String],
    ) -> Result<Vec<LedgerEntry>, StoreError>;

    /// After the target folder was re-created (its validity changed): sets
    /// the target ids of these items (`None`: no copy found), forgets their
    /// target versions, and saves the checkpoint, atomically.
    async fn retarget_folder(
        &self,
        lease: &Lease,
        checkpoint: &FolderCheckpoint,
        target_ids: &[(String, Option<String>)],
    ) -> Result<(), StoreError>;

    /// The ledger of one source folder at one validity, by UID then item.
    async fn ledger(
        &self,
        mailbox: MailboxId,
        folder: &str,
        validity: u32,
    ) -> Result<Vec<LedgerEntry>, StoreError>;

    /// Records the flags now on the target copies of these items.
    async fn update_flags(
        &self,
        lease: &Lease,
        folder: &str,
        validity: u32,
        flags: &[(String, String)],
    ) -> Result<(), StoreError>;

    /// After the source folder's validity changed: moves the matched entries
    /// (`(old item, new item, new uid)`) from `old_validity` to the
    /// checkpoint's validity and saves the checkpoint, atomically.
    async fn rekey_folder(
        &self,
        lease: &Lease,
        checkpoint: &FolderCheckpoint,
        old_validity: u32,
        rekeys: &[(String, String, Option<u32>)],
    ) -> Result<(), StoreError>;

    /// Records (or updates) an item that could not be copied.
    async fn record_failure(&self, lease: &Lease, failure: &ItemFailure) -> Result<(), StoreError>;
}

/// The coordinator's part: waves and their mailboxes, the dispatcher's
/// publishing and the reaper.
#[async_trait]
pub trait WaveStore: RecordStore {
    /// The wave with this name, created if new, with `config` as its
    /// configuration from now on (`mailwave run` stores its run's, whose
    /// `[migration]` the dispatcher reads).
    async fn ensure_wave(&self, name: &str, config: &Config) -> Result<WaveId, StoreError>;

    /// Adds the mailboxes to the wave; a source already in the wave keeps its
    /// record (and its progress). Returns the records in the order given.
    async fn add_mailboxes(
        &self,
        wave: WaveId,
        specs: &[MailboxSpec],
    ) -> Result<Vec<MailboxRecord>, StoreError>;

    /// All mailboxes of a wave, by id.
    async fn mailboxes(&self, wave: WaveId) -> Result<Vec<MailboxRecord>, StoreError>;

    /// `mailwave run`'s start, by the one process holding the state file:
    /// each mailbox is asked for its next pass, which the dispatcher
    /// publishes ([`WaveStore::next_to_publish`]); one left queued or
    /// running by an earlier run (interrupted or killed) is taken back first
    /// (its lease dropped, `Pending`, no job left unpublished).
    async fn request_passes(&self, mailboxes: &[MailboxId]) -> Result<(), StoreError>;

    /// Expired leases whose mailbox is still running that pass, as
    /// `(mailbox, pass, worker)` by mailbox: the jobs the reaper re-queues.
    async fn expired_leases(&self) -> Result<Vec<(MailboxId, i64, String)>, StoreError>;

    /// A new wave with its configuration, in state `Created`.
    /// [`StoreError::Conflict`] when the name is taken.
    async fn create_wave(&self, name: &str, config: &Config) -> Result<WaveId, StoreError>;

    /// Every wave, by id.
    async fn waves(&self) -> Result<Vec<WaveRecord>, StoreError>;

    /// Moves the wave from one of the states `from` to `to` (`None`: stays
    /// where it is) and applies `action` to its mailboxes, atomically.
    /// `false` (and nothing changed) when the wave is in no state of `from`;
    /// [`StoreError::NotFound`] when there is no such wave.
    async fn transition_wave(
        &self,
        id: WaveId,
        from: &[WaveState],
        to: Option<WaveState>,
        action: WaveAction,
    ) -> Result<bool, StoreError>;

    /// Marks a `Running` wave whose final pass was asked for `Completed`
    /// when no mailbox is queued, running or waiting for a pass. `true` when
    /// it did.
    async fn complete_wave_if_done(&self, id: WaveId) -> Result<bool, StoreError>;

    /// Mailboxes per state and the totals of their current passes.
    async fn wave_counts(&self, id: WaveId) -> Result<WaveCounts, StoreError>;

    /// Mailboxes of the wave queued or running.
    async fn in_flight(&self, wave: WaveId) -> Result<u64, StoreError>;

    /// Keeps [`Store::wave_counts`] cheap where the counts are kept as
    /// deltas of every change (PostgreSQL): folds the wave's deltas into
    /// one row per state. The counts are the same before and after.
    async fn compact_wave_counts(&self, wave: WaveId) -> Result<(), StoreError>;

    /// Failed mailboxes of the wave, by id, at most `limit`.
    async fn failed_mailboxes(
        &self,
        wave: WaveId,
        limit: usize,
    ) -> Result<Vec<MailboxRecord>, StoreError>;

    /// The next jobs to publish, by mailbox id, at most `limit`: mailboxes
    /// asked for a pass beyond their current one and neither queued nor
    /// running, with that next pass.
    async fn next_to_publish(&self, wave: WaveId, limit: usize) -> Result<Vec<Job>, StoreError>;

    /// Before publishing these jobs, atomically: each job's mailbox becomes
    /// `Queued` for the job's pass (attempts, error and figures cleared),
    /// the job not yet confirmed. Returns the jobs marked, in the order
    /// given; a job is left out when its mailbox is not waiting for that
    /// pass or its wave is not running (nothing to publish).
    async fn mark_published(&self, jobs: &[Job]) -> Result<Vec<Job>, StoreError>;

    /// The queue confirmed these jobs.
    async fn confirm_published(&self, jobs: &[Job]) -> Result<(), StoreError>;

    /// Jobs of queued mailboxes not confirmed on the queue, by mailbox id:
    /// marked by a coordinator that stopped before the queue confirmed them,
    /// or re-queued by the reaper.
    async fn unpublished_jobs(&self, wave: WaveId) -> Result<Vec<Job>, StoreError>;

    /// The reaper's step for one expired lease (see [`WaveStore::expired_leases`]):
    /// when `worker`'s lease of `pass` is still expired and the mailbox still
    /// running that pass, the lease is dropped and the pass re-queued (job
    /// unpublished, attempts kept), or `Failed` with "worker lost N times"
    /// once attempts reached `max_attempts`, or back to `Pending` when its
    /// wave is cancelled. `None` when the lease was renewed or taken meanwhile.
    async fn reap_lease(
        &self,
        mailbox: MailboxId,
        pass: i64,
        worker: &str,
        max_attempts: i64,
    ) -> Result<Option<ReapOutcome>, StoreError>;
}

/// Where the coordinator and workers keep everything that must survive a
/// crash: the sum of the narrow traits, each held by whoever calls it (the
/// coordinator a [`WaveStore`], a worker a [`WorkerStore`], the engine a
/// [`LedgerStore`] behind its lease). One backend type implements them all.
///
/// # Fencing
/// Every write of a pass (`start_pass` … `finish_pass`, checkpoints, the
/// ledger, intents, failures) takes the pass's [`Lease`] and is applied only
/// when, in the same transaction, that lease is still the mailbox's live
/// lease; otherwise nothing is written and the answer is
/// [`StoreError::LeaseLost`].
pub trait Store: WaveStore + WorkerStore {}

impl<T: WaveStore + WorkerStore> Store for T {}

/// What a worker process holds: its leases and passes, and the ledger its
/// engine writes through them.
pub trait WorkerStore: LeaseStore + LedgerStore {}

impl<T: LeaseStore + LedgerStore> WorkerStore for T {}

/// The reaper's decision for a mailbox whose worker was lost, the same for
/// every backend: `attempts` of the pass were started, `lost` workers were
/// lost (this one included).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn reap_decision(
    attempts: i64,
    lost: i64,
    wave_state: &str,
    max_attempts: i64,
) -> ReapOutcome {
    if wave_state == WaveState::Cancelled.as_str() {
        ReapOutcome::Released
    } else if attempts >= max_attempts {
        let times = if lost == 1 { "time" } else { "times" };
        ReapOutcome::Failed(format!("worker lost {lost} {times}"))
    } else {
        ReapOutcome::Requeued
    }
}
