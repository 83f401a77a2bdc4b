//! Error type shared by the whole IMAP client.

use std::time::Duration;

/// Every way an IMAP operation can fail, classified for retry decisions.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    /// Transport failure: connection refused/reset, unexpected EOF, or the
    /// connection is unusable after an earlier fatal error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A single I/O operation did not finish within the configured timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// TLS setup or handshake failure, or TLS was required but not offered.
    #[error("TLS error: {0}")]
    Tls(String),
    /// The server sent something that cannot be understood.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Tagged `NO`; `code` is the response code atom in upper case
    /// (e.g. `AUTHENTICATIONFAILED`, `ALREADYEXISTS`, `TRYCREATE`, `OVERQUOTA`).
    #[error("server refused{}: {text}", code.as_deref().map(|c| format!(" [{c}]")).unwrap_or_default())]
    No { code: Option<String>, text: String },
    /// Tagged `BAD`: the server considered the command invalid.
    #[error("server rejected command as BAD: {text}")]
    Bad { text: String },
    /// The server closed the session with `BYE`.
    #[error("server closed the session: {text}")]
    Bye { text: String },
}

impl ImapError {
    /// The response code of a `NO` response, if any.
    pub fn code(&self) -> Option<&str> {
        match self {
            ImapError::No { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// Whether the connection can no longer be used after this error.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, ImapError::No { .. } | ImapError::Bad { .. })
    }

    /// Server-suggested backoff, parsed from Exchange's
    /// "Suggested Backoff Time: 1234 milliseconds" (or "ms") text.
    pub fn backoff_hint(&self) -> Option<Duration> {
        let text = match self {
            ImapError::No { text, .. } | ImapError::Bad { text } | ImapError::Bye { text } => text,
            _ => return None,
        };
        parse_backoff(text)
    }
}

fn parse_backoff(text: &str) -> Option<Duration> {
    const MARKER: &str = "suggested backoff time";
    let lower = text.to_ascii_lowercase();
    let rest = &lower[lower.find(MARKER)? + MARKER.len()..];
    let rest = rest.trim_start_matches([':', ' ', '=']);
    let digits_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let value: u64 = rest[..digits_end].parse().ok()?;
    if rest[digits_end..].trim_start().starts_with("sec") {
        return Some(Duration::from_secs(value));
    }
    Some(Duration::from_millis(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no(text: &str) -> ImapError {
        ImapError::No {
            code: None,
            text: text.to_string(),
        }
    }

    #[test]
    fn backoff_hint_variants() {
        let e = no("Request is throttled. Suggested Backoff Time: 1234 milliseconds");
        assert_eq!(e.backoff_hint(), Some(Duration::from_millis(1234)));
        let e = no("User is over budget. suggested backoff time: 250 ms.");
        assert_eq!(e.backoff_hint(), Some(Duration::from_millis(250)));
        let e = ImapError::Bye {
            text: "Server busy. Suggested Backoff Time: 3 seconds".into(),
        };
        assert_eq!(e.backoff_hint(), Some(Duration::from_secs(3)));
        assert_eq!(no("Mailbox doesn't exist").backoff_hint(), None);
        assert_eq!(no("Suggested Backoff Time: soon").backoff_hint(), None);
        assert_eq!(
            ImapError::Timeout(Duration::from_secs(1)).backoff_hint(),
            None
        );
    }

    #[test]
    fn display_and_classification() {
        let e = ImapError::No {
            code: Some("ALREADYEXISTS".into()),
            text: "Mailbox already exists".into(),
        };
        assert_eq!(
            e.to_string(),
            "server refused [ALREADYEXISTS]: Mailbox already exists"
        );
        assert_eq!(e.code(), Some("ALREADYEXISTS"));
        assert!(!e.is_fatal());
        assert!(ImapError::Protocol("x".into()).is_fatal());
    }
}
