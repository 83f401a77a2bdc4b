//! The mail API (`/users/{id}/mailFolders`, messages, `$value`), used when
//! the target is not Exchange and the MIME of each message is needed.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::Shared;
use super::error::GraphError;
use super::model::{DeltaEntry, DeltaScope, Folder, Item, Mailbox};
use super::odata::{DeltaView, apply_select, delta_page, json_response, page, select_option};
use super::pipeline::{Access, Ctx, mailbox_of, serve};

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1.0/users/{user}/mailFolders", get(list_top_mail_folders))
        .route(
            "/v1.0/users/{user}/mailFolders/{folder}",
            get(get_mail_folder),
        )
        .route(
            "/v1.0/users/{user}/mailFolders/{folder}/childFolders",
            get(list_child_mail_folders),
        )
        .route(
            "/v1.0/users/{user}/mailFolders/{folder}/messages/delta",
            get(message_delta),
        )
        .route("/v1.0/users/{user}/messages/{message}", get(get_message))
        .route(
            "/v1.0/users/{user}/messages/{message}/$value",
            get(get_mime),
        )
}

/// Mail folders are the `IPF.Note` ones (calendars, contacts and tasks
/// have APIs of their own).
fn is_mail_folder(folder: &Folder) -> bool {
    folder.class.starts_with("IPF.Note")
}

fn mail_folder<'a>(mailbox: &'a Mailbox, reference: &str) -> Result<&'a Folder, GraphError> {
    mailbox
        .folder(reference)
        .filter(|f| is_mail_folder(f))
        .ok_or_else(GraphError::folder_not_found)
}

fn mail_folder_json(mailbox: &Mailbox, folder: &Folder) -> Value {
    let items = mailbox.items_in(&folder.id);
    let unread = items.iter().filter(|i| !i.content.is_read).count();
    let child_folders = mailbox
        .children(&folder.id)
        .into_iter()
        .filter(|f| is_mail_folder(f))
        .count();
    let odata_type = if folder.search {
        "#microsoft.graph.mailSearchFolder"
    } else {
        "#microsoft.graph.mailFolder"
    };
    json!({
        "@odata.type": odata_type,
        "id": folder.id,
        "displayName": folder.display_name,
        "parentFolderId": folder.parent_id,
        "childFolderCount": child_folders,
        "unreadItemCount": unread,
        "totalItemCount": items.len(),
        "isHidden": false,
    })
}

fn list_mail_folders(
    shared_state: &super::State,
    ctx: &Ctx,
    user: &str,
    parent: Option<&str>,
    query: &HashMap<String, String>,
) -> Result<Response, GraphError> {
    let mailbox = mailbox_of(shared_state, ctx)?;
    let parent = mail_folder(mailbox, parent.unwrap_or(&mailbox.root_id))?;
    let mut values: Vec<Value> = mailbox
        .children(&parent.id)
        .into_iter()
        .filter(|f| is_mail_folder(f))
        .map(|f| mail_folder_json(mailbox, f))
        .collect();
    if shared_state.rules.faults.repeat_folders {
        values.extend_from_within(..);
    }
    let mut link_base = format!("{}/users/{user}/mailFolders", ctx.graph());
    if parent.id != mailbox.root_id {
        link_base = format!("{link_base}/{}/childFolders", parent.id);
    }
    let context = format!("{}/$metadata#users('{user}')/mailFolders", ctx.graph());
    page(values, query, ctx.max_page_size, &link_base, &context)
}

async fn list_top_mail_folders(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path(user): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    serve(&shared, &headers, Access::User(&user), 0, |state, ctx| {
        list_mail_folders(state, ctx, &user, None, &query)
    })
    .await
}

async fn list_child_mail_folders(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path((user, folder)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    serve(&shared, &headers, Access::User(&user), 0, |state, ctx| {
        list_mail_folders(state, ctx, &user, Some(&folder), &query)
    })
    .await
}

async fn get_mail_folder(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path((user, folder)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    serve(&shared, &headers, Access::User(&user), 0, |state, ctx| {
        let mailbox = mailbox_of(state, ctx)?;
        let folder = mail_folder(mailbox, &folder)?;
        let mut body = apply_select(
            mail_folder_json(mailbox, folder),
            select_option(&query).as_deref(),
        );
        body["@odata.context"] = json!(format!(
            "{}/$metadata#users('{user}')/mailFolders/$entity",
            ctx.graph()
        ));
        json_response(StatusCode::OK, body)
    })
    .await
}

/// A header field of a MIME message (unfolded, undecoded).
fn mime_header(mime: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(mime);
    let mut found: Option<String> = None;
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(value) = &mut found {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if found.is_some() {
            break;
        }
        if let Some((field, value)) = line.split_once(':')
            && field.trim().eq_ignore_ascii_case(name)
        {
            found = Some(value.trim().to_owned());
        }
    }
    found
}

fn message_json(item: &Item, ctx: &Ctx) -> Value {
    let mime = &item.content.payload;
    let change_key = item.change_key();
    let sent: DateTime<Utc> = mime_header(mime, "Date")
        .and_then(|d| DateTime::parse_from_rfc2822(&d).ok())
        .map_or(item.content.received, |d| d.with_timezone(&Utc));
    json!({
        "@odata.type": "#microsoft.graph.message",
        "@odata.etag": format!("W/\"{change_key}\""),
        "id": item.public_id(ctx.immutable_ids),
        "createdDateTime": item.content.created,
        "lastModifiedDateTime": item.last_modified,
        "changeKey": change_key,
        "categories": item.content.categories,
        "receivedDateTime": item.content.received,
        "sentDateTime": sent,
        "internetMessageId": mime_header(mime, "Message-ID"),
        "subject": mime_header(mime, "Subject"),
        "isRead": item.content.is_read,
        "parentFolderId": item.folder_id,
        "flag": { "flagStatus": item.content.flag_status },
    })
}

async fn message_delta(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path((user, folder)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    serve(&shared, &headers, Access::User(&user), 0, |state, ctx| {
        let mailbox = mailbox_of(state, ctx)?;
        let folder = mail_folder(mailbox, &folder)?;
        let view = DeltaView {
            scope: DeltaScope::Messages {
                folder_id: folder.id.clone(),
            },
            link_base: format!(
                "{}/users/{user}/mailFolders/{}/messages/delta",
                ctx.graph(),
                folder.id
            ),
            context: format!("{}/$metadata#Collection(message)", ctx.graph()),
            odata_type: "#microsoft.graph.message",
            render: &|_, entry, ctx| match entry {
                DeltaEntry::Item(item) => message_json(item, ctx),
                _ => Value::Null,
            },
        };
        delta_page(state, ctx, &query, view)
    })
    .await
}

fn message<'a>(mailbox: &'a Mailbox, id: &str) -> Result<&'a Item, GraphError> {
    mailbox
        .item(id)
        .filter(|i| i.content.is_message())
        .ok_or_else(GraphError::item_not_found)
}

async fn get_message(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path((user, message_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    serve(&shared, &headers, Access::User(&user), 0, |state, ctx| {
        let mailbox = mailbox_of(state, ctx)?;
        let item = message(mailbox, &message_id)?;
        let mut body = apply_select(message_json(item, ctx), select_option(&query).as_deref());
        body["@odata.context"] = json!(format!(
            "{}/$metadata#users('{user}')/messages/$entity",
            ctx.graph()
        ));
        json_response(StatusCode::OK, body)
    })
    .await
}

/// `GET /users/{id}/messages/{id}/$value`: the message's MIME, unchanged.
async fn get_mime(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path((user, message_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    serve(&shared, &headers, Access::User(&user), 0, |state, ctx| {
        let mailbox = mailbox_of(state, ctx)?;
        let item = message(mailbox, &message_id)?;
        if let Some(fault) = mailbox.item_fault(&message_id) {
            let status =
                StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Err(GraphError::new(
                status,
                fault.code.clone(),
                fault.message.clone(),
            ));
        }
        let mut response = (StatusCode::OK, item.content.payload.clone()).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        Ok(response)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_header_fields() {
        let mime =
            b"From: a@b\r\nSubject: Hello\r\n  world\r\nMessage-ID: <1@x>\r\n\r\nSubject: body\r\n";
        assert_eq!(mime_header(mime, "subject").as_deref(), Some("Hello world"));
        assert_eq!(mime_header(mime, "Message-Id").as_deref(), Some("<1@x>"));
        assert_eq!(mime_header(mime, "Date"), None);
        assert_eq!(
            mime_header(b"Subject: bare LF\nX: y\n\n", "Subject").as_deref(),
            Some("bare LF")
        );
    }
}
