//! `mailwave run`'s wave: its mailboxes into the store, each asked for its
//! next pass (which the dispatcher publishes), and following the pass.

use mailwave_common::config::Config;
use mailwave_common::model::{Job, MailboxRecord, MailboxSpec, WaveId, WaveState};
use mailwave_common::queue::QueueError;
use mailwave_common::store::{StoreError, WaveAction, WaveStore};

/// A failure while planning or following a wave.
#[derive(Debug, thiserror::Error)]
pub enum WaveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// A wave's mailboxes, as asked for this pass.
#[derive(Debug)]
pub struct PlannedPass {
    pub wave: WaveId,
    /// The pass asked of each mailbox, in the order given.
    pub jobs: Vec<Job>,
}

impl PlannedPass {
    /// How many of `records` (in job order, [`pass_records`]) ended the
    /// pass asked of them.
    pub fn ended(&self, records: &[MailboxRecord]) -> usize {
        self.jobs
            .iter()
            .zip(records)
            .filter(|(job, record)| record.pass >= job.pass && record.state.is_terminal())
            .count()
    }
}

/// `mailwave run`'s step before its dispatcher ([`crate::dispatcher`])
/// publishes the jobs: the wave, the run's configuration stored for the
/// dispatcher's caps; the mailboxes added (those already in it keep their
/// progress) and each asked for its next pass (the first copies everything,
/// every later one is a delta pass, one that was interrupted resumes from
/// its checkpoints); and the wave running, alone: the waves of earlier runs
/// on the same state file are paused, so that nothing of theirs is
/// published with this run's configuration.
pub async fn request_pass(
    store: &dyn WaveStore,
    wave_name: &str,
    config: &Config,
    mailboxes: &[MailboxSpec],
) -> Result<PlannedPass, WaveError> {
    let wave = store.ensure_wave(wave_name, config).await?;
    for other in store.waves().await? {
        if other.id != wave && other.state == WaveState::Running {
            store
                .transition_wave(
                    other.id,
                    &[WaveState::Running],
                    Some(WaveState::Paused),
                    WaveAction::None,
                )
                .await?;
        }
    }
    let records = store.add_mailboxes(wave, mailboxes).await?;
    let ids: Vec<_> = records.iter().map(|r| r.id).collect();
    store.request_passes(&ids).await?;
    let jobs = records
        .iter()
        .map(|r| Job {
            wave,
            mailbox: r.id,
            pass: r.pass + 1,
        })
        .collect();
    store
        .transition_wave(
            wave,
            &[WaveState::Created, WaveState::Running, WaveState::Paused],
            Some(WaveState::Running),
            WaveAction::None,
        )
        .await?;
    Ok(PlannedPass { wave, jobs })
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
    use std::time::Duration;

    use mailwave_common::model::{MailboxState, PassStats};
    use mailwave_common::queue::{JobQueue, MemoryQueue};
    use mailwave_common::store::{LeaseStore, PassOutcome, RecordStore, SqliteStore};

    use super::*;
    use crate::dispatcher::dispatch_once;

    fn specs(n: usize) -> Vec<MailboxSpec> {
        (0..n)
            .map(|i| MailboxSpec {
                source: format!("user{i}@old"),
                target: format!("user{i}@new"),
            })
            .collect()
    }

    /// A run's configuration with this `max_concurrent_mailboxes`.
    fn config(max_concurrent_mailboxes: usize) -> Config {
        Config::from_toml_str(&format!(
            "[source]\nkind = \"maildir\"\npath = \"/srv/old/{{mailbox}}\"\n\
             [target]\nkind = \"maildir\"\npath = \"/srv/new/{{mailbox}}\"\n\
             [migration]\nmax_concurrent_mailboxes = {max_concurrent_mailboxes}\n"
        ))
        .unwrap()
    }

    /// Takes `n` jobs from the queue and completes their passes.
    async fn complete(store: &SqliteStore, queue: &MemoryQueue, n: usize) {
        for _ in 0..n {
            let delivery = queue.next().await.unwrap().unwrap();
            let job = delivery.job().clone();
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
    }

    /// Each run asks for the next pass of every mailbox, and the dispatcher
    /// publishes them within the run's `max_concurrent_mailboxes`.
    #[tokio::test]
    async fn each_run_asks_for_the_next_pass_within_the_runs_cap() {
        let store = SqliteStore::in_memory().unwrap();
        let queue = MemoryQueue::new();
        let first = request_pass(&store, "w", &config(2), &specs(3))
            .await
            .unwrap();
        assert_eq!(first.jobs.len(), 3);
        let report = dispatch_once(&store, &queue).await.unwrap();
        assert_eq!(report.published.len(), 2, "at most the run's cap in flight");
        assert!(report.published.iter().all(|j| j.pass == 1));
        complete(&store, &queue, 2).await;
        let report = dispatch_once(&store, &queue).await.unwrap();
        assert_eq!(report.published.len(), 1, "the third once a slot is free");
        complete(&store, &queue, 1).await;
        let records = pass_records(&store, &first).await.unwrap();
        assert!(records.iter().all(|r| r.state == MailboxState::Completed));
        assert_eq!(first.ended(&records), 3);

        let second = request_pass(&store, "w", &config(10), &specs(4))
            .await
            .unwrap();
        assert_eq!(second.wave, first.wave);
        let records = pass_records(&store, &second).await.unwrap();
        assert_eq!(second.ended(&records), 0, "the earlier pass does not count");
        let report = dispatch_once(&store, &queue).await.unwrap();
        let passes: Vec<_> = report.published.iter().map(|j| j.pass).collect();
        assert_eq!(
            passes,
            [2, 2, 2, 1],
            "a delta pass, and a first pass for the new mailbox"
        );
    }

    /// A run of another wave on the same state file pauses the earlier
    /// wave: a pass it left handed back is not published with this run's
    /// configuration.
    #[tokio::test]
    async fn a_run_of_another_wave_publishes_nothing_of_the_earlier_one() {
        let store = SqliteStore::in_memory().unwrap();
        let queue = MemoryQueue::new();
        let earlier = request_pass(&store, "earlier", &config(5), &specs(1))
            .await
            .unwrap();
        let report = dispatch_once(&store, &queue).await.unwrap();
        let job = &report.published[0];
        let lease = store
            .acquire_lease(job.mailbox, job.pass, "w", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        assert!(store.start_pass(&lease).await.unwrap());
        assert!(store.hand_back(&lease).await.unwrap(), "interrupted");
        queue.next().await.unwrap().unwrap().ack().await.unwrap();

        let other = vec![MailboxSpec {
            source: "someone@else".into(),
            target: "someone@new".into(),
        }];
        let later = request_pass(&store, "later", &config(5), &other)
            .await
            .unwrap();
        let report = dispatch_once(&store, &queue).await.unwrap();
        assert_eq!(
            report.published,
            [Job {
                wave: later.wave,
                mailbox: later.jobs[0].mailbox,
                pass: 1,
            }]
        );
        assert!(report.republished.is_empty(), "{report:?}");
        assert_eq!(
            store.wave(earlier.wave).await.unwrap().state,
            WaveState::Paused
        );
    }
}
