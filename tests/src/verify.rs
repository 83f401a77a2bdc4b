//! Exactness checker, independent from mailwave's IMAP code (it uses this
//! crate's raw client in [`crate::imap`]).
//!
//! Reads every selectable folder of a source and a target account, hashes
//! each message's `BODY.PEEK[]` (blake3) and records FLAGS (without
//! `\Recent`) and INTERNALDATE, then compares folder by folder as multisets
//! under a caller-supplied folder mapping.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use chrono::{DateTime, FixedOffset, Utc};

use crate::graph_emulator::{self, FlagStatus, MailboxSnapshot};
use crate::imap::Endpoint;

/// A source folder as seen in LIST, given to the folder mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFolderInfo {
    /// Name as on the wire (modified UTF-7); for Maildir the relative path.
    pub raw_name: String,
    /// Decoded UTF-8 name.
    pub name: String,
    pub separator: Option<char>,
    /// All LIST attributes (`\HasChildren`, `\Sent`, ...).
    pub attributes: Vec<String>,
    /// The RFC 6154 special-use attribute, if any (e.g. `\Sent`).
    pub special_use: Option<String>,
}

impl SourceFolderInfo {
    /// Name components split at the separator.
    pub fn components(&self) -> Vec<&str> {
        match self.separator {
            Some(sep) => self.name.split(sep).collect(),
            None => vec![self.name.as_str()],
        }
    }
}

/// Mapping that keeps folder names unchanged.
pub fn same_name(info: &SourceFolderInfo) -> String {
    info.name.clone()
}

/// Mapping that rewrites the hierarchy separator (components unchanged).
pub fn with_separator(target_sep: char) -> impl Fn(&SourceFolderInfo) -> String {
    move |info| info.components().join(&target_sep.to_string())
}

/// One message as read from a server or a Maildir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageInfo {
    pub folder: String,
    /// UID (0 for Maildir files).
    pub uid: u32,
    /// `uid 17` or the Maildir file path.
    pub locator: String,
    pub size: usize,
    pub hash: [u8; 32],
    /// Normalized flags (no `\Recent`, canonical system-flag case).
    pub flags: BTreeSet<String>,
    pub internal_date: Option<DateTime<FixedOffset>>,
    pub internal_date_raw: String,
    /// Subject header (raw, truncated), for readable diffs.
    pub subject: String,
}

impl MessageInfo {
    /// First 12 hex digits of the body hash.
    pub fn short_hash(&self) -> String {
        self.hash[..6].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for MessageInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} {} size={} hash={} flags=({}) date={:?} subject={:?}",
            self.folder,
            self.locator,
            self.size,
            self.short_hash(),
            self.flags.iter().cloned().collect::<Vec<_>>().join(" "),
            self.internal_date_raw,
            self.subject
        )
    }
}

/// One folder and its messages.
#[derive(Clone, Debug)]
pub struct FolderSnapshot {
    pub info: SourceFolderInfo,
    pub uidvalidity: Option<u32>,
    pub messages: Vec<MessageInfo>,
}

/// Everything read from one account.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub folders: Vec<FolderSnapshot>,
}

impl Snapshot {
    pub fn message_count(&self) -> usize {
        self.folders.iter().map(|f| f.messages.len()).sum()
    }

    pub fn folder(&self, name: &str) -> Option<&FolderSnapshot> {
        self.folders.iter().find(|f| f.info.name == name)
    }

    pub fn folder_names(&self) -> Vec<String> {
        self.folders.iter().map(|f| f.info.name.clone()).collect()
    }
}

/// What to compare.
#[derive(Clone, Debug)]
pub struct CompareOptions {
    pub check_flags: bool,
    pub check_dates: bool,
    /// Flags left out on both sides (case-insensitive), e.g. `$MDNSent`.
    pub ignore_flags: Vec<String>,
    /// Hash bodies with CRLF turned into LF (for Maildir targets written
    /// with LF line endings).
    pub normalize_line_endings: bool,
    /// Folders (decoded names) not read at all: for folders a server lists
    /// but cannot open, which a test expects mailwave to skip and record.
    pub skip_folders: Vec<String>,
}

impl Default for CompareOptions {
    fn default() -> Self {
        Self {
            check_flags: true,
            check_dates: true,
            ignore_flags: Vec::new(),
            normalize_line_endings: false,
            skip_folders: Vec::new(),
        }
    }
}

fn canonical_flag(f: &str) -> String {
    const SYSTEM: [&str; 6] = [
        "\\Seen",
        "\\Answered",
        "\\Flagged",
        "\\Deleted",
        "\\Draft",
        "\\Recent",
    ];
    SYSTEM
        .iter()
        .find(|s| s.eq_ignore_ascii_case(f))
        .map_or_else(|| f.to_owned(), |s| (*s).to_owned())
}

fn normalize_flags<'a>(
    flags: impl IntoIterator<Item = &'a String>,
    opts: &CompareOptions,
) -> BTreeSet<String> {
    flags
        .into_iter()
        .map(|f| canonical_flag(f))
        .filter(|f| f != "\\Recent" && !opts.ignore_flags.iter().any(|i| i.eq_ignore_ascii_case(f)))
        .collect()
}

fn hash_body(body: &[u8], opts: &CompareOptions) -> [u8; 32] {
    if !opts.normalize_line_endings {
        return *blake3::hash(body).as_bytes();
    }
    let mut h = blake3::Hasher::new();
    let mut rest = body;
    while let Some(pos) = rest.windows(2).position(|w| w == b"\r\n") {
        h.update(&rest[..pos]);
        h.update(b"\n");
        rest = &rest[pos + 2..];
    }
    h.update(rest);
    *h.finalize().as_bytes()
}

fn subject_of(body: &[u8]) -> String {
    let head = &body[..body.len().min(16 * 1024)];
    let text = String::from_utf8_lossy(head);
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            break;
        }
        if line.len() > 8 && line.as_bytes()[..8].eq_ignore_ascii_case(b"subject:") {
            return line[8..].trim().chars().take(60).collect();
        }
    }
    String::new()
}

/// Reads every selectable folder of an IMAP account (bodies hashed on the
/// fly; nothing big is kept in memory).
pub async fn snapshot(endpoint: &Endpoint, opts: &CompareOptions) -> Result<Snapshot> {
    let mut client = endpoint.connect().await?;
    let entries = client.list().await?;
    let mut folders = Vec::new();
    let wanted =
        |e: &crate::imap::ListEntry| e.selectable() && !opts.skip_folders.contains(&e.name);
    for entry in entries.into_iter().filter(wanted) {
        let st = client
            .select_raw("EXAMINE", &entry.raw_name)
            .await
            .with_context(|| format!("EXAMINE {:?} on {}", entry.name, endpoint.describe()))?;
        let mut messages = Vec::new();
        if st.messages.unwrap_or(0) > 0 {
            let folder = entry.name.clone();
            client
                .uid_fetch("1:*", true, |m| {
                    messages.push(MessageInfo {
                        folder: folder.clone(),
                        uid: m.uid,
                        locator: format!("uid {}", m.uid),
                        size: m.body.len(),
                        hash: hash_body(&m.body, opts),
                        flags: normalize_flags(&m.flags, opts),
                        internal_date: m.internal_date,
                        internal_date_raw: m.internal_date_raw,
                        subject: subject_of(&m.body),
                    });
                    Ok(())
                })
                .await
                .with_context(|| format!("fetching {:?} on {}", entry.name, endpoint.describe()))?;
        }
        messages.sort_by_key(|m| m.uid);
        let special_use = entry.special_use();
        folders.push(FolderSnapshot {
            info: SourceFolderInfo {
                raw_name: entry.raw_name,
                name: entry.name,
                separator: entry.separator,
                attributes: entry.attributes,
                special_use,
            },
            uidvalidity: st.uidvalidity,
            messages,
        });
    }
    client.logout().await;
    Ok(folders_sorted(folders))
}

fn folders_sorted(mut folders: Vec<FolderSnapshot>) -> Snapshot {
    folders.sort_by(|a, b| a.info.name.cmp(&b.info.name));
    Snapshot { folders }
}

/// Maildir flag letters to IMAP flags (`dovecot-keywords` for a–z).
fn maildir_flags(info: &str, keywords: &BTreeMap<usize, String>) -> Vec<String> {
    info.chars()
        .filter_map(|c| {
            Some(match c {
                'D' => "\\Draft".to_owned(),
                'F' => "\\Flagged".to_owned(),
                'R' => "\\Answered".to_owned(),
                'S' => "\\Seen".to_owned(),
                'T' => "\\Deleted".to_owned(),
                'a'..='z' => keywords
                    .get(&((c as u8 - b'a') as usize))
                    .cloned()
                    .unwrap_or_else(|| format!("maildir-keyword-{c}")),
                _ => return None,
            })
        })
        .collect()
}

/// Reads a Maildir tree: every directory below `root` (inclusive) that has
/// a `cur` subdirectory is a folder, named by `map_path(relative dir)`.
/// Flags come from the `:2,` suffix, dates from the file mtime.
pub fn snapshot_maildir(
    root: &Path,
    map_path: impl Fn(&Path) -> String,
    opts: &CompareOptions,
) -> Result<Snapshot> {
    let mut folders = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut children = Vec::new();
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                let name = entry.file_name();
                if !matches!(name.to_str(), Some("cur" | "new" | "tmp")) {
                    children.push(entry.path());
                }
            }
        }
        stack.extend(children);
        if !dir.join("cur").is_dir() {
            continue;
        }
        let rel = dir.strip_prefix(root).unwrap_or(&dir).to_path_buf();
        let folder = map_path(&rel);
        let keywords: BTreeMap<usize, String> =
            std::fs::read_to_string(dir.join("dovecot-keywords"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    let (n, k) = l.split_once(' ')?;
                    Some((n.parse().ok()?, k.to_owned()))
                })
                .collect();
        let mut messages = Vec::new();
        for sub in ["cur", "new"] {
            // A clean git checkout has no empty `new/` or `tmp/`: a missing
            // sub-directory holds no messages, as for the connector.
            let entries = match std::fs::read_dir(dir.join(sub)) {
                Ok(entries) => entries,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error.into()),
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            for path in files {
                let body = std::fs::read(&path)?;
                let name = path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                let info = name.split_once(":2,").map_or("", |(_, i)| i);
                let flags = maildir_flags(info, &keywords);
                let mtime: DateTime<Utc> = std::fs::metadata(&path)?
                    .modified()
                    .unwrap_or(SystemTime::UNIX_EPOCH)
                    .into();
                let date = mtime.fixed_offset();
                messages.push(MessageInfo {
                    folder: folder.clone(),
                    uid: 0,
                    locator: path.display().to_string(),
                    size: body.len(),
                    hash: hash_body(&body, opts),
                    flags: normalize_flags(&flags, opts),
                    internal_date: Some(date),
                    internal_date_raw: date.to_rfc3339(),
                    subject: subject_of(&body),
                });
            }
        }
        let raw = rel.display().to_string();
        folders.push(FolderSnapshot {
            info: SourceFolderInfo {
                raw_name: raw,
                name: folder,
                separator: None,
                attributes: Vec::new(),
                special_use: None,
            },
            uidvalidity: None,
            messages,
        });
    }
    Ok(folders_sorted(folders))
}

/// Exchange's system folders (`wellKnownName`), which a migration leaves
/// out by default.
pub const SYSTEM_FOLDERS: [&str; 6] = [
    "outbox",
    "syncissues",
    "conflicts",
    "localfailures",
    "serverfailures",
    "conversationhistory",
];

/// Whether a folder of an Exchange mailbox holds the user's items: neither
/// a search folder nor one of [`SYSTEM_FOLDERS`].
pub fn is_users_folder(folder: &graph_emulator::FolderSnapshot) -> bool {
    !folder.search
        && folder
            .well_known
            .as_deref()
            .is_none_or(|name| !SYSTEM_FOLDERS.contains(&name))
}

/// The mail of a Graph emulator mailbox as a target outside Exchange should
/// hold it: every mail folder of the user's (`IPF.Note`, see
/// [`is_users_folder`]; the inbox as `INBOX` whatever its display name,
/// other folders by their display names joined with `/`) with its messages' MIME,
/// `\Seen` for read ones, `\Flagged` for flagged ones and the received date
/// as internal date. Calendars, contacts and tasks have no MIME and are
/// left out.
pub fn snapshot_graph_mail(mailbox: &MailboxSnapshot, opts: &CompareOptions) -> Snapshot {
    let inbox = mailbox
        .folders
        .iter()
        .find(|folder| folder.well_known.as_deref() == Some("inbox"))
        .map(|folder| folder.path.clone());
    let folders = mailbox
        .folders
        .iter()
        .filter(|folder| folder.class.starts_with("IPF.Note") && is_users_folder(folder))
        .map(|folder| {
            let mut levels = folder.path.clone();
            if let Some(inbox) = &inbox
                && levels.starts_with(inbox)
            {
                levels.splice(..inbox.len(), ["INBOX".to_owned()]);
            }
            let name = levels.join("/");
            let messages = folder
                .items
                .iter()
                .filter_map(|item| {
                    let mime = item.mime.as_ref()?;
                    let flags: Vec<String> = [
                        (item.is_read, "\\Seen"),
                        (item.flag_status == FlagStatus::Flagged, "\\Flagged"),
                    ]
                    .into_iter()
                    .filter(|&(set, _)| set)
                    .map(|(_, flag)| flag.to_owned())
                    .collect();
                    let date = item.received.fixed_offset();
                    Some(MessageInfo {
                        folder: name.clone(),
                        uid: 0,
                        locator: mailbox.user_principal_name.clone(),
                        size: mime.len(),
                        hash: hash_body(mime, opts),
                        flags: normalize_flags(&flags, opts),
                        internal_date: Some(date),
                        internal_date_raw: date.to_rfc3339(),
                        subject: subject_of(mime),
                    })
                })
                .collect();
            FolderSnapshot {
                info: SourceFolderInfo {
                    raw_name: name.clone(),
                    name,
                    separator: Some('/'),
                    attributes: Vec::new(),
                    special_use: None,
                },
                uidvalidity: None,
                messages,
            }
        })
        .collect();
    folders_sorted(folders)
}

/// A Maildir++ directory (relative to the root) as a folder path for
/// [`snapshot_maildir`], read as Dovecot reads its default layout: the root
/// is `INBOX`, levels split on `.` and joined by `/`, each level modified
/// UTF-7 (taken as it is when it does not decode) with the listescape
/// plugin's `\XX` escapes undone.
pub fn maildir_folder(relative: &Path) -> String {
    let name = relative.to_string_lossy();
    let Some(levels) = name.strip_prefix('.') else {
        return "INBOX".to_owned();
    };
    levels
        .split('.')
        .map(|level| {
            let unicode = crate::mutf7::decode(level).unwrap_or_else(|_| level.to_owned());
            listescape_decode(&unicode)
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Undoes Dovecot's listescape `\XX` escapes (ASCII only).
fn listescape_decode(level: &str) -> String {
    let mut out = String::with_capacity(level.len());
    let mut chars = level.char_indices();
    while let Some((at, c)) = chars.next() {
        let escaped = (c == '\\')
            .then(|| level.get(at + 1..at + 3))
            .flatten()
            .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(u8::is_ascii);
        match escaped {
            Some(byte) => {
                out.push(char::from(byte));
                chars.nth(1);
            }
            None => out.push(c),
        }
    }
    out
}

/// A source message absent from its target folder.
#[derive(Clone, Debug)]
pub struct Missing {
    pub target_folder: String,
    pub message: MessageInfo,
}

/// A source message and its target copy that differ in flags or date.
#[derive(Clone, Debug)]
pub struct Mismatch {
    pub target_folder: String,
    pub source: MessageInfo,
    pub target: MessageInfo,
}

/// Outcome of a comparison.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub source_messages: usize,
    pub target_messages: usize,
    /// Target folders that should exist (a selectable source folder maps to
    /// them) but do not.
    pub missing_folders: Vec<String>,
    /// Source messages without a copy in the mapped target folder.
    pub missing: Vec<Missing>,
    /// Extra target copies of a message (more copies than in the source).
    pub duplicates: Vec<MessageInfo>,
    /// Target messages whose content is not in the mapped source folders.
    pub unexpected: Vec<MessageInfo>,
    pub flag_mismatches: Vec<Mismatch>,
    pub date_mismatches: Vec<Mismatch>,
}

impl Report {
    pub fn is_exact(&self) -> bool {
        self.missing_folders.is_empty()
            && self.missing.is_empty()
            && self.duplicates.is_empty()
            && self.unexpected.is_empty()
            && self.flag_mismatches.is_empty()
            && self.date_mismatches.is_empty()
    }

    /// Panics with a readable diff unless the target is an exact copy.
    #[track_caller]
    pub fn assert_exact(&self) {
        assert!(self.is_exact(), "migration not exact:\n{self}");
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "source messages: {}, target messages: {}{}",
            self.source_messages,
            self.target_messages,
            if self.is_exact() { " — exact" } else { "" }
        )?;
        // Where do the hashes of stray target messages live (hints)?
        let mut stray: BTreeMap<[u8; 32], Vec<&str>> = BTreeMap::new();
        for m in self.unexpected.iter().chain(&self.duplicates) {
            stray.entry(m.hash).or_default().push(&m.folder);
        }
        const MAX: usize = 50;
        if !self.missing_folders.is_empty() {
            writeln!(
                f,
                "missing target folders ({}):",
                self.missing_folders.len()
            )?;
            for name in &self.missing_folders {
                writeln!(f, "  {name:?}")?;
            }
        }
        if !self.missing.is_empty() {
            writeln!(f, "missing ({}):", self.missing.len())?;
            for m in self.missing.iter().take(MAX) {
                write!(
                    f,
                    "  source {} -> expected in {:?}",
                    m.message, m.target_folder
                )?;
                if let Some(found) = stray.get(&m.message.hash) {
                    write!(f, " (same bytes found in target {found:?})")?;
                }
                writeln!(f)?;
            }
        }
        for (title, list) in [
            ("duplicates", &self.duplicates),
            ("unexpected", &self.unexpected),
        ] {
            if !list.is_empty() {
                writeln!(f, "{title} ({}):", list.len())?;
                for m in list.iter().take(MAX) {
                    writeln!(f, "  target {m}")?;
                }
            }
        }
        for (title, list, field) in [
            ("flag mismatches", &self.flag_mismatches, "flags"),
            ("date mismatches", &self.date_mismatches, "internal date"),
        ] {
            if !list.is_empty() {
                writeln!(f, "{title} ({}):", list.len())?;
                for m in list.iter().take(MAX) {
                    let (s, t) = if field == "flags" {
                        (
                            m.source.flags.iter().cloned().collect::<Vec<_>>().join(" "),
                            m.target.flags.iter().cloned().collect::<Vec<_>>().join(" "),
                        )
                    } else {
                        (
                            m.source.internal_date_raw.clone(),
                            m.target.internal_date_raw.clone(),
                        )
                    };
                    writeln!(
                        f,
                        "  {:?} {} -> {:?} {} size={} hash={} subject={:?}: {field} ({s}) != ({t})",
                        m.source.folder,
                        m.source.locator,
                        m.target_folder,
                        m.target.locator,
                        m.source.size,
                        m.source.short_hash(),
                        m.source.subject,
                    )?;
                }
            }
        }
        Ok(())
    }
}

fn same_date(a: &MessageInfo, b: &MessageInfo) -> bool {
    match (a.internal_date, b.internal_date) {
        (Some(x), Some(y)) => x.timestamp() == y.timestamp(),
        _ => a.internal_date_raw == b.internal_date_raw,
    }
}

/// Compares two snapshots under `map` (source folder -> target folder name).
pub fn compare_snapshots(
    source: &Snapshot,
    target: &Snapshot,
    map: impl Fn(&SourceFolderInfo) -> String,
    opts: &CompareOptions,
) -> Report {
    let mut report = Report {
        source_messages: source.message_count(),
        target_messages: target.message_count(),
        ..Report::default()
    };
    let mut expected: BTreeMap<String, Vec<&MessageInfo>> = BTreeMap::new();
    for folder in &source.folders {
        let t = map(&folder.info);
        expected
            .entry(t)
            .or_default()
            .extend(folder.messages.iter());
    }
    let targets: BTreeMap<&str, &FolderSnapshot> = target
        .folders
        .iter()
        .map(|f| (f.info.name.as_str(), f))
        .collect();
    let meta_equal = |a: &MessageInfo, b: &MessageInfo| {
        (!opts.check_flags || a.flags == b.flags) && (!opts.check_dates || same_date(a, b))
    };
    for (tname, srcs) in &expected {
        let tmsgs: Vec<&MessageInfo> = match targets.get(tname.as_str()) {
            Some(f) => f.messages.iter().collect(),
            None => {
                report.missing_folders.push(tname.clone());
                Vec::new()
            }
        };
        let mut by_hash: BTreeMap<[u8; 32], (Vec<&MessageInfo>, Vec<&MessageInfo>)> =
            BTreeMap::new();
        for m in srcs {
            by_hash.entry(m.hash).or_default().0.push(m);
        }
        for m in tmsgs {
            by_hash.entry(m.hash).or_default().1.push(m);
        }
        for (s_all, mut t) in by_hash.into_values() {
            let had_source = !s_all.is_empty();
            // Pair exact copies first, so duplicates with different
            // metadata are matched to the right counterpart.
            let mut s = Vec::new();
            for a in s_all {
                if let Some(pos) = t.iter().position(|b| meta_equal(a, b)) {
                    t.remove(pos);
                } else {
                    s.push(a);
                }
            }
            let pairs = s.len().min(t.len());
            for (a, b) in s.iter().zip(t.iter()) {
                if opts.check_flags && a.flags != b.flags {
                    report.flag_mismatches.push(Mismatch {
                        target_folder: tname.clone(),
                        source: (*a).clone(),
                        target: (*b).clone(),
                    });
                }
                if opts.check_dates && !same_date(a, b) {
                    report.date_mismatches.push(Mismatch {
                        target_folder: tname.clone(),
                        source: (*a).clone(),
                        target: (*b).clone(),
                    });
                }
            }
            for a in &s[pairs..] {
                report.missing.push(Missing {
                    target_folder: tname.clone(),
                    message: (*a).clone(),
                });
            }
            for b in &t[pairs..] {
                if had_source {
                    report.duplicates.push((*b).clone());
                } else {
                    report.unexpected.push((*b).clone());
                }
            }
        }
    }
    for folder in &target.folders {
        if !expected.contains_key(&folder.info.name) {
            report.unexpected.extend(folder.messages.iter().cloned());
        }
    }
    report
}

/// Reads both accounts and compares them with default options.
pub async fn compare(
    source: &Endpoint,
    target: &Endpoint,
    map: impl Fn(&SourceFolderInfo) -> String,
) -> Result<Report> {
    compare_with(source, target, map, &CompareOptions::default()).await
}

/// Reads both accounts and compares them.
pub async fn compare_with(
    source: &Endpoint,
    target: &Endpoint,
    map: impl Fn(&SourceFolderInfo) -> String,
    opts: &CompareOptions,
) -> Result<Report> {
    let s = snapshot(source, opts).await.context("reading the source")?;
    let t = snapshot(target, opts).await.context("reading the target")?;
    Ok(compare_snapshots(&s, &t, map, opts))
}

/// Compares an IMAP source with a Maildir tree written by mailwave.
/// `map_folder` names the expected target folder for each source folder;
/// `map_path` names each Maildir directory (relative to `root`) in the
/// same terms.
pub async fn compare_to_maildir(
    source: &Endpoint,
    root: &Path,
    map_folder: impl Fn(&SourceFolderInfo) -> String,
    map_path: impl Fn(&Path) -> String,
    opts: &CompareOptions,
) -> Result<Report> {
    let s = snapshot(source, opts).await.context("reading the source")?;
    let t = snapshot_maildir(root, map_path, opts).context("reading the Maildir")?;
    Ok(compare_snapshots(&s, &t, map_folder, opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(folder: &str, uid: u32, body: &[u8], flags: &[&str], ts: i64) -> MessageInfo {
        let d = DateTime::from_timestamp(ts, 0)
            .unwrap_or_default()
            .fixed_offset();
        MessageInfo {
            folder: folder.to_owned(),
            uid,
            locator: format!("uid {uid}"),
            size: body.len(),
            hash: *blake3::hash(body).as_bytes(),
            flags: flags.iter().map(|f| (*f).to_owned()).collect(),
            internal_date: Some(d),
            internal_date_raw: d.to_rfc3339(),
            subject: String::new(),
        }
    }

    fn snap(folders: Vec<(&str, Vec<MessageInfo>)>) -> Snapshot {
        Snapshot {
            folders: folders
                .into_iter()
                .map(|(n, messages)| FolderSnapshot {
                    info: SourceFolderInfo {
                        raw_name: n.to_owned(),
                        name: n.to_owned(),
                        separator: Some('.'),
                        attributes: Vec::new(),
                        special_use: None,
                    },
                    uidvalidity: Some(1),
                    messages,
                })
                .collect(),
        }
    }

    #[test]
    fn multiset_duplicates() {
        let opts = CompareOptions::default();
        let src = snap(vec![(
            "INBOX",
            vec![
                msg("INBOX", 1, b"a", &["\\Seen"], 10),
                msg("INBOX", 2, b"a", &[], 20),
                msg("INBOX", 3, b"b", &[], 30),
            ],
        )]);
        // Same multiset, different order: exact.
        let tgt = snap(vec![(
            "INBOX",
            vec![
                msg("INBOX", 7, b"b", &[], 30),
                msg("INBOX", 8, b"a", &[], 20),
                msg("INBOX", 9, b"a", &["\\Seen"], 10),
            ],
        )]);
        assert!(compare_snapshots(&src, &tgt, same_name, &opts).is_exact());
        // One copy of the duplicate missing.
        let tgt = snap(vec![(
            "INBOX",
            vec![
                msg("INBOX", 7, b"b", &[], 30),
                msg("INBOX", 8, b"a", &[], 20),
            ],
        )]);
        let r = compare_snapshots(&src, &tgt, same_name, &opts);
        assert_eq!(r.missing.len(), 1);
        assert_eq!(r.missing[0].message.uid, 1);
        assert!(r.flag_mismatches.is_empty());
        // Three copies: one duplicate; plus a stray folder.
        let tgt = snap(vec![
            (
                "INBOX",
                vec![
                    msg("INBOX", 7, b"b", &[], 30),
                    msg("INBOX", 8, b"a", &[], 20),
                    msg("INBOX", 9, b"a", &["\\Seen"], 10),
                    msg("INBOX", 10, b"a", &["\\Seen"], 10),
                ],
            ),
            ("Other", vec![msg("Other", 1, b"zzz", &[], 5)]),
        ]);
        let r = compare_snapshots(&src, &tgt, same_name, &opts);
        assert_eq!(r.duplicates.len(), 1);
        assert_eq!(r.unexpected.len(), 1);
        assert!(!r.is_exact());
        let text = r.to_string();
        assert!(text.contains("duplicates (1)"), "{text}");
    }

    #[test]
    fn mismatches_and_missing_folder() {
        let opts = CompareOptions::default();
        let src = snap(vec![
            ("INBOX", vec![msg("INBOX", 1, b"a", &["\\Seen"], 10)]),
            ("Empty", vec![]),
        ]);
        let tgt = snap(vec![(
            "INBOX",
            vec![msg("INBOX", 5, b"a", &["\\Flagged"], 11)],
        )]);
        let r = compare_snapshots(&src, &tgt, same_name, &opts);
        assert_eq!(r.flag_mismatches.len(), 1);
        assert_eq!(r.date_mismatches.len(), 1);
        assert_eq!(r.missing_folders, vec!["Empty".to_owned()]);
        let no_meta = CompareOptions {
            check_flags: false,
            check_dates: false,
            ..CompareOptions::default()
        };
        let tgt = snap(vec![
            ("INBOX", vec![msg("INBOX", 5, b"a", &["\\Flagged"], 11)]),
            ("Empty", vec![]),
        ]);
        assert!(compare_snapshots(&src, &tgt, same_name, &no_meta).is_exact());
    }

    #[test]
    fn line_ending_normalization() {
        let opts = CompareOptions {
            normalize_line_endings: true,
            ..CompareOptions::default()
        };
        assert_eq!(hash_body(b"a\r\nb\r\n", &opts), hash_body(b"a\nb\n", &opts));
        assert_ne!(
            hash_body(b"a\r\nb", &CompareOptions::default()),
            hash_body(b"a\nb", &CompareOptions::default())
        );
    }

    #[test]
    fn maildir_folders_read_as_dovecot_names() {
        for (dir, name) in [
            ("", "INBOX"),
            (".Priv&AOk-.&ZeVnLIqe- &2D3c5w-", "Privé/日本語 📧"),
            (".Clients.Acme &- Co", "Clients/Acme & Co"),
            (".100% done", "100% done"),
            (".a\\2fb", "a/b"),
            (".\\7eroot", "~root"),
            (".x\\zz", "x\\zz"),
        ] {
            assert_eq!(maildir_folder(Path::new(dir)), name, "{dir}");
        }
    }

    #[test]
    fn maildir_flag_parsing() {
        let kw: BTreeMap<usize, String> = [(0, "$Label1".to_owned())].into();
        assert_eq!(
            maildir_flags("RSTa", &kw),
            vec!["\\Answered", "\\Seen", "\\Deleted", "$Label1"]
        );
    }
}
