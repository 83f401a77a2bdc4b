//! The job consumer, the same in both modes: `mailwave run` runs it in
//! process against SQLite and the in-process queue, `mailwave-worker serve`
//! against PostgreSQL and RabbitMQ. What differs is a [`ConsumerSettings`]
//! (the worker's name, the lease TTL, the shutdown grace) and where a job's
//! wave configuration comes from ([`WaveConfigs`]).
//!
//! # Job ownership: the lease, not the message
//!
//! For each delivery the consumer first takes the mailbox's lease in the
//! store ([`LeaseStore::acquire_lease`]). Refused: another worker owns the
//! mailbox (a duplicate or stale job), the message is acknowledged and
//! dropped. Taken: the message is acknowledged at once, because from now on
//! the lease is what says who owns the mailbox; a copy of many hours
//! therefore never meets RabbitMQ's consumer acknowledgement timeout.
//! A job the store can never lease (its mailbox does not exist: a job of
//! another deployment, or of a database that was reset) is a poison job: it
//! is rejected, and RabbitMQ moves it to the dead-letter queue.
//!
//! While the pass runs, a [`LeaseKeeper`] renews the lease every third of
//! its TTL, and every store write of the pass is fenced by the lease's
//! token. A renewal answered `false`, a write refused, or no successful
//! renewal for the TTL less a margin by the worker's own clock (the store
//! unreachable, the process frozen) means the lease may be someone else's
//! now: the job stops at once, the batch in hand is dropped, and no outcome
//! is recorded. A worker that dies simply stops renewing; the coordinator's
//! reaper re-queues its mailboxes once the lease expired (`mailwave run`
//! takes its own back at its next start, [`WaveStore::request_passes`]).
//!
//! # Stopping
//!
//! When `shutdown` completes, no new job is taken, running jobs are
//! cancelled (the engine stops at its next batch boundary, after committing
//! that batch), and each interrupted mailbox is handed back
//! ([`LeaseStore::hand_back`]: lease dropped, pass queued again for the
//! dispatcher to publish). With a grace time, a job still busy when it is
//! nearly spent is handed back anyway: the exactly-once rules of the engine
//! cover an append interrupted by the process's exit exactly as they cover a
//! crash.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailwave_common::config::Config;
use mailwave_common::model::{Job, Lease, MailboxId, MailboxState, PassStats};
use mailwave_common::queue::{Delivery, JobQueue};
use mailwave_common::retry::Budgets;
use mailwave_common::store::{PassOutcome, StoreError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::credentials::WavePolicy;
use crate::job::{JobOutcome, WaveSettings, WorkerContext, run_job};
use crate::lease::LeaseKeeper;

/// How one consumer process differs from another.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// The worker's name in leases. A live lease of the same name is taken
    /// over (a restarted worker), so two processes must never share one.
    pub worker_id: String,
    pub lease_ttl: Duration,
    /// Jobs run at once; a job is taken only for a free slot.
    pub concurrency: usize,
    /// After `shutdown`, how long running jobs may take to reach their
    /// checkpoint before they are handed back anyway; `None`: as long as
    /// they take.
    pub grace: Option<Duration>,
    /// Notified whenever a job has ended and its lease is settled (the
    /// in-process dispatcher of `mailwave run` publishes the next one).
    pub job_ended: Option<Arc<Notify>>,
}

/// Where a job's wave configuration comes from.
pub enum WaveConfigs {
    /// `mailwave run`: its own configuration file, for its one wave.
    Run(Arc<WaveSettings>),
    /// Distributed mode: each wave's stored configuration, as far as this
    /// worker's policy accepts it.
    Stored(WavePolicy),
}

/// Serves jobs from `queue` until the queue is closed and drained, or until
/// `shutdown` completes; then stops as described in the module's docs.
pub async fn serve(
    ctx: Arc<WorkerContext>,
    waves: WaveConfigs,
    settings: ConsumerSettings,
    queue: Arc<dyn JobQueue>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let consumer = Arc::new(Consumer {
        ctx,
        waves,
        jobs_stop: CancellationToken::new(),
        running: Mutex::new(HashMap::new()),
        settings,
    });
    tracing::info!(worker = %consumer.settings.worker_id,
        concurrency = consumer.settings.concurrency, "worker serving");
    let slots: Vec<_> = (0..consumer.settings.concurrency.max(1))
        .map(|_| {
            let consumer = Arc::clone(&consumer);
            let queue = Arc::clone(&queue);
            tokio::spawn(async move { consumer.consume(queue.as_ref()).await })
        })
        .collect();
    let mut all = futures::future::join_all(slots);
    let finished = tokio::select! {
        results = &mut all => Some(results),
        () = shutdown => None,
    };
    let results = match finished {
        Some(results) => results,
        None => {
            consumer.jobs_stop.cancel();
            match consumer.settings.grace {
                None => all.await,
                Some(grace) => {
                    // Keep a little of the grace time for the forced hand-back.
                    let wait = grace.saturating_sub((grace / 4).min(Duration::from_secs(5)));
                    match tokio::time::timeout(wait, &mut all).await {
                        Ok(results) => results,
                        Err(_) => {
                            consumer.hand_back_running().await;
                            tracing::info!(worker = %consumer.settings.worker_id, "worker stopped");
                            return Ok(());
                        }
                    }
                }
            }
        }
    };
    for result in results {
        result.map_err(|error| anyhow::anyhow!("job consumer task: {error}"))?;
    }
    tracing::info!(worker = %consumer.settings.worker_id, "worker stopped");
    Ok(())
}

/// What taking a job's lease came to.
enum Claim {
    /// The lease is this worker's: run the job.
    Ours(Lease),
    /// Another worker holds a live lease: the job is a duplicate or stale.
    Another,
    /// The store refused for good (e.g. no such mailbox): a poison job.
    Impossible(StoreError),
    /// Shutdown came before the store answered.
    ShuttingDown,
}

/// One consumer process: its context, its leases.
struct Consumer {
    ctx: Arc<WorkerContext>,
    waves: WaveConfigs,
    settings: ConsumerSettings,
    /// Cancelled at shutdown: every running job stops at its next checkpoint.
    jobs_stop: CancellationToken,
    /// The leases of the jobs running now, by mailbox, for the hand-back
    /// when the grace time runs out.
    running: Mutex<HashMap<MailboxId, Lease>>,
}

impl Consumer {
    /// Takes jobs one after the other until shutdown or the queue's end.
    async fn consume(&self, queue: &dyn JobQueue) {
        loop {
            let next = tokio::select! {
                next = queue.next() => next,
                () = self.jobs_stop.cancelled() => return,
            };
            let delivery = match next {
                Ok(Some(delivery)) => delivery,
                Ok(None) => return,
                Err(error) => {
                    // The queue reconnects on its own; try again shortly.
                    tracing::warn!(%error, "taking a job failed; retrying");
                    tokio::select! {
                        () = self.ctx.sleep.sleep(Budgets::default().queue.delay(0)) => continue,
                        () = self.jobs_stop.cancelled() => return,
                    }
                }
            };
            self.take(delivery).await;
            if let Some(ended) = &self.settings.job_ended {
                ended.notify_one();
            }
        }
    }

    /// One delivery: the lease, the ack, the job, the lease's end.
    async fn take(&self, delivery: Box<dyn Delivery>) {
        let job = delivery.job().clone();
        let acquired = tokio::time::Instant::now();
        let claim = self.claim(&job).await;
        let settled = match &claim {
            // Shutting down before the store answered: the job goes back.
            Claim::ShuttingDown => delivery.requeue().await,
            Claim::Impossible(error) => {
                tracing::error!(?job, %error, "no worker can run this job: dead-lettering it");
                delivery.reject().await
            }
            // Ours or another worker's, the lease owns the mailbox from now
            // on: the message has served its purpose.
            Claim::Ours(_) | Claim::Another => delivery.ack().await,
        };
        if let Err(error) = settled {
            tracing::warn!(?job, %error, "could not settle a job (it may come again and will be dropped)");
        }
        let lease = match claim {
            Claim::Ours(lease) => lease,
            Claim::Another => {
                tracing::info!(?job, "mailbox leased by another worker: job dropped");
                return;
            }
            Claim::ShuttingDown | Claim::Impossible(_) => return,
        };
        self.running
            .lock()
            .expect("lock")
            .insert(job.mailbox, lease.clone());
        self.run_leased(&job, lease, acquired).await;
        self.running.lock().expect("lock").remove(&job.mailbox);
    }

    /// Takes the lease, retrying while the store is unavailable.
    async fn claim(&self, job: &Job) -> Claim {
        let mut backoff = Budgets::default().lease_claim.start();
        loop {
            let error = match self
                .ctx
                .store
                .acquire_lease(
                    job.mailbox,
                    job.pass,
                    &self.settings.worker_id,
                    self.settings.lease_ttl,
                )
                .await
            {
                Ok(Some(lease)) => return Claim::Ours(lease),
                Ok(None) => return Claim::Another,
                Err(error) => error,
            };
            let Ok(delay) = backoff.next(&error) else {
                return Claim::Impossible(error);
            };
            tracing::warn!(?job, %error, ?delay, "taking the lease failed; retrying");
            tokio::select! {
                () = self.ctx.sleep.sleep(delay) => {}
                () = self.jobs_stop.cancelled() => return Claim::ShuttingDown,
            }
        }
    }

    /// Runs a job whose lease this worker holds, keeping the lease.
    async fn run_leased(&self, job: &Job, lease: Lease, acquired: tokio::time::Instant) {
        let stop = self.jobs_stop.child_token();
        let keeper = LeaseKeeper::start(
            self.ctx.store.clone(),
            lease,
            self.settings.lease_ttl,
            acquired,
        );
        let result = self.run_with_wave_config(job, &keeper, &stop).await;
        keeper.stop();
        match result {
            // Someone else may own the mailbox: nothing of ours to record.
            Ok(JobOutcome::LeaseLost) => {
                tracing::warn!(?job, "lease lost: the job stopped, nothing recorded");
            }
            Ok(JobOutcome::Finished(state)) => {
                tracing::info!(?job, ?state, "job finished");
                self.release(keeper.lease()).await;
            }
            Ok(JobOutcome::Stale) => self.release(keeper.lease()).await,
            Ok(JobOutcome::Interrupted) => self.give_back(keeper.lease()).await,
            Err(error) => {
                tracing::error!(?job, %error, "the store failed; handing the mailbox back");
                self.give_back(keeper.lease()).await;
            }
        }
    }

    /// Runs the job with its wave's configuration; a configuration no
    /// worker could use fails the pass.
    async fn run_with_wave_config(
        &self,
        job: &Job,
        keeper: &LeaseKeeper,
        stop: &CancellationToken,
    ) -> Result<JobOutcome, StoreError> {
        let wave = match &self.waves {
            WaveConfigs::Run(wave) => Arc::clone(wave),
            WaveConfigs::Stored(policy) => {
                let stored = self.ctx.store.wave(job.wave).await?;
                let prepared = match stored.config.config() {
                    Ok(Some(config)) => policy.prepare(Config::clone(config)),
                    Ok(None) => Err("the wave has no configuration".to_owned()),
                    Err(unreadable) => Err(unreadable.to_string()),
                };
                match prepared {
                    Ok(config) => Arc::new(WaveSettings::new(config)),
                    Err(error) => return self.fail_unusable(keeper, &error).await,
                }
            }
        };
        run_job(&self.ctx, &wave, job, keeper, stop).await
    }

    /// Nothing any worker could do with the wave's configuration: the pass
    /// fails with the reason.
    async fn fail_unusable(
        &self,
        keeper: &LeaseKeeper,
        error: &str,
    ) -> Result<JobOutcome, StoreError> {
        let store = &self.ctx.store;
        let lease = keeper.lease();
        match store.start_pass(lease).await {
            Ok(true) => {}
            Ok(false) => return Ok(JobOutcome::Stale),
            Err(StoreError::LeaseLost { .. }) => return Ok(JobOutcome::LeaseLost),
            Err(error) => return Err(error),
        }
        let outcome = PassOutcome {
            state: MailboxState::Failed,
            error: Some(format!("the wave's configuration is unusable: {error}")),
            stats: PassStats::default(),
        };
        match store.finish_pass(lease, &outcome).await {
            Ok(()) => Ok(JobOutcome::Finished(MailboxState::Failed)),
            Err(StoreError::LeaseLost { .. }) => Ok(JobOutcome::LeaseLost),
            Err(error) => Err(error),
        }
    }

    async fn release(&self, lease: &Lease) {
        if let Err(error) = self.ctx.store.release_lease(lease).await {
            tracing::warn!(?lease, %error, "releasing the lease failed (it will expire)");
        }
    }

    /// Hands an interrupted mailbox back for another worker (or the next
    /// `mailwave run`).
    async fn give_back(&self, lease: &Lease) {
        match self.ctx.store.hand_back(lease).await {
            Ok(true) => tracing::info!(?lease, "mailbox handed back"),
            Ok(false) => {
                let _ = self.ctx.store.release_lease(lease).await;
            }
            Err(error) => tracing::warn!(?lease, %error,
                "handing the mailbox back failed; the reaper will once its lease expires"),
        }
    }

    /// The grace time is spent: every job still running is handed back.
    async fn hand_back_running(&self) {
        let left: Vec<Lease> = self
            .running
            .lock()
            .expect("lock")
            .drain()
            .map(|(_, lease)| lease)
            .collect();
        tracing::warn!(
            jobs = left.len(),
            "grace time spent; handing back the jobs still running"
        );
        for lease in left {
            self.give_back(&lease).await;
        }
    }
}
