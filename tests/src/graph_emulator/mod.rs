//! An in-process emulator of the parts of Microsoft's identity platform and
//! Microsoft Graph that a mailbox migration through Exchange Online uses,
//! with real state, Outlook's throttling rules and injected faults.
//!
//! Start one with [`GraphEmulator::start`] (or the `graph-emulator` binary)
//! and point a client at [`GraphEmulator::base_url`] (Graph, `/v1.0/...`)
//! and [`GraphEmulator::authority_url`] (`/{tenant}/oauth2/v2.0/token`).
//!
//! # What is emulated
//!
//! * **Identity**: the client-credentials grant of the v2.0 token endpoint
//!   with a client secret or a certificate client assertion (PS256 with
//!   `iat`, or the older RS256; `x5t#S256` or `x5t` naming a registered
//!   certificate; signature, `aud`, `iss`, `sub`, `jti`, `exp` and `nbf`
//!   are checked and refused with the documented AADSTS codes), for the scopes
//!   `https://graph.microsoft.com/.default` and
//!   `https://outlook.office365.com/.default`. Tokens are opaque random
//!   strings; Entra ID's error bodies (`AADSTSnnnn`) are imitated.
//! * **Application permissions**: a token carries its app's `roles`
//!   ([`AppSeed::roles`], all by default); each operation needs one of the
//!   permissions its API page names, else `403` (`ErrorAccessDenied`,
//!   `Authorization_RequestDenied` for the directory).
//! * **Token introspection** (RFC 7662) at `/introspect` for Dovecot's
//!   `oauth2` passdb, so that a Dovecot can stand in for Exchange's IMAP
//!   side (see [`GraphEmulator::introspection_url`]).
//! * **Graph v1.0**: `users/{id}/settings/exchange`; the mailbox import and
//!   export API (folders with `$filter`/`$top`/`$skip` paging, child
//!   folders, folder creation, folder and item delta, items,
//!   `exportItems`, `createImportSession` and the pre-authenticated import
//!   URL); the mail API's `mailFolders`, `childFolders`, message delta,
//!   messages and `$value`. Collections page with `@odata.nextLink`, delta
//!   rounds end with `@odata.deltaLink`, errors are Graph's `{"error":
//!   {"code","message"}}`. Tokens only see their own tenant's users.
//!   `Prefer: IdType="ImmutableId"` is honoured (default ids change when
//!   an item moves, immutable ones never) and counted per mailbox. A folder's
//!   items list with `$filter` on `createdDateTime`/`lastModifiedDateTime`
//!   and `$expand=singleValueExtendedProperties($filter=id eq '…')` of the
//!   search key (`Binary 0x300B`) and the internet message id (`String
//!   0x1035`).
//! * **The service's clock**: settable apart from this machine's
//!   ([`GraphEmulator::set_clock_skew`]); it stamps items and every
//!   answer's `Date`. As in Exchange, an imported item is a new item of its
//!   store: new timestamps, its own record key, so its export stream is
//!   not the bytes it was imported from; its search key travels with it.
//! * **Rules**: concurrent requests per app (or per app and mailbox, see
//!   [`ConcurrencyScope`]; 429 `ApplicationThrottled` without
//!   `Retry-After`), requests per window and upload bytes per window per
//!   app and mailbox (429 with `Retry-After`, requests inside the window
//!   are refused again), pages of 10 by default and of up to 1,000 on
//!   `Prefer: odata.maxpagesize`, mailbox quotas (507), delta tokens
//!   invalidated on demand (410 `syncStateNotFound`, or the other
//!   documented forms of [`SyncReset`]), imports answered 503 or 504 after
//!   their item was stored, expired tokens (401), import URLs expired or
//!   ended early (`404` by default, or `401`/`403`), unknown users (404
//!   `Request_ResourceNotFound`), random 503 (some with an empty body) and
//!   504 from a seeded RNG (for all mailboxes or chosen ones), an optional
//!   latency, requests answered with a scripted error by path (a folder's
//!   `403`, a `503` or `509` with `Retry-After`, see [`ScriptedAnswer`]),
//!   and items that fail on cue: an `exportItems` entry with an `error`
//!   (`errorCode`, `message`) instead of `data`, an error answer of
//!   `$value`. See [`Limits`], [`Faults`] and [`ItemFault`].
//! * **Test API**: seed tenants, add/modify/move/delete items, reset delta
//!   tokens, snapshot mailboxes for item-by-item comparisons, read
//!   per-mailbox statistics, change limits and faults at runtime, as Rust
//!   methods of [`GraphEmulator`] and over HTTP under `/_emulator/`.
//!
//! # What is not
//!
//! Delegated (user) tokens and consent (an app's application permissions
//! are what its seed grants); `$orderby`, `$count`, `$search`, any other
//! `$expand` and any `$filter` other than `type eq '...'` on folders and
//! the timestamps of items; folder update,
//! move and deletion; item deletion through Graph; JSON batching;
//! attachments, events, contacts and the other Outlook resources beyond
//! messages. The export stream is the emulator's own format, not
//! Exchange's FastTransfer stream: it is opaque to clients and only this
//! emulator can import it. `@odata.context` values are approximations.

mod api;
mod config;
mod control;
mod error;
mod export;
mod identity;
mod mail;
mod model;
mod odata;
mod permissions;
mod pipeline;
mod rules;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use tokio::task::JoinHandle;

pub use config::{
    AppSeed, ConcurrencyScope, EmulatorConfig, Faults, FlagStatus, FolderSeed, ItemFault, ItemSeed,
    ItemUpdate, Language, Limits, ScriptedAnswer, SyncReset, TenantSeed, UserSeed,
};
pub use model::{FolderSnapshot, ItemSnapshot, MailboxSnapshot};
pub use rules::{MailboxStats, RequestEvent, ScriptedEvent, ThrottleReason};

/// The scope for Microsoft Graph.
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
/// The scope for Exchange Online's IMAP/POP/EWS side.
pub const OUTLOOK_SCOPE: &str = "https://outlook.office365.com/.default";

/// A running emulator; stops when dropped.
pub struct GraphEmulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl std::fmt::Debug for GraphEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphEmulator")
            .field("addr", &self.addr)
            .finish()
    }
}

impl GraphEmulator {
    /// Seeds the emulator and starts serving on `config.listen`.
    pub async fn start(config: EmulatorConfig) -> Result<GraphEmulator> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(format!("http://{addr}"), &config)?);
        let app = api::router(shared.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("graph emulator on {addr} stopped: {e}");
            }
        });
        Ok(GraphEmulator {
            addr,
            shared,
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Graph's root, e.g. `http://127.0.0.1:PORT` (requests go to
    /// `{base_url}/v1.0/...`).
    pub fn base_url(&self) -> &str {
        &self.shared.base_url
    }

    /// `{base_url}/v1.0`.
    pub fn graph_url(&self) -> String {
        format!("{}/v1.0", self.shared.base_url)
    }

    /// The identity platform's authority host (token URLs are
    /// `{authority_url}/{tenant}/oauth2/v2.0/token`).
    pub fn authority_url(&self) -> &str {
        &self.shared.base_url
    }

    /// The token endpoint of a tenant; also the `aud` a client assertion
    /// must carry.
    pub fn token_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.shared.base_url)
    }

    /// RFC 7662 introspection, `GET ...?token=` style. For Dovecot 2.3:
    /// `introspection_mode = get`, `introspection_url = <this>`,
    /// `username_attribute = username`, `username_format = %d`,
    /// `active_attribute = active`, `active_value = true`. Dovecot 2.3 cannot
    /// put the login name into the URL, so the answer for an app-only token
    /// names the app in the tenant's primary domain and `%d` makes Dovecot
    /// accept exactly the users of that domain.
    pub fn introspection_url(&self) -> String {
        format!("{}/introspect?token=", self.shared.base_url)
    }

    /// Access tokens issued so far (every tenant, app and scope).
    pub fn tokens_issued(&self) -> usize {
        self.shared.lock().tokens.len()
    }

    /// Adds a tenant with its apps and users at runtime.
    pub fn add_tenant(&self, tenant: &TenantSeed) -> Result<()> {
        self.shared.add_tenant(tenant)
    }

    /// The mailbox id (`MBX:...`) of a user (UPN, user id or mailbox id).
    pub fn mailbox_id(&self, user: &str) -> Result<String> {
        let state = self.shared.lock();
        let mailbox = state
            .directory
            .mailbox(user)
            .ok_or_else(|| no_mailbox(user))?;
        Ok(mailbox.id.clone())
    }

    /// Adds an item; returns its immutable id.
    pub fn add_item(&self, mailbox: &str, item: &ItemSeed) -> Result<String> {
        self.shared.add_item(mailbox, item)
    }

    /// Changes an item (read state, flag, categories, folder).
    pub fn update_item(&self, mailbox: &str, item_id: &str, update: &ItemUpdate) -> Result<()> {
        self.shared.update_item(mailbox, item_id, update)
    }

    pub fn delete_item(&self, mailbox: &str, item_id: &str) -> Result<()> {
        self.shared.delete_item(mailbox, item_id)
    }

    /// The immutable ids of the items of `target` that are copies of item
    /// `item_id` of `source` (the same search key), in id order.
    pub fn copies(&self, source: &str, item_id: &str, target: &str) -> Result<Vec<String>> {
        let state = self.shared.lock();
        let mailbox = |user: &str| {
            state
                .directory
                .mailbox(user)
                .ok_or_else(|| no_mailbox(user))
        };
        let original = mailbox(source)?
            .item(item_id)
            .ok_or_else(|| anyhow!("no item {item_id:?} in {source:?}"))?;
        let key = &original.content.search_key;
        Ok(mailbox(target)?
            .items
            .values()
            .filter(|item| key.is_some() && &item.content.search_key == key)
            .map(|item| item.id.clone())
            .collect())
    }

    /// Makes every delta and skip token of the mailbox answer `410 Gone`.
    pub fn reset_delta_tokens(&self, mailbox: &str) -> Result<()> {
        self.reset_delta_tokens_as(mailbox, SyncReset::Gone)
    }

    /// Makes every delta and skip token of the mailbox answer as `form`
    /// says (this and later resets).
    pub fn reset_delta_tokens_as(&self, mailbox: &str, form: SyncReset) -> Result<()> {
        self.shared.reset_delta_tokens(mailbox, form)
    }

    /// Puts the service's clock `skew` ahead of this machine's (behind when
    /// negative): item timestamps and every answer's `Date` follow it.
    pub fn set_clock_skew(&self, skew: chrono::TimeDelta) {
        self.shared.clock.set_skew(skew);
    }

    /// The service's time now.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.shared.clock.now()
    }

    /// Makes an item fail on cue (see [`ItemFault`]) until
    /// [`GraphEmulator::clear_item_faults`]; it is still listed as usual.
    pub fn fail_item(&self, mailbox: &str, item_id: &str, fault: ItemFault) -> Result<()> {
        self.shared.with_mailbox(mailbox, |m| {
            let id = m.item(item_id).ok_or("no such item")?.id.clone();
            m.item_faults.insert(id, fault);
            Ok(())
        })
    }

    /// Ends every cued item fault of the mailbox.
    pub fn clear_item_faults(&self, mailbox: &str) -> Result<()> {
        self.shared.with_mailbox(mailbox, |m| {
            m.item_faults.clear();
            Ok(())
        })
    }

    pub fn snapshot(&self, mailbox: &str) -> Result<MailboxSnapshot> {
        self.shared.snapshot(mailbox)
    }

    pub fn stats(&self, mailbox: &str) -> Result<MailboxStats> {
        self.shared.stats(mailbox)
    }

    pub fn limits(&self) -> Limits {
        self.shared.lock().rules.limits.clone()
    }

    /// Changes the limits; counters and open Retry-After windows stay.
    pub fn set_limits(&self, limits: Limits) {
        self.shared.lock().rules.limits = limits;
    }

    pub fn faults(&self) -> Faults {
        self.shared.lock().rules.faults.clone()
    }

    /// Changes the faults and restarts their RNG from `faults.seed`.
    pub fn set_faults(&self, faults: Faults) {
        self.shared.lock().rules.set_faults(faults);
    }

    /// The requests answered by [`Faults::answers`] so far.
    pub fn scripted_events(&self) -> Vec<ScriptedEvent> {
        self.shared.lock().rules.scripted_events()
    }

    /// The id of a folder (by id, well-known name or `/`-separated path).
    pub fn folder_id(&self, mailbox: &str, folder: &str) -> Result<String> {
        self.shared.with_mailbox(mailbox, |m| {
            let found = m.folder_by_any(folder).ok_or("no such folder")?;
            Ok(found.id.clone())
        })
    }
}

impl Drop for GraphEmulator {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// State shared by the HTTP handlers and the [`GraphEmulator`] handle.
pub(crate) struct Shared {
    pub base_url: String,
    /// The service's clock (also the directory's).
    pub clock: model::Clock,
    state: Mutex<State>,
}

/// An issued access token.
pub(crate) struct AccessToken {
    pub tenant_id: String,
    pub client_id: String,
    pub scope: &'static str,
    /// The `roles` claim: the app's application permissions (`None`: all).
    pub roles: Option<Vec<String>>,
    pub expires_at: Instant,
    pub issued_unix: i64,
    pub expires_unix: i64,
}

impl AccessToken {
    pub fn is_live(&self) -> bool {
        Instant::now() < self.expires_at
    }
}

/// A mailboxItemImportSession.
pub(crate) struct ImportSession {
    pub client_id: String,
    pub mailbox_id: String,
    pub expires_at: Instant,
}

pub(crate) struct State {
    pub directory: model::Directory,
    pub tokens: HashMap<String, AccessToken>,
    pub import_sessions: HashMap<String, ImportSession>,
    pub cursors: HashMap<String, odata::DeltaCursor>,
    pub rules: rules::Rules,
    pub token_lifetime: Duration,
    pub import_session_lifetime: Duration,
    pub expired_import_url_status: u16,
}

impl Shared {
    fn new(base_url: String, config: &EmulatorConfig) -> Result<Self> {
        let mut directory = model::Directory::default();
        let clock = directory.clock.clone();
        for tenant in &config.tenants {
            directory.add_tenant(tenant).map_err(|e| anyhow!(e))?;
        }
        let state = State {
            directory,
            tokens: HashMap::new(),
            import_sessions: HashMap::new(),
            cursors: HashMap::new(),
            rules: rules::Rules::new(config.limits.clone(), config.faults.clone(), Instant::now()),
            token_lifetime: config.token_lifetime,
            import_session_lifetime: config.import_session_lifetime,
            expired_import_url_status: config.expired_import_url_status,
        };
        Ok(Self {
            base_url,
            clock,
            state: Mutex::new(state),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add_tenant(&self, tenant: &TenantSeed) -> Result<()> {
        self.lock()
            .directory
            .add_tenant(tenant)
            .map_err(|e| anyhow!(e))
    }

    fn with_mailbox<T>(
        &self,
        mailbox: &str,
        f: impl FnOnce(&mut model::Mailbox) -> Result<T, String>,
    ) -> Result<T> {
        let mut state = self.lock();
        let mailbox_ref = state
            .directory
            .mailbox_mut(mailbox)
            .ok_or_else(|| no_mailbox(mailbox))?;
        f(mailbox_ref).map_err(|e| anyhow!(e))
    }

    fn add_item(&self, mailbox: &str, item: &ItemSeed) -> Result<String> {
        self.with_mailbox(mailbox, |m| model::add_seed_item(m, item))
    }

    fn update_item(&self, mailbox: &str, item_id: &str, update: &ItemUpdate) -> Result<()> {
        self.with_mailbox(mailbox, |m| m.update_item(item_id, update))
    }

    fn delete_item(&self, mailbox: &str, item_id: &str) -> Result<()> {
        self.with_mailbox(mailbox, |m| m.delete_item(item_id))
    }

    fn reset_delta_tokens(&self, mailbox: &str, form: SyncReset) -> Result<()> {
        self.with_mailbox(mailbox, |m| {
            m.sync_generation += 1;
            m.sync_reset = form;
            Ok(())
        })
    }

    fn snapshot(&self, mailbox: &str) -> Result<MailboxSnapshot> {
        self.with_mailbox(mailbox, |m| Ok(m.snapshot()))
    }

    fn stats(&self, mailbox: &str) -> Result<MailboxStats> {
        let state = self.lock();
        let mailbox = state
            .directory
            .mailbox(mailbox)
            .ok_or_else(|| no_mailbox(mailbox))?;
        Ok(state.rules.stats(&mailbox.id))
    }
}

fn no_mailbox(reference: &str) -> anyhow::Error {
    anyhow!("no mailbox {reference:?} (give a UPN, user id or mailbox id)")
}
