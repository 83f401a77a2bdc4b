//! The mailbox import/export API (`/admin/exchange/mailboxes/...`),
//! `users/{id}/settings/exchange`, and the routing of every endpoint.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxumState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::GraphError;
use super::export::ItemContent;
use super::model::{CreateFolderError, DeltaEntry, DeltaScope, Folder, Item, Mailbox};
use super::odata::{
    DeltaView, EXPANDED_PROPERTIES, apply_select, delta_page, encode_component, json_response,
    option, page, select_option,
};
use super::pipeline::{Access, Ctx, mailbox_of, mailbox_of_mut, rejection_response, serve};
use super::rules::Rejection;
use super::{Shared, State, control, identity, mail, permissions};

/// The most items `exportItems` takes at once.
const MAX_EXPORT_IDS: usize = 20;
/// The largest request body accepted: an import of an item of 150 MB (the
/// largest a mailbox item may be), as base64 with its JSON.
const IMPORT_BODY_LIMIT: usize = 210 * 1024 * 1024;

const MAILBOXES: &str = "/v1.0/admin/exchange/mailboxes/{mailbox}";

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(identity::token))
        .route(
            "/introspect",
            get(identity::introspect_query).post(identity::introspect_form),
        )
        .route("/introspect/{segment}", get(identity::introspect_path))
        .route(
            "/v1.0/users/{user}/settings/exchange",
            get(exchange_settings),
        )
        .route(
            &format!("{MAILBOXES}/folders"),
            get(list_top_folders).post(create_top_folder),
        )
        .route(&format!("{MAILBOXES}/folders/delta"), get(folder_delta))
        .route(&format!("{MAILBOXES}/folders/{{folder}}"), get(get_folder))
        .route(
            &format!("{MAILBOXES}/folders/{{folder}}/childFolders"),
            get(list_child_folders).post(create_child_folder),
        )
        .route(
            &format!("{MAILBOXES}/folders/{{folder}}/items"),
            get(list_items),
        )
        .route(
            &format!("{MAILBOXES}/folders/{{folder}}/items/delta"),
            get(item_delta),
        )
        .route(
            &format!("{MAILBOXES}/folders/{{folder}}/items/{{item}}"),
            get(get_item),
        )
        .route(&format!("{MAILBOXES}/exportItems"), post(export_items))
        .route(
            &format!("{MAILBOXES}/createImportSession"),
            post(create_import_session),
        )
        .route("/api/gv1.0/{target}/importItem", post(import_item))
        .merge(mail::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            permissions::enforce,
        ))
        .nest("/_emulator", control::routes())
        .fallback(unknown_route)
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            scripted_answer,
        ))
        .layer(axum::middleware::map_response_with_state(
            shared.clone(),
            date_header,
        ))
        // Imports carry whole items as base64 (axum's default: 2 MB).
        .layer(axum::extract::DefaultBodyLimit::max(IMPORT_BODY_LIMIT))
        .with_state(shared)
}

/// Answers a request as [`super::Faults::answers`] script it, or passes it on.
async fn scripted_answer(
    AxumState(shared): AxumState<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path_and_query().map_or_else(
        || request.uri().path().to_owned(),
        |p| p.as_str().to_owned(),
    );
    let scripted = shared
        .lock()
        .rules
        .scripted(request.method().as_str(), &path);
    let Some(answer) = scripted else {
        return next.run(request).await;
    };
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let error = GraphError::new(status, answer.code, answer.message);
    match answer.retry_after_secs {
        Some(secs) => error.header(axum::http::header::RETRY_AFTER, secs.to_string()),
        None => error,
    }
    .into_response()
}

/// Every answer's `Date`, by the service's clock (HTTP's IMF-fixdate).
async fn date_header(
    AxumState(shared): AxumState<Arc<Shared>>,
    mut response: Response,
) -> Response {
    let date = shared.clock.now().format("%a, %d %b %Y %H:%M:%S GMT");
    if let Ok(value) = axum::http::HeaderValue::from_str(&date.to_string()) {
        response
            .headers_mut()
            .insert(axum::http::header::DATE, value);
    }
    response
}

async fn unknown_route() -> GraphError {
    GraphError::bad_request("Resource not found for the segment.")
}

fn mailbox_url(ctx: &Ctx, mailbox: &Mailbox) -> String {
    format!("{}/admin/exchange/mailboxes/{}", ctx.graph(), mailbox.id)
}

fn folder_json(mailbox: &Mailbox, folder: &Folder, ctx: &Ctx) -> Value {
    json!({
        "@odata.type": "#microsoft.graph.mailboxFolder",
        "id": folder.id,
        "displayName": folder.display_name,
        "parentFolderId": folder.parent_id,
        "parentMailboxUrl": mailbox_url(ctx, mailbox),
        "childFolderCount": mailbox.children(&folder.id).len(),
        "totalItemCount": mailbox.items_in(&folder.id).len(),
        "wellKnownName": folder.well_known,
        "type": folder.class,
    })
}

fn item_json(item: &Item, ctx: &Ctx) -> Value {
    let change_key = item.change_key();
    json!({
        "@odata.type": "#microsoft.graph.mailboxItem",
        "@odata.etag": format!("W/\"{change_key}\""),
        "id": item.public_id(ctx.immutable_ids),
        "createdDateTime": item.content.created,
        "lastModifiedDateTime": item.last_modified,
        "changeKey": change_key,
        "categories": item.content.categories,
        "type": item.content.class,
        "size": item.size,
    })
}

/// Extended properties the emulator knows of an item (id as Exchange
/// spells it in answers, value as Graph renders it: binary in base64).
fn extended_properties(item: &Item) -> Vec<(&'static str, String)> {
    let content = &item.content;
    let search_key = content.search_key.as_ref().map(|k| {
        (
            "Binary 0x300b",
            base64::engine::general_purpose::STANDARD.encode(k),
        )
    });
    let message_id = content
        .internet_message_id()
        .map(|id| ("String 0x1035", id));
    search_key.into_iter().chain(message_id).collect()
}

/// `$expand=singleValueExtendedProperties($filter=id eq '…' [or id eq
/// '…']…)`, as the extended-properties pages document it: the ids asked
/// for (compared without regard to case, as Exchange does). `None` without
/// `$expand`; any other expansion is refused.
fn expanded_properties(query: &HashMap<String, String>) -> Result<Option<Vec<String>>, GraphError> {
    let Some(expand) = option(query, "$expand") else {
        return Ok(None);
    };
    let invalid = || {
        GraphError::bad_request(format!(
            "Parsing OData Select and Expand failed: '{expand}' is not supported."
        ))
    };
    let inner = expand
        .trim()
        .strip_prefix("singleValueExtendedProperties(")
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|rest| rest.trim().strip_prefix("$filter="))
        .ok_or_else(invalid)?;
    inner
        .split(" or ")
        .map(|clause| {
            let literal = clause
                .trim()
                .strip_prefix("id eq ")
                .map(str::trim)
                .and_then(|l| l.strip_prefix('\''))
                .and_then(|l| l.strip_suffix('\''))
                .ok_or_else(invalid)?;
            Ok(literal.to_owned())
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A comparison of the items collection's `$filter` on a timestamp.
struct TimeCondition {
    created: bool,
    operator: String,
    at: chrono::DateTime<chrono::Utc>,
}

impl TimeCondition {
    fn holds(&self, item: &Item) -> bool {
        let value = if self.created {
            item.content.created
        } else {
            item.last_modified
        };
        match self.operator.as_str() {
            "ge" => value >= self.at,
            "gt" => value > self.at,
            "le" => value <= self.at,
            "lt" => value < self.at,
            _ => value == self.at,
        }
    }
}

/// The items collection's `$filter`: comparisons (`eq`, `ge`, `gt`, `le`,
/// `lt`) of `createdDateTime` or `lastModifiedDateTime` with a date or a
/// timestamp, joined by `and` (the list page's example).
fn time_filter(query: &HashMap<String, String>) -> Result<Vec<TimeCondition>, GraphError> {
    let Some(filter) = option(query, "$filter") else {
        return Ok(Vec::new());
    };
    let invalid = || {
        GraphError::bad_request(format!(
            "Invalid filter clause: '{filter}' is not supported."
        ))
    };
    filter
        .split(" and ")
        .map(|clause| {
            let mut words = clause.split_whitespace();
            let (Some(property), Some(operator), Some(literal), None) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                return Err(invalid());
            };
            let created = match property {
                p if p.eq_ignore_ascii_case("createdDateTime") => true,
                p if p.eq_ignore_ascii_case("lastModifiedDateTime") => false,
                _ => return Err(invalid()),
            };
            let operator = operator.to_ascii_lowercase();
            if !["eq", "ge", "gt", "le", "lt"].contains(&operator.as_str()) {
                return Err(invalid());
            }
            let at = chrono::DateTime::parse_from_rfc3339(literal)
                .map(|t| t.to_utc())
                .or_else(|_| {
                    chrono::NaiveDate::parse_from_str(literal, "%Y-%m-%d")
                        .map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc())
                })
                .map_err(|_| invalid())?;
            Ok(TimeCondition {
                created,
                operator,
                at,
            })
        })
        .collect()
}

/// `PidTagFolderType` as a single-value extended property: 1 for a generic
/// folder, 2 for a search folder ([MS-OXPROPS], [MS-OXCFOLD]).
const FOLDER_TYPE_PROPERTY: &str = "Integer 0x3601";

/// Adds the expanded extended properties (`wanted`, see
/// [`expanded_properties`]) to a folder's JSON: of a folder the emulator
/// keeps its type only.
fn expand_folder_properties(mut value: Value, folder: &Folder, wanted: Option<&[String]>) -> Value {
    let Some(wanted) = wanted else {
        return value;
    };
    let kind = if folder.search { "2" } else { "1" };
    let properties: Vec<Value> = wanted
        .iter()
        .any(|w| w.eq_ignore_ascii_case(FOLDER_TYPE_PROPERTY))
        .then(|| json!({ "id": FOLDER_TYPE_PROPERTY, "value": kind }))
        .into_iter()
        .collect();
    value[EXPANDED_PROPERTIES] = json!(properties);
    value
}

/// The `folders` collection's `$filter`: only `type eq '...'`.
fn type_filter(query: &HashMap<String, String>) -> Result<Option<String>, GraphError> {
    let Some(filter) = option(query, "$filter") else {
        return Ok(None);
    };
    let invalid = || {
        GraphError::bad_request(format!(
            "Invalid filter clause: '{filter}' is not supported."
        ))
    };
    let mut words = filter.trim().splitn(3, ' ');
    let (Some(property), Some(operator), Some(literal)) =
        (words.next(), words.next(), words.next())
    else {
        return Err(invalid());
    };
    if !property.eq_ignore_ascii_case("type") || !operator.eq_ignore_ascii_case("eq") {
        return Err(invalid());
    }
    let literal = literal.trim();
    let value = literal
        .strip_prefix('\'')
        .and_then(|l| l.strip_suffix('\''))
        .ok_or_else(invalid)?;
    Ok(Some(value.to_owned()))
}

fn folder_of<'a>(mailbox: &'a Mailbox, reference: &str) -> Result<&'a Folder, GraphError> {
    mailbox
        .folder(reference)
        .ok_or_else(GraphError::folder_not_found)
}

fn list_folders(
    state: &mut State,
    ctx: &Ctx,
    parent: Option<&str>,
    query: &HashMap<String, String>,
) -> Result<Response, GraphError> {
    let mailbox = mailbox_of(state, ctx)?;
    let parent = match parent {
        Some(reference) => folder_of(mailbox, reference)?,
        None => folder_of(mailbox, &mailbox.root_id)?,
    };
    let wanted_type = type_filter(query)?;
    let expanded = expanded_properties(query)?;
    let mut values: Vec<Value> = mailbox
        .children(&parent.id)
        .into_iter()
        .filter(|f| {
            wanted_type
                .as_deref()
                .is_none_or(|t| f.class.eq_ignore_ascii_case(t))
        })
        .map(|f| expand_folder_properties(folder_json(mailbox, f, ctx), f, expanded.as_deref()))
        .collect();
    if state.rules.faults.repeat_folders {
        values.extend_from_within(..);
    }
    let mut link_base = format!("{}/folders", mailbox_url(ctx, mailbox));
    if parent.id != mailbox.root_id {
        link_base = format!("{link_base}/{}/childFolders", parent.id);
    }
    let context = format!(
        "{}/$metadata#admin/exchange/mailboxes/{}/folders",
        ctx.graph(),
        mailbox.id
    );
    page(values, query, ctx.max_page_size, &link_base, &context)
}

async fn list_top_folders(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path(mailbox): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    serve(
        &shared,
        &headers,
        Access::Mailbox(&mailbox),
        0,
        |state, ctx| list_folders(state, ctx, None, &query),
    )
    .await
}

async fn list_child_folders(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path((mailbox, folder)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    serve(
        &shared,
        &headers,
        Access::Mailbox(&mailbox),
        0,
        |state, ctx| list_folders(state, ctx, Some(&folder), &query),
    )
    .await
}

async fn get_folder(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path((mailbox, folder)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    serve(
        &shared,
        &headers,
        Access::Mailbox(&mailbox),
        0,
        |state, ctx| {
            let mailbox = mailbox_of(state, ctx)?;
            let folder = folder_of(mailbox, &folder)?;
            let expanded = expanded_properties(&query)?;
            let mut body = apply_select(
                expand_folder_properties(
                    folder_json(mailbox, folder, ctx),
                    folder,
                    expanded.as_deref(),
                ),
                select_option(&query).as_deref(),
            );
            body["@odata.context"] = json!(format!(
                "{}/$metadata#admin/exchange/mailboxes('{}')/folders/$entity",
                ctx.graph(),
                mailbox.id
            ));
            json_response(StatusCode::OK, body)
        },
    )
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewFolder {
    display_name: Option<String>,
    #[serde(rename = "type")]
    class: Option<String>,
}

fn create_folder(
    state: &mut State,
    ctx: &Ctx,
    parent: Option<&str>,
    body: &[u8],
) -> Result<Response, GraphError> {
    let new: NewFolder = serde_json::from_slice(body)
        .map_err(|e| GraphError::bad_request(format!("Invalid request body: {e}")))?;
    let name = new
        .display_name
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| GraphError::invalid_request("The displayName property is required."))?;
    let class = new
        .class
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| GraphError::invalid_request("The type property is required."))?;
    let mailbox = mailbox_of_mut(state, ctx)?;
    let parent_id = match parent {
        Some(reference) => folder_of(mailbox, reference)?.id.clone(),
        None => mailbox.root_id.clone(),
    };
    let id = mailbox
        .create_folder(&parent_id, &name, &class)
        .map_err(|e| match e {
            CreateFolderError::Exists => GraphError::new(
                StatusCode::CONFLICT,
                "ErrorFolderExists",
                "A folder with the specified name already exists.",
            ),
            CreateFolderError::ParentNotFound => GraphError::folder_not_found(),
        })?;
    let mailbox = mailbox_of(state, ctx)?;
    let folder = folder_of(mailbox, &id)?;
    let mut body = folder_json(mailbox, folder, ctx);
    body["@odata.context"] = json!(format!(
        "{}/$metadata#admin/exchange/mailboxes('{}')/folders/$entity",
        ctx.graph(),
        mailbox.id
    ));
    json_response(StatusCode::CREATED, body)
}

async fn create_top_folder(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path(mailbox): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(
        &shared,
        &headers,
        Access::Mailbox(&mailbox),
        body.len() as u64,
        |state, ctx| create_folder(state, ctx, None, &body),
    )
    .await
}

async fn create_child_folder(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path((mailbox, folder)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(
        &shared,
        &headers,
        Access::Mailbox(&mailbox),
        body.len() as u64,
        |state, ctx| create_folder(state, ctx, Some(&folder), &body),
    )
    .await
}

async fn folder_delta(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path(mailbox): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    serve(
        &shared,
        &headers,
        Access::Mailbox(&mailbox),
        0,
        |state, ctx| {
            let mailbox = mailbox_of(state, ctx)?;
            let view = DeltaView {
                scope: DeltaScope::Folders,
                link_base: format!("{}/folders/delta", mailbox_url(ctx, mailbox)),
                context: format!("{}/$metadata#Collection(mailboxFolder)", ctx.graph()),
                odata_type: "#microsoft.graph.mailboxFolder",
                render: &|mailbox, entry, ctx| match entry {
                    DeltaEntry::Folder(folder) => folder_json(mailbox, folder, ctx),
                    _ => Value::Null,
                },
            };
            delta_page(state, ctx, &query, view)
        },
    )
    .await
}

async fn list_items(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path((mailbox, folder)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    serve(
        &shared,
        &headers,
        Access::Mailbox(&mailbox),
        0,
        |state, ctx| {
            let mailbox = mailbox_of(state, ctx)?;
            let folder = folder_of(mailbox, &folder)?;
            let conditions = time_filter(&query)?;
            let expanded = expanded_properties(&query)?;
            let values = mailbox
                .items_in(&folder.id)
                .into_iter()
                .filter(|i| conditions.iter().all(|c| c.holds(i)))
                .map(|i| {
                    let mut value = item_json(i, ctx);
                    if let Some(wanted) = &expanded {
                        let properties: Vec<Value> = extended_properties(i)
                            .into_iter()
                            .filter(|(id, _)| wanted.iter().any(|w| w.eq_ignore_ascii_case(id)))
                            .map(|(id, value)| json!({ "id": id, "value": value }))
                            .collect();
                        value[EXPANDED_PROPERTIES] = json!(properties);
                    }
                    value
                })
                .collect();
            let link_base = format!("{}/folders/{}/items", mailbox_url(ctx, mailbox), folder.id);
            let context = format!("{}/$metadata#Collection(mailboxItem)", ctx.graph());
            page(values, &query, ctx.max_page_size, &link_base, &context)
        },
    )
    .await
}

async fn get_item(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path((mailbox, folder, item)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    serve(
        &shared,
        &headers,
        Access::Mailbox(&mailbox),
        0,
        |state, ctx| {
            let mailbox = mailbox_of(state, ctx)?;
            let folder = folder_of(mailbox, &folder)?;
            let item = mailbox
                .item(&item)
                .filter(|i| i.folder_id == folder.id)
                .ok_or_else(GraphError::item_not_found)?;
            let mut body = apply_select(item_json(item, ctx), select_option(&query).as_deref());
            body["@odata.context"] =
                json!(format!("{}/$metadata#mailboxItem/$entity", ctx.graph()));
            json_response(StatusCode::OK, body)
        },
    )
    .await
}

async fn item_delta(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path((mailbox, folder)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    serve(
        &shared,
        &headers,
        Access::Mailbox(&mailbox),
        0,
        |state, ctx| {
            let mailbox = mailbox_of(state, ctx)?;
            let folder = folder_of(mailbox, &folder)?;
            let view = DeltaView {
                scope: DeltaScope::Items {
                    folder_id: folder.id.clone(),
                },
                link_base: format!(
                    "{}/folders/{}/items/delta",
                    mailbox_url(ctx, mailbox),
                    folder.id
                ),
                context: format!("{}/$metadata#Collection(mailboxItem)", ctx.graph()),
                odata_type: "#microsoft.graph.mailboxItem",
                render: &|_, entry, ctx| match entry {
                    DeltaEntry::Item(item) => item_json(item, ctx),
                    _ => Value::Null,
                },
            };
            delta_page(state, ctx, &query, view)
        },
    )
    .await
}

async fn exchange_settings(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Response {
    serve(&shared, &headers, Access::User(&user), 0, |state, ctx| {
        let mailbox = mailbox_of(state, ctx)?;
        json_response(
            StatusCode::OK,
            json!({
                "@odata.context": format!(
                    "{}/$metadata#users('{}')/settings/exchange/$entity",
                    ctx.graph(),
                    encode_component(&user)
                ),
                "primaryMailboxId": mailbox.id,
            }),
        )
    })
    .await
}

#[derive(Deserialize)]
struct ExportRequest {
    #[serde(rename = "itemIds", alias = "ItemIds")]
    item_ids: Vec<String>,
}

async fn export_items(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path(mailbox): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(&shared, &headers, Access::Mailbox(&mailbox), body.len() as u64, |state, ctx| {
        let request: ExportRequest = serde_json::from_slice(&body)
            .map_err(|e| GraphError::bad_request(format!("Invalid request body: {e}")))?;
        if request.item_ids.is_empty() {
            return Err(GraphError::invalid_request("The itemIds parameter must name at least one item."));
        }
        if request.item_ids.len() > MAX_EXPORT_IDS {
            return Err(GraphError::invalid_request(format!(
                "The itemIds parameter can name at most {MAX_EXPORT_IDS} items; it names {}.",
                request.item_ids.len()
            )));
        }
        let mailbox = mailbox_of(state, ctx)?;
        let values: Vec<Value> = request
            .item_ids
            .iter()
            .map(|id| match (mailbox.item(id), mailbox.item_fault(id)) {
                (Some(_), Some(fault)) => json!({
                    "itemId": id,
                    "error": { "errorCode": fault.code, "message": fault.message },
                }),
                (Some(item), None) => json!({
                    "itemId": id,
                    "changeKey": item.change_key(),
                    "data": base64::engine::general_purpose::STANDARD.encode(item.content.encode()),
                }),
                (None, _) => json!({
                    "itemId": id,
                    "error": {
                        "errorCode": "ErrorItemNotFound",
                        "message": "The specified object was not found in the store.",
                    },
                }),
            })
            .collect();
        json_response(
            StatusCode::OK,
            json!({
                "@odata.context": format!("{}/$metadata#Collection(microsoft.graph.exportItemResponse)", ctx.graph()),
                "value": values,
            }),
        )
    })
    .await
}

async fn create_import_session(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path(mailbox): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(&shared, &headers, Access::Mailbox(&mailbox), body.len() as u64, |state, ctx| {
        let token = identity::random_token();
        let lifetime = state.import_session_lifetime;
        let ends_after = state.rules.faults.import_sessions_end_after.map_or(lifetime, |end| end.min(lifetime));
        state.import_sessions.insert(
            token.clone(),
            super::ImportSession {
                client_id: ctx.client_id.clone(),
                mailbox_id: ctx.mailbox_id.clone(),
                expires_at: std::time::Instant::now() + ends_after,
            },
        );
        let expiration = state.directory.clock.now() + lifetime;
        json_response(
            StatusCode::OK,
            json!({
                "@odata.context": format!("{}/$metadata#microsoft.graph.mailboxItemImportSession", ctx.graph()),
                "importUrl": format!(
                    "{}/api/gv1.0/Mailboxes('{}')/importItem?authtoken={token}",
                    ctx.base_url, ctx.mailbox_id
                ),
                "expirationDateTime": expiration.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            }),
        )
    })
    .await
}

#[derive(Deserialize)]
struct ImportRequest {
    #[serde(rename = "FolderId", alias = "folderId")]
    folder_id: Option<String>,
    #[serde(rename = "Mode", alias = "mode")]
    mode: Option<String>,
    #[serde(rename = "Data", alias = "data")]
    data: Option<String>,
    #[serde(rename = "ItemId", alias = "itemId")]
    item_id: Option<String>,
    #[serde(rename = "ChangeKey", alias = "changeKey")]
    change_key: Option<String>,
}

#[derive(Deserialize)]
struct ImportQuery {
    authtoken: Option<String>,
}

async fn import_item(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path(target): Path<String>,
    Query(query): Query<ImportQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = query.authtoken.unwrap_or_default();
    let access = Access::ImportSession {
        token: &token,
        target: &target,
    };
    serve(
        &shared,
        &headers,
        access,
        body.len() as u64,
        |state, ctx| {
            let imported = import(state, ctx, &body);
            if let Some(fault) = state.rules.imported(&ctx.mailbox_id, imported.is_ok()) {
                return Err(rejection_response(Rejection::Fault(fault)));
            }
            imported
        },
    )
    .await
}

fn import(state: &mut State, ctx: &Ctx, body: &[u8]) -> Result<Response, GraphError> {
    let request: ImportRequest = serde_json::from_slice(body)
        .map_err(|e| GraphError::bad_request(format!("Invalid request body: {e}")))?;
    let folder_ref = request
        .folder_id
        .ok_or_else(|| GraphError::invalid_request("The FolderId parameter is required."))?;
    let data = request
        .data
        .ok_or_else(|| GraphError::invalid_request("The Data parameter is required."))?;
    let data = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|_| GraphError::invalid_request("The Data parameter is not valid base64."))?;
    let content = ItemContent::decode(&data).map_err(|e| {
        GraphError::new(
            StatusCode::BAD_REQUEST,
            "ErrorCorruptData",
            format!("The item data is corrupt: {e}."),
        )
    })?;
    let size = data.len() as u64;
    let mailbox = mailbox_of_mut(state, ctx)?;
    let folder_id = folder_of(mailbox, &folder_ref)?.id.clone();
    let quota_exceeded = || {
        GraphError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "ErrorQuotaExceeded",
            "The mailbox has exceeded its storage quota.",
        )
    };
    let item = match request
        .mode
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("create") => {
            if request.item_id.is_some() || request.change_key.is_some() {
                return Err(GraphError::invalid_request(
                    "ItemId and ChangeKey must not be given in create mode.",
                ));
            }
            if mailbox.over_quota_with(size) {
                return Err(quota_exceeded());
            }
            // A new item of this store, created now by its clock.
            let content = ItemContent {
                created: mailbox.now(),
                ..content
            };
            let id = mailbox.add_item(&folder_id, content);
            mailbox.item(&id).expect("just added")
        }
        Some("update") => {
            let (Some(item_id), Some(change_key)) = (request.item_id, request.change_key) else {
                return Err(GraphError::invalid_request(
                    "ItemId and ChangeKey are required in update mode.",
                ));
            };
            let existing = mailbox
                .item(&item_id)
                .filter(|i| i.folder_id == folder_id)
                .ok_or_else(GraphError::item_not_found)?;
            let content = ItemContent {
                created: existing.content.created,
                ..content
            };
            if existing.change_key() != change_key {
                return Err(GraphError::new(
                    StatusCode::CONFLICT,
                    "ErrorIrresolvableConflict",
                    "The send or update operation could not be performed because the change key passed in the request does not match the current change key for the item.",
                ));
            }
            if mailbox.over_quota_with(size.saturating_sub(existing.size)) {
                return Err(quota_exceeded());
            }
            mailbox
                .replace_item(&item_id, content)
                .expect("looked up above")
        }
        _ => {
            return Err(GraphError::invalid_request(
                "The Mode parameter must be 'create' or 'update'.",
            ));
        }
    };
    json_response(
        StatusCode::OK,
        json!({
            "@odata.context": format!("{}/api/gv1.0/$metadata#microsoft.graph.importMailboxItemResponse", ctx.base_url),
            "itemId": item.public_id(ctx.immutable_ids),
            "changeKey": item.change_key(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_type_filter() {
        let q = |f: &str| HashMap::from([("$filter".to_owned(), f.to_owned())]);
        assert_eq!(
            type_filter(&q("type eq 'IPF.Appointment'"))
                .unwrap()
                .as_deref(),
            Some("IPF.Appointment")
        );
        assert!(type_filter(&q("displayName eq 'x'")).is_err());
        assert!(type_filter(&q("type eq IPF.Note")).is_err());
        assert_eq!(type_filter(&HashMap::new()).unwrap(), None);
    }
}
