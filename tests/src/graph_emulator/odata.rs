//! OData conventions shared by the collections: query options, `$select`,
//! `$top`/`$skip` paging with `@odata.nextLink`, and delta rounds with
//! state tokens (`$skiptoken`, `$deltatoken`, `@odata.deltaLink`).

use std::collections::HashMap;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::State;
use super::config::SyncReset;
use super::error::GraphError;
use super::identity;
use super::model::{ChangeFilter, DeltaEntry, DeltaScope, Mailbox};
use super::pipeline::{Ctx, PREFERENCE_APPLIED, mailbox_of};

/// An expanded relationship, kept whatever `$select` says.
pub(crate) const EXPANDED_PROPERTIES: &str = "singleValueExtendedProperties";

/// Page size when neither `$top` nor `Prefer: odata.maxpagesize` says
/// (Outlook's default of 10, the list-messages page)…
const DEFAULT_PAGE_SIZE: usize = 10;
/// …and the largest page it serves ("within the range of 1 and 1000").
pub(crate) const MAX_PAGE_SIZE: usize = 1000;

pub(crate) fn json_response(status: StatusCode, body: Value) -> Result<Response, GraphError> {
    Ok((status, axum::Json(body)).into_response())
}

/// A query option, case-insensitively (`$top`, `$Top`).
pub(crate) fn option<'a>(query: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn number_option(query: &HashMap<String, String>, name: &str) -> Result<Option<usize>, GraphError> {
    option(query, name)
        .map(|v| {
            v.parse::<usize>().map_err(|_| {
                GraphError::bad_request(format!("Invalid value '{v}' for query option {name}."))
            })
        })
        .transpose()
}

/// `$select=a,b` as a list.
pub(crate) fn select_option(query: &HashMap<String, String>) -> Option<Vec<String>> {
    option(query, "$select").map(|s| {
        s.split(',')
            .map(|f| f.trim().to_owned())
            .filter(|f| !f.is_empty())
            .collect()
    })
}

/// Keeps the selected properties, `id`, annotations and what `$expand`
/// added (extended properties).
pub(crate) fn apply_select(value: Value, select: Option<&[String]>) -> Value {
    let (Some(select), Value::Object(map)) = (select, &value) else {
        return value;
    };
    let kept = map
        .iter()
        .filter(|(k, _)| {
            k.starts_with('@')
                || *k == "id"
                || *k == EXPANDED_PROPERTIES
                || select.iter().any(|s| s.eq_ignore_ascii_case(k))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Value::Object(kept)
}

/// Percent-encodes a query component.
pub(crate) fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~$".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One page of a plain collection (`$top`/`$skip`) with its nextLink: of
/// `$top` entries, else of the `Prefer: odata.maxpagesize` asked for
/// (`max_page_size`), else of the default size, and never more than
/// [`MAX_PAGE_SIZE`].
pub(crate) fn page(
    values: Vec<Value>,
    query: &HashMap<String, String>,
    max_page_size: Option<usize>,
    link_base: &str,
    context: &str,
) -> Result<Response, GraphError> {
    let top = number_option(query, "$top")?
        .or(max_page_size)
        .unwrap_or(DEFAULT_PAGE_SIZE)
        .clamp(1, MAX_PAGE_SIZE);
    let skip = number_option(query, "$skip")?.unwrap_or(0);
    let select = select_option(query);
    let total = values.len();
    let page: Vec<Value> = values
        .into_iter()
        .skip(skip)
        .take(top)
        .map(|v| apply_select(v, select.as_deref()))
        .collect();
    let mut body = json!({ "@odata.context": context, "value": page });
    if skip + top < total {
        let mut params: Vec<(String, String)> = query
            .iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("$skip") && !k.eq_ignore_ascii_case("$top"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        params.sort();
        params.push(("$top".to_owned(), top.to_string()));
        params.push(("$skip".to_owned(), (skip + top).to_string()));
        let query_string: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
            .collect();
        body["@odata.nextLink"] = json!(format!("{link_base}?{}", query_string.join("&")));
    }
    json_response(StatusCode::OK, body)
}

/// The server side of a delta state token.
pub(crate) struct DeltaCursor {
    mailbox_id: String,
    scope: DeltaScope,
    generation: u64,
    /// `None` for the initial round (everything present).
    since: Option<u64>,
    /// The change sequence this round started at: the next round's `since`.
    round_start: u64,
    /// Key of the last entry returned in this round.
    after: Option<String>,
    page_size: usize,
    select: Option<Vec<String>>,
    filter: ChangeFilter,
}

/// How a delta collection is rendered.
pub(crate) struct DeltaView<'a> {
    pub scope: DeltaScope,
    /// The delta URL without query (nextLink/deltaLink base).
    pub link_base: String,
    pub context: String,
    /// `@odata.type` of removed entries.
    pub odata_type: &'a str,
    pub render: &'a dyn Fn(&Mailbox, &DeltaEntry<'_>, &Ctx) -> Value,
}

/// One page of a delta round, with `@odata.nextLink` or, at the end of
/// the round, `@odata.deltaLink`.
pub(crate) fn delta_page(
    state: &mut State,
    ctx: &Ctx,
    query: &HashMap<String, String>,
    view: DeltaView<'_>,
) -> Result<Response, GraphError> {
    let token = option(query, "$skiptoken").or_else(|| option(query, "$deltatoken"));
    let is_delta_token = option(query, "$deltatoken").is_some();
    let mailbox = mailbox_of(state, ctx)?;
    let mut cursor = match token {
        Some(token) => {
            let cursor = state
                .cursors
                .get(token)
                .filter(|c| {
                    c.mailbox_id == mailbox.id
                        && c.scope == view.scope
                        && c.generation == mailbox.sync_generation
                })
                .ok_or_else(|| sync_reset(mailbox.sync_reset, &view.link_base))?;
            DeltaCursor {
                mailbox_id: cursor.mailbox_id.clone(),
                scope: cursor.scope.clone(),
                generation: cursor.generation,
                since: if is_delta_token {
                    Some(cursor.round_start)
                } else {
                    cursor.since
                },
                round_start: if is_delta_token {
                    mailbox.seq
                } else {
                    cursor.round_start
                },
                after: if is_delta_token {
                    None
                } else {
                    cursor.after.clone()
                },
                page_size: cursor.page_size,
                select: cursor.select.clone(),
                filter: cursor.filter,
            }
        }
        None => DeltaCursor {
            mailbox_id: mailbox.id.clone(),
            scope: view.scope.clone(),
            generation: mailbox.sync_generation,
            since: None,
            round_start: mailbox.seq,
            after: None,
            page_size: number_option(query, "$top")?
                .unwrap_or(DEFAULT_PAGE_SIZE)
                .clamp(1, MAX_PAGE_SIZE),
            select: select_option(query),
            filter: change_filter(query)?,
        },
    };
    if let Some(size) = ctx.max_page_size {
        cursor.page_size = size;
    }
    let entries = mailbox.delta_entries(
        &cursor.scope,
        cursor.since,
        cursor.filter,
        ctx.immutable_ids,
    );
    let mut remaining = entries
        .iter()
        .filter(|e| cursor.after.as_deref().is_none_or(|after| e.key() > after))
        .peekable();
    let mut values = Vec::new();
    let mut last_key = None;
    while values.len() < cursor.page_size {
        let Some(entry) = remaining.next() else { break };
        let value = match entry {
            DeltaEntry::Removed { id, .. } => json!({
                "@odata.type": view.odata_type,
                "id": id,
                "@removed": { "reason": "deleted" },
            }),
            _ => apply_select((view.render)(mailbox, entry, ctx), cursor.select.as_deref()),
        };
        values.push(value);
        last_key = Some(entry.key().to_owned());
    }
    let more = remaining.peek().is_some();
    let mut body = json!({ "@odata.context": view.context, "value": values });
    if more {
        cursor.after = last_key;
        let token = identity::random_token();
        body["@odata.nextLink"] = json!(format!("{}?$skiptoken={token}", view.link_base));
        state.cursors.insert(token, cursor);
    } else {
        let token = identity::random_token();
        body["@odata.deltaLink"] = json!(format!("{}?$deltatoken={token}", view.link_base));
        state.cursors.insert(token, cursor);
    }
    let mut response = (StatusCode::OK, axum::Json(body)).into_response();
    if let Some(size) = ctx.max_page_size {
        let value = format!("odata.maxpagesize={size}");
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append(PREFERENCE_APPLIED, value);
        }
    }
    Ok(response)
}

/// The answer to a delta or skip token the mailbox forgot, in the form
/// the mailbox is set to (see [`SyncReset`]).
fn sync_reset(form: SyncReset, link_base: &str) -> GraphError {
    const EXPIRED: &str = "The sync state generation is not found. The delta token is expired and data must be synchronized again.";
    match form {
        SyncReset::Gone => GraphError::new(StatusCode::GONE, "syncStateNotFound", EXPIRED)
            .header(header::LOCATION, link_base.to_owned()),
        SyncReset::NotFound => GraphError::new(StatusCode::NOT_FOUND, "syncStateNotFound", EXPIRED),
        SyncReset::ResyncRequired => GraphError::new(
            StatusCode::BAD_REQUEST,
            "resyncRequired",
            "The sync state is no longer valid; a full synchronization is required.",
        ),
        SyncReset::SyncStateInvalid => GraphError::new(
            StatusCode::BAD_REQUEST,
            "SyncStateInvalid",
            "The sync state is invalid.",
        ),
    }
}

fn change_filter(query: &HashMap<String, String>) -> Result<ChangeFilter, GraphError> {
    match option(query, "changeType")
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None => Ok(ChangeFilter::All),
        Some("created") => Ok(ChangeFilter::Created),
        Some("updated") => Ok(ChangeFilter::Updated),
        Some("deleted") => Ok(ChangeFilter::Deleted),
        Some(other) => Err(GraphError::bad_request(format!(
            "Invalid changeType '{other}'."
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_keeps_id_and_annotations() {
        let v = json!({"@odata.type": "x", "id": "1", "a": 1, "b": 2});
        let selected = apply_select(v, Some(&["b".to_owned()]));
        assert_eq!(selected, json!({"@odata.type": "x", "id": "1", "b": 2}));
    }
}
