//! Plain data types exchanged with callers.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// TLS from the first byte (imaps, usually port 993).
    Implicit,
    /// Plaintext greeting, then `STARTTLS`; refuses to continue if not offered.
    StartTls,
    /// No TLS at all.
    None,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// Extra PEM root certificates trusted in addition to the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Upper bound for every single I/O operation (connect, handshake, read, write).
    pub timeout: Duration,
}

/// The personal namespace announced by `NAMESPACE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub prefix: String,
    pub delimiter: Option<char>,
}

/// One `LIST` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// Raw wire name (modified UTF-7, not decoded).
    pub name: String,
    pub delimiter: Option<char>,
    /// Attributes such as `\Noselect`, `\HasChildren`, `\Sent`
    /// (`\NonExistent` comes with the `\Noselect` it implies).
    pub attributes: Vec<String>,
}

impl ListEntry {
    /// Case-insensitive attribute check, e.g. `has_attribute("\\Noselect")`.
    pub fn has_attribute(&self, attr: &str) -> bool {
        self.attributes.iter().any(|a| a.eq_ignore_ascii_case(attr))
    }
}

/// `STATUS` results; fields are `None` when the server omitted them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailboxStatus {
    pub uid_validity: Option<u32>,
    pub uid_next: Option<u32>,
    pub messages: Option<u32>,
    pub highest_modseq: Option<u64>,
}

/// What `SELECT`/`EXAMINE` reported about the mailbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelectedInfo {
    pub uid_validity: Option<u32>,
    pub uid_next: Option<u32>,
    pub exists: u32,
    /// `None` when the server sent `[NOMODSEQ]` or does not support CONDSTORE.
    pub highest_modseq: Option<u64>,
    /// Flags that can be stored permanently (`\*` means new keywords are
    /// allowed); `None` when the server did not say (then all can be).
    pub permanent_flags: Option<Vec<String>>,
    pub read_only: bool,
}

/// Metadata of one message from `fetch_meta`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    pub uid: u32,
    pub size: u64,
    /// Flags without `\Recent`.
    pub flags: Vec<String>,
    /// Raw IMAP date-time, e.g. `21-Nov-2026 14:53:20 +0000`.
    pub internal_date: String,
    pub modseq: Option<u64>,
}

/// A full message from `fetch_bodies`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedMessage {
    pub uid: u32,
    /// Exact `BODY[]` bytes, sharing the receive buffer (no copy).
    pub body: Bytes,
    /// Flags without `\Recent`; `None` when the server left them out.
    pub flags: Option<Vec<String>>,
    /// `None` when the server left it out.
    pub internal_date: Option<String>,
}

/// One message to `append`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendMessage {
    /// Flags to set; `\Recent` and syntactically invalid flags are dropped.
    pub flags: Vec<String>,
    /// Raw IMAP date-time; server time when `None`.
    pub internal_date: Option<String>,
    pub body: Bytes,
}

/// UIDPLUS information returned by `append`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    pub uid_validity: Option<u32>,
    /// New UIDs in message order; `None` unless the server reported one per message.
    pub uids: Option<Vec<u32>>,
}
