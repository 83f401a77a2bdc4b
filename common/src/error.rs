//! The error taxonomy: every failure anywhere in mailwave is put in exactly one
//! [`ErrorClass`], and the class alone decides what happens next. The same
//! classes label the metrics, so an operator's dashboard and the retry logic
//! never disagree.

use std::fmt;
use std::time::Duration;

/// What to do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The server asked us to slow down: wait (at least) for its hint, then retry.
    Throttled,
    /// A passing fault (connection reset, timeout, 5xx): retry with back-off.
    Transient,
    /// This one item cannot be copied (refused, too big, malformed): record it
    /// with its reason, skip it, and go on with the mailbox.
    Item,
    /// The whole mailbox cannot go on (wrong password, mailbox missing, quota):
    /// fail the mailbox with a clear reason; the rest of the wave goes on.
    Mailbox,
}

impl ErrorClass {
    /// The label used in logs, reports and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Throttled => "throttled",
            ErrorClass::Transient => "transient",
            ErrorClass::Item => "item",
            ErrorClass::Mailbox => "mailbox",
        }
    }

    /// Whether the same operation may succeed if tried again later.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorClass::Throttled | ErrorClass::Transient)
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Implemented by every error type that can reach the retry logic.
pub trait Classify {
    /// The class that decides what happens to this failure.
    fn class(&self) -> ErrorClass;

    /// The server's own hint of how long to wait, when it gave one.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}
