//! The preflight of `mailwave-worker check` for a Graph endpoint: every
//! kind of request a migration in one direction makes is tried once on one
//! mailbox, and each is reported with the application permissions that
//! allow it, so that an app missing one is found before a wave starts, not
//! mailbox by mailbox during it.
//!
//! Every probe reads, except two that write nothing a user sees:
//! `createImportSession` opens an import session (which expires unused),
//! and folder creation is tried with the display name of the target's own
//! inbox, which Exchange refuses with `409 ErrorFolderExists` when the app
//! may create folders, `403` when it may not. A probe answered `403` names
//! its permissions as missing; any other answer from the server (a
//! `404` for an item that is not there, say) shows the permission is held.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};

use mailwave_common::config::GraphEndpoint;

use super::client::{GraphClient, GraphError};
use super::{encode, mailbox_client};
use crate::connector::Shared;
use crate::connector::throttle::WaitLimits;

/// The part a Graph endpoint plays in a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The source for a Graph target: folders, item delta, `exportItems`.
    ExportSource,
    /// The source for an IMAP or Maildir target: the mail API's MIME.
    MimeSource,
    /// The target: folders (listed and created), items (listed to find
    /// imports in doubt), import sessions.
    ImportTarget,
}

/// One request tried, and what the server made of the app's permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// What was asked, e.g. `POST exportItems`.
    pub operation: &'static str,
    /// The application permissions each of which allows it.
    pub permissions: &'static [&'static str],
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered without refusing the app.
    Allowed,
    /// `403`: the app holds none of the permissions (or an application
    /// access policy keeps it from this mailbox).
    Missing(String),
    /// The request failed otherwise (the token, the network, the server):
    /// nothing is known about the permission.
    Failed(String),
    /// Not tried: it needs what an earlier probe could not find out.
    Untried(&'static str),
}

const USER_READ: &[&str] = &["User.Read.All", "User.ReadWrite.All"];
const FOLDER_READ: &[&str] = &["MailboxFolder.Read.All", "MailboxFolder.ReadWrite.All"];
const FOLDER_WRITE: &[&str] = &["MailboxFolder.ReadWrite.All"];
const ITEM_READ: &[&str] = &["MailboxItem.Read.All"];
const ITEM_EXPORT: &[&str] = &["MailboxItem.Export.All", "MailboxItem.ImportExport.All"];
const ITEM_IMPORT: &[&str] = &["MailboxItem.ImportExport.All"];
const MAIL_READ: &[&str] = &["Mail.Read", "Mail.ReadWrite"];

/// An id no item has: for a probe when the mailbox has no item to name.
const NO_SUCH_ITEM: &str = "AAMkAG1haWx3YXZlLXByZWZsaWdodA==";

/// Tries what `direction` needs on `user`'s mailbox of `endpoint`.
pub async fn probe(
    endpoint: &GraphEndpoint,
    user: &str,
    direction: Direction,
    limits: &WaitLimits,
    shared: &Arc<Shared>,
) -> Vec<Probe> {
    let client = match mailbox_client(endpoint, user, limits, shared) {
        Ok(client) => client,
        Err(error) => {
            return vec![Probe {
                operation: "connect",
                permissions: &[],
                outcome: Outcome::Failed(error.to_string()),
            }];
        }
    };
    let mut probes = Probes {
        client,
        done: Vec::new(),
    };
    match direction {
        Direction::MimeSource => probes.mail(user).await,
        Direction::ExportSource | Direction::ImportTarget => probes.mailbox(user, direction).await,
    }
    probes.done
}

/// The probes tried so far, through one mailbox's client.
struct Probes {
    client: GraphClient,
    done: Vec<Probe>,
}

impl Probes {
    /// Records the outcome of `result`; hands back the answer if any.
    fn record(
        &mut self,
        operation: &'static str,
        permissions: &'static [&'static str],
        result: Result<Value, GraphError>,
    ) -> Option<Value> {
        let (outcome, answer) = match result {
            Ok(answer) => (Outcome::Allowed, Some(answer)),
            Err(error) if error.status == Some(StatusCode::FORBIDDEN) => {
                (Outcome::Missing(error.message), None)
            }
            Err(error)
                if error
                    .status
                    .is_some_and(|s| s.is_client_error() && s != StatusCode::UNAUTHORIZED) =>
            {
                (Outcome::Allowed, None)
            }
            Err(error) => (Outcome::Failed(error.message), None),
        };
        self.done.push(Probe {
            operation,
            permissions,
            outcome,
        });
        answer
    }

    fn untried(
        &mut self,
        operation: &'static str,
        permissions: &'static [&'static str],
        needs: &'static str,
    ) {
        self.done.push(Probe {
            operation,
            permissions,
            outcome: Outcome::Untried(needs),
        });
    }

    /// The import/export API, from the user's mailbox id on.
    async fn mailbox(&mut self, user: &str, direction: Direction) {
        const SETTINGS: &str = "GET users/{id}/settings/exchange";
        const FOLDERS: &str = "GET folders/inbox";
        const DELTA: &str = "GET folders/inbox/items/delta";
        const LIST: &str = "GET folders/inbox/items";
        const EXPORT: &str = "POST exportItems";
        const CREATE: &str = "POST folders (the inbox's name, answered 409)";
        const SESSION: &str = "POST createImportSession";
        let settings_url = format!("/users/{}/settings/exchange", encode(user));
        let settings = self.client.get(&settings_url).await;
        let settings = self.record(SETTINGS, USER_READ, settings);
        let Some(id) = settings
            .as_ref()
            .and_then(|s| s["primaryMailboxId"].as_str())
        else {
            let later: &[(&'static str, &'static [&'static str])] = match direction {
                Direction::ImportTarget => &[
                    (FOLDERS, FOLDER_READ),
                    (CREATE, FOLDER_WRITE),
                    (LIST, ITEM_READ),
                    (SESSION, ITEM_IMPORT),
                ],
                _ => &[
                    (FOLDERS, FOLDER_READ),
                    (DELTA, ITEM_READ),
                    (EXPORT, ITEM_EXPORT),
                ],
            };
            for (operation, permissions) in later {
                self.untried(operation, permissions, "the mailbox id");
            }
            return;
        };
        let root = format!("/admin/exchange/mailboxes/{}", encode(id));
        let inbox = self.client.get(&format!("{root}/folders/inbox")).await;
        let inbox = self.record(FOLDERS, FOLDER_READ, inbox);
        if direction == Direction::ImportTarget {
            match inbox.as_ref().and_then(|f| f["displayName"].as_str()) {
                Some(name) => {
                    let body = json!({ "displayName": name, "type": "IPF.Note" });
                    let created = self.client.post(&format!("{root}/folders"), &body).await;
                    self.record(CREATE, FOLDER_WRITE, created);
                }
                None => self.untried(CREATE, FOLDER_WRITE, "the inbox's name"),
            }
            let items_url = format!("{root}/folders/inbox/items?$top=1");
            let items = self.client.get(&items_url).await;
            self.record(LIST, ITEM_READ, items);
            let session_url = format!("{root}/createImportSession");
            let session = self.client.post(&session_url, &json!({})).await;
            self.record(SESSION, ITEM_IMPORT, session);
            return;
        }
        let delta_url = format!("{root}/folders/inbox/items/delta");
        let delta = self.client.get(&delta_url).await;
        let item = self
            .record(DELTA, ITEM_READ, delta)
            .and_then(|page| first_id(&page));
        let ids = json!({ "itemIds": [item.as_deref().unwrap_or(NO_SUCH_ITEM)] });
        let export = self.client.post(&format!("{root}/exportItems"), &ids).await;
        self.record(EXPORT, ITEM_EXPORT, export);
    }

    /// The mail API: the inbox, its message delta, one message's MIME.
    async fn mail(&mut self, user: &str) {
        let root = format!("/users/{}", encode(user));
        let inbox_url = format!("{root}/mailFolders/inbox?$select=id");
        let inbox = self.client.get(&inbox_url).await;
        self.record("GET mailFolders/inbox", MAIL_READ, inbox);
        let delta_url = format!("{root}/mailFolders/inbox/messages/delta?$select=id");
        let delta = self.client.get(&delta_url).await;
        let message = self
            .record("GET mailFolders/inbox/messages/delta", MAIL_READ, delta)
            .and_then(|page| first_id(&page));
        let id = message.as_deref().unwrap_or(NO_SUCH_ITEM);
        let mime = self
            .client
            .get_bytes_within(&format!("{root}/messages/{}/$value", encode(id)), 0)
            .await
            .map(|_| Value::Null);
        self.record("GET messages/{id}/$value", MAIL_READ, mime);
    }
}

/// The id of a page's first entry.
fn first_id(page: &Value) -> Option<String> {
    page["value"][0]["id"].as_str().map(str::to_owned)
}
