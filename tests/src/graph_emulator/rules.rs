//! Outlook's throttling rules per app and mailbox, injected faults, and the
//! per-mailbox statistics that benchmarks read.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;

use super::config::{ConcurrencyScope, Faults, Limits, ScriptedAnswer};

/// Why a request was answered 429.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ThrottleReason {
    /// Over the concurrent-requests limit of the app and mailbox
    /// (`ApplicationThrottled`, "MailboxConcurrency").
    Concurrency,
    /// Over the concurrent-requests limit of the app across its mailboxes
    /// (`ApplicationThrottled`).
    AppConcurrency,
    /// Over the requests-per-window limit (opens a Retry-After window).
    RequestRate,
    /// Over the upload budget (opens a Retry-After window).
    UploadVolume,
    /// Sent while a Retry-After window was open.
    RetryAfterWindow,
    /// Drawn by fault injection ([`Faults::throttle_rate`]; opens a
    /// Retry-After window).
    Injected,
}

/// An injected failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    ServerBusy { empty_body: bool },
    GatewayTimeout,
}

/// Why a request is not served.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Rejection {
    Throttled {
        reason: ThrottleReason,
        /// Seconds for the `Retry-After` header.
        retry_after: Option<u64>,
    },
    Fault(Fault),
}

/// One answered request, for rate computations.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestEvent {
    /// Time since the emulator started.
    #[serde(rename = "atSecs", with = "super::config::secs")]
    pub at: Duration,
    pub client_id: String,
    /// The HTTP status; 0 while the request is served, or if the client
    /// went away before the answer.
    pub status: u16,
    pub throttle_reason: Option<ThrottleReason>,
    /// Request body bytes counted against the upload budget.
    pub uploaded_bytes: u64,
    /// Whether the request carried `Prefer: IdType="ImmutableId"`.
    pub immutable_id: bool,
}

/// What one mailbox saw, over all apps.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MailboxStats {
    /// Requests that reached the rules: authenticated and addressed to an
    /// existing mailbox of the token's tenant (import URLs included).
    pub requests_total: u64,
    /// Requests answered 429, by reason.
    pub throttled: BTreeMap<ThrottleReason, u64>,
    pub server_busy_503: u64,
    /// 504s drawn before a request was served (nothing was done).
    pub gateway_timeout_504: u64,
    /// 504s of imports whose item was stored ([`Faults::applied_timeout_rate`]).
    pub applied_timeout_504: u64,
    /// Request body bytes of admitted POST/PUT/PATCH requests.
    pub bytes_uploaded: u64,
    /// Requests that carried `Prefer: IdType="ImmutableId"`.
    pub immutable_id_requests: u64,
    /// `importItem` requests admitted (served, whatever their answer).
    pub imports: u64,
    /// `importItem` requests refused for an expired or unknown import URL.
    pub import_urls_refused: u64,
    /// Every request, in arrival order.
    pub events: Vec<RequestEvent>,
}

impl MailboxStats {
    /// All 429 answers.
    pub fn throttled_total(&self) -> u64 {
        self.throttled.values().sum()
    }

    pub fn throttled_by(&self, reason: ThrottleReason) -> u64 {
        self.throttled.get(&reason).copied().unwrap_or_default()
    }
}

/// An open Retry-After window.
struct Block {
    until: Instant,
    length: Duration,
}

/// Counters of one app + mailbox pair.
#[derive(Default)]
struct Budget {
    in_flight: usize,
    requests: VecDeque<Instant>,
    uploads: VecDeque<(Instant, u64)>,
    uploaded: u64,
    block: Option<Block>,
}

impl Budget {
    fn forget_before(&mut self, now: Instant, limits: &Limits) {
        while self
            .requests
            .front()
            .is_some_and(|t| now.duration_since(*t) >= limits.request_window)
        {
            self.requests.pop_front();
        }
        while let Some((t, bytes)) = self.uploads.front().copied() {
            if now.duration_since(t) < limits.upload_window {
                break;
            }
            self.uploads.pop_front();
            self.uploaded -= bytes;
        }
    }

    /// Time until enough uploads leave the window for `bytes` more.
    fn upload_wait(&self, now: Instant, bytes: u64, limits: &Limits) -> Duration {
        let mut remaining = self.uploaded;
        for (t, size) in &self.uploads {
            remaining -= size;
            if remaining + bytes <= limits.upload_bytes_per_window {
                return (*t + limits.upload_window).saturating_duration_since(now);
            }
        }
        limits.upload_window
    }

    fn open_block(&mut self, now: Instant, wait: Duration) -> u64 {
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        let length = Duration::from_secs(secs);
        self.block = Some(Block {
            until: now + length,
            length,
        });
        secs
    }
}

/// The rule engine: limits, faults and statistics, guarded by the
/// emulator's state lock.
pub(crate) struct Rules {
    pub limits: Limits,
    pub faults: Faults,
    rng: StdRng,
    budgets: HashMap<(String, String), Budget>,
    /// Requests in flight per app, over all its mailboxes.
    app_in_flight: HashMap<String, usize>,
    stats: HashMap<String, MailboxStats>,
    /// Requests answered by [`Faults::answers`], in arrival order.
    scripted: Vec<ScriptedEvent>,
    started: Instant,
}

/// A request answered by a [`ScriptedAnswer`].
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScriptedEvent {
    /// Time since the emulator started (as [`RequestEvent::at`]).
    #[serde(rename = "atSecs", with = "super::config::secs")]
    pub at: Duration,
    pub method: String,
    pub path: String,
    pub status: u16,
}

impl Rules {
    pub fn new(limits: Limits, faults: Faults, started: Instant) -> Self {
        Self {
            rng: StdRng::seed_from_u64(faults.seed),
            limits,
            faults,
            budgets: HashMap::new(),
            app_in_flight: HashMap::new(),
            stats: HashMap::new(),
            scripted: Vec::new(),
            started,
        }
    }

    /// Replaces the fault settings and restarts the RNG from their seed.
    pub fn set_faults(&mut self, faults: Faults) {
        self.rng = StdRng::seed_from_u64(faults.seed);
        self.faults = faults;
    }

    /// Decides whether a request of `client_id` to `mailbox_id` is served.
    /// On `Ok` it holds a concurrency slot until [`Rules::finish`]; the
    /// returned index names its event.
    pub fn admit(
        &mut self,
        client_id: &str,
        mailbox_id: &str,
        upload_bytes: u64,
        immutable_id: bool,
    ) -> (usize, Result<(), Rejection>) {
        let now = Instant::now();
        let decision = self.decide(client_id, mailbox_id, upload_bytes, now);
        let decision = decision.and_then(|()| self.draw_throttle(client_id, mailbox_id, now));
        let decision = decision.and_then(|()| match self.draw_fault(mailbox_id) {
            Some(fault) => {
                self.release(client_id, mailbox_id);
                Err(Rejection::Fault(fault))
            }
            None => Ok(()),
        });
        let stats = self.stats.entry(mailbox_id.to_owned()).or_default();
        stats.requests_total += 1;
        stats.immutable_id_requests += u64::from(immutable_id);
        let mut event = RequestEvent {
            at: now.duration_since(self.started),
            client_id: client_id.to_owned(),
            status: 0,
            throttle_reason: None,
            uploaded_bytes: 0,
            immutable_id,
        };
        match decision {
            Ok(()) => {
                stats.bytes_uploaded += upload_bytes;
                event.uploaded_bytes = upload_bytes;
            }
            Err(Rejection::Throttled { reason, .. }) => {
                *stats.throttled.entry(reason).or_default() += 1;
                event.status = 429;
                event.throttle_reason = Some(reason);
            }
            Err(Rejection::Fault(Fault::ServerBusy { .. })) => {
                stats.server_busy_503 += 1;
                event.status = 503;
            }
            Err(Rejection::Fault(Fault::GatewayTimeout)) => {
                stats.gateway_timeout_504 += 1;
                event.status = 504;
            }
        }
        stats.events.push(event);
        (stats.events.len() - 1, decision)
    }

    fn decide(
        &mut self,
        client_id: &str,
        mailbox_id: &str,
        upload_bytes: u64,
        now: Instant,
    ) -> Result<(), Rejection> {
        let limits = self.limits.clone();
        let budget = self
            .budgets
            .entry((client_id.to_owned(), mailbox_id.to_owned()))
            .or_default();
        budget.forget_before(now, &limits);
        if let Some(block) = &mut budget.block {
            if now < block.until {
                if limits.retry_after_extends {
                    block.until = now + block.length;
                }
                let wait = block.until.saturating_duration_since(now);
                return Err(Rejection::Throttled {
                    reason: ThrottleReason::RetryAfterWindow,
                    retry_after: Some(wait.as_secs_f64().ceil().max(1.0) as u64),
                });
            }
            budget.block = None;
        }
        let app_in_flight = self.app_in_flight.entry(client_id.to_owned()).or_default();
        let (in_flight, reason) = match limits.concurrency_scope {
            ConcurrencyScope::Mailbox => (budget.in_flight, ThrottleReason::Concurrency),
            ConcurrencyScope::App => (*app_in_flight, ThrottleReason::AppConcurrency),
        };
        if in_flight >= limits.concurrent_requests {
            return Err(Rejection::Throttled {
                reason,
                retry_after: None,
            });
        }
        if budget.requests.len() as u64 >= limits.requests_per_window {
            let oldest = *budget.requests.front().expect("the window is full");
            let wait = (oldest + limits.request_window).saturating_duration_since(now);
            return Err(Rejection::Throttled {
                reason: ThrottleReason::RequestRate,
                retry_after: Some(budget.open_block(now, wait)),
            });
        }
        if upload_bytes > 0 && budget.uploaded + upload_bytes > limits.upload_bytes_per_window {
            let wait = budget.upload_wait(now, upload_bytes, &limits);
            return Err(Rejection::Throttled {
                reason: ThrottleReason::UploadVolume,
                retry_after: Some(budget.open_block(now, wait)),
            });
        }
        budget.in_flight += 1;
        *app_in_flight += 1;
        budget.requests.push_back(now);
        if upload_bytes > 0 {
            budget.uploads.push_back((now, upload_bytes));
            budget.uploaded += upload_bytes;
        }
        Ok(())
    }

    /// An injected 429 for an admitted request: its slot is released and
    /// the mailbox's Retry-After window opens, as after a real throttle.
    fn draw_throttle(
        &mut self,
        client_id: &str,
        mailbox_id: &str,
        now: Instant,
    ) -> Result<(), Rejection> {
        if !self.faults_apply(mailbox_id) || self.rng.random::<f64>() >= self.faults.throttle_rate {
            return Ok(());
        }
        self.release(client_id, mailbox_id);
        let budget = self
            .budgets
            .get_mut(&(client_id.to_owned(), mailbox_id.to_owned()))
            .expect("admitted requests have a budget");
        Err(Rejection::Throttled {
            reason: ThrottleReason::Injected,
            retry_after: Some(budget.open_block(now, self.faults.throttle_retry_after)),
        })
    }

    /// Whether random faults are drawn for requests to `mailbox_id`.
    fn faults_apply(&self, mailbox_id: &str) -> bool {
        let only = &self.faults.only_mailboxes;
        self.faults.enabled && (only.is_empty() || only.iter().any(|m| m == mailbox_id))
    }

    fn draw_fault(&mut self, mailbox_id: &str) -> Option<Fault> {
        if !self.faults_apply(mailbox_id) {
            return None;
        }
        let draw: f64 = self.rng.random();
        if draw < self.faults.server_busy_rate {
            let empty_body = self.rng.random::<f64>() < self.faults.empty_body_share;
            return Some(Fault::ServerBusy { empty_body });
        }
        if draw < self.faults.server_busy_rate + self.faults.gateway_timeout_rate {
            return Some(Fault::GatewayTimeout);
        }
        None
    }

    fn release(&mut self, client_id: &str, mailbox_id: &str) {
        if let Some(budget) = self
            .budgets
            .get_mut(&(client_id.to_owned(), mailbox_id.to_owned()))
        {
            budget.in_flight = budget.in_flight.saturating_sub(1);
        }
        if let Some(in_flight) = self.app_in_flight.get_mut(client_id) {
            *in_flight = in_flight.saturating_sub(1);
        }
    }

    /// The scripted answer for a request (`path` with its query), if one
    /// matches: counted down and logged.
    pub fn scripted(&mut self, method: &str, path: &str) -> Option<ScriptedAnswer> {
        let answer = self.faults.answers.iter_mut().find(|a| {
            path.contains(&a.path_contains)
                && a.method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method))
                && a.times != Some(0)
        })?;
        if let Some(times) = answer.times.as_mut() {
            *times -= 1;
        }
        let answer = answer.clone();
        self.scripted.push(ScriptedEvent {
            at: self.started.elapsed(),
            method: method.to_owned(),
            path: path.to_owned(),
            status: answer.status,
        });
        Some(answer)
    }

    /// The requests answered by the script so far.
    pub fn scripted_events(&self) -> Vec<ScriptedEvent> {
        self.scripted.clone()
    }

    /// An `importItem` request for `mailbox_id` was refused: its import URL
    /// expired or is unknown.
    pub fn import_url_refused(&mut self, mailbox_id: &str) {
        self.stats
            .entry(mailbox_id.to_owned())
            .or_default()
            .import_urls_refused += 1;
    }

    /// Ends an admitted request: frees its slot and records its status.
    pub fn finish(&mut self, client_id: &str, mailbox_id: &str, event: usize, status: u16) {
        self.release(client_id, mailbox_id);
        if let Some(event) = self
            .stats
            .get_mut(mailbox_id)
            .and_then(|s| s.events.get_mut(event))
        {
            event.status = status;
        }
    }

    /// An `importItem` request was admitted and served (`stored`: its item
    /// is in the mailbox now): counted; the fault its answer is to be lost
    /// to, if any ([`Faults::lost_import_answers`], then
    /// [`Faults::applied_timeout_rate`]).
    pub fn imported(&mut self, mailbox_id: &str, stored: bool) -> Option<Fault> {
        self.stats.entry(mailbox_id.to_owned()).or_default().imports += 1;
        if !stored {
            return None;
        }
        if self.faults.lost_import_answers > 0 {
            self.faults.lost_import_answers -= 1;
            return Some(Fault::ServerBusy { empty_body: false });
        }
        if self.faults_apply(mailbox_id)
            && self.rng.random::<f64>() < self.faults.applied_timeout_rate
        {
            self.stats
                .entry(mailbox_id.to_owned())
                .or_default()
                .applied_timeout_504 += 1;
            return Some(Fault::GatewayTimeout);
        }
        None
    }

    pub fn stats(&self, mailbox_id: &str) -> MailboxStats {
        self.stats.get(mailbox_id).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(limits: Limits) -> Rules {
        Rules::new(limits, Faults::default(), Instant::now())
    }

    #[test]
    fn concurrency_slots_are_released() {
        let mut r = rules(Limits {
            concurrent_requests: 2,
            concurrency_scope: ConcurrencyScope::Mailbox,
            ..Limits::default()
        });
        assert!(r.admit("app", "mbx", 0, false).1.is_ok());
        let (second, outcome) = r.admit("app", "mbx", 0, false);
        assert!(outcome.is_ok());
        assert!(matches!(
            r.admit("app", "mbx", 0, false).1,
            Err(Rejection::Throttled {
                reason: ThrottleReason::Concurrency,
                retry_after: None
            })
        ));
        assert!(r.admit("other-app", "mbx", 0, false).1.is_ok(), "per app");
        r.finish("app", "mbx", second, 200);
        assert!(r.admit("app", "mbx", 0, false).1.is_ok());
        let stats = r.stats("mbx");
        assert_eq!(stats.requests_total, 5);
        assert_eq!(stats.throttled_by(ThrottleReason::Concurrency), 1);
        assert_eq!(stats.events[second].status, 200);
    }

    #[test]
    fn app_wide_concurrency_counts_every_mailbox_of_the_app() {
        let mut r = rules(Limits {
            concurrent_requests: 2,
            ..Limits::default()
        });
        let (first, outcome) = r.admit("app", "mbx-1", 0, false);
        assert!(outcome.is_ok());
        assert!(r.admit("app", "mbx-2", 0, false).1.is_ok());
        assert!(matches!(
            r.admit("app", "mbx-3", 0, false).1,
            Err(Rejection::Throttled {
                reason: ThrottleReason::AppConcurrency,
                retry_after: None
            })
        ));
        assert!(r.admit("other-app", "mbx-3", 0, false).1.is_ok(), "per app");
        r.finish("app", "mbx-1", first, 200);
        assert!(r.admit("app", "mbx-3", 0, false).1.is_ok());
        assert_eq!(
            r.stats("mbx-3")
                .throttled_by(ThrottleReason::AppConcurrency),
            1
        );
    }

    #[test]
    fn scripted_answers_match_by_path_and_count_down() {
        let mut r = rules(Limits::default());
        r.set_faults(Faults {
            answers: vec![
                ScriptedAnswer::new("/items/delta", 403, "ErrorAccessDenied", "Denied.").times(1),
                ScriptedAnswer::new("/exportItems", 503, "serviceNotAvailable", "Busy.")
                    .retry_after(2),
            ],
            ..Faults::default()
        });
        assert_eq!(r.scripted("GET", "/v1.0/x/folders/f/items"), None);
        let denied = r.scripted("GET", "/v1.0/x/folders/f/items/delta").unwrap();
        assert_eq!(denied.status, 403);
        assert_eq!(r.scripted("GET", "/v1.0/x/folders/f/items/delta"), None);
        for _ in 0..2 {
            let busy = r.scripted("POST", "/v1.0/x/exportItems").unwrap();
            assert_eq!(busy.retry_after_secs, Some(2));
        }
        let logged: Vec<u16> = r.scripted_events().iter().map(|e| e.status).collect();
        assert_eq!(logged, [403, 503, 503]);
    }

    #[test]
    fn rate_window_blocks_then_recovers() {
        let mut r = rules(Limits {
            requests_per_window: 2,
            request_window: Duration::from_millis(300),
            ..Limits::default()
        });
        for _ in 0..2 {
            let (event, outcome) = r.admit("app", "mbx", 0, false);
            assert!(outcome.is_ok());
            r.finish("app", "mbx", event, 200);
        }
        let Err(Rejection::Throttled {
            reason: ThrottleReason::RequestRate,
            retry_after: Some(1),
        }) = r.admit("app", "mbx", 0, false).1
        else {
            panic!("expected a rate rejection with Retry-After: 1");
        };
        assert!(matches!(
            r.admit("app", "mbx", 0, false).1,
            Err(Rejection::Throttled {
                reason: ThrottleReason::RetryAfterWindow,
                ..
            })
        ));
        std::thread::sleep(Duration::from_millis(1050));
        assert!(r.admit("app", "mbx", 0, false).1.is_ok());
    }

    #[test]
    fn upload_budget() {
        let mut r = rules(Limits {
            upload_bytes_per_window: 100,
            ..Limits::default()
        });
        let (event, outcome) = r.admit("app", "mbx", 60, false);
        assert!(outcome.is_ok());
        r.finish("app", "mbx", event, 200);
        assert!(matches!(
            r.admit("app", "mbx", 60, false).1,
            Err(Rejection::Throttled {
                reason: ThrottleReason::UploadVolume,
                retry_after: Some(300)
            })
        ));
        assert_eq!(r.stats("mbx").bytes_uploaded, 60);
    }
}
