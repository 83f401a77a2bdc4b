//! `mailwave-worker serve`: the worker of distributed mode. It takes jobs
//! from RabbitMQ and keeps all of its state in PostgreSQL, so any number of
//! workers can be started, stopped or killed at any moment.
//!
//! # Job ownership: the lease, not the message
//!
//! For each delivery the worker first takes the mailbox's lease in the store
//! ([`LeaseStore::acquire_lease`], `lease_ttl_secs`). Refused: another worker
//! owns the mailbox (a duplicate or stale job), the message is acknowledged
//! and dropped. Taken: the message is acknowledged at once, because from now
//! on the lease is what says who owns the mailbox; a copy of many hours
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
//! reaper re-queues its mailboxes once the lease expired.
//!
//! # Graceful shutdown
//!
//! SIGTERM or SIGINT: no new job is taken, running jobs are cancelled (the
//! engine stops at its next batch boundary, after committing that batch),
//! and each interrupted mailbox is handed back ([`LeaseStore::hand_back`]: lease
//! dropped, pass queued again for the dispatcher to publish) before the
//! process exits 0, within `shutdown_grace_secs`. A job still busy when the
//! grace time is nearly spent is handed back anyway: the exactly-once rules
//! of the engine cover an append interrupted by the process's exit exactly
//! as they cover a crash.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use mailwave_common::config::{Config, NamedCredential, load_credentials, load_section};
use mailwave_common::model::{Job, Lease, MailboxState, PassStats};
use mailwave_common::queue::{
    Delivery, JobQueue, QueueError, QueueNames, RabbitOptions, RabbitQueue,
};
use mailwave_common::shutdown::shutdown_signal;
use mailwave_common::store::{PassOutcome, PostgresStore, StoreError, WorkerStore};
use mailwave_common::{Classify, ErrorClass};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::connector::Shared;
use crate::credentials::WavePolicy;
use crate::engine::{CopySettings, MemoryBudget, NoProgress};
use crate::job::{EndpointCredentialsOnly, JobOutcome, WorkerContext, run_job};
use crate::lease::LeaseKeeper;

/// `[worker]` of the settings file; every key can be overridden by
/// `MAILWAVE__WORKER__KEY` (e.g. `MAILWAVE__WORKER__CONCURRENCY=8`). Other
/// tables are left alone, so one file can serve the coordinator too.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// PostgreSQL, the coordinator's database (verified TLS unless on this
    /// machine or `sslmode=disable`).
    pub database_url: String,
    /// Extra trusted roots (PEM) for PostgreSQL's certificate.
    pub database_ca_file: Option<PathBuf>,
    /// RabbitMQ, the coordinator's broker (`amqp://` only on this machine).
    pub amqp_url: String,
    /// Extra trusted roots (PEM) for RabbitMQ's certificate.
    pub amqp_ca_file: Option<PathBuf>,
    /// Prefix of the queue names; the coordinator's.
    #[serde(default = "default_queue_prefix")]
    pub queue_prefix: String,
    /// This worker's name in leases; defaults to `hostname-pid`.
    pub worker_id: Option<String>,
    /// Mailboxes copied at once; the worker takes a job only for a free one.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// The lease TTL; must be the coordinator's `lease_ttl_secs`.
    #[serde(default = "default_lease_ttl_secs")]
    pub lease_ttl_secs: u64,
    /// Bytes of message bodies in memory at once, across all mailboxes.
    #[serde(default = "default_memory_budget_bytes")]
    pub memory_budget_bytes: u64,
    /// How long SIGTERM may take before the process exits.
    #[serde(default = "default_shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
    /// Directories the Maildir endpoints of waves may be in (checked after
    /// resolving `..` and symbolic links); none: no Maildir endpoints.
    #[serde(default)]
    pub maildir_roots: Vec<PathBuf>,
    /// The `[credentials.NAME]` tables of the settings file (beside
    /// `[worker]`), which waves refer to by name; each must list its
    /// `hosts`.
    #[serde(skip)]
    pub credentials: BTreeMap<String, NamedCredential>,
}

fn default_queue_prefix() -> String {
    "mailwave".into()
}
fn default_concurrency() -> usize {
    4
}
fn default_lease_ttl_secs() -> u64 {
    60
}
fn default_memory_budget_bytes() -> u64 {
    96 * 1024 * 1024
}
fn default_shutdown_grace_secs() -> u64 {
    30
}

impl WorkerSettings {
    /// Reads `[worker]` from the TOML file, then the environment overrides.
    pub fn load(path: &Path) -> anyhow::Result<WorkerSettings> {
        WorkerSettings::load_with_env(path, None)
    }

    /// [`WorkerSettings::load`] with the environment as a map (`None`: the
    /// process's).
    pub fn load_with_env(
        path: &Path,
        env: Option<HashMap<String, String>>,
    ) -> anyhow::Result<WorkerSettings> {
        let mut settings: WorkerSettings = load_section(path, "worker", env.clone())?;
        settings.credentials = load_credentials(path, env)?;
        if let Some((name, _)) = settings
            .credentials
            .iter()
            .find(|(_, credential)| credential.hosts.is_empty())
        {
            anyhow::bail!(
                "settings {}: credentials.{name} must list the hosts it may be sent to (hosts = [\"imap.example.com\"])",
                path.display()
            );
        }
        if settings.concurrency == 0
            || settings.lease_ttl_secs == 0
            || settings.memory_budget_bytes == 0
            || settings.concurrency > usize::from(u16::MAX)
        {
            anyhow::bail!(
                "settings {}: concurrency (at most 65535), lease_ttl_secs and memory_budget_bytes must be positive",
                path.display()
            );
        }
        if settings
            .worker_id
            .as_deref()
            .is_some_and(|id| id.trim().is_empty())
        {
            anyhow::bail!("settings {}: worker_id is empty", path.display());
        }
        Ok(settings)
    }

    /// The configured worker id, or `hostname-pid`.
    pub fn worker_id(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "worker".into());
            format!("{host}-{}", std::process::id())
        })
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// What this worker accepts of a wave's configuration.
    pub fn wave_policy(&self) -> WavePolicy {
        WavePolicy {
            credentials: self.credentials.clone(),
            maildir_roots: self.maildir_roots.clone(),
        }
    }
}

/// Connects to PostgreSQL and RabbitMQ and serves jobs until SIGTERM/SIGINT.
pub async fn serve(settings: WorkerSettings) -> anyhow::Result<()> {
    let store = PostgresStore::connect_with_tls(
        &settings.database_url,
        PostgresStore::DEFAULT_POOL_SIZE,
        settings.database_ca_file.as_deref(),
    )
    .await
    .context("connecting to PostgreSQL")?;
    let store: Arc<dyn WorkerStore> = Arc::new(store);
    let queue: Arc<dyn JobQueue> = Arc::new(
        RabbitQueue::connect_with(
            &settings.amqp_url,
            QueueNames::with_prefix(&settings.queue_prefix),
            RabbitOptions {
                ca_file: settings.amqp_ca_file.clone(),
                ..RabbitOptions::default()
            },
        )
        .await
        .context("connecting to RabbitMQ")?,
    );
    run(settings, store, queue, shutdown_signal()).await
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

/// One worker process: its store, its memory budget, its leases.
struct Worker {
    id: String,
    store: Arc<dyn WorkerStore>,
    budget: MemoryBudget,
    ttl: Duration,
    /// Cancelled at shutdown: every running job stops at its next checkpoint.
    jobs_stop: CancellationToken,
    /// The leases of the jobs running now, by mailbox, for the hand-back
    /// when the grace time runs out.
    running: Mutex<HashMap<i64, Lease>>,
    /// What this worker accepts of a wave's configuration.
    wave_policy: WavePolicy,
    /// What the connectors of every job of this worker share (request
    /// schedulers by endpoint, OAuth tokens), for its whole life.
    shared: Arc<Shared>,
}

/// Serves jobs from `queue` until `shutdown` completes, then stops as
/// described in the module's docs.
pub async fn run(
    settings: WorkerSettings,
    store: Arc<dyn WorkerStore>,
    queue: Arc<dyn JobQueue>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let worker = Arc::new(Worker {
        id: settings.worker_id(),
        store,
        budget: MemoryBudget::new(settings.memory_budget_bytes),
        ttl: settings.lease_ttl(),
        jobs_stop: CancellationToken::new(),
        running: Mutex::new(HashMap::new()),
        wave_policy: settings.wave_policy(),
        shared: Arc::default(),
    });
    tracing::info!(worker = %worker.id, concurrency = settings.concurrency, "worker serving");
    let consumers: Vec<_> = (0..settings.concurrency)
        .map(|_| {
            let worker = Arc::clone(&worker);
            let queue = Arc::clone(&queue);
            tokio::spawn(async move { worker.consume(queue.as_ref()).await })
        })
        .collect();
    let mut all = futures::future::join_all(consumers);
    let finished = tokio::select! {
        results = &mut all => Some(results),
        () = shutdown => None,
    };
    let results = match finished {
        Some(results) => results,
        None => {
            worker.jobs_stop.cancel();
            let grace = settings.shutdown_grace();
            // Keep a little of the grace time for the forced hand-back.
            let wait = grace.saturating_sub((grace / 4).min(Duration::from_secs(5)));
            match tokio::time::timeout(wait, &mut all).await {
                Ok(results) => results,
                Err(_) => {
                    let left: Vec<Lease> = worker
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
                        worker.give_back(&lease).await;
                    }
                    tracing::info!(worker = %worker.id, "worker stopped");
                    return Ok(());
                }
            }
        }
    };
    for result in results {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error).context("job consumer"),
            Err(error) => return Err(anyhow::anyhow!("job consumer task: {error}")),
        }
    }
    tracing::info!(worker = %worker.id, "worker stopped");
    Ok(())
}

impl Worker {
    /// Takes jobs one after the other until shutdown or the queue's end.
    async fn consume(&self, queue: &dyn JobQueue) -> Result<(), QueueError> {
        loop {
            let next = tokio::select! {
                next = queue.next() => next,
                () = self.jobs_stop.cancelled() => return Ok(()),
            };
            let delivery = match next {
                Ok(Some(delivery)) => delivery,
                Ok(None) => return Ok(()),
                Err(error) => {
                    // The queue reconnects on its own; try again shortly.
                    tracing::warn!(%error, "taking a job failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = self.jobs_stop.cancelled() => return Ok(()),
                    }
                }
            };
            self.take(delivery).await;
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
        let mut delay = Duration::from_millis(250);
        loop {
            match self
                .store
                .acquire_lease(job.mailbox, job.pass, &self.id, self.ttl)
                .await
            {
                Ok(Some(lease)) => return Claim::Ours(lease),
                Ok(None) => return Claim::Another,
                Err(error) if error.class() != ErrorClass::Transient => {
                    return Claim::Impossible(error);
                }
                Err(error) => {
                    tracing::warn!(?job, %error, "taking the lease failed; retrying");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.jobs_stop.cancelled() => return Claim::ShuttingDown,
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    /// Runs a job whose lease this worker holds, keeping the lease.
    async fn run_leased(&self, job: &Job, lease: Lease, acquired: tokio::time::Instant) {
        let stop = self.jobs_stop.child_token();
        let keeper = LeaseKeeper::start(self.store.clone(), lease, self.ttl, acquired);
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

    /// Runs the job with its wave's configuration.
    async fn run_with_wave_config(
        &self,
        job: &Job,
        keeper: &LeaseKeeper,
        stop: &CancellationToken,
    ) -> Result<JobOutcome, StoreError> {
        let wave = self.store.wave(job.wave).await?;
        let prepared = match wave.config.config() {
            Ok(Some(config)) => self.wave_policy.prepare(Config::clone(config)),
            Ok(None) => Err("the wave has no configuration".to_owned()),
            Err(unreadable) => Err(unreadable.to_string()),
        };
        let config = match prepared {
            Ok(config) => config,
            Err(error) => {
                // Nothing any worker could do with it: the pass fails.
                let lease = keeper.lease();
                match self.store.start_pass(lease).await {
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
                return match self.store.finish_pass(lease, &outcome).await {
                    Ok(()) => Ok(JobOutcome::Finished(MailboxState::Failed)),
                    Err(StoreError::LeaseLost { .. }) => Ok(JobOutcome::LeaseLost),
                    Err(error) => Err(error),
                };
            }
        };
        let config = Arc::new(config);
        let ctx = WorkerContext {
            store: Arc::clone(&self.store),
            settings: CopySettings::from_config(&config),
            config,
            budget: self.budget.clone(),
            progress: Arc::new(NoProgress),
            credentials: Arc::new(EndpointCredentialsOnly),
            shared: Arc::clone(&self.shared),
            retry_min_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(60),
        };
        run_job(&ctx, job, keeper, stop).await
    }

    async fn release(&self, lease: &Lease) {
        if let Err(error) = self.store.release_lease(lease).await {
            tracing::warn!(?lease, %error, "releasing the lease failed (it will expire)");
        }
    }

    /// Hands an interrupted mailbox back for another worker.
    async fn give_back(&self, lease: &Lease) {
        match self.store.hand_back(lease).await {
            Ok(true) => tracing::info!(?lease, "mailbox handed back"),
            Ok(false) => {
                let _ = self.store.release_lease(lease).await;
            }
            Err(error) => tracing::warn!(?lease, %error,
                "handing the mailbox back failed; the reaper will once its lease expires"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_the_worker_table_with_overrides_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "[worker]\ndatabase_url = \"postgres://db/x\"\namqp_url = \"amqp://mq\"\n\
             lease_ttl_secs = 3\n[coordinator]\nanything = 1\n",
        )
        .unwrap();
        let env = [
            ("MAILWAVE__WORKER__CONCURRENCY", "8"),
            ("MAILWAVE__WORKER__WORKER_ID", "w-7"),
            ("MAILWAVE__COORDINATOR__LISTEN", "not ours"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let settings = WorkerSettings::load_with_env(&path, Some(env)).unwrap();
        assert_eq!(settings.concurrency, 8);
        assert_eq!(settings.worker_id(), "w-7");
        assert_eq!(settings.lease_ttl(), Duration::from_secs(3));
        assert_eq!(settings.shutdown_grace(), Duration::from_secs(30));
        assert_eq!(settings.queue_prefix, "mailwave");
        assert_eq!(settings.memory_budget_bytes, 96 * 1024 * 1024);

        let settings = WorkerSettings::load_with_env(&path, Some(HashMap::new())).unwrap();
        assert_eq!(settings.concurrency, 4);
        let id = settings.worker_id();
        assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");

        let env = [("MAILWAVE__WORKER__CONCURENCY", "8")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let error = WorkerSettings::load_with_env(&path, Some(env)).unwrap_err();
        assert!(error.to_string().contains("concurency"), "{error}");
        let env = [("MAILWAVE__WORKER__CONCURRENCY", "0")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert!(WorkerSettings::load_with_env(&path, Some(env)).is_err());
    }

    #[test]
    fn named_credentials_sit_beside_the_worker_table_and_list_their_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        let worker = "[worker]\ndatabase_url = \"postgres://db/x\"\namqp_url = \"amqp://mq\"\n\
                      maildir_roots = [\"/srv/mail\"]\n";
        std::fs::write(
            &path,
            format!(
                "{worker}[credentials.src-admin]\nhosts = [\"imap.old.example\"]\npassword_env = \"SRC_PW\"\n"
            ),
        )
        .unwrap();
        let settings = WorkerSettings::load_with_env(&path, Some(HashMap::new())).unwrap();
        let policy = settings.wave_policy();
        assert_eq!(policy.maildir_roots, [PathBuf::from("/srv/mail")]);
        assert_eq!(
            policy.credentials["src-admin"].password_env.as_deref(),
            Some("SRC_PW")
        );

        std::fs::write(&path, worker).unwrap();
        let settings = WorkerSettings::load_with_env(&path, Some(HashMap::new())).unwrap();
        assert!(settings.credentials.is_empty());

        std::fs::write(
            &path,
            format!("{worker}[credentials.anywhere]\npassword_env = \"SRC_PW\"\n"),
        )
        .unwrap();
        let error = WorkerSettings::load_with_env(&path, Some(HashMap::new())).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("credentials.anywhere must list the hosts"),
            "{error}"
        );
    }
}
