//! Running one job: one pass over one mailbox, with the retry policy of the
//! error taxonomy, and its outcome recorded in the store.

use std::sync::Arc;

use async_trait::async_trait;
use mailwave_common::config::{Config, EndpointConfig};
use mailwave_common::mailboxes::MailboxSecrets;
use mailwave_common::model::{Job, MailboxRecord, MailboxState, PassStats};
use mailwave_common::retry::{Budgets, GiveUp, Sleep, TokioSleep};
use mailwave_common::store::{PassOutcome, StoreError, WorkerStore};
use mailwave_common::{Classify, ErrorClass};
use tokio_util::sync::CancellationToken;

use crate::connector::graph::mail::GraphMimeSource;
use crate::connector::graph::{GraphExportSource, GraphImportTarget};
use crate::connector::maildir::Maildir;
use crate::connector::throttle::{MailboxThrottle, ThrottleSettings, WaitLimits};
use crate::connector::{ConnectorError, MailSource, MailTarget, Shared, imap};
use crate::engine::{CopySettings, MailboxConnector, MailboxPass, MemoryBudget, ProgressSink};
use crate::lease::{LeaseKeeper, PassStore};

/// Where a worker finds per-mailbox passwords (never in the job, never in
/// the state store).
pub trait Credentials: Send + Sync {
    fn secrets(&self, mailbox: &MailboxRecord) -> MailboxSecrets;
}

/// No per-mailbox passwords: the endpoints' own credentials serve all.
pub struct EndpointCredentialsOnly;

impl Credentials for EndpointCredentialsOnly {
    fn secrets(&self, _: &MailboxRecord) -> MailboxSecrets {
        MailboxSecrets::default()
    }
}

/// What a worker process runs every job with, assembled once.
pub struct WorkerContext {
    pub store: Arc<dyn WorkerStore>,
    pub budget: MemoryBudget,
    pub progress: Arc<dyn ProgressSink>,
    pub credentials: Arc<dyn Credentials>,
    /// What the connectors of this worker share for as long as it lives:
    /// the request schedulers of its endpoints (windows, pauses, counters)
    /// and its OAuth tokens.
    pub shared: Arc<Shared>,
    /// Waits between the attempts of a pass (the pass's budget is
    /// [`Budgets::pass`] of the wave's configuration).
    pub sleep: Arc<dyn Sleep>,
}

impl WorkerContext {
    /// A worker whose message bodies in flight share `memory_budget_bytes`.
    pub fn new(
        store: Arc<dyn WorkerStore>,
        memory_budget_bytes: u64,
        progress: Arc<dyn ProgressSink>,
        credentials: Arc<dyn Credentials>,
    ) -> WorkerContext {
        WorkerContext {
            budget: MemoryBudget::new(memory_budget_bytes),
            store,
            progress,
            credentials,
            shared: Arc::default(),
            sleep: Arc::new(TokioSleep),
        }
    }
}

/// What a job runs with that its wave decides: the configuration, and the
/// copy settings drawn from it.
pub struct WaveSettings {
    pub config: Arc<Config>,
    pub copy: CopySettings,
}

impl WaveSettings {
    pub fn new(config: Config) -> WaveSettings {
        WaveSettings {
            copy: CopySettings::from_config(&config),
            config: Arc::new(config),
        }
    }
}

/// How a job ended for the worker that ran it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    /// The pass ended (completed or failed) and its outcome is recorded.
    Finished(MailboxState),
    /// The job was for a pass that is no longer current (or already ended).
    Stale,
    /// Stopped on purpose at a checkpoint: hand the job back to the queue.
    Interrupted,
    /// The lease was lost (another worker may own the mailbox now): nothing
    /// more was written and nothing is to be recorded.
    LeaseLost,
}

/// Runs `job` of a wave with `wave`'s settings under the lease `keeper`
/// holds to its end and records the outcome, or stops at the next checkpoint when `stop` is cancelled, or at
/// once when the lease is lost. Returns an error only when the store itself
/// fails (the job should then be handed back).
pub async fn run_job(
    ctx: &WorkerContext,
    wave: &WaveSettings,
    job: &Job,
    keeper: &LeaseKeeper,
    stop: &CancellationToken,
) -> Result<JobOutcome, StoreError> {
    match ctx.store.start_pass(keeper.lease()).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(mailbox = job.mailbox, pass = job.pass, "stale job skipped");
            return Ok(JobOutcome::Stale);
        }
        Err(StoreError::LeaseLost { .. }) => return Ok(JobOutcome::LeaseLost),
        Err(error) => return Err(error),
    }
    let mailbox = ctx.store.mailbox(job.mailbox).await?;
    let connector = EndpointConnector::new(
        Arc::clone(&wave.config),
        mailbox.clone(),
        ctx.credentials.secrets(&mailbox),
        WaitLimits::new(&wave.config.migration, stop.clone()),
        Arc::clone(&ctx.shared),
    );
    let store = PassStore::new(ctx.store.as_ref(), keeper);
    let pass = MailboxPass {
        store,
        mailbox: &mailbox,
        pass: job.pass,
        settings: &wave.copy,
        budget: &ctx.budget,
        progress: ctx.progress.as_ref(),
        stop,
    };
    let mut backoff = Budgets::new(&wave.config.migration).pass.start();
    let started = std::time::Instant::now();
    let mut total = PassStats::default();
    let outcome = loop {
        let done_before = items_done(&total);
        let error = match pass.run(&connector, &mut total).await {
            Ok(()) => {
                break PassOutcome {
                    state: completed_state(ctx, keeper, &total).await?,
                    error: None,
                    stats: total,
                };
            }
            Err(_) if keeper.is_lost() => return Ok(JobOutcome::LeaseLost),
            Err(_) if stop.is_cancelled() => return Ok(JobOutcome::Interrupted),
            Err(error) => error,
        };
        if items_done(&total) > done_before {
            backoff.progressed();
        }
        // A throttled server's own hint is obeyed when it asks for longer
        // than the back-off: the whole mailbox waits, since more requests
        // in the window would only extend the penalty.
        let delay = match backoff.next(&error) {
            Ok(delay) => delay,
            Err(reason) => {
                let message = why_failed(&error, reason);
                tracing::warn!(mailbox = %mailbox.source, class = %error.class(), %message, "mailbox failed");
                break PassOutcome {
                    state: MailboxState::Failed,
                    error: Some(message),
                    stats: total,
                };
            }
        };
        // Counted now that the retry is scheduled.
        total.retries += 1;
        total.throttled += u64::from(error.class() == ErrorClass::Throttled);
        total.wait_millis += u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        tracing::info!(mailbox = %mailbox.source, class = %error.class(), %error,
            retry_in = ?delay, "retrying mailbox from its checkpoints");
        tokio::select! {
            () = ctx.sleep.sleep(delay) => {}
            () = stop.cancelled() => return Ok(JobOutcome::Interrupted),
            () = keeper.lost() => return Ok(JobOutcome::LeaseLost),
        }
    };
    let s = &outcome.stats;
    tracing::info!(mailbox = %mailbox.source, pass = job.pass, state = outcome.state.as_str(),
        seconds = started.elapsed().as_secs_f64(), folders = s.folders, copied = s.items_copied,
        bytes = s.bytes_copied, recovered = s.items_recovered, flags = s.flags_updated,
        updated = s.items_updated,
        skipped = s.items_skipped, retries = s.retries, throttled = s.throttled,
        waited_ms = s.wait_millis, "mailbox pass ended");
    match ctx.store.finish_pass(keeper.lease(), &outcome).await {
        Ok(()) => Ok(JobOutcome::Finished(outcome.state)),
        Err(StoreError::LeaseLost { .. }) => Ok(JobOutcome::LeaseLost),
        Err(error) => Err(error),
    }
}

/// Items a pass has settled so far (copied, found in doubt, updated,
/// recorded as failed): an attempt that settled any made progress.
fn items_done(stats: &PassStats) -> u64 {
    stats.items_copied + stats.items_recovered + stats.items_updated + stats.items_failed
}

/// The mailbox's error when its pass is not tried again: the last error,
/// and, when a budget of the configuration stopped the retries, which.
fn why_failed(error: &ConnectorError, reason: GiveUp) -> String {
    match reason {
        GiveUp::WaitSpent { waited, limit } => format!(
            "this pass would wait {} s in all before its next attempt, more than \
             migration.max_pass_wait_secs ({} s) allows; last error: {error}",
            waited.as_secs(),
            limit.as_secs()
        ),
        GiveUp::HintTooLong { hint, limit } => format!(
            "the server asked to wait {} s, more than migration.max_retry_after_secs \
             ({} s) allows: {error}",
            hint.as_secs(),
            limit.as_secs()
        ),
        GiveUp::NotRetryable(_) | GiveUp::AttemptsSpent { .. } => error.to_string(),
    }
}

/// How a pass that ran to its end ended: `CompletedWithErrors` while any
/// item or folder of the mailbox is recorded as not copied (this pass or an
/// earlier one), items the operator's policy left out aside.
async fn completed_state(
    ctx: &WorkerContext,
    keeper: &LeaseKeeper,
    stats: &PassStats,
) -> Result<MailboxState, StoreError> {
    if stats.items_failed > 0 {
        return Ok(MailboxState::CompletedWithErrors);
    }
    let failures = ctx.store.failures(keeper.lease().mailbox).await?;
    if failures.iter().any(|f| !f.policy) {
        return Ok(MailboxState::CompletedWithErrors);
    }
    Ok(MailboxState::Completed)
}

/// Opens the configured endpoints for one mailbox.
pub struct EndpointConnector {
    config: Arc<Config>,
    mailbox: MailboxRecord,
    secrets: MailboxSecrets,
    /// What bounds every wait of the connectors' schedulers.
    waits: WaitLimits,
    /// What the worker's connectors share (schedulers, tokens).
    shared: Arc<Shared>,
}

impl EndpointConnector {
    pub fn new(
        config: Arc<Config>,
        mailbox: MailboxRecord,
        secrets: MailboxSecrets,
        waits: WaitLimits,
        shared: Arc<Shared>,
    ) -> Self {
        EndpointConnector {
            config,
            mailbox,
            secrets,
            waits,
            shared,
        }
    }
}

impl EndpointConnector {
    /// The scheduler of `login`'s mailbox on an IMAP endpoint: at most
    /// `connections_per_mailbox` commands of the mailbox at once, fewer after
    /// throttles (the window adapts), and the whole mailbox paused for a
    /// throttle's hint. Command latencies vary too much with their size to
    /// signal congestion, so only the server's answers adapt the window.
    fn imap_throttle(&self, endpoint: &EndpointConfig, login: &str) -> MailboxThrottle {
        let migration = &self.config.migration;
        self.shared
            .schedulers
            .endpoint(
                &endpoint.server(),
                ThrottleSettings {
                    mailbox_ceiling: migration.connections_per_mailbox,
                    endpoint_ceiling: migration.connections_per_mailbox
                        * migration.max_concurrent_mailboxes,
                    requests_per_second: None,
                    latency_factor: f64::INFINITY,
                    upload_budget: None,
                    mailbox_requests: None,
                },
            )
            .mailbox(login, self.waits.clone())
    }
}

#[async_trait]
impl MailboxConnector for EndpointConnector {
    async fn source(&self) -> Result<Box<dyn MailSource>, ConnectorError> {
        let login = &self.mailbox.source;
        match &self.config.source {
            EndpointConfig::Maildir(m) => Ok(Box::new(
                Maildir::for_mailbox(&m.path, login)
                    .utf8_names(m.utf8_names)
                    .open_source()
                    .await?,
            )),
            EndpointConfig::Imap(endpoint) => {
                let session = imap::connect(
                    endpoint,
                    login,
                    self.secrets.source_password.as_deref(),
                    &self.shared.tokens,
                )
                .await?;
                let throttle = self.imap_throttle(&self.config.source, login);
                Ok(Box::new(imap::ImapSource::new(session, throttle)))
            }
            // What an Exchange item is on the way depends on the target:
            // Exchange's opaque export stream for Exchange, MIME otherwise.
            EndpointConfig::Graph(endpoint) => match &self.config.target {
                EndpointConfig::Graph(_) => Ok(Box::new(
                    GraphExportSource::open(endpoint, login, &self.waits, &self.shared).await?,
                )),
                EndpointConfig::Imap(_) | EndpointConfig::Maildir(_) => {
                    Ok(Box::new(GraphMimeSource::open(
                        endpoint,
                        login,
                        &self.config.migration,
                        &self.waits,
                        &self.shared,
                    )?))
                }
            },
        }
    }

    async fn target(&self) -> Result<Box<dyn MailTarget>, ConnectorError> {
        let login = &self.mailbox.target;
        match &self.config.target {
            EndpointConfig::Maildir(m) => Ok(Box::new(
                Maildir::for_mailbox(&m.path, login)
                    .utf8_names(m.utf8_names)
                    .open_target()
                    .await?,
            )),
            EndpointConfig::Imap(endpoint) => {
                let session = imap::connect(
                    endpoint,
                    login,
                    self.secrets.target_password.as_deref(),
                    &self.shared.tokens,
                )
                .await?;
                let throttle = self.imap_throttle(&self.config.target, login);
                Ok(Box::new(imap::ImapTarget::new(session, throttle)))
            }
            EndpointConfig::Graph(endpoint) => Ok(Box::new(
                GraphImportTarget::open(endpoint, login, &self.waits, &self.shared).await?,
            )),
        }
    }
}
