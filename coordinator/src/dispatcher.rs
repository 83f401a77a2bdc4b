//! The dispatcher: publishes the jobs of running waves, never more than a
//! wave's `migration.max_concurrent_mailboxes` mailboxes queued or running.
//!
//! # Idempotent publishing
//!
//! A job is published in three steps: the mailbox is marked in the store
//! (`Queued` for its next pass, job unconfirmed: [`Store::mark_published`]),
//! the job is published (the queue confirms it), and the mark is confirmed
//! ([`Store::confirm_published`]). The mark comes first so that a mailbox is
//! never published twice by a coordinator that restarts: a confirmed job is
//! never published again, and a mailbox needing a pass is marked (once: the
//! mark is a conditional update) before its job exists.
//!
//! A coordinator that stops between the mark and the confirmation cannot
//! know whether the queue got the job, so the next round (of this or of a
//! restarted coordinator) publishes every marked but unconfirmed job again
//! ([`Store::unpublished_jobs`]); the reaper's re-queued passes travel the
//! same way. A job published twice is harmless: the first worker to take it
//! starts the pass and holds the mailbox's lease, and the duplicate finds
//! the lease taken ([`Store::acquire_lease`]) or the pass no longer queued or
//! running ([`Store::start_pass`]), and is dropped as stale.

use std::sync::Arc;
use std::time::Duration;

use mailwave_common::config::MigrationConfig;
use mailwave_common::model::{Job, WaveId, WaveRecord, WaveState};
use mailwave_common::queue::JobQueue;
use mailwave_common::store::Store;
use tokio::sync::{Notify, watch};

use crate::wave::WaveError;

/// The `[migration]` settings of a wave's stored configuration; defaults for
/// a wave without any (e.g. one of `mailwave run`).
pub fn wave_migration(wave: &WaveRecord) -> MigrationConfig {
    wave.config
        .get("migration")
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .unwrap_or_default()
}

/// What one round of the dispatcher did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DispatchReport {
    /// Jobs of passes published for the first time.
    pub published: Vec<Job>,
    /// Jobs marked earlier but not known to be on the queue, published again.
    pub republished: Vec<Job>,
    /// Waves whose final pass ended in this round.
    pub completed: Vec<WaveId>,
}

/// One round over every running wave.
pub async fn dispatch_once(
    store: &dyn Store,
    queue: &dyn JobQueue,
) -> Result<DispatchReport, WaveError> {
    let mut report = DispatchReport::default();
    for wave in store.waves().await? {
        if wave.state != WaveState::Running {
            continue;
        }
        // Marked but unconfirmed jobs already count as in flight.
        for job in store.unpublished_jobs(wave.id).await? {
            queue.publish(&job).await?;
            store.confirm_published(job.mailbox, job.pass).await?;
            report.republished.push(job);
        }
        let cap = wave_migration(&wave).max_concurrent_mailboxes as u64;
        let in_flight = store.in_flight(wave.id).await?;
        let room = cap.saturating_sub(in_flight) as usize;
        if room > 0 {
            for job in store.next_to_publish(wave.id, room).await? {
                if !store.mark_published(job.mailbox, job.pass).await? {
                    continue; // paused, cancelled or changed meanwhile
                }
                queue.publish(&job).await?;
                store.confirm_published(job.mailbox, job.pass).await?;
                report.published.push(job);
            }
        }
        if wave.final_pass && store.complete_wave_if_done(wave.id).await? {
            tracing::info!(wave = %wave.name, "final pass done: wave completed");
            report.completed.push(wave.id);
        }
    }
    Ok(report)
}

/// Runs [`dispatch_once`] every `interval`, and at once when `wake` is
/// notified (the API after start, resume, sync or complete), until
/// `shutdown` turns true. Failures are logged and retried next round.
pub async fn run(
    store: Arc<dyn Store>,
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
