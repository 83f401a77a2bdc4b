//! The domain model shared by the coordinator, the workers and the stores.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::wave_config::WaveConfig;

/// Identifies a wave (a batch of mailboxes migrated together).
pub type WaveId = i64;
/// Identifies one mailbox pair (source → target) inside a wave.
pub type MailboxId = i64;

/// Where a mailbox is in its current pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailboxState {
    /// Known, no pass asked for yet.
    Pending,
    /// A job for the current pass is on the queue.
    Queued,
    /// A worker holds the mailbox and is copying.
    Running,
    /// The current pass finished and every item the source listed is copied
    /// (or confirmed gone, or skipped by the operator's policy).
    Completed,
    /// The current pass finished, but some items or folders could not be
    /// copied: they are recorded as failures with their reasons.
    CompletedWithErrors,
    /// The current pass stopped for a mailbox-level reason (see `last_error`).
    Failed,
}

impl MailboxState {
    /// The name stored in databases and shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            MailboxState::Pending => "pending",
            MailboxState::Queued => "queued",
            MailboxState::Running => "running",
            MailboxState::Completed => "completed",
            MailboxState::CompletedWithErrors => "completed_with_errors",
            MailboxState::Failed => "failed",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => MailboxState::Pending,
            "queued" => MailboxState::Queued,
            "running" => MailboxState::Running,
            "completed" => MailboxState::Completed,
            "completed_with_errors" => MailboxState::CompletedWithErrors,
            "failed" => MailboxState::Failed,
            _ => return None,
        })
    }

    /// Whether the pass is over for this mailbox.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            MailboxState::Completed | MailboxState::CompletedWithErrors | MailboxState::Failed
        )
    }
}

/// One row of a wave's mailbox list: who moves where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxSpec {
    /// Login or address of the mailbox on the source system.
    pub source: String,
    /// Login or address of the mailbox on the target system.
    pub target: String,
}

/// A mailbox as the store knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MailboxRecord {
    pub id: MailboxId,
    pub wave: WaveId,
    pub source: String,
    pub target: String,
    pub state: MailboxState,
    /// The pass asked for last (1 = pre-stage copy, 2.. = delta passes).
    pub pass: i64,
    /// How many times the current pass was started.
    pub attempts: i64,
    pub last_error: Option<String>,
    pub stats: PassStats,
}

/// What one pass over a mailbox did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PassStats {
    pub folders: u64,
    pub items_copied: u64,
    pub bytes_copied: u64,
    /// Items found already in the target after an interruption (not copied again).
    pub items_recovered: u64,
    pub flags_updated: u64,
    /// Copies replaced with a changed source item's new version.
    pub items_updated: u64,
    pub items_skipped: u64,
    /// Of the skipped items, those the operator's policy left out
    /// (`max_message_bytes`): not errors.
    pub items_skipped_by_policy: u64,
    /// Items or folders that could not be copied (recorded with reasons).
    pub items_failed: u64,
    /// Restarts from the checkpoints after a failure worth retrying.
    pub retries: u64,
    /// Of those, the ones the server asked for (throttling).
    pub throttled: u64,
    /// Milliseconds spent waiting before those restarts.
    pub wait_millis: u64,
    /// Keywords the target does not store (IMAP PERMANENTFLAGS without
    /// `\*`, as Exchange Online's), left off copied messages: one per
    /// message and keyword. The message and its system flags are copied.
    pub keywords_refused: u64,
    /// Their names (at most [`MAX_REFUSED_KEYWORD_NAMES`]).
    pub refused_keywords: BTreeSet<String>,
}

/// Most names of refused keywords a pass's figures keep; the count goes on.
pub const MAX_REFUSED_KEYWORD_NAMES: usize = 32;

impl PassStats {
    /// Adds another part's figures to these.
    pub fn add(&mut self, other: &PassStats) {
        self.folders += other.folders;
        self.items_copied += other.items_copied;
        self.bytes_copied += other.bytes_copied;
        self.items_recovered += other.items_recovered;
        self.flags_updated += other.flags_updated;
        self.items_updated += other.items_updated;
        self.items_skipped += other.items_skipped;
        self.items_skipped_by_policy += other.items_skipped_by_policy;
        self.items_failed += other.items_failed;
        self.retries += other.retries;
        self.throttled += other.throttled;
        self.wait_millis += other.wait_millis;
        self.keywords_refused += other.keywords_refused;
        self.note_refused_names(other.refused_keywords.iter().map(String::as_str));
    }

    /// Counts keywords a target did not store, one per message and keyword.
    pub fn refuse_keywords<'a>(&mut self, keywords: impl IntoIterator<Item = &'a str>) {
        let keywords: Vec<&str> = keywords.into_iter().collect();
        self.keywords_refused += keywords.len() as u64;
        self.note_refused_names(keywords);
    }

    fn note_refused_names<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            if self.refused_keywords.len() >= MAX_REFUSED_KEYWORD_NAMES {
                return;
            }
            self.refused_keywords.insert(name.to_owned());
        }
    }
}

/// A unit of work on the queue: one pass over one mailbox. It never carries
/// credentials; workers look those up themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub wave: WaveId,
    pub mailbox: MailboxId,
    pub pass: i64,
}

/// A worker's hold on one pass of one mailbox. Every store write of the
/// pass carries it, and the store accepts the write only while this is the
/// mailbox's live lease: same worker, same `token`, not expired. The token
/// grows with every lease taken on the mailbox (a fencing token), so a worker
/// that lost its lease — frozen, cut off, or slower than its TTL — can never
/// write over the worker that took the mailbox after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub mailbox: MailboxId,
    pub pass: i64,
    pub worker: String,
    pub token: i64,
}

/// How far a source folder has been copied. Written in the same transaction
/// as the ledger entries it covers, so the two never disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderCheckpoint {
    pub mailbox: MailboxId,
    /// The source folder's stable key (its name on the source server).
    pub folder: String,
    /// The folder name it maps to on the target.
    pub target_folder: String,
    /// The source's UIDVALIDITY (or the connector's equivalent) the entries belong to.
    pub validity: u32,
    /// Every source item with a UID up to this one is copied or recorded
    /// (0: none yet; sources without UIDs leave it there).
    pub high_water_mark: u32,
    /// Where the source connector's listing of the folder resumes (IMAP:
    /// HIGHESTMODSEQ; Graph: the delta link), saved once everything it
    /// listed is copied or recorded. Only the source connector reads it.
    pub source_cursor: Option<SourceCursor>,
    /// The target's position right after the last committed append: anything
    /// past it may be an in-doubt copy from an interrupted run. Only the
    /// target connector reads it.
    pub target_mark: TargetMark,
    /// The target folder's UIDVALIDITY when the ledger's target ids were
    /// written (IMAP; `None` for targets without one, or not yet known).
    /// When the target's changes, those ids name other messages.
    pub target_validity: Option<u32>,
    /// The copy was subscribed (the source folder is).
    pub subscribed: bool,
}

/// A source connector's own record of where its listing of a folder
/// resumes, in a form only that connector writes and parses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SourceCursor(String);

impl SourceCursor {
    pub fn new(encoded: String) -> SourceCursor {
        SourceCursor(encoded)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A target connector's own record of a target folder's position (IMAP:
/// UIDNEXT; Graph: a time), in a form only that connector writes and parses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TargetMark(String);

impl TargetMark {
    pub fn new(encoded: String) -> TargetMark {
        TargetMark(encoded)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One copied item: where it came from and where it went. The ledger is what
/// makes copies exactly-once and what verification and rollback read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub mailbox: MailboxId,
    pub folder: String,
    pub validity: u32,
    /// The item's key in the source folder (IMAP: the UID in decimal;
    /// Maildir: the file's unique name).
    pub item: String,
    /// The IMAP UID, where the source has UIDs.
    pub uid: Option<u32>,
    pub target_folder: String,
    /// The copy's id in the target (IMAP: UID; Maildir: unique name), when known.
    pub target_id: Option<String>,
    pub size: u64,
    /// blake3 of the whole message, hex.
    pub content_hash: String,
    /// blake3 of the header block, hex: with the size, how the copies of a
    /// source folder whose UIDVALIDITY changed are recognised.
    pub header_hash: String,
    /// The message's identity (`header_key:body_digest`, see the worker's
    /// `connector::Identity`): how its copy is recognised in a target that
    /// re-renders what it stores. Empty in entries written before it was kept.
    pub identity: String,
    /// Flags as last written to the target, canonical form (see `Flags`).
    pub flags: String,
    /// The source item's version when it was copied, where the source
    /// versions items (Graph: its `changeKey`): listed later with another,
    /// the item changed and its copy is updated.
    pub source_version: Option<String>,
    /// The copy's version as the target last answered, where the target
    /// versions items (Graph: the import's `changeKey`): what an update of
    /// the copy names.
    pub target_version: Option<String>,
}

/// An item or a whole folder that could not be copied, kept for the report
/// and for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemFailure {
    pub mailbox: MailboxId,
    pub folder: String,
    #[serde(flatten)]
    pub scope: FailureScope,
    pub class: crate::ErrorClass,
    pub reason: String,
    pub pass: i64,
    /// Left out by the operator's policy (`max_message_bytes`), not an error.
    pub policy: bool,
}

/// What a failure is about: the whole folder, or one of its items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum FailureScope {
    /// The folder itself could not be copied (e.g. its name is impossible
    /// in the target); none of its items were.
    Folder,
    Item {
        /// The item's key in the source folder.
        item: String,
        /// Its size in bytes, when known.
        size: Option<u64>,
    },
}

/// Where a wave is in its life (distributed mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveState {
    /// Created with its mailboxes; nothing asked for yet.
    Created,
    /// Jobs are published for the mailboxes that need a pass.
    Running,
    /// No job is published; running jobs finish.
    Paused,
    /// The final pass (asked for by `complete`) ended for every mailbox.
    Completed,
    /// Stopped for good; queued mailboxes went back to pending.
    Cancelled,
}

impl WaveState {
    /// The name stored in databases and shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            WaveState::Created => "created",
            WaveState::Running => "running",
            WaveState::Paused => "paused",
            WaveState::Completed => "completed",
            WaveState::Cancelled => "cancelled",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "created" => WaveState::Created,
            "running" => WaveState::Running,
            "paused" => WaveState::Paused,
            "completed" => WaveState::Completed,
            "cancelled" => WaveState::Cancelled,
            _ => return None,
        })
    }
}

/// A wave as the store knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct WaveRecord {
    pub id: WaveId,
    pub name: String,
    pub state: WaveState,
    /// The passes asked for last are the final ones (`complete`): the wave
    /// becomes `Completed` when they end.
    pub final_pass: bool,
    /// The wave's configuration (secrets only by name), as read by this
    /// build.
    pub config: WaveConfig,
}

/// How many mailboxes of a wave are in each state, and what their current
/// passes copied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveCounts {
    pub pending: u64,
    pub queued: u64,
    pub running: u64,
    pub completed: u64,
    pub completed_with_errors: u64,
    pub failed: u64,
    pub items_copied: u64,
    pub bytes_copied: u64,
    pub items_skipped: u64,
}

impl WaveCounts {
    /// Mailboxes in the wave.
    pub fn total(&self) -> u64 {
        self.pending
            + self.queued
            + self.running
            + self.completed
            + self.completed_with_errors
            + self.failed
    }

    /// Adds `n` mailboxes in `state`.
    pub fn add_state(&mut self, state: MailboxState, n: u64) {
        match state {
            MailboxState::Pending => self.pending += n,
            MailboxState::Queued => self.queued += n,
            MailboxState::Running => self.running += n,
            MailboxState::Completed => self.completed += n,
            MailboxState::CompletedWithErrors => self.completed_with_errors += n,
            MailboxState::Failed => self.failed += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_keywords_are_counted_and_a_bounded_number_named() {
        let mut stats = PassStats::default();
        stats.refuse_keywords(["$Label1", "Work", "$Label1"]);
        assert_eq!(stats.keywords_refused, 3);
        assert_eq!(stats.refused_keywords.len(), 2);
        let many: Vec<String> = (0..2 * MAX_REFUSED_KEYWORD_NAMES)
            .map(|n| format!("k{n}"))
            .collect();
        let mut other = PassStats::default();
        other.refuse_keywords(many.iter().map(String::as_str));
        stats.add(&other);
        assert_eq!(
            stats.keywords_refused,
            3 + 2 * MAX_REFUSED_KEYWORD_NAMES as u64
        );
        assert_eq!(stats.refused_keywords.len(), MAX_REFUSED_KEYWORD_NAMES);
        assert!(stats.refused_keywords.contains("Work"));
    }
}
