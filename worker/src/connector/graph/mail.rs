//! Exchange Online as a source of MIME messages, through Graph's mail API,
//! for targets that are not Exchange (IMAP, Maildir).
//!
//! # Folders
//! `/users/{id}/mailFolders` and `childFolders` list the mail folders only
//! (calendars, contacts and tasks have APIs of their own and are not
//! copied), without hidden folders, as Graph does by default. A folder's key
//! is its id, its path the chain of display names. The mail API names no
//! well-known folders, so their ids are asked for by well-known name
//! (`/mailFolders/sentitems`, …): Sent Items, Drafts, Deleted Items, Junk
//! Email and Archive get their roles whatever their localised names, and
//! the inbox is `INBOX` (its sub-folders below it). Search folders
//! (`mailSearchFolder`) and the well-known folders of `skip_folders` the
//! mail API knows (Outbox, Sync Issues, Conversation History, …) are left
//! out with everything below them.
//!
//! # Items and delta passes
//! A folder's messages are listed with message delta (id, read state,
//! follow-up flag and received date); the delta link is the folder
//! checkpoint's sync state, and a link the server forgot (`410`) restarts
//! the folder from a full listing, as for the export source. `isRead` is
//! `\Seen`, a `flagged` follow-up flag `\Flagged`, `receivedDateTime` the
//! internal date. Messages are read as MIME from `$value`, byte for byte,
//! several at a time within the mailbox's throttle window. The v1.0 message
//! has no size (its `PidTagMessageSize` counts MAPI properties, not MIME
//! bytes): items are listed with size 0, which the engine takes as unknown
//! until their bodies are read, and a body is read only up to
//! `max_message_bytes` (and the memory budget): a longer one is refused
//! unread, as soon as its `Content-Length` or its bytes pass the limit.
//!
//! A message `$value` answers 404 for is gone; any other refusal of one
//! message is recorded as that item's failure with the server's reason,
//! and throttles and passing faults fail the fetch, to be retried.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::DateTime;
use futures::StreamExt;
use futures::future::try_join_all;
use mailwave_common::ErrorClass;
use mailwave_common::config::{GraphEndpoint, MigrationConfig};
use reqwest::StatusCode;
use serde_json::Value;

use super::client::{Answer, GraphClient, GraphError};
use super::{WELL_KNOWN_ROLES, encode, folder_tree, mailbox_client, scan_by_delta};
use crate::connector::throttle::WaitLimits;
use crate::connector::{
    ConnectorError, Fetched, FolderPath, FolderScan, ItemMeta, MailSource, Message, Shared,
    SourceFolder, SourcePosition, SpecialUse,
};

/// The well-known folder names of the mail API (the mailFolder resource).
const MAIL_WELL_KNOWN: [&str; 17] = [
    "archive",
    "clutter",
    "conflicts",
    "conversationhistory",
    "deleteditems",
    "drafts",
    "inbox",
    "junkemail",
    "localfailures",
    "msgfolderroot",
    "outbox",
    "recoverableitemsdeletions",
    "scheduled",
    "searchfolders",
    "sentitems",
    "serverfailures",
    "syncissues",
];
/// The `@odata.type` of a search folder in the mail API.
const MAIL_SEARCH_FOLDER: &str = "#microsoft.graph.mailSearchFolder";

/// What message delta lists of each message.
const DELTA_SELECT: &str = "id,isRead,flag,receivedDateTime";

/// The source side for targets that are not Exchange: MIME.
pub struct GraphMimeSource {
    client: GraphClient,
    /// `/users/{id}`.
    root: String,
    user: String,
    concurrency: usize,
    /// The most bytes of one body read (see the module's docs).
    max_body_bytes: u64,
    /// The well-known folders not copied (`skip_folders`).
    skip_folders: Vec<String>,
}

/// What became of one message asked for.
enum Read {
    Message(Message),
    Gone,
    Refused(ConnectorError),
}

/// The most bytes of one message body held: `max_message_bytes` when set,
/// never more than the whole memory budget.
fn body_limit(migration: &MigrationConfig) -> u64 {
    let budget = migration.memory_budget_bytes.max(1);
    match migration.max_message_bytes {
        0 => budget,
        limit => limit.min(budget),
    }
}

impl GraphMimeSource {
    /// Opens `user`'s mailbox on `endpoint` for reading as MIME, bodies
    /// within the limits of `migration`, waits bounded by `limits`.
    pub fn open(
        endpoint: &GraphEndpoint,
        user: &str,
        migration: &MigrationConfig,
        limits: &WaitLimits,
        shared: &Arc<Shared>,
    ) -> Result<Self, ConnectorError> {
        Ok(GraphMimeSource {
            max_body_bytes: body_limit(migration),
            client: mailbox_client(endpoint, user, limits, shared)?,
            root: format!("/users/{}", encode(user)),
            user: user.to_owned(),
            concurrency: endpoint.max_concurrent_requests.max(1),
            skip_folders: endpoint.skip_folders.clone(),
        })
    }

    /// The id of the folder with this well-known name; `None` when the
    /// mailbox has none (no archive, say).
    async fn well_known_id(&self, name: &str) -> Result<Option<String>, ConnectorError> {
        let url = format!("{}/mailFolders/{name}?$select=id", self.root);
        match self.client.get(&url).await {
            Ok(folder) => Ok(folder["id"].as_str().map(str::to_owned)),
            Err(error) if error.class == ErrorClass::Item => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// One message's MIME, or what became of it; an error only for what
    /// concerns more than this message (throttles, passing faults).
    async fn mime(&self, item: ItemMeta) -> Result<Read, GraphError> {
        let url = format!("{}/messages/{}/$value", self.root, encode(&item.item));
        match self
            .client
            .get_bytes_within(&url, self.max_body_bytes)
            .await
        {
            Ok(Answer::Whole(body)) => Ok(Read::Message(Message {
                meta: ItemMeta {
                    size: Some(body.len() as u64),
                    ..item
                },
                body,
            })),
            Ok(Answer::TooLarge { limit }) => Ok(Read::Refused(ConnectorError::item(format!(
                "message larger than {limit} bytes (migration.max_message_bytes, \
                 or the memory budget): not read"
            )))),
            // A 404 of the item itself, not of the user or mailbox.
            Err(error)
                if error.status == Some(StatusCode::NOT_FOUND)
                    && error.class == ErrorClass::Item =>
            {
                tracing::info!(mailbox = %self.user, item = %item.item,
                    "message gone from the source; left out");
                Ok(Read::Gone)
            }
            Err(error) if error.class == ErrorClass::Item => Ok(Read::Refused(error.into())),
            Err(error) => Err(error),
        }
    }
}

/// A message of a delta page: its flags and received date.
fn read_message(id: &str, value: &Value) -> ItemMeta {
    let seen = value["isRead"].as_bool() == Some(true);
    let flagged = value["flag"]["flagStatus"].as_str() == Some("flagged");
    let flags = [(seen, "\\Seen"), (flagged, "\\Flagged")]
        .into_iter()
        .filter_map(|(set, flag)| set.then_some(flag))
        .collect();
    ItemMeta {
        item: id.to_owned(),
        uid: None,
        size: None,
        flags,
        internal_date: value["receivedDateTime"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok()),
        identity: None,
        version: None,
    }
}

#[async_trait]
impl MailSource for GraphMimeSource {
    async fn folders(&mut self) -> Result<Vec<SourceFolder>, ConnectorError> {
        let this = &*self;
        // The roles an IMAP or Maildir target has, and the folders left out
        // (role `None`) that the mail API can name.
        let roles = WELL_KNOWN_ROLES
            .iter()
            .filter(|(_, role)| *role == SpecialUse::Inbox || role.attribute().is_some())
            .map(|&(name, role)| (name, Some(role)));
        let skipped = self
            .skip_folders
            .iter()
            .filter(|name| MAIL_WELL_KNOWN.iter().any(|m| m.eq_ignore_ascii_case(name)))
            .map(|name| (name.as_str(), None));
        let named = roles.chain(skipped).map(|(name, role)| async move {
            Ok::<_, ConnectorError>(this.well_known_id(name).await?.map(|id| (id, role)))
        });
        let named: Vec<(String, Option<SpecialUse>)> =
            try_join_all(named).await?.into_iter().flatten().collect();
        let is_skipped = |value: &Value| {
            value["@odata.type"].as_str() == Some(MAIL_SEARCH_FOLDER)
                || value["id"]
                    .as_str()
                    .is_some_and(|id| named.iter().any(|(i, role)| i == id && role.is_none()))
        };
        let base = format!("{}/mailFolders", self.root);
        let folders = folder_tree(&self.client, &base, "", is_skipped).await?;
        let role_of = |id: &str| {
            named
                .iter()
                .find_map(|(i, role)| (i == id).then_some(*role).flatten())
        };
        // The inbox is INBOX whatever its display name, its sub-folders
        // below INBOX.
        let inbox = folders
            .iter()
            .find(|f| role_of(&f.id) == Some(SpecialUse::Inbox))
            .map(|f| f.path.clone());
        Ok(folders
            .into_iter()
            .map(|f| {
                let path = match inbox
                    .as_ref()
                    .and_then(|inbox| f.path.0.strip_prefix(&inbox.0[..]))
                {
                    Some(below) => {
                        let mut path = FolderPath::inbox();
                        path.0.extend_from_slice(below);
                        path
                    }
                    None => f.path,
                };
                SourceFolder {
                    special: role_of(&f.id),
                    key: f.id,
                    path,
                    class: None,
                    subscribed: false,
                }
            })
            .collect())
    }

    async fn scan(
        &mut self,
        folder: &SourceFolder,
        position: Option<SourcePosition<'_>>,
    ) -> Result<FolderScan, ConnectorError> {
        let initial = format!(
            "{}/mailFolders/{}/messages/delta?$select={DELTA_SELECT}",
            self.root,
            encode(&folder.key)
        );
        scan_by_delta(
            &self.client,
            &self.user,
            folder,
            position,
            &initial,
            read_message,
        )
        .await
        .map(|(scan, _)| scan)
    }

    async fn fetch(
        &mut self,
        _folder: &SourceFolder,
        items: &[ItemMeta],
    ) -> Result<Fetched, ConnectorError> {
        let this = &*self;
        let fetched: Vec<Result<Read, GraphError>> = futures::stream::iter(items.iter().cloned())
            .map(|item| this.mime(item))
            .buffered(self.concurrency)
            .collect()
            .await;
        let mut result = Fetched::default();
        for (item, message) in items.iter().zip(fetched) {
            match message? {
                Read::Message(message) => result.messages.push(message),
                Read::Gone => result.gone.push(item.item.clone()),
                Read::Refused(error) => result.refused.push((item.item.clone(), error)),
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn messages_of_a_delta_page() {
        let read = read_message(
            "AAkALg1",
            &json!({
                "id": "AAkALg1",
                "isRead": true,
                "flag": { "flagStatus": "flagged" },
                "receivedDateTime": "2026-11-21T14:53:20Z",
            }),
        );
        assert_eq!(read.item, "AAkALg1");
        assert_eq!((read.uid, read.size), (None, None), "size unknown");
        assert_eq!(read.flags.to_string(), "\\Flagged \\Seen");
        assert_eq!(
            read.internal_date.map(|d| d.to_rfc3339()).as_deref(),
            Some("2026-11-21T14:53:20+00:00")
        );

        let unread = read_message(
            "AAkALg2",
            &json!({
                "isRead": false,
                "flag": { "flagStatus": "complete" },
                "receivedDateTime": "2026-01-02T03:04:05+01:00",
            }),
        );
        assert!(unread.flags.is_empty(), "{}", unread.flags);
        assert_eq!(
            unread.internal_date.map(|d| d.to_rfc3339()).as_deref(),
            Some("2026-01-02T03:04:05+01:00"),
            "in the zone the server gave"
        );
        assert_eq!(read_message("x", &json!({})).internal_date, None);
    }

    #[test]
    fn bodies_are_read_up_to_max_message_bytes_within_the_budget() {
        let migration = |max_message_bytes, memory_budget_bytes| MigrationConfig {
            max_message_bytes,
            memory_budget_bytes,
            ..MigrationConfig::default()
        };
        assert_eq!(
            body_limit(&migration(0, 96 << 20)),
            96 << 20,
            "no limit: the budget"
        );
        assert_eq!(body_limit(&migration(1 << 20, 96 << 20)), 1 << 20);
        assert_eq!(body_limit(&migration(1 << 30, 16 << 20)), 16 << 20);
        assert_eq!(body_limit(&migration(0, 0)), 1);
    }
}
