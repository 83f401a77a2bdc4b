//! The one retry policy of mailwave: exponential back-off from a first
//! delay up to a cap, with or without full jitter, within a budget of
//! attempts and of total waiting, the server's hint
//! ([`Classify::retry_after`]) as a floor (a hint over the caller's maximum
//! gives up instead of waiting that long), and only
//! [`ErrorClass::Throttled`] and [`ErrorClass::Transient`] retried. A
//! [`Backoff`] only decides (the next wait, or why there is none); callers
//! wait with the clock they were given ([`Sleep`]), so the policy is tested
//! without one and the loops that use it on a fake clock.
//!
//! # Budgets
//!
//! Every layer that retries, what it retries and its budget, in one place
//! ([`Budgets`]):
//!
//! | layer | retries | budget | back-off |
//! |---|---|---|---|
//! | pass (`worker::job`) | the whole mailbox pass from its checkpoints, after a throttled or transient failure | `migration.max_attempts` attempts in a row without progress (default 5; an attempt that committed items starts the count over), waits within `migration.max_pass_wait_secs` | 1 s doubling to 60 s, full jitter, hint as floor (at most `migration.max_retry_after_secs`) |
//! | Graph request (`worker::connector::graph::client`) | one idempotent request (GET, export, folder and session creation); an import only after a 429 or 509 or a failed connect, or through a new session after its import URL was refused, never after an answer that may hide a stored item | [`GRAPH_REQUEST_ATTEMPTS`] attempts | 0.5 s doubling to 30 s, full jitter; a throttle's pause (429, 509) or a 503's `Retry-After` as floor |
//! | throttle pause without a hint (`worker::connector::throttle`) | nothing itself: how long a mailbox pauses after its n-th throttle in a row | — | 1 s doubling to 60 s, full jitter |
//! | OAuth refresh (`worker::connector::oauth`) | a failed early refresh, while the current token still serves | until the token expires | 10 s, the endpoint's hint as floor |
//! | lease claim (`worker::consumer`) | taking a lease while the store is unavailable | until the worker stops | 250 ms doubling to 10 s |
//! | job queue (`worker::consumer`) | taking the next job after the queue failed | until the worker stops | 1 s |
//! | RabbitMQ link (`common::queue::rabbitmq`) | reconnecting | for ever | 200 ms doubling to `max_reconnect_delay`, full jitter |
//!
//! IMAP commands are not retried one by one: their failure ends the pass,
//! which the pass layer restarts. Layers nest in one place only: a Graph
//! request spends its own attempts before its failure reaches the pass, so
//! in the worst case one request is sent [`GRAPH_REQUEST_ATTEMPTS`] ×
//! `migration.max_attempts` times (8 × 5 = 40 with the defaults); the
//! throttle pauses of all of them share the pass's
//! `migration.max_pass_wait_secs`. An import of an item is sent at most once
//! per pass attempt unless the server said it did not process it: an
//! answer lost after the item may have been stored goes up to the pass, and
//! the engine's in-doubt path (write-ahead intents) finds the copy.
//!
//! A retry is counted only when one is scheduled ([`Backoff::retries`]);
//! failures that are not retried (items, mailboxes, a spent budget) are
//! not retries.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::config::MigrationConfig;
use crate::error::{Classify, ErrorClass};

/// Attempts of one Graph request before its failure reaches the pass.
pub const GRAPH_REQUEST_ATTEMPTS: u32 = 8;

/// How the waits between attempts are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Exactly the exponential delay.
    None,
    /// A random wait between zero and the exponential delay, so that
    /// clients that failed together do not come back together.
    Full,
}

/// How one operation is retried: back-off, jitter and budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// The (largest) wait before the first retry; it doubles each retry…
    pub first_delay: Duration,
    /// …up to this.
    pub max_delay: Duration,
    pub jitter: Jitter,
    /// Attempts in all, the first included; `None`: no bound.
    pub max_attempts: Option<u32>,
    /// The most time all waits together may take; `None`: no bound.
    pub max_total_wait: Option<Duration>,
    /// The longest server hint obeyed: a longer one gives up at once.
    pub max_hint: Duration,
}

/// The longest hint any policy obeys unless it says otherwise: a day.
const MAX_HINT: Duration = Duration::from_secs(24 * 3600);

impl RetryPolicy {
    /// Exponential back-off from `first_delay` to `max_delay`, without a
    /// budget, hints obeyed up to a day.
    pub const fn exponential(first_delay: Duration, max_delay: Duration, jitter: Jitter) -> Self {
        RetryPolicy {
            first_delay,
            max_delay,
            jitter,
            max_attempts: None,
            max_total_wait: None,
            max_hint: MAX_HINT,
        }
    }

    /// Always `delay`, without a budget.
    pub const fn fixed(delay: Duration) -> Self {
        RetryPolicy::exponential(delay, delay, Jitter::None)
    }

    /// At most `attempts` attempts in all.
    pub const fn attempts(self, attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: Some(attempts),
            ..self
        }
    }

    /// The wait before retry `retry` (0-based) without a hint: the
    /// exponential delay, jittered.
    pub fn delay(&self, retry: u32) -> Duration {
        let most = 1u32
            .checked_shl(retry)
            .and_then(|factor| self.first_delay.checked_mul(factor))
            .map_or(self.max_delay, |delay| delay.min(self.max_delay));
        match self.jitter {
            Jitter::None => most,
            Jitter::Full => {
                let nanos = u64::try_from(most.as_nanos()).unwrap_or(u64::MAX);
                Duration::from_nanos(rand::random_range(0..=nanos))
            }
        }
    }

    /// The wait before retry `retry` when the server hinted `hint`: at
    /// least the hint (not bounded here: see [`Backoff::next`]).
    pub fn wait(&self, retry: u32, hint: Option<Duration>) -> Duration {
        self.delay(retry).max(hint.unwrap_or(Duration::ZERO))
    }

    /// The retries of one operation under this policy.
    pub fn start(self) -> Backoff {
        Backoff {
            policy: self,
            retries: 0,
            waited: Duration::ZERO,
        }
    }
}

/// Why an operation is not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// The failure is of a class that retrying does not help.
    NotRetryable(ErrorClass),
    /// Every attempt of the budget was made.
    AttemptsSpent { attempts: u32 },
    /// The next wait would take the waits beyond their budget.
    WaitSpent { waited: Duration, limit: Duration },
    /// The server asked for a longer wait than the policy obeys.
    HintTooLong { hint: Duration, limit: Duration },
}

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GiveUp::NotRetryable(class) => write!(f, "a {class} failure is not retried"),
            GiveUp::AttemptsSpent { attempts } => write!(f, "{attempts} attempts made"),
            GiveUp::WaitSpent { waited, limit } => write!(
                f,
                "the next attempt would be after {} s of waiting in all, more than {} s",
                waited.as_secs(),
                limit.as_secs()
            ),
            GiveUp::HintTooLong { hint, limit } => write!(
                f,
                "the server asked to wait {} s, more than {} s",
                hint.as_secs(),
                limit.as_secs()
            ),
        }
    }
}

/// The retries of one operation: how many were scheduled and how long
/// they waited.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    retries: u32,
    waited: Duration,
}

impl Backoff {
    /// After a failure: the wait before the next attempt (a retry is then
    /// counted as scheduled), or why there is none.
    pub fn next(&mut self, error: &(impl Classify + ?Sized)) -> Result<Duration, GiveUp> {
        self.next_after(error.class(), error.retry_after())
    }

    /// [`Backoff::next`] for a failure of `class` with the server's `hint`.
    pub fn next_after(
        &mut self,
        class: ErrorClass,
        hint: Option<Duration>,
    ) -> Result<Duration, GiveUp> {
        let policy = &self.policy;
        if !class.is_retryable() {
            return Err(GiveUp::NotRetryable(class));
        }
        if let Some(attempts) = policy.max_attempts.filter(|most| self.retries + 1 >= *most) {
            return Err(GiveUp::AttemptsSpent { attempts });
        }
        if let Some(hint) = hint.filter(|hint| *hint > policy.max_hint) {
            return Err(GiveUp::HintTooLong {
                hint,
                limit: policy.max_hint,
            });
        }
        let delay = policy.wait(self.retries, hint);
        let waited = self.waited.saturating_add(delay);
        if let Some(limit) = policy.max_total_wait.filter(|limit| waited > *limit) {
            return Err(GiveUp::WaitSpent { waited, limit });
        }
        self.retries += 1;
        self.waited = waited;
        Ok(delay)
    }

    /// After an attempt that got somewhere (a pass that committed items
    /// before it failed): the attempts and the back-off start over, the
    /// time waited still counts against the wait budget. A peer that fails
    /// every so often, but not before something is done, never exhausts
    /// the attempts; one that stops progress does.
    pub fn progressed(&mut self) {
        self.retries = 0;
    }

    /// Starts over, as after a success (a supervisor's link that held).
    pub fn reset(&mut self) {
        self.retries = 0;
        self.waited = Duration::ZERO;
    }

    /// Retries scheduled so far.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Time the scheduled retries wait, together.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

/// Waits between attempts: tokio's clock in the product, a fake in tests.
pub trait Sleep: Send + Sync {
    fn sleep(&self, wait: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Sleeps on tokio's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioSleep;

impl Sleep for TokioSleep {
    fn sleep(&self, wait: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(tokio::time::sleep(wait))
    }
}

/// The policies of every layer, from the configuration (see the module's
/// docs for what each retries).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budgets {
    /// A mailbox pass restarted from its checkpoints.
    pub pass: RetryPolicy,
    /// One Graph request.
    pub graph_request: RetryPolicy,
    /// A mailbox's pause after a throttle without a hint (its
    /// [`RetryPolicy::delay`] for the throttles in a row).
    pub throttle_pause: RetryPolicy,
    /// A failed early refresh of an OAuth token.
    pub token_refresh: RetryPolicy,
    /// Taking a lease while the store is unavailable.
    pub lease_claim: RetryPolicy,
    /// Taking the next job after the queue failed.
    pub queue: RetryPolicy,
}

impl Budgets {
    /// The budgets `migration` sets (`max_attempts`, `max_pass_wait_secs`,
    /// `max_retry_after_secs`) and the fixed ones.
    pub fn new(migration: &MigrationConfig) -> Budgets {
        let max_hint = Duration::from_secs(migration.max_retry_after_secs).min(MAX_HINT);
        let exponential = |first, max| RetryPolicy {
            max_hint,
            ..RetryPolicy::exponential(first, max, Jitter::Full)
        };
        Budgets {
            pass: RetryPolicy {
                max_attempts: Some(migration.max_attempts.max(1)),
                max_total_wait: migration.max_pass_wait_secs.map(Duration::from_secs),
                ..exponential(Duration::from_secs(1), Duration::from_secs(60))
            },
            graph_request: exponential(Duration::from_millis(500), Duration::from_secs(30))
                .attempts(GRAPH_REQUEST_ATTEMPTS),
            throttle_pause: exponential(Duration::from_secs(1), Duration::from_secs(60)),
            token_refresh: RetryPolicy::fixed(Duration::from_secs(10)),
            lease_claim: RetryPolicy::exponential(
                Duration::from_millis(250),
                Duration::from_secs(10),
                Jitter::None,
            ),
            queue: RetryPolicy::fixed(Duration::from_secs(1)),
        }
    }
}

impl Default for Budgets {
    /// The budgets of the default configuration.
    fn default() -> Budgets {
        Budgets::new(&MigrationConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Failure {
        class: ErrorClass,
        hint: Option<Duration>,
    }

    impl Classify for Failure {
        fn class(&self) -> ErrorClass {
            self.class
        }

        fn retry_after(&self) -> Option<Duration> {
            self.hint
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Feeds `failures` to a new back-off of `policy` one after the other:
    /// the waits it scheduled, and why it gave up, if it did.
    fn run(policy: RetryPolicy, failures: Vec<Failure>) -> (Option<GiveUp>, Vec<Duration>) {
        let mut backoff = policy.start();
        let mut waits = Vec::new();
        for failure in &failures {
            match backoff.next(failure) {
                Ok(wait) => waits.push(wait),
                Err(reason) => return (Some(reason), waits),
            }
        }
        assert_eq!(backoff.retries() as usize, waits.len());
        assert_eq!(backoff.waited(), waits.iter().sum::<Duration>());
        (None, waits)
    }

    fn transient() -> Failure {
        Failure {
            class: ErrorClass::Transient,
            hint: None,
        }
    }

    fn throttled(hint: Duration) -> Failure {
        Failure {
            class: ErrorClass::Throttled,
            hint: Some(hint),
        }
    }

    fn transients(n: usize) -> Vec<Failure> {
        std::iter::repeat_with(transient).take(n).collect()
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let policy = RetryPolicy::exponential(secs(1), secs(5), Jitter::None);
        let (gave_up, waits) = run(policy, transients(5));
        assert_eq!(gave_up, None);
        assert_eq!(waits, [secs(1), secs(2), secs(4), secs(5), secs(5)]);
    }

    #[test]
    fn full_jitter_stays_within_its_bounds_and_varies() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(10);
        let policy = RetryPolicy::exponential(base, cap, Jitter::Full);
        for retry in 0..12 {
            let bound = (base * 2u32.pow(retry)).min(cap);
            let samples: Vec<Duration> = (0..500).map(|_| policy.delay(retry)).collect();
            assert!(samples.iter().all(|wait| *wait <= bound), "retry {retry}");
            let mut distinct = samples.clone();
            distinct.sort();
            distinct.dedup();
            assert!(distinct.len() > 100, "retry {retry}: hardly random");
            // Full jitter: both halves of the range are used.
            assert!(samples.iter().any(|wait| *wait < bound / 2));
            assert!(samples.iter().any(|wait| *wait > bound / 2));
        }
        // Huge retries stay at the cap, without overflow.
        for retry in [31, 32, 64, u32::MAX] {
            assert!(policy.delay(retry) <= cap);
        }
        RetryPolicy::exponential(Duration::MAX, Duration::MAX, Jitter::Full).delay(u32::MAX);
        let zero = RetryPolicy::exponential(Duration::ZERO, cap, Jitter::Full);
        assert_eq!(zero.delay(3), Duration::ZERO);
    }

    #[test]
    fn the_servers_hint_is_a_floor() {
        let policy = RetryPolicy::exponential(secs(2), secs(60), Jitter::None);
        let (gave_up, waits) = run(
            policy,
            vec![throttled(secs(30)), throttled(Duration::from_millis(10))],
        );
        assert_eq!(gave_up, None);
        // Longer than the back-off: the hint; shorter: the back-off.
        assert_eq!(waits, [secs(30), secs(4)]);
    }

    #[test]
    fn a_hint_over_the_maximum_gives_up_instead_of_waiting() {
        let policy = RetryPolicy {
            max_hint: secs(60),
            ..RetryPolicy::exponential(secs(1), secs(60), Jitter::None)
        };
        let (gave_up, waits) = run(policy, vec![throttled(secs(60)), throttled(secs(61))]);
        let limit = secs(60);
        assert_eq!(
            gave_up,
            Some(GiveUp::HintTooLong {
                hint: secs(61),
                limit
            })
        );
        assert_eq!(waits, [secs(60)], "a hint at the maximum is obeyed");
    }

    #[test]
    fn the_attempt_budget_is_spent() {
        let policy = RetryPolicy::exponential(secs(1), secs(60), Jitter::None).attempts(3);
        let (gave_up, waits) = run(policy, transients(10));
        assert_eq!(gave_up, Some(GiveUp::AttemptsSpent { attempts: 3 }));
        // Three attempts: two retries.
        assert_eq!(waits, [secs(1), secs(2)]);
        let once = RetryPolicy::fixed(secs(1)).attempts(1);
        assert!(run(once, transients(1)).1.is_empty());
    }

    #[test]
    fn the_wait_budget_is_never_overdrawn() {
        let policy = RetryPolicy {
            max_total_wait: Some(secs(10)),
            ..RetryPolicy::exponential(secs(1), secs(60), Jitter::None)
        };
        // 1 + 2 + 4 = 7 s; the next 8 s would make 15.
        let (gave_up, waits) = run(policy, transients(10));
        assert_eq!(
            gave_up,
            Some(GiveUp::WaitSpent {
                waited: secs(15),
                limit: secs(10)
            })
        );
        assert_eq!(waits, [secs(1), secs(2), secs(4)]);
    }

    #[test]
    fn item_and_mailbox_failures_are_not_retried_nor_counted() {
        for class in [ErrorClass::Item, ErrorClass::Mailbox] {
            let failure = Failure {
                class,
                hint: Some(secs(1)),
            };
            let (gave_up, waits) = run(RetryPolicy::fixed(secs(1)), vec![failure]);
            assert_eq!(gave_up, Some(GiveUp::NotRetryable(class)));
            assert!(waits.is_empty());
        }
    }

    #[test]
    fn retries_are_counted_when_scheduled_and_reset_starts_over() {
        let mut backoff = RetryPolicy::exponential(secs(1), secs(60), Jitter::None)
            .attempts(2)
            .start();
        assert_eq!(backoff.next(&transient()), Ok(secs(1)));
        assert_eq!(backoff.retries(), 1);
        assert!(backoff.next(&transient()).is_err());
        assert_eq!(backoff.retries(), 1, "a retry refused is not counted");
        assert_eq!(backoff.waited(), secs(1));
        backoff.reset();
        assert_eq!(backoff.next(&transient()), Ok(secs(1)));
    }

    #[test]
    fn progress_restores_the_attempts_but_not_the_wait_budget() {
        let backoff = RetryPolicy::exponential(secs(1), secs(60), Jitter::None).attempts(2);
        let mut backoff = RetryPolicy {
            max_total_wait: Some(secs(3)),
            ..backoff
        }
        .start();
        assert_eq!(backoff.next(&transient()), Ok(secs(1)));
        backoff.progressed();
        assert_eq!(
            backoff.next(&transient()),
            Ok(secs(1)),
            "attempts start over"
        );
        backoff.progressed();
        assert_eq!(backoff.next(&transient()), Ok(secs(1)));
        assert_eq!(backoff.waited(), secs(3));
        backoff.progressed();
        assert!(
            matches!(backoff.next(&transient()), Err(GiveUp::WaitSpent { .. })),
            "the time waited is never given back"
        );
    }

    #[test]
    fn budgets_follow_the_configuration() {
        let migration = MigrationConfig {
            max_attempts: 3,
            max_retry_after_secs: 120,
            max_pass_wait_secs: Some(600),
            ..MigrationConfig::default()
        };
        let budgets = Budgets::new(&migration);
        assert_eq!(budgets.pass.max_attempts, Some(3));
        assert_eq!(budgets.pass.max_total_wait, Some(secs(600)));
        assert_eq!(budgets.pass.max_hint, secs(120));
        assert_eq!(
            budgets.graph_request.max_attempts,
            Some(GRAPH_REQUEST_ATTEMPTS)
        );
        assert_eq!(Budgets::default().pass.max_attempts, Some(5));
    }
}
