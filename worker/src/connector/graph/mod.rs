//! Exchange Online through Microsoft Graph. What an item is on the way
//! depends on the pair of endpoints, chosen in one place
//! (`job::EndpointConnector::source`):
//!
//! - **Exchange to Exchange** (tenant to tenant), this module: the mailbox
//!   import/export API. Items leave the source as Exchange's opaque
//!   full-fidelity export stream and enter the target unchanged, so mail,
//!   calendars, contacts and tasks move with every property.
//! - **Exchange to anything else** (IMAP, Maildir), [`mail`]: the mail API.
//!   Messages leave as MIME with their read state, follow-up flag and
//!   received date; calendars, contacts and tasks stay behind.
//!
//! What follows describes the import/export side; both sides share the
//! client, the throttling, the folder walk and the delta scans.
//!
//! # Folders
//! The folder tree comes from `/admin/exchange/mailboxes/{id}/folders` and
//! `childFolders`; a folder's key is its id (immutable), its path the chain
//! of display names. Target folders are created with the source folder's
//! `type` (`IPF.Note`, `IPF.Appointment`, `IPF.Contact`, `IPF.Task`, …).
//! Well-known folders (`wellKnownName`: inbox, calendar, contacts, …, see
//! [`WELL_KNOWN_ROLES`]) have a role on both sides, so that they and the
//! folders below them land in the target's folder of the same role whatever
//! the language of either mailbox (`engine::folders`). The listing also
//! holds search folders (told apart by `PidTagFolderType`, asked for with
//! `$expand`) and Exchange's system folders: search folders, the search
//! folders' folder and the well-known folders of `skip_folders` are left
//! out with everything below them. A folder listed twice (on two pages, or
//! twice on one) is taken once.
//!
//! # Items and delta passes
//! A folder's items are listed with item delta; the delta link is the
//! folder checkpoint's sync state, so a later pass asks only for what
//! changed. Every GET asks for pages of 1,000 (`Prefer:
//! odata.maxpagesize`; the service's default is 10) and item delta selects
//! the size and the `changeKey` only. A delta link the server forgot (`410 Gone`, or a 40x with
//! `syncStateNotFound`, `resyncRequired` or `SyncStateInvalid`) restarts the folder
//! from a full delta listing: what the ledger holds is left out, nothing is
//! imported twice. Items leave in `exportItems` requests of at most 20 items
//! and 4 MiB (listed sizes; the answer carries them base64-encoded) and are
//! imported one by one (several at a time, within the mailbox's throttle
//! window, the next one the first of the batch that fits the mailbox's
//! upload window: [`send_fitting`]) through an import session renewed
//! before it expires. Ids are
//! immutable ids (`Prefer: IdType="ImmutableId"`) everywhere.
//!
//! # Changed items
//! Delta lists an item again when it changed (read, flagged, edited), with
//! a new `changeKey`; its export gives the `changeKey` of the data
//! exported, the engine's source version of the item. An import answers
//! the new item's `itemId` and `changeKey`, which the ledger keeps. A
//! changed item is exported again and imported with `Mode: "update"`, the
//! copy's `ItemId` and `ChangeKey`: the copy is replaced in place, never
//! duplicated. The update carries the whole item, so it is resent after a
//! passing failure. A `409 ErrorIrresolvableConflict` (the copy changed
//! on the target: a user's edit, or an update whose answer was lost) gets
//! the copy's current `changeKey` read and the update sent once more: the
//! source is authoritative until the cutover (`update_one`).
//!
//! Every item asked of `exportItems` is accounted for: an entry with
//! `data` is the item; an `error` (`errorCode`, `message`) of
//! `ErrorItemNotFound` means it is gone; one of a passing condition of the
//! server (`ErrorServerBusy`, `ErrorMailboxStoreUnavailable`, …) fails the
//! fetch, so the pass retries from its checkpoint and the delta link never
//! moves past the item; any other error is that item's recorded failure,
//! with the server's code and message; an entry not understood is an error.
//!
//! # In-doubt imports
//! `importItem` is a create that takes no idempotency key: it is never
//! sent again after an answer that may hide an imported item (a 5xx, a
//! timeout: see [`client`]); the pass restarts and the engine's in-doubt
//! path decides. Exchange recreates an imported item (its export stream is
//! not the bytes imported, its timestamps are new), so items are told by
//! what a full-fidelity copy keeps: the source lists each candidate's
//! PidTagSearchKey (`Binary 0x300B`), else its PidTagInternetMessageId
//! (`String 0x1035`), with `$expand=singleValueExtendedProperties(…)`
//! (item delta does not expand: a listing with `$filter` on
//! `lastModifiedDateTime` from the earliest candidate gives them), and
//! that key is the item's [`Identity`] in the write-ahead intents. The
//! target's mark is the server's clock (the `Date` of its answers) less a
//! margin; its `items_since` lists the target folder with a `$filter` from
//! the mark and the same `$expand`, and builds the same identities; the
//! engine matches them as multisets. An item with neither key keeps the
//! identity of its export bytes, which no copy has: should its import be
//! in doubt it is imported again (logged, never lost).

//! # Throttling
//! Every request goes through the mailbox's [`MailboxThrottle`]: at most
//! `max_concurrent_requests` at once (Outlook allows 4) per mailbox, and
//! with `concurrency_scope = "app"` (the default) for all mailboxes of the
//! endpoint's app together; a worker told "mailbox" that meets
//! `ApplicationThrottled` with fewer than that in flight for the mailbox
//! learns that the limit is the app's. Each mailbox is paced within the
//! request budget per app and mailbox (`requests_per_window` per
//! `request_window_secs`, Exchange's 10,000 per 10 minutes), and after a
//! 429 or `509` the whole mailbox waits out the `Retry-After` before
//! sending anything else (see [`client`]), unless it asks for more than
//! `migration.max_retry_after_secs` (or the pass has waited
//! `max_pass_wait_secs` already): then the mailbox fails at once, quoting
//! the server. A `503`'s `Retry-After` is the least wait before that
//! request is sent again. The worker's stop ends every wait.
//!
//! # Refusals
//! A user the lookup does not find (`404`: `Request_ResourceNotFound`,
//! `ErrorNonExistentMailbox`, …) fails that mailbox with that reason. A
//! `403` on one folder's listing or export is that folder's recorded
//! failure; the other folders are copied. An import URL refused before
//! its expiry (`401`, `403`, `404`) is replaced by a new session and the
//! refused imports are sent through it (see [`MailTarget::append`] of
//! [`GraphImportTarget`]).

pub mod client;
pub mod mail;
pub mod preflight;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use mailwave_common::ErrorClass;
use mailwave_common::config::{ConcurrencyScope, GraphEndpoint};
use mailwave_common::model::{SourceCursor, TargetMark};
use mailwave_common::text::escape_controls;
use serde_json::{Value, json};

use self::client::GraphClient;
use crate::connector::throttle::{
    EndpointThrottle, MailboxThrottle, RequestBudget, ThrottleSettings, UploadBudget, UploadTurn,
    WaitLimits,
};
use crate::connector::{
    AppendReport, ConnectorError, Fetched, FlagScan, Flags, FolderPath, FolderScan, Identity,
    ItemMeta, MailSource, MailTarget, Message, Outgoing, Replacement, Shared, SourceFolder,
    SourcePosition, SpecialUse, TargetFolder, TargetItem, TargetPosition,
};

/// Most item ids `exportItems` takes at once.
const EXPORT_BATCH: usize = 20;
/// Most listed bytes of items exported in one request (at least one item
/// goes): an answer holds its items base64-encoded, and is parsed whole,
/// so about 2.7 times this is in memory while one is decoded (paid for
/// from the memory budget: `MailSource::fetch_transit`).
const EXPORT_REQUEST_BYTES: u64 = 4 * 1024 * 1024;
/// `exportItems` error codes of a passing condition of the server, not of
/// the item: the fetch fails and the pass retries from its checkpoint.
const TRANSIENT_EXPORT_ERRORS: [&str; 8] = [
    "ErrorBatchProcessingStopped",
    "ErrorConnectionFailed",
    "ErrorInternalServerTransientError",
    "ErrorMailboxMoveInProgress",
    "ErrorMailboxStoreUnavailable",
    "ErrorServerBusy",
    "ErrorTimeoutExpired",
    "ErrorTooManyObjectsOpened",
];
/// Graph folder ids never change, so the folder's "validity" never does.
const VALIDITY: u32 = 1;
/// How far before the server's "now" the mark of a target folder is put:
/// the `Date` header is to the second, and the front end that answers is
/// not the mailbox server that stamps items.
const MARK_MARGIN: Duration = Duration::from_secs(60);
/// An import session is renewed when less than this is left of it.
const SESSION_RENEWAL: Duration = Duration::from_secs(120);

/// The scheduler of each Graph endpoint (tenant and app) of this process,
/// shared by all its mailboxes.
fn endpoint_throttle(endpoint: &GraphEndpoint, shared: &Shared) -> EndpointThrottle {
    let label = format!(
        "graph:{}:{}",
        endpoint.oauth2.tenant, endpoint.oauth2.client_id
    );
    let defaults = ThrottleSettings::default();
    shared.schedulers.endpoint(
        &label,
        ThrottleSettings {
            mailbox_ceiling: endpoint.max_concurrent_requests,
            endpoint_ceiling: match endpoint.concurrency_scope {
                ConcurrencyScope::App => endpoint.max_concurrent_requests,
                ConcurrencyScope::Mailbox => defaults.endpoint_ceiling,
            },
            requests_per_second: endpoint.requests_per_second,
            upload_budget: Some(UploadBudget {
                bytes: endpoint.upload_bytes_per_window,
                window: Duration::from_secs(endpoint.upload_window_secs),
            }),
            mailbox_requests: Some(RequestBudget {
                requests: endpoint.requests_per_window,
                window: Duration::from_secs(endpoint.request_window_secs),
            }),
            ..defaults
        },
    )
}

/// A client for `user`'s mailbox on `endpoint`, its requests scheduled by
/// the mailbox's share of the endpoint's throttle, its waits bounded by
/// `limits`.
fn mailbox_client(
    endpoint: &GraphEndpoint,
    user: &str,
    limits: &WaitLimits,
    shared: &Arc<Shared>,
) -> Result<GraphClient, ConnectorError> {
    let throttle = endpoint_throttle(endpoint, shared).mailbox(user, limits.clone());
    GraphClient::new(
        &endpoint.api_url(),
        endpoint.credentials(),
        throttle,
        Arc::clone(shared),
    )
}

/// A mailbox of a Graph endpoint, resolved to its import/export id.
struct GraphMailbox {
    client: GraphClient,
    /// `/admin/exchange/mailboxes/{id}`.
    root: String,
    user: String,
}

impl GraphMailbox {
    async fn open(
        endpoint: &GraphEndpoint,
        user: &str,
        limits: &WaitLimits,
        shared: &Arc<Shared>,
    ) -> Result<GraphMailbox, ConnectorError> {
        let client = mailbox_client(endpoint, user, limits, shared)?;
        let settings = client
            .get(&format!("/users/{}/settings/exchange", encode(user)))
            .await
            .map_err(|error| {
                // The lookup names nothing but the user: whatever its code
                // (`Request_ResourceNotFound`, `ErrorNonExistentMailbox`, …),
                // a 404 says the tenant has no such user or mailbox.
                if error.status == Some(reqwest::StatusCode::NOT_FOUND) {
                    return ConnectorError::mailbox(format!(
                        "mailbox {user}: the tenant has no such user or no mailbox for it ({error})"
                    ));
                }
                ConnectorError::from(error).context(format!("mailbox {user}"))
            })?;
        let Some(id) = settings["primaryMailboxId"].as_str() else {
            return Err(ConnectorError::mailbox(format!(
                "mailbox {user}: Graph named no primaryMailboxId"
            )));
        };
        Ok(GraphMailbox {
            client,
            root: format!("/admin/exchange/mailboxes/{}", encode(id)),
            user: user.to_owned(),
        })
    }

    /// Every folder, parents before children, with its path, but those
    /// `skipped` says and all below them.
    async fn folders(
        &self,
        skipped: impl Fn(&Value) -> bool,
    ) -> Result<Vec<GraphFolder>, ConnectorError> {
        let base = format!("{}/folders", self.root);
        folder_tree(&self.client, &base, FOLDER_QUERY, skipped).await
    }

    /// Exports items (id, listed size), at most [`EXPORT_BATCH`] and
    /// [`EXPORT_REQUEST_BYTES`] per request: what became of each item the
    /// server answered for. A per-item error of a passing condition (see
    /// [`TRANSIENT_EXPORT_ERRORS`]) and an entry not understood fail the
    /// export.
    async fn export(
        &self,
        items: &[(&str, u64)],
    ) -> Result<Vec<(String, Exported)>, ConnectorError> {
        let mut exported = Vec::with_capacity(items.len());
        for chunk in export_requests(items) {
            let ids: Vec<&str> = chunk.iter().map(|&(id, _)| id).collect();
            let mut answer = self
                .client
                .post(
                    &format!("{}/exportItems", self.root),
                    &json!({ "itemIds": ids }),
                )
                .await
                .map_err(folder_error)?;
            let Some(Value::Array(entries)) = answer.get_mut("value").map(Value::take) else {
                return Err(ConnectorError::transient(
                    "exportItems answered without a value array",
                ));
            };
            drop(answer);
            for entry in entries {
                let (id, outcome) = exported_item(entry)?;
                if let Exported::Gone = outcome {
                    tracing::info!(mailbox = %self.user, item = %id,
                        "item gone from the source; left out");
                }
                exported.push((id, outcome));
            }
        }
        Ok(exported)
    }
}

/// The failure of a request about one folder (its listing, its items'
/// export): a `403` (`ErrorAccessDenied`) denies that folder only, so it is
/// the folder's failure (class item: recorded, the rest of the mailbox goes
/// on); anything else as classified.
fn folder_error(error: client::GraphError) -> ConnectorError {
    if error.is_access_denied() {
        return ConnectorError::item(format!("access to the folder denied: {error}"));
    }
    error.into()
}

impl GraphMailbox {
    /// The [`Identity`] of the items of `folder` modified at or after
    /// `since` (every item: `None`), by id, from one listing with a
    /// server-side `$filter` and the keys `$expand`ed (see [`item_key`]).
    /// Items without a key are counted and logged: they cannot be told in
    /// a copy.
    async fn keys(
        &self,
        folder: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<HashMap<String, Identity>, ConnectorError> {
        let mut url = format!(
            "{}/folders/{}/items?$select=id&$expand={}",
            self.root,
            encode(folder),
            encode(KEY_EXPANSION)
        );
        if let Some(since) = since {
            let filter = format!(
                "lastModifiedDateTime ge {}",
                since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            url.push_str(&format!("&$filter={}", encode(&filter)));
        }
        let mut keys = HashMap::new();
        let mut keyless = 0usize;
        for value in self.client.get_all(&url).await.map_err(folder_error)? {
            let Some(id) = value["id"].as_str() else {
                continue;
            };
            match item_key(&value) {
                Some(identity) => {
                    keys.insert(id.to_owned(), identity);
                }
                None => keyless += 1,
            }
        }
        if keyless > 0 {
            tracing::warn!(mailbox = %self.user, folder, keyless,
                "items with neither a search key nor an internet message id: \
                 an import of theirs in doubt is imported again");
        }
        Ok(keys)
    }
}

/// The extended properties that identify an item and its copies, as
/// `$expand` asks for them: PidTagSearchKey, which a full-fidelity copy
/// keeps, and PidTagInternetMessageId for mail.
const KEY_EXPANSION: &str =
    "singleValueExtendedProperties($filter=id eq 'Binary 0x300B' or id eq 'String 0x1035')";
/// [`KEY_EXPANSION`]'s properties, the preferred first.
const KEY_PROPERTIES: [&str; 2] = ["Binary 0x300B", "String 0x1035"];

/// An item's identity from its expanded extended properties: its search
/// key, else its internet message id; `None` without either.
fn item_key(value: &Value) -> Option<Identity> {
    let properties = value["singleValueExtendedProperties"].as_array()?;
    KEY_PROPERTIES.iter().find_map(|wanted| {
        properties
            .iter()
            .find(|p| {
                p["id"]
                    .as_str()
                    .is_some_and(|id| id.eq_ignore_ascii_case(wanted))
            })
            .and_then(|p| p["value"].as_str())
            .filter(|v| !v.is_empty())
            .map(|v| Identity::keyed(wanted, v))
    })
}

/// What `exportItems` gave for one item.
enum Exported {
    /// The item's data, and its `changeKey` (the version exported).
    Data(Bytes, Option<String>),
    /// `ErrorItemNotFound`: the item is no longer there.
    Gone,
    /// Any other error of the item (class [`ErrorClass::Item`]).
    Refused(ConnectorError),
}

/// The requests of an export: at most [`EXPORT_BATCH`] items each, and
/// items of at most [`EXPORT_REQUEST_BYTES`] listed bytes unless one alone
/// is larger.
fn export_requests<'a>(items: &'a [(&'a str, u64)]) -> Vec<&'a [(&'a str, u64)]> {
    let mut requests = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, &(_, size)) in items.iter().enumerate() {
        let full = i - start == EXPORT_BATCH || bytes.saturating_add(size) > EXPORT_REQUEST_BYTES;
        if i > start && full {
            requests.push(&items[start..i]);
            start = i;
            bytes = 0;
        }
        bytes = bytes.saturating_add(size);
    }
    if start < items.len() {
        requests.push(&items[start..]);
    }
    requests
}

/// One entry of an `exportItems` answer (an `exportItemResponse`: `itemId`,
/// then `data` or `error`, a `mailTipsError` with `errorCode` and
/// `message`), its base64 decoded. An entry of a passing error, or one not
/// understood, is an error.
fn exported_item(mut entry: Value) -> Result<(String, Exported), ConnectorError> {
    let Some(id) = entry["itemId"].as_str().map(str::to_owned) else {
        return Err(ConnectorError::transient(format!(
            "exportItems answered an entry without an itemId: {}",
            quoted(&entry)
        )));
    };
    if let Value::String(data) = entry["data"].take() {
        let version = entry["changeKey"].as_str().map(str::to_owned);
        let outcome = match BASE64.decode(data) {
            Ok(data) => Exported::Data(Bytes::from(data), version),
            Err(e) => Exported::Refused(ConnectorError::item(format!(
                "export data is not base64: {e}"
            ))),
        };
        return Ok((id, outcome));
    }
    let error = &entry["error"];
    if !error.is_object() {
        return Err(ConnectorError::transient(format!(
            "exportItems answered item {id} with neither data nor an error: {}",
            quoted(&entry)
        )));
    }
    let code = error["errorCode"].as_str().unwrap_or("");
    let reason = format!(
        "exportItems: {} {}",
        if code.is_empty() {
            "(no errorCode)"
        } else {
            code
        },
        error["message"].as_str().unwrap_or("")
    );
    if code == "ErrorItemNotFound" {
        return Ok((id, Exported::Gone));
    }
    if TRANSIENT_EXPORT_ERRORS.contains(&code) {
        return Err(ConnectorError::transient(format!("item {id}: {reason}")));
    }
    Ok((id, Exported::Refused(ConnectorError::item(reason))))
}

/// A JSON value as quoted in a message: compact, at most 300 characters.
fn quoted(value: &Value) -> String {
    value.to_string().chars().take(300).collect()
}

/// A folder as Graph lists it.
struct GraphFolder {
    id: String,
    path: FolderPath,
    /// The role of its `wellKnownName` (the import/export API names them;
    /// the mail API does not).
    special: Option<SpecialUse>,
    /// Its `type` (the import/export API only).
    class: Option<String>,
}

/// Every folder below `base` (`…/folders` of the import/export API or
/// `/users/{id}/mailFolders` of the mail API, both with `childFolders`),
/// each listed with `query`, parents before children, with its path of
/// display names. A folder is taken once however often the server lists
/// it; the folders `skipped` says, and all below them, are left out.
async fn folder_tree(
    client: &GraphClient,
    base: &str,
    query: &str,
    skipped: impl Fn(&Value) -> bool,
) -> Result<Vec<GraphFolder>, ConnectorError> {
    let mut folders = Vec::new();
    let mut seen = HashSet::new();
    let mut pending: Vec<(String, FolderPath)> =
        vec![(format!("{base}{query}"), FolderPath(Vec::new()))];
    while let Some((url, parent)) = pending.pop() {
        for value in client.get_all(&url).await? {
            let (Some(id), Some(name)) = (value["id"].as_str(), value["displayName"].as_str())
            else {
                continue;
            };
            if !seen.insert(id.to_owned()) {
                continue;
            }
            let mut path = parent.clone();
            path.0.push(name.to_owned());
            if skipped(&value) {
                tracing::debug!(folder = %path, "system or search folder; not copied");
                continue;
            }
            if value["childFolderCount"].as_u64().unwrap_or(0) > 0 {
                pending.push((
                    format!("{base}/{}/childFolders{query}", encode(id)),
                    path.clone(),
                ));
            }
            folders.push(GraphFolder {
                id: id.to_owned(),
                special: value["wellKnownName"].as_str().and_then(role_of_well_known),
                class: value["type"].as_str().map(str::to_owned),
                path,
            });
        }
    }
    folders.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(folders)
}

/// `PidTagFolderType` as a single-value extended property: 2
/// (`FOLDER_SEARCH`) marks a search folder, which the import/export API
/// lists among the others.
const FOLDER_TYPE_PROPERTY: &str = "Integer 0x3601";
/// How the import/export API's folders are listed: with their folder type.
const FOLDER_QUERY: &str =
    "?$expand=singleValueExtendedProperties($filter=id%20eq%20'Integer%200x3601')";
/// The well-known folder that holds the search folders: never copied.
const SEARCH_FOLDERS: &str = "searchfolders";

/// Whether an import/export folder is left out: a search folder, the
/// search folders' folder, or a well-known folder `skip` names.
fn is_skipped_folder(value: &Value, skip: &[String]) -> bool {
    let search = value["singleValueExtendedProperties"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| {
            p["id"]
                .as_str()
                .is_some_and(|id| id.eq_ignore_ascii_case(FOLDER_TYPE_PROPERTY))
                && p["value"].as_str() == Some("2")
        });
    let skipped_name = value["wellKnownName"].as_str().is_some_and(|name| {
        name.eq_ignore_ascii_case(SEARCH_FOLDERS)
            || skip.iter().any(|s| s.eq_ignore_ascii_case(name))
    });
    search || skipped_name
}

/// Exchange's well-known folders that have a role (`wellKnownName`, the
/// names Graph URLs accept in place of a folder id): those of the
/// mailboxFolder and mailFolder resources and of EWS's distinguished
/// folders that hold the user's items.
const WELL_KNOWN_ROLES: [(&str, SpecialUse); 19] = [
    ("inbox", SpecialUse::Inbox),
    ("sentitems", SpecialUse::Sent),
    ("drafts", SpecialUse::Drafts),
    ("deleteditems", SpecialUse::Trash),
    ("junkemail", SpecialUse::Junk),
    ("archive", SpecialUse::Archive),
    ("outbox", SpecialUse::Outbox),
    ("calendar", SpecialUse::Calendar),
    ("contacts", SpecialUse::Contacts),
    ("tasks", SpecialUse::Tasks),
    ("notes", SpecialUse::Notes),
    ("journal", SpecialUse::Journal),
    ("conversationhistory", SpecialUse::ConversationHistory),
    ("syncissues", SpecialUse::SyncIssues),
    ("conflicts", SpecialUse::Conflicts),
    ("localfailures", SpecialUse::LocalFailures),
    ("serverfailures", SpecialUse::ServerFailures),
    ("clutter", SpecialUse::Clutter),
    ("scheduled", SpecialUse::Scheduled),
];

/// The role of a well-known folder name of Exchange.
fn role_of_well_known(name: &str) -> Option<SpecialUse> {
    WELL_KNOWN_ROLES
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(name))
        .map(|&(_, role)| role)
}

/// A path segment, percent-encoded.
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'@' | b':') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The source side: export.
pub struct GraphExportSource {
    mailbox: GraphMailbox,
    /// The well-known folders not copied (`skip_folders`).
    skip_folders: Vec<String>,
}

impl GraphExportSource {
    /// Opens `user`'s mailbox on `endpoint` for reading, its waits bounded
    /// by `limits`.
    pub async fn open(
        endpoint: &GraphEndpoint,
        user: &str,
        limits: &WaitLimits,
        shared: &Arc<Shared>,
    ) -> Result<Self, ConnectorError> {
        Ok(GraphExportSource {
            mailbox: GraphMailbox::open(endpoint, user, limits, shared).await?,
            skip_folders: endpoint.skip_folders.clone(),
        })
    }
}

/// An item of a delta page (its id, and the entry) as the engine sees it.
type ReadItem = fn(&str, &Value) -> ItemMeta;

/// One delta round from `start`: the items present (new or changed), read
/// by `read`, each once (as last listed, should a round list it twice), the
/// delta link for the next pass, and the earliest `lastModifiedDateTime`
/// of those items (`None`: one had none, or there were none).
async fn delta_round(
    client: &GraphClient,
    start: &str,
    read: ReadItem,
) -> Result<(Vec<ItemMeta>, String, Option<DateTime<Utc>>), client::GraphError> {
    let mut items: Vec<ItemMeta> = Vec::new();
    let mut listed: HashMap<String, usize> = HashMap::new();
    let mut earliest: Option<Option<DateTime<Utc>>> = None;
    let mut next = start.to_owned();
    loop {
        let page = client.get(&next).await?;
        for value in page["value"].as_array().into_iter().flatten() {
            if !value["@removed"].is_null() {
                continue;
            }
            let Some(id) = value["id"].as_str() else {
                continue;
            };
            let modified = timestamp(&value["lastModifiedDateTime"]);
            earliest = Some(match earliest {
                None => modified,
                Some(before) => before.zip(modified).map(|(a, b)| a.min(b)),
            });
            let item = read(id, value);
            match listed.get(id) {
                Some(&at) => items[at] = item,
                None => {
                    listed.insert(id.to_owned(), items.len());
                    items.push(item);
                }
            }
        }
        if let Some(link) = page["@odata.nextLink"].as_str() {
            next = link.to_owned();
            continue;
        }
        let Some(link) = page["@odata.deltaLink"].as_str() else {
            return Err(client::GraphError {
                class: ErrorClass::Transient,
                retry_after: None,
                status: None,
                code: None,
                message: "item delta ended without a delta link".into(),
            });
        };
        return Ok((items, link.to_owned(), earliest.flatten()));
    }
}

/// A timestamp of Graph's JSON (ISO 8601, UTC).
fn timestamp(value: &Value) -> Option<DateTime<Utc>> {
    let text = value.as_str()?;
    DateTime::parse_from_rfc3339(text).ok().map(|t| t.to_utc())
}

/// A Graph source's cursor of a folder: the delta link its next scan starts from.
#[derive(serde::Serialize, serde::Deserialize)]
struct GraphCursor {
    delta_link: String,
}

impl GraphCursor {
    fn encode(delta_link: String) -> SourceCursor {
        let cursor = serde_json::to_string(&GraphCursor { delta_link });
        SourceCursor::new(cursor.expect("a string serialises"))
    }

    /// The delta link of a cursor this connector wrote; `None` for any
    /// other (the folder is listed in full).
    fn decode(cursor: &SourceCursor) -> Option<String> {
        let decoded = serde_json::from_str::<GraphCursor>(cursor.as_str());
        decoded.ok().map(|c| c.delta_link)
    }
}

/// The Graph target's mark of a folder: items modified since this time may
/// be in-doubt imports.
#[derive(serde::Serialize, serde::Deserialize)]
struct GraphMark {
    modified_since: DateTime<Utc>,
}

impl GraphMark {
    fn encode(modified_since: DateTime<Utc>) -> TargetMark {
        let mark = serde_json::to_string(&GraphMark { modified_since });
        TargetMark::new(mark.expect("a time serialises"))
    }

    /// The time of a mark this connector wrote, or of a checkpoint from
    /// before marks were the connectors' own (milliseconds since the epoch).
    /// Any other mark is no time here: every item is looked at.
    fn decode(mark: &TargetMark) -> Option<DateTime<Utc>> {
        let text = mark.as_str();
        if let Ok(mark) = serde_json::from_str::<GraphMark>(text) {
            return Some(mark.modified_since);
        }
        let legacy = text.parse().ok().and_then(DateTime::from_timestamp_millis);
        if legacy.is_none() {
            tracing::warn!(mark = %escape_controls(text),
                "not a Graph target mark; looking for in-doubt imports in the whole folder");
        }
        legacy
    }
}

/// What `folder` holds that its checkpoint does not cover, by delta: from
/// the checkpoint's delta link, or from `initial` (a full listing) when
/// there is none or the server forgot it (see
/// [`client::GraphError::is_sync_state_lost`]). Delta rounds repeat items,
/// so the scan is complete: the ledger leaves out the copied ones, and
/// their flags are compared with the ledger's. With it, the earliest
/// modification time of the items listed (see [`delta_round`]).
async fn scan_by_delta(
    client: &GraphClient,
    user: &str,
    folder: &SourceFolder,
    position: Option<SourcePosition<'_>>,
    initial: &str,
    read: ReadItem,
) -> Result<(FolderScan, Option<DateTime<Utc>>), ConnectorError> {
    let link = position
        .and_then(|p| p.cursor)
        .and_then(GraphCursor::decode);
    let start = link.as_deref().unwrap_or(initial);
    let (candidates, link, earliest) = match delta_round(client, start, read).await {
        Ok(found) => found,
        Err(error) if error.is_sync_state_lost() => {
            tracing::info!(mailbox = %user, folder = %folder.path, %error,
                "delta link expired; listing the folder again");
            delta_round(client, initial, read)
                .await
                .map_err(folder_error)?
        }
        Err(error) => return Err(folder_error(error)),
    };
    let scan = FolderScan {
        validity: VALIDITY,
        cursor: Some(GraphCursor::encode(link)),
        candidates,
        complete: true,
        flags: FlagScan::Unchanged,
    };
    Ok((scan, earliest))
}

#[async_trait]
impl MailSource for GraphExportSource {
    async fn folders(&mut self) -> Result<Vec<SourceFolder>, ConnectorError> {
        let skip = &self.skip_folders;
        Ok(self
            .mailbox
            .folders(|value| is_skipped_folder(value, skip))
            .await?
            .into_iter()
            .map(|f| SourceFolder {
                key: f.id,
                path: f.path,
                special: f.special,
                class: f.class,
                subscribed: false,
            })
            .collect())
    }

    async fn scan(
        &mut self,
        folder: &SourceFolder,
        position: Option<SourcePosition<'_>>,
    ) -> Result<FolderScan, ConnectorError> {
        // The size, the version and the time of the last change are read
        // of each item (the id always comes): the time bounds the listing
        // of the candidates' keys (see `delta_round`).
        let initial = format!(
            "{}/folders/{}/items/delta?$select=size,changeKey,lastModifiedDateTime",
            self.mailbox.root,
            encode(&folder.key)
        );
        let read: ReadItem = |id, value| ItemMeta {
            item: id.to_owned(),
            uid: None,
            size: value["size"].as_u64(),
            flags: Flags::default(),
            internal_date: None,
            identity: None,
            version: value["changeKey"].as_str().map(str::to_owned),
        };
        let mailbox = &self.mailbox;
        let (mut scan, earliest) = scan_by_delta(
            &mailbox.client,
            &mailbox.user,
            folder,
            position,
            &initial,
            read,
        )
        .await?;
        if scan.candidates.is_empty() {
            return Ok(scan);
        }
        // Delta does not expand: the keys come from a listing of what
        // changed since the earliest of the candidates.
        let mut keys = mailbox.keys(&folder.key, earliest).await?;
        for candidate in &mut scan.candidates {
            candidate.identity = keys.remove(&candidate.item);
        }
        Ok(scan)
    }

    /// The largest export request of these items, as base64 twice: the
    /// answer's text and its parsed strings.
    fn fetch_transit(&self, sizes: &[u64]) -> u64 {
        let largest = sizes.iter().copied().max().unwrap_or(0);
        let request = sizes
            .iter()
            .sum::<u64>()
            .min(EXPORT_REQUEST_BYTES.max(largest));
        2 * base64_len(request)
    }

    async fn fetch(
        &mut self,
        _folder: &SourceFolder,
        items: &[ItemMeta],
    ) -> Result<Fetched, ConnectorError> {
        // Sizes only bound the export requests: an unknown one adds nothing.
        let asked: Vec<(&str, u64)> = items
            .iter()
            .map(|i| (i.item.as_str(), i.size.unwrap_or(0)))
            .collect();
        let mut exported: HashMap<String, Exported> =
            self.mailbox.export(&asked).await?.into_iter().collect();
        // An item the server answered nothing for stays out of all three
        // lists: the engine takes that as the error it is.
        let mut result = Fetched::default();
        for meta in items {
            match exported.remove(&meta.item) {
                Some(Exported::Data(body, version)) => result.messages.push(Message {
                    meta: ItemMeta {
                        size: Some(body.len() as u64),
                        // The version of the data exported, should the
                        // item have changed since it was listed.
                        version: version.or_else(|| meta.version.clone()),
                        ..meta.clone()
                    },
                    body,
                }),
                Some(Exported::Gone) => result.gone.push(meta.item.clone()),
                Some(Exported::Refused(error)) => result.refused.push((meta.item.clone(), error)),
                None => {}
            }
        }
        Ok(result)
    }

    /// Graph folder and item ids never change, so there is never anything
    /// to re-map by headers.
    async fn fetch_headers(
        &mut self,
        _folder: &SourceFolder,
        _items: &[ItemMeta],
    ) -> Result<Vec<(String, Bytes)>, ConnectorError> {
        Ok(Vec::new())
    }
}

/// An import session: its pre-authenticated URL and when it expires.
struct ImportSession {
    url: String,
    expires: DateTime<Utc>,
}

/// The target side: import.
pub struct GraphImportTarget {
    mailbox: GraphMailbox,
    session: Option<ImportSession>,
    concurrency: usize,
    /// The folder tree as last listed, with the folders made since: a
    /// listing walks the whole tree, so it is not repeated per folder.
    known_folders: Option<Vec<TargetFolder>>,
}

impl GraphImportTarget {
    /// Opens `user`'s mailbox on `endpoint` for writing, its waits bounded
    /// by `limits`.
    pub async fn open(
        endpoint: &GraphEndpoint,
        user: &str,
        limits: &WaitLimits,
        shared: &Arc<Shared>,
    ) -> Result<Self, ConnectorError> {
        Ok(GraphImportTarget {
            mailbox: GraphMailbox::open(endpoint, user, limits, shared).await?,
            session: None,
            concurrency: endpoint.max_concurrent_requests.max(1),
            known_folders: None,
        })
    }

    /// The import URL, with a new session when none is left or it is close
    /// to its expiry (or `renew`).
    async fn import_url(&mut self, renew: bool) -> Result<String, ConnectorError> {
        // The expiry is by the server's clock.
        let now = self.mailbox.client.server_now().unwrap_or_else(Utc::now);
        let fresh = self.session.as_ref().is_some_and(|s| {
            s.expires - now > chrono::Duration::from_std(SESSION_RENEWAL).unwrap_or_default()
        });
        if let (false, Some(session)) = (renew || !fresh, &self.session) {
            return Ok(session.url.clone());
        }
        let answer = self
            .mailbox
            .client
            .post(
                &format!("{}/createImportSession", self.mailbox.root),
                &json!({}),
            )
            .await?;
        let (Some(url), Some(expires)) = (
            answer["importUrl"].as_str(),
            answer["expirationDateTime"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok()),
        ) else {
            return Err(ConnectorError::transient(
                "createImportSession answered without importUrl or expirationDateTime",
            ));
        };
        self.session = Some(ImportSession {
            url: url.to_owned(),
            expires: expires.to_utc(),
        });
        Ok(url.to_owned())
    }

    /// The folder tree, listed again when `relist` or never listed yet.
    async fn folder_list(&mut self, relist: bool) -> Result<Vec<TargetFolder>, ConnectorError> {
        if let (false, Some(known)) = (relist, &self.known_folders) {
            return Ok(known.clone());
        }
        // Every folder, so that none is made twice.
        let listed: Vec<TargetFolder> = self
            .mailbox
            .folders(|_| false)
            .await?
            .into_iter()
            .map(|f| TargetFolder {
                name: f.id,
                path: f.path,
                special: f.special,
            })
            .collect();
        self.known_folders = Some(listed.clone());
        Ok(listed)
    }
}

/// The length of the base64 of `bytes` bytes.
fn base64_len(bytes: u64) -> u64 {
    bytes.div_ceil(3) * 4
}

/// One item's import: the new item's id and `changeKey`, or why the
/// target refused it.
async fn import_one(
    client: &GraphClient,
    url: &str,
    folder: &str,
    data: Bytes,
    turn: UploadTurn,
) -> Result<(Option<String>, Option<String>), client::GraphError> {
    let body = json!({ "FolderId": folder, "Mode": "create", "Data": BASE64.encode(data) });
    let answer = client.import(url, &body, Some(turn)).await?;
    let field = |name: &str| answer[name].as_str().map(str::to_owned);
    Ok((field("itemId"), field("changeKey")))
}

/// One copy's update (`Mode: "update"` with its id and `changeKey`): its
/// new `changeKey`. The data is the source item's whole new version, so the
/// request is idempotent and resent after a passing failure. A `409`
/// (`ErrorIrresolvableConflict`: the copy's `changeKey` is no longer the
/// one named) means the copy changed on the target since it was written,
/// by a user or by an update of ours whose answer was lost: the source is
/// authoritative until the cutover, so the copy's current `changeKey` is
/// read and the update sent once more (a second conflict is that item's
/// failure). An unknown `changeKey` is read first.
async fn update_one(
    client: &GraphClient,
    url: &str,
    root: &str,
    folder: &str,
    replacement: Replacement,
    turn: UploadTurn,
) -> Result<String, client::GraphError> {
    let data = BASE64.encode(&replacement.body);
    let send = |change_key: String, turn: Option<UploadTurn>| {
        let body = json!({
            "FolderId": folder,
            "Mode": "update",
            "ItemId": replacement.target_id,
            "ChangeKey": change_key,
            "Data": data,
        });
        async move { client.import_update(url, &body, turn).await }
    };
    let current = || async {
        let item = format!(
            "{root}/folders/{}/items/{}?$select=changeKey",
            encode(folder),
            encode(&replacement.target_id)
        );
        let answer = client.get(&item).await?;
        change_key_of(&answer, "the copy")
    };
    let known = match &replacement.version {
        Some(version) => version.clone(),
        None => current().await?,
    };
    let answer = match send(known, Some(turn)).await {
        Err(error) if error.status == Some(reqwest::StatusCode::CONFLICT) => {
            tracing::warn!(item = %replacement.target_id, %error,
                "the copy changed on the target since it was written; replacing it with the source's version");
            send(current().await?, None).await?
        }
        answer => answer?,
    };
    change_key_of(&answer, "an update")
}

/// The `changeKey` of an answer about `what`.
fn change_key_of(answer: &Value, what: &str) -> Result<String, client::GraphError> {
    answer["changeKey"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| client::GraphError {
            class: ErrorClass::Transient,
            retry_after: None,
            status: None,
            code: None,
            message: format!("Graph answered {what} without a changeKey"),
        })
}

/// The bytes an import request of an item of `bytes` bytes uploads, about:
/// its data's base64 and the rest of the request (the pacer counts the
/// request's exact length when it is sent).
fn import_upload_len(bytes: u64, folder: &str) -> u64 {
    const REQUEST_FIELDS: u64 = 128;
    base64_len(bytes) + folder.len() as u64 + REQUEST_FIELDS
}

/// Sends `items` (each with the bytes its request uploads) through `send`
/// with its upload turn, at most `concurrency` at once: each one's outcome,
/// in order. The next one sent is the first whose upload fits the
/// mailbox's upload window now (pick what fits); when none does, the next
/// goes once one fits, or when one in flight ends. Fails only when the
/// worker stops meanwhile.
async fn send_fitting<I, T, Fut>(
    throttle: &MailboxThrottle,
    items: Vec<(I, u64)>,
    concurrency: usize,
    send: impl Fn(I, UploadTurn) -> Fut,
) -> Result<Vec<T>, ConnectorError>
where
    Fut: std::future::Future<Output = T>,
{
    let mut outcomes: Vec<Option<T>> = items.iter().map(|_| None).collect();
    let mut pending: Vec<(usize, I, u64)> = items
        .into_iter()
        .enumerate()
        .map(|(index, (item, bytes))| (index, item, bytes))
        .collect();
    let mut in_flight = FuturesUnordered::new();
    loop {
        let mut room_at = None;
        while in_flight.len() < concurrency.max(1) && !pending.is_empty() {
            let sizes: Vec<u64> = pending.iter().map(|(_, _, bytes)| *bytes).collect();
            match throttle.upload_turn(&sizes) {
                Ok((pick, turn)) => {
                    let (index, item, _) = pending.remove(pick);
                    let request = send(item, turn);
                    in_flight.push(async move { (index, request.await) });
                }
                Err(fits_at) => {
                    room_at = Some(fits_at);
                    break;
                }
            }
        }
        tokio::select! {
            Some((index, outcome)) = in_flight.next() => outcomes[index] = Some(outcome),
            waited = async {
                match room_at {
                    Some(at) => throttle.sleep_until(at).await,
                    None => std::future::pending().await,
                }
            }, if room_at.is_some() => waited?,
            else => break,
        }
    }
    Ok(outcomes.into_iter().flatten().collect())
}

impl GraphImportTarget {
    /// Sends one import request per item (`send(url, item, turn)`; each
    /// item with the bytes its request uploads), several at a time, picking
    /// what fits the mailbox's upload window ([`send_fitting`]): each one's
    /// outcome, in order. Those the import session refused (it ended
    /// before its time, expired or deleted: the URL's token is an import's
    /// only authorisation, so a refused request was answered before it
    /// reached the mailbox, and nothing of it was stored) are sent once
    /// more through a new session; refused again, the mailbox fails. An
    /// item's own failure is its result; any other failure fails the call.
    async fn import_each<I, T, Fut>(
        &mut self,
        items: Vec<(I, u64)>,
        send: impl Fn(String, I, UploadTurn) -> Fut,
    ) -> Result<Vec<Result<T, ConnectorError>>, ConnectorError>
    where
        I: Clone,
        Fut: std::future::Future<Output = Result<T, client::GraphError>>,
    {
        let concurrency = self.concurrency;
        let client = self.mailbox.client.clone();
        let send = &send;
        let send_all = |url: String, items: Vec<(I, u64)>| {
            let throttle = client.throttle().clone();
            async move {
                send_fitting(&throttle, items, concurrency, |item, turn| {
                    send(url.clone(), item, turn)
                })
                .await
            }
        };
        let url = self.import_url(false).await?;
        let mut outcomes = send_all(url, items.clone()).await?;
        let refused: Vec<usize> = (0..outcomes.len())
            .filter(|&i| matches!(&outcomes[i], Err(e) if e.is_import_session_refused()))
            .collect();
        if !refused.is_empty() {
            let url = self.import_url(true).await?;
            let again = refused.iter().map(|&i| items[i].clone()).collect();
            let retried = send_all(url, again).await?;
            for (i, outcome) in refused.into_iter().zip(retried) {
                outcomes[i] = outcome;
            }
        }
        let mut results = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            match outcome {
                Ok(value) => results.push(Ok(value)),
                Err(error) if error.is_import_session_refused() => {
                    self.session = None;
                    return Err(ConnectorError::mailbox(format!(
                        "a new import session was refused as well: {error}"
                    )));
                }
                Err(error) if error.class == ErrorClass::Item => {
                    results.push(Err(ConnectorError::from(error)));
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(results)
    }
}

#[async_trait]
impl MailTarget for GraphImportTarget {
    async fn folders(&mut self) -> Result<Vec<TargetFolder>, ConnectorError> {
        self.folder_list(true).await
    }

    async fn ensure_folder(
        &mut self,
        path: &FolderPath,
        special: Option<SpecialUse>,
        class: Option<&str>,
    ) -> Result<TargetFolder, ConnectorError> {
        let existing = self.folder_list(false).await?;
        let mut parent: Option<TargetFolder> = None;
        for depth in 1..=path.0.len() {
            let prefix = FolderPath(path.0[..depth].to_vec());
            if let Some(found) = existing.iter().find(|f| same_path(&f.path, &prefix)) {
                parent = Some(found.clone());
                continue;
            }
            let leaf = depth == path.0.len();
            let class = if leaf {
                class.unwrap_or("IPF.Note")
            } else {
                "IPF.Note"
            };
            let url = match &parent {
                None => format!("{}/folders", self.mailbox.root),
                Some(p) => format!(
                    "{}/folders/{}/childFolders",
                    self.mailbox.root,
                    encode(&p.name)
                ),
            };
            let body = json!({ "displayName": path.0[depth - 1], "type": class });
            let created = match self.mailbox.client.post(&url, &body).await {
                Ok(created) => created,
                // Another connection of the mailbox made it meanwhile.
                Err(error) if error.status == Some(reqwest::StatusCode::CONFLICT) => {
                    let listed = self.folder_list(true).await?;
                    let Some(found) = listed.into_iter().find(|f| same_path(&f.path, &prefix))
                    else {
                        return Err(ConnectorError::from(error)
                            .context(format!("creating folder {prefix}")));
                    };
                    parent = Some(found);
                    continue;
                }
                Err(error) => {
                    return Err(
                        ConnectorError::from(error).context(format!("creating folder {prefix}"))
                    );
                }
            };
            let Some(id) = created["id"].as_str() else {
                return Err(ConnectorError::transient(format!(
                    "creating folder {prefix}: no id in the answer"
                )));
            };
            let made = TargetFolder {
                name: id.to_owned(),
                path: prefix,
                special: if leaf { special } else { None },
            };
            if let Some(known) = self.known_folders.as_mut() {
                known.push(made.clone());
            }
            parent = Some(made);
        }
        parent.ok_or_else(|| ConnectorError::item("an empty folder path"))
    }

    /// The server's clock (the `Date` of its answers), less a margin.
    async fn mark(&mut self, folder: &str) -> Result<TargetPosition, ConnectorError> {
        let client = &self.mailbox.client;
        if client.server_now().is_none() {
            client
                .get(&format!("{}/folders/{}", self.mailbox.root, encode(folder)))
                .await?;
        }
        let Some(now) = client.server_now() else {
            return Err(ConnectorError::transient(
                "the server sent no Date: its clock is unknown, so in-doubt imports could not be found",
            ));
        };
        let mark = now - chrono::Duration::from_std(MARK_MARGIN).unwrap_or_default();
        Ok(TargetPosition {
            mark: GraphMark::encode(mark),
            validity: None,
        })
    }

    /// The folder's items modified since the mark (by the server's clock),
    /// identified by their keys: listed with a server-side `$filter` and
    /// the keys expanded, nothing exported.
    async fn items_since(
        &mut self,
        folder: &str,
        mark: Option<&TargetMark>,
        wanted: &HashSet<String>,
    ) -> Result<Vec<TargetItem>, ConnectorError> {
        let since = mark.and_then(GraphMark::decode);
        let keys = self.mailbox.keys(folder, since).await?;
        Ok(keys
            .into_iter()
            .filter(|(_, identity)| wanted.contains(&identity.header_key))
            .map(|(id, identity)| TargetItem { id, identity })
            .collect())
    }

    /// The imports in flight at once and one more being made, the largest
    /// ones: each as base64 twice (the request's JSON value and its
    /// serialized body).
    fn append_transit(&self, sizes: &[u64]) -> u64 {
        let mut sizes = sizes.to_vec();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        sizes
            .iter()
            .take(self.concurrency + 1)
            .map(|&size| 2 * base64_len(size))
            .sum()
    }

    async fn append(
        &mut self,
        folder: &str,
        messages: &[Outgoing],
    ) -> Result<AppendReport, ConnectorError> {
        let bodies: Vec<(Bytes, u64)> = messages
            .iter()
            .map(|m| {
                let upload = import_upload_len(m.body.len() as u64, folder);
                (m.body.clone(), upload)
            })
            .collect();
        let client = self.mailbox.client.clone();
        let client = &client;
        let outcomes = self
            .import_each(bodies, move |url, body, turn| async move {
                import_one(client, &url, folder, body, turn).await
            })
            .await?;
        let mut versions = HashMap::new();
        let results = outcomes
            .into_iter()
            .map(|result| {
                result.map(|(id, version)| {
                    if let (Some(id), Some(version)) = (&id, version) {
                        versions.insert(id.clone(), version);
                    }
                    id
                })
            })
            .collect();
        // Later imports are stamped after this, by the server's clock.
        let mark_after = self.mailbox.client.server_now().map(|now| {
            GraphMark::encode(now - chrono::Duration::from_std(MARK_MARGIN).unwrap_or_default())
        });
        Ok(AppendReport {
            results,
            versions,
            mark_after,
        })
    }

    async fn update(
        &mut self,
        folder: &str,
        replacements: &[Replacement],
    ) -> Result<Vec<Result<String, ConnectorError>>, ConnectorError> {
        let client = self.mailbox.client.clone();
        let root = self.mailbox.root.clone();
        let (client, root) = (&client, root.as_str());
        // Owned (their bodies are shared): a future per copy.
        let replacements = replacements
            .iter()
            .map(|r| {
                let upload = import_upload_len(r.body.len() as u64, folder)
                    + (r.target_id.len() + r.version.as_ref().map_or(0, String::len)) as u64;
                (r.clone(), upload)
            })
            .collect();
        self.import_each(replacements, move |url, replacement, turn| async move {
            update_one(client, &url, root, folder, replacement, turn).await
        })
        .await
    }

    /// Flags travel inside the export data; there is nothing to set.
    /// Exchange has no folder subscriptions: every folder is shown.
    async fn subscribe(&mut self, _folder: &str) -> Result<(), ConnectorError> {
        Ok(())
    }

    async fn set_flags(
        &mut self,
        _folder: &str,
        changes: &[(String, Flags)],
    ) -> Result<(), ConnectorError> {
        if changes.is_empty() {
            return Ok(());
        }
        Err(ConnectorError::item(
            "Exchange items carry their flags in their data; flags cannot be set apart",
        ))
    }
}

/// Display names compare without regard to case, as Exchange does.
fn same_path(a: &FolderPath, b: &FolderPath) -> bool {
    a.0.len() == b.0.len()
        && a.0
            .iter()
            .zip(&b.0)
            .all(|(x, y)| x.to_lowercase() == y.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_roles_and_paths() {
        assert_eq!(role_of_well_known("sentitems"), Some(SpecialUse::Sent));
        assert_eq!(role_of_well_known("DeletedItems"), Some(SpecialUse::Trash));
        assert_eq!(role_of_well_known("calendar"), Some(SpecialUse::Calendar));
        assert_eq!(role_of_well_known("msgfolderroot"), None);
        assert!(same_path(
            &FolderPath(vec!["Inbox".into(), "Projekte".into()]),
            &FolderPath(vec!["INBOX".into(), "projekte".into()])
        ));
        assert_eq!(encode("MBX:a@b c/d"), "MBX:a@b%20c%2Fd");
    }

    #[test]
    fn export_entries_are_data_gone_refused_or_an_error() {
        let entry = |value: Value| exported_item(value);
        let (id, data) = entry(json!({ "itemId": "a", "data": BASE64.encode(b"stream") })).unwrap();
        assert_eq!(id, "a");
        assert!(matches!(data, Exported::Data(d, None) if d.as_ref() == b"stream"));
        let versioned = json!({ "itemId": "a", "changeKey": "CQ1", "data": BASE64.encode(b"s") });
        let (_, data) = entry(versioned).unwrap();
        assert!(matches!(data, Exported::Data(_, Some(v)) if v == "CQ1"));

        let not_found = json!({ "itemId": "b", "error": {
            "errorCode": "ErrorItemNotFound", "message": "The specified object was not found." } });
        assert!(matches!(entry(not_found), Ok((_, Exported::Gone))));

        // Any other error of the item is recorded with the server's words.
        let corrupt = json!({ "itemId": "c", "error": {
            "errorCode": "ErrorCorruptData", "message": "The item is corrupt." } });
        let Ok((_, Exported::Refused(error))) = entry(corrupt) else {
            panic!("a refused item");
        };
        assert_eq!(error.class, ErrorClass::Item);
        assert!(
            error
                .message
                .contains("ErrorCorruptData The item is corrupt."),
            "{error}"
        );
        let no_code = json!({ "itemId": "d", "error": { "message": "odd" } });
        assert!(matches!(entry(no_code), Ok((_, Exported::Refused(_)))));
        let not_base64 = json!({ "itemId": "e", "data": "%%%" });
        assert!(matches!(entry(not_base64), Ok((_, Exported::Refused(_)))));

        // A passing condition, or what is not understood: the fetch fails.
        let busy = json!({ "itemId": "f", "error": {
            "errorCode": "ErrorMailboxStoreUnavailable", "message": "Try again." } });
        let error = entry(busy).err().expect("a passing error fails the export");
        assert_eq!(error.class, ErrorClass::Transient);
        assert!(
            error.message.contains("ErrorMailboxStoreUnavailable"),
            "{error}"
        );
        for odd in [
            json!({ "data": BASE64.encode(b"x") }),
            json!({ "itemId": "g" }),
            json!({ "itemId": "h", "error": "text" }),
        ] {
            let error = entry(odd.clone()).err().unwrap_or_else(|| panic!("{odd}"));
            assert_eq!(error.class, ErrorClass::Transient, "{odd}");
        }
    }

    #[test]
    fn items_are_keyed_by_search_key_else_internet_message_id() {
        let listed =
            |properties: Value| json!({ "id": "x", "singleValueExtendedProperties": properties });
        let search_key = Identity::keyed("Binary 0x300B", "AAEC");
        let message_id = Identity::keyed("String 0x1035", "<a@b>");
        // Exchange spells the tags as it likes; the search key comes first.
        let both = listed(json!([
            { "id": "String 0x1035", "value": "<a@b>" },
            { "id": "Binary 0x300b", "value": "AAEC" },
        ]));
        assert_eq!(item_key(&both), Some(search_key.clone()));
        let mail_only = listed(json!([{ "id": "String 0x1035", "value": "<a@b>" }]));
        assert_eq!(item_key(&mail_only), Some(message_id.clone()));
        assert_ne!(search_key, message_id);
        for keyless in [
            listed(json!([])),
            listed(json!([{ "id": "Binary 0x300B", "value": "" }])),
            listed(json!([{ "id": "String 0x0037", "value": "Subject" }])),
            json!({ "id": "x" }),
        ] {
            assert_eq!(item_key(&keyless), None, "{keyless}");
        }
        // A key is the whole identity, apart from any message's.
        assert_eq!(search_key.header_key, search_key.body_digest);
        assert_eq!(Identity::decode(&search_key.encode()), Some(search_key));
    }

    #[test]
    fn export_requests_are_bounded_by_count_and_bytes() {
        const MIB: u64 = 1024 * 1024;
        let small: Vec<(&str, u64)> = (0..45).map(|_| ("x", 1)).collect();
        let sizes: Vec<usize> = export_requests(&small).iter().map(|r| r.len()).collect();
        assert_eq!(sizes, [20, 20, 5]);
        let large = [
            ("a", 3 * MIB),
            ("b", MIB),
            ("c", 5 * MIB),
            ("d", 1),
            ("e", 0),
        ];
        let requests: Vec<Vec<&str>> = export_requests(&large)
            .iter()
            .map(|r| r.iter().map(|&(id, _)| id).collect())
            .collect();
        assert_eq!(requests, [vec!["a", "b"], vec!["c"], vec!["d", "e"]]);
        assert!(export_requests(&[]).is_empty());
    }
}
