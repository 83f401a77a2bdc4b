//! The emulated directory and mailboxes: tenants with their apps, users
//! with one mailbox each, folders, items, and the change log behind delta
//! queries.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;

use super::config::{
    FlagStatus, ItemFault, ItemSeed, ItemUpdate, Language, SyncReset, TenantSeed, UserSeed,
};
use super::export::ItemContent;

/// A folder every mailbox has (Exchange Online makes them with the
/// mailbox, named in the mailbox's language).
struct DefaultFolder {
    well_known: &'static str,
    class: &'static str,
    /// The well-known name of its parent; `None`: the top of the mailbox.
    parent: Option<&'static str>,
    /// English, Dutch and German display names.
    names: [&'static str; 3],
}

const fn default_folder(
    well_known: &'static str,
    class: &'static str,
    parent: Option<&'static str>,
    names: [&'static str; 3],
) -> DefaultFolder {
    DefaultFolder {
        well_known,
        class,
        parent,
        names,
    }
}

/// The folders every mailbox has, parents first: the user's, and the
/// system folders of Outlook and Skype (Outbox, Sync Issues and its
/// children, Conversation History).
const DEFAULT_FOLDERS: [DefaultFolder; 16] = [
    default_folder(
        "inbox",
        "IPF.Note",
        None,
        ["Inbox", "Postvak IN", "Posteingang"],
    ),
    default_folder(
        "sentitems",
        "IPF.Note",
        None,
        ["Sent Items", "Verzonden items", "Gesendete Elemente"],
    ),
    default_folder(
        "drafts",
        "IPF.Note",
        None,
        ["Drafts", "Concepten", "Entwürfe"],
    ),
    default_folder(
        "deleteditems",
        "IPF.Note",
        None,
        ["Deleted Items", "Verwijderde items", "Gelöschte Elemente"],
    ),
    default_folder(
        "junkemail",
        "IPF.Note",
        None,
        ["Junk Email", "Ongewenste e-mail", "Junk-E-Mail"],
    ),
    default_folder(
        "archive",
        "IPF.Note",
        None,
        ["Archive", "Archief", "Archiv"],
    ),
    default_folder(
        "calendar",
        "IPF.Appointment",
        None,
        ["Calendar", "Agenda", "Kalender"],
    ),
    default_folder(
        "contacts",
        "IPF.Contact",
        None,
        ["Contacts", "Contactpersonen", "Kontakte"],
    ),
    default_folder("tasks", "IPF.Task", None, ["Tasks", "Taken", "Aufgaben"]),
    default_folder(
        "notes",
        "IPF.StickyNote",
        None,
        ["Notes", "Notities", "Notizen"],
    ),
    default_folder(
        "outbox",
        "IPF.Note",
        None,
        ["Outbox", "Postvak UIT", "Postausgang"],
    ),
    default_folder(
        "syncissues",
        "IPF.Note",
        None,
        [
            "Sync Issues",
            "Synchronisatieproblemen",
            "Synchronisierungsprobleme",
        ],
    ),
    default_folder(
        "conflicts",
        "IPF.Note",
        Some("syncissues"),
        ["Conflicts", "Conflicten", "Konflikte"],
    ),
    default_folder(
        "localfailures",
        "IPF.Note",
        Some("syncissues"),
        ["Local Failures", "Lokale fouten", "Lokale Fehler"],
    ),
    default_folder(
        "serverfailures",
        "IPF.Note",
        Some("syncissues"),
        ["Server Failures", "Serverfouten", "Serverfehler"],
    ),
    default_folder(
        "conversationhistory",
        "IPF.Note",
        None,
        [
            "Conversation History",
            "Gespreksgeschiedenis",
            "Unterhaltungsverlauf",
        ],
    ),
];

/// Well-known name of the root ("Top of Information Store").
const ROOT_WELL_KNOWN: &str = "msgfolderroot";

pub(crate) struct Tenant {
    pub id: String,
    pub domains: Vec<String>,
    pub apps: Vec<App>,
}

impl Tenant {
    /// Whether `name` (from a token URL) names this tenant.
    pub fn is_named(&self, name: &str) -> bool {
        self.id.eq_ignore_ascii_case(name)
            || self.domains.iter().any(|d| d.eq_ignore_ascii_case(name))
    }

    pub fn primary_domain(&self) -> &str {
        self.domains
            .first()
            .map_or(self.id.as_str(), String::as_str)
    }
}

pub(crate) struct App {
    pub client_id: String,
    pub secret: Option<String>,
    pub certificates: Vec<Certificate>,
    /// Granted application permissions; `None`: all of them.
    pub roles: Option<Vec<String>>,
}

/// A registered certificate: its DER and thumbprints (`x5t`, `x5t#S256`).
pub(crate) struct Certificate {
    pub der: Vec<u8>,
    pub sha1: Vec<u8>,
    pub sha256: Vec<u8>,
}

impl Certificate {
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let der = CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .ok_or("no certificate in PEM")?
            .map_err(|e| format!("bad certificate PEM: {e}"))?
            .to_vec();
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &der)
            .as_ref()
            .to_vec();
        let sha256 = ring::digest::digest(&ring::digest::SHA256, &der)
            .as_ref()
            .to_vec();
        Ok(Self { der, sha1, sha256 })
    }
}

pub(crate) struct Folder {
    pub id: String,
    /// `None` for the root only.
    pub parent_id: Option<String>,
    pub display_name: String,
    pub class: String,
    pub well_known: Option<&'static str>,
    /// A search folder (`PidTagFolderType` 2) rather than a generic one.
    pub search: bool,
    /// Creation order, for stable listings.
    pub order: u64,
    pub changed_seq: u64,
}

pub(crate) struct Item {
    /// The immutable id (`Prefer: IdType="ImmutableId"`).
    pub id: String,
    /// The default id, which changes when the item moves.
    pub rest_id: String,
    pub folder_id: String,
    pub content: ItemContent,
    pub last_modified: DateTime<Utc>,
    pub version: u64,
    pub size: u64,
    pub created_seq: u64,
    pub changed_seq: u64,
}

impl Item {
    pub fn public_id(&self, immutable: bool) -> &str {
        if immutable { &self.id } else { &self.rest_id }
    }

    /// The item's version (`changeKey`): changes with every modification.
    pub fn change_key(&self) -> String {
        let hash = blake3::hash(format!("{}/{}", self.id, self.version).as_bytes());
        format!(
            "CQAAABYAAA{}",
            URL_SAFE_NO_PAD.encode(&hash.as_bytes()[..18])
        )
    }
}

/// An item that left a folder (deleted or moved away).
struct Tombstone {
    folder_id: String,
    id: String,
    rest_id: String,
    seq: u64,
}

/// What a delta query follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DeltaScope {
    /// `folders/delta`: every folder below the root.
    Folders,
    /// `folders/{id}/items/delta`: every item of a folder.
    Items { folder_id: String },
    /// `mailFolders/{id}/messages/delta`: the messages of a folder.
    Messages { folder_id: String },
}

/// The `changeType` custom query option of message delta queries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChangeFilter {
    All,
    Created,
    Updated,
    Deleted,
}

/// One entry of a delta round, ordered by `key`.
pub(crate) enum DeltaEntry<'a> {
    Folder(&'a Folder),
    Item(&'a Item),
    Removed { key: String, id: String },
}

impl DeltaEntry<'_> {
    pub fn key(&self) -> &str {
        match self {
            DeltaEntry::Folder(f) => &f.id,
            DeltaEntry::Item(i) => &i.id,
            DeltaEntry::Removed { key, .. } => key,
        }
    }
}

/// Why a folder could not be created.
pub(crate) enum CreateFolderError {
    Exists,
    ParentNotFound,
}

/// The emulated service's clock: this machine's, skewed by a settable
/// offset (a server's clock is never the client's). Shared by the mailboxes
/// (timestamps of items) and the answers (`Date`).
#[derive(Clone, Default)]
pub(crate) struct Clock(Arc<AtomicI64>);

impl Clock {
    /// Now on the server, in whole seconds as Exchange stamps items.
    pub fn now(&self) -> DateTime<Utc> {
        (Utc::now() + chrono::TimeDelta::seconds(self.0.load(Ordering::Relaxed))).trunc_subsecs(0)
    }

    /// Puts the server's clock `skew` ahead of this machine's (behind when
    /// negative), in whole seconds.
    pub fn set_skew(&self, skew: chrono::TimeDelta) {
        self.0.store(skew.num_seconds(), Ordering::Relaxed);
    }
}

pub(crate) struct Mailbox {
    pub id: String,
    pub tenant_id: String,
    pub upn: String,
    pub user_id: String,
    pub quota_bytes: Option<u64>,
    pub root_id: String,
    pub folders: BTreeMap<String, Folder>,
    pub items: BTreeMap<String, Item>,
    rest_ids: HashMap<String, String>,
    tombstones: Vec<Tombstone>,
    /// Change sequence: bumped by every change of a folder or item.
    pub seq: u64,
    /// Bumped by `reset_delta_tokens`: older state tokens are gone (410).
    pub sync_generation: u64,
    /// Items that fail on cue, by immutable id.
    pub item_faults: HashMap<String, ItemFault>,
    /// How a delta or skip token of an older generation is refused.
    pub sync_reset: SyncReset,
    id_counter: u64,
    clock: Clock,
}

impl Mailbox {
    fn new(tenant_id: &str, user: &UserSeed, clock: Clock) -> Self {
        let upn = user.user_principal_name.clone();
        let user_id = user
            .id
            .clone()
            .unwrap_or_else(|| guid(&format!("user/{tenant_id}/{upn}")));
        let mailbox_id = user.mailbox_id.clone().unwrap_or_else(|| {
            format!(
                "MBX:{}@{}",
                guid(&format!("mbx/{user_id}")),
                guid(&format!("org/{tenant_id}"))
            )
        });
        let mut mailbox = Mailbox {
            id: mailbox_id,
            tenant_id: tenant_id.to_owned(),
            upn,
            user_id,
            quota_bytes: user.quota_bytes,
            root_id: String::new(),
            folders: BTreeMap::new(),
            items: BTreeMap::new(),
            rest_ids: HashMap::new(),
            tombstones: Vec::new(),
            seq: 0,
            sync_generation: 0,
            item_faults: HashMap::new(),
            sync_reset: SyncReset::default(),
            id_counter: 0,
            clock,
        };
        let root_id = mailbox.insert_folder(
            None,
            "Top of Information Store",
            "IPF.Note",
            Some(ROOT_WELL_KNOWN),
        );
        mailbox.root_id = root_id.clone();
        let language = match user.language {
            Language::English => 0,
            Language::Dutch => 1,
            Language::German => 2,
        };
        for folder in DEFAULT_FOLDERS {
            let parent = match folder.parent {
                Some(parent) => mailbox.folder(parent).map(|f| f.id.clone()),
                None => Some(root_id.clone()),
            };
            mailbox.insert_folder(
                parent.as_deref(),
                folder.names[language],
                folder.class,
                Some(folder.well_known),
            );
        }
        mailbox
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.id_counter += 1;
        let hash = blake3::hash(format!("{}/{prefix}/{}", self.id, self.id_counter).as_bytes());
        format!("{prefix}{}", URL_SAFE_NO_PAD.encode(&hash.as_bytes()[..27]))
    }

    fn bump(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn insert_folder(
        &mut self,
        parent_id: Option<&str>,
        name: &str,
        class: &str,
        well_known: Option<&'static str>,
    ) -> String {
        let id = self.next_id("AAMkAF");
        let seq = self.bump();
        let folder = Folder {
            id: id.clone(),
            parent_id: parent_id.map(str::to_owned),
            display_name: name.to_owned(),
            class: class.to_owned(),
            well_known,
            search: false,
            order: self.id_counter,
            changed_seq: seq,
        };
        self.folders.insert(id.clone(), folder);
        id
    }

    /// Creates a folder below `parent_id`, refusing a duplicate name.
    pub fn create_folder(
        &mut self,
        parent_id: &str,
        name: &str,
        class: &str,
    ) -> Result<String, CreateFolderError> {
        if !self.folders.contains_key(parent_id) {
            return Err(CreateFolderError::ParentNotFound);
        }
        if self.child(parent_id, name).is_some() {
            return Err(CreateFolderError::Exists);
        }
        Ok(self.insert_folder(Some(parent_id), name, class, None))
    }

    fn child(&self, parent_id: &str, name: &str) -> Option<&Folder> {
        self.folders.values().find(|f| {
            f.parent_id.as_deref() == Some(parent_id) && f.display_name.eq_ignore_ascii_case(name)
        })
    }

    /// The folder a seed path's level names below `parent_id`: a child of
    /// that display name, or at the top, a well-known folder of that name.
    fn seed_child(&self, parent_id: &str, name: &str) -> Option<&Folder> {
        self.child(parent_id, name).or_else(|| {
            (parent_id == self.root_id)
                .then(|| self.folder(name))
                .flatten()
        })
    }

    /// Direct children of a folder, in creation order.
    pub fn children(&self, parent_id: &str) -> Vec<&Folder> {
        let mut children: Vec<&Folder> = self
            .folders
            .values()
            .filter(|f| f.parent_id.as_deref() == Some(parent_id))
            .collect();
        children.sort_by_key(|f| f.order);
        children
    }

    /// A folder by id or well-known name (as Graph URLs name folders).
    pub fn folder(&self, reference: &str) -> Option<&Folder> {
        if let Some(folder) = self.folders.get(reference) {
            return Some(folder);
        }
        self.folders.values().find(|f| {
            f.well_known
                .is_some_and(|w| w.eq_ignore_ascii_case(reference))
        })
    }

    /// A folder by id, well-known name or `/`-separated display-name path.
    pub fn folder_by_any(&self, reference: &str) -> Option<&Folder> {
        if let Some(folder) = self.folder(reference) {
            return Some(folder);
        }
        let mut current = self.folders.get(&self.root_id)?;
        for name in reference.split('/').filter(|n| !n.is_empty()) {
            current = self.seed_child(&current.id, name)?;
        }
        (current.id != self.root_id).then_some(current)
    }

    /// Finds or creates a folder path; new folders get `class`.
    pub fn ensure_folder_path(&mut self, path: &str, class: &str) -> Result<String, String> {
        let mut current = self.root_id.clone();
        for name in path.split('/').filter(|n| !n.is_empty()) {
            current = match self.seed_child(&current, name) {
                Some(folder) => folder.id.clone(),
                None => self.insert_folder(Some(&current), name, class, None),
            };
        }
        if current == self.root_id {
            return Err(format!("empty folder path {path:?}"));
        }
        Ok(current)
    }

    /// Display names from the top of the mailbox down to the folder.
    pub fn folder_path(&self, folder_id: &str) -> Vec<String> {
        let mut path = Vec::new();
        let mut current = self.folders.get(folder_id);
        while let Some(folder) = current {
            let Some(parent) = &folder.parent_id else {
                break;
            };
            path.push(folder.display_name.clone());
            current = self.folders.get(parent);
        }
        path.reverse();
        path
    }

    pub fn used_bytes(&self) -> u64 {
        self.items.values().map(|i| i.size).sum()
    }

    /// Whether adding `bytes` would exceed the quota.
    pub fn over_quota_with(&self, bytes: u64) -> bool {
        self.quota_bytes
            .is_some_and(|quota| self.used_bytes() + bytes > quota)
    }

    fn rest_id_for(&self, id: &str, folder_id: &str, version: u64) -> String {
        let hash = blake3::hash(format!("{id}/{folder_id}/{version}").as_bytes());
        format!("AQMkAD{}", URL_SAFE_NO_PAD.encode(&hash.as_bytes()[..27]))
    }

    /// The server's time now.
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Adds an item to a folder and returns its immutable id. As Exchange
    /// does, the store gives the new item its own record key, and a search
    /// key unless the item brings one (an import keeps it).
    pub fn add_item(&mut self, folder_id: &str, mut content: ItemContent) -> String {
        let id = self.next_id("AAkALg");
        let rest_id = self.rest_id_for(&id, folder_id, 0);
        let seq = self.bump();
        let key = blake3::hash(format!("{}/{id}", self.id).as_bytes());
        content
            .search_key
            .get_or_insert_with(|| key.as_bytes()[..16].to_vec());
        content.record_key = URL_SAFE_NO_PAD.encode(&key.as_bytes()[16..]);
        let size = content.encode().len() as u64;
        let item = Item {
            id: id.clone(),
            rest_id: rest_id.clone(),
            folder_id: folder_id.to_owned(),
            content,
            last_modified: self.clock.now(),
            version: 1,
            size,
            created_seq: seq,
            changed_seq: seq,
        };
        self.rest_ids.insert(rest_id, id.clone());
        self.items.insert(id.clone(), item);
        id
    }

    /// An item by immutable or default id.
    pub fn item(&self, id: &str) -> Option<&Item> {
        let key = self.rest_ids.get(id).map_or(id, String::as_str);
        self.items.get(key)
    }

    /// The fault cued for an item (by either of its ids), if any.
    pub fn item_fault(&self, id: &str) -> Option<&ItemFault> {
        self.item_faults.get(&self.item(id)?.id)
    }

    fn item_key(&self, id: &str) -> Option<String> {
        self.item(id).map(|i| i.id.clone())
    }

    /// Replaces an item's content (import in `update` mode).
    pub fn replace_item(&mut self, id: &str, mut content: ItemContent) -> Option<&Item> {
        let key = self.item_key(id)?;
        let seq = self.bump();
        let now = self.clock.now();
        let item = self.items.get_mut(&key)?;
        content.record_key = item.content.record_key.clone();
        item.size = content.encode().len() as u64;
        item.content = content;
        item.version += 1;
        item.last_modified = now;
        item.changed_seq = seq;
        Some(item)
    }

    /// Applies a test-API change; moving gives the item a new default id.
    pub fn update_item(&mut self, id: &str, update: &ItemUpdate) -> Result<(), String> {
        let key = self.item_key(id).ok_or_else(|| format!("no item {id:?}"))?;
        let target_folder = match &update.folder {
            Some(reference) => Some(
                self.folder_by_any(reference)
                    .ok_or_else(|| format!("no folder {reference:?}"))?
                    .id
                    .clone(),
            ),
            None => None,
        };
        let seq = self.bump();
        let now = self.clock.now();
        let item = self.items.get_mut(&key).expect("looked up above");
        if let Some(is_read) = update.is_read {
            item.content.is_read = is_read;
        }
        if let Some(flag) = update.flag_status {
            item.content.flag_status = flag;
        }
        if let Some(categories) = &update.categories {
            item.content.categories = categories.clone();
        }
        item.size = item.content.encode().len() as u64;
        item.version += 1;
        item.last_modified = now;
        item.changed_seq = seq;
        let Some(folder_id) = target_folder else {
            return Ok(());
        };
        if folder_id == item.folder_id {
            return Ok(());
        }
        let old_folder = std::mem::replace(&mut item.folder_id, folder_id.clone());
        let old_rest_id = item.rest_id.clone();
        let version = item.version;
        self.tombstones.push(Tombstone {
            folder_id: old_folder,
            id: key.clone(),
            rest_id: old_rest_id.clone(),
            seq,
        });
        let new_rest_id = self.rest_id_for(&key, &folder_id, version);
        self.rest_ids.remove(&old_rest_id);
        self.rest_ids.insert(new_rest_id.clone(), key.clone());
        self.items.get_mut(&key).expect("present").rest_id = new_rest_id;
        Ok(())
    }

    pub fn delete_item(&mut self, id: &str) -> Result<(), String> {
        let key = self.item_key(id).ok_or_else(|| format!("no item {id:?}"))?;
        let seq = self.bump();
        let item = self.items.remove(&key).expect("looked up above");
        self.rest_ids.remove(&item.rest_id);
        self.tombstones.push(Tombstone {
            folder_id: item.folder_id,
            id: item.id,
            rest_id: item.rest_id,
            seq,
        });
        Ok(())
    }

    /// Items of a folder, ordered by id.
    pub fn items_in(&self, folder_id: &str) -> Vec<&Item> {
        self.items
            .values()
            .filter(|i| i.folder_id == folder_id)
            .collect()
    }

    /// The entries of a delta round, ordered by key: everything present
    /// for an initial round (`since` = None), else what changed after
    /// `since`, with removals.
    pub fn delta_entries(
        &self,
        scope: &DeltaScope,
        since: Option<u64>,
        filter: ChangeFilter,
        immutable_ids: bool,
    ) -> Vec<DeltaEntry<'_>> {
        let changed_after = |seq: u64| since.is_none_or(|s| seq > s);
        let mut entries: BTreeMap<String, DeltaEntry<'_>> = BTreeMap::new();
        let scope_folder = match scope {
            DeltaScope::Folders => None,
            DeltaScope::Items { folder_id } | DeltaScope::Messages { folder_id } => {
                Some(folder_id.as_str())
            }
        };
        let want_present = filter != ChangeFilter::Deleted;
        let want_removed = matches!(filter, ChangeFilter::All | ChangeFilter::Deleted);
        if let (Some(since), Some(scope_folder), true) = (since, scope_folder, want_removed) {
            for tomb in &self.tombstones {
                if tomb.seq <= since || tomb.folder_id != scope_folder {
                    continue;
                }
                let id = if immutable_ids {
                    &tomb.id
                } else {
                    &tomb.rest_id
                };
                entries.insert(
                    tomb.id.clone(),
                    DeltaEntry::Removed {
                        key: tomb.id.clone(),
                        id: id.clone(),
                    },
                );
            }
        }
        if !want_present {
            return entries.into_values().collect();
        }
        let created_ok = |created_seq: u64| match (filter, since) {
            (ChangeFilter::Created, Some(s)) => created_seq > s,
            (ChangeFilter::Updated, Some(s)) => created_seq <= s,
            _ => true,
        };
        match scope {
            DeltaScope::Folders => {
                for folder in self.folders.values() {
                    if folder.parent_id.is_some() && changed_after(folder.changed_seq) {
                        entries.insert(folder.id.clone(), DeltaEntry::Folder(folder));
                    }
                }
            }
            DeltaScope::Items { folder_id } | DeltaScope::Messages { folder_id } => {
                let messages_only = matches!(scope, DeltaScope::Messages { .. });
                for item in self.items_in(folder_id) {
                    if messages_only && !item.content.is_message() {
                        continue;
                    }
                    if changed_after(item.changed_seq) && created_ok(item.created_seq) {
                        entries.insert(item.id.clone(), DeltaEntry::Item(item));
                    }
                }
            }
        }
        entries.into_values().collect()
    }

    pub fn snapshot(&self) -> MailboxSnapshot {
        let mut folders: Vec<FolderSnapshot> = self
            .folders
            .values()
            .filter(|f| f.parent_id.is_some())
            .map(|folder| {
                let mut items: Vec<ItemSnapshot> = self
                    .items_in(&folder.id)
                    .into_iter()
                    .map(|item| ItemSnapshot {
                        class: item.content.class.clone(),
                        export_data: item.content.encode(),
                        mime: item
                            .content
                            .is_message()
                            .then(|| item.content.payload.clone()),
                        is_read: item.content.is_read,
                        flag_status: item.content.flag_status,
                        received: item.content.received,
                        created: item.content.created,
                        categories: item.content.categories.clone(),
                        search_key: item.content.search_key.clone(),
                        payload: item.content.payload.clone(),
                    })
                    .collect();
                items.sort_by(|a, b| a.export_data.cmp(&b.export_data));
                FolderSnapshot {
                    path: self.folder_path(&folder.id),
                    class: folder.class.clone(),
                    well_known: folder.well_known.map(str::to_owned),
                    search: folder.search,
                    items,
                }
            })
            .collect();
        folders.sort_by(|a, b| a.path.cmp(&b.path));
        MailboxSnapshot {
            mailbox_id: self.id.clone(),
            user_principal_name: self.upn.clone(),
            folders,
        }
    }
}

/// The contents of a mailbox, ordered so that two mailboxes with the same
/// folders and items compare equal whatever their ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MailboxSnapshot {
    pub mailbox_id: String,
    pub user_principal_name: String,
    /// Every folder below the root, ordered by path.
    pub folders: Vec<FolderSnapshot>,
}

impl MailboxSnapshot {
    /// The folder at this path of display names.
    pub fn folder(&self, path: &[&str]) -> Option<&FolderSnapshot> {
        self.folders.iter().find(|f| f.path == path)
    }

    /// Number of items in all folders.
    pub fn item_count(&self) -> usize {
        self.folders.iter().map(|f| f.items.len()).sum()
    }

    /// How `copy` differs from this mailbox, item content for item content
    /// ([`ItemSnapshot::content`]: not the export bytes nor the creation
    /// time, which a store gives each copy of its own): folders missing or
    /// added, of another class, items missing, added or duplicated. Empty:
    /// an exact copy.
    pub fn differences(&self, copy: &MailboxSnapshot) -> Vec<String> {
        let mut differences = Vec::new();
        let paths = self.folders.iter().chain(&copy.folders).map(|f| &f.path);
        let paths: std::collections::BTreeSet<&Vec<String>> = paths.collect();
        for path in paths {
            let path_str: Vec<&str> = path.iter().map(String::as_str).collect();
            let (Some(original), Some(copied)) = (self.folder(&path_str), copy.folder(&path_str))
            else {
                let side = if self.folder(&path_str).is_some() {
                    "missing from"
                } else {
                    "only in"
                };
                differences.push(format!("folder {path:?} {side} the copy"));
                continue;
            };
            if original.class != copied.class {
                differences.push(format!(
                    "folder {path:?} is {} in the copy, {} here",
                    copied.class, original.class
                ));
            }
            let mut counts: BTreeMap<String, i64> = BTreeMap::new();
            for item in &original.items {
                *counts.entry(item.content()).or_default() += 1;
            }
            for item in &copied.items {
                *counts.entry(item.content()).or_default() -= 1;
            }
            for (content, count) in counts.into_iter().filter(|(_, n)| *n != 0) {
                let what = if count > 0 {
                    "missing from"
                } else {
                    "extra in"
                };
                differences.push(format!(
                    "folder {path:?}: {} item(s) {what} the copy: {content}",
                    count.abs()
                ));
            }
        }
        differences
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FolderSnapshot {
    /// Display names from the top of the mailbox.
    pub path: Vec<String>,
    /// Folder class (`type`), e.g. `IPF.Note`.
    #[serde(rename = "type")]
    pub class: String,
    /// `wellKnownName`, for the folders Exchange makes.
    pub well_known: Option<String>,
    /// A search folder.
    pub search: bool,
    /// Ordered by export data.
    pub items: Vec<ItemSnapshot>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemSnapshot {
    #[serde(rename = "type")]
    pub class: String,
    /// What `exportItems` returns for the item.
    #[serde(serialize_with = "as_base64")]
    pub export_data: Vec<u8>,
    /// The MIME bytes of a message (what `$value` returns).
    #[serde(serialize_with = "as_base64_opt")]
    pub mime: Option<Vec<u8>>,
    pub is_read: bool,
    pub flag_status: FlagStatus,
    pub received: DateTime<Utc>,
    pub created: DateTime<Utc>,
    pub categories: Vec<String>,
    /// PidTagSearchKey.
    #[serde(serialize_with = "as_base64_opt")]
    pub search_key: Option<Vec<u8>>,
    /// The item's properties or MIME as the stream carries them.
    #[serde(serialize_with = "as_base64")]
    pub payload: Vec<u8>,
}

impl ItemSnapshot {
    /// What the item is, whatever store holds it: class, payload, read
    /// state, flag, received time, categories and search key.
    pub fn content(&self) -> String {
        format!(
            "{} read={} flag={:?} received={} categories={:?} search key={} payload {}",
            self.class,
            self.is_read,
            self.flag_status,
            self.received,
            self.categories,
            self.search_key
                .as_ref()
                .map_or_else(|| "none".to_owned(), |k| URL_SAFE_NO_PAD.encode(k)),
            blake3::hash(&self.payload).to_hex(),
        )
    }
}

fn as_base64<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn as_base64_opt<S: serde::Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match bytes {
        Some(bytes) => as_base64(bytes, s),
        None => s.serialize_none(),
    }
}

/// All tenants and mailboxes.
#[derive(Default)]
pub(crate) struct Directory {
    pub tenants: Vec<Tenant>,
    pub mailboxes: Vec<Mailbox>,
    pub clock: Clock,
}

impl Directory {
    pub fn add_tenant(&mut self, seed: &TenantSeed) -> Result<(), String> {
        if self.tenant(&seed.id).is_some() {
            return Err(format!("tenant {:?} exists already", seed.id));
        }
        let mut domains = seed.domains.clone();
        for user in &seed.users {
            if let Some((_, domain)) = user.user_principal_name.split_once('@')
                && !domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
            {
                domains.push(domain.to_owned());
            }
        }
        let mut apps = Vec::new();
        for app in &seed.apps {
            let certificates = app
                .certificates_pem
                .iter()
                .map(|pem| Certificate::from_pem(pem))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("app {}: {e}", app.client_id))?;
            apps.push(App {
                client_id: app.client_id.clone(),
                secret: app.secret.clone(),
                certificates,
                roles: app.roles.clone(),
            });
        }
        let mut mailboxes = Vec::new();
        for user in &seed.users {
            let upn = &user.user_principal_name;
            if self.mailbox_by_upn(upn).is_some()
                || mailboxes
                    .iter()
                    .any(|m: &Mailbox| m.upn.eq_ignore_ascii_case(upn))
            {
                return Err(format!("user {upn:?} exists already"));
            }
            let mut mailbox = Mailbox::new(&seed.id, user, self.clock.clone());
            for folder in &user.folders {
                let id = mailbox.ensure_folder_path(&folder.path, &folder.class)?;
                if let Some(made) = mailbox.folders.get_mut(&id) {
                    made.search = folder.search;
                }
            }
            for item in &user.items {
                add_seed_item(&mut mailbox, item)?;
            }
            mailboxes.push(mailbox);
        }
        self.tenants.push(Tenant {
            id: seed.id.clone(),
            domains,
            apps,
        });
        self.mailboxes.extend(mailboxes);
        Ok(())
    }

    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.is_named(name))
    }

    fn mailbox_by_upn(&self, upn: &str) -> Option<&Mailbox> {
        self.mailboxes
            .iter()
            .find(|m| m.upn.eq_ignore_ascii_case(upn))
    }

    /// A mailbox by mailbox id, user id or UPN, in any tenant.
    pub fn mailbox(&self, reference: &str) -> Option<&Mailbox> {
        self.mailboxes.iter().find(|m| {
            m.id == reference
                || m.user_id.eq_ignore_ascii_case(reference)
                || m.upn.eq_ignore_ascii_case(reference)
        })
    }

    pub fn mailbox_mut(&mut self, reference: &str) -> Option<&mut Mailbox> {
        let id = self.mailbox(reference)?.id.clone();
        self.mailboxes.iter_mut().find(|m| m.id == id)
    }
}

/// Adds a seed item (test API or seed file), creating its folder path.
pub(crate) fn add_seed_item(mailbox: &mut Mailbox, item: &ItemSeed) -> Result<String, String> {
    let folder_id = match mailbox.folder_by_any(&item.folder) {
        Some(folder) => folder.id.clone(),
        None => mailbox.ensure_folder_path(&item.folder, folder_class_for(&item.class))?,
    };
    let received = item.received.unwrap_or_else(|| mailbox.now());
    let content = ItemContent {
        class: item.class.clone(),
        is_read: item.is_read,
        flag_status: item.flag_status,
        received,
        created: received,
        categories: item.categories.clone(),
        search_key: None,
        record_key: String::new(),
        payload: item.payload.clone(),
    }
    .normalized();
    Ok(mailbox.add_item(&folder_id, content))
}

/// The folder class that holds items of this message class.
fn folder_class_for(item_class: &str) -> &'static str {
    let prefixes = [
        ("IPM.Appointment", "IPF.Appointment"),
        ("IPM.Contact", "IPF.Contact"),
        ("IPM.Task", "IPF.Task"),
        ("IPM.StickyNote", "IPF.StickyNote"),
    ];
    prefixes
        .iter()
        .find(|(prefix, _)| item_class.starts_with(prefix))
        .map_or("IPF.Note", |(_, class)| class)
}

/// A GUID-shaped identifier derived from `seed`.
fn guid(seed: &str) -> String {
    let hex = blake3::hash(seed.as_bytes()).to_hex();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
