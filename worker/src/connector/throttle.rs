//! The throttling-aware request scheduler every connector calls around each
//! request: IMAP commands and Microsoft Graph HTTP requests alike.
//!
//! An [`EndpointThrottle`] is one endpoint of the process (say
//! `graph:tenant-b`); each mailbox using it gets a [`MailboxThrottle`]. A
//! request first takes a [`Permit`] ([`MailboxThrottle::acquire`]), which
//! waits until
//!
//! - the mailbox is not paused: after a throttle the *whole* mailbox waits
//!   until the server's hint has passed, since anything sent in that window
//!   only extends the penalty (a later throttle with an earlier hint never
//!   shortens the pause);
//! - a slot of the mailbox's adaptive window and one of the endpoint's are
//!   free;
//! - the endpoint's optional rate limit (governor) allows one more request.
//!
//! The request's outcome then settles the permit, and the windows adapt by
//! additive increase, multiplicative decrease (AIMD): a window grows by one
//! after a window's worth of successes, up to its ceiling, and shrinks on
//! throttles (mailbox × 0.5, endpoint × 0.75), transient faults (× 0.9) and
//! latency growth (mailbox × 0.9), never below one. As in TCP, a window
//! shrinks at most once per window of requests: the outcome of a request
//! that was sent before the last decrease (under the old, larger window)
//! does not decrease it again, so four requests throttled together halve
//! the mailbox's window once, not four times.
//!
//! Uploads are paced as well ([`MailboxThrottle::acquire_upload`]): servers
//! limit the bytes a mailbox may upload per rolling window (Exchange Online:
//! 150 MB per 5 minutes), and a client that bursts into that budget and
//! waits out each 429 is throttled over and over. Each mailbox keeps a
//! ledger of its uploads of the last window, as the server counts them, and
//! an upload goes when it fits what the window has left: a new mailbox may
//! send a whole window at once, and from then on the window stays full as
//! its oldest uploads leave it. An upload is stamped when it is sent (not
//! when it took its turn) and stays in the ledger for the window and 2% of
//! it more (the time a request takes to reach the server; clocks a little
//! apart); one the server throttled leaves it (the server counted nothing).
//! A connector with several uploads to make takes the turn of the first one
//! that fits ([`MailboxThrottle::upload_turn`]: pick what fits) instead of
//! waiting for the first one; an upload larger than what is left waits
//! until enough has left the window, never for a 429, and one larger than
//! the whole budget until the window is empty. The budget in force starts
//! at the configured one ([`ThrottleSettings::upload_budget`]), shrinks by
//! a tenth on each throttled upload that pauses the mailbox, and grows back
//! by 1% of the configured budget every 5 s without one (additive
//! increase, multiplicative decrease, on the bytes per window).
//!
//! Requests are paced per mailbox too when the server has a request budget
//! per rolling window ([`ThrottleSettings::mailbox_requests`]; Exchange
//! Online: 10,000 per 10 minutes per app and mailbox): a tenth of the
//! budget may go at once, the rest evenly over the window, so that no
//! window of the server's ever holds the whole budget. A request takes its
//! turn before any slot, so a mailbox waiting for its turn holds none of
//! the endpoint's. When the endpoint's ceiling stands for a limit per
//! mailbox but the server throttles a mailbox for concurrency below its
//! own ceiling, the limit is the app's, and the endpoint's ceiling comes
//! down to the mailbox's ([`Permit::concurrency_throttled`]).
//!
//! Every wait is bounded ([`WaitLimits`]): a server's hint is obeyed up to
//! `migration.max_retry_after_secs`, and a longer one fails the mailbox at
//! once, quoting the server ([`WaitError::HintTooLong`]), rather than
//! pausing it for that long; the pauses of one pass, together, may last up
//! to `migration.max_pass_wait_secs` ([`WaitError::PassWaitSpent`]); and
//! the worker's stop token ends any wait
//! (pauses, slots, rate limit, upload pacing, retry sleeps) at once
//! ([`WaitError::Stopped`]).
//!
//! Requests, throttle events, retries by class and the time spent waiting
//! are counted per endpoint in one place, [`ThrottleCounters`]; a retry
//! only when a connector schedules one ([`MailboxThrottle::retrying`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use mailwave_common::config::MigrationConfig;
use mailwave_common::retry::Budgets;
use mailwave_common::{Classify, ErrorClass};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::connector::ConnectorError;

/// How long a mailbox's baseline latency (the lowest smoothed latency) is
/// kept before a newer, higher one may replace it.
const BASELINE_LIFETIME: Duration = Duration::from_secs(300);
/// Weight of a new sample in the smoothed latency.
const LATENCY_SMOOTHING: f64 = 0.125;
/// Factor of the decrease on a transient fault or latency growth.
const GENTLE_DECREASE: f64 = 0.9;
/// Factor of the mailbox window's decrease on a throttle.
const MAILBOX_THROTTLE_DECREASE: f64 = 0.5;
/// Factor of the endpoint window's decrease on a throttle.
const ENDPOINT_THROTTLE_DECREASE: f64 = 0.75;
/// The longest hint any setting lets a server have obeyed (the clock
/// cannot overflow).
const MAX_PAUSE: Duration = Duration::from_secs(24 * 3600);
/// A mailbox nobody holds, idle and not paused for this long, is forgotten.
const IDLE_MAILBOX_LIFETIME: Duration = Duration::from_secs(900);
/// How often the mailboxes are swept for idle ones, at most.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// An upload stays in a mailbox's ledger for the server's window and this
/// share of it more: the time a request takes to reach the server, and
/// clocks that run a little apart.
const UPLOAD_WINDOW_MARGIN: f64 = 0.02;
/// The upload budget in force grows by this share of the configured one
/// after each [`UPLOAD_BUDGET_PERIOD`] without a throttled upload…
const UPLOAD_BUDGET_INCREASE: f64 = 0.01;
const UPLOAD_BUDGET_PERIOD: Duration = Duration::from_secs(5);
/// …and shrinks by this factor on a throttled upload.
const UPLOAD_BUDGET_DECREASE: f64 = 0.9;

/// Settings of one endpoint's scheduler.
#[derive(Debug, Clone, PartialEq)]
pub struct ThrottleSettings {
    /// Most requests in flight per mailbox (Graph: 4); at least 1.
    pub mailbox_ceiling: usize,
    /// Most requests in flight for the whole endpoint, all mailboxes of this
    /// process; at least 1.
    pub endpoint_ceiling: usize,
    /// Optional steady rate limit for the endpoint, requests per second
    /// (governor), with bursts of up to one second's worth. A value that is
    /// not a positive finite number sets no limit.
    pub requests_per_second: Option<f64>,
    /// Latency growth that counts as congestion: a request slower than
    /// `latency_factor` × the mailbox's baseline latency (the lowest recent
    /// smoothed latency) shrinks the window. `f64::INFINITY` turns it off.
    pub latency_factor: f64,
    /// The server's upload budget per mailbox over a rolling window (its
    /// documented one); `None`: uploads are not paced. The budget in force
    /// adapts below it to the server's throttles.
    pub upload_budget: Option<UploadBudget>,
    /// The server's budget of requests per mailbox over a rolling window;
    /// `None`: none. Each mailbox's requests are paced within it.
    pub mailbox_requests: Option<RequestBudget>,
}

/// A budget of `requests` per rolling `window` (Exchange Online: 10,000
/// per 10 minutes per app and mailbox).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestBudget {
    pub requests: u64,
    pub window: Duration,
}

/// A budget of `bytes` uploaded per rolling `window` (Exchange Online:
/// 150 MB per 5 minutes per mailbox).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadBudget {
    pub bytes: u64,
    pub window: Duration,
}

impl RequestBudget {
    /// The pace that never sends more than `requests` in any `window`: a
    /// burst of a tenth of the budget, then one request each
    /// `window / (requests − burst − 1)`. Such a limiter lets through at
    /// most burst + window / period requests in any span of one window,
    /// one fewer than the budget. `None` for an empty budget.
    fn quota(self) -> Option<Quota> {
        let burst = (self.requests / 10).max(1);
        let steady = self.requests.saturating_sub(burst + 1).max(1);
        let period = self.window.checked_div(u32::try_from(steady).ok()?)?;
        let burst = NonZeroU32::new(u32::try_from(burst).ok()?)?;
        Some(Quota::with_period(period)?.allow_burst(burst))
    }
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        ThrottleSettings {
            mailbox_ceiling: 4,
            endpoint_ceiling: 64,
            requests_per_second: None,
            latency_factor: 3.0,
            upload_budget: None,
            mailbox_requests: None,
        }
    }
}

/// Counters of one endpoint, by error class: requests, throttle events,
/// retries, and seconds spent waiting (in the gate and for a slot). One place
/// for what metrics will later export.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ThrottleCounters {
    /// Permits handed out (requests sent).
    pub requests: u64,
    /// Requests settled as succeeded.
    pub succeeded: u64,
    /// Requests the server throttled.
    pub throttle_events: u64,
    /// Requests sent again, by the class of the failure that made them
    /// (`ErrorClass::as_str()`): counted when the retry is scheduled, never
    /// for a failure that is not retried.
    pub retries: BTreeMap<String, u64>,
    /// Time spent in [`MailboxThrottle::acquire`]: paused, waiting for a
    /// slot or for the rate limit.
    pub seconds_waiting: f64,
}

/// What bounds the waits of one pass over a mailbox (its clones share the
/// pass's account): the longest hint of a server that is obeyed, the time
/// its throttles may pause the pass in all, and the worker's stop.
#[derive(Clone, Debug)]
pub struct WaitLimits {
    /// A longer hint fails the mailbox instead of pausing it (at most a day).
    pub max_retry_after: Duration,
    /// The most time throttles may pause the pass, all pauses together;
    /// `None`: no bound.
    pub max_pass_wait: Option<Duration>,
    /// Cancelled when the worker stops: every wait ends at once.
    pub stop: CancellationToken,
    /// How long throttles have paused the pass so far.
    paused: Arc<Mutex<Duration>>,
}

impl WaitLimits {
    /// The limits of `migration.max_retry_after_secs` and
    /// `max_pass_wait_secs` for one pass, ended by `stop`.
    pub fn new(migration: &MigrationConfig, stop: CancellationToken) -> WaitLimits {
        WaitLimits {
            max_retry_after: Duration::from_secs(migration.max_retry_after_secs).min(MAX_PAUSE),
            max_pass_wait: migration.max_pass_wait_secs.map(Duration::from_secs),
            stop,
            paused: Arc::default(),
        }
    }

    /// How long throttles have paused the pass so far.
    pub fn paused(&self) -> Duration {
        *lock(&self.paused)
    }
}

/// Why a wait of the scheduler did not end in its request being sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    /// The worker is stopping.
    #[error("interrupted: the worker is shutting down")]
    Stopped,
    /// The server asked for a longer wait than the limit allows.
    #[error(
        "the server asked to wait {} s, more than migration.max_retry_after_secs ({} s) allows: {server}",
        hint.as_secs(),
        limit.as_secs()
    )]
    HintTooLong {
        hint: Duration,
        limit: Duration,
        /// What the server answered (its error as the connector read it).
        server: String,
    },
    /// One more pause would make the pass wait longer than its bound.
    #[error(
        "throttles would pause this pass for {} s in all, more than migration.max_pass_wait_secs ({} s) allows; the server answered: {server}",
        waited.as_secs(),
        limit.as_secs()
    )]
    PassWaitSpent {
        waited: Duration,
        limit: Duration,
        server: String,
    },
}

/// A throttle the mailbox does not pause for: it fails instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseRefused {
    /// The hint is beyond [`WaitLimits::max_retry_after`].
    HintOverLimit { hint: Duration, limit: Duration },
    /// The pause would take the pass's pauses beyond
    /// [`WaitLimits::max_pass_wait`].
    PassWaitSpent { waited: Duration, limit: Duration },
}

impl PauseRefused {
    /// The mailbox's failure, quoting what the server answered.
    pub fn quoting(self, server: impl fmt::Display) -> WaitError {
        let server = server.to_string();
        match self {
            PauseRefused::HintOverLimit { hint, limit } => WaitError::HintTooLong {
                hint,
                limit,
                server,
            },
            PauseRefused::PassWaitSpent { waited, limit } => WaitError::PassWaitSpent {
                waited,
                limit,
                server,
            },
        }
    }
}

impl From<WaitError> for ConnectorError {
    fn from(error: WaitError) -> Self {
        match error {
            WaitError::Stopped => ConnectorError::interrupted(),
            WaitError::HintTooLong { .. } | WaitError::PassWaitSpent { .. } => {
                ConnectorError::mailbox(error.to_string())
            }
        }
    }
}

/// One endpoint (e.g. "graph:tenant-b"): its adaptive limit, its rate
/// limiter, its counters, and the per-mailbox state of every mailbox using
/// it. Cheap to clone (Arc inside); shared by all mailboxes of the process
/// that use the endpoint.
#[derive(Clone)]
pub struct EndpointThrottle {
    shared: Arc<EndpointShared>,
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

struct EndpointShared {
    label: String,
    /// The settings of the wave that used the endpoint last
    /// ([`Schedulers::endpoint`]), with the rate limiter they ask for.
    settings: Mutex<(ThrottleSettings, Option<Arc<Limiter>>)>,
    window: Arc<AdaptiveWindow>,
    clock: TokioClock,
    counters: Mutex<ThrottleCounters>,
    mailboxes: Mutex<Mailboxes>,
}

/// The mailboxes of an endpoint, by name.
struct Mailboxes {
    by_name: HashMap<String, Arc<MailboxShared>>,
    last_sweep: Instant,
}

/// The schedulers of one worker (a `mailwave run`, a `mailwave-worker`
/// process), by endpoint label: every mailbox the worker copies on an
/// endpoint counts in that endpoint's window. Owned by the worker's
/// context and passed down; nothing of it is global, so two workers in one
/// process (tests) never share a window.
#[derive(Default)]
pub struct Schedulers {
    endpoints: Mutex<HashMap<String, EndpointThrottle>>,
}

impl Schedulers {
    /// The scheduler of endpoint `label` (one per server, shared by every
    /// wave on it), with `settings`, the calling job's wave's, applied: a
    /// wave's ceilings, rate limit and pacing hold for its jobs even when
    /// an earlier wave made the endpoint. What the endpoint learned (its
    /// window, pauses, counters) is kept.
    pub fn endpoint(&self, label: &str, settings: ThrottleSettings) -> EndpointThrottle {
        let mut endpoints = lock(&self.endpoints);
        if let Some(endpoint) = endpoints.get(label) {
            endpoint.apply(settings);
            return endpoint.clone();
        }
        let endpoint = EndpointThrottle::new(label, settings);
        endpoints.insert(label.to_owned(), endpoint.clone());
        endpoint
    }

    /// The counters of every endpoint, by label.
    pub fn counters(&self) -> BTreeMap<String, ThrottleCounters> {
        lock(&self.endpoints)
            .iter()
            .map(|(label, endpoint)| (label.clone(), endpoint.counters()))
            .collect()
    }
}

impl EndpointThrottle {
    /// The scheduler of endpoint `label` (used in logs), both windows at
    /// their ceilings.
    pub fn new(label: impl Into<String>, settings: ThrottleSettings) -> EndpointThrottle {
        let clock = TokioClock {
            origin: Instant::now(),
        };
        let limiter = limiter(&settings, &clock);
        EndpointThrottle {
            shared: Arc::new(EndpointShared {
                label: label.into(),
                window: Arc::new(AdaptiveWindow::new(settings.endpoint_ceiling)),
                settings: Mutex::new((settings, limiter)),
                clock,
                counters: Mutex::default(),
                mailboxes: Mutex::new(Mailboxes {
                    by_name: HashMap::new(),
                    last_sweep: Instant::now(),
                }),
            }),
        }
    }

    /// The scheduler of one mailbox on this endpoint (created on first use,
    /// shared afterwards, keyed by the mailbox's name), its waits bounded by
    /// `limits` (this handle's: one pass's). A mailbox that nobody has held
    /// for a long while, with nothing in flight and no pause, is forgotten
    /// and starts afresh.
    pub fn mailbox(&self, mailbox: &str, limits: WaitLimits) -> MailboxThrottle {
        let now = Instant::now();
        let mut mailboxes = lock(&self.shared.mailboxes);
        if now.duration_since(mailboxes.last_sweep) >= SWEEP_INTERVAL {
            mailboxes.last_sweep = now;
            mailboxes
                .by_name
                .retain(|_, shared| Arc::strong_count(shared) > 1 || !shared.is_idle(now));
        }
        let settings = self.settings();
        let shared = mailboxes
            .by_name
            .entry(mailbox.to_owned())
            .or_insert_with(|| {
                Arc::new(MailboxShared {
                    name: mailbox.to_owned(),
                    window: Arc::new(AdaptiveWindow::new(settings.mailbox_ceiling)),
                    requests: settings
                        .mailbox_requests
                        .and_then(RequestBudget::quota)
                        .map(|quota| {
                            RateLimiter::direct_with_clock(quota, self.shared.clock.clone())
                        }),
                    state: Mutex::new(MailboxPacing {
                        paused_until: None,
                        throttles_in_a_row: 0,
                        smoothed_latency: None,
                        baseline: None,
                        last_active: now,
                        uploads: settings
                            .upload_budget
                            .filter(|budget| budget.bytes > 0 && !budget.window.is_zero())
                            .map(|budget| UploadWindow::new(budget, now)),
                    }),
                })
            });
        MailboxThrottle {
            endpoint: Arc::clone(&self.shared),
            mailbox: Arc::clone(shared),
            limits,
        }
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> ThrottleCounters {
        lock(&self.shared.counters).clone()
    }

    /// The settings in force.
    pub fn settings(&self) -> ThrottleSettings {
        lock(&self.shared.settings).0.clone()
    }

    /// Puts `settings` in force: the endpoint's ceiling (its window shrinks
    /// at once, or may grow again), the rate limit (a new one starts with a
    /// full burst), and for mailboxes made from now on their ceiling and
    /// first upload rate. The same settings again change nothing.
    fn apply(&self, settings: ThrottleSettings) {
        let mut current = lock(&self.shared.settings);
        if current.0 == settings {
            return;
        }
        tracing::info!(endpoint = %self.shared.label, ?settings, "endpoint settings changed");
        self.shared.window.set_ceiling(settings.endpoint_ceiling);
        let limiter = if current.0.requests_per_second == settings.requests_per_second {
            current.1.take()
        } else {
            limiter(&settings, &self.shared.clock)
        };
        *current = (settings, limiter);
    }
}

/// The rate limiter `settings` ask for, if any.
fn limiter(settings: &ThrottleSettings, clock: &TokioClock) -> Option<Arc<Limiter>> {
    settings
        .requests_per_second
        .and_then(quota)
        .map(|quota| Arc::new(RateLimiter::direct_with_clock(quota, clock.clone())))
}

/// Waits until `limiter` allows one more request.
async fn until_allowed(limiter: &Limiter, clock: &TokioClock) {
    while let Err(not_until) = limiter.check() {
        tokio::time::sleep(not_until.wait_time_from(clock.now())).await;
    }
}

impl EndpointShared {
    /// Waits until the rate limit (if any) allows one more request.
    async fn rate_limit(&self) {
        let Some(limiter) = lock(&self.settings).1.clone() else {
            return;
        };
        until_allowed(&limiter, &self.clock).await;
    }

    fn count(&self, update: impl FnOnce(&mut ThrottleCounters)) {
        update(&mut lock(&self.counters));
    }
}

/// The quota of a rate of `per_second` requests, with bursts of up to one
/// second's worth; `None` when the rate is no positive finite number (or so
/// high that no limit is left).
fn quota(per_second: f64) -> Option<Quota> {
    if !(per_second.is_finite() && per_second > 0.0) {
        return None;
    }
    let period = Duration::try_from_secs_f64(per_second.recip()).ok()?;
    // Saturating float-to-int cast: at least 1, at most u32::MAX.
    let burst = NonZeroU32::new(per_second.floor() as u32).unwrap_or(NonZeroU32::MIN);
    Some(Quota::with_period(period)?.allow_burst(burst))
}

/// governor's time source: tokio's clock (so a paused test clock drives the
/// rate limit too), as the time since the endpoint was made.
#[derive(Clone)]
struct TokioClock {
    origin: Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }
}

/// The scheduler of one mailbox on one endpoint. Cheap to clone; every clone
/// (and every [`EndpointThrottle::mailbox`] of the same name) shares the
/// same state; the [`WaitLimits`] are the handle's own.
#[derive(Clone)]
pub struct MailboxThrottle {
    endpoint: Arc<EndpointShared>,
    mailbox: Arc<MailboxShared>,
    limits: WaitLimits,
}

struct MailboxShared {
    name: String,
    window: Arc<AdaptiveWindow>,
    /// The pace of the server's request budget, if it has one.
    requests: Option<Limiter>,
    state: Mutex<MailboxPacing>,
}

/// How one mailbox's requests are paced: its pause, its latencies, its
/// uploads.
struct MailboxPacing {
    /// The mailbox sends nothing before this.
    paused_until: Option<Instant>,
    /// Throttles since the last success: the attempt of the next back-off.
    throttles_in_a_row: u32,
    /// Exponentially weighted moving average of the latencies.
    smoothed_latency: Option<Duration>,
    /// The lowest smoothed latency of late, and when it was set.
    baseline: Option<(Duration, Instant)>,
    /// When a request of the mailbox last started or ended.
    last_active: Instant,
    /// The uploads of the server's last window, if they are paced.
    uploads: Option<UploadWindow>,
}

/// A mailbox's uploads over the server's rolling window (see the module's
/// docs): a ledger of what was sent, and the budget in force.
struct UploadWindow {
    configured: UploadBudget,
    /// Bytes per window in force: the configured budget, less what the
    /// server's throttles took off.
    budget: u64,
    /// How long an upload counts: the window and its margin.
    span: Duration,
    /// Uploads of the last span, oldest first: their turns, by when they
    /// were sent (or reserved, until they are).
    ledger: VecDeque<Upload>,
    /// The bytes of the ledger.
    held: u64,
    /// The number of the next turn.
    next_turn: u64,
    /// When the budget in force last grew (or was cut).
    raised: Instant,
}

/// One upload of a mailbox's ledger.
struct Upload {
    turn: u64,
    at: Instant,
    bytes: u64,
}

impl UploadWindow {
    fn new(configured: UploadBudget, now: Instant) -> UploadWindow {
        UploadWindow {
            configured,
            budget: configured.bytes,
            span: configured.window.mul_f64(1.0 + UPLOAD_WINDOW_MARGIN),
            ledger: VecDeque::new(),
            held: 0,
            next_turn: 0,
            raised: now,
        }
    }

    /// Drops the uploads that left the window by `now`.
    fn forget(&mut self, now: Instant) {
        while let Some(oldest) = self.ledger.front() {
            if oldest.at + self.span > now {
                break;
            }
            self.held -= oldest.bytes;
            self.ledger.pop_front();
        }
    }

    /// Whether `bytes` more fit the window now: within the budget, or the
    /// window is empty (an upload larger than the whole budget).
    fn fits(&self, bytes: u64) -> bool {
        self.held == 0 || self.held + bytes <= self.budget
    }

    /// When `bytes` fit the window, if nothing else is sent meanwhile.
    fn fits_at(&self, bytes: u64, now: Instant) -> Instant {
        if self.fits(bytes) {
            return now;
        }
        // What has to leave: all of it for an upload over the budget.
        let excess = (self.held + bytes)
            .saturating_sub(self.budget)
            .min(self.held);
        let mut left = 0;
        for upload in &self.ledger {
            left += upload.bytes;
            if left >= excess {
                return upload.at + self.span;
            }
        }
        now + self.span
    }

    /// The turn of the first of `sizes` that fits the window now (its
    /// index and its turn's number), or else when the smallest will.
    fn reserve_first_fitting(
        &mut self,
        sizes: &[u64],
        now: Instant,
    ) -> Result<(usize, u64), Instant> {
        self.forget(now);
        let Some(index) = sizes.iter().position(|&bytes| self.fits(bytes)) else {
            let smallest = sizes.iter().copied().min().unwrap_or(0);
            return Err(self.fits_at(smallest, now));
        };
        let turn = self.next_turn;
        self.next_turn += 1;
        self.ledger.push_back(Upload {
            turn,
            at: now,
            bytes: sizes[index],
        });
        self.held += sizes[index];
        Ok((index, turn))
    }

    /// The upload of `turn` is sent now, `bytes` long: stamped (the server
    /// counts it from now), its size made exact.
    fn sent(&mut self, turn: u64, bytes: u64, now: Instant) {
        // Gone already if it waited longer than the window for its slot.
        self.take(turn);
        self.held += bytes;
        // Later than any other upload but those sent in the same instant.
        let at = self.ledger.partition_point(|other| other.at <= now);
        self.ledger.insert(
            at,
            Upload {
                turn,
                at: now,
                bytes,
            },
        );
    }

    /// Takes `turn`'s upload out of the ledger (the server did not count
    /// it, or it was never sent).
    fn take(&mut self, turn: u64) -> Option<Upload> {
        let index = self.ledger.iter().rposition(|upload| upload.turn == turn)?;
        let upload = self.ledger.remove(index)?;
        self.held -= upload.bytes;
        Some(upload)
    }

    /// An upload went through: after a period without throttles the budget
    /// in force grows back towards the configured one.
    fn uploaded(&mut self, now: Instant) {
        if self.budget < self.configured.bytes
            && now.saturating_duration_since(self.raised) >= UPLOAD_BUDGET_PERIOD
        {
            let step = (self.configured.bytes as f64 * UPLOAD_BUDGET_INCREASE).ceil() as u64;
            self.budget = (self.budget + step).min(self.configured.bytes);
            self.raised = now;
        }
    }

    /// The upload of `turn` was throttled and the mailbox pauses until
    /// `until`: it leaves the ledger; `spent` (the server's hint opened the
    /// pause, rather than meeting one already open) cuts the budget in
    /// force by a tenth.
    fn throttled(&mut self, turn: u64, now: Instant, until: Instant, spent: bool) {
        self.take(turn);
        if spent {
            self.budget = ((self.budget as f64 * UPLOAD_BUDGET_DECREASE) as u64).max(1);
            self.raised = until.max(now);
        }
    }
}

/// A mailbox's turn to upload ([`MailboxThrottle::upload_turn`]): its bytes
/// are held in the mailbox's window until it is sent. A turn dropped unsent
/// gives them back.
pub struct UploadTurn {
    mailbox: Arc<MailboxShared>,
    /// `None`: uploads are not paced.
    turn: Option<u64>,
    sent: bool,
}

impl UploadTurn {
    /// The upload is sent now, `bytes` long.
    fn sent(&mut self, bytes: u64) {
        self.sent = true;
        if let (Some(turn), Some(window)) = (self.turn, lock(&self.mailbox.state).uploads.as_mut())
        {
            window.sent(turn, bytes, Instant::now());
        }
    }
}

impl Drop for UploadTurn {
    fn drop(&mut self) {
        if self.sent {
            return;
        }
        if let (Some(turn), Some(window)) = (self.turn, lock(&self.mailbox.state).uploads.as_mut())
        {
            window.take(turn);
        }
    }
}

impl MailboxShared {
    /// Until when the mailbox is paused, if it is at `now`.
    fn paused_until(&self, now: Instant) -> Option<Instant> {
        lock(&self.state).paused_until.filter(|until| *until > now)
    }

    fn is_idle(&self, now: Instant) -> bool {
        let state = lock(&self.state);
        lock(&self.window.state).in_flight == 0
            && state.paused_until.is_none_or(|until| until <= now)
            && now.duration_since(state.last_active) >= IDLE_MAILBOX_LIFETIME
            // What the server still counts is not forgotten.
            && state.uploads.as_ref().is_none_or(|window| {
                window
                    .ledger
                    .back()
                    .is_none_or(|upload| upload.at + window.span <= now)
            })
    }

    fn touch(&self) {
        lock(&self.state).last_active = Instant::now();
    }
}

impl MailboxThrottle {
    /// Waits until the mailbox's throttle window (if any) has passed, a slot
    /// of the mailbox's adaptive window and one of the endpoint's are free,
    /// and the rate limiter allows; the permit holds both slots until it is
    /// settled or dropped. Time spent waiting is counted.
    ///
    /// Cancel-safe: dropping the future frees whatever slot it had taken.
    /// Fails only when the stop token is cancelled meanwhile.
    pub async fn acquire(&self) -> Result<Permit, WaitError> {
        self.until_stopped(self.wait_for_permit()).await
    }

    /// `wait`, unless the stop token is cancelled first.
    async fn until_stopped<T>(&self, wait: impl Future<Output = T>) -> Result<T, WaitError> {
        tokio::select! {
            biased;
            () = self.limits.stop.cancelled() => Err(WaitError::Stopped),
            done = wait => Ok(done),
        }
    }

    /// Sleeps for `wait` (a back-off between attempts), unless the stop
    /// token is cancelled first.
    pub async fn sleep(&self, wait: Duration) -> Result<(), WaitError> {
        self.until_stopped(tokio::time::sleep(wait)).await
    }

    async fn wait_for_permit(&self) -> Permit {
        let started = Instant::now();
        let mut budgeted = false;
        let permit = loop {
            while let Some(until) = self.mailbox.paused_until(Instant::now()) {
                tokio::time::sleep_until(until).await;
            }
            // The request's turn in the mailbox's budget, once, before any
            // slot: a mailbox waiting for its turn holds none of the
            // endpoint's.
            if let (false, Some(requests)) = (budgeted, &self.mailbox.requests) {
                until_allowed(requests, &self.endpoint.clock).await;
                budgeted = true;
                continue;
            }
            let mailbox_slot = self.mailbox.window.acquire().await;
            // A throttle may have paused the mailbox while this waited: then
            // the slots go back (the endpoint's belongs to other mailboxes).
            if self.paused() {
                continue;
            }
            let endpoint_slot = self.endpoint.window.acquire().await;
            if self.paused() {
                continue;
            }
            self.endpoint.rate_limit().await;
            if self.paused() {
                continue;
            }
            break Permit {
                endpoint: Arc::clone(&self.endpoint),
                mailbox: Arc::clone(&self.mailbox),
                mailbox_in_flight: lock(&self.mailbox.window.state).in_flight,
                mailbox_slot,
                endpoint_slot,
                upload: None,
                limits: self.limits.clone(),
            };
        };
        self.mailbox.touch();
        let waited = started.elapsed().as_secs_f64();
        self.endpoint.count(|counters| {
            counters.requests += 1;
            counters.seconds_waiting += waited;
        });
        permit
    }

    /// The turn of the first upload of `sizes` (bytes each) that fits the
    /// mailbox's upload window now (see the module's docs): its index and
    /// its turn, whose bytes the window holds from now on; or else when the
    /// smallest of them will fit, if nothing else is sent meanwhile. Without
    /// upload pacing, the first one's. `sizes` is not empty.
    pub fn upload_turn(&self, sizes: &[u64]) -> Result<(usize, UploadTurn), Instant> {
        let now = Instant::now();
        let mut state = lock(&self.mailbox.state);
        let Some(window) = state.uploads.as_mut() else {
            return Ok((0, self.turn(None)));
        };
        let (index, turn) = window.reserve_first_fitting(sizes, now)?;
        Ok((index, self.turn(Some(turn))))
    }

    fn turn(&self, turn: Option<u64>) -> UploadTurn {
        UploadTurn {
            mailbox: Arc::clone(&self.mailbox),
            turn,
            sent: false,
        }
    }

    /// [`MailboxThrottle::acquire`] for an upload of `bytes`: with its
    /// `turn` if one was taken ([`MailboxThrottle::upload_turn`]), or else
    /// once the upload fits the mailbox's upload window (see the module's
    /// docs). The turn is taken before a slot, so that an upload waiting
    /// for room holds none; the upload counts in the window from when the
    /// permit is handed out. Fails only when the stop token is cancelled
    /// meanwhile.
    pub async fn acquire_upload(
        &self,
        bytes: u64,
        turn: Option<UploadTurn>,
    ) -> Result<Permit, WaitError> {
        let mut turn = match turn {
            Some(turn) => turn,
            None => self.wait_for_upload_turn(bytes).await?,
        };
        let permit = self.acquire().await?;
        turn.sent(bytes);
        Ok(Permit {
            upload: Some(turn),
            ..permit
        })
    }

    /// Waits until `bytes` fit the mailbox's upload window and takes their
    /// turn. Time spent waiting is counted.
    async fn wait_for_upload_turn(&self, bytes: u64) -> Result<UploadTurn, WaitError> {
        let started = Instant::now();
        let turn = loop {
            match self.upload_turn(&[bytes]) {
                Ok((_, turn)) => break turn,
                Err(fits_at) => {
                    self.until_stopped(tokio::time::sleep_until(fits_at))
                        .await?;
                }
            }
        };
        let waited = started.elapsed().as_secs_f64();
        if waited > 0.0 {
            self.endpoint
                .count(|counters| counters.seconds_waiting += waited);
        }
        Ok(turn)
    }

    /// Sleeps until `at` (when an upload fits), unless the stop token is
    /// cancelled first.
    pub async fn sleep_until(&self, at: Instant) -> Result<(), WaitError> {
        self.until_stopped(tokio::time::sleep_until(at)).await
    }

    /// Runs one request with a permit and settles it by the outcome: for
    /// connectors whose requests are not retried one by one (IMAP, where a
    /// throttle restarts the pass from its checkpoints after the hint). A
    /// throttle whose hint is over the limit becomes the mailbox's failure
    /// ([`WaitError::HintTooLong`], quoting the server's error); a stop
    /// while waiting for the permit, [`WaitError::Stopped`].
    pub async fn run<T, E>(&self, request: impl Future<Output = Result<T, E>>) -> Result<T, E>
    where
        E: Classify + fmt::Display + From<WaitError>,
    {
        let permit = self.acquire().await?;
        let started = Instant::now();
        let outcome = request.await;
        match &outcome {
            Ok(_) => permit.succeeded(started.elapsed()),
            Err(error) if error.class() == ErrorClass::Throttled => {
                if let Err(over) = permit.throttled(error.retry_after()) {
                    return Err(over.quoting(error).into());
                }
            }
            Err(error) => permit.failed(error.class()),
        }
        outcome
    }

    /// Counts a request of the mailbox sent again after a failure of
    /// `class`: called when the retry is scheduled, not for failures that
    /// are not retried.
    pub fn retrying(&self, class: ErrorClass) {
        self.endpoint.count(|counters| {
            *counters
                .retries
                .entry(class.as_str().to_owned())
                .or_default() += 1;
        });
    }

    /// The mailbox's upload budget in force (bytes per window) and the
    /// bytes its window holds now, if its uploads are paced.
    pub fn upload_window(&self) -> Option<(u64, u64)> {
        let now = Instant::now();
        lock(&self.mailbox.state).uploads.as_mut().map(|window| {
            window.forget(now);
            (window.budget, window.held)
        })
    }

    /// The current window sizes (mailbox, endpoint), for tests and logs.
    pub fn windows(&self) -> (usize, usize) {
        (self.mailbox.window.size(), self.endpoint.window.size())
    }

    /// Until when the mailbox is paused, if it is.
    pub fn paused_until(&self) -> Option<Instant> {
        self.mailbox.paused_until(Instant::now())
    }

    fn paused(&self) -> bool {
        self.paused_until().is_some()
    }
}

/// A request slot. Settle it with one of the methods; dropping it unsettled
/// counts as neither success nor failure (e.g. the request future was
/// cancelled).
pub struct Permit {
    endpoint: Arc<EndpointShared>,
    mailbox: Arc<MailboxShared>,
    /// The mailbox's requests in flight when this one was let go, itself
    /// included.
    mailbox_in_flight: usize,
    mailbox_slot: Slot,
    endpoint_slot: Slot,
    /// The turn of the upload this permit is for (`None`: not an upload).
    upload: Option<UploadTurn>,
    /// The limits of the handle that took it.
    limits: WaitLimits,
}

impl Permit {
    /// The request succeeded after `latency`: additive increase (the window
    /// grows by one after a window's worth of successes), unless `latency`
    /// shows congestion (multiplicative decrease of the mailbox window by
    /// 0.9 at most once per window; no increase of either window).
    pub fn succeeded(self, latency: std::time::Duration) {
        let congested = {
            let mut state = lock(&self.mailbox.state);
            let now = Instant::now();
            state.throttles_in_a_row = 0;
            state.last_active = now;
            if let (Some(_), Some(window)) = (&self.upload, state.uploads.as_mut()) {
                window.uploaded(now);
            }
            state.record_latency(latency, lock(&self.endpoint.settings).0.latency_factor)
        };
        if congested {
            self.mailbox_slot.decrease(GENTLE_DECREASE);
        } else {
            self.mailbox_slot.increase();
            self.endpoint_slot.increase();
        }
        self.endpoint.count(|counters| counters.succeeded += 1);
    }

    /// The server throttled the request (`retry_after`: its hint). The whole
    /// mailbox pauses until now + hint (or, without a hint, the delay of
    /// [`Budgets::throttle_pause`] for the throttles in a row), unless it is
    /// already paused for longer; the mailbox window halves (at least 1),
    /// the endpoint window shrinks by 0.75 (at least 1), each at most once
    /// per window. Counted as a throttle event. Returns how long
    /// the mailbox now waits. A pause the [`WaitLimits`] do not allow (a
    /// hint over `max_retry_after`, or one more pause than `max_pass_wait`
    /// leaves room for) is not taken: it is returned as the mailbox's
    /// failure.
    pub fn throttled(
        self,
        retry_after: Option<std::time::Duration>,
    ) -> Result<std::time::Duration, PauseRefused> {
        let now = Instant::now();
        let until = {
            let mut state = lock(&self.mailbox.state);
            let attempt = state.throttles_in_a_row;
            state.throttles_in_a_row = attempt.saturating_add(1);
            state.last_active = now;
            let (wait, hinted) = match retry_after {
                Some(hint) => (hint, true),
                None => (Budgets::default().throttle_pause.delay(attempt), false),
            };
            self.account_pause(&state, now, wait, hinted)
                .map(|()| state.pause(now, wait, hinted, self.upload.as_ref()))
        };
        self.mailbox_slot.decrease(MAILBOX_THROTTLE_DECREASE);
        self.endpoint_slot.decrease(ENDPOINT_THROTTLE_DECREASE);
        self.endpoint
            .count(|counters| counters.throttle_events += 1);
        let until = until.inspect_err(|refused| {
            tracing::warn!(
                endpoint = %self.endpoint.label,
                mailbox = %self.mailbox.name,
                ?refused,
                "throttled beyond the limits of waiting: the mailbox fails"
            );
        })?;
        let wait = until.duration_since(now);
        tracing::debug!(
            endpoint = %self.endpoint.label,
            mailbox = %self.mailbox.name,
            ?retry_after,
            ?wait,
            windows = ?(self.mailbox_slot.window.size(), self.endpoint_slot.window.size()),
            "throttled: the mailbox pauses"
        );
        Ok(wait)
    }

    /// The server refused the request for too many at once (Outlook's
    /// `ApplicationThrottled` without a hint) while the mailbox had fewer
    /// than its ceiling out: the server's limit counts more than this
    /// mailbox (the app's requests across its mailboxes), so the endpoint's
    /// ceiling comes down to the mailbox's, as `concurrency_scope = "app"`
    /// sets it. Settle the permit afterwards. Returns whether it did.
    pub fn concurrency_throttled(&self) -> bool {
        let ceiling = lock(&self.endpoint.settings).0.mailbox_ceiling;
        if self.mailbox_in_flight >= ceiling
            || lock(&self.endpoint.window.state).ceiling <= ceiling as f64
        {
            return false;
        }
        tracing::warn!(
            endpoint = %self.endpoint.label,
            mailbox = %self.mailbox.name,
            in_flight = self.mailbox_in_flight,
            ceiling,
            "the server limits concurrent requests per app, not per mailbox: \
             the endpoint's ceiling comes down to the mailbox's"
        );
        self.endpoint.window.set_ceiling(ceiling);
        true
    }

    /// Whether the limits allow pausing the mailbox (`state`) for `wait`
    /// from `now` (`hinted`: the server's hint); if so, the time it adds to
    /// the open pause counts against the pass's bound.
    fn account_pause(
        &self,
        state: &MailboxPacing,
        now: Instant,
        wait: Duration,
        hinted: bool,
    ) -> Result<(), PauseRefused> {
        let limits = &self.limits;
        if hinted && wait > limits.max_retry_after {
            return Err(PauseRefused::HintOverLimit {
                hint: wait,
                limit: limits.max_retry_after,
            });
        }
        let open_until = state.paused_until.map_or(now, |until| until.max(now));
        let added = (now + wait).saturating_duration_since(open_until);
        let mut paused = lock(&limits.paused);
        let waited = paused.saturating_add(added);
        if let Some(limit) = limits.max_pass_wait.filter(|limit| waited > *limit) {
            return Err(PauseRefused::PassWaitSpent { waited, limit });
        }
        *paused = waited;
        Ok(())
    }

    /// The request failed for another reason of class `class` (transient
    /// faults: 503/504/timeouts): no window change for Item/Mailbox
    /// classes, a gentle decrease (0.9, at most once per window) of both
    /// windows for Transient. `Throttled` is taken as [`Permit::throttled`]
    /// without a hint.
    pub fn failed(self, class: mailwave_common::ErrorClass) {
        match class {
            ErrorClass::Throttled => {
                // Our own back-off: never over the hint limit; a pass out
                // of waiting time fails by the error this settles.
                let _ = self.throttled(None);
                return;
            }
            ErrorClass::Transient => {
                self.mailbox_slot.decrease(GENTLE_DECREASE);
                self.endpoint_slot.decrease(GENTLE_DECREASE);
            }
            ErrorClass::Item | ErrorClass::Mailbox => {}
        }
        self.mailbox.touch();
    }
}

impl MailboxPacing {
    /// Pauses the mailbox for `wait` from `now`, unless it is paused for
    /// longer already; returns until when. `hinted`: the wait is the
    /// server's hint. A throttled upload (its `upload` turn; `None` for other
    /// requests) leaves the mailbox's upload window; with a hint that opens
    /// the pause, the window's budget was spent.
    fn pause(
        &mut self,
        now: Instant,
        wait: Duration,
        hinted: bool,
        upload: Option<&UploadTurn>,
    ) -> Instant {
        let open = self.paused_until.filter(|paused| *paused > now);
        let until = open.map_or(now + wait, |paused| paused.max(now + wait));
        self.paused_until = Some(until);
        // A throttle without a hint (e.g. for concurrency) says nothing of
        // bytes.
        if let (Some(turn), Some(window)) = (upload.and_then(|u| u.turn), self.uploads.as_mut()) {
            window.throttled(turn, now, until, hinted && open.is_none());
        }
        until
    }

    /// Takes in one latency sample; whether it shows congestion (slower than
    /// `factor` × the baseline).
    fn record_latency(&mut self, latency: Duration, factor: f64) -> bool {
        let now = Instant::now();
        let congested = self
            .baseline
            .is_some_and(|(baseline, _)| latency.as_secs_f64() > factor * baseline.as_secs_f64());
        let smoothed = match self.smoothed_latency {
            None => latency,
            Some(smoothed) => Duration::from_secs_f64(
                smoothed.as_secs_f64() * (1.0 - LATENCY_SMOOTHING)
                    + latency.as_secs_f64() * LATENCY_SMOOTHING,
            ),
        };
        self.smoothed_latency = Some(smoothed);
        let renew = self.baseline.is_none_or(|(baseline, set)| {
            smoothed <= baseline || now.duration_since(set) >= BASELINE_LIFETIME
        });
        if renew {
            self.baseline = Some((smoothed, now));
        }
        congested
    }
}

/// A concurrency window that may shrink while slots are out (so not a
/// semaphore): `limit` moves between 1 and the ceiling, and a slot is free
/// while fewer than ⌊limit⌋ are taken.
struct AdaptiveWindow {
    state: Mutex<WindowState>,
    /// Woken when a slot is freed or the window grows.
    freed: Notify,
}

struct WindowState {
    limit: f64,
    ceiling: f64,
    in_flight: usize,
    /// Slots handed out so far: a slot's sequence number.
    issued: u64,
    /// `issued` at the last decrease: slots handed out before it do not
    /// decrease the window again.
    decreased_at: u64,
    /// Successes since the window last changed.
    successes: usize,
}

impl WindowState {
    fn size(&self) -> usize {
        // ⌊limit⌋, with limit in [1, ceiling].
        self.limit as usize
    }
}

impl AdaptiveWindow {
    fn new(ceiling: usize) -> AdaptiveWindow {
        let ceiling = ceiling.max(1) as f64;
        AdaptiveWindow {
            state: Mutex::new(WindowState {
                limit: ceiling,
                ceiling,
                in_flight: 0,
                issued: 0,
                decreased_at: 0,
                successes: 0,
            }),
            freed: Notify::new(),
        }
    }

    fn size(&self) -> usize {
        lock(&self.state).size()
    }

    /// A new ceiling: the window is cut to it at once (slots in flight end
    /// as they do), or may grow up to it from now on.
    fn set_ceiling(&self, ceiling: usize) {
        let grew = {
            let mut state = lock(&self.state);
            let ceiling = ceiling.max(1) as f64;
            let grew = ceiling > state.ceiling;
            state.ceiling = ceiling;
            state.limit = state.limit.min(ceiling);
            grew
        };
        if grew {
            self.freed.notify_waiters();
        }
    }

    /// Waits for a free slot and takes it.
    async fn acquire(self: &Arc<Self>) -> Slot {
        loop {
            // Registered before the check: `notify_waiters` reaches every
            // `Notified` that exists, polled or not, so no wake-up is lost
            // between the check and the wait.
            let freed = self.freed.notified();
            {
                let mut state = lock(&self.state);
                if state.in_flight < state.size() {
                    state.in_flight += 1;
                    let sequence = state.issued;
                    state.issued += 1;
                    return Slot {
                        window: Arc::clone(self),
                        sequence,
                    };
                }
            }
            freed.await;
        }
    }
}

/// One taken slot of an [`AdaptiveWindow`], given back on drop.
struct Slot {
    window: Arc<AdaptiveWindow>,
    sequence: u64,
}

impl Slot {
    /// Additive increase: one more slot after a window's worth of successes.
    fn increase(&self) {
        let grew = {
            let mut state = lock(&self.window.state);
            if state.limit >= state.ceiling {
                return;
            }
            state.successes += 1;
            if state.successes < state.size() {
                return;
            }
            let before = state.size();
            state.limit = (state.limit + 1.0).min(state.ceiling);
            state.successes = 0;
            state.size() > before
        };
        if grew {
            self.window.freed.notify_waiters();
        }
    }

    /// Multiplicative decrease by `factor` (at least 1), unless the window
    /// already decreased since this slot was handed out.
    fn decrease(&self, factor: f64) {
        let mut state = lock(&self.window.state);
        if self.sequence < state.decreased_at {
            return;
        }
        state.limit = (state.limit * factor).max(1.0);
        state.decreased_at = state.issued;
        state.successes = 0;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.window.state).in_flight -= 1;
        self.window.freed.notify_waiters();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::pin::pin;

    use futures::FutureExt as _;
    use futures::poll;

    const MS: Duration = Duration::from_millis(1);

    fn endpoint(settings: ThrottleSettings) -> EndpointThrottle {
        EndpointThrottle::new("test", settings)
    }

    fn default_endpoint() -> EndpointThrottle {
        endpoint(ThrottleSettings::default())
    }

    /// Limits that obey any hint the tests give (up to a day), never stopped.
    fn limits() -> WaitLimits {
        WaitLimits {
            max_retry_after: MAX_PAUSE,
            max_pass_wait: None,
            stop: CancellationToken::new(),
            paused: Arc::default(),
        }
    }

    /// A permit that is free right now (no waiting).
    fn now(mailbox: &MailboxThrottle) -> Permit {
        mailbox
            .acquire()
            .now_or_never()
            .expect("a permit is free right away")
            .expect("not stopped")
    }

    const KB: u64 = 1000;

    /// An endpoint whose mailboxes may upload `bytes` per rolling `window`.
    fn uploads(bytes: u64, window: Duration) -> EndpointThrottle {
        endpoint(ThrottleSettings {
            upload_budget: Some(UploadBudget { bytes, window }),
            ..ThrottleSettings::default()
        })
    }

    /// An upload of `bytes` that may go right now.
    fn upload_now(mailbox: &MailboxThrottle, bytes: u64) -> Permit {
        mailbox
            .acquire_upload(bytes, None)
            .now_or_never()
            .expect("the upload fits the window now")
            .expect("not stopped")
    }

    fn secs(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    /// Whether `a` and `b` are within a millisecond of each other.
    fn close(a: Duration, b: Duration) -> bool {
        a.abs_diff(b) < MS
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_mailbox_fills_its_window_at_once_and_keeps_it_full() {
        let window = Duration::from_secs(10);
        let endpoint = uploads(1000 * KB, window);
        let mailbox = endpoint.mailbox("alice", limits());
        let start = Instant::now();
        let mut sent = Vec::new();
        // The whole first window at once.
        for _ in 0..10 {
            upload_now(&mailbox, 100 * KB).succeeded(MS);
            sent.push(Instant::now() - start);
        }
        assert_eq!(mailbox.upload_window(), Some((1000 * KB, 1000 * KB)));
        assert!(mailbox.upload_turn(&[KB]).is_err(), "the window is full");
        // Then as the oldest leave it: four more windows' worth.
        for _ in 0..40 {
            let permit = mailbox.acquire_upload(100 * KB, None).await.unwrap();
            sent.push(Instant::now() - start);
            permit.succeeded(MS);
        }
        // No window of the server's (rolling) ever holds more than the
        // budget…
        for (i, at) in sent.iter().enumerate() {
            let in_window = sent[i..].iter().take_while(|t| **t < *at + window);
            assert!(in_window.count() <= 10, "at {at:?}");
        }
        // …and each window is full again as soon as its margin has passed:
        // 5 MB in 4 windows and their margins.
        assert!(close(sent[10], secs(10.2)), "{:?}", sent[10]);
        assert!(close(*sent.last().unwrap(), secs(40.8)), "{sent:?}");
        assert_eq!(endpoint.counters().throttle_events, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_upload_is_the_first_that_fits() {
        let endpoint = uploads(1000 * KB, Duration::from_secs(10));
        let mailbox = endpoint.mailbox("alice", limits());
        let start = Instant::now();
        upload_now(&mailbox, 500 * KB).succeeded(MS);
        tokio::time::advance(Duration::from_secs(1)).await;
        upload_now(&mailbox, 450 * KB).succeeded(MS);
        // 50 kB left: of 200, 40 and 30 kB, the 40 kB one goes.
        let (pick, turn) = mailbox
            .upload_turn(&[200 * KB, 40 * KB, 30 * KB])
            .expect("one fits");
        assert_eq!(pick, 1);
        assert_eq!(mailbox.upload_window(), Some((1000 * KB, 990 * KB)));
        // 10 kB left: none fits; the smallest does once the oldest upload
        // has left the window.
        let Err(fits_at) = mailbox.upload_turn(&[200 * KB, 30 * KB]) else {
            panic!("nothing fits");
        };
        assert!(close(fits_at - start, secs(10.2)), "{:?}", fits_at - start);
        // A turn given up gives its bytes back.
        drop(turn);
        assert_eq!(mailbox.upload_window(), Some((1000 * KB, 950 * KB)));
        let (pick, turn) = mailbox.upload_turn(&[200 * KB, 30 * KB]).unwrap();
        assert_eq!(pick, 1);
        // A permit for it is free at once, and the request's exact length
        // is what the window holds.
        mailbox
            .acquire_upload(31 * KB, Some(turn))
            .now_or_never()
            .expect("its turn was taken")
            .unwrap()
            .succeeded(MS);
        assert_eq!(mailbox.upload_window(), Some((1000 * KB, 981 * KB)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_upload_waits_for_room_not_for_a_throttle() {
        let endpoint = uploads(1000 * KB, Duration::from_secs(10));
        let mailbox = endpoint.mailbox("alice", limits());
        let start = Instant::now();
        // One 100 kB upload a second fills the window.
        for i in 0..10 {
            tokio::time::sleep_until(start + Duration::from_secs(i)).await;
            upload_now(&mailbox, 100 * KB).succeeded(MS);
        }
        // 450 kB go once five have left: the fifth, sent at 4 s, at 14.2 s.
        let large = mailbox.acquire_upload(450 * KB, None).await.unwrap();
        assert!(close(Instant::now() - start, secs(14.2)));
        large.succeeded(MS);
        // One over the whole budget goes when the window is empty: once the
        // 450 kB have left it.
        let huge = mailbox.acquire_upload(1500 * KB, None).await.unwrap();
        assert!(close(Instant::now() - start, secs(24.4)));
        huge.succeeded(MS);
        assert_eq!(endpoint.counters().throttle_events, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_upload_counts_from_when_it_is_sent() {
        let endpoint = uploads(1000 * KB, Duration::from_secs(10));
        let mailbox = endpoint.mailbox("alice", limits());
        let start = Instant::now();
        let mut permits: Vec<Permit> = (0..4).map(|_| now(&mailbox)).collect();
        // Its turn is taken at once, but no slot is free for 3 s.
        let mut upload = pin!(mailbox.acquire_upload(1000 * KB, None));
        assert!(poll!(upload.as_mut()).is_pending());
        assert_eq!(mailbox.upload_window(), Some((1000 * KB, 1000 * KB)));
        tokio::time::advance(Duration::from_secs(3)).await;
        drop(permits.pop());
        upload.await.unwrap().succeeded(MS);
        // It leaves the window 10.2 s after it was sent, not after its turn.
        mailbox
            .acquire_upload(KB, None)
            .await
            .unwrap()
            .succeeded(MS);
        assert!(close(Instant::now() - start, secs(13.2)));
        drop(permits);
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_upload_leaves_the_window_and_cuts_the_budget() {
        let endpoint = uploads(1000 * KB, Duration::from_secs(10));
        let mailbox = endpoint.mailbox("alice", limits());
        let start = Instant::now();
        upload_now(&mailbox, 600 * KB).succeeded(MS);
        // The server counts less than it documents: it refuses 300 kB more.
        let refused = upload_now(&mailbox, 300 * KB);
        assert_eq!(
            refused.throttled(Some(Duration::from_secs(5))),
            Ok(Duration::from_secs(5))
        );
        assert_eq!(mailbox.upload_window(), Some((900 * KB, 600 * KB)));
        // After the pause and a period without a throttle, the budget grows
        // back by 1% of the configured one.
        let after_pause = mailbox.acquire_upload(100 * KB, None).await.unwrap();
        assert!(close(Instant::now() - start, secs(5.0)));
        after_pause.succeeded(MS);
        assert_eq!(mailbox.upload_window().unwrap().0, 900 * KB);
        tokio::time::sleep(UPLOAD_BUDGET_PERIOD).await;
        upload_now(&mailbox, 100 * KB).succeeded(MS);
        assert_eq!(mailbox.upload_window(), Some((910 * KB, 800 * KB)));
        // Requests that are not uploads are not paced.
        for _ in 0..50 {
            now(&mailbox).succeeded(MS);
        }
        // A throttle of another request leaves the budget alone.
        now(&mailbox)
            .throttled(Some(Duration::from_secs(1)))
            .unwrap();
        assert_eq!(mailbox.upload_window(), Some((910 * KB, 800 * KB)));
        // Without a budget, uploads go unpaced.
        let unpaced = default_endpoint().mailbox("bob", limits());
        for _ in 0..100 {
            upload_now(&unpaced, 1000 * KB).succeeded(MS);
        }
        assert_eq!(unpaced.upload_window(), None);
    }

    #[derive(Debug, PartialEq)]
    struct Failure(ErrorClass, Option<Duration>, String);

    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.2)
        }
    }

    impl From<WaitError> for Failure {
        fn from(error: WaitError) -> Self {
            let class = match error {
                WaitError::Stopped => ErrorClass::Transient,
                WaitError::HintTooLong { .. } | WaitError::PassWaitSpent { .. } => {
                    ErrorClass::Mailbox
                }
            };
            Failure(class, None, error.to_string())
        }
    }

    impl Classify for Failure {
        fn class(&self) -> ErrorClass {
            self.0
        }

        fn retry_after(&self) -> Option<Duration> {
            self.1
        }
    }

    #[tokio::test(start_paused = true)]
    async fn run_settles_a_request_by_its_outcome() {
        let schedulers = Schedulers::default();
        let endpoint = schedulers.endpoint("run-test", ThrottleSettings::default());
        let mailbox = endpoint.mailbox("alice", limits());
        assert_eq!(mailbox.run(async { Ok::<_, Failure>(7) }).await.unwrap(), 7);
        let transient = mailbox
            .run(async { Err::<(), _>(Failure(ErrorClass::Transient, None, String::new())) })
            .await;
        assert!(transient.is_err());
        assert_eq!(mailbox.windows(), (3, 57));
        let hint = Duration::from_secs(10);
        let throttled = mailbox
            .run(async { Err::<(), _>(Failure(ErrorClass::Throttled, Some(hint), String::new())) })
            .await;
        assert!(throttled.is_err());
        assert_eq!(mailbox.paused_until(), Some(Instant::now() + hint));
        assert_eq!(mailbox.windows().0, 1);
        // The registry hands out the same endpoint; another registry (another
        // worker) has its own.
        assert_eq!(
            schedulers
                .endpoint("run-test", ThrottleSettings::default())
                .counters(),
            endpoint.counters()
        );
        let other = Schedulers::default();
        assert_eq!(
            other
                .endpoint("run-test", ThrottleSettings::default())
                .counters()
                .requests,
            0
        );
        assert_eq!(other.counters().len(), 1);
        let counters = endpoint.counters();
        assert_eq!((counters.requests, counters.succeeded), (3, 1));
        assert_eq!(counters.throttle_events, 1);
    }

    /// Issue 8, point 1: a worker serving two waves on one server keeps one
    /// scheduler for it, and each wave's settings hold for its own jobs
    /// (not the first wave's for the worker's whole life).
    #[tokio::test(start_paused = true)]
    async fn each_waves_settings_are_applied_to_the_shared_endpoint() {
        let schedulers = Schedulers::default();
        let first = ThrottleSettings {
            mailbox_ceiling: 2,
            endpoint_ceiling: 8,
            ..ThrottleSettings::default()
        };
        let endpoint = schedulers.endpoint("imap.example", first.clone());
        let early = endpoint.mailbox("early", limits());
        assert_eq!(early.windows(), (2, 8));

        let second = ThrottleSettings {
            mailbox_ceiling: 5,
            endpoint_ceiling: 3,
            requests_per_second: Some(1.0),
            ..ThrottleSettings::default()
        };
        let same = schedulers.endpoint("imap.example", second.clone());
        assert_eq!(same.settings(), second);
        let late = same.mailbox("late", limits());
        assert_eq!(late.windows(), (5, 3), "the second wave's ceilings");
        assert_eq!(early.windows().1, 3, "one endpoint window, cut at once");
        // The second wave's rate limit: one request a second after the burst.
        let started = Instant::now();
        for _ in 0..3 {
            late.run(async { Ok::<_, Failure>(()) }).await.unwrap();
        }
        assert!(Instant::now() - started >= Duration::from_secs(2));
        assert_eq!(endpoint.counters().requests, 3, "one endpoint, one count");

        // Back to the first wave's: the window may grow to 8 again, and no
        // rate limit holds.
        schedulers.endpoint("imap.example", first.clone());
        assert_eq!(endpoint.settings(), first);
        let started = Instant::now();
        for _ in 0..3 {
            late.run(async { Ok::<_, Failure>(()) }).await.unwrap();
        }
        assert_eq!(Instant::now(), started, "no rate limit any more");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hint_over_the_limit_fails_the_mailbox_at_once_quoting_the_server() {
        let endpoint = default_endpoint();
        let strict = WaitLimits {
            max_retry_after: Duration::from_secs(900),
            ..limits()
        };
        let mailbox = endpoint.mailbox("alice", strict.clone());
        let start = Instant::now();
        let server = "NO [UNAVAILABLE] Server busy. Suggested Backoff Time: 99999999 seconds";
        let hint = Some(Duration::from_secs(99_999_999));
        let failure = mailbox
            .run(async { Err::<(), _>(Failure(ErrorClass::Throttled, hint, server.into())) })
            .await
            .unwrap_err();
        assert_eq!(failure.0, ErrorClass::Mailbox, "{failure}");
        assert_eq!(failure.1, None, "no hint left to wait for");
        assert!(failure.2.contains(server), "{failure}");
        assert!(failure.2.contains("99999999 s"), "{failure}");
        assert!(
            failure.2.contains("max_retry_after_secs (900 s)"),
            "{failure}"
        );
        // Nothing paused: no one waits for it, and no time passed.
        assert_eq!(mailbox.paused_until(), None);
        assert_eq!(Instant::now(), start);
        assert!(now(&mailbox).throttled(hint).is_err());
        assert_eq!(endpoint.counters().throttle_events, 2);

        // A hint within the limit is obeyed, to the second.
        let within = Duration::from_secs(900);
        assert_eq!(now(&mailbox).throttled(Some(within)), Ok(within));
        mailbox.acquire().await.unwrap().succeeded(MS);
        assert_eq!(Instant::now() - start, within);

        // The error a connector returns says so, as a mailbox failure.
        let error = ConnectorError::from(
            PauseRefused::HintOverLimit {
                hint: Duration::from_secs(99_999_999),
                limit: within,
            }
            .quoting(server),
        );
        assert_eq!(error.class, ErrorClass::Mailbox);
        assert_eq!(error.retry_after, None);
        assert!(error.message.contains(server), "{}", error.message);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_out_of_waiting_time_fails_quoting_the_server() {
        let endpoint = default_endpoint();
        let pass = WaitLimits {
            max_pass_wait: Some(Duration::from_secs(60)),
            ..limits()
        };
        let mailbox = endpoint.mailbox("alice", pass.clone());
        let secs = Duration::from_secs;
        let first = now(&mailbox);
        let second = now(&mailbox);
        assert_eq!(first.throttled(Some(secs(30))), Ok(secs(30)));
        // Within the open pause: it adds nothing to the pass's waiting.
        assert_eq!(second.throttled(Some(secs(10))), Ok(secs(30)));
        assert_eq!(pass.paused(), secs(30));
        let permit = mailbox.acquire().await.unwrap();
        assert_eq!(permit.throttled(Some(secs(25))), Ok(secs(25)));
        assert_eq!(pass.paused(), secs(55));

        // 55 s + 10 s is more than 60 s: the mailbox fails, quoting.
        let server = "429 TooManyRequests: Application is over its limit.";
        let failure = mailbox
            .run(async {
                Err::<(), _>(Failure(
                    ErrorClass::Throttled,
                    Some(secs(10)),
                    server.into(),
                ))
            })
            .await
            .unwrap_err();
        assert_eq!(failure.0, ErrorClass::Mailbox, "{failure}");
        assert!(failure.2.contains(server), "{failure}");
        assert!(failure.2.contains("65 s in all"), "{failure}");
        assert!(failure.2.contains("max_pass_wait_secs (60 s)"), "{failure}");
        assert_eq!(mailbox.paused_until(), None, "not paused for it");
        assert_eq!(pass.paused(), secs(55));

        // The next pass has its own account.
        let next = endpoint.mailbox(
            "alice",
            WaitLimits {
                max_pass_wait: Some(secs(60)),
                ..limits()
            },
        );
        assert_eq!(now(&next).throttled(Some(secs(10))), Ok(secs(10)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_interrupts_every_wait() {
        let endpoint = uploads(1000 * KB, Duration::from_secs(1000));
        let stop = CancellationToken::new();
        let mailbox = endpoint.mailbox(
            "alice",
            WaitLimits {
                stop: stop.clone(),
                ..limits()
            },
        );
        let start = Instant::now();
        // A pause of 10 minutes, a full window, an upload waiting 1000 s for
        // room, a back-off of an hour: all waiting when the stop comes
        // after 1 s.
        upload_now(&mailbox, 1000 * KB).succeeded(MS);
        now(&mailbox)
            .throttled(Some(Duration::from_secs(600)))
            .unwrap();
        let paused = mailbox.acquire();
        let upload = mailbox.acquire_upload(1000 * KB, None);
        let backoff = mailbox.sleep(Duration::from_secs(3600));
        let held = endpoint.mailbox("bob", mailbox.limits.clone());
        let permits: Vec<Permit> = (0..4).map(|_| now(&held)).collect();
        let no_slot = held.acquire();
        let ran = held.run(async { Ok::<_, Failure>(()) });
        let stopper = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stop.cancel();
        };
        let (paused, upload, backoff, no_slot, ran, ()) =
            tokio::join!(paused, upload, backoff, no_slot, ran, stopper);
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
        assert!(matches!(paused, Err(WaitError::Stopped)));
        assert!(matches!(upload, Err(WaitError::Stopped)));
        assert_eq!(backoff, Err(WaitError::Stopped));
        assert!(matches!(no_slot, Err(WaitError::Stopped)));
        assert_eq!(ran.unwrap_err().0, ErrorClass::Transient, "interrupted");
        // Once stopped, nothing waits at all, not even for a free slot.
        assert!(matches!(
            endpoint
                .mailbox("carol", mailbox.limits.clone())
                .acquire()
                .await,
            Err(WaitError::Stopped)
        ));
        assert_eq!(
            ConnectorError::from(WaitError::Stopped).message,
            ConnectorError::interrupted().message
        );
        drop(permits);
    }

    #[tokio::test(start_paused = true)]
    async fn the_mailbox_ceiling_holds_a_fifth_request_back() {
        let endpoint = default_endpoint();
        let mailbox = endpoint.mailbox("alice", limits());
        let mut permits: Vec<Permit> = (0..4).map(|_| now(&mailbox)).collect();
        let mut fifth = pin!(mailbox.acquire());
        assert!(poll!(fifth.as_mut()).is_pending());
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(poll!(fifth.as_mut()).is_pending());

        // A permit given back (unsettled) lets the fifth through.
        drop(permits.pop());
        let fifth = fifth
            .now_or_never()
            .expect("the freed slot is taken")
            .unwrap();
        assert_eq!(mailbox.windows(), (4, 64));

        // A cancelled acquire gives its slots back.
        let sixth = mailbox.acquire();
        drop(sixth);
        drop(fifth);
        let again = now(&mailbox);
        let counters = endpoint.counters();
        assert_eq!(counters.requests, 6);
        assert_eq!(counters.succeeded, 0);
        assert!(counters.retries.is_empty());
        drop((permits, again));
    }

    #[tokio::test(start_paused = true)]
    async fn aimd_halves_on_throttles_and_grows_back_within_the_ceiling() {
        let endpoint = default_endpoint();
        let mailbox = endpoint.mailbox("alice", limits());

        now(&mailbox).throttled(Some(Duration::ZERO)).unwrap();
        assert_eq!(mailbox.windows(), (2, 48));
        mailbox
            .acquire()
            .await
            .unwrap()
            .throttled(Some(Duration::ZERO))
            .unwrap();
        assert_eq!(mailbox.windows(), (1, 36));
        mailbox
            .acquire()
            .await
            .unwrap()
            .throttled(Some(Duration::ZERO))
            .unwrap();
        assert_eq!(mailbox.windows(), (1, 27), "never below 1");

        // One window's worth of successes: one more slot.
        let mut sizes = Vec::new();
        for _ in 0..12 {
            mailbox.acquire().await.unwrap().succeeded(10 * MS);
            sizes.push(mailbox.windows().0);
        }
        // 1 success → 2, 2 more → 3, 3 more → 4, then it stays at the ceiling.
        assert_eq!(sizes, [2, 2, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4]);
        // The endpoint's window (27) grows after 27 successes.
        assert_eq!(mailbox.windows().1, 27);
        for _ in 0..15 {
            mailbox.acquire().await.unwrap().succeeded(10 * MS);
        }
        assert_eq!(mailbox.windows().1, 28);

        // Never above the ceiling, however many successes.
        for _ in 0..2000 {
            mailbox.acquire().await.unwrap().succeeded(10 * MS);
        }
        assert_eq!(mailbox.windows(), (4, 64));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_out_together_decrease_the_window_once() {
        let endpoint = default_endpoint();
        let mailbox = endpoint.mailbox("alice", limits());
        let permits: Vec<Permit> = (0..4).map(|_| now(&mailbox)).collect();
        for permit in permits {
            permit.throttled(Some(Duration::from_secs(1))).unwrap();
        }
        assert_eq!(mailbox.windows(), (2, 48));
        // A request sent after the decrease decreases it again.
        mailbox
            .acquire()
            .await
            .unwrap()
            .failed(ErrorClass::Transient);
        assert_eq!(mailbox.windows(), (1, 43));
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_pauses_the_whole_mailbox_not_the_others() {
        let endpoint = default_endpoint();
        let alice = endpoint.mailbox("alice", limits());
        let bob = endpoint.mailbox("bob", limits());
        let start = Instant::now();
        let first = now(&alice);
        let second = now(&alice);

        assert_eq!(
            first.throttled(Some(Duration::from_secs(30))),
            Ok(Duration::from_secs(30))
        );
        assert_eq!(alice.paused_until(), Some(start + Duration::from_secs(30)));
        assert_eq!(bob.paused_until(), None);
        // Another handle of the same mailbox sees the pause.
        assert!(endpoint.mailbox("alice", limits()).paused_until().is_some());

        let mut next = pin!(alice.acquire());
        assert!(poll!(next.as_mut()).is_pending(), "a free slot, but paused");
        now(&bob).succeeded(10 * MS);
        // The request in flight still settles.
        second.succeeded(10 * MS);

        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(poll!(next.as_mut()).is_pending());
        tokio::time::advance(Duration::from_secs(1)).await;
        next.await.unwrap().succeeded(10 * MS);
        assert_eq!(Instant::now() - start, Duration::from_secs(30));
        assert_eq!(alice.paused_until(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_shorter_hint_does_not_shorten_the_pause() {
        let endpoint = default_endpoint();
        let mailbox = endpoint.mailbox("alice", limits());
        let start = Instant::now();
        let first = now(&mailbox);
        let second = now(&mailbox);
        assert_eq!(
            first.throttled(Some(Duration::from_secs(60))),
            Ok(Duration::from_secs(60))
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            second.throttled(Some(Duration::from_secs(5))),
            Ok(Duration::from_secs(50))
        );
        assert_eq!(
            mailbox.paused_until(),
            Some(start + Duration::from_secs(60))
        );

        mailbox.acquire().await.unwrap().succeeded(10 * MS);
        assert_eq!(Instant::now() - start, Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_without_a_hint_backs_off_within_bounds() {
        let endpoint = default_endpoint();
        let mailbox = endpoint.mailbox("alice", limits());
        // Throttles in a row double the bound of the back-off: 1 s, 2 s, 4 s.
        for bound in [1, 2, 4] {
            let wait = mailbox.acquire().await.unwrap().throttled(None).unwrap();
            assert!(wait <= Duration::from_secs(bound), "{wait:?}");
            assert_eq!(mailbox.paused_until().is_some(), !wait.is_zero());
        }
        // Our own back-off is never held against the limit of hints.
        let strict = endpoint.mailbox(
            "bob",
            WaitLimits {
                max_retry_after: Duration::ZERO,
                ..limits()
            },
        );
        assert!(now(&strict).throttled(None).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn latency_growth_shrinks_the_window() {
        let endpoint = default_endpoint();
        let mailbox = endpoint.mailbox("alice", limits());
        for _ in 0..5 {
            mailbox.acquire().await.unwrap().succeeded(100 * MS);
        }
        // Slower, but within 3 × the baseline: no congestion.
        now(&mailbox).succeeded(250 * MS);
        assert_eq!(mailbox.windows(), (4, 64));

        // Two requests out together, both too slow: one decrease (4 × 0.9).
        let first = now(&mailbox);
        let second = now(&mailbox);
        first.succeeded(400 * MS);
        second.succeeded(400 * MS);
        assert_eq!(mailbox.windows(), (3, 64));

        // The endpoint has no part in a mailbox's latency.
        let other = endpoint.mailbox("bob", limits());
        now(&other).succeeded(400 * MS);
        assert_eq!(other.windows(), (4, 64));

        // Off with an infinite factor.
        let relaxed = EndpointThrottle::new(
            "relaxed",
            ThrottleSettings {
                latency_factor: f64::INFINITY,
                ..ThrottleSettings::default()
            },
        )
        .mailbox("alice", limits());
        now(&relaxed).succeeded(MS);
        now(&relaxed).succeeded(Duration::from_secs(60));
        assert_eq!(relaxed.windows().0, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_fault_decreases_gently_other_classes_not_at_all() {
        let endpoint = default_endpoint();
        let mailbox = endpoint.mailbox("alice", limits());
        now(&mailbox).failed(ErrorClass::Item);
        now(&mailbox).failed(ErrorClass::Mailbox);
        assert_eq!(mailbox.windows(), (4, 64));
        now(&mailbox).failed(ErrorClass::Transient);
        assert_eq!(mailbox.windows(), (3, 57));
        assert_eq!(mailbox.paused_until(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_endpoint_ceiling_limits_the_sum_over_mailboxes() {
        let endpoint = endpoint(ThrottleSettings {
            endpoint_ceiling: 6,
            ..ThrottleSettings::default()
        });
        let alice = endpoint.mailbox("alice", limits());
        let bob = endpoint.mailbox("bob", limits());
        let carol = endpoint.mailbox("carol", limits());
        let mut alices: Vec<Permit> = (0..4).map(|_| now(&alice)).collect();
        let bobs: Vec<Permit> = (0..2).map(|_| now(&bob)).collect();
        assert_eq!(alice.windows(), (4, 6));

        let mut third_bob = pin!(bob.acquire());
        let mut first_carol = pin!(carol.acquire());
        assert!(poll!(third_bob.as_mut()).is_pending());
        assert!(poll!(first_carol.as_mut()).is_pending());

        // One slot freed: one of the two goes, the other still waits.
        drop(alices.pop());
        let bob_went = poll!(third_bob.as_mut());
        let carol_went = poll!(first_carol.as_mut());
        assert!(bob_went.is_ready() != carol_went.is_ready());
        drop((alices, bobs, bob_went, carol_went));
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_go_when_the_window_grows() {
        let endpoint = default_endpoint();
        let mailbox = endpoint.mailbox("alice", limits());
        mailbox
            .acquire()
            .await
            .unwrap()
            .throttled(Some(Duration::ZERO))
            .unwrap();
        mailbox.acquire().await.unwrap().succeeded(10 * MS);
        assert_eq!(mailbox.windows().0, 2);
        let first = now(&mailbox);
        let second = now(&mailbox);
        let mut third = pin!(mailbox.acquire());
        let mut fourth = pin!(mailbox.acquire());
        assert!(poll!(third.as_mut()).is_pending());
        assert!(poll!(fourth.as_mut()).is_pending());
        // The second success of the window grows it to 3 and frees a slot:
        // two slots for the two waiters.
        first.succeeded(10 * MS);
        assert_eq!(mailbox.windows().0, 3);
        let third = poll!(third.as_mut());
        let fourth = poll!(fourth.as_mut());
        assert!(third.is_ready() && fourth.is_ready());
        drop((second, third, fourth));
    }

    #[tokio::test(start_paused = true)]
    async fn a_mailbox_never_sends_more_than_its_request_budget_in_a_window() {
        let budget = RequestBudget {
            requests: 100,
            window: Duration::from_secs(10),
        };
        let endpoint = endpoint(ThrottleSettings {
            mailbox_requests: Some(budget),
            ..ThrottleSettings::default()
        });
        let alice = endpoint.mailbox("alice", limits());
        let start = Instant::now();
        let mut sent = Vec::new();
        for _ in 0..400 {
            alice.acquire().await.unwrap().succeeded(MS);
            sent.push(Instant::now() - start);
        }
        // Any window of 10 s (the server's, rolling) holds fewer than 100.
        for (i, at) in sent.iter().enumerate() {
            let in_window = sent[i..].iter().take_while(|t| **t < *at + budget.window);
            assert!(in_window.count() < 100, "at {at:?}");
        }
        // A tenth at once, then the rest of the budget spread over the window.
        assert_eq!(sent[9], Duration::ZERO);
        let elapsed = *sent.last().unwrap();
        assert!(elapsed >= Duration::from_secs(40), "{elapsed:?}");
        assert!(elapsed <= Duration::from_secs(45), "{elapsed:?}");
        // Another mailbox has a budget of its own.
        let bob = endpoint.mailbox("bob", limits());
        assert!(bob.acquire().now_or_never().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn an_app_wide_concurrency_throttle_brings_the_endpoint_ceiling_down() {
        let endpoint = endpoint(ThrottleSettings::default());
        let alice = endpoint.mailbox("alice", limits());
        let bob = endpoint.mailbox("bob", limits());
        let alices: Vec<Permit> = (0..4).map(|_| now(&alice)).collect();
        // At its own ceiling: the limit may be the mailbox's; nothing learned.
        assert!(!alices[3].concurrency_throttled());
        assert_eq!(alice.windows(), (4, 64));
        // Below it: the server counts more than this mailbox.
        let first_bob = now(&bob);
        assert!(first_bob.concurrency_throttled());
        assert_eq!(bob.windows().1, 4);
        assert!(!first_bob.concurrency_throttled(), "learned once");
        drop(alices);
        let bobs: Vec<Permit> = (0..3).map(|_| now(&bob)).collect();
        let mut fifth = pin!(alice.acquire());
        assert!(poll!(fifth.as_mut()).is_pending(), "4 at once for the app");
        drop((first_bob, bobs));
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_spaces_requests() {
        let endpoint = endpoint(ThrottleSettings {
            requests_per_second: Some(10.0),
            ..ThrottleSettings::default()
        });
        let mailbox = endpoint.mailbox("alice", limits());
        let start = Instant::now();
        for _ in 0..20 {
            mailbox.acquire().await.unwrap().succeeded(MS);
        }
        // A burst of one second's worth (10), then one every 100 ms.
        let elapsed = Instant::now() - start;
        assert!(
            elapsed >= 950 * MS && elapsed <= 1050 * MS,
            "20 requests at 10/s took {elapsed:?}"
        );
        let waited = endpoint.counters().seconds_waiting;
        assert!((waited - elapsed.as_secs_f64()).abs() < 0.01, "{waited}");
    }

    #[test]
    fn only_a_positive_finite_rate_limits() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e12] {
            assert!(quota(rate).is_none(), "{rate}");
        }
        let quota = quota(0.5).expect("a slow rate");
        assert_eq!(quota.replenish_interval(), Duration::from_secs(2));
        assert_eq!(quota.burst_size().get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn counters_add_up() {
        let endpoint = default_endpoint();
        let alice = endpoint.mailbox("alice", limits());
        let bob = endpoint.mailbox("bob", limits());
        now(&alice).succeeded(10 * MS);
        assert_eq!(
            now(&alice).throttled(Some(Duration::from_secs(2))),
            Ok(Duration::from_secs(2))
        );
        now(&bob).failed(ErrorClass::Transient);
        now(&bob).failed(ErrorClass::Transient);
        now(&bob).failed(ErrorClass::Item);
        drop(now(&bob));
        // Waits out the pause: 2 s of waiting.
        alice.acquire().await.unwrap().failed(ErrorClass::Throttled);
        // Of those failures, the ones the connector sends again.
        bob.retrying(ErrorClass::Transient);
        alice.retrying(ErrorClass::Throttled);
        alice.retrying(ErrorClass::Throttled);

        let counters = endpoint.counters();
        assert_eq!(
            counters,
            ThrottleCounters {
                requests: 7,
                succeeded: 1,
                throttle_events: 2,
                retries: [("throttled", 2), ("transient", 1)]
                    .into_iter()
                    .map(|(class, n)| (class.to_owned(), n))
                    .collect(),
                seconds_waiting: counters.seconds_waiting,
            }
        );
        assert!(
            (counters.seconds_waiting - 2.0).abs() < 0.01,
            "{}",
            counters.seconds_waiting
        );
        // A different endpoint counts for itself.
        assert_eq!(default_endpoint().counters(), ThrottleCounters::default());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_mailboxes_are_forgotten_held_ones_kept() {
        let endpoint = default_endpoint();
        let held = endpoint.mailbox("held", limits());
        held.acquire()
            .await
            .unwrap()
            .throttled(Some(Duration::ZERO))
            .unwrap();
        endpoint
            .mailbox("idle", limits())
            .acquire()
            .await
            .unwrap()
            .throttled(Some(Duration::ZERO))
            .unwrap();
        let paused = endpoint.mailbox("paused", limits());
        paused
            .acquire()
            .await
            .unwrap()
            .throttled(Some(IDLE_MAILBOX_LIFETIME * 2))
            .unwrap();
        drop(paused);

        tokio::time::advance(IDLE_MAILBOX_LIFETIME).await;
        // The sweep runs as a mailbox is asked for.
        let _ = endpoint.mailbox("new", limits());
        let names = {
            let mailboxes = lock(&endpoint.shared.mailboxes);
            let mut names: Vec<String> = mailboxes.by_name.keys().cloned().collect();
            names.sort();
            names
        };
        assert_eq!(names, ["held", "new", "paused"]);
        assert_eq!(held.windows().0, 2, "a held mailbox keeps its state");
        assert_eq!(endpoint.mailbox("idle", limits()).windows().0, 4, "afresh");
    }
}
