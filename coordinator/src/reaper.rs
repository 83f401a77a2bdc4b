//! The reaper: finds mailboxes whose worker's lease expired (the worker died
//! or lost the store) and re-queues their pass, or fails it once the wave's
//! `migration.max_attempts` are spent ("worker lost N times"). The re-queued
//! pass's job is published again by the dispatcher (see `dispatcher`).
//!
//! Workers own a mailbox through their lease in the store, renewed while
//! they copy, not through the unacknowledged queue message; so a copy of
//! many hours never depends on the broker's acknowledgement timeout, and a
//! dead worker's mailbox comes back within the lease's TTL plus one reaper
//! interval.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mailwave_common::model::MailboxId;
use mailwave_common::store::{ReapOutcome, StoreError, WaveStore};
use tokio::sync::watch;

/// One round: every expired lease, reaped. Returns what was done, by mailbox.
pub async fn reap_once(store: &dyn WaveStore) -> Result<Vec<(MailboxId, ReapOutcome)>, StoreError> {
    let mut max_attempts = HashMap::new();
    let mut reaped = Vec::new();
    for (mailbox, pass, worker) in store.expired_leases().await? {
        let wave = store.mailbox(mailbox).await?.wave;
        let max = match max_attempts.get(&wave) {
            Some(&max) => max,
            None => {
                // A wave whose configuration cannot be read runs nothing:
                // its pass is re-queued, never failed on a guessed limit.
                let max = match store.wave(wave).await?.config.migration() {
                    Ok(migration) => i64::from(migration.max_attempts),
                    Err(unreadable) => {
                        tracing::error!(wave, %unreadable, "re-queueing without an attempt limit");
                        i64::MAX
                    }
                };
                max_attempts.insert(wave, max);
                max
            }
        };
        if let Some(outcome) = store.reap_lease(mailbox, pass, &worker, max).await? {
            tracing::warn!(mailbox, pass, %worker, ?outcome, "worker lost: lease expired");
            reaped.push((mailbox, outcome));
        }
    }
    Ok(reaped)
}

/// Runs [`reap_once`] every `interval` until `shutdown` turns true.
pub async fn run(
    store: Arc<dyn WaveStore>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    while !*shutdown.borrow() {
        if let Err(error) = reap_once(store.as_ref()).await {
            tracing::warn!(%error, "reaper round failed; retrying");
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => {}
        }
    }
}
