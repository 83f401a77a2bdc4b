//! Planning and following a wave: mailboxes into the store, one job per
//! mailbox pass onto the queue, and waiting for the pass to end.

use std::time::Duration;

use mailwave_common::model::{Job, MailboxRecord, MailboxSpec, WaveId};
use mailwave_common::queue::{JobQueue, QueueError};
use mailwave_common::store::{StoreError, WaveStore};

/// A failure while planning or following a wave.
#[derive(Debug, thiserror::Error)]
pub enum WaveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// A wave's mailboxes, as planned for this pass.
#[derive(Debug)]
pub struct PlannedPass {
    pub wave: WaveId,
    pub jobs: Vec<Job>,
}

/// Adds the mailboxes to the wave (keeping the progress of those already in
/// it) and publishes the next pass of each: the first pass copies
/// everything, every later one is a delta pass.
pub async fn plan_pass(
    store: &dyn WaveStore,
    queue: &dyn JobQueue,
    wave_name: &str,
    mailboxes: &[MailboxSpec],
) -> Result<PlannedPass, WaveError> {
    let wave = store.ensure_wave(wave_name).await?;
    let records = store.add_mailboxes(wave, mailboxes).await?;
    let mut jobs = Vec::with_capacity(records.len());
    for record in &records {
        let pass = store.queue_pass(record.id).await?;
        let job = Job {
            wave,
            mailbox: record.id,
            pass,
        };
        jobs.push(job);
    }
    queue.publish(&jobs).await?;
    Ok(PlannedPass { wave, jobs })
}

/// Waits until every job's mailbox has ended its pass, and returns the
/// mailboxes' records in job order.
pub async fn wait_for_pass(
    store: &dyn WaveStore,
    planned: &PlannedPass,
    poll: Duration,
) -> Result<Vec<MailboxRecord>, WaveError> {
    loop {
        let records = pass_records(store, planned).await?;
        if records.iter().all(|r| r.state.is_terminal()) {
            return Ok(records);
        }
        tokio::time::sleep(poll).await;
    }
}

/// The current records of the pass's mailboxes, in job order.
pub async fn pass_records(
    store: &dyn WaveStore,
    planned: &PlannedPass,
) -> Result<Vec<MailboxRecord>, WaveError> {
    let all = store.mailboxes(planned.wave).await?;
    let by_id: std::collections::HashMap<_, _> = all.into_iter().map(|r| (r.id, r)).collect();
    Ok(planned
        .jobs
        .iter()
        .filter_map(|job| by_id.get(&job.mailbox).cloned())
        .collect())
}

#[cfg(test)]
mod tests {
    use mailwave_common::model::{MailboxState, PassStats};
    use mailwave_common::queue::MemoryQueue;
    use mailwave_common::store::{LeaseStore, PassOutcome, SqliteStore};

    use super::*;

    fn specs(n: usize) -> Vec<MailboxSpec> {
        (0..n)
            .map(|i| MailboxSpec {
                source: format!("user{i}@old"),
                target: format!("user{i}@new"),
            })
            .collect()
    }

    #[tokio::test]
    async fn each_run_plans_the_next_pass_of_every_mailbox() {
        let store = SqliteStore::in_memory().unwrap();
        let queue = MemoryQueue::new();
        let first = plan_pass(&store, &queue, "w", &specs(3)).await.unwrap();
        assert_eq!(first.jobs.len(), 3);
        assert!(first.jobs.iter().all(|j| j.pass == 1));

        for job in &first.jobs {
            let delivery = queue.next().await.unwrap().unwrap();
            assert_eq!(delivery.job(), job);
            let lease = store
                .acquire_lease(job.mailbox, job.pass, "w", Duration::from_secs(60))
                .await
                .unwrap()
                .unwrap();
            assert!(store.start_pass(&lease).await.unwrap());
            let outcome = PassOutcome {
                state: MailboxState::Completed,
                error: None,
                stats: PassStats::default(),
            };
            store.finish_pass(&lease, &outcome).await.unwrap();
            delivery.ack().await.unwrap();
        }
        let records = wait_for_pass(&store, &first, Duration::from_millis(1))
            .await
            .unwrap();
        assert!(records.iter().all(|r| r.state == MailboxState::Completed));

        let second = plan_pass(&store, &queue, "w", &specs(4)).await.unwrap();
        let passes: Vec<_> = second.jobs.iter().map(|j| j.pass).collect();
        assert_eq!(
            passes,
            [2, 2, 2, 1],
            "a delta pass, and a first pass for the new mailbox"
        );
        assert_eq!(second.wave, first.wave);
    }
}
