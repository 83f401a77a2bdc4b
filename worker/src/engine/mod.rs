//! The copy engine: one pass over one mailbox.
//!
//! # Exactly once
//! Per source folder, a checkpoint (validity, high-water mark, target mark)
//! and the item ledger are written in **one transaction per batch**, after
//! the batch is in the target. A crash can therefore only lose the record of
//! the last batch, never add a record of something not copied. On the next
//! run those in-doubt copies are looked for in the target before anything is
//! appended: everything the target holds past the checkpoint's target mark
//! (IMAP: UIDNEXT after the last committed append) is matched against the
//! pending source items by size and header hash, as multisets, so messages
//! without Message-ID and byte-identical duplicates are counted right.
//! Targets that name items themselves (Maildir) are idempotent by name.
//!
//! # Delta passes
//! A folder whose checkpoint still matches the source (same validity, no
//! UID above the mark, same HIGHESTMODSEQ) costs one status query and
//! nothing else. Flag changes come from CONDSTORE where the source has it,
//! else from a flags-only listing compared with the ledger. A copied item
//! listed with another version than its ledger entry's (a source that
//! versions items: Graph's `changeKey`) changed since its copy: it is
//! fetched again and its copy replaced ([`MailTarget::update`]), the new
//! versions committed with the checkpoint.

pub mod folders;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::future::try_join_all;
use mailwave_common::ErrorClass;
use mailwave_common::config::{Config, FolderFilter};
use mailwave_common::model::{
    FailureScope, FolderCheckpoint, ItemFailure, LedgerEntry, MailboxId, MailboxRecord, PassStats,
};
use mailwave_common::store::StoreError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::connector::{
    ConnectorError, Fetched, FlagScan, Flags, FolderScan, Identity, ItemMeta, MailSource,
    MailTarget, Message, Outgoing, Replacement, SourceFolder, SourcePosition, TargetFolder,
    header_hash,
};
use crate::lease::PassStore;

/// What a message whose size the source cannot tell before reading it
/// ([`ItemMeta::size`] `None`) is taken to weigh, for batching and the memory
/// budget, until its body is fetched and charged at its real size.
const UNKNOWN_SIZE: u64 = 256 * 1024;

/// How a pass is cut into batches and spread over connections.
#[derive(Debug, Clone)]
pub struct CopySettings {
    pub batch_messages: usize,
    pub batch_bytes: u64,
    /// 0 = no limit.
    pub max_message_bytes: u64,
    pub connections: usize,
    pub filter: FolderFilter,
}

impl CopySettings {
    pub fn from_config(config: &Config) -> CopySettings {
        let m = &config.migration;
        CopySettings {
            batch_messages: m.batch_messages,
            batch_bytes: m.batch_bytes,
            max_message_bytes: m.max_message_bytes,
            connections: m.connections_per_mailbox,
            filter: config.folders.clone(),
        }
    }
}

/// Opens connections to one mailbox's source and target.
#[async_trait]
pub trait MailboxConnector: Send + Sync {
    async fn source(&self) -> Result<Box<dyn MailSource>, ConnectorError>;
    async fn target(&self) -> Result<Box<dyn MailTarget>, ConnectorError>;
}

/// Receives progress as it happens (the display of `mailwave run`, metrics).
pub trait ProgressSink: Send + Sync {
    /// `items` messages of `bytes` were committed for `mailbox`.
    fn copied(&self, mailbox: MailboxId, items: u64, bytes: u64);
}

/// A sink that ignores progress.
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn copied(&self, _: MailboxId, _: u64, _: u64) {}
}

/// Bytes of message bodies held in memory at once, shared by every mailbox
/// of the process, so that twenty 25 MB messages never sit in memory together.
#[derive(Clone)]
pub struct MemoryBudget {
    permits: Arc<Semaphore>,
    total_kib: u32,
}

impl MemoryBudget {
    pub fn new(bytes: u64) -> MemoryBudget {
        let total_kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .max(1);
        MemoryBudget {
            permits: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// What `bytes` costs; one message larger than the budget takes all of it.
    fn cost(&self, bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_kib)
    }

    async fn acquire(&self, bytes: u64) -> OwnedSemaphorePermit {
        Arc::clone(&self.permits)
            .acquire_many_owned(self.cost(bytes))
            .await
            .expect("the budget's semaphore is never closed")
    }

    fn try_acquire(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.permits)
            .try_acquire_many_owned(self.cost(bytes))
            .ok()
    }

    /// Makes `permit` pay for `bytes` already in memory (bodies larger than
    /// listed, or of unknown size), with what the budget has left, without
    /// waiting: fetches that come later wait for it instead.
    fn charge(&self, permit: &mut OwnedSemaphorePermit, bytes: u64) {
        let held = u32::try_from(permit.num_permits()).unwrap_or(u32::MAX);
        let missing = self.cost(bytes).saturating_sub(held);
        let available = u32::try_from(self.permits.available_permits()).unwrap_or(u32::MAX);
        let take = missing.min(available);
        if take == 0 {
            return;
        }
        if let Ok(more) = Arc::clone(&self.permits).try_acquire_many_owned(take) {
            permit.merge(more);
        }
    }
}

impl From<StoreError> for ConnectorError {
    fn from(error: StoreError) -> Self {
        let class = mailwave_common::Classify::class(&error);
        ConnectorError::classified(class, error.to_string(), None)
    }
}

/// One pass over one mailbox.
pub struct MailboxPass<'a> {
    /// Reads, and writes fenced by the pass's lease.
    pub store: PassStore<'a>,
    pub mailbox: &'a MailboxRecord,
    pub pass: i64,
    pub settings: &'a CopySettings,
    pub budget: &'a MemoryBudget,
    pub progress: &'a dyn ProgressSink,
    /// Cancelled to stop the pass at the next batch boundary, after its
    /// commit (graceful shutdown); the pass then ends with
    /// [`ConnectorError::interrupted`].
    pub stop: &'a CancellationToken,
}

/// What the lanes of one pass share.
struct Shared {
    folders: Mutex<VecDeque<SourceFolder>>,
    roles: folders::SourceRoles,
    checkpoints: HashMap<String, FolderCheckpoint>,
    /// The target's folders, listed once when the first new folder needs them.
    target_folders: tokio::sync::Mutex<Option<Vec<TargetFolder>>>,
    stats: Mutex<PassStats>,
}

/// One connection pair working through the folder queue.
struct Lane<'p> {
    source: Box<dyn MailSource>,
    target: Option<Box<dyn MailTarget>>,
    connector: &'p dyn MailboxConnector,
}

impl Lane<'_> {
    /// Ends both sessions politely.
    async fn close(self) {
        self.source.close().await;
        if let Some(target) = self.target {
            target.close().await;
        }
    }

    /// The target connection, opened on first use: a pass with nothing to
    /// copy never connects to the target.
    async fn target(&mut self) -> Result<&mut dyn MailTarget, ConnectorError> {
        if self.target.is_none() {
            self.target = Some(self.connector.target().await?);
        }
        Ok(self.target.as_deref_mut().expect("just opened"))
    }
}

/// One folder's figures, added to the pass's when dropped: also when the
/// folder's copy is cut off because another lane of the pass failed, so
/// that what was committed is never missing from the report.
struct FolderFigures<'a> {
    shared: &'a Shared,
    stats: PassStats,
}

impl Drop for FolderFigures<'_> {
    fn drop(&mut self) {
        lock_stats(self.shared).add(&self.stats);
    }
}

fn lock_stats(shared: &Shared) -> std::sync::MutexGuard<'_, PassStats> {
    shared
        .stats
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MailboxPass<'_> {
    /// Copies everything new and syncs flags; adds what was done to
    /// `done`, also when the pass fails part-way (its committed batches
    /// stay done).
    pub async fn run(
        &self,
        connector: &dyn MailboxConnector,
        done: &mut PassStats,
    ) -> Result<(), ConnectorError> {
        let mut source = connector.source().await?;
        let folders: Vec<SourceFolder> = source
            .folders()
            .await?
            .into_iter()
            .filter(|f| self.settings.filter.allows(&f.path.to_string()))
            .collect();
        let roles = folders::source_roles(&folders);
        let checkpoints = self
            .store
            .checkpoints()
            .await?
            .into_iter()
            .map(|c| (c.folder.clone(), c))
            .collect();
        let lanes = self.settings.connections.clamp(1, folders.len().max(1));
        let shared = Shared {
            folders: Mutex::new(folders.into()),
            roles,
            checkpoints,
            target_folders: tokio::sync::Mutex::new(None),
            stats: Mutex::new(PassStats::default()),
        };

        let mut first = Some(source);
        let lane_runs = (0..lanes).map(|_| {
            let source = first.take();
            let shared = &shared;
            async move {
                let source = match source {
                    Some(source) => source,
                    None if shared.folders.lock().expect("lock").is_empty() => {
                        return Ok::<(), ConnectorError>(());
                    }
                    None => connector.source().await?,
                };
                let mut lane = Lane {
                    source,
                    target: None,
                    connector,
                };
                self.run_lane(&mut lane, shared).await?;
                lane.close().await;
                Ok(())
            }
        });
        let result = try_join_all(lane_runs).await;
        done.add(&shared.stats.into_inner().expect("lock"));
        result.map(|_| ())
    }

    async fn run_lane(&self, lane: &mut Lane<'_>, shared: &Shared) -> Result<(), ConnectorError> {
        loop {
            if self.stop.is_cancelled() {
                return Err(ConnectorError::interrupted());
            }
            let Some(folder) = shared.folders.lock().expect("lock").pop_front() else {
                return Ok(());
            };
            let result = self.copy_folder(lane, shared, &folder).await;
            let Err(error) = result else { continue };
            if self.stop.is_cancelled() {
                return Err(ConnectorError::interrupted());
            }
            if error.class != ErrorClass::Item {
                return Err(error.context(format!("folder {}", folder.path)));
            }
            // The folder itself cannot be copied (e.g. its name is impossible
            // in the target): record it and go on with the others.
            tracing::warn!(mailbox = %self.mailbox.source, folder = %folder.path, %error, "folder skipped");
            self.store
                .record_failure(&ItemFailure {
                    mailbox: self.mailbox.id,
                    folder: folder.key.clone(),
                    scope: FailureScope::Folder,
                    class: ErrorClass::Item,
                    reason: format!("folder {}: {}", folder.path, error.message),
                    pass: self.pass,
                    policy: false,
                })
                .await?;
            let mut stats = shared.stats.lock().expect("lock");
            stats.items_skipped += 1;
            stats.items_failed += 1;
        }
    }

    /// Copies one folder; what it committed counts in the pass's figures
    /// even when it fails part-way, or is dropped because another lane
    /// failed (the figures are added when `counted` is dropped).
    async fn copy_folder(
        &self,
        lane: &mut Lane<'_>,
        shared: &Shared,
        folder: &SourceFolder,
    ) -> Result<(), ConnectorError> {
        let mut counted = FolderFigures {
            shared,
            stats: PassStats {
                folders: 1,
                ..PassStats::default()
            },
        };
        self.copy_folder_counted(lane, shared, folder, &mut counted.stats)
            .await
    }

    async fn copy_folder_counted(
        &self,
        lane: &mut Lane<'_>,
        shared: &Shared,
        folder: &SourceFolder,
        stats: &mut PassStats,
    ) -> Result<(), ConnectorError> {
        let mut previous = shared.checkpoints.get(&folder.key).cloned();
        let mut target_checked = None;
        if let Some(checkpoint) = previous.as_mut() {
            // Copies an interrupted run appended but could not record: found
            // before anything is listed or appended again.
            let recovered = self
                .recover(lane, folder, checkpoint, &mut target_checked, stats)
                .await?;
            stats.items_recovered += recovered;
            if folder.subscribed && !checkpoint.subscribed {
                lane.target()
                    .await?
                    .subscribe(&checkpoint.target_folder)
                    .await?;
                checkpoint.subscribed = true;
                self.store.save_checkpoint(checkpoint).await?;
            }
        }
        let scan = lane
            .source
            .scan(folder, previous.as_ref().map(SourcePosition::of))
            .await?;
        let unchanged = previous
            .as_ref()
            .is_some_and(|c| c.validity == scan.validity && c.source_cursor == scan.cursor);
        if unchanged && scan.candidates.is_empty() && matches!(scan.flags, FlagScan::Unchanged) {
            return Ok(());
        }

        let complete = scan.complete
            || previous
                .as_ref()
                .is_some_and(|c| c.validity != scan.validity);
        let mut checkpoint = match previous {
            Some(c) if c.validity == scan.validity => c,
            Some(c) => self.remap(lane.source.as_mut(), folder, &c, &scan).await?,
            None => self.start_folder(lane, shared, folder, &scan).await?,
        };

        // Every candidate is looked up in the ledger: a listing of the whole
        // folder (Maildir, a changed validity) names copied items, and so
        // may one past the high-water mark (after a re-map, or a recovery).
        let ledger: HashMap<String, LedgerEntry> =
            if complete || !matches!(scan.flags, FlagScan::Unchanged) {
                self.store.ledger(&folder.key, checkpoint.validity).await?
            } else {
                let items: Vec<String> = scan.candidates.iter().map(|i| i.item.clone()).collect();
                self.store
                    .ledger_entries(&folder.key, checkpoint.validity, &items)
                    .await?
            }
            .into_iter()
            .map(|e| (e.item.clone(), e))
            .collect();
        let pending: Vec<ItemMeta> = scan
            .candidates
            .iter()
            .filter(|item| !ledger.contains_key(&item.item))
            .cloned()
            .collect();

        if !pending.is_empty() {
            self.check_target_folder(lane, folder, &mut checkpoint, &mut target_checked, stats)
                .await?;
        }
        self.copy_items(lane, folder, &mut checkpoint, pending, stats)
            .await?;
        let changed: Vec<ItemMeta> = scan
            .candidates
            .iter()
            .filter(|item| {
                ledger
                    .get(&item.item)
                    .is_some_and(|e| changed_since_copy(item, e))
            })
            .cloned()
            .collect();
        stats.items_updated += self
            .update_items(
                lane,
                folder,
                &mut checkpoint,
                &mut target_checked,
                &ledger,
                changed,
                stats,
            )
            .await?;

        let flag_state: Vec<(String, Flags)> = match scan.flags {
            FlagScan::Changed(list) | FlagScan::All(list) => list,
            FlagScan::Unchanged if complete => scan
                .candidates
                .iter()
                .filter(|item| ledger.contains_key(&item.item))
                .map(|item| (item.item.clone(), item.flags.clone()))
                .collect(),
            FlagScan::Unchanged => Vec::new(),
        };
        stats.flags_updated = self
            .sync_flags(
                lane,
                folder,
                &mut checkpoint,
                &mut target_checked,
                &ledger,
                flag_state,
                stats,
            )
            .await?;

        // Every listed item is now copied, recovered or recorded as failed.
        checkpoint.high_water_mark = checkpoint
            .high_water_mark
            .max(highest_uid(&scan.candidates));
        checkpoint.source_cursor = scan.cursor;
        self.store.save_checkpoint(&checkpoint).await?;
        Ok(())
    }

    /// A folder seen for the first time: map it, create it in the target,
    /// and checkpoint the target's mark before the first append.
    async fn start_folder(
        &self,
        lane: &mut Lane<'_>,
        shared: &Shared,
        folder: &SourceFolder,
        scan: &FolderScan,
    ) -> Result<FolderCheckpoint, ConnectorError> {
        let role = shared.roles.of(&folder.key);
        let target = lane.target().await?;
        let path = {
            let mut listed = shared.target_folders.lock().await;
            if listed.is_none() {
                *listed = Some(target.folders().await?);
            }
            folders::target_path(folder, &shared.roles, listed.as_deref().unwrap_or_default())
        };
        let created = target
            .ensure_folder(&path, role, folder.class.as_deref())
            .await?;
        if folder.subscribed {
            target.subscribe(&created.name).await?;
        }
        let state = target.mark(&created.name).await?;
        let checkpoint = FolderCheckpoint {
            mailbox: self.mailbox.id,
            folder: folder.key.clone(),
            target_folder: created.name.clone(),
            validity: scan.validity,
            high_water_mark: 0,
            source_cursor: None,
            target_mark: state.mark,
            target_validity: state.validity,
            subscribed: folder.subscribed,
        };
        if let Some(listed) = shared.target_folders.lock().await.as_mut()
            && !listed.iter().any(|t| t.name == created.name)
        {
            listed.push(created);
        }
        self.store.save_checkpoint(&checkpoint).await?;
        Ok(checkpoint)
    }

    /// Before the first use of the target folder's ids in this pass: when
    /// its validity changed (the folder was re-created, and its ids now name
    /// other messages), the copies are found again by identity and the
    /// ledger's ids replaced; copies no longer there are recorded as
    /// failures. No stale id is ever used. `true` when the ids were replaced
    /// (in this pass); `checked` keeps the answer for the folder's pass.
    async fn check_target_folder(
        &self,
        lane: &mut Lane<'_>,
        folder: &SourceFolder,
        checkpoint: &mut FolderCheckpoint,
        checked: &mut Option<bool>,
        stats: &mut PassStats,
    ) -> Result<bool, ConnectorError> {
        if let Some(retargeted) = *checked {
            return Ok(retargeted);
        }
        let retargeted = self
            .refresh_target_ids(lane, folder, checkpoint, stats)
            .await?;
        *checked = Some(retargeted);
        Ok(retargeted)
    }

    async fn refresh_target_ids(
        &self,
        lane: &mut Lane<'_>,
        folder: &SourceFolder,
        checkpoint: &mut FolderCheckpoint,
        stats: &mut PassStats,
    ) -> Result<bool, ConnectorError> {
        let target = lane.target().await?;
        let state = target.mark(&checkpoint.target_folder).await?;
        let (Some(recorded), Some(now)) = (checkpoint.target_validity, state.validity) else {
            if checkpoint.target_validity.is_none() && state.validity.is_some() {
                // Checkpoints written before validities were kept.
                checkpoint.target_validity = state.validity;
                self.store.save_checkpoint(checkpoint).await?;
            }
            return Ok(false);
        };
        if recorded == now {
            return Ok(false);
        }
        tracing::warn!(mailbox = %self.mailbox.source, folder = %folder.path,
            target_folder = %checkpoint.target_folder, old = recorded, new = now,
            "the target folder was re-created (its UIDVALIDITY changed); finding the copies again");
        let copied = self.store.ledger(&folder.key, checkpoint.validity).await?;
        let identities: Vec<Option<Identity>> = copied
            .iter()
            .map(|e| Identity::decode(&e.identity))
            .collect();
        let wanted: HashSet<String> = identities
            .iter()
            .flatten()
            .map(|i| i.header_key.clone())
            .collect();
        let mut in_target: HashMap<Identity, VecDeque<String>> = HashMap::new();
        for item in target
            .items_since(&checkpoint.target_folder, None, &wanted)
            .await?
        {
            in_target
                .entry(item.identity)
                .or_default()
                .push_back(item.id);
        }
        let mut target_ids = Vec::with_capacity(copied.len());
        let mut missing = Vec::new();
        for (entry, identity) in copied.iter().zip(&identities) {
            let found = identity
                .as_ref()
                .and_then(|i| in_target.get_mut(i))
                .and_then(VecDeque::pop_front);
            if found.is_none() {
                missing.push(entry);
            }
            target_ids.push((entry.item.clone(), found));
        }
        checkpoint.target_validity = Some(now);
        checkpoint.target_mark = state.mark;
        self.store.retarget_folder(checkpoint, &target_ids).await?;
        for entry in missing {
            let meta = ItemMeta {
                item: entry.item.clone(),
                uid: entry.uid,
                size: Some(entry.size),
                flags: Flags::parse(&entry.flags),
                internal_date: None,
                identity: None,
                version: None,
            };
            let reason = format!(
                "its copy is no longer in target folder {} (re-created: UIDVALIDITY {recorded} -> {now}); not copied again",
                checkpoint.target_folder
            );
            self.record_item_failure(folder, &meta, ErrorClass::Item, reason)
                .await?;
            stats.items_failed += 1;
        }
        Ok(true)
    }

    /// The source folder's validity changed (its UIDs were renumbered): find
    /// the items copied under the old validity by size and header hash, and
    /// move their ledger entries to the new UIDs.
    async fn remap(
        &self,
        source: &mut dyn MailSource,
        folder: &SourceFolder,
        old: &FolderCheckpoint,
        scan: &FolderScan,
    ) -> Result<FolderCheckpoint, ConnectorError> {
        tracing::info!(mailbox = %self.mailbox.source, folder = %folder.path,
            old = old.validity, new = scan.validity, "source folder validity changed; re-mapping");
        let old_entries = self.store.ledger(&folder.key, old.validity).await?;
        let mut by_identity: HashMap<(u64, String), VecDeque<String>> = HashMap::new();
        for entry in old_entries {
            by_identity
                .entry((entry.size, entry.header_hash))
                .or_default()
                .push_back(entry.item);
        }
        let sizes: HashSet<u64> = by_identity.keys().map(|(s, _)| *s).collect();
        let suspects: Vec<ItemMeta> = scan
            .candidates
            .iter()
            .filter(|i| i.size.is_some_and(|size| sizes.contains(&size)))
            .cloned()
            .collect();
        let metas: HashMap<&str, &ItemMeta> =
            suspects.iter().map(|i| (i.item.as_str(), i)).collect();
        let mut rekeys = Vec::new();
        for chunk in suspects.chunks(self.settings.batch_messages.max(1)) {
            for (item, header) in source.fetch_headers(folder, chunk).await? {
                let Some((meta, Some(size))) = metas.get(item.as_str()).map(|m| (m, m.size)) else {
                    continue;
                };
                let identity = (size, blake3::hash(&header).to_hex().to_string());
                if let Some(old_item) = by_identity.get_mut(&identity).and_then(VecDeque::pop_front)
                {
                    rekeys.push((old_item, item, meta.uid));
                }
            }
        }
        let checkpoint = FolderCheckpoint {
            validity: scan.validity,
            high_water_mark: 0,
            source_cursor: None,
            ..old.clone()
        };
        self.store
            .rekey_folder(&checkpoint, old.validity, &rekeys)
            .await?;
        Ok(checkpoint)
    }

    /// Finds the copies of the folder's intents (the batch an interrupted
    /// run was appending, written ahead of the append) that reached the
    /// target: matched by identity, as multisets, among what the target
    /// holds past the checkpoint's mark. Found ones are recorded as copied;
    /// the others are forgotten and copied like any pending item. Returns
    /// how many were found.
    async fn recover(
        &self,
        lane: &mut Lane<'_>,
        folder: &SourceFolder,
        checkpoint: &mut FolderCheckpoint,
        target_checked: &mut Option<bool>,
        stats: &mut PassStats,
    ) -> Result<u64, ConnectorError> {
        let intents = self.store.intents(&folder.key).await?;
        if intents.is_empty() {
            return Ok(0);
        }
        self.check_target_folder(lane, folder, checkpoint, target_checked, stats)
            .await?;
        let wanted: HashSet<String> = intents
            .iter()
            .filter_map(|e| Identity::decode(&e.identity))
            .map(|i| i.header_key)
            .collect();
        // Copies the ledger names are never in doubt (a target whose mark is
        // approximate, as Graph's clock, lists some of them again).
        let known: HashSet<String> = self
            .store
            .ledger(&folder.key, checkpoint.validity)
            .await?
            .into_iter()
            .filter_map(|e| e.target_id)
            .collect();
        let mut in_target: HashMap<Identity, VecDeque<String>> = HashMap::new();
        for item in lane
            .target()
            .await?
            .items_since(
                &checkpoint.target_folder,
                Some(&checkpoint.target_mark),
                &wanted,
            )
            .await?
        {
            if !known.contains(&item.id) {
                in_target
                    .entry(item.identity)
                    .or_default()
                    .push_back(item.id);
            }
        }
        let mut found = Vec::new();
        for intent in intents {
            let copy = Identity::decode(&intent.identity)
                .and_then(|identity| in_target.get_mut(&identity))
                .and_then(VecDeque::pop_front);
            if let Some(id) = copy {
                found.push(LedgerEntry {
                    target_id: Some(id),
                    ..intent
                });
            }
        }
        if !found.is_empty() {
            tracing::info!(mailbox = %self.mailbox.source, folder = %folder.path,
                recovered = found.len(), "found in-doubt copies in the target; not copying them again");
        }
        // Also forgets the intents that were not found: those are copied again.
        self.store.commit_items(checkpoint, &found).await?;
        Ok(found.len() as u64)
    }

    /// Copies `items` in batches, fetching the next batch while the current
    /// one is appended, and commits each batch with the checkpoint.
    async fn copy_items(
        &self,
        lane: &mut Lane<'_>,
        folder: &SourceFolder,
        checkpoint: &mut FolderCheckpoint,
        items: Vec<ItemMeta>,
        stats: &mut PassStats,
    ) -> Result<(), ConnectorError> {
        let mut kept = Vec::with_capacity(items.len());
        for item in items {
            match item.size {
                Some(size) if self.oversized(size) => {
                    self.skip_oversized(folder, &item, size, stats).await?;
                }
                _ => kept.push(item),
            }
        }
        let items = kept;
        if items.is_empty() {
            return Ok(());
        }
        // Makes sure the target connection is open before the pipeline starts.
        lane.target().await?;
        let Lane { source, target, .. } = lane;
        let target = target.as_deref_mut().expect("opened above");

        let mut in_hand: Option<(Vec<ItemMeta>, Vec<Message>, OwnedSemaphorePermit)> = None;
        for batch in self.batches(items) {
            if self.stop.is_cancelled() {
                break;
            }
            // The bodies, and what the fetch or the append holds beside
            // them (their encoded forms), whichever is more.
            let sizes: Vec<u64> = batch.iter().map(weight).collect();
            let bytes = batch_size(&batch)
                + source
                    .fetch_transit(&sizes)
                    .max(target.append_transit(&sizes));
            // Never wait for memory while holding some: flush first instead.
            let permit = match self.budget.try_acquire(bytes) {
                Some(permit) => permit,
                None => {
                    if let Some(held) = in_hand.take() {
                        self.append_batch(target, folder, checkpoint, held, stats)
                            .await?;
                    }
                    self.budget.acquire(bytes).await
                }
            };
            let fetch = source.fetch(folder, &batch);
            let fetched = match in_hand.take() {
                Some(held) => {
                    let append = self.append_batch(target, folder, checkpoint, held, stats);
                    let (fetched, appended) = tokio::join!(fetch, append);
                    appended?;
                    fetched?
                }
                None => fetch.await?,
            };
            let fetched = self.account(folder, &batch, fetched, stats).await?;
            let mut permit = permit;
            let sizes: Vec<u64> = fetched.iter().map(|m| m.body.len() as u64).collect();
            self.budget.charge(
                &mut permit,
                sizes.iter().sum::<u64>() + target.append_transit(&sizes),
            );
            in_hand = Some((batch, fetched, permit));
        }
        if let Some(held) = in_hand {
            self.append_batch(target, folder, checkpoint, held, stats)
                .await?;
        }
        if self.stop.is_cancelled() {
            return Err(ConnectorError::interrupted());
        }
        Ok(())
    }

    /// Checks that the source accounted for every item of `asked` (given,
    /// gone, or refused), records the refused ones, and returns the
    /// messages given. An item the source said nothing about is an error:
    /// skipping it would move the high-water mark past it for good.
    async fn account(
        &self,
        folder: &SourceFolder,
        asked: &[ItemMeta],
        fetched: Fetched,
        stats: &mut PassStats,
    ) -> Result<Vec<Message>, ConnectorError> {
        let Fetched {
            messages,
            gone,
            refused,
        } = fetched;
        let mut unaccounted: HashMap<&str, &ItemMeta> =
            asked.iter().map(|i| (i.item.as_str(), i)).collect();
        for item in messages
            .iter()
            .map(|m| m.meta.item.as_str())
            .chain(gone.iter().map(String::as_str))
            .chain(refused.iter().map(|(item, _)| item.as_str()))
        {
            unaccounted.remove(item);
        }
        if let Some(item) = unaccounted.keys().min() {
            return Err(ConnectorError::transient(format!(
                "the source answered nothing for item {item} (and {} more) of folder {}",
                unaccounted.len() - 1,
                folder.path
            )));
        }
        for (item, error) in refused {
            let Some(meta) = asked.iter().find(|i| i.item == item) else {
                continue;
            };
            if error.class != ErrorClass::Item {
                return Err(error.context(format!("item {item}")));
            }
            let reason = format!("refused by the source: {}", error.message);
            self.record_item_failure(folder, meta, error.class, reason)
                .await?;
            stats.items_skipped += 1;
            stats.items_failed += 1;
        }
        Ok(messages)
    }

    /// Appends one fetched batch and commits its ledger entries together
    /// with the moved checkpoint.
    async fn append_batch(
        &self,
        target: &mut dyn MailTarget,
        folder: &SourceFolder,
        checkpoint: &mut FolderCheckpoint,
        (batch, messages, _permit): (Vec<ItemMeta>, Vec<Message>, OwnedSemaphorePermit),
        stats: &mut PassStats,
    ) -> Result<(), ConnectorError> {
        // Sizes the source could not tell before are known now.
        let (oversized, messages): (Vec<_>, Vec<_>) = messages
            .into_iter()
            .partition(|m| self.oversized(m.body.len() as u64));
        for message in oversized {
            let size = message.body.len() as u64;
            let meta = ItemMeta {
                size: Some(size),
                ..message.meta
            };
            self.skip_oversized(folder, &meta, size, stats).await?;
        }
        // Keywords the target folder would not store are left off and
        // counted: the ledger keeps the source's flags all the same.
        let keywords = target.keyword_policy(&checkpoint.target_folder).await?;
        let (outgoing, refused): (Vec<Outgoing>, Vec<Vec<String>>) = messages
            .iter()
            .map(|m| {
                let (flags, refused) = keywords.split(&m.meta.flags);
                let outgoing = Outgoing {
                    body: m.body.clone(),
                    flags,
                    internal_date: m.meta.internal_date,
                    source_ref: self.source_ref(checkpoint, &m.meta.item),
                };
                (outgoing, refused)
            })
            .unzip();
        // Written ahead: after a crash from here to the commit, these are
        // exactly the copies in doubt (see `recover`).
        let mut entries: Vec<LedgerEntry> = messages
            .iter()
            .map(|m| self.ledger_entry(checkpoint, m, None))
            .collect();
        let report = if outgoing.is_empty() {
            Default::default()
        } else {
            self.store.record_intents(&entries).await?;
            // Stops sending the moment the lease is lost: what was sent is
            // in doubt for whoever takes the mailbox, and found by its intents.
            self.store
                .keeper()
                .guard(target.append(&checkpoint.target_folder, &outgoing))
                .await?
        };
        if report.results.len() != messages.len() {
            return Err(ConnectorError::transient(format!(
                "target answered {} results for {} appended messages",
                report.results.len(),
                messages.len()
            )));
        }
        let mut copied = Vec::with_capacity(messages.len());
        let mut bytes = 0;
        let mut keywords_refused = Vec::new();
        for (((message, result), mut entry), refused) in messages
            .iter()
            .zip(report.results)
            .zip(entries.drain(..))
            .zip(refused)
        {
            match result {
                Ok(id) => {
                    bytes += message.body.len() as u64;
                    entry.target_version =
                        id.as_ref().and_then(|id| report.versions.get(id)).cloned();
                    entry.target_id = id;
                    copied.push(entry);
                    keywords_refused.extend(refused);
                }
                Err(error) if error.class == ErrorClass::Item => {
                    let reason = format!("refused by the target: {}", error.message);
                    self.record_item_failure(folder, &message.meta, error.class, reason)
                        .await?;
                    stats.items_skipped += 1;
                    stats.items_failed += 1;
                }
                Err(error) => return Err(error),
            }
        }
        let entries = copied;
        checkpoint.high_water_mark = checkpoint.high_water_mark.max(highest_uid(&batch));
        if let Some(mark) = report.mark_after {
            checkpoint.target_mark = mark;
        }
        self.store.commit_items(checkpoint, &entries).await?;
        stats.items_copied += entries.len() as u64;
        stats.bytes_copied += bytes;
        self.note_refused_keywords(folder, &keywords_refused, stats);
        self.progress
            .copied(self.mailbox.id, entries.len() as u64, bytes);
        Ok(())
    }

    /// Applies flag changes of copied items to their target copies.
    #[allow(clippy::too_many_arguments)]
    async fn sync_flags(
        &self,
        lane: &mut Lane<'_>,
        folder: &SourceFolder,
        checkpoint: &mut FolderCheckpoint,
        target_checked: &mut Option<bool>,
        ledger: &HashMap<String, LedgerEntry>,
        source_flags: Vec<(String, Flags)>,
        stats: &mut PassStats,
    ) -> Result<u64, ConnectorError> {
        let changed: Vec<(String, Flags)> = source_flags
            .into_iter()
            .filter(|(item, flags)| {
                ledger
                    .get(item)
                    .is_some_and(|e| e.flags != flags.to_string())
            })
            .collect();
        if changed.is_empty() {
            return Ok(0);
        }
        let items: Vec<&str> = changed.iter().map(|(item, _)| item.as_str()).collect();
        let ledger = self
            .current_entries(
                lane,
                folder,
                checkpoint,
                target_checked,
                ledger,
                &items,
                stats,
            )
            .await?;
        let mut changes = Vec::new();
        let mut recorded = Vec::new();
        for (item, flags) in changed {
            let Some(entry) = ledger.get(&item) else {
                continue;
            };
            let flags_text = flags.to_string();
            if entry.flags == flags_text {
                continue;
            }
            let Some(target_id) = &entry.target_id else {
                tracing::warn!(mailbox = %self.mailbox.source, folder = %folder.path, item,
                    "flags changed but the target copy's id is unknown; left as is");
                continue;
            };
            changes.push((target_id.clone(), flags));
            recorded.push((item, flags_text));
        }
        if changes.is_empty() {
            return Ok(0);
        }
        let target = lane.target().await?;
        let keywords = target.keyword_policy(&checkpoint.target_folder).await?;
        let mut keywords_refused = Vec::new();
        let changes: Vec<(String, Flags)> = changes
            .into_iter()
            .map(|(id, flags)| {
                let (flags, refused) = keywords.split(&flags);
                keywords_refused.extend(refused);
                (id, flags)
            })
            .collect();
        target
            .set_flags(&checkpoint.target_folder, &changes)
            .await?;
        self.store
            .update_flags(&folder.key, checkpoint.validity, &recorded)
            .await?;
        self.note_refused_keywords(folder, &keywords_refused, stats);
        Ok(changes.len() as u64)
    }

    /// The ledger entries of `items` with target ids known to be current:
    /// those of `ledger`, or read again once the target folder's ids were
    /// replaced (see [`Self::check_target_folder`]).
    #[allow(clippy::too_many_arguments)]
    async fn current_entries(
        &self,
        lane: &mut Lane<'_>,
        folder: &SourceFolder,
        checkpoint: &mut FolderCheckpoint,
        target_checked: &mut Option<bool>,
        ledger: &HashMap<String, LedgerEntry>,
        items: &[&str],
        stats: &mut PassStats,
    ) -> Result<HashMap<String, LedgerEntry>, ConnectorError> {
        let retargeted = self
            .check_target_folder(lane, folder, checkpoint, target_checked, stats)
            .await?;
        if !retargeted {
            return Ok(items
                .iter()
                .filter_map(|item| ledger.get(*item))
                .map(|e| (e.item.clone(), e.clone()))
                .collect());
        }
        let items: Vec<String> = items.iter().map(|item| (*item).to_owned()).collect();
        Ok(self
            .store
            .ledger_entries(&folder.key, checkpoint.validity, &items)
            .await?
            .into_iter()
            .map(|e| (e.item.clone(), e))
            .collect())
    }

    /// Replaces the copies of items that changed since they were copied
    /// (see [`changed_since_copy`]) with their new versions, batch by
    /// batch, each committed with the checkpoint: the new source and
    /// target versions are recorded together. An item gone from the source
    /// meanwhile keeps its copy; one the source or the target refuses is
    /// recorded. Returns how many copies were updated.
    #[allow(clippy::too_many_arguments)]
    async fn update_items(
        &self,
        lane: &mut Lane<'_>,
        folder: &SourceFolder,
        checkpoint: &mut FolderCheckpoint,
        target_checked: &mut Option<bool>,
        ledger: &HashMap<String, LedgerEntry>,
        items: Vec<ItemMeta>,
        stats: &mut PassStats,
    ) -> Result<u64, ConnectorError> {
        if items.is_empty() {
            return Ok(0);
        }
        let names: Vec<&str> = items.iter().map(|i| i.item.as_str()).collect();
        let ledger = self
            .current_entries(
                lane,
                folder,
                checkpoint,
                target_checked,
                ledger,
                &names,
                stats,
            )
            .await?;
        let mut updated = 0;
        for batch in self.batches(items) {
            if self.stop.is_cancelled() {
                return Err(ConnectorError::interrupted());
            }
            // As a copy's (see `copy_items`): an update carries its body
            // encoded as an append does.
            let sizes: Vec<u64> = batch.iter().map(weight).collect();
            let transit = lane
                .source
                .fetch_transit(&sizes)
                .max(lane.target().await?.append_transit(&sizes));
            let permit = self.budget.acquire(batch_size(&batch) + transit).await;
            let fetched = lane.source.fetch(folder, &batch).await?;
            let mut permit = permit;
            let messages = self.account(folder, &batch, fetched, stats).await?;
            let sizes: Vec<u64> = messages.iter().map(|m| m.body.len() as u64).collect();
            let transit = lane.target().await?.append_transit(&sizes);
            self.budget
                .charge(&mut permit, sizes.iter().sum::<u64>() + transit);
            let mut copies = Vec::with_capacity(messages.len());
            let mut replacements = Vec::with_capacity(messages.len());
            for message in messages {
                let Some((entry, target_id)) = ledger
                    .get(&message.meta.item)
                    .and_then(|e| Some((e, e.target_id.clone()?)))
                else {
                    continue;
                };
                replacements.push(Replacement {
                    target_id,
                    version: entry.target_version.clone(),
                    body: message.body.clone(),
                });
                copies.push((message, entry));
            }
            let target = lane.target().await?;
            let results = self
                .store
                .keeper()
                .guard(target.update(&checkpoint.target_folder, &replacements))
                .await?;
            if results.len() != copies.len() {
                return Err(ConnectorError::transient(format!(
                    "target answered {} results for {} updated copies",
                    results.len(),
                    copies.len()
                )));
            }
            let mut entries = Vec::with_capacity(copies.len());
            for ((message, entry), result) in copies.into_iter().zip(results) {
                match result {
                    Ok(version) => entries.push(LedgerEntry {
                        target_version: Some(version),
                        ..self.ledger_entry(checkpoint, &message, entry.target_id.clone())
                    }),
                    Err(error) if error.class == ErrorClass::Item => {
                        let reason = format!("its copy could not be updated: {}", error.message);
                        self.record_item_failure(folder, &message.meta, error.class, reason)
                            .await?;
                        stats.items_failed += 1;
                    }
                    Err(error) => return Err(error),
                }
            }
            self.store.commit_items(checkpoint, &entries).await?;
            updated += entries.len() as u64;
            drop(permit);
        }
        Ok(updated)
    }

    /// Counts keywords the target did not store, and says so once per
    /// batch: never left off silently.
    fn note_refused_keywords(
        &self,
        folder: &SourceFolder,
        refused: &[String],
        stats: &mut PassStats,
    ) {
        if refused.is_empty() {
            return;
        }
        let names: BTreeSet<&str> = refused.iter().map(String::as_str).collect();
        tracing::warn!(mailbox = %self.mailbox.source, folder = %folder.path,
            count = refused.len(), keywords = ?names,
            "the target stores no such keywords; messages copied without them");
        stats.refuse_keywords(refused.iter().map(String::as_str));
    }

    fn batches(&self, items: Vec<ItemMeta>) -> Vec<Vec<ItemMeta>> {
        let mut batches = Vec::new();
        let mut current: Vec<ItemMeta> = Vec::new();
        let mut bytes = 0;
        for item in items {
            let full = current.len() >= self.settings.batch_messages
                || (!current.is_empty() && bytes + weight(&item) > self.settings.batch_bytes);
            if full {
                batches.push(std::mem::take(&mut current));
                bytes = 0;
            }
            bytes += weight(&item);
            current.push(item);
        }
        if !current.is_empty() {
            batches.push(current);
        }
        batches
    }

    fn ledger_entry(
        &self,
        checkpoint: &FolderCheckpoint,
        message: &Message,
        target_id: Option<String>,
    ) -> LedgerEntry {
        LedgerEntry {
            mailbox: self.mailbox.id,
            folder: checkpoint.folder.clone(),
            validity: checkpoint.validity,
            item: message.meta.item.clone(),
            uid: message.meta.uid,
            target_folder: checkpoint.target_folder.clone(),
            target_id,
            size: message.body.len() as u64,
            content_hash: blake3::hash(&message.body).to_hex().to_string(),
            header_hash: header_hash(&message.body),
            flags: message.meta.flags.to_string(),
            source_version: message.meta.version.clone(),
            target_version: None,
            identity: message
                .meta
                .identity
                .clone()
                .unwrap_or_else(|| Identity::of(&message.body))
                .encode(),
        }
    }

    /// A stable name for a source item, independent of the state store.
    fn source_ref(&self, checkpoint: &FolderCheckpoint, item: &str) -> String {
        let mut hasher = blake3::Hasher::new();
        for part in [
            self.mailbox.source.as_bytes(),
            checkpoint.folder.as_bytes(),
            &checkpoint.validity.to_be_bytes(),
            item.as_bytes(),
        ] {
            hasher.update(&(part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        hasher.finalize().to_hex()[..32].to_owned()
    }

    /// Whether a message of `size` bytes exceeds `max_message_bytes`.
    fn oversized(&self, size: u64) -> bool {
        let limit = self.settings.max_message_bytes;
        limit > 0 && size > limit
    }

    /// Records a message of `size` bytes, too large to copy, and skips it.
    async fn skip_oversized(
        &self,
        folder: &SourceFolder,
        item: &ItemMeta,
        size: u64,
        stats: &mut PassStats,
    ) -> Result<(), ConnectorError> {
        let reason = format!(
            "message of {size} bytes exceeds migration.max_message_bytes ({})",
            self.settings.max_message_bytes
        );
        tracing::info!(mailbox = %self.mailbox.source, folder = %folder.path, item = %item.item,
            size, %reason, "item skipped by policy");
        self.record(folder, item, ErrorClass::Item, reason, true)
            .await?;
        stats.items_skipped += 1;
        stats.items_skipped_by_policy += 1;
        Ok(())
    }

    /// Records an item that could not be copied.
    async fn record_item_failure(
        &self,
        folder: &SourceFolder,
        item: &ItemMeta,
        class: ErrorClass,
        reason: String,
    ) -> Result<(), ConnectorError> {
        tracing::warn!(mailbox = %self.mailbox.source, folder = %folder.path, item = %item.item,
            size = item.size, %reason, "item not copied");
        self.record(folder, item, class, reason, false).await
    }

    async fn record(
        &self,
        folder: &SourceFolder,
        item: &ItemMeta,
        class: ErrorClass,
        reason: String,
        policy: bool,
    ) -> Result<(), ConnectorError> {
        self.store
            .record_failure(&ItemFailure {
                mailbox: self.mailbox.id,
                folder: folder.key.clone(),
                scope: FailureScope::Item {
                    item: item.item.clone(),
                    size: item.size,
                },
                class,
                reason,
                pass: self.pass,
                policy,
            })
            .await
    }
}

/// Whether the source item changed since it was copied: both it and its
/// entry have a version (sources without versions have flag changes
/// instead), they differ, and the copy's id is known.
fn changed_since_copy(item: &ItemMeta, entry: &LedgerEntry) -> bool {
    item.version.is_some()
        && entry.source_version.is_some()
        && item.version != entry.source_version
        && entry.target_id.is_some()
}

/// What an item is taken to weigh before its body is read.
fn weight(item: &ItemMeta) -> u64 {
    item.size.unwrap_or(UNKNOWN_SIZE)
}

/// The highest UID among `items` (0 when none has one).
fn highest_uid(items: &[ItemMeta]) -> u32 {
    items.iter().filter_map(|i| i.uid).max().unwrap_or(0)
}

fn batch_size(items: &[ItemMeta]) -> u64 {
    items.iter().map(weight).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(size: Option<u64>) -> ItemMeta {
        ItemMeta {
            item: "x".into(),
            uid: None,
            size,
            flags: Flags::default(),
            internal_date: None,
            identity: None,
            version: None,
        }
    }

    #[tokio::test]
    async fn bodies_of_unknown_size_are_paid_for_once_fetched() {
        let budget = MemoryBudget::new(1024 * 1024);
        let listed = [item(None), item(None)];
        assert_eq!(batch_size(&listed), 2 * UNKNOWN_SIZE);
        assert_eq!(batch_size(&[item(Some(10)), item(None)]), 10 + UNKNOWN_SIZE);
        // An empty message weighs what it is, nothing.
        assert_eq!(batch_size(&[item(Some(0)), item(Some(10))]), 10);

        let mut permit = budget.acquire(batch_size(&listed)).await;
        assert_eq!(permit.num_permits(), 512);
        budget.charge(&mut permit, 700 * 1024);
        assert_eq!(permit.num_permits(), 700, "charged at the real size");
        assert!(budget.try_acquire(400 * 1024).is_none());
        budget.charge(&mut permit, 600 * 1024);
        assert_eq!(permit.num_permits(), 700, "never given back early");
        budget.charge(&mut permit, 2 * 1024 * 1024);
        assert_eq!(permit.num_permits(), 1024, "what is left, without waiting");
        drop(permit);
        assert!(budget.try_acquire(1024 * 1024).is_some());
    }
}
