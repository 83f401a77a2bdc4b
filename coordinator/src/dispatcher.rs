//! The dispatcher: publishes the jobs of running waves, never more than a
//! wave's `migration.max_concurrent_mailboxes` mailboxes queued or running,
//! and never more than that between one pair of source and target servers
//! when several waves run between them (the smallest of their caps).
//!
//! # Idempotent publishing
//!
//! Jobs are published in batches, each in three steps: the mailboxes are
//! marked in the store (`Queued` for their next pass, jobs unconfirmed:
//! [`WaveStore::mark_published`]), the jobs are published (the queue confirms
//! them), and the marks are confirmed ([`WaveStore::confirm_published`]). Each
//! step is one round trip for the whole batch. The mark comes first so that a mailbox is
//! never published twice by a coordinator that restarts: a confirmed job is
//! never published again, and a mailbox needing a pass is marked (once: the
//! mark is a conditional update) before its job exists.
//!
//! A coordinator that stops between the mark and the confirmation cannot
//! know whether the queue got the job, so the next round (of this or of a
//! restarted coordinator) publishes every marked but unconfirmed job again
//! ([`WaveStore::unpublished_jobs`]); the reaper's re-queued passes travel the
//! same way. A job published twice is harmless: the first worker to take it
//! starts the pass and holds the mailbox's lease, and the duplicate finds
//! the lease taken ([`LeaseStore::acquire_lease`]) or the pass no longer queued or
//! running ([`LeaseStore::start_pass`]), and is dropped as stale.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mailwave_common::config::{Config, MigrationConfig};
use mailwave_common::model::{Job, WaveId, WaveRecord, WaveState};
use mailwave_common::queue::JobQueue;
use mailwave_common::store::WaveStore;
use tokio::sync::{Notify, watch};

use crate::wave::WaveError;

/// Jobs marked, published and confirmed together: three round trips per
/// batch rather than per job.
const BATCH: usize = 2000;

/// What one round of the dispatcher did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DispatchReport {
    /// Jobs of passes published for the first time.
    pub published: Vec<Job>,
    /// Jobs marked earlier but not known to be on the queue, published again.
    pub republished: Vec<Job>,
    /// Waves whose final pass ended in this round.
    pub completed: Vec<WaveId>,
    /// Waves left alone because their stored configuration cannot be read
    /// (nothing of theirs is published until it can), and why.
    pub unreadable: Vec<(WaveId, String)>,
}

/// The source and target servers of a wave (see
/// [`EndpointConfig::server`]); a wave without a configuration of its own is
/// a pair of its own.
fn endpoint_pair(wave: &WaveRecord, config: Option<&Config>) -> String {
    match config {
        Some(config) => format!("{} -> {}", config.source.server(), config.target.server()),
        None => format!("wave {}", wave.id),
    }
}

/// Mailboxes in flight between one pair of servers, and the most allowed:
/// the smallest `max_concurrent_mailboxes` of the running waves between them.
#[derive(Debug, Clone, Copy)]
struct PairBudget {
    in_flight: u64,
    cap: u64,
}

/// One round over every running wave: no wave has more than its own
/// `max_concurrent_mailboxes` mailboxes in flight, and no pair of servers
/// more than the smallest cap of the waves between them.
pub async fn dispatch_once(
    store: &dyn WaveStore,
    queue: &dyn JobQueue,
) -> Result<DispatchReport, WaveError> {
    let mut report = DispatchReport::default();
    let mut waves = Vec::new();
    let mut pairs: HashMap<String, PairBudget> = HashMap::new();
    for wave in store.waves().await? {
        if wave.state != WaveState::Running {
            continue;
        }
        let config = match wave.config.config() {
            Ok(config) => config.cloned(),
            Err(unreadable) => {
                tracing::error!(wave = %wave.name, %unreadable, "wave not dispatched");
                report.unreadable.push((wave.id, unreadable.to_string()));
                continue;
            }
        };
        let cap = config
            .as_ref()
            .map_or_else(MigrationConfig::default, |c| c.migration.clone())
            .max_concurrent_mailboxes as u64;
        // Marked but unconfirmed jobs already count as in flight.
        for batch in store.unpublished_jobs(wave.id).await?.chunks(BATCH) {
            queue.publish(batch).await?;
            store.confirm_published(batch).await?;
            report.republished.extend_from_slice(batch);
        }
        store.compact_wave_counts(wave.id).await?;
        let in_flight = store.in_flight(wave.id).await?;
        let pair = endpoint_pair(&wave, config.as_deref());
        let budget = pairs
            .entry(pair.clone())
            .or_insert(PairBudget { in_flight: 0, cap });
        budget.in_flight += in_flight;
        budget.cap = budget.cap.min(cap);
        waves.push((wave, cap, in_flight, pair));
    }
    for (wave, cap, in_flight, pair) in waves {
        let budget = pairs.get_mut(&pair).expect("every pair is counted");
        let mut room = cap
            .saturating_sub(in_flight)
            .min(budget.cap.saturating_sub(budget.in_flight)) as usize;
        // While one batch is published and confirmed, the next is marked:
        // the store and the queue work at the same time.
        let mut next = mark_next(store, wave.id, &mut room).await?;
        while let Some(marked) = next {
            let (following, published) = tokio::join!(
                mark_next(store, wave.id, &mut room),
                publish_marked(store, queue, &marked)
            );
            published?;
            budget.in_flight += marked.len() as u64;
            report.published.extend(marked);
            next = following?;
        }
        if wave.final_pass && store.complete_wave_if_done(wave.id).await? {
            tracing::info!(wave = %wave.name, "final pass done: wave completed");
            report.completed.push(wave.id);
        }
    }
    Ok(report)
}

/// Marks the next jobs of `wave` to publish, at most `room` (less what it
/// looked at); `None` when there are none left or no room.
async fn mark_next(
    store: &dyn WaveStore,
    wave: WaveId,
    room: &mut usize,
) -> Result<Option<Vec<Job>>, WaveError> {
    if *room == 0 {
        return Ok(None);
    }
    let next = store.next_to_publish(wave, (*room).min(BATCH)).await?;
    if next.is_empty() {
        return Ok(None);
    }
    *room -= next.len();
    // Left out: paused, cancelled or changed meanwhile.
    Ok(Some(store.mark_published(&next).await?))
}

/// Publishes marked jobs and confirms them.
async fn publish_marked(
    store: &dyn WaveStore,
    queue: &dyn JobQueue,
    marked: &[Job],
) -> Result<(), WaveError> {
    queue.publish(marked).await?;
    store.confirm_published(marked).await?;
    Ok(())
}

/// Runs [`dispatch_once`] every `interval`, and at once when `wake` is
/// notified (the API after start, resume, sync or complete), until
/// `shutdown` turns true. Failures are logged and retried next round.
pub async fn run(
    store: Arc<dyn WaveStore>,
    queue: Arc<dyn JobQueue>,
    interval: Duration,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    while !*shutdown.borrow() {
        match dispatch_once(store.as_ref(), queue.as_ref()).await {
            Ok(report) if !report.published.is_empty() || !report.republished.is_empty() => {
                tracing::debug!(
                    published = report.published.len(),
                    republished = report.republished.len(),
                    "dispatched"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "dispatcher round failed; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = wake.notified() => {}
            _ = shutdown.changed() => {}
        }
    }
}
