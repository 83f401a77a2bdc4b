//! Mail systems behind two traits: a [`MailSource`] is read, a [`MailTarget`]
//! is written. The copy engine only ever talks to these traits; each
//! connector (IMAP, Maildir) turns them into its own protocol.

pub mod graph;
pub mod imap;
pub mod maildir;

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use mailwave_common::model::FolderCheckpoint;
use mailwave_common::{Classify, ErrorClass};

/// A failure inside a connector, already classified.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ConnectorError {
    pub class: ErrorClass,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ConnectorError {
    fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        ConnectorError {
            class,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A passing fault: retry with back-off.
    pub fn transient(message: impl Into<String>) -> Self {
        ConnectorError::new(ErrorClass::Transient, message)
    }

    /// The server asked to slow down, perhaps saying for how long.
    pub fn throttled(message: impl Into<String>, retry_after: Option<Duration>) -> Self {
        ConnectorError {
            retry_after,
            ..ConnectorError::new(ErrorClass::Throttled, message)
        }
    }

    /// This item cannot be copied; the mailbox goes on.
    pub fn item(message: impl Into<String>) -> Self {
        ConnectorError::new(ErrorClass::Item, message)
    }

    /// The mailbox cannot go on (auth, missing mailbox, quota).
    pub fn mailbox(message: impl Into<String>) -> Self {
        ConnectorError::new(ErrorClass::Mailbox, message)
    }

    /// The pass was stopped on purpose (the worker is shutting down): the
    /// work is at a checkpoint and the mailbox goes back to the queue.
    pub fn interrupted() -> Self {
        ConnectorError::transient("interrupted: the worker is shutting down")
    }

    /// The same error with context in front of its message.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl Classify for ConnectorError {
    fn class(&self) -> ErrorClass {
        self.class
    }

    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl From<std::io::Error> for ConnectorError {
    fn from(error: std::io::Error) -> Self {
        ConnectorError::transient(error.to_string())
    }
}

/// The `chrono` format of an IMAP date-time, as in `21-Nov-2026 14:53:20 +0000`.
pub(crate) const IMAP_DATE: &str = "%d-%b-%Y %H:%M:%S %z";

/// A folder's place in the hierarchy as people read it: its levels, decoded
/// to Unicode. Separators and encodings belong to each connector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FolderPath(pub Vec<String>);

impl FolderPath {
    pub fn inbox() -> FolderPath {
        FolderPath(vec!["INBOX".into()])
    }

    /// Whether this is the inbox (matched without regard to case, as IMAP does).
    pub fn is_inbox(&self) -> bool {
        self.0.len() == 1 && self.0[0].eq_ignore_ascii_case("INBOX")
    }
}

impl fmt::Display for FolderPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("/"))
    }
}

/// Folder roles of RFC 6154 SPECIAL-USE, which must land in the target's
/// folder of the same role whatever either side calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecialUse {
    Sent,
    Drafts,
    Trash,
    Junk,
    Archive,
}

impl SpecialUse {
    /// The role of an IMAP LIST attribute such as `\Sent`.
    pub fn from_attribute(attribute: &str) -> Option<SpecialUse> {
        Some(match attribute.to_ascii_lowercase().as_str() {
            "\\sent" => SpecialUse::Sent,
            "\\drafts" => SpecialUse::Drafts,
            "\\trash" => SpecialUse::Trash,
            "\\junk" => SpecialUse::Junk,
            "\\archive" => SpecialUse::Archive,
            _ => return None,
        })
    }

    /// The LIST attribute of this role.
    pub fn attribute(self) -> &'static str {
        match self {
            SpecialUse::Sent => "\\Sent",
            SpecialUse::Drafts => "\\Drafts",
            SpecialUse::Trash => "\\Trash",
            SpecialUse::Junk => "\\Junk",
            SpecialUse::Archive => "\\Archive",
        }
    }

    /// The name used when the target has no folder of this role yet.
    pub fn default_name(self) -> &'static str {
        match self {
            SpecialUse::Sent => "Sent",
            SpecialUse::Drafts => "Drafts",
            SpecialUse::Trash => "Trash",
            SpecialUse::Junk => "Junk",
            SpecialUse::Archive => "Archive",
        }
    }
}

/// Message flags in canonical form: system flags spelled as in RFC 3501
/// (`\Seen`), keywords as given, `\Recent` never (no client may set it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Flags(BTreeSet<String>);

impl Flags {
    /// Parses the form written by [`Flags::to_string`] (space-separated).
    pub fn parse(text: &str) -> Flags {
        Flags::from_iter(text.split_ascii_whitespace())
    }

    pub fn contains(&self, flag: &str) -> bool {
        self.0.contains(flag)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Canonical flags from what a server sent.
impl<S: AsRef<str>> FromIterator<S> for Flags {
    fn from_iter<I: IntoIterator<Item = S>>(flags: I) -> Flags {
        let canonical = flags.into_iter().filter_map(|flag| {
            let flag = flag.as_ref().trim();
            if flag.is_empty() {
                return None;
            }
            if !flag.starts_with('\\') {
                return Some(flag.to_owned());
            }
            let system = match flag.to_ascii_lowercase().as_str() {
                "\\seen" => "\\Seen",
                "\\answered" => "\\Answered",
                "\\flagged" => "\\Flagged",
                "\\deleted" => "\\Deleted",
                "\\draft" => "\\Draft",
                "\\recent" => return None,
                _ => return Some(flag.to_owned()),
            };
            Some(system.to_owned())
        });
        Flags(canonical.collect())
    }
}

impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for flag in &self.0 {
            if !first {
                f.write_str(" ")?;
            }
            f.write_str(flag)?;
            first = false;
        }
        Ok(())
    }
}

/// A folder of the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFolder {
    /// The source's own name for it: stable, used as the key in checkpoints.
    pub key: String,
    pub path: FolderPath,
    /// Its role, from SPECIAL-USE or recognised from a well-known name.
    pub special: Option<SpecialUse>,
    /// The class of its items where the source has one (Exchange:
    /// `IPF.Note`, `IPF.Appointment`, `IPF.Contact`, `IPF.Task`, …): a
    /// target that knows classes creates the folder with it.
    pub class: Option<String>,
}

/// A source item as listed, before its body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemMeta {
    /// The item's key in its folder (IMAP: UID in decimal; Maildir: unique name).
    pub item: String,
    /// The IMAP UID; 0 for sources without UIDs.
    pub uid: u32,
    /// The size in bytes; 0 when the source cannot tell before the body is
    /// read (Graph's mail API): the engine then assumes a size for batching
    /// and the memory budget, and checks the real one once fetched.
    pub size: u64,
    pub flags: Flags,
    /// The received date in IMAP date-time form (`21-Nov-2026 14:53:20 +0000`).
    pub internal_date: Option<String>,
}

/// What a source folder holds that the last checkpoint does not cover.
#[derive(Debug, Clone, Default)]
pub struct FolderScan {
    /// UIDVALIDITY, or the connector's equivalent.
    pub validity: u32,
    pub highest_modseq: Option<u64>,
    /// Items that may need copying, in UID order.
    pub candidates: Vec<ItemMeta>,
    /// `true`: `candidates` is the whole folder and those already in the
    /// ledger must be left out by the caller (Maildir; IMAP after a
    /// UIDVALIDITY change). `false`: only items above the high-water mark.
    pub complete: bool,
    pub flags: FlagScan,
    /// Where the next scan resumes (Graph: the delta link), for the folder
    /// checkpoint once everything listed here is copied or recorded.
    pub sync_state: Option<String>,
}

/// Flags of items copied before, as the source has them now.
#[derive(Debug, Clone, Default)]
pub enum FlagScan {
    /// Nothing changed since the checkpoint (or nothing was copied yet).
    #[default]
    Unchanged,
    /// Only items whose flags changed since the checkpoint (CONDSTORE).
    Changed(Vec<(String, Flags)>),
    /// Every copied item with its flags; the caller compares with the ledger.
    All(Vec<(String, Flags)>),
}

/// A message read from the source.
#[derive(Debug, Clone)]
pub struct Message {
    pub meta: ItemMeta,
    pub body: Bytes,
}

/// Reads a mailbox.
#[async_trait]
pub trait MailSource: Send {
    /// Every folder that holds messages.
    async fn folders(&mut self) -> Result<Vec<SourceFolder>, ConnectorError>;

    /// What needs doing in `folder` since `checkpoint`.
    async fn scan(
        &mut self,
        folder: &SourceFolder,
        checkpoint: Option<&FolderCheckpoint>,
    ) -> Result<FolderScan, ConnectorError>;

    /// The messages of these items, in the same order; items no longer in
    /// the source are left out.
    async fn fetch(
        &mut self,
        folder: &SourceFolder,
        items: &[ItemMeta],
    ) -> Result<Vec<Message>, ConnectorError>;

    /// The header blocks of these items (item key, header bytes), to
    /// recognise copies whose record was lost.
    async fn fetch_headers(
        &mut self,
        folder: &SourceFolder,
        items: &[ItemMeta],
    ) -> Result<Vec<(String, Bytes)>, ConnectorError>;

    /// Ends the session politely (IMAP LOGOUT). Dropping without it is safe.
    async fn close(self: Box<Self>) {}
}

/// A folder of the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetFolder {
    /// The target's own name for it.
    pub name: String,
    pub path: FolderPath,
    pub special: Option<SpecialUse>,
}

/// A message to append to the target.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub body: Bytes,
    pub flags: Flags,
    pub internal_date: Option<String>,
    /// A stable name for this source item (hash of mailbox, folder, validity
    /// and item): targets that can name their items use it to make appends
    /// idempotent.
    pub source_ref: String,
}

/// How an append went.
#[derive(Debug, Default)]
pub struct AppendReport {
    /// Per message, in order: the copy's id in the target (when the target
    /// tells it), or why that one message was refused.
    pub results: Vec<Result<Option<String>, ConnectorError>>,
    /// The target's mark after this append, when known without asking.
    pub mark_after: Option<u64>,
}

/// A message already in the target, as seen when looking for in-doubt copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetItem {
    pub id: String,
    pub size: u64,
    /// blake3 of the header block, hex.
    pub header_hash: String,
}

/// Writes a mailbox.
#[async_trait]
pub trait MailTarget: Send {
    /// The folders that exist now.
    async fn folders(&mut self) -> Result<Vec<TargetFolder>, ConnectorError>;

    /// Creates the folder at `path` (and its parents) unless it exists,
    /// for items of `class` where the target knows classes.
    async fn ensure_folder(
        &mut self,
        path: &FolderPath,
        special: Option<SpecialUse>,
        class: Option<&str>,
    ) -> Result<TargetFolder, ConnectorError>;

    /// The folder's position now (IMAP: UIDNEXT): messages appended from now
    /// on lie at or past it.
    async fn mark(&mut self, folder: &str) -> Result<u64, ConnectorError>;

    /// Messages at or past `mark`; empty for targets whose appends are
    /// idempotent by themselves.
    async fn items_since(
        &mut self,
        folder: &str,
        mark: u64,
    ) -> Result<Vec<TargetItem>, ConnectorError>;

    /// Appends the messages in order.
    async fn append(
        &mut self,
        folder: &str,
        messages: &[Outgoing],
    ) -> Result<AppendReport, ConnectorError>;

    /// Replaces the flags of copies (target id, flags).
    async fn set_flags(
        &mut self,
        folder: &str,
        changes: &[(String, Flags)],
    ) -> Result<(), ConnectorError>;

    /// Ends the session politely (IMAP LOGOUT). Dropping without it is safe.
    async fn close(self: Box<Self>) {}
}

/// blake3 of the header block of a message (up to and including the first
/// empty line), hex: with the size, how a copy is recognised.
pub fn header_hash(message: &[u8]) -> String {
    blake3::hash(header_block(message)).to_hex().to_string()
}

/// The header block of a message: up to and including the first empty line
/// (CRLF or bare LF), or all of it when there is no body.
pub fn header_block(message: &[u8]) -> &[u8] {
    let mut line_start = 0;
    for (i, &byte) in message.iter().enumerate() {
        if byte != b'\n' {
            continue;
        }
        let line = &message[line_start..i];
        if line.is_empty() || line == b"\r" {
            return &message[..=i];
        }
        line_start = i + 1;
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_canonical_and_never_recent() {
        let flags = Flags::from_iter(["\\SEEN", "\\Recent", "$Label1", "\\flagged", "Work"]);
        assert_eq!(flags.to_string(), "$Label1 Work \\Flagged \\Seen");
        assert_eq!(Flags::parse(&flags.to_string()), flags);
        assert!(!flags.contains("\\Recent"));
    }

    #[test]
    fn header_block_stops_at_first_empty_line() {
        assert_eq!(
            header_block(b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\n"),
            b"A: 1\r\nB: 2\r\n\r\n"
        );
        assert_eq!(header_block(b"A: 1\nB: 2\n\nbody"), b"A: 1\nB: 2\n\n");
        assert_eq!(header_block(b"A: 1\r\n"), b"A: 1\r\n");
        assert_ne!(header_hash(b"A: 1\r\n\r\nx"), header_hash(b"A: 2\r\n\r\nx"));
        assert_eq!(header_hash(b"A: 1\r\n\r\nx"), header_hash(b"A: 1\r\n\r\ny"));
    }
}
