//! The test API over HTTP, under `/_emulator/`, for the `graph-emulator`
//! binary (no authentication: it is a loopback test fixture).
//!
//! | method | path | body / answer |
//! |---|---|---|
//! | POST | `/tenants` | a [`TenantSeed`] |
//! | GET | `/mailboxes/{user}/snapshot` | a [`MailboxSnapshot`](super::MailboxSnapshot) |
//! | GET | `/mailboxes/{user}/stats` | [`MailboxStats`](super::MailboxStats) |
//! | POST | `/mailboxes/{user}/items` | an [`ItemSeed`]; answers `{"id"}` |
//! | PATCH | `/mailboxes/{user}/items/{id}` | an [`ItemUpdate`] |
//! | DELETE | `/mailboxes/{user}/items/{id}` | |
//! | POST | `/mailboxes/{user}/reset-delta-tokens` | |
//! | GET, PUT | `/limits` | [`Limits`] |
//! | GET, PUT | `/faults` | [`Faults`] |
//!
//! `{user}` is a UPN, user id or mailbox id. Errors are `{"error": "..."}`.

use std::sync::Arc;

use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde_json::json;

use super::Shared;
use super::config::{Faults, ItemSeed, ItemUpdate, Limits, TenantSeed};

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/tenants", post(add_tenant))
        .route("/mailboxes/{user}/snapshot", get(snapshot))
        .route("/mailboxes/{user}/stats", get(stats))
        .route("/mailboxes/{user}/items", post(add_item))
        .route(
            "/mailboxes/{user}/items/{id}",
            patch(update_item).delete(delete_item),
        )
        .route(
            "/mailboxes/{user}/reset-delta-tokens",
            post(reset_delta_tokens),
        )
        .route("/limits", get(get_limits).put(put_limits))
        .route("/faults", get(get_faults).put(put_faults))
}

fn answer<T: serde::Serialize>(result: anyhow::Result<T>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": format!("{e:#}") })),
        )
            .into_response(),
    }
}

fn done(result: anyhow::Result<()>) -> Response {
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": format!("{e:#}") })),
        )
            .into_response(),
    }
}

async fn add_tenant(
    AxumState(shared): AxumState<Arc<Shared>>,
    Json(tenant): Json<TenantSeed>,
) -> Response {
    done(shared.add_tenant(&tenant))
}

async fn snapshot(AxumState(shared): AxumState<Arc<Shared>>, Path(user): Path<String>) -> Response {
    answer(shared.snapshot(&user))
}

async fn stats(AxumState(shared): AxumState<Arc<Shared>>, Path(user): Path<String>) -> Response {
    answer(shared.stats(&user))
}

async fn add_item(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path(user): Path<String>,
    Json(item): Json<ItemSeed>,
) -> Response {
    answer(shared.add_item(&user, &item).map(|id| json!({ "id": id })))
}

async fn update_item(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path((user, id)): Path<(String, String)>,
    Json(update): Json<ItemUpdate>,
) -> Response {
    done(shared.update_item(&user, &id, &update))
}

async fn delete_item(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path((user, id)): Path<(String, String)>,
) -> Response {
    done(shared.delete_item(&user, &id))
}

async fn reset_delta_tokens(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path(user): Path<String>,
) -> Response {
    done(shared.reset_delta_tokens(&user, super::SyncReset::Gone))
}

async fn get_limits(AxumState(shared): AxumState<Arc<Shared>>) -> Json<Limits> {
    Json(shared.lock().rules.limits.clone())
}

async fn put_limits(
    AxumState(shared): AxumState<Arc<Shared>>,
    Json(limits): Json<Limits>,
) -> StatusCode {
    shared.lock().rules.limits = limits;
    StatusCode::NO_CONTENT
}

async fn get_faults(AxumState(shared): AxumState<Arc<Shared>>) -> Json<Faults> {
    Json(shared.lock().rules.faults.clone())
}

async fn put_faults(
    AxumState(shared): AxumState<Arc<Shared>>,
    Json(faults): Json<Faults>,
) -> StatusCode {
    shared.lock().rules.set_faults(faults);
    StatusCode::NO_CONTENT
}
