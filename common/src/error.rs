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

/// An error and its sources on one line (`a: b: c`): many libraries say
/// little in their own message and keep the server's words or the I/O error
/// in the source.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A server's hint from an HTTP answer: the `Retry-After` header (seconds,
/// or an HTTP date, measured from `now`) or, failing that, an EWS-style
/// `BackOffMilliseconds` value in the body (JSON `"BackOffMilliseconds": N`,
/// or EWS's `<t:Value Name="BackOffMilliseconds">N</t:Value>` in a
/// throttling fault). `None` when the server gave no usable hint.
pub fn http_retry_hint(
    retry_after: Option<&str>,
    body: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<Duration> {
    retry_after
        .and_then(|value| parse_retry_after(value, now))
        .or_else(|| back_off_milliseconds(body))
}

/// `Retry-After: 120` or `Retry-After: Wed, 21 Oct 2026 07:28:00 GMT`; a
/// date in the past means "now".
fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some((at.to_utc() - now).to_std().unwrap_or(Duration::ZERO))
}

fn back_off_milliseconds(body: &str) -> Option<Duration> {
    const NAME: &str = "BackOffMilliseconds";
    let rest = &body[body.find(NAME)? + NAME.len()..];
    let rest = rest.trim_start_matches(['"', '\'', ':', '>', ' ', '\t']);
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok().map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339("2026-10-21T07:27:30Z")
            .unwrap()
            .to_utc()
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let hint = |value| http_retry_hint(Some(value), "", now());
        assert_eq!(hint("120"), Some(Duration::from_secs(120)));
        assert_eq!(hint(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            hint("Wed, 21 Oct 2026 07:28:00 GMT"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(hint("Wed, 21 Oct 2026 07:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(hint("soon"), None);
        assert_eq!(hint("-5"), None);
    }

    #[test]
    fn back_off_milliseconds_from_json_or_xml_bodies() {
        let json = r#"{"error":{"code":"ErrorServerBusy","BackOffMilliseconds": 2500}}"#;
        assert_eq!(
            http_retry_hint(None, json, now()),
            Some(Duration::from_millis(2500))
        );
        let xml = "<t:Value Name=\"BackOffMilliseconds\">"; // a name with no value
        assert_eq!(http_retry_hint(None, xml, now()), None);
        let xml =
            "<m:MessageXml><t:Value Name=\"BackOffMilliseconds\">1200</t:Value></m:MessageXml>";
        assert_eq!(
            http_retry_hint(None, xml, now()),
            Some(Duration::from_millis(1200))
        );
        // The header wins over the body.
        assert_eq!(
            http_retry_hint(Some("3"), json, now()),
            Some(Duration::from_secs(3))
        );
        assert_eq!(http_retry_hint(None, "{}", now()), None);
    }
}
