//! Mail systems behind two traits: a [`MailSource`] is read, a [`MailTarget`]
//! is written. The copy engine only ever talks to these traits; each
//! connector (IMAP, Maildir, Microsoft Graph) turns them into its own protocol.

pub mod graph;
pub mod imap;
pub mod maildir;
pub mod oauth;
pub mod throttle;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, FixedOffset};
use mailwave_common::model::{FolderCheckpoint, SourceCursor, TargetMark};
use mailwave_common::{Classify, ErrorClass};

/// What the connectors of one worker share, for the worker's whole life:
/// the request schedulers of its endpoints and its OAuth token cache.
/// Owned by the worker's context and passed down; nothing of it is global.
#[derive(Default)]
pub struct Shared {
    pub schedulers: throttle::Schedulers,
    pub tokens: oauth::TokenCache,
}

/// A failure inside a connector, already classified. Its message may quote
/// a server: the constructors escape control characters in it
/// ([`mailwave_common::text::escape_controls`]), so it is safe to print,
/// log and store.
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
            message: escaped(message.into()),
            retry_after: None,
        }
    }

    /// An error of `class`, with the server's hint of when to retry.
    pub fn classified(
        class: ErrorClass,
        message: impl Into<String>,
        retry_after: Option<Duration>,
    ) -> Self {
        ConnectorError {
            retry_after,
            ..ConnectorError::new(class, message)
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
        self.message = format!("{}: {}", escaped(context.to_string()), self.message);
        self
    }
}

fn escaped(text: String) -> String {
    match mailwave_common::text::escape_controls(&text) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(escaped) => escaped,
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

/// Folder roles, which land in the target's folder of the same role
/// whatever either side calls it: the inbox, those of RFC 6154 SPECIAL-USE,
/// and the other well-known folders of Exchange (`wellKnownName`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecialUse {
    Inbox,
    Sent,
    Drafts,
    Trash,
    Junk,
    Archive,
    Outbox,
    Calendar,
    Contacts,
    Tasks,
    Notes,
    Journal,
    ConversationHistory,
    SyncIssues,
    Conflicts,
    LocalFailures,
    ServerFailures,
    Clutter,
    Scheduled,
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

    /// The SPECIAL-USE LIST attribute of this role, if it has one.
    pub fn attribute(self) -> Option<&'static str> {
        Some(match self {
            SpecialUse::Sent => "\\Sent",
            SpecialUse::Drafts => "\\Drafts",
            SpecialUse::Trash => "\\Trash",
            SpecialUse::Junk => "\\Junk",
            SpecialUse::Archive => "\\Archive",
            _ => return None,
        })
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
    /// Whether the mailbox's owner subscribed to it (IMAP LSUB / LIST
    /// `\Subscribed`, Dovecot's `subscriptions` file); the copy is
    /// subscribed too.
    pub subscribed: bool,
}

/// A source item as listed, before its body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemMeta {
    /// The item's key in its folder (IMAP: UID in decimal; Maildir: unique name).
    pub item: String,
    /// The IMAP UID, for sources with UIDs.
    pub uid: Option<u32>,
    /// The size in bytes; `None` when the source cannot tell before the
    /// body is read (Graph's mail API): the engine then assumes a size for
    /// batching and the memory budget, and checks the real one once fetched.
    pub size: Option<u64>,
    pub flags: Flags,
    /// The received date, in the zone the source gave it in.
    pub internal_date: Option<DateTime<FixedOffset>>,
    /// What identifies any copy of the item, where the source knows it
    /// and its bytes do not tell (Graph's export stream: a server key, see
    /// [`Identity::keyed`]); `None`: the identity of its message.
    pub identity: Option<Identity>,
    /// The item's version, where the source versions items (Graph: its
    /// `changeKey`): a copied item listed with another version changed
    /// since its copy was made, and the copy is updated
    /// ([`MailTarget::update`]). Sources without versions (IMAP, Maildir)
    /// give `None`; their changes are flag changes.
    pub version: Option<String>,
}

/// What a source is told of a folder's checkpoint: its own side of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourcePosition<'a> {
    /// The validity the ledger's entries belong to.
    pub validity: u32,
    /// Every item with a UID up to this one is copied or recorded.
    pub high_water_mark: u32,
    /// What the source's last complete scan left for the next one.
    pub cursor: Option<&'a SourceCursor>,
}

impl SourcePosition<'_> {
    pub fn of(checkpoint: &FolderCheckpoint) -> SourcePosition<'_> {
        SourcePosition {
            validity: checkpoint.validity,
            high_water_mark: checkpoint.high_water_mark,
            cursor: checkpoint.source_cursor.as_ref(),
        }
    }
}

/// What a source folder holds that the last checkpoint does not cover.
#[derive(Debug, Clone, Default)]
pub struct FolderScan {
    /// UIDVALIDITY, or the connector's equivalent.
    pub validity: u32,
    /// Where the next scan resumes (IMAP: HIGHESTMODSEQ; Graph: the delta
    /// link), for the folder checkpoint once everything listed here is
    /// copied or recorded. The same cursor as the checkpoint's (and the
    /// same validity, no candidates, no flag changes): nothing changed.
    pub cursor: Option<SourceCursor>,
    /// Items that may need copying, in UID order.
    pub candidates: Vec<ItemMeta>,
    /// `true`: `candidates` is the whole folder and those already in the
    /// ledger must be left out by the caller (Maildir; IMAP after a
    /// UIDVALIDITY change). `false`: only items above the high-water mark.
    pub complete: bool,
    pub flags: FlagScan,
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

/// What a source gave for the items it was asked for. Every item asked for
/// is in exactly one of the three lists: an item in none of them is a
/// broken promise of the connector, which the engine treats as an error,
/// never as a silent drop.
#[derive(Debug, Default)]
pub struct Fetched {
    pub messages: Vec<Message>,
    /// Items the source confirmed are no longer there (IMAP: `UID SEARCH
    /// UID n` finds nothing; Graph: `ErrorItemNotFound`; Maildir: no file).
    pub gone: Vec<String>,
    /// Items the source would not give, each with why (class
    /// [`ErrorClass::Item`]: recorded as failures, the rest goes on).
    pub refused: Vec<(String, ConnectorError)>,
}

/// Reads a mailbox.
#[async_trait]
pub trait MailSource: Send {
    /// Every folder that holds messages.
    async fn folders(&mut self) -> Result<Vec<SourceFolder>, ConnectorError>;

    /// What needs doing in `folder` since its checkpoint's `position`.
    async fn scan(
        &mut self,
        folder: &SourceFolder,
        position: Option<SourcePosition<'_>>,
    ) -> Result<FolderScan, ConnectorError>;

    /// The messages of these items, in the same order, and what became of
    /// those it could not give (see [`Fetched`]).
    async fn fetch(
        &mut self,
        folder: &SourceFolder,
        items: &[ItemMeta],
    ) -> Result<Fetched, ConnectorError>;

    /// Bytes a [`MailSource::fetch`] of items of these sizes holds besides
    /// their bodies while it runs (Graph: the export answer's base64), at
    /// most: paid for from the memory budget with the bodies.
    fn fetch_transit(&self, _sizes: &[u64]) -> u64 {
        0
    }

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

/// Which keywords a target folder stores; system flags it always does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KeywordPolicy {
    /// Any keyword (IMAP: `\*` in PERMANENTFLAGS, or no PERMANENTFLAGS).
    #[default]
    Any,
    /// Only these (IMAP: PERMANENTFLAGS without `\*`, as Exchange
    /// Online's), compared without regard to case.
    Only(BTreeSet<String>),
}

impl KeywordPolicy {
    /// The policy an IMAP folder's PERMANENTFLAGS announce (RFC 3501:
    /// without them, every flag is stored).
    pub fn from_permanent_flags(permanent: Option<&[String]>) -> KeywordPolicy {
        let Some(permanent) = permanent else {
            return KeywordPolicy::Any;
        };
        if permanent.iter().any(|flag| flag == "\\*") {
            return KeywordPolicy::Any;
        }
        KeywordPolicy::Only(
            permanent
                .iter()
                .filter(|flag| !flag.starts_with('\\'))
                .map(|flag| flag.to_ascii_lowercase())
                .collect(),
        )
    }

    /// `flags` as the folder keeps them, and the keywords it would not.
    pub fn split(&self, flags: &Flags) -> (Flags, Vec<String>) {
        let KeywordPolicy::Only(kept) = self else {
            return (flags.clone(), Vec::new());
        };
        let (stored, refused): (Vec<&str>, Vec<&str>) = flags
            .iter()
            .partition(|flag| flag.starts_with('\\') || kept.contains(&flag.to_ascii_lowercase()));
        (
            Flags::from_iter(stored),
            refused.into_iter().map(str::to_owned).collect(),
        )
    }
}

/// A message to append to the target.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub body: Bytes,
    pub flags: Flags,
    pub internal_date: Option<DateTime<FixedOffset>>,
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
    /// The version of each copy, by its id, where the target versions its
    /// copies (Graph: the import's `changeKey`).
    pub versions: HashMap<String, String>,
    /// The target's mark after this append, when known without asking.
    pub mark_after: Option<TargetMark>,
}

/// A copy to be replaced with its source item's new version.
#[derive(Debug, Clone)]
pub struct Replacement {
    /// The copy's id in the target.
    pub target_id: String,
    /// The copy's version as the target last gave it; `None`: not known
    /// (a copy found again after an interruption), the target reads it.
    pub version: Option<String>,
    pub body: Bytes,
}

/// Where a target folder stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPosition {
    /// Messages appended from now on lie at or past it (IMAP: UIDNEXT), in
    /// the target connector's own form.
    pub mark: TargetMark,
    /// The validity of the folder's ids (IMAP: UIDVALIDITY); `None` where
    /// ids never go stale (Maildir names, Graph ids).
    pub validity: Option<u32>,
}

/// A message already in the target, as seen when looking for in-doubt copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetItem {
    pub id: String,
    /// Computed from what the target gives back, which need not be the
    /// bytes it was given.
    pub identity: Identity,
}

/// What a message is, whatever a server did to its bytes on the way: a
/// server that adds a trace header, re-folds headers, re-encodes parts or
/// changes MIME boundaries (Exchange Online re-renders everything it
/// stores) keeps it. Two parts, so that a target can tell by the cheap one
/// (headers only) which messages are worth reading whole.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// blake3 of Message-ID, Date (as an instant), From's address and the
    /// decoded Subject; of the raw header block when none of them parses.
    pub header_key: String,
    /// blake3 of the decoded contents of every leaf part, in order (text
    /// with line ends and trailing white space normalised).
    pub body_digest: String,
}

impl Identity {
    /// The identity of a whole message.
    pub fn of(message: &[u8]) -> Identity {
        let parsed = mail_parser::MessageParser::default().parse(message);
        Identity {
            header_key: match &parsed {
                Some(parsed) => key_of_fields(parsed).unwrap_or_else(|| raw_header_key(message)),
                None => raw_header_key(message),
            },
            body_digest: match &parsed {
                Some(parsed) => digest_of_parts(parsed),
                None => blake3::hash(message).to_hex().to_string(),
            },
        }
    }

    /// The identity a server gives an item and every copy of it (a
    /// property such as Exchange's search key): `kind` names the property,
    /// `value` is its value as the server renders it. Both parts are the
    /// key's digest: the key alone tells copies apart.
    pub fn keyed(kind: &str, value: &str) -> Identity {
        let mut hasher = blake3::Hasher::new();
        for part in [kind, value] {
            hasher.update(&(part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        let digest = hasher.finalize().to_hex().to_string();
        Identity {
            header_key: digest.clone(),
            body_digest: digest,
        }
    }

    /// The stored form, `header_key:body_digest`.
    pub fn encode(&self) -> String {
        format!("{}:{}", self.header_key, self.body_digest)
    }

    /// Parses [`Identity::encode`]'s form; `None` for entries written before
    /// identities were recorded.
    pub fn decode(text: &str) -> Option<Identity> {
        let (header_key, body_digest) = text.split_once(':')?;
        Some(Identity {
            header_key: header_key.to_owned(),
            body_digest: body_digest.to_owned(),
        })
    }
}

/// [`Identity::header_key`] of a message or of its header block alone.
pub fn header_key(message_or_header: &[u8]) -> String {
    match mail_parser::MessageParser::default().parse_headers(message_or_header) {
        Some(parsed) => key_of_fields(&parsed).unwrap_or_else(|| raw_header_key(message_or_header)),
        None => raw_header_key(message_or_header),
    }
}

fn key_of_fields(message: &mail_parser::Message<'_>) -> Option<String> {
    let message_id = message.message_id();
    let date = message.date().map(|d| d.to_timestamp());
    let from = message
        .from()
        .and_then(|f| f.first())
        .and_then(|a| a.address())
        .map(str::to_ascii_lowercase);
    let subject = message
        .subject()
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "));
    if message_id.is_none() && date.is_none() && from.is_none() && subject.is_none() {
        return None;
    }
    let mut hasher = blake3::Hasher::new();
    for field in [
        message_id.map(str::to_owned),
        date.map(|d| d.to_string()),
        from,
        subject,
    ] {
        let field = field.unwrap_or_default();
        hasher.update(&(field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    Some(hasher.finalize().to_hex().to_string())
}

fn raw_header_key(message: &[u8]) -> String {
    blake3::hash(header_block(message)).to_hex().to_string()
}

fn digest_of_parts(message: &mail_parser::Message<'_>) -> String {
    use mail_parser::PartType;
    let mut hasher = blake3::Hasher::new();
    for part in &message.parts {
        let contents: std::borrow::Cow<'_, [u8]> = match &part.body {
            PartType::Text(text) | PartType::Html(text) => normalised_text(text).into(),
            PartType::Binary(bytes) | PartType::InlineBinary(bytes) => bytes.as_ref().into(),
            // A nested message is a leaf of its own, hashed by its contents.
            PartType::Message(nested) => digest_of_parts(nested).into_bytes().into(),
            PartType::Multipart(_) => continue,
        };
        hasher.update(&(contents.len() as u64).to_be_bytes());
        hasher.update(&contents);
    }
    hasher.finalize().to_hex().to_string()
}

/// Text with CRLF as LF, white space at line ends and blank lines at the
/// end removed: what re-encoding (quoted-printable, base64, 7bit) keeps.
fn normalised_text(text: &str) -> Vec<u8> {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.truncate(out.trim_end().len());
    out.into_bytes()
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

    /// The folder's mark now (IMAP: UIDNEXT): messages appended from now
    /// on lie at or past it; and its validity, where ids can go stale.
    async fn mark(&mut self, folder: &str) -> Result<TargetPosition, ConnectorError>;

    /// Messages at or past `mark` (every message: `None`) whose
    /// [`Identity::header_key`] is one of `wanted` (the target reads only
    /// those whole); empty for targets whose appends are idempotent by
    /// themselves.
    async fn items_since(
        &mut self,
        folder: &str,
        mark: Option<&TargetMark>,
        wanted: &HashSet<String>,
    ) -> Result<Vec<TargetItem>, ConnectorError>;

    /// Bytes a [`MailTarget::append`] of bodies of these sizes holds besides
    /// them while it runs (Graph: the imports' base64), at most: paid for
    /// from the memory budget with the bodies.
    fn append_transit(&self, _sizes: &[u64]) -> u64 {
        0
    }

    /// Appends the messages in order.
    async fn append(
        &mut self,
        folder: &str,
        messages: &[Outgoing],
    ) -> Result<AppendReport, ConnectorError>;

    /// Replaces copies with their source items' new versions, in order:
    /// per copy, its new version, or why that one was refused (a copy
    /// changed or gone on the target). Asked only of changed items of a
    /// source that versions them (see [`ItemMeta::version`]), which only
    /// the Graph import target pairs with.
    async fn update(
        &mut self,
        _folder: &str,
        _replacements: &[Replacement],
    ) -> Result<Vec<Result<String, ConnectorError>>, ConnectorError> {
        Err(ConnectorError::item(
            "this target keeps no versions of its copies: they cannot be updated",
        ))
    }

    /// Subscribes the owner to `folder` (idempotent). Targets without
    /// subscriptions (Exchange through Graph) have nothing to do.
    async fn subscribe(&mut self, folder: &str) -> Result<(), ConnectorError>;

    /// Which keywords `folder` stores; the engine leaves the others off the
    /// copies and counts them. Targets that store any need not say.
    async fn keyword_policy(&mut self, _folder: &str) -> Result<KeywordPolicy, ConnectorError> {
        Ok(KeywordPolicy::Any)
    }

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
    fn a_folder_without_new_keywords_keeps_system_flags_and_the_keywords_it_lists() {
        let permanent = |flags: &[&str]| flags.iter().map(|f| (*f).to_owned()).collect::<Vec<_>>();
        let flags = Flags::from_iter(["\\Seen", "$Label1", "Work", "\\Flagged"]);
        let exchange =
            KeywordPolicy::from_permanent_flags(Some(&permanent(&["\\Seen", "\\Flagged"])));
        assert_eq!(
            exchange.split(&flags),
            (
                Flags::from_iter(["\\Seen", "\\Flagged"]),
                vec!["$Label1".to_owned(), "Work".to_owned()]
            )
        );
        let listed = KeywordPolicy::from_permanent_flags(Some(&permanent(&["\\Seen", "work"])));
        assert_eq!(
            listed.split(&flags),
            (
                Flags::from_iter(["\\Seen", "\\Flagged", "Work"]),
                vec!["$Label1".to_owned()]
            )
        );
        for any in [
            KeywordPolicy::from_permanent_flags(Some(&permanent(&["\\Seen", "\\*"]))),
            KeywordPolicy::from_permanent_flags(None),
        ] {
            assert_eq!(any, KeywordPolicy::Any);
            assert_eq!(any.split(&flags), (flags.clone(), Vec::new()));
        }
    }

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

    const PLAIN: &[u8] = b"Message-ID: <a@x>\r\nDate: Thu, 3 Dec 2026 10:00:00 +0100\r\n\
        From: Alice <alice@example.org>\r\nSubject: Hello\r\n  again\r\n\
        Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
        Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln   \r\nzweite Zeile\r\n";

    #[test]
    fn identity_survives_trace_headers_refolding_and_reencoding() {
        let original = Identity::of(PLAIN);
        let traced = [
            b"Received: from mx by store; Thu, 3 Dec 2026 10:00:01 +0000\r\n".as_slice(),
            PLAIN,
        ]
        .concat();
        assert_eq!(Identity::of(&traced), original, "a trace header");
        // Re-rendered as Exchange does: other header order and case, the
        // subject unfolded, the date in UTC, the body quoted-printable.
        let rerendered = b"subject: Hello again\r\nfrom: \"Alice\" <ALICE@example.org>\r\n\
            date: Thu, 03 Dec 2026 09:00:00 +0000\r\nmessage-id: <a@x>\r\n\
            Content-Type: text/plain; charset=\"utf-8\"\r\n\
            Content-Transfer-Encoding: quoted-printable\r\n\r\n\
            Gr=C3=BC=C3=9Fe aus K=C3=B6ln\r\nzweite Zeile\r\n\r\n";
        assert_eq!(Identity::of(rerendered), original, "re-rendered");
        assert_eq!(header_key(header_block(&traced)), original.header_key);
        assert_eq!(Identity::decode(&original.encode()), Some(original));
    }

    #[test]
    fn identity_tells_different_messages_apart() {
        let original = Identity::of(PLAIN);
        let other_body = [&PLAIN[..PLAIN.len() - 8], b"Zeile!\r\n"].concat();
        let other = Identity::of(&other_body);
        assert_eq!(other.header_key, original.header_key);
        assert_ne!(other.body_digest, original.body_digest, "another body");
        let other_id = String::from_utf8_lossy(PLAIN).replace("<a@x>", "<b@x>");
        assert_ne!(
            Identity::of(other_id.as_bytes()).header_key,
            original.header_key
        );
        // No fields at all: the raw header block is the key.
        assert_ne!(
            Identity::of(b"X-A: 1\r\n\r\nbody").header_key,
            Identity::of(b"X-A: 2\r\n\r\nbody").header_key
        );
        assert_eq!(Identity::decode("no separator"), None);
    }
}
