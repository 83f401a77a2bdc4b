//! The RabbitMQ queue of distributed mode.
//!
//! # Delivery contract
//!
//! Delivery is at least once. A job is a persistent message on a durable
//! quorum queue, published with publisher confirms: [`JobQueue::publish`]
//! returns once the broker has it (a publish interrupted by a connection loss
//! is retried, so a job may be queued twice). A consumer takes it with a
//! manual acknowledgement; the job comes back if the consumer requeues it,
//! drops the delivery, or loses its channel.
//!
//! Acknowledging means "the outcome is recorded in the store". A long copy is
//! owned by a lease in the store, not by the unacknowledged message: the
//! worker acknowledges the job once it holds the mailbox's lease, so
//! RabbitMQ's consumer timeout (30 minutes by default) never matters.
//!
//! # One job per free slot
//!
//! Because a job is acknowledged early, a long-lived consumer with a
//! prefetch would be sent the next jobs while the worker is still busy:
//! they would wait in a busy worker's buffer while another worker idles.
//! So [`JobQueue::next`] takes exactly one job: it starts a consumer with a
//! prefetch of one, waits for its delivery and cancels it before returning.
//! A worker holds a job only while a slot is free to run it, and the broker
//! spreads jobs over every free slot of every worker.
//!
//! A job requeued more often than the delivery limit allows (a poison job) is
//! dead-lettered, and so is a message that is not a job at all: both wait in
//! the dead-letter queue for an operator.
//!
//! # Connection loss
//!
//! A supervisor task watches the connection. When it or one of its channels
//! fails, it reconnects with exponential back-off and declares the topology
//! again; the consumer is re-created by the next [`JobQueue::next`]. Meanwhile
//! `publish` waits, up to [`RabbitOptions::publish_timeout`]. Deliveries taken
//! before the loss can no longer be settled: their `ack` and `requeue` fail
//! (callers log it), and the broker redelivers those jobs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Event,
    ExchangeKind, PublisherConfirm,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Delivery, JobQueue, QueueError};
use crate::ErrorClass;
use crate::model::Job;
use crate::retry::{Backoff, Jitter, RetryPolicy};

/// The names of a deployment's queues. The dead-letter exchange is named
/// after the dead-letter queue, and the connection after the jobs queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueNames {
    pub jobs: String,
    pub dead_letters: String,
}

impl QueueNames {
    /// `{prefix}.jobs` and `{prefix}.jobs.dead`.
    pub fn with_prefix(prefix: &str) -> QueueNames {
        QueueNames {
            jobs: format!("{prefix}.jobs"),
            dead_letters: format!("{prefix}.jobs.dead"),
        }
    }
}

/// Tuning of a [`RabbitQueue`].
#[derive(Debug, Clone)]
pub struct RabbitOptions {
    /// How many times a job may be handed back before it is dead-lettered
    /// (`x-delivery-limit`; RabbitMQ 3 also counts a return caused by the
    /// consumer's channel closing). Changing it for an existing queue makes
    /// connecting fail: RabbitMQ refuses to redeclare a queue with other
    /// arguments.
    pub delivery_limit: u32,
    /// How long `publish` waits for the broker before giving up.
    pub publish_timeout: Duration,
    /// The longest pause between two reconnection attempts, before a random
    /// jitter of up to as much again.
    pub max_reconnect_delay: Duration,
    /// Extra trusted roots (PEM) for `amqps://`, e.g. a private CA; the
    /// public web roots are always trusted.
    pub ca_file: Option<PathBuf>,
}

impl Default for RabbitOptions {
    fn default() -> RabbitOptions {
        RabbitOptions {
            delivery_limit: 5,
            publish_timeout: Duration::from_secs(30),
            max_reconnect_delay: Duration::from_secs(30),
            ca_file: None,
        }
    }
}

/// The TLS of a connection to the broker at `url`: `amqps://` is TLS
/// verified against the public web roots and `ca_file`; plain `amqp://` is
/// refused for a host that is not this machine. Decided before connecting.
fn broker_tls(url: &str, ca_file: Option<&Path>) -> Result<lapin::tcp::OwnedTLSConfig, QueueError> {
    let refused =
        |reason: String| QueueError::Unavailable(format!("RabbitMQ at {}: {reason}", redact(url)));
    let uri: lapin::uri::AMQPUri = url.parse().map_err(|e: String| refused(e))?;
    if uri.scheme == lapin::uri::AMQPScheme::AMQP
        && !crate::config::is_loopback_host(&uri.authority.host)
    {
        return Err(refused(format!(
            "refusing plain-text AMQP to {} (not this machine): the broker's password and the jobs \
             would cross the network unencrypted; use amqps:// (verified TLS, with amqp_ca_file for a \
             private CA)",
            uri.authority.host
        )));
    }
    let cert_chain = match ca_file {
        None => None,
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| refused(format!("amqp_ca_file {}: {e}", path.display())))?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(refused(format!(
                    "amqp_ca_file {}: no PEM certificate in it",
                    path.display()
                )));
            }
            Some(pem)
        }
    };
    Ok(lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain,
    })
}

/// A [`JobQueue`] on RabbitMQ, surviving connection losses.
pub struct RabbitQueue {
    shared: Arc<Shared>,
    supervisor: JoinHandle<()>,
}

struct Shared {
    url: String,
    names: QueueNames,
    options: RabbitOptions,
    tls: lapin::tcp::OwnedTLSConfig,
    /// The working connection; `None` while the supervisor reconnects.
    link: watch::Sender<Option<Arc<Link>>>,
}

/// One connection with its channels.
struct Link {
    connection: Connection,
    /// In publisher-confirm mode.
    publisher: Channel,
    /// Every consumer on it has a prefetch of one (`basic.qos`, per
    /// consumer).
    consumer_channel: Channel,
}

impl RabbitQueue {
    /// Connects with the default options; see [`RabbitQueue::connect_with`].
    pub async fn connect(url: &str, names: QueueNames) -> Result<RabbitQueue, QueueError> {
        RabbitQueue::connect_with(url, names, RabbitOptions::default()).await
    }

    /// Connects to the broker at `url` (`amqps://user:password@host:port/vhost`;
    /// `amqp://` only on loopback) and declares the topology. Fails if the
    /// broker cannot be reached now; later losses are recovered from.
    pub async fn connect_with(
        url: &str,
        names: QueueNames,
        options: RabbitOptions,
    ) -> Result<RabbitQueue, QueueError> {
        let tls = broker_tls(url, options.ca_file.as_deref())?;
        let link = Link::open(url, &names, &options, &tls)
            .await
            .map_err(|e| QueueError::Unavailable(format!("RabbitMQ at {}: {e}", redact(url))))?;
        let link = Arc::new(link);
        let (sender, _) = watch::channel(Some(Arc::clone(&link)));
        let shared = Arc::new(Shared {
            url: url.to_owned(),
            names,
            options,
            tls,
            link: sender,
        });
        let supervisor = tokio::spawn(supervise(Arc::clone(&shared), link));
        Ok(RabbitQueue { shared, supervisor })
    }
}

impl Drop for RabbitQueue {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

#[async_trait]
impl JobQueue for RabbitQueue {
    async fn publish(&self, jobs: &[Job]) -> Result<(), QueueError> {
        let bodies = jobs
            .iter()
            .map(serde_json::to_vec)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| QueueError::Malformed(e.to_string()))?;
        let timeout = self.shared.options.publish_timeout;
        tokio::time::timeout(timeout, self.shared.publish(&bodies))
            .await
            .unwrap_or_else(|_| {
                Err(QueueError::Unavailable(format!(
                    "RabbitMQ did not take the jobs within {timeout:?}"
                )))
            })
    }

    async fn next(&self) -> Result<Option<Box<dyn Delivery>>, QueueError> {
        loop {
            let link = self.shared.current_link().await?;
            let delivery = match link.take_one(&self.shared.names.jobs).await {
                Ok(Some(delivery)) => delivery,
                Ok(None) => {
                    self.shared.report_broken(&link);
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "could not take a job");
                    self.shared.report_broken(&link);
                    continue;
                }
            };
            let delivery = match delivery {
                Ok(delivery) => delivery,
                Err(error) => {
                    tracing::warn!(%error, "the job consumer failed");
                    self.shared.report_broken(&link);
                    continue;
                }
            };
            // Buffered before its channel died: the broker redelivers it.
            if delivery.acker.poisoned() {
                continue;
            }
            match serde_json::from_slice::<Job>(&delivery.data) {
                Ok(job) => {
                    return Ok(Some(Box::new(RabbitDelivery {
                        job,
                        acker: delivery.acker,
                    })));
                }
                Err(error) => {
                    tracing::error!(%error, bytes = delivery.data.len(),
                        "malformed job message; dead-lettering it");
                    let rejected = delivery
                        .acker
                        .reject(BasicRejectOptions { requeue: false })
                        .await;
                    if let Err(error) = settled(rejected) {
                        tracing::warn!(%error, "could not dead-letter a malformed job message");
                    }
                }
            }
        }
    }
}

impl Shared {
    /// Waits for a working connection.
    async fn current_link(&self) -> Result<Arc<Link>, QueueError> {
        let mut link = self.link.subscribe();
        let current = link
            .wait_for(Option::is_some)
            .await
            .map_err(|_| QueueError::Unavailable("the RabbitMQ queue is shut down".into()))?;
        current
            .clone()
            .ok_or_else(|| QueueError::Unavailable("no RabbitMQ connection".into()))
    }

    /// Tells the supervisor that `link` failed (unless it was replaced already).
    fn report_broken(&self, link: &Arc<Link>) {
        self.link.send_if_modified(|current| {
            if !current.as_ref().is_some_and(|c| Arc::ptr_eq(c, link)) {
                return false;
            }
            *current = None;
            true
        });
    }

    /// Publishes until the broker confirms every message, riding out
    /// connection losses. The messages are sent one after the other and
    /// their confirmations awaited together, so a batch costs about one
    /// round trip; what a lost connection left unconfirmed is sent again.
    async fn publish(&self, bodies: &[Vec<u8>]) -> Result<(), QueueError> {
        let mut pending: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        while !pending.is_empty() {
            let link = self.current_link().await?;
            let mut confirms = Vec::with_capacity(pending.len());
            let mut broken = false;
            for body in &pending {
                match link.send(&self.names.jobs, body).await {
                    Ok(confirm) => confirms.push(confirm),
                    Err(error) => {
                        tracing::warn!(%error, "publishing a job failed; retrying after reconnecting");
                        broken = true;
                        break;
                    }
                }
            }
            let outcomes = futures::future::join_all(confirms).await;
            let mut unconfirmed = pending.split_off(outcomes.len());
            for (body, outcome) in pending.into_iter().zip(outcomes) {
                match outcome {
                    Ok(confirmation) => confirmed(confirmation, || self.report_broken(&link))?,
                    Err(error) => {
                        tracing::warn!(%error, "a job's confirmation was lost; publishing it again");
                        broken = true;
                        unconfirmed.push(body);
                    }
                }
            }
            if broken {
                self.report_broken(&link);
            }
            pending = unconfirmed;
        }
        Ok(())
    }
}

/// Whether the broker took a message; `on_returned` runs when it had no
/// queue to route it to (a new link declares the queue again).
fn confirmed(confirmation: Confirmation, on_returned: impl FnOnce()) -> Result<(), QueueError> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => {
            on_returned();
            Err(QueueError::Unavailable(format!(
                "RabbitMQ returned the job: {} {}",
                returned.reply_code, returned.reply_text
            )))
        }
        Confirmation::Nack(_) => Err(QueueError::Unavailable(
            "RabbitMQ refused the job (nack)".into(),
        )),
        Confirmation::NotRequested => Err(QueueError::Unavailable(
            "publisher confirms are off on the publishing channel".into(),
        )),
    }
}

impl Link {
    /// Connects, declares the topology and opens the channels.
    async fn open(
        url: &str,
        names: &QueueNames,
        options: &RabbitOptions,
        tls: &lapin::tcp::OwnedTLSConfig,
    ) -> lapin::Result<Link> {
        let properties =
            ConnectionProperties::default().with_connection_name(names.jobs.clone().into());
        let runtime = lapin::runtime::default_runtime()?;
        let connection =
            Connection::connect_with_config(url, properties, tls.clone(), runtime).await?;
        let publisher = connection.create_channel().await?;
        declare_topology(&publisher, names, options).await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let consumer_channel = connection.create_channel().await?;
        consumer_channel
            .basic_qos(1, BasicQosOptions::default())
            .await?;
        Ok(Link {
            connection,
            publisher,
            consumer_channel,
        })
    }

    /// Sends a persistent message; the returned future is its confirmation.
    async fn send(&self, queue: &str, body: &[u8]) -> lapin::Result<PublisherConfirm> {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        self.publisher
            .basic_publish("".into(), queue.into(), options, body, properties)
            .await
    }

    /// Waits for one job with a consumer of its own, which is cancelled
    /// before the job is returned (see the module's docs). `None` when the
    /// consumer ended without a job (the broker cancelled it). Dropped while
    /// waiting, the consumer cancels itself.
    async fn take_one(
        &self,
        queue: &str,
    ) -> lapin::Result<Option<lapin::Result<lapin::message::Delivery>>> {
        let mut consumer = self
            .consumer_channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let delivery = consumer.next().await;
        if delivery.is_some() {
            // The prefetch of one keeps anything else from arriving
            // meanwhile; the delivery stays ours to settle.
            self.consumer_channel
                .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                .await?;
        }
        Ok(delivery)
    }

    /// Closes the connection if it is still up, so that the broker hands back
    /// what it delivered on it.
    async fn close(&self) {
        if !self.connection.status().connected() {
            return;
        }
        let closing = self.connection.close(200, "mailwave reconnects".into());
        if let Ok(Err(error)) = tokio::time::timeout(Duration::from_secs(5), closing).await {
            tracing::debug!(%error, "closing a failed RabbitMQ connection");
        }
    }
}

/// Declares (idempotently) the jobs queue and where its dead letters go.
async fn declare_topology(
    channel: &Channel,
    names: &QueueNames,
    options: &RabbitOptions,
) -> lapin::Result<()> {
    let durable = QueueDeclareOptions::durable();
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );

    channel
        .exchange_declare(
            names.dead_letters.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(names.dead_letters.as_str().into(), durable, quorum.clone())
        .await?;
    channel
        .queue_bind(
            names.dead_letters.as_str().into(),
            names.dead_letters.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let mut jobs = quorum;
    jobs.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(options.delivery_limit.into()),
    );
    jobs.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(names.dead_letters.as_str().into()),
    );
    channel
        .queue_declare(names.jobs.as_str().into(), durable, jobs)
        .await?;
    Ok(())
}

/// Replaces every failed link, with exponential back-off between attempts.
async fn supervise(shared: Arc<Shared>, mut link: Arc<Link>) {
    let max_delay = shared.options.max_reconnect_delay;
    let mut delays =
        RetryPolicy::exponential(Duration::from_millis(200), max_delay, Jitter::Full).start();
    // No budget: a lost link is always worth another attempt.
    let next_delay = |delays: &mut Backoff| {
        delays
            .next_after(ErrorClass::Transient, None)
            .unwrap_or(max_delay)
    };
    let mut reports = shared.link.subscribe();
    loop {
        let connected_at = Instant::now();
        tokio::select! {
            _ = reports.wait_for(Option::is_none) => {}
            () = connection_failure(&link.connection) => {}
        }
        tracing::warn!("the RabbitMQ connection failed; reconnecting");
        shared.link.send_replace(None);
        link.close().await;
        // A link that failed soon after it was made must not make us hammer
        // the broker.
        if connected_at.elapsed() < max_delay {
            tokio::time::sleep(next_delay(&mut delays)).await;
        } else {
            delays.reset();
        }
        link = loop {
            match Link::open(&shared.url, &shared.names, &shared.options, &shared.tls).await {
                Ok(link) => break Arc::new(link),
                Err(error) => {
                    let delay = next_delay(&mut delays);
                    tracing::warn!(%error, ?delay, "could not reconnect to RabbitMQ");
                    tokio::time::sleep(delay).await;
                }
            }
        };
        shared.link.send_replace(Some(Arc::clone(&link)));
        tracing::info!("reconnected to RabbitMQ");
    }
}

/// Waits until the connection reports an error or goes away.
async fn connection_failure(connection: &Connection) {
    let mut events = std::pin::pin!(connection.events_listener());
    if !connection.status().connected() {
        return;
    }
    while let Some(event) = events.next().await {
        if let Event::Error(error) = event {
            tracing::warn!(%error, "RabbitMQ connection error");
            return;
        }
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = credentials.split(':').next().unwrap_or_default();
    format!("{scheme}://{user}@{host}")
}

/// An acknowledgement's outcome: lapin answers `false` when the delivery's
/// channel is gone.
fn settled(result: lapin::Result<bool>) -> Result<(), QueueError> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(QueueError::Unavailable(
            "the delivery's RabbitMQ channel is gone; the broker redelivers the job".into(),
        )),
        Err(error) => Err(QueueError::Unavailable(format!(
            "settling a RabbitMQ delivery: {error}"
        ))),
    }
}

struct RabbitDelivery {
    job: Job,
    acker: Acker,
}

#[async_trait]
impl Delivery for RabbitDelivery {
    fn job(&self) -> &Job {
        &self.job
    }

    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        settled(self.acker.ack(BasicAckOptions::default()).await)
    }

    async fn requeue(self: Box<Self>) -> Result<(), QueueError> {
        settled(self.acker.nack(requeue()).await)
    }

    async fn reject(self: Box<Self>) -> Result<(), QueueError> {
        settled(
            self.acker
                .reject(BasicRejectOptions { requeue: false })
                .await,
        )
    }
}

fn requeue() -> BasicNackOptions {
    BasicNackOptions {
        multiple: false,
        requeue: true,
    }
}

impl Drop for RabbitDelivery {
    /// Hands the job back now rather than when the channel closes, so that
    /// it does not hold a prefetch slot meanwhile.
    fn drop(&mut self) {
        if !self.acker.usable() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let acker = self.acker.clone();
        runtime.spawn(async move {
            if let Err(error) = settled(acker.nack(requeue()).await) {
                tracing::debug!(%error, "handing back a dropped delivery");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::panic::AssertUnwindSafe;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};

    use futures::FutureExt;
    use lapin::options::{BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};

    use super::*;
    use crate::queue::suite;

    const START_IT: &str = "start it with `rabbitmq-server -detached`";

    /// The local broker, as the given user.
    fn broker_url(user: &str, password: &str) -> String {
        format!("amqp://{user}:{password}@127.0.0.1:5672/%2f")
    }

    /// Runs `rabbitmqctl` (which needs root), returning its output.
    fn rabbitmqctl(args: &[&str]) -> String {
        let output = Command::new("rabbitmqctl")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("rabbitmqctl (run the tests as root): {e}"));
        assert!(output.status.success(), "rabbitmqctl {args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    }

    /// A broker user of its own, deleted when dropped.
    struct TestUser(String);

    impl TestUser {
        fn new(name: String) -> TestUser {
            rabbitmqctl(&["add_user", &name, "secret"]);
            let user = TestUser(name);
            user.grant();
            user
        }

        fn grant(&self) {
            rabbitmqctl(&["set_permissions", "-p", "/", &self.0, ".*", ".*", ".*"]);
        }

        fn revoke(&self) {
            rabbitmqctl(&["clear_permissions", "-p", "/", &self.0]);
        }

        fn url(&self) -> String {
            broker_url(&self.0, "secret")
        }
    }

    impl Drop for TestUser {
        fn drop(&mut self) {
            rabbitmqctl(&["delete_user", &self.0]);
        }
    }

    fn job(mailbox: i64) -> Job {
        Job {
            wave: 1,
            mailbox,
            pass: 1,
        }
    }

    /// Names no other run uses.
    fn unique_names() -> QueueNames {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        QueueNames::with_prefix(&format!("mailwave-test-{}-{nanos}-{n}", std::process::id()))
    }

    async fn connect(names: &QueueNames, options: RabbitOptions) -> RabbitQueue {
        RabbitQueue::connect_with(&broker_url("guest", "guest"), names.clone(), options)
            .await
            .unwrap_or_else(|e| panic!("{e}: is RabbitMQ running? {START_IT}"))
    }

    /// A plain connection and channel, to inspect and clean up.
    async fn admin() -> (Connection, Channel) {
        let url = broker_url("guest", "guest");
        let connection = Connection::connect(&url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ is not reachable at {url}: {e}; {START_IT}"));
        let channel = connection.create_channel().await.unwrap();
        (connection, channel)
    }

    /// Runs `test` with fresh names, then deletes the queues and the exchange,
    /// whether it passed or not.
    async fn with_names(test: impl AsyncFnOnce(&QueueNames)) {
        let names = unique_names();
        let outcome = AssertUnwindSafe(test(&names)).catch_unwind().await;
        let (_connection, channel) = admin().await;
        for queue in [&names.jobs, &names.dead_letters] {
            channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await
                .unwrap();
        }
        channel
            .exchange_delete(
                names.dead_letters.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
            .unwrap();
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    async fn take(queue: &RabbitQueue) -> Box<dyn Delivery> {
        tokio::time::timeout(Duration::from_secs(15), queue.next())
            .await
            .expect("a job within 15 s")
            .unwrap()
            .unwrap()
    }

    /// The next delivery, or `None` if nothing comes for `quiet`.
    async fn take_within(queue: &RabbitQueue, quiet: Duration) -> Option<Box<dyn Delivery>> {
        let delivery = tokio::time::timeout(quiet, queue.next()).await.ok()?;
        Some(delivery.unwrap().unwrap())
    }

    /// Takes one message off `queue`, bypassing the job consumer.
    async fn get_raw(channel: &Channel, queue: &str) -> Option<Vec<u8>> {
        let options = BasicGetOptions { no_ack: true };
        // Dead-lettering is asynchronous: give it a moment.
        for _ in 0..50 {
            if let Some(message) = channel.basic_get(queue.into(), options).await.unwrap() {
                return Some(message.delivery.data);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Has the broker close the queue's connection (named after the jobs
    /// queue), as an operator or a failing node would.
    async fn force_close(names: &QueueNames) {
        let name = names.jobs.clone();
        tokio::task::spawn_blocking(move || {
            let listing =
                rabbitmqctl(&["list_connections", "--silent", "pid", "client_properties"]);
            let pids: Vec<&str> = listing
                .lines()
                .filter(|line| line.contains(&format!("\"{name}\"")))
                .filter_map(|line| line.split_whitespace().next())
                .collect();
            assert_eq!(pids.len(), 1, "one connection named {name} in {listing}");
            rabbitmqctl(&["close_connection", pids[0], "test"]);
        })
        .await
        .unwrap();
    }

    /// Waits until the supervisor has replaced `old`.
    async fn wait_for_new_link(queue: &RabbitQueue, old: &Arc<Link>) {
        let mut link = queue.shared.link.subscribe();
        let replaced = link.wait_for(|l| l.as_ref().is_some_and(|l| !Arc::ptr_eq(l, old)));
        tokio::time::timeout(Duration::from_secs(30), replaced)
            .await
            .expect("reconnected within 30 s")
            .unwrap();
    }

    #[tokio::test]
    async fn rabbit_queue_passes_the_queue_suite() {
        with_names(async |names| {
            let queue = connect(names, RabbitOptions::default()).await;
            suite::run_all(&queue, async |delivery| {
                // The consumer's channel goes, with the delivery on it.
                let link = queue.shared.current_link().await.unwrap();
                link.consumer_channel
                    .close(200, "simulated consumer death".into())
                    .await
                    .unwrap();
                drop(delivery);
            })
            .await;
        })
        .await;
    }

    #[tokio::test]
    async fn a_busy_worker_is_sent_no_job_it_cannot_start() {
        with_names(async |names| {
            let busy = connect(names, RabbitOptions::default()).await;
            let idle = connect(names, RabbitOptions::default()).await;
            busy.publish(&[job(1)]).await.unwrap();
            // The busy worker's only slot takes a job and acknowledges it at
            // once, as a worker does when it holds the lease.
            let running = take(&busy).await;
            assert_eq!(running.job(), &job(1));
            running.ack().await.unwrap();

            // Every later job goes to the worker with a free slot.
            busy.publish(&[job(2), job(3), job(4)]).await.unwrap();
            let mut seen = Vec::new();
            for _ in 0..3 {
                let delivery = take(&idle).await;
                seen.push(delivery.job().mailbox);
                delivery.ack().await.unwrap();
            }
            assert_eq!(seen, [2, 3, 4]);
        })
        .await;
    }

    #[tokio::test]
    async fn poison_job_is_dead_lettered_after_the_delivery_limit() {
        with_names(async |names| {
            let options = RabbitOptions {
                delivery_limit: 2,
                ..RabbitOptions::default()
            };
            let queue = connect(names, options).await;
            queue.publish(&[job(7)]).await.unwrap();

            let mut deliveries = 0;
            while let Some(delivery) = take_within(&queue, Duration::from_secs(2)).await {
                assert_eq!(delivery.job(), &job(7));
                deliveries += 1;
                assert!(deliveries <= 10, "the poison job keeps coming back");
                delivery.requeue().await.unwrap();
            }
            // The first delivery and one per allowed hand-back.
            assert_eq!(deliveries, 3);

            let (_connection, channel) = admin().await;
            let dead = get_raw(&channel, &names.dead_letters)
                .await
                .expect("the poison job in the dead-letter queue");
            assert_eq!(serde_json::from_slice::<Job>(&dead).unwrap(), job(7));
        })
        .await;
    }

    #[tokio::test]
    async fn malformed_message_is_dead_lettered_and_skipped() {
        with_names(async |names| {
            let queue = connect(names, RabbitOptions::default()).await;
            let (_connection, channel) = admin().await;
            // Confirmed, so that it is queued before the job that follows
            // (they travel on different connections).
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
            channel
                .basic_publish(
                    "".into(),
                    names.jobs.as_str().into(),
                    BasicPublishOptions::default(),
                    b"not a job",
                    BasicProperties::default(),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            queue.publish(&[job(8)]).await.unwrap();

            let delivery = take(&queue).await;
            assert_eq!(delivery.job(), &job(8));
            delivery.ack().await.unwrap();
            let dead = get_raw(&channel, &names.dead_letters).await;
            assert_eq!(dead.as_deref(), Some(&b"not a job"[..]));
        })
        .await;
    }

    #[tokio::test]
    async fn survives_a_forced_connection_close_without_losing_jobs() {
        with_names(async |names| {
            let queue = connect(names, RabbitOptions::default()).await;
            for mailbox in 1..=3 {
                queue.publish(&[job(mailbox)]).await.unwrap();
            }
            let held = take(&queue).await;
            assert_eq!(held.job(), &job(1));
            let old = queue.shared.current_link().await.unwrap();

            // Publishing goes on while the broker drops the connection.
            let publishing = async {
                for mailbox in 4..=30 {
                    queue.publish(&[job(mailbox)]).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            let closing = async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                force_close(names).await;
                wait_for_new_link(&queue, &old).await;
            };
            tokio::join!(publishing, closing);

            // Taken on the old channel: settling fails, without panicking.
            assert!(held.ack().await.is_err());

            // Every job arrives (some perhaps twice: at least once).
            let mut seen = BTreeSet::new();
            while seen.len() < 30 {
                let delivery = take(&queue).await;
                seen.insert(delivery.job().mailbox);
                delivery.ack().await.unwrap();
            }
            while let Some(duplicate) = take_within(&queue, Duration::from_secs(1)).await {
                assert!(seen.contains(&duplicate.job().mailbox));
                duplicate.ack().await.unwrap();
            }
            assert_eq!(seen, (1..=30).collect());
        })
        .await;
    }

    // Multi-threaded for `block_in_place` around `rabbitmqctl`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publish_waits_out_an_outage_then_gives_up() {
        with_names(async |names| {
            let user =
                tokio::task::block_in_place(|| TestUser::new(format!("{}-user", names.jobs)));
            let options = RabbitOptions {
                publish_timeout: Duration::from_secs(3),
                max_reconnect_delay: Duration::from_secs(1),
                ..RabbitOptions::default()
            };
            let queue = RabbitQueue::connect_with(&user.url(), names.clone(), options)
                .await
                .unwrap_or_else(|e| panic!("{e}: is RabbitMQ running? {START_IT}"));
            queue.publish(&[job(1)]).await.unwrap();

            // The broker drops us and will not let us back in.
            tokio::task::block_in_place(|| user.revoke());
            force_close(names).await;
            let started = Instant::now();
            let refused = queue.publish(&[job(2)]).await;
            assert!(
                matches!(refused, Err(QueueError::Unavailable(_))),
                "{refused:?}"
            );
            assert!(started.elapsed() >= Duration::from_secs(3));

            // Once it does, publishing and consuming go on.
            tokio::task::block_in_place(|| user.grant());
            queue.publish(&[job(3)]).await.unwrap();
            for mailbox in [1, 3] {
                let delivery = take(&queue).await;
                assert_eq!(delivery.job(), &job(mailbox));
                delivery.ack().await.unwrap();
            }
            assert!(take_within(&queue, Duration::from_secs(1)).await.is_none());
        })
        .await;
    }

    #[tokio::test]
    async fn plain_amqp_to_another_host_is_refused_before_connecting() {
        // TEST-NET-1 is never contacted: the refusal comes first, at once.
        let started = Instant::now();
        let error = RabbitQueue::connect("amqp://mailwave:pw@192.0.2.7:5672/%2f", unique_names())
            .await
            .err()
            .expect("plain AMQP to another host is refused");
        let message = error.to_string();
        assert!(
            message.contains("refusing plain-text AMQP to 192.0.2.7"),
            "{message}"
        );
        assert!(message.contains("amqps://"), "{message}");
        assert!(
            !message.contains(":pw@"),
            "the password is shown: {message}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "it tried to connect"
        );

        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "not a certificate\n").unwrap();
        for (ca_file, expected) in [
            (dir.path().join("missing.pem"), "amqp_ca_file"),
            (not_pem, "no PEM certificate"),
        ] {
            let options = RabbitOptions {
                ca_file: Some(ca_file),
                ..RabbitOptions::default()
            };
            let error =
                RabbitQueue::connect_with("amqps://192.0.2.7:5671/%2f", unique_names(), options)
                    .await
                    .err()
                    .expect("a bad ca_file is an error");
            assert!(error.to_string().contains(expected), "{error}");
        }
        // On loopback, plain AMQP stays allowed (the local broker).
        assert!(broker_tls("amqp://guest:guest@127.0.0.1:5672/%2f", None).is_ok());
    }

    #[tokio::test]
    async fn connect_fails_cleanly_when_the_broker_is_unreachable() {
        let error = RabbitQueue::connect("amqp://guest:secret@127.0.0.1:1/%2f", unique_names())
            .await
            .err()
            .expect("nothing listens on port 1");
        assert!(matches!(error, QueueError::Unavailable(_)));
        let message = error.to_string();
        assert!(message.contains("guest@127.0.0.1:1"), "{message}");
        assert!(!message.contains("secret"), "{message}");
    }
}
