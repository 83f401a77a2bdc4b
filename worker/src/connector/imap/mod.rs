//! The IMAP connector, source and target, over our own lean IMAP client
//! (`wire`). Folder names are translated between servers: the personal
//! namespace prefix is stripped and added, levels are split on the source's
//! hierarchy separator and joined with the target's, modified UTF-7 is
//! decoded and encoded, and a level that contains the target's separator
//! has it replaced by a look-alike so that it never becomes a sub-folder.

pub mod wire;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, FixedOffset};
use mailwave_common::config::{
    AuthMechanism, ImapEndpoint, Impersonation, TlsMode, read_secret_file,
};

use self::wire::{AppendMessage, ImapConnection, ImapError, ListEntry};
use super::{
    AppendReport, ConnectorError, Fetched, FlagScan, Flags, FolderPath, FolderScan, ItemMeta,
    KeywordPolicy, MailSource, MailTarget, Message, Outgoing, SourceFolder, SourcePosition,
    SpecialUse, TargetFolder, TargetItem, TargetPosition,
};
use crate::connector::oauth::TokenCache;
use crate::connector::throttle::MailboxThrottle;
use mailwave_common::ErrorClass;
use mailwave_common::model::{SourceCursor, TargetMark};
use mailwave_common::text::escape_controls;

/// An authenticated IMAP session with what we learnt about the server.
pub struct Session {
    conn: ImapConnection,
    /// Personal namespace prefix (e.g. `INBOX.` on Courier), stripped from
    /// and added to folder names.
    naming: FolderNaming,
    /// The selected folder, whether it was selected read-write, and the
    /// HIGHESTMODSEQ its selection reported (`None`: `[NOMODSEQ]`).
    selected: Option<(String, bool, Option<u64>)>,
    /// The keywords each folder selected read-write stores, from its
    /// PERMANENTFLAGS.
    keywords: HashMap<String, KeywordPolicy>,
}

/// The class of an IMAP failure (see the error taxonomy).
fn class_of(error: &ImapError) -> ErrorClass {
    let hinted = error.backoff_hint().is_some();
    match error {
        ImapError::Io(_) | ImapError::Timeout(_) | ImapError::Protocol(_) => ErrorClass::Transient,
        ImapError::Tls(_) => ErrorClass::Mailbox,
        ImapError::Bye { .. } if hinted => ErrorClass::Throttled,
        ImapError::Bye { .. } => ErrorClass::Transient,
        ImapError::Bad { .. } => ErrorClass::Item,
        ImapError::No { code, .. } => {
            match code.as_deref().unwrap_or("").to_ascii_uppercase().as_str() {
                "THROTTLED" | "UNAVAILABLE" | "INUSE" | "SERVERBUG" => ErrorClass::Throttled,
                "AUTHENTICATIONFAILED"
                | "AUTHORIZATIONFAILED"
                | "EXPIRED"
                | "PRIVACYREQUIRED"
                | "CONTACTADMIN"
                | "OVERQUOTA"
                | "NOPERM" => ErrorClass::Mailbox,
                _ if hinted => ErrorClass::Throttled,
                _ => ErrorClass::Item,
            }
        }
    }
}

impl From<ImapError> for ConnectorError {
    fn from(error: ImapError) -> Self {
        let class = class_of(&error);
        let retry_after = error
            .backoff_hint()
            .filter(|_| class == ErrorClass::Throttled);
        ConnectorError::classified(class, error.to_string(), retry_after)
    }
}

/// Whether the server says the folder does not exist (servers differ:
/// `[NONEXISTENT]`, `[TRYCREATE]`, or only words, as Dovecot's STATUS).
fn is_missing_folder(error: &ImapError) -> bool {
    let ImapError::No { code, text } = error else {
        return false;
    };
    if let Some(code) = code {
        return code.eq_ignore_ascii_case("NONEXISTENT") || code.eq_ignore_ascii_case("TRYCREATE");
    }
    let text = text.to_ascii_lowercase();
    text.contains("doesn't exist") || text.contains("does not exist") || text.contains("no such")
}

/// Connects and logs in to `mailbox` as the endpoint says (directly, as an
/// impersonating admin, or with an OAuth 2 token).
pub async fn connect(
    endpoint: &ImapEndpoint,
    mailbox: &str,
    mailbox_password: Option<&str>,
    tokens: &TokenCache,
) -> Result<Session, ConnectorError> {
    let options = wire::ConnectOptions {
        host: endpoint.host.clone(),
        port: endpoint.port(),
        tls: match endpoint.tls {
            TlsMode::Implicit => wire::TlsMode::Implicit,
            TlsMode::Starttls => wire::TlsMode::StartTls,
            TlsMode::None => wire::TlsMode::None,
        },
        ca_file: endpoint.ca_file.clone(),
        timeout: Duration::from_secs(endpoint.timeout_secs),
    };
    let where_ = format!("{}:{}", endpoint.host, endpoint.port());
    let mut conn = ImapConnection::connect(&options)
        .await
        .map_err(|e| ConnectorError::from(e).context(format!("connecting to {where_}")))?;
    authenticate(&mut conn, endpoint, mailbox, mailbox_password, tokens)
        .await
        .map_err(|e| e.context(format!("logging in to {where_} for {mailbox}")))?;
    if conn.has_capability("ENABLE") && conn.has_capability("CONDSTORE") {
        conn.enable("CONDSTORE").await?;
    }
    let namespace = if conn.has_capability("NAMESPACE") {
        conn.namespace().await?
    } else {
        None
    };
    let (prefix, mut delimiter) =
        namespace.map_or((String::new(), None), |n| (n.prefix, n.delimiter));
    if delimiter.is_none() {
        // Without NAMESPACE, `LIST "" ""` tells the hierarchy delimiter.
        delimiter = conn
            .list("", "", false)
            .await?
            .iter()
            .find_map(|e| e.delimiter);
    }
    Ok(Session {
        conn,
        naming: FolderNaming { prefix, delimiter },
        selected: None,
        keywords: HashMap::new(),
    })
}

async fn authenticate(
    conn: &mut ImapConnection,
    endpoint: &ImapEndpoint,
    mailbox: &str,
    mailbox_password: Option<&str>,
    tokens: &TokenCache,
) -> Result<(), ConnectorError> {
    let auth_error = |error: ImapError| {
        let error = ConnectorError::from(error);
        if error.class.is_retryable() {
            return error;
        }
        ConnectorError::mailbox(format!("authentication failed: {}", error.message))
    };
    let secret = |what: &str| -> Result<String, ConnectorError> {
        endpoint
            .password()
            .map_err(|e| ConnectorError::mailbox(e.to_string()))?
            .ok_or_else(|| {
                ConnectorError::mailbox(format!(
                    "no password for {what}: set credential, password_env or password_file, or a password column in the CSV"
                ))
            })
    };

    if endpoint.auth == AuthMechanism::Xoauth2 {
        let token = oauth2_token(endpoint, tokens).await?;
        let refused = match conn.authenticate_xoauth2(mailbox, token.secret()).await {
            Ok(()) => return Ok(()),
            Err(refused @ ImapError::No { .. }) => refused,
            Err(error) => return Err(auth_error(error)),
        };
        // A cached token may have expired between its fetch and this login
        // (or been revoked): one new token, one more try.
        let (OAuth2Token::ClientCredentials(stale), Some(client)) = (&token, &endpoint.oauth2)
        else {
            return Err(auth_error(refused));
        };
        tracing::info!(
            mailbox,
            refused = %mailwave_common::text::escape_controls(&refused.to_string()),
            "XOAUTH2 token refused; trying once more with a new one"
        );
        let fresh = tokens.replace_refused(client, stale).await?;
        return conn
            .authenticate_xoauth2(mailbox, fresh.secret())
            .await
            .map_err(auth_error);
    }
    if let Some(admin) = &endpoint.admin_user {
        let password = secret(&format!("admin {admin}"))?;
        return match endpoint.impersonation {
            Impersonation::Authzid => {
                conn.authenticate_plain(Some(mailbox), admin, &password)
                    .await
            }
            Impersonation::Template => {
                let template = endpoint.login_template.as_deref().unwrap_or("{mailbox}");
                let login = template
                    .replace("{mailbox}", mailbox)
                    .replace("{admin}", admin);
                plain_or_login(conn, endpoint.auth, &login, &password).await
            }
        }
        .map_err(auth_error);
    }
    let password = match mailbox_password {
        Some(password) => password.to_owned(),
        None => secret(mailbox)?,
    };
    plain_or_login(conn, endpoint.auth, mailbox, &password)
        .await
        .map_err(auth_error)
}

async fn plain_or_login(
    conn: &mut ImapConnection,
    auth: AuthMechanism,
    user: &str,
    password: &str,
) -> Result<(), ImapError> {
    if auth == AuthMechanism::Login {
        return conn.login(user, password).await;
    }
    conn.authenticate_plain(None, user, password).await
}

/// An XOAUTH2 access token and where it came from.
enum OAuth2Token {
    /// Read from `oauth2_token_file` or printed by `oauth2_token_command`.
    External(String),
    /// Fetched with the endpoint's client credentials (`oauth2` table),
    /// shared by every connection of the process.
    ClientCredentials(crate::connector::oauth::AccessToken),
}

impl OAuth2Token {
    fn secret(&self) -> &str {
        match self {
            OAuth2Token::External(token) => token,
            OAuth2Token::ClientCredentials(token) => token.secret(),
        }
    }
}

/// The access token for a connect: from the process's token cache
/// (refreshed ahead of its expiry), or read afresh from the token file or
/// command (tokens expire).
async fn oauth2_token(
    endpoint: &ImapEndpoint,
    tokens: &TokenCache,
) -> Result<OAuth2Token, ConnectorError> {
    if let Some(client) = &endpoint.oauth2 {
        let token = tokens.token(client).await?;
        return Ok(OAuth2Token::ClientCredentials(token));
    }
    if let Some(path) = &endpoint.oauth2_token_file {
        return read_secret_file(path)
            .map(OAuth2Token::External)
            .map_err(|e| ConnectorError::mailbox(e.to_string()));
    }
    let Some(command) = &endpoint.oauth2_token_command else {
        return Err(ConnectorError::mailbox(
            "xoauth2 needs oauth2_token_file, oauth2_token_command or an oauth2 table",
        ));
    };
    let output = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .output()
        .await
        .map_err(|e| ConnectorError::transient(format!("oauth2_token_command: {e}")))?;
    if !output.status.success() {
        return Err(ConnectorError::transient(format!(
            "oauth2_token_command exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(OAuth2Token::External(
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
    ))
}

/// A look-alike for a hierarchy separator inside a folder level, so that a
/// source folder `a/b` never becomes the sub-folder `b` of `a`.
fn separator_lookalike(separator: char) -> char {
    match separator {
        '/' => '\u{2215}',  // DIVISION SLASH
        '.' => '\u{2024}',  // ONE DOT LEADER
        '\\' => '\u{29F5}', // REVERSE SOLIDUS OPERATOR
        _ => '_',
    }
}

/// How one server names folders: its personal namespace prefix and its
/// hierarchy delimiter.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FolderNaming {
    /// Stripped from and added to folder names (e.g. `INBOX.` on Courier).
    prefix: String,
    delimiter: Option<char>,
}

impl FolderNaming {
    /// The levels of a server folder name, decoded.
    fn path_of(&self, entry: &ListEntry) -> FolderPath {
        if entry.name.eq_ignore_ascii_case("INBOX") {
            return FolderPath::inbox();
        }
        // `INBOX.` and `inbox.` are the same prefix (INBOX has no case).
        let has_prefix = entry
            .name
            .get(..self.prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(&self.prefix));
        let relative = if has_prefix {
            &entry.name[self.prefix.len()..]
        } else {
            entry.name.as_str()
        };
        let levels: Vec<&str> = match entry.delimiter.or(self.delimiter) {
            Some(delimiter) => relative.split(delimiter).collect(),
            None => vec![relative],
        };
        FolderPath(
            levels
                .into_iter()
                .map(|level| wire::decode_mutf7(level).unwrap_or_else(|_| level.to_owned()))
                .collect(),
        )
    }

    /// The server's name for a folder path.
    fn name_of(&self, path: &FolderPath) -> String {
        if path.is_inbox() {
            return "INBOX".into();
        }
        let delimiter = self.delimiter.unwrap_or('/');
        let levels: Vec<String> = path
            .0
            .iter()
            .map(|level| {
                let safe: String = level
                    .chars()
                    .map(|c| {
                        if c == delimiter {
                            separator_lookalike(c)
                        } else {
                            c
                        }
                    })
                    .collect();
                wire::encode_mutf7(&safe)
            })
            .collect();
        format!("{}{}", self.prefix, levels.join(&delimiter.to_string()))
    }
}

impl Session {
    async fn list(&mut self) -> Result<Vec<ListEntry>, ConnectorError> {
        let special_use = self.conn.has_capability("SPECIAL-USE");
        let entries = self.conn.list("", "*", special_use).await?;
        Ok(entries
            .into_iter()
            .filter(|e| !e.has_attribute("\\Noselect") && !e.has_attribute("\\NonExistent"))
            .collect())
    }

    /// The folders the user subscribed to (LSUB), by [`subscription_key`].
    async fn subscribed(&mut self) -> Result<HashSet<String>, ConnectorError> {
        let entries = self.conn.lsub("", "*").await?;
        Ok(entries
            .iter()
            .map(|entry| subscription_key(&entry.name))
            .collect())
    }

    fn role_of(entry: &ListEntry) -> Option<SpecialUse> {
        entry
            .attributes
            .iter()
            .find_map(|a| SpecialUse::from_attribute(a))
    }

    /// Selects `folder` (read-only unless `write`), unless it already is.
    /// Selects `folder` (unless it is already, writable if `write` asks);
    /// the HIGHESTMODSEQ the selection reported, `None` when the server
    /// keeps no permanent modseqs for it now.
    async fn select(&mut self, folder: &str, write: bool) -> Result<Option<u64>, ConnectorError> {
        if let Some((selected, rw, modseq)) = &self.selected
            && selected == folder
            && (*rw || !write)
        {
            return Ok(*modseq);
        }
        self.selected = None;
        let info = if write {
            self.conn.select(folder).await?
        } else {
            self.conn.examine(folder).await?
        };
        self.selected = Some((folder.to_owned(), write, info.highest_modseq));
        if write {
            let policy = KeywordPolicy::from_permanent_flags(info.permanent_flags.as_deref());
            self.keywords.insert(folder.to_owned(), policy);
        }
        Ok(info.highest_modseq)
    }
}

/// A folder name as compared between LIST and LSUB (INBOX has no case).
fn subscription_key(name: &str) -> String {
    if name.eq_ignore_ascii_case("INBOX") {
        return "INBOX".into();
    }
    name.to_owned()
}

/// The most bytes accepted for a message the server said is `size` bytes
/// long: servers' RFC822.SIZE is not always exact (line ends, re-rendering),
/// but a body far beyond it is hostile and must not be read.
fn body_allowance(size: u64) -> usize {
    const SLACK: u64 = 64 * 1024;
    usize::try_from(size.saturating_add(size / 4).saturating_add(SLACK)).unwrap_or(usize::MAX)
}

fn item_meta(meta: wire::MessageMeta) -> ItemMeta {
    ItemMeta {
        item: meta.uid.to_string(),
        uid: Some(meta.uid),
        size: Some(meta.size),
        flags: Flags::from_iter(&meta.flags),
        internal_date: internal_date(meta.uid, &meta.internal_date),
        identity: None,
        version: None,
    }
}

/// The `chrono` format of an IMAP date-time, as in `21-Nov-2026 14:53:20 +0000`.
const IMAP_DATE: &str = "%d-%b-%Y %H:%M:%S %z";

/// The INTERNALDATE the server sent for `uid`, in its zone. One that does
/// not parse is logged, naming the message, and left out: the copy is made
/// and the target dates it.
fn internal_date(uid: u32, text: &str) -> Option<DateTime<FixedOffset>> {
    match DateTime::parse_from_str(text.trim(), IMAP_DATE) {
        Ok(date) => Some(date),
        Err(error) => {
            tracing::warn!(uid, date = %escape_controls(text), %error,
                "INTERNALDATE does not parse; the copy is dated by the target");
            None
        }
    }
}

/// The IMAP source's cursor of a folder: its HIGHESTMODSEQ (CONDSTORE).
#[derive(serde::Serialize, serde::Deserialize)]
struct ImapCursor {
    highest_modseq: u64,
}

impl ImapCursor {
    fn encode(highest_modseq: u64) -> SourceCursor {
        let cursor = serde_json::to_string(&ImapCursor { highest_modseq });
        SourceCursor::new(cursor.expect("a number serialises"))
    }

    /// The HIGHESTMODSEQ of a cursor this connector wrote; `None` for any
    /// other (flags are then compared in full).
    fn decode(cursor: &SourceCursor) -> Option<u64> {
        let decoded = serde_json::from_str::<ImapCursor>(cursor.as_str());
        decoded.ok().map(|c| c.highest_modseq)
    }
}

/// The IMAP target's mark of a folder: its UIDNEXT.
#[derive(serde::Serialize, serde::Deserialize)]
struct ImapMark {
    uid_next: u32,
}

impl ImapMark {
    fn encode(uid_next: u32) -> TargetMark {
        let mark = serde_json::to_string(&ImapMark { uid_next });
        TargetMark::new(mark.expect("a number serialises"))
    }

    /// The UIDNEXT of a mark this connector wrote, or of a checkpoint from
    /// before marks were the connectors' own (the bare number). Any other
    /// mark is no position here: every message is looked at.
    fn decode(mark: &TargetMark) -> u32 {
        let text = mark.as_str();
        if let Ok(mark) = serde_json::from_str::<ImapMark>(text) {
            return mark.uid_next;
        }
        text.parse().unwrap_or_else(|_| {
            tracing::warn!(mark = %escape_controls(text),
                "not an IMAP target mark; looking for in-doubt copies in the whole folder");
            1
        })
    }
}

/// Reads a mailbox over IMAP.
pub struct ImapSource {
    session: Session,
    /// Every command goes through the mailbox's scheduler.
    throttle: MailboxThrottle,
}

impl ImapSource {
    /// Reads through `session`, its commands scheduled by `throttle`.
    pub fn new(session: Session, throttle: MailboxThrottle) -> ImapSource {
        ImapSource { session, throttle }
    }

    async fn list_items(
        &mut self,
        folder: &str,
        from_uid: u32,
    ) -> Result<Vec<ItemMeta>, ConnectorError> {
        self.session.select(folder, false).await?;
        let metas = self
            .session
            .conn
            .fetch_meta(&format!("{from_uid}:*"), None)
            .await?;
        let mut items: Vec<ItemMeta> = metas
            .into_iter()
            .filter(|m| m.uid >= from_uid)
            .map(item_meta)
            .collect();
        items.sort_by_key(|i| i.uid);
        Ok(items)
    }

    /// Fetches the bodies of `items` (in the selected folder). A batch the
    /// server refuses (tagged NO or BAD) is split in halves until the
    /// refused items are found alone; they come back with their reasons.
    async fn fetch_bisecting(
        &mut self,
        items: &[ItemMeta],
    ) -> Result<(Vec<wire::FetchedMessage>, Vec<(String, ConnectorError)>), ConnectorError> {
        let mut given = Vec::with_capacity(items.len());
        let mut refused = Vec::new();
        let mut pending = vec![items];
        while let Some(part) = pending.pop() {
            let uids: Vec<u32> = part.iter().filter_map(|i| i.uid).collect();
            let allowance = part.iter().filter_map(|i| i.size).map(body_allowance).max();
            let result = self
                .session
                .conn
                .fetch_bodies(&uids, allowance.unwrap_or_default())
                .await;
            match result {
                Ok(messages) => given.extend(messages),
                Err(error) if class_of(&error) != ErrorClass::Item => return Err(error.into()),
                Err(error) => match part {
                    [item] => refused.push((
                        item.item.clone(),
                        ConnectorError::from(error).context(format!("UID {}", item.item)),
                    )),
                    _ => {
                        let (first, second) = part.split_at(part.len() / 2);
                        pending.push(second);
                        pending.push(first);
                    }
                },
            }
        }
        Ok((given, refused))
    }

    /// Of `uids`, those the selected folder still holds (`UID SEARCH UID`).
    async fn still_there(&mut self, uids: &[u32]) -> Result<HashSet<u32>, ConnectorError> {
        if uids.is_empty() {
            return Ok(HashSet::new());
        }
        let found = self
            .session
            .conn
            .search(&format!("UID {}", wire::uid_set(uids)))
            .await?;
        Ok(found.into_iter().collect())
    }
}

#[async_trait]
impl MailSource for ImapSource {
    async fn folders(&mut self) -> Result<Vec<SourceFolder>, ConnectorError> {
        let throttle = self.throttle.clone();
        throttle
            .run(async {
                let entries = self.session.list().await?;
                let subscribed = self.session.subscribed().await?;
                Ok(entries
                    .iter()
                    .map(|entry| SourceFolder {
                        key: entry.name.clone(),
                        path: self.session.naming.path_of(entry),
                        special: Session::role_of(entry),
                        class: None,
                        subscribed: subscribed.contains(&subscription_key(&entry.name)),
                    })
                    .collect())
            })
            .await
    }

    async fn scan(
        &mut self,
        folder: &SourceFolder,
        position: Option<SourcePosition<'_>>,
    ) -> Result<FolderScan, ConnectorError> {
        let throttle = self.throttle.clone();
        throttle
            .run(async {
                let status = self.session.conn.status(&folder.key).await?;
                let validity = status.uid_validity.ok_or_else(|| {
                    ConnectorError::transient(format!("{}: server gave no UIDVALIDITY", folder.key))
                })?;
                let mut scan = FolderScan {
                    validity,
                    cursor: status.highest_modseq.map(ImapCursor::encode),
                    ..FolderScan::default()
                };
                let Some(checkpoint) = position else {
                    if status.messages != Some(0) {
                        scan.candidates = self.list_items(&folder.key, 1).await?;
                    }
                    return Ok(scan);
                };
                if checkpoint.validity != validity {
                    scan.candidates = self.list_items(&folder.key, 1).await?;
                    scan.complete = true;
                    return Ok(scan);
                }
                let hwm = checkpoint.high_water_mark;
                let has_new = status
                    .uid_next
                    .is_none_or(|next| next > hwm.saturating_add(1));
                if has_new && status.messages != Some(0) {
                    scan.candidates = self.list_items(&folder.key, hwm.saturating_add(1)).await?;
                }
                if hwm == 0 {
                    return Ok(scan);
                }
                let copied = format!("1:{hwm}");
                let before = checkpoint.cursor.and_then(ImapCursor::decode);
                scan.flags = match (before, status.highest_modseq) {
                    (Some(before), Some(now)) if before == now => FlagScan::Unchanged,
                    // STATUS may report a HIGHESTMODSEQ that the selection
                    // then withdraws (`[NOMODSEQ]`: Dovecot after an index
                    // failure): then only reading every flag is sound, and
                    // no cursor is kept.
                    (Some(before), Some(_)) => match self.session.select(&folder.key, false).await? {
                        Some(_) => {
                            let changed =
                                self.session.conn.fetch_flags(&copied, Some(before)).await?;
                            FlagScan::Changed(to_flag_list(changed, hwm))
                        }
                        None => {
                            tracing::warn!(folder = %folder.key,
                                "the server withdrew its modseqs on SELECT ([NOMODSEQ]); reading every flag");
                            scan.cursor = None;
                            let all = self.session.conn.fetch_flags(&copied, None).await?;
                            FlagScan::All(to_flag_list(all, hwm))
                        }
                    },
                    _ => {
                        if self.session.select(&folder.key, false).await?.is_none() {
                            scan.cursor = None;
                        }
                        let all = self.session.conn.fetch_flags(&copied, None).await?;
                        FlagScan::All(to_flag_list(all, hwm))
                    }
                };
                Ok(scan)
            })
            .await
    }

    async fn fetch(
        &mut self,
        folder: &SourceFolder,
        items: &[ItemMeta],
    ) -> Result<Fetched, ConnectorError> {
        let throttle = self.throttle.clone();
        throttle
            .run(async {
                self.session.select(&folder.key, false).await?;
                let (given, refused) = self.fetch_bisecting(items).await?;
                let mut given: HashMap<String, wire::FetchedMessage> =
                    given.into_iter().map(|m| (m.uid.to_string(), m)).collect();
                let refused_items: HashSet<String> =
                    refused.iter().map(|(item, _)| item.clone()).collect();
                // Not given and not refused: gone only if the server confirms it.
                let missing: Vec<u32> = items
                    .iter()
                    .filter(|i| !given.contains_key(&i.item) && !refused_items.contains(&i.item))
                    .filter_map(|i| i.uid)
                    .collect();
                let still_there = self.still_there(&missing).await?;
                if let Some(uid) = missing.iter().find(|uid| still_there.contains(uid)) {
                    return Err(ConnectorError::transient(format!(
                        "{}: the server did not give the body of UID {uid} (BODY[] NIL or left out) though it still holds it",
                        folder.key
                    )));
                }
                let mut result = Fetched {
                    refused,
                    ..Fetched::default()
                };
                for item in items {
                    if refused_items.contains(&item.item) {
                        continue;
                    }
                    let Some(message) = given.remove(&item.item) else {
                        result.gone.push(item.item.clone());
                        continue;
                    };
                    let date = message.internal_date.as_deref();
                    result.messages.push(Message {
                        meta: ItemMeta {
                            size: Some(message.body.len() as u64),
                            flags: message
                                .flags
                                .map_or_else(|| item.flags.clone(), Flags::from_iter),
                            internal_date: date
                                .and_then(|date| internal_date(message.uid, date))
                                .or(item.internal_date),
                            ..item.clone()
                        },
                        body: message.body,
                    });
                }
                Ok(result)
            })
            .await
    }

    async fn fetch_headers(
        &mut self,
        folder: &SourceFolder,
        items: &[ItemMeta],
    ) -> Result<Vec<(String, bytes::Bytes)>, ConnectorError> {
        let throttle = self.throttle.clone();
        throttle
            .run(async {
                if items.is_empty() {
                    return Ok(Vec::new());
                }
                self.session.select(&folder.key, false).await?;
                let uids: Vec<u32> = items.iter().filter_map(|i| i.uid).collect();
                let headers = self
                    .session
                    .conn
                    .fetch_headers(&wire::uid_set(&uids))
                    .await?;
                Ok(headers
                    .into_iter()
                    .map(|(uid, _, header)| (uid.to_string(), header))
                    .collect())
            })
            .await
    }

    async fn close(self: Box<Self>) {
        let _ = self.session.conn.logout().await;
    }
}

fn to_flag_list(flags: Vec<(u32, Vec<String>)>, hwm: u32) -> Vec<(String, Flags)> {
    flags
        .into_iter()
        .filter(|(uid, _)| *uid <= hwm)
        .map(|(uid, flags)| (uid.to_string(), Flags::from_iter(&flags)))
        .collect()
}

/// Writes a mailbox over IMAP.
pub struct ImapTarget {
    session: Session,
    /// Every command goes through the mailbox's scheduler.
    throttle: MailboxThrottle,
}

impl ImapTarget {
    /// Writes through `session`, its commands scheduled by `throttle`.
    pub fn new(session: Session, throttle: MailboxThrottle) -> ImapTarget {
        ImapTarget { session, throttle }
    }

    /// The folder's UIDNEXT. Also called inside other commands, so it does
    /// not take a slot of the scheduler itself (nor does `messages_since`).
    async fn uid_next(&mut self, folder: &str) -> Result<u32, ConnectorError> {
        let status = self.session.conn.status(folder).await?;
        status
            .uid_next
            .ok_or_else(|| ConnectorError::transient(format!("{folder}: server gave no UIDNEXT")))
    }

    /// The messages at or past UID `mark` whose header key is `wanted`,
    /// with their identities (read whole: only those).
    async fn messages_since(
        &mut self,
        folder: &str,
        mark: u32,
        wanted: &HashSet<String>,
    ) -> Result<Vec<TargetItem>, ConnectorError> {
        let mark = mark.max(1);
        let status = match self.session.conn.status(folder).await {
            // A folder deleted in the target holds no in-doubt copies; the
            // next APPEND creates it again.
            Err(error) if is_missing_folder(&error) => return Ok(Vec::new()),
            result => result?,
        };
        if status.uid_next.is_some_and(|next| next <= mark) || status.messages == Some(0) {
            return Ok(Vec::new());
        }
        self.session.select(folder, false).await?;
        let headers = self
            .session
            .conn
            .fetch_headers(&format!("{mark}:*"))
            .await?;
        let (worth_reading, sizes): (Vec<u32>, Vec<u64>) = headers
            .into_iter()
            .filter(|(uid, _, header)| *uid >= mark && wanted.contains(&super::header_key(header)))
            .map(|(uid, size, _)| (uid, size))
            .unzip();
        let Some(largest) = sizes.into_iter().max() else {
            return Ok(Vec::new());
        };
        Ok(self
            .session
            .conn
            .fetch_bodies(&worth_reading, body_allowance(largest))
            .await?
            .into_iter()
            .map(|message| TargetItem {
                id: message.uid.to_string(),
                identity: super::Identity::of(&message.body),
            })
            .collect())
    }

    /// APPEND, re-creating the folder once if the server says it is gone
    /// (`[TRYCREATE]`: deleted in the target between two passes).
    async fn append_wire(
        &mut self,
        folder: &str,
        messages: &[AppendMessage],
    ) -> Result<wire::AppendOutcome, ImapError> {
        match self.session.conn.append(folder, messages).await {
            Err(ImapError::No {
                code: Some(code), ..
            }) if code.eq_ignore_ascii_case("TRYCREATE") => {
                tracing::warn!(
                    folder = %mailwave_common::text::escape_controls(folder),
                    "target folder is gone; creating it again"
                );
                self.session.conn.create(folder).await?;
                self.session.conn.append(folder, messages).await
            }
            result => result,
        }
    }

    /// Appends one message at a time: for servers without MULTIAPPEND, and
    /// to find which message of a refused batch is the bad one.
    async fn append_each(
        &mut self,
        folder: &str,
        messages: &[AppendMessage],
    ) -> Result<Vec<Result<Option<String>, ConnectorError>>, ConnectorError> {
        let mut results = Vec::with_capacity(messages.len());
        for message in messages {
            match self
                .append_wire(folder, std::slice::from_ref(message))
                .await
            {
                Ok(outcome) => results.push(Ok(outcome
                    .uids
                    .and_then(|uids| uids.first().map(u32::to_string)))),
                Err(error) => {
                    let error = ConnectorError::from(error);
                    if error.class != ErrorClass::Item {
                        return Err(error);
                    }
                    results.push(Err(error));
                }
            }
        }
        Ok(results)
    }
}

#[async_trait]
impl MailTarget for ImapTarget {
    async fn folders(&mut self) -> Result<Vec<TargetFolder>, ConnectorError> {
        let throttle = self.throttle.clone();
        throttle
            .run(async {
                let entries = self.session.list().await?;
                Ok(entries
                    .iter()
                    .map(|entry| TargetFolder {
                        name: entry.name.clone(),
                        path: self.session.naming.path_of(entry),
                        special: Session::role_of(entry),
                    })
                    .collect())
            })
            .await
    }

    async fn ensure_folder(
        &mut self,
        path: &FolderPath,
        special: Option<SpecialUse>,
        _class: Option<&str>,
    ) -> Result<TargetFolder, ConnectorError> {
        let throttle = self.throttle.clone();
        throttle
            .run(async {
                let name = self.session.naming.name_of(path);
                if !path.is_inbox() {
                    match self.session.conn.create(&name).await {
                        Ok(()) => {}
                        Err(ImapError::No { code, text })
                            if code.as_deref() == Some("ALREADYEXISTS")
                                || text.to_ascii_lowercase().contains("exists") => {}
                        Err(error) => {
                            return Err(ConnectorError::from(error)
                                .context(format!("creating folder {path} as {name:?}")));
                        }
                    }
                }
                Ok(TargetFolder {
                    name,
                    path: path.clone(),
                    special,
                })
            })
            .await
    }

    async fn mark(&mut self, folder: &str) -> Result<TargetPosition, ConnectorError> {
        let throttle = self.throttle.clone();
        throttle
            .run(async {
                let status = match self.session.conn.status(folder).await {
                    // Deleted in the target since the last pass: created
                    // again, with a new UIDVALIDITY the engine notices.
                    Err(error) if is_missing_folder(&error) => {
                        tracing::warn!(folder = %mailwave_common::text::escape_controls(folder),
                            "target folder is gone; creating it again");
                        self.session.conn.create(folder).await?;
                        self.session.conn.status(folder).await?
                    }
                    result => result?,
                };
                let next = status.uid_next.ok_or_else(|| {
                    ConnectorError::transient(format!("{folder}: server gave no UIDNEXT"))
                })?;
                Ok(TargetPosition {
                    mark: ImapMark::encode(next),
                    validity: status.uid_validity,
                })
            })
            .await
    }

    async fn items_since(
        &mut self,
        folder: &str,
        mark: Option<&TargetMark>,
        wanted: &HashSet<String>,
    ) -> Result<Vec<TargetItem>, ConnectorError> {
        let from = mark.map_or(1, ImapMark::decode);
        let throttle = self.throttle.clone();
        throttle
            .run(self.messages_since(folder, from, wanted))
            .await
    }

    async fn append(
        &mut self,
        folder: &str,
        messages: &[Outgoing],
    ) -> Result<AppendReport, ConnectorError> {
        let throttle = self.throttle.clone();
        throttle
            .run(async {
                let wire_messages: Vec<AppendMessage> = messages
                    .iter()
                    .map(|m| AppendMessage {
                        flags: m.flags.iter().map(str::to_owned).collect(),
                        internal_date: m.internal_date.map(|d| d.format(IMAP_DATE).to_string()),
                        body: m.body.clone(),
                    })
                    .collect();
                let uidplus = self.session.conn.has_capability("UIDPLUS");
                let mark_before = if uidplus {
                    None
                } else {
                    Some(self.uid_next(folder).await?)
                };

                let mut results =
                    if self.session.conn.has_capability("MULTIAPPEND") && messages.len() > 1 {
                        match self.append_wire(folder, &wire_messages).await {
                            Ok(outcome) => match outcome.uids {
                                Some(uids) if uids.len() == messages.len() => {
                                    uids.iter().map(|uid| Ok(Some(uid.to_string()))).collect()
                                }
                                _ => vec![Ok(None); messages.len()].into_iter().collect(),
                            },
                            // A refused MULTIAPPEND appends nothing (RFC 3502): find the
                            // bad message by appending one at a time.
                            Err(error) if class_of(&error) == ErrorClass::Item => {
                                self.append_each(folder, &wire_messages).await?
                            }
                            Err(error) => return Err(error.into()),
                        }
                    } else {
                        self.append_each(folder, &wire_messages).await?
                    };

                let mark_after = if let Some(before) = mark_before {
                    // No UIDPLUS: find the new copies' UIDs by their identities.
                    let identities: Vec<super::Identity> = messages
                        .iter()
                        .map(|m| super::Identity::of(&m.body))
                        .collect();
                    let wanted = identities.iter().map(|i| i.header_key.clone()).collect();
                    let mut found: HashMap<super::Identity, Vec<String>> = HashMap::new();
                    for item in self
                        .messages_since(folder, before, &wanted)
                        .await?
                        .into_iter()
                        .rev()
                    {
                        found.entry(item.identity).or_default().push(item.id);
                    }
                    for (identity, result) in identities.iter().zip(results.iter_mut()) {
                        if let Ok(id @ None) = result {
                            *id = found.get_mut(identity).and_then(Vec::pop);
                        }
                    }
                    Some(self.uid_next(folder).await?)
                } else {
                    results
                        .iter()
                        .filter_map(|r| {
                            r.as_ref()
                                .ok()
                                .and_then(|id| id.as_deref()?.parse::<u32>().ok())
                        })
                        .max()
                        .map(|uid| uid.saturating_add(1))
                };
                let mark_after = mark_after.map(ImapMark::encode);
                Ok(AppendReport {
                    results,
                    mark_after,
                    ..AppendReport::default()
                })
            })
            .await
    }

    /// From the folder's PERMANENTFLAGS, learnt by selecting it once.
    async fn keyword_policy(&mut self, folder: &str) -> Result<KeywordPolicy, ConnectorError> {
        if let Some(policy) = self.session.keywords.get(folder) {
            return Ok(policy.clone());
        }
        let throttle = self.throttle.clone();
        throttle
            .run(async {
                self.session.select(folder, true).await?;
                Ok(self
                    .session
                    .keywords
                    .get(folder)
                    .cloned()
                    .unwrap_or_default())
            })
            .await
    }

    async fn subscribe(&mut self, folder: &str) -> Result<(), ConnectorError> {
        let throttle = self.throttle.clone();
        throttle
            .run(async {
                self.session.conn.subscribe(folder).await?;
                Ok(())
            })
            .await
    }

    async fn set_flags(
        &mut self,
        folder: &str,
        changes: &[(String, Flags)],
    ) -> Result<(), ConnectorError> {
        let throttle = self.throttle.clone();
        throttle
            .run(async {
                self.session.select(folder, true).await?;
                let mut by_flags: HashMap<String, (Vec<String>, Vec<u32>)> = HashMap::new();
                for (id, flags) in changes {
                    let Ok(uid) = id.parse::<u32>() else { continue };
                    by_flags
                        .entry(flags.to_string())
                        .or_insert_with(|| (flags.iter().map(str::to_owned).collect(), Vec::new()))
                        .1
                        .push(uid);
                }
                for (flags, mut uids) in by_flags.into_values() {
                    uids.sort_unstable();
                    self.session
                        .conn
                        .store_flags(&wire::uid_set(&uids), &flags)
                        .await?;
                }
                Ok(())
            })
            .await
    }

    async fn close(self: Box<Self>) {
        let _ = self.session.conn.logout().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_dates_keep_their_zone_and_a_bad_one_keeps_the_item() {
        let date = internal_date(1, " 3-Dec-2026 10:00:00 +0100").expect("parses");
        assert_eq!(date.offset().local_minus_utc(), 3600);
        assert_eq!(
            date.format(IMAP_DATE).to_string(),
            "03-Dec-2026 10:00:00 +0100"
        );
        let meta = item_meta(wire::MessageMeta {
            uid: 7,
            size: 0,
            flags: Vec::new(),
            internal_date: "yesterday".into(),
            modseq: None,
        });
        assert_eq!(
            (meta.item.as_str(), meta.uid, meta.size, meta.internal_date),
            ("7", Some(7), Some(0), None),
            "an empty message with an unreadable date is still listed"
        );
    }

    #[test]
    fn cursors_and_marks_are_the_connectors_own_and_old_marks_still_read() {
        assert_eq!(ImapCursor::decode(&ImapCursor::encode(41)), Some(41));
        let graph_cursor = SourceCursor::new(r#"{"delta_link":"https://x"}"#.into());
        assert_eq!(ImapCursor::decode(&graph_cursor), None);
        assert_eq!(ImapMark::decode(&ImapMark::encode(104)), 104);
        // Checkpoints from before the connectors owned their marks: UIDNEXT.
        assert_eq!(ImapMark::decode(&TargetMark::new("104".into())), 104);
        assert_eq!(ImapMark::decode(&TargetMark::new("{}".into())), 1);
    }

    fn entry(name: &str, delimiter: char) -> ListEntry {
        ListEntry {
            name: name.into(),
            delimiter: Some(delimiter),
            attributes: Vec::new(),
        }
    }

    fn path(levels: &[&str]) -> FolderPath {
        FolderPath(levels.iter().map(|l| l.to_string()).collect())
    }

    #[test]
    fn a_namespace_prefix_is_stripped_and_added() {
        let courier = FolderNaming {
            prefix: "INBOX.".into(),
            delimiter: Some('.'),
        };
        assert_eq!(courier.path_of(&entry("INBOX", '.')), FolderPath::inbox());
        assert_eq!(courier.path_of(&entry("INBOX.Sent", '.')), path(&["Sent"]));
        assert_eq!(courier.path_of(&entry("inbox.Sent", '.')), path(&["Sent"]));
        assert_eq!(
            courier.path_of(&entry("INBOX.Projecten.&ANw-berpr&APw-fung", '.')),
            path(&["Projecten", "Überprüfung"])
        );
        assert_eq!(courier.name_of(&path(&["Sent"])), "INBOX.Sent");
        assert_eq!(courier.name_of(&FolderPath::inbox()), "INBOX");
        assert_eq!(
            courier.name_of(&path(&["Projecten", "Überprüfung"])),
            "INBOX.Projecten.&ANw-berpr&APw-fung"
        );
    }

    #[test]
    fn a_delimiter_inside_a_level_never_makes_a_sub_folder() {
        let dotted = FolderNaming {
            prefix: String::new(),
            delimiter: Some('.'),
        };
        let slashed = FolderNaming {
            prefix: String::new(),
            delimiter: Some('/'),
        };
        let version = dotted.path_of(&entry("v1/2", '.'));
        assert_eq!(version, path(&["v1/2"]));
        // On the wire the look-alike is in modified UTF-7.
        assert_eq!(slashed.name_of(&version), wire::encode_mutf7("v1\u{2215}2"));
        assert_eq!(slashed.name_of(&version), "v1&IhU-2");
        assert_eq!(
            dotted.name_of(&path(&["v1.2", "notes"])),
            format!("{}.notes", wire::encode_mutf7("v1\u{2024}2"))
        );
        assert_eq!(slashed.name_of(&path(&["v1.2", "notes"])), "v1.2/notes");
    }

    #[test]
    fn imap_failures_are_classified() {
        let no = |code: Option<&str>, text: &str| ImapError::No {
            code: code.map(str::to_owned),
            text: text.into(),
        };
        assert_eq!(
            class_of(&no(Some("AUTHENTICATIONFAILED"), "bad")),
            ErrorClass::Mailbox
        );
        assert_eq!(
            class_of(&no(Some("OVERQUOTA"), "full")),
            ErrorClass::Mailbox
        );
        assert_eq!(class_of(&no(Some("LIMIT"), "too big")), ErrorClass::Item);
        assert_eq!(
            class_of(&no(Some("THROTTLED"), "slow down")),
            ErrorClass::Throttled
        );
        let hinted = ConnectorError::from(no(None, "busy. Suggested Backoff Time: 1500 ms"));
        assert_eq!(hinted.class, ErrorClass::Throttled);
        assert_eq!(hinted.retry_after, Some(Duration::from_millis(1500)));
        assert_eq!(
            class_of(&ImapError::Timeout(Duration::from_secs(1))),
            ErrorClass::Transient
        );
        assert!(is_missing_folder(&no(None, "Mailbox doesn't exist: X")));
        assert!(is_missing_folder(&no(Some("TRYCREATE"), "create it")));
        assert!(!is_missing_folder(&no(
            Some("ALREADYEXISTS"),
            "Mailbox already exists"
        )));
    }
}
