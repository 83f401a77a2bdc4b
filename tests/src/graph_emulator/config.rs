//! What an emulator starts with: tenants, users and items (the seed), the
//! throttling limits, the fault injection and the lifetimes of tokens and
//! import sessions. Everything here is also the JSON of the `--seed` file
//! and of the `/_emulator/...` control API (camelCase, durations in
//! seconds).

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Everything [`GraphEmulator::start`](super::GraphEmulator::start) needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct EmulatorConfig {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Tenants, apps, users, folders and items present from the start.
    pub tenants: Vec<TenantSeed>,
    pub limits: Limits,
    pub faults: Faults,
    /// Lifetime of access tokens (`expires_in`).
    #[serde(rename = "tokenLifetimeSecs", with = "secs")]
    pub token_lifetime: Duration,
    /// Lifetime of a mailboxItemImportSession's `importUrl`.
    #[serde(rename = "importSessionLifetimeSecs", with = "secs")]
    pub import_session_lifetime: Duration,
    /// The status an expired `importUrl` is answered with: the docs say only
    /// that it "expires and is deleted", so `404` by default; `401` and `403`
    /// are what a front end checking its token might say.
    pub expired_import_url_status: u16,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tenants: Vec::new(),
            limits: Limits::default(),
            faults: Faults::default(),
            token_lifetime: Duration::from_secs(3599),
            import_session_lifetime: Duration::from_secs(3600),
            expired_import_url_status: 404,
        }
    }
}

impl EmulatorConfig {
    /// Adds a tenant.
    pub fn tenant(mut self, tenant: TenantSeed) -> Self {
        self.tenants.push(tenant);
        self
    }

    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.token_lifetime = lifetime;
        self
    }

    pub fn import_session_lifetime(mut self, lifetime: Duration) -> Self {
        self.import_session_lifetime = lifetime;
        self
    }

    pub fn expired_import_url_status(mut self, status: u16) -> Self {
        self.expired_import_url_status = status;
        self
    }
}

/// Outlook's throttling rules, per app and mailbox. The defaults are
/// Microsoft's documented limits; tests scale the windows down to seconds.
///
/// Only admitted requests count against the windows: a request answered
/// 429 (or refused before the rules, e.g. with 401) does not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Limits {
    /// Requests in flight at once, in `concurrency_scope`; one more is
    /// answered `429 ApplicationThrottled`, without `Retry-After`.
    pub concurrent_requests: usize,
    /// What `concurrent_requests` counts.
    pub concurrency_scope: ConcurrencyScope,
    /// Requests accepted per `request_window` (sliding); the next one opens
    /// a Retry-After window (`429 TooManyRequests`).
    pub requests_per_window: u64,
    #[serde(rename = "requestWindowSecs", with = "secs")]
    pub request_window: Duration,
    /// Bytes of request bodies of POST/PUT/PATCH (imports above all)
    /// accepted per `upload_window` (sliding).
    pub upload_bytes_per_window: u64,
    #[serde(rename = "uploadWindowSecs", with = "secs")]
    pub upload_window: Duration,
    /// Whether a request rejected inside a Retry-After window restarts the
    /// window. Either way it is counted in the statistics.
    pub retry_after_extends: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            concurrent_requests: 4,
            concurrency_scope: ConcurrencyScope::App,
            requests_per_window: 10_000,
            request_window: Duration::from_secs(600),
            upload_bytes_per_window: 150 * 1024 * 1024,
            upload_window: Duration::from_secs(300),
            retry_after_extends: false,
        }
    }
}

/// The scope of Outlook's limit of concurrent requests. The revisions of
/// the throttling-limits page disagree: an older one counts them "for each
/// app ID and mailbox combination", the current one per app ID,
/// "regardless of whether the requests all access the same mailbox, or
/// access different mailboxes" (the default here).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ConcurrencyScope {
    /// Per app and mailbox: "Application is over its MailboxConcurrency
    /// limit."
    Mailbox,
    /// Per app across its mailboxes.
    #[default]
    App,
}

/// A request answered with an error instead of by its handler, for faults
/// that concern one path: a folder's listing, a user's lookup, an import
/// URL ([`Faults::answers`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScriptedAnswer {
    /// Requests whose path and query contain this…
    pub path_contains: String,
    /// …sent with this method (any when absent).
    #[serde(default)]
    pub method: Option<String>,
    pub status: u16,
    /// Graph's `error.code` and `error.message`.
    pub code: String,
    pub message: String,
    /// Seconds for a `Retry-After` header.
    #[serde(default)]
    pub retry_after_secs: Option<u64>,
    /// How many requests are answered so (counted down); `None`: all.
    #[serde(default)]
    pub times: Option<u32>,
}

impl ScriptedAnswer {
    /// Every request whose path contains `path_contains` is answered
    /// `status` with Graph's error body.
    pub fn new(path_contains: &str, status: u16, code: &str, message: &str) -> Self {
        Self {
            path_contains: path_contains.to_owned(),
            method: None,
            status,
            code: code.to_owned(),
            message: message.to_owned(),
            retry_after_secs: None,
            times: None,
        }
    }

    /// Only the next `times` such requests.
    pub fn times(mut self, times: u32) -> Self {
        self.times = Some(times);
        self
    }

    /// With `Retry-After: secs`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }
}

/// Injected failures and latency, drawn from a seeded RNG so that the same
/// sequence of requests meets the same failures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Faults {
    /// Master switch for the random 503/504.
    pub enabled: bool,
    pub seed: u64,
    /// Share of admitted requests answered `503 Service Unavailable`.
    pub server_busy_rate: f64,
    /// Share of those 503s that come with an empty body.
    pub empty_body_share: f64,
    /// Share of admitted requests answered `504 Gateway Timeout`.
    pub gateway_timeout_rate: f64,
    /// Share of admitted requests answered `429 TooManyRequests`, each
    /// opening a Retry-After window of `throttle_retry_after` (rounded up to
    /// whole seconds) for the app and mailbox.
    pub throttle_rate: f64,
    #[serde(rename = "throttleRetryAfterSecs", with = "secs")]
    pub throttle_retry_after: Duration,
    /// Every admitted Graph request takes at least this long (it holds its
    /// concurrency slot meanwhile). Applies even when `enabled` is false.
    #[serde(rename = "latencySecs", with = "secs")]
    pub latency: Duration,
    /// The mailboxes (ids, `MBX:…`) the random 429s, 503s and 504s are
    /// drawn for; empty: every mailbox.
    pub only_mailboxes: Vec<String>,
    /// The next this many items `importItem` stores (in any mailbox, even
    /// with `enabled` false) are answered `503 Service Unavailable` all the
    /// same, as by a server that fails after doing the work; counted down.
    pub lost_import_answers: u32,
    /// Folder listings (`folders`, `childFolders`, `mailFolders`) list
    /// every folder twice: the whole collection, then all of it again, so
    /// that later pages repeat folders of earlier ones.
    pub repeat_folders: bool,
    /// Share of the items `importItem` stores (for the mailboxes random
    /// faults are drawn for) answered `504 Gateway Timeout` all the same:
    /// a gateway that gave up while the store did the work.
    pub applied_timeout_rate: f64,
    /// Requests answered as scripted, whatever the switch (the first
    /// matching entry answers).
    pub answers: Vec<ScriptedAnswer>,
    /// Import sessions end this long after they were made, whatever their
    /// `expirationDateTime` says (a session ended early, or deleted).
    #[serde(
        rename = "importSessionsEndAfterSecs",
        with = "secs_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub import_sessions_end_after: Option<Duration>,
}

/// How the emulator refuses a delta or skip token it forgot
/// ([`crate::graph_emulator::GraphEmulator::reset_delta_tokens_as`]): the
/// forms the delta query documentation allows, "410 Gone" with a
/// `Location` header and a "40X-series error" with a code such as
/// `syncStateNotFound`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SyncReset {
    /// `410 Gone`, `syncStateNotFound`, `Location`: the initial query.
    #[default]
    Gone,
    /// `404 Not Found`, `syncStateNotFound`.
    NotFound,
    /// `400 Bad Request`, `resyncRequired`.
    ResyncRequired,
    /// `400 Bad Request`, `SyncStateInvalid`.
    SyncStateInvalid,
}

/// An item that fails on cue ([`crate::graph_emulator::GraphEmulator::fail_item`]):
/// `exportItems` answers its entry with an `error` (Graph's `mailTipsError`,
/// `errorCode` and `message`) and no `data`, and `$value` answers `status`
/// with Graph's error body, until the cue is cleared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ItemFault {
    /// The HTTP status of a single-item request (`$value`).
    pub status: u16,
    /// The error code, e.g. `ErrorItemNotFound`, `ErrorCorruptData`,
    /// `ErrorServerBusy`.
    pub code: String,
    pub message: String,
}

impl ItemFault {
    pub fn new(status: u16, code: &str, message: &str) -> Self {
        Self {
            status,
            code: code.to_owned(),
            message: message.to_owned(),
        }
    }
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            enabled: false,
            seed: 1,
            server_busy_rate: 0.0,
            empty_body_share: 0.0,
            gateway_timeout_rate: 0.0,
            throttle_rate: 0.0,
            throttle_retry_after: Duration::from_secs(1),
            latency: Duration::ZERO,
            only_mailboxes: Vec::new(),
            lost_import_answers: 0,
            repeat_folders: false,
            answers: Vec::new(),
            import_sessions_end_after: None,
            applied_timeout_rate: 0.0,
        }
    }
}

/// One Entra ID tenant.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantSeed {
    /// The tenant id of token URLs (`/{tenant}/oauth2/v2.0/token`).
    pub id: String,
    /// Domain names that also name the tenant in token URLs; the first is
    /// the primary one. Defaults to the domains of the users' UPNs.
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub apps: Vec<AppSeed>,
    #[serde(default)]
    pub users: Vec<UserSeed>,
}

impl TenantSeed {
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            domains: Vec::new(),
            apps: Vec::new(),
            users: Vec::new(),
        }
    }

    pub fn app(mut self, app: AppSeed) -> Self {
        self.apps.push(app);
        self
    }

    pub fn user(mut self, user: UserSeed) -> Self {
        self.users.push(user);
        self
    }
}

/// An app registration with its credentials.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppSeed {
    pub client_id: String,
    /// Client secret, if the app has one.
    #[serde(default)]
    pub secret: Option<String>,
    /// PEM certificates whose keys may sign client assertions.
    #[serde(default)]
    pub certificates_pem: Vec<String>,
    /// The application permissions granted to the app (its tokens'
    /// `roles`, e.g. `MailboxItem.ImportExport.All`); absent: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
}

impl AppSeed {
    /// An app with a client secret.
    pub fn with_secret(client_id: &str, secret: &str) -> Self {
        Self {
            client_id: client_id.to_owned(),
            secret: Some(secret.to_owned()),
            certificates_pem: Vec::new(),
            roles: None,
        }
    }

    /// An app with a certificate (PEM) for client assertions and no secret.
    pub fn with_certificate(client_id: &str, pem: &str) -> Self {
        Self {
            client_id: client_id.to_owned(),
            secret: None,
            certificates_pem: vec![pem.to_owned()],
            roles: None,
        }
    }

    /// Grants only these application permissions.
    pub fn roles(mut self, roles: &[&str]) -> Self {
        self.roles = Some(roles.iter().map(|r| (*r).to_owned()).collect());
        self
    }

    /// Registers a certificate (PEM) for client assertions.
    pub fn certificate(mut self, pem: &str) -> Self {
        self.certificates_pem.push(pem.to_owned());
        self
    }
}

/// A user with a mailbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserSeed {
    pub user_principal_name: String,
    /// Object id (GUID); derived from the UPN when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// `MBX:guid@guid`; derived from the tenant and UPN when absent.
    #[serde(default)]
    pub mailbox_id: Option<String>,
    /// Mailbox quota: an import that would exceed it is refused (507).
    #[serde(default)]
    pub quota_bytes: Option<u64>,
    /// The language of the default folders' display names.
    #[serde(default)]
    pub language: Language,
    /// Folders beyond the default ones (Inbox, Sent Items, ... Tasks).
    #[serde(default)]
    pub folders: Vec<FolderSeed>,
    #[serde(default)]
    pub items: Vec<ItemSeed>,
}

impl UserSeed {
    pub fn new(user_principal_name: &str) -> Self {
        Self {
            user_principal_name: user_principal_name.to_owned(),
            id: None,
            mailbox_id: None,
            quota_bytes: None,
            language: Language::default(),
            folders: Vec::new(),
            items: Vec::new(),
        }
    }

    pub fn quota_bytes(mut self, quota: u64) -> Self {
        self.quota_bytes = Some(quota);
        self
    }

    pub fn language(mut self, language: Language) -> Self {
        self.language = language;
        self
    }

    pub fn folder(mut self, path: &str, class: &str) -> Self {
        self.folders.push(FolderSeed {
            path: path.to_owned(),
            class: class.to_owned(),
            search: false,
        });
        self
    }

    /// A search folder (`PidTagFolderType` 2), as Outlook makes them.
    pub fn search_folder(mut self, path: &str) -> Self {
        self.folders.push(FolderSeed {
            path: path.to_owned(),
            class: default_folder_class(),
            search: true,
        });
        self
    }

    pub fn item(mut self, item: ItemSeed) -> Self {
        self.items.push(item);
        self
    }
}

/// The language a mailbox was set up in: Exchange names its default
/// folders in it (`Postvak IN`, `Posteingang`); their well-known names stay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Language {
    #[default]
    #[serde(rename = "en")]
    English,
    #[serde(rename = "nl")]
    Dutch,
    #[serde(rename = "de")]
    German,
}

/// A folder, created with its missing parents (which get its class).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FolderSeed {
    /// Display names from the top of the mailbox, separated by `/`, e.g.
    /// `Inbox/Projects`; the first may be a well-known name
    /// (`inbox/Projects`).
    pub path: String,
    /// Folder class, e.g. `IPF.Note`, `IPF.Appointment`.
    #[serde(rename = "type", default = "default_folder_class")]
    pub class: String,
    /// A search folder: the leaf is made one (its parents are not).
    #[serde(default)]
    pub search: bool,
}

fn default_folder_class() -> String {
    "IPF.Note".to_owned()
}

/// Follow-up flag of a message, as Graph's `flag.flagStatus`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "camelCase")]
pub enum FlagStatus {
    #[default]
    NotFlagged,
    Flagged,
    Complete,
}

/// An item to create (seed, or at runtime through the test API).
///
/// In JSON the payload is either `mime` (text) or `payloadBase64`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ItemSeedJson", into = "ItemSeedJson")]
pub struct ItemSeed {
    /// Folder path (as in [`FolderSeed::path`]), well-known name or id.
    pub folder: String,
    /// Message class: `IPM.Note`, `IPM.Appointment`, `IPM.Contact`, ...
    pub class: String,
    /// The MIME bytes of a message; opaque properties of other items.
    pub payload: Vec<u8>,
    pub is_read: bool,
    pub flag_status: FlagStatus,
    /// Now when absent.
    pub received: Option<DateTime<Utc>>,
    pub categories: Vec<String>,
}

impl ItemSeed {
    /// A message (`IPM.Note`) with these exact MIME bytes.
    pub fn message(folder: &str, mime: &[u8]) -> Self {
        Self::new(folder, "IPM.Note", mime)
    }

    /// Any item class with an opaque payload.
    pub fn new(folder: &str, class: &str, payload: &[u8]) -> Self {
        Self {
            folder: folder.to_owned(),
            class: class.to_owned(),
            payload: payload.to_vec(),
            is_read: false,
            flag_status: FlagStatus::NotFlagged,
            received: None,
            categories: Vec::new(),
        }
    }

    pub fn read(mut self, is_read: bool) -> Self {
        self.is_read = is_read;
        self
    }

    pub fn flag(mut self, status: FlagStatus) -> Self {
        self.flag_status = status;
        self
    }

    pub fn received(mut self, at: DateTime<Utc>) -> Self {
        self.received = Some(at);
        self
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ItemSeedJson {
    folder: String,
    #[serde(rename = "type", default = "default_item_class")]
    class: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
    #[serde(default)]
    is_read: bool,
    #[serde(default)]
    flag_status: FlagStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    received_date_time: Option<DateTime<Utc>>,
    #[serde(default)]
    categories: Vec<String>,
}

fn default_item_class() -> String {
    "IPM.Note".to_owned()
}

impl TryFrom<ItemSeedJson> for ItemSeed {
    type Error = String;

    fn try_from(json: ItemSeedJson) -> Result<Self, Self::Error> {
        use base64::Engine as _;
        let payload = match (json.mime, json.payload_base64) {
            (Some(mime), None) => mime.into_bytes(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| format!("payloadBase64: {e}"))?,
            (None, None) => Vec::new(),
            (Some(_), Some(_)) => return Err("give either mime or payloadBase64".to_owned()),
        };
        Ok(Self {
            folder: json.folder,
            class: json.class,
            payload,
            is_read: json.is_read,
            flag_status: json.flag_status,
            received: json.received_date_time,
            categories: json.categories,
        })
    }
}

impl From<ItemSeed> for ItemSeedJson {
    fn from(item: ItemSeed) -> Self {
        use base64::Engine as _;
        Self {
            folder: item.folder,
            class: item.class,
            mime: None,
            payload_base64: Some(base64::engine::general_purpose::STANDARD.encode(item.payload)),
            is_read: item.is_read,
            flag_status: item.flag_status,
            received_date_time: item.received,
            categories: item.categories,
        }
    }
}

/// A change to an existing item (test API, for delta tests).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ItemUpdate {
    pub is_read: Option<bool>,
    pub flag_status: Option<FlagStatus>,
    pub categories: Option<Vec<String>>,
    /// Moves the item (folder path, well-known name or id).
    pub folder: Option<String>,
}

/// Optional durations as (fractional) seconds.
pub(crate) mod secs_option {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::secs::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<f64>::deserialize(d)?
            .map(|secs| Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Durations as (fractional) seconds.
pub(crate) mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}
