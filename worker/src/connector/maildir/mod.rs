//! The Maildir connector: a mailbox stored as a Maildir++ tree, read as a
//! [`MailSource`] or written as a [`MailTarget`].
//!
//! Layout (Dovecot's default): the inbox in `root/{cur,new,tmp}`, folder
//! `A/B` in `root/.A.B/{cur,new,tmp}`, each level spelled as Dovecot spells
//! it (modified UTF-7 by default, see [`names`]), so that it can neither
//! leave the root nor add a level. Messages are files named
//! `<unique>:2,<flags>`; keywords are letters `a`..`z` mapped by the
//! folder's `dovecot-keywords` file, so a folder holds at most 26 distinct
//! keywords: further ones are dropped with a warning. Subscriptions are
//! Dovecot's `subscriptions` file (see [`subscriptions`]).
//!
//! Appends are idempotent: a copy is named after the engine's `source_ref`,
//! and a message whose `source_ref` is already in the folder is not written
//! again. Filesystem work runs on the blocking pool, one task per call.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, DirBuilder, File, FileTimes, OpenOptions};
use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, FixedOffset, Utc};
use mailwave_common::model::TargetMark;

mod names;
mod subscriptions;

pub use names::NameEncoding;

use super::{
    AppendReport, ConnectorError, Fetched, FlagScan, Flags, FolderPath, FolderScan, ItemMeta,
    MailSource, MailTarget, Message, Outgoing, SourceFolder, SourcePosition, SpecialUse,
    TargetFolder, TargetItem, TargetPosition, header_block,
};

/// The folder key of the inbox (the Maildir root itself).
const INBOX_KEY: &str = "INBOX";
/// Dovecot's keyword table of a folder: lines `<index> <keyword>`.
const KEYWORDS_FILE: &str = "dovecot-keywords";
/// The longest file name most filesystems accept, in bytes.
const MAX_NAME: usize = 255;
/// The longest `source_ref` put into a file name.
const MAX_SOURCE_REF: usize = 128;
/// How many threads fsync the files of one append.
const SYNC_THREADS: usize = 4;
/// The fewest files a fsync thread is started for.
const SYNC_PART_MIN: usize = 8;
/// Maildir info letters of system flags, in ASCII order.
const SYSTEM_FLAGS: [(char, &str); 5] = [
    ('D', "\\Draft"),
    ('F', "\\Flagged"),
    ('R', "\\Answered"),
    ('S', "\\Seen"),
    ('T', "\\Deleted"),
];
/// `P` (passed) as mutt and others write it, read as `$Forwarded`. It is
/// never written: Dovecot has no such flag and would drop it, so
/// `$Forwarded` is stored as a keyword like any other.
const PASSED: (char, &str) = ('P', "$Forwarded");

/// A mailbox stored as a Maildir++ tree (Dovecot's default layout): the
/// inbox in `root/{cur,new,tmp}`, folder `A/B` in `root/.A.B/{cur,new,tmp}`.
pub struct Maildir {
    root: PathBuf,
    encoding: NameEncoding,
    /// What is known of each folder's files, by folder key; dropped whenever
    /// a call fails, and then listed again.
    folders: HashMap<String, FolderIndex>,
}

impl Maildir {
    /// The Maildir of `mailbox` under a path template with `{mailbox}` (e.g.
    /// `backup/{mailbox}`; without it, the mailbox is a sub-directory of the
    /// template). The mailbox name becomes one safe path component: `%`,
    /// `/`, `\`, a leading `.`, control and non-portable characters are
    /// percent-encoded, and an empty name is `%`.
    pub fn for_mailbox(template: &str, mailbox: &str) -> Maildir {
        let component = mailbox_component(mailbox);
        let root = if template.contains("{mailbox}") {
            PathBuf::from(template.replace("{mailbox}", &component))
        } else {
            Path::new(template).join(component)
        };
        Maildir {
            root,
            encoding: NameEncoding::default(),
            folders: HashMap::new(),
        }
    }

    /// Folder directory names in raw UTF-8 (Dovecot's `UTF-8` layout
    /// option) rather than Dovecot's default modified UTF-7.
    pub fn utf8_names(mut self, utf8: bool) -> Maildir {
        self.encoding = if utf8 {
            NameEncoding::Utf8
        } else {
            NameEncoding::Mutf7
        };
        self
    }

    /// The directory of this Maildir.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Opens as a source: the root must exist and be a Maildir.
    pub async fn open_source(self) -> Result<Maildir, ConnectorError> {
        let cur = self.root.join("cur");
        let root = self.root.clone();
        blocking(move || match fs::metadata(&cur) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(not_found(&root)),
            Err(error) if error.kind() == ErrorKind::NotFound => Err(not_found(&root)),
            Err(error) => Err(classify(&root, &cur, error)),
        })
        .await?;
        Ok(self)
    }

    /// Opens as a target: creates the root Maildir if missing.
    pub async fn open_target(self) -> Result<Maildir, ConnectorError> {
        let root = self.root.clone();
        blocking(move || {
            let mut builder = DirBuilder::new();
            builder.recursive(true).mode(0o700);
            for sub in ["cur", "new", "tmp"] {
                let dir = root.join(sub);
                if let Err(error) = builder.create(&dir) {
                    return Err(creation_error(&dir, error));
                }
            }
            Ok(())
        })
        .await?;
        Ok(self)
    }

    /// Runs `work` on the blocking pool with the index of folder `key`
    /// (listed first when not known or when `relist`), and keeps the index
    /// for the next call unless `work` fails.
    async fn with_folder<T, F>(
        &mut self,
        key: &str,
        relist: bool,
        work: F,
    ) -> Result<T, ConnectorError>
    where
        T: Send + 'static,
        F: FnOnce(&Folder, &mut FolderIndex) -> Result<T, ConnectorError> + Send + 'static,
    {
        let folder = Folder::resolve(&self.root, key)?;
        let known = self.folders.remove(key).filter(|_| !relist);
        let (index, value) = blocking(move || {
            let mut index = match known {
                Some(index) => index,
                None => FolderIndex::load(&folder)?,
            };
            let value = work(&folder, &mut index)?;
            Ok((index, value))
        })
        .await?;
        self.folders.insert(key.to_owned(), index);
        Ok(value)
    }
}

#[async_trait]
impl MailSource for Maildir {
    /// Every folder directory; one whose name cannot be read is listed
    /// too (named as well as it can be), and its scan fails.
    async fn folders(&mut self) -> Result<Vec<SourceFolder>, ConnectorError> {
        let root = self.root.clone();
        let encoding = self.encoding;
        let (listing, subscribed) = blocking(move || {
            let listing = list_folders(&root, encoding)?;
            let subscribed = subscriptions::read(&root).map_err(|error| {
                classify(&root, &root.join("subscriptions"), error)
                    .context("reading Dovecot's subscriptions")
            })?;
            Ok((listing, subscribed))
        })
        .await?;
        let mut folders = Vec::with_capacity(listing.folders.len());
        for (key, path) in listing.folders {
            folders.push(SourceFolder {
                subscribed: subscribed.contains(&key),
                key,
                path,
                special: None,
                class: None,
            });
        }
        for key in listing.unreadable {
            folders.push(SourceFolder {
                path: FolderPath(vec![key.clone()]),
                subscribed: subscribed.contains(&key),
                key,
                special: None,
                class: None,
            });
        }
        Ok(folders)
    }

    /// Lists the whole folder (Maildir has no UIDs): `complete` and
    /// `FlagScan::All`, whatever the checkpoint says.
    async fn scan(
        &mut self,
        folder: &SourceFolder,
        _position: Option<SourcePosition<'_>>,
    ) -> Result<FolderScan, ConnectorError> {
        let root = self.root.clone();
        let key = folder.key.clone();
        let encoding = self.encoding;
        let unreadable = blocking(move || Ok(unreadable_folder(&root, &key, encoding))).await?;
        if let Some(reason) = unreadable {
            return Err(ConnectorError::item(format!(
                "cannot read Maildir folder {:?}: {reason}",
                folder.key
            )));
        }
        self.with_folder(&folder.key, true, |folder, index| {
            let candidates = index.list(folder)?;
            let flags = candidates
                .iter()
                .map(|meta| (meta.item.clone(), meta.flags.clone()))
                .collect();
            Ok(FolderScan {
                validity: 1,
                cursor: None,
                candidates,
                complete: true,
                flags: FlagScan::All(flags),
            })
        })
        .await
    }

    /// Reads the messages, found by unique name even if they moved or their
    /// flags changed since the scan (their `meta` then has the flags and size
    /// as read). Messages whose file is gone are `gone`; a file that cannot
    /// be read (permission denied, a directory, a name that is not UTF-8)
    /// is `refused`, item class, so that the engine records it.
    async fn fetch(
        &mut self,
        folder: &SourceFolder,
        items: &[ItemMeta],
    ) -> Result<Fetched, ConnectorError> {
        let items = items.to_vec();
        self.with_folder(&folder.key, false, move |folder, index| {
            let mut reader = ItemReader::new(folder, index);
            let mut result = Fetched::default();
            for mut meta in items {
                let (body, flags) = match reader.read(&meta.item, |path| fs::read(path))? {
                    Read::Found(body, flags) => (body, flags),
                    Read::Gone => {
                        result.gone.push(meta.item);
                        continue;
                    }
                    Read::Unreadable(error) => {
                        result.refused.push((meta.item, error));
                        continue;
                    }
                };
                meta.size = Some(body.len() as u64);
                meta.flags = flags;
                result.messages.push(Message {
                    meta,
                    body: Bytes::from(body),
                });
            }
            Ok(result)
        })
        .await
    }

    /// Reads only the header blocks; gone or unreadable files are left out
    /// (their fetch tells what became of them).
    async fn fetch_headers(
        &mut self,
        folder: &SourceFolder,
        items: &[ItemMeta],
    ) -> Result<Vec<(String, Bytes)>, ConnectorError> {
        let items = items.to_vec();
        self.with_folder(&folder.key, false, move |folder, index| {
            let mut reader = ItemReader::new(folder, index);
            let mut headers = Vec::with_capacity(items.len());
            for meta in items {
                if let Read::Found(header, _) = reader.read(&meta.item, read_header)? {
                    headers.push((meta.item, Bytes::from(header)));
                }
            }
            Ok(headers)
        })
        .await
    }
}

#[async_trait]
impl MailTarget for Maildir {
    /// The folders whose names can be read (the others cannot be written).
    async fn folders(&mut self) -> Result<Vec<TargetFolder>, ConnectorError> {
        let root = self.root.clone();
        let encoding = self.encoding;
        let listing = blocking(move || list_folders(&root, encoding)).await?;
        Ok(listing
            .folders
            .into_iter()
            .map(|(name, path)| TargetFolder {
                name,
                path,
                special: None,
            })
            .collect())
    }

    /// Creates the folder's directory with `cur`, `new`, `tmp` and
    /// `maildirfolder`. Maildir++ needs no directory for parent levels, and
    /// has no SPECIAL-USE: the folder is made at `path` whatever `special`.
    async fn ensure_folder(
        &mut self,
        path: &FolderPath,
        _special: Option<SpecialUse>,
        _class: Option<&str>,
    ) -> Result<TargetFolder, ConnectorError> {
        let Some(name) = folder_dir_name(path, self.encoding)? else {
            return Ok(TargetFolder {
                name: INBOX_KEY.to_owned(),
                path: FolderPath::inbox(),
                special: None,
            });
        };
        let root = self.root.clone();
        let dir_name = name.clone();
        blocking(move || create_folder(&root, &dir_name)).await?;
        Ok(TargetFolder {
            name,
            path: path.clone(),
            special: None,
        })
    }

    /// Always the same, holding nothing: appends are idempotent by themselves.
    async fn mark(&mut self, _folder: &str) -> Result<TargetPosition, ConnectorError> {
        Ok(TargetPosition {
            mark: TargetMark::new("{}".into()),
            validity: None,
        })
    }

    /// Always empty: appends are idempotent by themselves.
    async fn items_since(
        &mut self,
        _folder: &str,
        _mark: Option<&TargetMark>,
        _wanted: &HashSet<String>,
    ) -> Result<Vec<TargetItem>, ConnectorError> {
        Ok(Vec::new())
    }

    /// Writes each message to `tmp/`, fsyncs them (a few threads at once),
    /// renames them into `cur/` and fsyncs `cur/`. A message whose
    /// `source_ref` is already in the folder is not written again: its id is
    /// returned and its flags set.
    async fn append(
        &mut self,
        folder: &str,
        messages: &[Outgoing],
    ) -> Result<AppendReport, ConnectorError> {
        let messages = messages.to_vec();
        self.with_folder(folder, false, move |folder, index| {
            append_messages(folder, index, &messages)
        })
        .await
    }

    /// Adds the folder to Dovecot's `subscriptions` file, under Dovecot's
    /// lock and replaced by a rename.
    async fn subscribe(&mut self, folder: &str) -> Result<(), ConnectorError> {
        let folder = Folder::resolve(&self.root, folder)?;
        blocking(move || {
            subscriptions::add(&folder.root, &folder.key).map_err(|error| {
                classify(&folder.root, &folder.root.join("subscriptions"), error)
                    .context(format!("subscribing {}", folder.key))
            })
        })
        .await
    }

    /// Renames the files to their new flags (into `cur/`); all known ids are
    /// done before an unknown one is reported (item class).
    async fn set_flags(
        &mut self,
        folder: &str,
        changes: &[(String, Flags)],
    ) -> Result<(), ConnectorError> {
        let changes = changes.to_vec();
        self.with_folder(folder, false, move |folder, index| {
            let mut unknown = Vec::new();
            let mut renames = Vec::with_capacity(changes.len());
            for (id, flags) in changes {
                if !index.files.contains_key(&id) {
                    unknown.push(id);
                    continue;
                }
                let letters = index.keywords.letters(&flags);
                renames.push((id, letters));
            }
            index.keywords.save(folder)?;
            for (id, letters) in &renames {
                index.set_letters(folder, id, letters)?;
            }
            if !renames.is_empty() {
                sync_dir(folder, &folder.sub(Sub::Cur))?;
            }
            if !unknown.is_empty() {
                return Err(ConnectorError::item(format!(
                    "no such message in {}: {}",
                    folder.key,
                    unknown.join(", ")
                )));
            }
            Ok(())
        })
        .await
    }
}

/// Runs filesystem work on the blocking pool.
async fn blocking<T, F>(work: F) -> Result<T, ConnectorError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ConnectorError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| ConnectorError::transient(format!("maildir task failed: {error}")))?
}

/// The error for a missing or non-Maildir root.
fn not_found(root: &Path) -> ConnectorError {
    ConnectorError::mailbox(format!("mailbox not found: {}", root.display()))
}

/// Classifies an I/O failure at `path` in the Maildir at `root`: a vanished
/// root, a full or read-only disk and a denied permission stop the mailbox;
/// anything else may pass.
fn classify(root: &Path, path: &Path, error: io::Error) -> ConnectorError {
    if !root.is_dir() {
        return not_found(root);
    }
    let message = format!("{}: {error}", path.display());
    match error.kind() {
        ErrorKind::StorageFull
        | ErrorKind::QuotaExceeded
        | ErrorKind::ReadOnlyFilesystem
        | ErrorKind::PermissionDenied => ConnectorError::mailbox(message),
        _ => ConnectorError::transient(message),
    }
}

/// Classifies a failure to create the target's root.
fn creation_error(path: &Path, error: io::Error) -> ConnectorError {
    let message = format!("cannot create {}: {error}", path.display());
    match error.kind() {
        ErrorKind::PermissionDenied
        | ErrorKind::ReadOnlyFilesystem
        | ErrorKind::StorageFull
        | ErrorKind::QuotaExceeded
        | ErrorKind::NotADirectory
        | ErrorKind::AlreadyExists
        | ErrorKind::InvalidFilename => ConnectorError::mailbox(message),
        _ => ConnectorError::transient(message),
    }
}

/// Characters never stored as themselves in a directory name.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '%' | '.' | '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|'
        )
}

/// Appends `c` to `out`, percent-encoding its UTF-8 bytes when `encode`.
fn push_char(out: &mut String, c: char, encode: bool) {
    if !encode {
        out.push(c);
        return;
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut buf = [0; 4];
    for &byte in c.encode_utf8(&mut buf).as_bytes() {
        out.push('%');
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
}

/// A mailbox name as one path component: dots kept except a leading one.
fn mailbox_component(mailbox: &str) -> String {
    if mailbox.is_empty() {
        return "%".to_owned();
    }
    let mut out = String::with_capacity(mailbox.len());
    for (i, c) in mailbox.char_indices() {
        push_char(&mut out, c, if c == '.' { i == 0 } else { is_unsafe(c) });
    }
    out
}

/// The directory name of a folder (`None`: the inbox, the root itself),
/// spelled as Dovecot does (see [`names`]).
fn folder_dir_name(
    path: &FolderPath,
    encoding: NameEncoding,
) -> Result<Option<String>, ConnectorError> {
    if path.is_inbox() {
        return Ok(None);
    }
    let Some(name) = names::dir_name(path, encoding) else {
        return Err(ConnectorError::item(format!(
            "folder name with an empty level: {:?}",
            path.0
        )));
    };
    if name.len() > MAX_NAME {
        return Err(ConnectorError::item(format!(
            "folder name too long for a Maildir: {path} ({} bytes encoded, at most {MAX_NAME})",
            name.len()
        )));
    }
    Ok(Some(name))
}

/// Whether `name` may be a folder directory right under the root.
fn is_folder_dir_name(name: &str) -> bool {
    name.len() > 1 && name.starts_with('.') && name != ".." && !name.contains(['/', '\0'])
}

/// The folders under a Maildir root.
struct Listing {
    /// The inbox first, then every folder whose name reads, by key.
    folders: Vec<(String, FolderPath)>,
    /// Keys of folder directories whose names do not read (bytes that are
    /// not UTF-8 replaced): see [`unreadable_folder`].
    unreadable: Vec<String>,
}

/// Why the folder of `key` cannot be read by its name, if it cannot: its
/// name does not decode, or it stands for a directory name that is not
/// UTF-8 (a key with U+FFFD that names no directory).
fn unreadable_folder(root: &Path, key: &str, encoding: NameEncoding) -> Option<String> {
    if key == INBOX_KEY {
        return None;
    }
    if let Err(reason) = names::folder_of(key, encoding) {
        return Some(reason);
    }
    let lossy = key.contains(char::REPLACEMENT_CHARACTER) && !root.join(key).is_dir();
    lossy.then(|| "its directory name is not UTF-8".to_owned())
}

/// Lists the folder directories: those with a `cur` or `new` directory
/// whose names start with `.`.
fn list_folders(root: &Path, encoding: NameEncoding) -> Result<Listing, ConnectorError> {
    let entries = fs::read_dir(root).map_err(|error| classify(root, root, error))?;
    let mut listing = Listing {
        folders: Vec::new(),
        unreadable: Vec::new(),
    };
    for entry in entries {
        let entry = entry.map_err(|error| classify(root, root, error))?;
        let raw_name = entry.file_name();
        if !raw_name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
        let holds_mail = ["cur", "new"]
            .iter()
            .any(|sub| entry.path().join(sub).is_dir());
        if !is_dir || !holds_mail {
            continue;
        }
        let Ok(name) = raw_name.into_string() else {
            listing
                .unreadable
                .push(entry.file_name().to_string_lossy().into_owned());
            continue;
        };
        if !is_folder_dir_name(&name) {
            continue;
        }
        match names::folder_of(&name, encoding) {
            Ok(path) => listing.folders.push((name, path)),
            Err(_) => listing.unreadable.push(name),
        }
    }
    listing.folders.sort_by(|a, b| a.1.cmp(&b.1));
    listing
        .folders
        .insert(0, (INBOX_KEY.to_owned(), FolderPath::inbox()));
    listing.unreadable.sort();
    Ok(listing)
}

/// Creates folder directory `name` under `root` (no-op where it exists).
fn create_folder(root: &Path, name: &str) -> Result<(), ConnectorError> {
    let dir = root.join(name);
    let mut builder = DirBuilder::new();
    builder.mode(0o700);
    for path in [
        dir.clone(),
        dir.join("cur"),
        dir.join("new"),
        dir.join("tmp"),
    ] {
        match builder.create(&path) {
            Err(error) if error.kind() != ErrorKind::AlreadyExists => {
                return Err(classify(root, &path, error));
            }
            _ => {}
        }
    }
    let marker = dir.join("maildirfolder");
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&marker)
        .map_err(|error| classify(root, &marker, error))?;
    for path in [&dir, root] {
        File::open(path)
            .and_then(|dir| dir.sync_all())
            .map_err(|error| classify(root, path, error))?;
    }
    Ok(())
}

/// A sub-directory holding messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sub {
    New,
    Cur,
}

impl Sub {
    fn name(self) -> &'static str {
        match self {
            Sub::New => "new",
            Sub::Cur => "cur",
        }
    }
}

/// One folder of the Maildir, resolved from its key.
struct Folder {
    root: PathBuf,
    dir: PathBuf,
    key: String,
}

impl Folder {
    /// The folder of `key`: `INBOX` or a directory name from `folders()`.
    fn resolve(root: &Path, key: &str) -> Result<Folder, ConnectorError> {
        let dir = if key == INBOX_KEY {
            root.to_path_buf()
        } else if is_folder_dir_name(key) {
            root.join(key)
        } else {
            return Err(ConnectorError::item(format!(
                "not a Maildir folder: {key:?}"
            )));
        };
        Ok(Folder {
            root: root.to_path_buf(),
            dir,
            key: key.to_owned(),
        })
    }

    fn sub(&self, sub: Sub) -> PathBuf {
        self.dir.join(sub.name())
    }

    /// Classifies an I/O failure at `path` inside this folder: a missing
    /// folder or a denied permission is the folder's (item class).
    fn error(&self, path: &Path, error: io::Error) -> ConnectorError {
        if self.root.is_dir() && !self.dir.is_dir() {
            return ConnectorError::item(format!("folder not found: {}", self.dir.display()));
        }
        if error.kind() == ErrorKind::PermissionDenied {
            return ConnectorError::item(format!("{}: {error}", path.display()));
        }
        classify(&self.root, path, error)
    }
}

/// Fsyncs a directory, so that renames into it last.
fn sync_dir(folder: &Folder, dir: &Path) -> Result<(), ConnectorError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| folder.error(dir, error))
}

/// Where a message file is.
#[derive(Debug, Clone)]
struct Entry {
    sub: Sub,
    /// The whole file name, `<unique>[:2,<flags>]`.
    name: String,
}

/// The files of a folder as last listed or written.
#[derive(Default)]
struct FolderIndex {
    /// By unique name.
    files: HashMap<String, Entry>,
    /// Unique names of mailwave's copies, by `source_ref`.
    refs: HashMap<String, String>,
    /// Files whose names are not UTF-8, by their name with those bytes
    /// replaced: listed, so that their fetch is refused and recorded.
    unnamed: HashMap<String, PathBuf>,
    keywords: Keywords,
}

impl FolderIndex {
    /// Lists `cur/` and `new/` (a file in both counts as in `cur/`).
    fn load(folder: &Folder) -> Result<FolderIndex, ConnectorError> {
        let keywords =
            Keywords::load(&folder.dir).map_err(|error| folder.error(&folder.dir, error))?;
        let mut index = FolderIndex {
            keywords,
            ..FolderIndex::default()
        };
        for sub in [Sub::Cur, Sub::New] {
            let dir = folder.sub(sub);
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(error) if error.kind() == ErrorKind::NotFound && folder.dir.is_dir() => {
                    continue;
                }
                Err(error) => return Err(folder.error(&dir, error)),
            };
            for entry in entries {
                let entry = entry.map_err(|error| folder.error(&dir, error))?;
                let raw_name = entry.file_name();
                if raw_name.as_encoded_bytes().starts_with(b".")
                    || !entry.file_type().is_ok_and(|kind| kind.is_file())
                {
                    continue;
                }
                let Ok(name) = raw_name.into_string() else {
                    let lossy = entry.file_name().to_string_lossy().into_owned();
                    index.unnamed.insert(lossy, entry.path());
                    continue;
                };
                let unique = unique_of(&name).to_owned();
                if index.files.contains_key(&unique) {
                    continue;
                }
                if let Some(source_ref) = source_ref_of(&unique) {
                    index.refs.insert(source_ref.to_owned(), unique.clone());
                }
                index.files.insert(unique, Entry { sub, name });
            }
        }
        Ok(index)
    }

    /// Every message, by unique name, with size, flags and date.
    fn list(&self, folder: &Folder) -> Result<Vec<ItemMeta>, ConnectorError> {
        let mut files: Vec<_> = self.files.iter().collect();
        files.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut items = Vec::with_capacity(files.len());
        for (unique, entry) in files {
            let path = folder.sub(entry.sub).join(&entry.name);
            let meta = match fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(error) if error.kind() == ErrorKind::NotFound => continue,
                Err(error) => return Err(folder.error(&path, error)),
            };
            items.push(ItemMeta {
                item: unique.clone(),
                uid: None,
                size: Some(meta.len()),
                flags: self.keywords.flags(&entry.name),
                internal_date: meta.modified().ok().map(file_date),
                identity: None,
                version: None,
            });
        }
        let mut unnamed: Vec<_> = self.unnamed.keys().collect();
        unnamed.sort_unstable();
        items.extend(unnamed.into_iter().map(|lossy| ItemMeta {
            item: lossy.clone(),
            uid: None,
            size: None,
            flags: Flags::default(),
            internal_date: None,
            identity: None,
            version: None,
        }));
        Ok(items)
    }

    /// Gives message `unique` the flag letters `letters`, moving it to
    /// `cur/`; nothing when it is not (yet) a file of this folder.
    fn set_letters(
        &mut self,
        folder: &Folder,
        unique: &str,
        letters: &str,
    ) -> Result<(), ConnectorError> {
        let Some(entry) = self.files.get_mut(unique) else {
            return Ok(());
        };
        let name = format!("{unique}:2,{letters}");
        if entry.sub == Sub::Cur && entry.name == name {
            return Ok(());
        }
        if name.len() > MAX_NAME {
            return Err(ConnectorError::item(format!(
                "file name too long for its flags: {name}"
            )));
        }
        let from = folder.sub(entry.sub).join(&entry.name);
        let to = folder.sub(Sub::Cur).join(&name);
        fs::rename(&from, &to).map_err(|error| folder.error(&from, error))?;
        *entry = Entry {
            sub: Sub::Cur,
            name,
        };
        Ok(())
    }
}

/// The unique part of a message file name: up to the first `:`.
fn unique_of(name: &str) -> &str {
    name.split_once(':').map_or(name, |(unique, _)| unique)
}

/// The `source_ref` of a unique name written by [`append_messages`].
fn source_ref_of(unique: &str) -> Option<&str> {
    let (_, rest) = unique.split_once(".M")?;
    let (source_ref, _) = rest.split_once(".mailwave,S=")?;
    Some(source_ref)
}

/// A folder's keyword letters (`a` = index 0) as in `dovecot-keywords`.
#[derive(Default)]
struct Keywords {
    names: [Option<String>; 26],
    /// Whether `names` has entries not saved yet.
    dirty: bool,
    /// Keywords already warned about as dropped.
    dropped: BTreeSet<String>,
}

impl Keywords {
    /// Reads the folder's `dovecot-keywords` (none: no keywords).
    fn load(dir: &Path) -> io::Result<Keywords> {
        let mut keywords = Keywords::default();
        let text = match fs::read(dir.join(KEYWORDS_FILE)) {
            Ok(text) => text,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(keywords),
            Err(error) => return Err(error),
        };
        for line in String::from_utf8_lossy(&text).lines() {
            let Some((index, name)) = line.split_once(' ') else {
                continue;
            };
            let (Ok(index), name) = (index.parse::<usize>(), name.trim()) else {
                continue;
            };
            if let Some(slot) = keywords.names.get_mut(index).filter(|_| !name.is_empty()) {
                *slot = Some(name.to_owned());
            }
        }
        Ok(keywords)
    }

    /// The flags of a message file name.
    fn flags(&self, name: &str) -> Flags {
        let letters = name
            .split_once(':')
            .and_then(|(_, info)| info.strip_prefix("2,"))
            .unwrap_or("");
        Flags::from_iter(letters.chars().filter_map(|letter| {
            match letter {
                'a'..='z' => self.names[usize::from(letter as u8 - b'a')].as_deref(),
                _ => SYSTEM_FLAGS
                    .iter()
                    .chain([&PASSED])
                    .find(|(system, _)| *system == letter)
                    .map(|(_, flag)| *flag),
            }
        }))
    }

    /// The info letters of `flags`, in ASCII order, giving new keywords a
    /// free letter (dropped with a warning when none is left).
    fn letters(&mut self, flags: &Flags) -> String {
        let mut letters = BTreeSet::new();
        for flag in flags.iter() {
            let system = SYSTEM_FLAGS
                .iter()
                .find(|(_, name)| name.eq_ignore_ascii_case(flag));
            if let Some(letter) = system
                .map(|(letter, _)| *letter)
                .or_else(|| self.letter(flag))
            {
                letters.insert(letter);
            }
        }
        letters.into_iter().collect()
    }

    /// The letter of keyword `keyword`, assigned if new.
    fn letter(&mut self, keyword: &str) -> Option<char> {
        let slot = match self
            .names
            .iter()
            .position(|name| name.as_deref() == Some(keyword))
        {
            Some(slot) => slot,
            None => {
                let valid = !keyword.contains(|c: char| c.is_whitespace() || c.is_control());
                let Some(free) = self
                    .names
                    .iter()
                    .position(Option::is_none)
                    .filter(|_| valid)
                else {
                    if self.dropped.insert(keyword.to_owned()) {
                        tracing::warn!(
                            keyword,
                            "dropping a keyword: a Maildir folder holds at most 26, without spaces"
                        );
                    }
                    return None;
                };
                self.names[free] = Some(keyword.to_owned());
                self.dirty = true;
                free
            }
        };
        u8::try_from(slot).ok().map(|slot| char::from(b'a' + slot))
    }

    /// Writes `dovecot-keywords` (via `tmp/` and a rename) if it changed.
    fn save(&mut self, folder: &Folder) -> Result<(), ConnectorError> {
        if !self.dirty {
            return Ok(());
        }
        let text: String = self
            .names
            .iter()
            .enumerate()
            .filter_map(|(index, name)| Some(format!("{index} {}\n", name.as_deref()?)))
            .collect();
        let tmp = folder.dir.join("tmp").join(KEYWORDS_FILE);
        let path = folder.dir.join(KEYWORDS_FILE);
        write_file(&tmp, text.as_bytes(), None)
            .and_then(|file| file.sync_all())
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|error| folder.error(&path, error))?;
        self.dirty = false;
        Ok(())
    }
}

/// Creates (or replaces) file `path` with `data`, its times set to `time`.
fn write_file(path: &Path, data: &[u8], time: Option<SystemTime>) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(data)?;
    if let Some(time) = time {
        file.set_times(FileTimes::new().set_accessed(time).set_modified(time))?;
    }
    Ok(file)
}

/// The instant of a received date; now when there is none.
fn internal_time(date: Option<DateTime<FixedOffset>>) -> SystemTime {
    date.map_or_else(SystemTime::now, SystemTime::from)
}

/// A file's time as a received date (files keep no zone: UTC).
fn file_date(time: SystemTime) -> DateTime<FixedOffset> {
    DateTime::<Utc>::from(time).fixed_offset()
}

/// Whether `source_ref` is safe in a file name (and short enough).
fn is_valid_source_ref(source_ref: &str) -> bool {
    (1..=MAX_SOURCE_REF).contains(&source_ref.len())
        && source_ref
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A message to write: its unique name, file name, body and time.
struct NewFile<'a> {
    unique: String,
    name: String,
    body: &'a [u8],
    time: SystemTime,
}

/// Appends `messages` to `folder` (see [`MailTarget::append`]).
fn append_messages(
    folder: &Folder,
    index: &mut FolderIndex,
    messages: &[Outgoing],
) -> Result<AppendReport, ConnectorError> {
    let mut results = Vec::with_capacity(messages.len());
    let mut existing = Vec::new();
    let mut writes = Vec::new();
    for message in messages {
        if !is_valid_source_ref(&message.source_ref) {
            results.push(Err(ConnectorError::item(format!(
                "source_ref unfit for a Maildir file name: {:?}",
                message.source_ref
            ))));
            continue;
        }
        let letters = index.keywords.letters(&message.flags);
        if let Some(unique) = index.refs.get(&message.source_ref) {
            results.push(Ok(Some(unique.clone())));
            existing.push((unique.clone(), letters));
            continue;
        }
        let time = internal_time(message.internal_date);
        let seconds = time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let unique = format!(
            "{seconds}.M{}.mailwave,S={}",
            message.source_ref,
            message.body.len()
        );
        index
            .refs
            .insert(message.source_ref.clone(), unique.clone());
        results.push(Ok(Some(unique.clone())));
        writes.push(NewFile {
            name: format!("{unique}:2,{letters}"),
            unique,
            body: &message.body,
            time,
        });
    }
    index.keywords.save(folder)?;
    for (unique, letters) in &existing {
        index.set_letters(folder, unique, letters)?;
    }
    let renamed = !existing.is_empty() || !writes.is_empty();
    let tmp = folder.dir.join("tmp");
    let cur = folder.sub(Sub::Cur);
    let mut written = Vec::with_capacity(writes.len());
    for file in &writes {
        let path = tmp.join(&file.unique);
        write_file(&path, file.body, Some(file.time))
            .map_err(|error| folder.error(&path, error))?;
        written.push(path);
    }
    sync_files(folder, &written)?;
    for file in writes {
        let from = tmp.join(&file.unique);
        fs::rename(&from, cur.join(&file.name)).map_err(|error| folder.error(&from, error))?;
        index.files.insert(
            file.unique,
            Entry {
                sub: Sub::Cur,
                name: file.name,
            },
        );
    }
    if renamed {
        sync_dir(folder, &cur)?;
    }
    Ok(AppendReport {
        results,
        mark_after: None,
        ..AppendReport::default()
    })
}

/// Fsyncs the files at `paths`, several at once: concurrent fsyncs share
/// journal commits, which one after another each wait for (measured: 1,000
/// files of 50 KB took 3.6 s one by one on a busy disk, under 1 s so).
fn sync_files(folder: &Folder, paths: &[PathBuf]) -> Result<(), ConnectorError> {
    let sync = |part: &[PathBuf]| {
        part.iter().try_for_each(|path| {
            File::open(path)
                .and_then(|file| file.sync_all())
                .map_err(|error| folder.error(path, error))
        })
    };
    let part = paths.len().div_ceil(SYNC_THREADS).max(SYNC_PART_MIN);
    let mut parts = paths.chunks(part);
    let Some(first) = parts.next() else {
        return Ok(());
    };
    std::thread::scope(|scope| {
        let others: Vec<_> = parts.map(|part| scope.spawn(move || sync(part))).collect();
        sync(first)?;
        others.into_iter().try_for_each(|other| {
            other
                .join()
                .unwrap_or_else(|_| Err(ConnectorError::transient("fsync thread panicked")))
        })
    })
}

/// What became of a message file read by [`ItemReader::read`].
enum Read<T> {
    Found(T, Flags),
    Gone,
    Unreadable(ConnectorError),
}

/// Reads message files by unique name, listing the folder again (once) when
/// one is not where it was.
struct ItemReader<'a> {
    folder: &'a Folder,
    index: &'a mut FolderIndex,
    relisted: bool,
}

impl<'a> ItemReader<'a> {
    fn new(folder: &'a Folder, index: &'a mut FolderIndex) -> Self {
        ItemReader {
            folder,
            index,
            relisted: false,
        }
    }

    /// `read` of the file of `unique`, with its flags now.
    fn read<T>(
        &mut self,
        unique: &str,
        read: impl Fn(&Path) -> io::Result<T>,
    ) -> Result<Read<T>, ConnectorError> {
        loop {
            if let Some(entry) = self.index.files.get(unique) {
                let path = self.folder.sub(entry.sub).join(&entry.name);
                match read(&path) {
                    Ok(value) => {
                        return Ok(Read::Found(value, self.index.keywords.flags(&entry.name)));
                    }
                    Err(error) if error.kind() == ErrorKind::NotFound => {}
                    Err(error)
                        if matches!(
                            error.kind(),
                            ErrorKind::PermissionDenied | ErrorKind::IsADirectory
                        ) =>
                    {
                        return Ok(Read::Unreadable(ConnectorError::item(format!(
                            "cannot read message file {}: {error}",
                            path.display()
                        ))));
                    }
                    Err(error) => return Err(self.folder.error(&path, error)),
                }
            }
            if let Some(path) = self.index.unnamed.get(unique) {
                return Ok(Read::Unreadable(ConnectorError::item(format!(
                    "cannot read message file {}: its name is not UTF-8",
                    path.display()
                ))));
            }
            if self.relisted {
                return Ok(Read::Gone);
            }
            *self.index = FolderIndex::load(self.folder)?;
            self.relisted = true;
        }
    }
}

/// The header block of a message file, read no further than needed.
fn read_header(path: &Path) -> io::Result<Vec<u8>> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut header = Vec::new();
    loop {
        let start = header.len();
        if reader.read_until(b'\n', &mut header)? == 0 {
            return Ok(header);
        }
        let line = &header[start..];
        if line == b"\n" || line == b"\r\n" {
            let len = header_block(&header).len();
            header.truncate(len);
            return Ok(header);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailwave_common::ErrorClass;

    fn outgoing(body: &[u8], flags: &[&str], date: Option<&str>, source_ref: &str) -> Outgoing {
        Outgoing {
            body: Bytes::copy_from_slice(body),
            flags: Flags::from_iter(flags),
            internal_date: date.map(instant),
            source_ref: source_ref.to_owned(),
        }
    }

    fn path(levels: &[&str]) -> FolderPath {
        FolderPath(levels.iter().map(|level| (*level).to_owned()).collect())
    }

    async fn open_target(base: &Path) -> Maildir {
        let template = base.join("{mailbox}");
        let template = template.to_str().expect("temp dir is UTF-8");
        Maildir::for_mailbox(template, "user@example.com")
            .open_target()
            .await
            .expect("target opens")
    }

    async fn source(root: &Path) -> Maildir {
        Maildir {
            root: root.to_path_buf(),
            encoding: NameEncoding::default(),
            folders: HashMap::new(),
        }
        .open_source()
        .await
        .expect("source opens")
    }

    fn source_folder(key: &str) -> SourceFolder {
        SourceFolder {
            key: key.to_owned(),
            path: FolderPath::inbox(),
            special: None,
            class: None,
            subscribed: false,
        }
    }

    fn instant(date: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_str(date, "%d-%b-%Y %H:%M:%S %z").expect("date parses")
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("dir lists")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .into_string()
                    .expect("UTF-8")
            })
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn messages_round_trip() {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut target = open_target(temp.path()).await;
        let work = target
            .ensure_folder(&path(&["Work"]), None, None)
            .await
            .expect("folder");
        assert_eq!(work.name, ".Work");
        let sent = [
            outgoing(
                b"Subject: one\r\n\r\nCRLF body\r\n",
                &["\\Seen", "$Label1", "Work"],
                Some("21-Nov-2026 14:53:20 +0100"),
                "aa01",
            ),
            outgoing(
                b"Subject: two\n\nbare LF \xe9\xff\x00 8-bit\nno final newline",
                &[
                    "\\Answered",
                    "\\Flagged",
                    "\\Draft",
                    "\\Deleted",
                    "$Forwarded",
                    "Work",
                ],
                Some(" 1-Jan-2020 00:00:00 -0530"),
                "bb02",
            ),
            outgoing(b"Subject: three\r\n\r\n", &[], None, "cc03"),
        ];
        let report = target.append(&work.name, &sent).await.expect("append");
        let ids: Vec<String> = report
            .results
            .into_iter()
            .map(|result| result.expect("appended").expect("id"))
            .collect();
        assert_eq!(ids[0], "1795269200.Maa01.mailwave,S=27");
        let cur = files_in(&target.root().join(".Work/cur"));
        assert!(
            cur.contains(&"1795269200.Maa01.mailwave,S=27:2,Sab".to_owned()),
            "{cur:?}"
        );
        assert!(
            cur.iter().any(|name| name.ends_with(":2,DFRTbc")),
            "{cur:?}"
        );
        let keywords =
            fs::read_to_string(target.root().join(".Work/dovecot-keywords")).expect("keywords");
        assert_eq!(keywords, "0 $Label1\n1 Work\n2 $Forwarded\n");

        let mut source = source(target.root()).await;
        let folders = MailSource::folders(&mut source).await.expect("folders");
        let keys: Vec<&str> = folders.iter().map(|folder| folder.key.as_str()).collect();
        assert_eq!(keys, ["INBOX", ".Work"]);
        assert_eq!(folders[1].path, path(&["Work"]));
        let scan = source.scan(&folders[1], None).await.expect("scan");
        assert!(scan.complete);
        assert_eq!(scan.validity, 1);
        let FlagScan::All(flags) = &scan.flags else {
            panic!("all flags expected");
        };
        assert_eq!(flags.len(), 3);
        let items: Vec<&str> = scan
            .candidates
            .iter()
            .map(|meta| meta.item.as_str())
            .collect();
        let mut sorted_ids = ids.clone();
        sorted_ids.sort();
        assert_eq!(items, sorted_ids);
        let messages = source
            .fetch(&folders[1], &scan.candidates)
            .await
            .expect("fetch")
            .messages;
        assert_eq!(messages.len(), 3);
        for (outgoing, id) in sent.iter().zip(&ids) {
            let message = messages
                .iter()
                .find(|message| &message.meta.item == id)
                .expect("fetched");
            assert_eq!(message.body, outgoing.body);
            assert_eq!(message.meta.flags, outgoing.flags);
            assert_eq!(message.meta.size, Some(outgoing.body.len() as u64));
            assert_eq!(message.meta.uid, None);
            let date = message.meta.internal_date.expect("date");
            match outgoing.internal_date {
                Some(sent) => assert_eq!(date, sent),
                None => {
                    let age = Utc::now().timestamp() - date.timestamp();
                    assert!((0..60).contains(&age), "{date}");
                }
            }
        }
        let headers = source
            .fetch_headers(&folders[1], &scan.candidates)
            .await
            .expect("headers");
        let two = headers
            .iter()
            .find(|(item, _)| item == &ids[1])
            .expect("header");
        assert_eq!(two.1.as_ref(), b"Subject: two\n\n");
    }

    #[tokio::test]
    async fn appends_are_idempotent() {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut target = open_target(temp.path()).await;
        let message = outgoing(b"Subject: x\r\n\r\nx", &["\\Seen"], None, "0123abcd");
        let first = target
            .append("INBOX", std::slice::from_ref(&message))
            .await
            .expect("append");
        assert_eq!(first.mark_after, None);
        let twice = [message.clone(), message.clone()];
        let again = target.append("INBOX", &twice).await.expect("append again");
        let id = first.results[0].as_ref().expect("ok").clone();
        for result in &again.results {
            assert_eq!(result.as_ref().expect("ok"), &id);
        }
        // A fresh connector finds the copy from the directory listing.
        let mut fresh = open_target(temp.path()).await;
        let third = fresh.append("INBOX", &twice[..1]).await.expect("append");
        assert_eq!(third.results[0].as_ref().expect("ok"), &id);
        assert_eq!(files_in(&fresh.root().join("cur")).len(), 1);
        assert!(files_in(&fresh.root().join("tmp")).is_empty());
        let state = fresh.mark("INBOX").await.expect("mark");
        assert!(
            fresh
                .items_since("INBOX", Some(&state.mark), &HashSet::new())
                .await
                .expect("items")
                .is_empty()
        );

        let bad = outgoing(b"x", &[], None, "../evil");
        let report = fresh.append("INBOX", &[bad]).await.expect("append");
        let error = report.results[0].as_ref().expect_err("refused");
        assert_eq!(error.class, ErrorClass::Item);
    }

    #[tokio::test]
    async fn set_flags_renames() {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut target = open_target(temp.path()).await;
        let message = outgoing(
            b"Subject: x\r\n\r\nx",
            &["\\Seen"],
            Some("21-Nov-2026 14:53:20 +0000"),
            "ff",
        );
        let report = target.append("INBOX", &[message]).await.expect("append");
        let id = report.results[0].as_ref().expect("ok").clone().expect("id");
        let flags = Flags::from_iter(["\\Flagged", "Todo"]);
        target
            .set_flags("INBOX", &[(id.clone(), flags.clone())])
            .await
            .expect("set flags");
        assert_eq!(files_in(&target.root().join("cur")), [format!("{id}:2,Fa")]);
        let mtime = fs::metadata(target.root().join("cur").join(format!("{id}:2,Fa")))
            .and_then(|meta| meta.modified())
            .expect("mtime");
        assert_eq!(file_date(mtime), instant("21-Nov-2026 14:53:20 +0000"));

        let error = target
            .set_flags("INBOX", &[("nope".to_owned(), Flags::default())])
            .await
            .expect_err("unknown id");
        assert_eq!(error.class, ErrorClass::Item);

        let mut source = source(target.root()).await;
        let scan = source
            .scan(&source_folder("INBOX"), None)
            .await
            .expect("scan");
        assert_eq!(scan.candidates[0].flags, flags);
    }

    #[tokio::test]
    async fn reads_new_and_moved_messages() {
        let temp = tempfile::tempdir().expect("temp dir");
        let target = open_target(temp.path()).await;
        let root = target.root().to_path_buf();
        fs::write(
            root.join("new/1700000000.P1Q2.host"),
            b"Subject: new\n\nhello\n",
        )
        .expect("deliver");
        fs::write(
            root.join("new/1700000001.P1Q3.host"),
            b"Subject: gone\n\nbye\n",
        )
        .expect("deliver");
        fs::write(
            root.join("cur/1600000000.P1Q1.host:2,S"),
            b"Subject: old\n\n",
        )
        .expect("deliver");
        let mut source = source(&root).await;
        let inbox = source_folder("INBOX");
        let scan = source.scan(&inbox, None).await.expect("scan");
        let items: Vec<&str> = scan
            .candidates
            .iter()
            .map(|meta| meta.item.as_str())
            .collect();
        assert_eq!(
            items,
            [
                "1600000000.P1Q1.host",
                "1700000000.P1Q2.host",
                "1700000001.P1Q3.host"
            ]
        );
        assert!(scan.candidates[1].flags.is_empty());
        assert!(scan.candidates[0].flags.contains("\\Seen"));
        assert_eq!(scan.candidates[1].size, Some(20));

        // A client reads one (new/ → cur/, \Seen) and deletes another.
        fs::rename(
            root.join("new/1700000000.P1Q2.host"),
            root.join("cur/1700000000.P1Q2.host:2,S"),
        )
        .expect("move");
        fs::remove_file(root.join("new/1700000001.P1Q3.host")).expect("delete");
        let messages = source
            .fetch(&inbox, &scan.candidates)
            .await
            .expect("fetch")
            .messages;
        let items: Vec<&str> = messages
            .iter()
            .map(|message| message.meta.item.as_str())
            .collect();
        assert_eq!(items, ["1600000000.P1Q1.host", "1700000000.P1Q2.host"]);
        assert_eq!(messages[1].body.as_ref(), b"Subject: new\n\nhello\n");
        assert!(messages[1].meta.flags.contains("\\Seen"));
    }

    /// Every path under `dir`, recursively.
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).expect("dir lists") {
            let path = entry.expect("entry").path();
            out.push(path.clone());
            if fs::symlink_metadata(&path).expect("stat").is_dir() {
                walk(&path, out);
            }
        }
    }

    #[tokio::test]
    async fn hostile_folder_names_stay_inside() {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut target = open_target(temp.path()).await;
        let root = target.root().to_path_buf();
        let hostile = [
            path(&["../../etc"]),
            path(&[".."]),
            path(&["."]),
            path(&["a/b"]),
            path(&["a.b"]),
            path(&["a", "b"]),
            path(&["%2E"]),
            path(&["x\ny"]),
            path(&["Projecten/Überprüfung"]),
            path(&["Projecten", "Überprüfung"]),
            path(&["INBOX", "x"]),
            path(&["con:*?\"<>|\\"]),
        ];
        for (i, folder_path) in hostile.iter().enumerate() {
            let folder = target
                .ensure_folder(folder_path, None, None)
                .await
                .expect("ensure");
            assert_eq!(&folder.path, folder_path);
            let message = outgoing(b"Subject: x\r\n\r\n", &[], None, &format!("{i:02x}"));
            let report = target
                .append(&folder.name, &[message])
                .await
                .expect("append");
            assert!(report.results[0].is_ok());
        }
        let dirs = files_in(&root);
        assert!(dirs.contains(&".Projecten.&ANw-berpr&APw-fung".to_owned()));
        assert!(dirs.contains(&".Projecten\\2f&ANw-berpr&APw-fung".to_owned()));
        assert!(dirs.contains(&".\\2e\\2e\\2f\\2e\\2e\\2fetc".to_owned()));

        assert_eq!(
            files_in(temp.path()),
            [root
                .file_name()
                .and_then(|name| name.to_str())
                .expect("name")]
        );
        let mut created = Vec::new();
        walk(temp.path(), &mut created);
        for created in &created {
            assert!(created.starts_with(&root), "{}", created.display());
            let inside = created.strip_prefix(&root).expect("inside");
            assert!(
                inside
                    .components()
                    .all(|part| matches!(part, std::path::Component::Normal(_)))
            );
            let depth = inside.components().count();
            assert!(depth <= 3, "{}", created.display());
        }

        let mut source = source(&root).await;
        let found: BTreeSet<FolderPath> = MailSource::folders(&mut source)
            .await
            .expect("folders")
            .into_iter()
            .map(|folder| folder.path)
            .collect();
        let mut expected: BTreeSet<FolderPath> = hostile.into_iter().collect();
        expected.insert(FolderPath::inbox());
        assert_eq!(found, expected);
        let target_found: BTreeSet<FolderPath> = MailTarget::folders(&mut target)
            .await
            .expect("folders")
            .into_iter()
            .map(|folder| folder.path)
            .collect();
        assert_eq!(target_found, expected);
    }

    #[test]
    fn mailbox_names_are_one_component() {
        for mailbox in ["../evil", "..", ".", ".hidden", "a/b", "", "x\\y", "a\0b"] {
            let maildir = Maildir::for_mailbox("/base/{mailbox}/Maildir", mailbox);
            let root = maildir.root();
            assert_eq!(
                root.parent().and_then(Path::parent),
                Some(Path::new("/base")),
                "{mailbox:?}"
            );
            let component = root
                .parent()
                .and_then(Path::file_name)
                .and_then(|name| name.to_str())
                .expect("component");
            assert!(!component.starts_with('.'), "{component}");
            assert!(!component.contains(['/', '\\', '\0']), "{component}");
        }
        let maildir = Maildir::for_mailbox("/base", "john.doe@example.com");
        assert_eq!(maildir.root(), Path::new("/base/john.doe@example.com"));
    }

    #[tokio::test]
    async fn too_long_folder_name_is_an_item_error() {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut target = open_target(temp.path()).await;
        let fits = "x".repeat(MAX_NAME - 1);
        target
            .ensure_folder(&path(&[&fits]), None, None)
            .await
            .expect("fits");
        for long in [
            path(&[&"x".repeat(MAX_NAME)]),
            path(&[&"Ü".repeat(128)]),
            path(&[&"/".repeat(90)]),
        ] {
            let error = target
                .ensure_folder(&long, None, None)
                .await
                .expect_err("too long");
            assert_eq!(error.class, ErrorClass::Item);
            assert!(
                error
                    .message
                    .starts_with("folder name too long for a Maildir: "),
                "{}",
                error.message
            );
        }
    }

    #[tokio::test]
    async fn missing_source_is_a_mailbox_error() {
        let temp = tempfile::tempdir().expect("temp dir");
        let template = temp.path().join("{mailbox}");
        let maildir = Maildir::for_mailbox(template.to_str().expect("UTF-8"), "nobody");
        let Err(error) = maildir.open_source().await else {
            panic!("a missing source must not open");
        };
        assert_eq!(error.class, ErrorClass::Mailbox);
        assert!(
            error.message.starts_with("mailbox not found: "),
            "{}",
            error.message
        );
    }

    #[tokio::test]
    async fn keywords_beyond_26_are_dropped() {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut target = open_target(temp.path()).await;
        let keywords: Vec<String> = (0..30).map(|i| format!("k{i:02}")).collect();
        let message = Outgoing {
            flags: Flags::from_iter(&keywords),
            ..outgoing(b"x", &[], None, "abc")
        };
        let report = target.append("INBOX", &[message]).await.expect("append");
        let id = report.results[0].as_ref().expect("ok").clone().expect("id");
        let letters: String = ('a'..='z').collect();
        assert_eq!(
            files_in(&target.root().join("cur")),
            [format!("{id}:2,{letters}")]
        );
    }

    #[test]
    fn folder_dir_names_are_dovecots() {
        let name = |levels: &[&str], encoding| {
            folder_dir_name(&path(levels), encoding)
                .expect("encodes")
                .expect("not inbox")
        };
        assert_eq!(name(&["Entwürfe"], NameEncoding::Mutf7), ".Entw&APw-rfe");
        assert_eq!(
            name(&["Clients", "Acme & Co"], NameEncoding::Mutf7),
            ".Clients.Acme &- Co"
        );
        assert_eq!(name(&["Entwürfe"], NameEncoding::Utf8), ".Entwürfe");
        assert_eq!(
            folder_dir_name(&path(&["inbox"]), NameEncoding::Mutf7).expect("inbox"),
            None
        );
        assert_eq!(
            folder_dir_name(&path(&["a", ""]), NameEncoding::Mutf7)
                .expect_err("empty level")
                .class,
            ErrorClass::Item
        );
    }

    /// A folder directory as Dovecot makes one, holding one message.
    fn dovecot_folder(root: &Path, dir: &str, message: &str) {
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir_all(root.join(dir).join(sub)).expect("folder");
        }
        fs::write(
            root.join(dir).join("cur").join(format!("{message}:2,S")),
            format!("Subject: {message}\n\n"),
        )
        .expect("message");
    }

    /// Issue 7, case 8: names Dovecot writes, with `%` and modified UTF-7,
    /// are folders like any other.
    #[tokio::test]
    async fn percent_and_utf7_folder_names_are_read() {
        let temp = tempfile::tempdir().expect("temp dir");
        let root = open_target(temp.path()).await.root().to_path_buf();
        for (i, dir) in [".100% done", ".50%off", ".Priv&AOk-", ".Clients.Acme &- Co"]
            .into_iter()
            .enumerate()
        {
            dovecot_folder(&root, dir, &format!("17000000{i:02}.P1Q{i}.host"));
        }
        let mut source = source(&root).await;
        let folders = MailSource::folders(&mut source).await.expect("folders");
        let found: Vec<(String, FolderPath)> = folders
            .iter()
            .map(|folder| (folder.key.clone(), folder.path.clone()))
            .collect();
        assert_eq!(
            found,
            [
                ("INBOX".to_owned(), FolderPath::inbox()),
                (".100% done".to_owned(), path(&["100% done"])),
                (".50%off".to_owned(), path(&["50%off"])),
                (
                    ".Clients.Acme &- Co".to_owned(),
                    path(&["Clients", "Acme & Co"])
                ),
                (".Priv&AOk-".to_owned(), path(&["Privé"])),
            ]
        );
        for folder in &folders[1..] {
            let scan = source.scan(folder, None).await.expect("scan");
            assert_eq!(scan.candidates.len(), 1, "{}", folder.key);
            let fetched = source.fetch(folder, &scan.candidates).await.expect("fetch");
            assert_eq!(fetched.messages.len(), 1, "{}", folder.key);
        }
    }

    /// Issue 7, case 8: a folder whose name cannot be read is listed and
    /// its scan fails with its name (item class), never skipped.
    #[tokio::test]
    async fn unreadable_folder_names_fail_their_scan() {
        use std::os::unix::ffi::OsStrExt;
        let temp = tempfile::tempdir().expect("temp dir");
        let root = open_target(temp.path()).await.root().to_path_buf();
        let latin1 = std::ffi::OsStr::from_bytes(b".Entw\xfcrfe");
        fs::create_dir_all(root.join(latin1).join("cur")).expect("latin-1 folder");
        dovecot_folder(&root, ".a..b", "1700000000.P1Q1.host");
        let mut source = source(&root).await;
        let folders = MailSource::folders(&mut source).await.expect("folders");
        let keys: Vec<&str> = folders.iter().map(|folder| folder.key.as_str()).collect();
        assert_eq!(keys, ["INBOX", ".Entw\u{fffd}rfe", ".a..b"]);
        // Any connector on the Maildir tells, not only the one that listed.
        let mut other = self::source(&root).await;
        for folder in &folders[1..] {
            let error = other.scan(folder, None).await.expect_err("unreadable");
            assert_eq!(error.class, ErrorClass::Item);
            assert!(error.message.contains(&folder.key), "{}", error.message);
        }
    }

    /// Issue 7, case 8: a message file that cannot be read is refused with
    /// why (item class), beside the messages that can be.
    #[tokio::test]
    async fn unreadable_message_files_are_refused() {
        use std::os::unix::ffi::OsStrExt;
        let temp = tempfile::tempdir().expect("temp dir");
        let root = open_target(temp.path()).await.root().to_path_buf();
        fs::write(
            root.join("cur/1700000000.P1Q1.host:2,S"),
            b"Subject: ok\n\n",
        )
        .expect("ok");
        fs::create_dir(root.join("cur/1700000001.P1Q2.host:2,")).expect("a directory");
        let unnamed = std::ffi::OsStr::from_bytes(b"1700000002.P1Q3.h\xf6st:2,");
        fs::write(root.join("cur").join(unnamed), b"Subject: unnamed\n\n").expect("unnamed");
        let mut source = source(&root).await;
        let inbox = source_folder("INBOX");
        let scan = source.scan(&inbox, None).await.expect("scan");
        let items: Vec<&str> = scan
            .candidates
            .iter()
            .map(|meta| meta.item.as_str())
            .collect();
        assert_eq!(
            items,
            ["1700000000.P1Q1.host", "1700000002.P1Q3.h\u{fffd}st:2,"]
        );
        // The directory that looks like a message is not one (as for
        // Dovecot); a file turned unreadable after the scan is refused.
        fs::remove_file(root.join("cur/1700000000.P1Q1.host:2,S")).expect("remove");
        fs::create_dir(root.join("cur/1700000000.P1Q1.host:2,S")).expect("a directory now");
        let fetched = source.fetch(&inbox, &scan.candidates).await.expect("fetch");
        assert!(fetched.messages.is_empty());
        assert!(fetched.gone.is_empty());
        let refused: Vec<&str> = fetched
            .refused
            .iter()
            .map(|(item, _)| item.as_str())
            .collect();
        assert_eq!(refused, items);
        for (_, error) in &fetched.refused {
            assert_eq!(error.class, ErrorClass::Item);
            assert!(
                error.message.starts_with("cannot read message file "),
                "{}",
                error.message
            );
        }
    }

    /// Issue 7, case 19: subscriptions come from and go to Dovecot's file.
    #[tokio::test]
    async fn subscriptions_are_dovecots_file() {
        let temp = tempfile::tempdir().expect("temp dir");
        let mut target = open_target(temp.path()).await;
        let prive = target
            .ensure_folder(&path(&["Privé"]), None, None)
            .await
            .expect("folder");
        let other = target
            .ensure_folder(&path(&["Other"]), None, None)
            .await
            .expect("folder");
        target.subscribe(&prive.name).await.expect("subscribe");
        target.subscribe(INBOX_KEY).await.expect("subscribe inbox");
        target.subscribe(&prive.name).await.expect("again");
        assert_eq!(
            fs::read_to_string(target.root().join("subscriptions")).expect("file"),
            "V\t2\n\nPriv&AOk-\nINBOX\n"
        );
        let mut source = source(target.root()).await;
        let subscribed: Vec<(String, bool)> = MailSource::folders(&mut source)
            .await
            .expect("folders")
            .into_iter()
            .map(|folder| (folder.key, folder.subscribed))
            .collect();
        assert_eq!(
            subscribed,
            [
                ("INBOX".to_owned(), true),
                (other.name, false),
                (prive.name, true),
            ]
        );
    }
}
