//! The coordinator's HTTP API (`/api/v1`): JSON in, JSON out, a bearer token
//! on every route but `/api/v1/healthz`. Errors are
//! `{"error": {"code": …, "message": …}}` with a stable code:
//!
//! | code | status | when |
//! | --- | --- | --- |
//! | `unauthorized` | 401 | no or wrong `Authorization: Bearer …` |
//! | `invalid_request` | 400 | malformed JSON, configuration or CSV; a configuration naming a command, file or environment variable |
//! | `not_found` | 404 | no such wave or route |
//! | `request_timeout` | 408 | the request took longer than `request_timeout_secs` |
//! | `payload_too_large` | 413 | the body is larger than `max_body_bytes` |
//! | `conflict` | 409 | wave name taken; transition not allowed from the wave's state |
//! | `unavailable` | 503 (500 for a store inconsistency) | the store failed |

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mailwave_common::config::Config;
use mailwave_common::mailboxes::parse_mailbox_csv;
use mailwave_common::model::{MailboxRecord, WaveCounts, WaveId, WaveRecord, WaveState};
use mailwave_common::store::{StoreError, WaveAction, WaveStore};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Notify;

/// Largest request body by default: a CSV of 100,000 mailboxes is about 6 MB.
const BODY_LIMIT: usize = 64 * 1024 * 1024;

/// How long a request may take by default, its body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Failed mailboxes listed in a wave's status at most.
const ERRORS_SHOWN: usize = 100;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn WaveStore>,
    token: Arc<str>,
    /// Notified after start, resume, sync and complete: the dispatcher
    /// publishes at once instead of at its next round.
    pub wake: Arc<Notify>,
    body_limit: usize,
    request_timeout: Duration,
}

impl ApiState {
    pub fn new(store: Arc<dyn WaveStore>, token: &str, wake: Arc<Notify>) -> ApiState {
        ApiState {
            store,
            token: token.into(),
            wake,
            body_limit: BODY_LIMIT,
            request_timeout: REQUEST_TIMEOUT,
        }
    }

    /// The largest body and the longest time a request may take.
    pub fn with_limits(self, body_limit: usize, request_timeout: Duration) -> ApiState {
        ApiState {
            body_limit,
            request_timeout,
            ..self
        }
    }
}

/// The API's router, routes under `/api/v1`.
pub fn router(state: ApiState) -> Router {
    let authenticated = Router::new()
        .route("/waves", post(create_wave).get(list_waves))
        .route("/waves/{id}", get(wave_status))
        .route("/waves/{id}/mailboxes", get(wave_mailboxes))
        .route("/waves/{id}/{action}", post(wave_action))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let api = Router::new()
        .route("/healthz", get(healthz))
        .merge(authenticated);
    Router::new()
        .nest("/api/v1", api)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), time_limit))
        .with_state(state)
}

/// Answers 408 when the request (reading its body included) takes longer
/// than the state's request timeout.
async fn time_limit(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(state.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request took longer than {} s",
                state.request_timeout.as_secs_f64()
            ),
        )
        .into_response(),
    }
}

/// An error as the API answers it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        let (status, code) = match &error {
            StoreError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            StoreError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            StoreError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            StoreError::Corrupt(_) | StoreError::LeaseLost { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, "unavailable")
            }
        };
        if status.is_server_error() {
            tracing::error!(%error, "API request failed in the store");
        }
        ApiError::new(status, code, error.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body is too large ({})", rejection.body_text()),
            );
        }
        ApiError::invalid(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::invalid(rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Compares in time that depends on the expected token's length only.
fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = given.len() ^ expected.len();
    for (i, byte) in expected.iter().enumerate() {
        diff |= usize::from(given.get(i).copied().unwrap_or(0) ^ byte);
    }
    diff == 0
}

async fn authenticate(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match given {
        Some(token) if token_matches(token.as_bytes(), state.token.as_bytes()) => {
            next.run(request).await
        }
        Some(_) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "wrong token").into_response()
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "an `Authorization: Bearer <token>` header is required",
        )
        .into_response(),
    }
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// `POST /waves`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateWave {
    pub name: String,
    /// The wave's configuration (the `[source]`, `[target]`, `[migration]`
    /// and `[folders]` of `mailwave run`); secrets only by name.
    pub config_toml: String,
    /// `source,target` rows; no password columns.
    pub mailboxes_csv: String,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct Created {
    pub id: WaveId,
    pub name: String,
    pub state: WaveState,
    pub mailboxes: usize,
    pub rejected_rows: Vec<RejectedRow>,
}

#[derive(Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct RejectedRow {
    pub line: u64,
    pub reason: String,
}

async fn create_wave(
    State(state): State<ApiState>,
    body: Result<Json<CreateWave>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Created>)> {
    let Json(body) = body?;
    let name = body.name.trim();
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name must be 1 to 200 characters, without control characters",
        ));
    }
    let mut config = Config::from_remote_toml_str(&body.config_toml)
        .map_err(|e| ApiError::invalid(format!("config_toml: {e}")))?;
    config.migration.wave = Some(name.to_owned());
    let list = parse_mailbox_csv(body.mailboxes_csv.as_bytes())
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    if list.has_password_columns {
        return Err(ApiError::invalid(
            "mailbox list: per-user password columns (source_password, target_password) are \
             not accepted in distributed mode; credentials come from the endpoint \
             configuration (admin impersonation or OAuth)",
        ));
    }
    let rejected_rows: Vec<_> = list
        .errors
        .iter()
        .map(|e| RejectedRow {
            line: e.line,
            reason: e.reason.clone(),
        })
        .collect();
    if list.rows.is_empty() {
        let reasons: Vec<_> = list.errors.iter().map(ToString::to_string).collect();
        return Err(ApiError::invalid(format!(
            "mailbox list: no valid row ({})",
            if reasons.is_empty() {
                "the file has a header only".to_owned()
            } else {
                reasons.join("; ")
            }
        )));
    }
    let id = state.store.create_wave(name, &config).await?;
    let specs: Vec<_> = list.rows.iter().map(|r| r.spec.clone()).collect();
    let records = state.store.add_mailboxes(id, &specs).await?;
    tracing::info!(wave = %name, id, mailboxes = records.len(), rejected = rejected_rows.len(), "wave created");
    Ok((
        StatusCode::CREATED,
        Json(Created {
            id,
            name: name.to_owned(),
            state: WaveState::Created,
            mailboxes: records.len(),
            rejected_rows,
        }),
    ))
}

/// A wave in lists and after a transition.
#[derive(Debug, Deserialize, Serialize)]
pub struct WaveSummary {
    pub id: WaveId,
    pub name: String,
    pub state: WaveState,
    pub final_pass: bool,
}

impl From<&WaveRecord> for WaveSummary {
    fn from(wave: &WaveRecord) -> WaveSummary {
        WaveSummary {
            id: wave.id,
            name: wave.name.clone(),
            state: wave.state,
            final_pass: wave.final_pass,
        }
    }
}

async fn list_waves(State(state): State<ApiState>) -> ApiResult<Json<Vec<WaveSummary>>> {
    let waves = state.store.waves().await?;
    Ok(Json(waves.iter().map(WaveSummary::from).collect()))
}

/// `GET /waves/{id}`.
#[derive(Debug, Deserialize, Serialize)]
pub struct WaveStatus {
    #[serde(flatten)]
    pub wave: WaveSummary,
    /// `None` when the stored configuration cannot be read.
    pub max_concurrent_mailboxes: Option<usize>,
    /// Why the wave's stored configuration cannot be read by this
    /// coordinator: then nothing of the wave is dispatched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_error: Option<String>,
    pub mailboxes: u64,
    /// Mailboxes per state, and items, bytes and skipped items of their
    /// current passes.
    pub counts: WaveCounts,
    /// Failed mailboxes with their last error (the first 100).
    pub errors: Vec<MailboxError>,
}

#[derive(Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct MailboxError {
    pub mailbox: i64,
    pub source: String,
    pub target: String,
    pub pass: i64,
    pub error: String,
}

fn wave_id(id: &str) -> ApiResult<WaveId> {
    id.parse()
        .map_err(|_| ApiError::invalid(format!("wave id {id:?} is not a number")))
}

async fn wave_status(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<WaveStatus>> {
    let id = wave_id(&path?.0)?;
    let wave = state.store.wave(id).await?;
    let counts = state.store.wave_counts(id).await?;
    let errors = state
        .store
        .failed_mailboxes(id, ERRORS_SHOWN)
        .await?
        .into_iter()
        .map(|m| MailboxError {
            mailbox: m.id,
            source: m.source,
            target: m.target,
            pass: m.pass,
            error: m.last_error.unwrap_or_else(|| "failed".into()),
        })
        .collect();
    let migration = wave.config.migration();
    Ok(Json(WaveStatus {
        max_concurrent_mailboxes: migration.as_ref().ok().map(|m| m.max_concurrent_mailboxes),
        config_error: migration.err().map(|e| e.to_string()),
        wave: WaveSummary::from(&wave),
        mailboxes: counts.total(),
        counts,
        errors,
    }))
}

async fn wave_mailboxes(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Vec<MailboxRecord>>> {
    let id = wave_id(&path?.0)?;
    state.store.wave(id).await?;
    Ok(Json(state.store.mailboxes(id).await?))
}

/// An operator's command on a wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Start,
    Pause,
    Resume,
    Sync,
    Complete,
    Cancel,
}

impl Command {
    pub fn parse(name: &str) -> Option<Command> {
        Some(match name {
            "start" => Command::Start,
            "pause" => Command::Pause,
            "resume" => Command::Resume,
            "sync" => Command::Sync,
            "complete" => Command::Complete,
            "cancel" => Command::Cancel,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Start => "start",
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Sync => "sync",
            Command::Complete => "complete",
            Command::Cancel => "cancel",
        }
    }

    /// From which states the command is allowed, the state it leads to
    /// (`None`: unchanged) and what it does to the wave's mailboxes.
    ///
    /// - start: created → running; every mailbox needs pass 1.
    /// - pause: running → paused; nothing more is published, running jobs finish.
    /// - resume: paused → running.
    /// - sync: running or paused (unchanged); every mailbox needs its next
    ///   delta pass (published while running).
    /// - complete: running or paused → running; every mailbox needs its
    ///   final pass; the wave becomes completed when they all end.
    /// - cancel: created, running or paused → cancelled; queued mailboxes go
    ///   back to pending (their jobs are dropped as stale), running jobs finish.
    pub fn rule(self) -> (&'static [WaveState], Option<WaveState>, WaveAction) {
        use WaveState::{Cancelled, Created, Paused, Running};
        match self {
            Command::Start => (&[Created], Some(Running), WaveAction::RequestPass),
            Command::Pause => (&[Running], Some(Paused), WaveAction::None),
            Command::Resume => (&[Paused], Some(Running), WaveAction::None),
            Command::Sync => (&[Running, Paused], None, WaveAction::RequestPass),
            Command::Complete => (
                &[Running, Paused],
                Some(Running),
                WaveAction::RequestFinalPass,
            ),
            Command::Cancel => (
                &[Created, Running, Paused],
                Some(Cancelled),
                WaveAction::ResetQueued,
            ),
        }
    }
}

async fn wave_action(
    State(state): State<ApiState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<WaveSummary>> {
    let Path((id, command)) = path?;
    let id = wave_id(&id)?;
    let Some(command) = Command::parse(&command) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no command {command:?}: start, pause, resume, sync, complete or cancel"),
        ));
    };
    let (from, to, action) = command.rule();
    if !state.store.transition_wave(id, from, to, action).await? {
        let wave = state.store.wave(id).await?;
        let allowed: Vec<_> = from.iter().map(|s| s.as_str()).collect();
        return Err(ApiError::conflict(format!(
            "cannot {} wave {} ({:?}): it is {}; allowed when {}",
            command.as_str(),
            id,
            wave.name,
            wave.state.as_str(),
            allowed.join(" or ")
        )));
    }
    let wave = state.store.wave(id).await?;
    tracing::info!(wave = %wave.name, command = command.as_str(), state = wave.state.as_str(), "wave command");
    if wave.state == WaveState::Running {
        state.wake.notify_one();
    }
    Ok(Json(WaveSummary::from(&wave)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches(b"s3cret-token", b"s3cret-token"));
        assert!(!token_matches(b"s3cret-toke", b"s3cret-token"));
        assert!(!token_matches(b"s3cret-token!", b"s3cret-token"));
        assert!(!token_matches(b"", b"s3cret-token"));
        assert!(!token_matches(b"S3cret-token", b"s3cret-token"));
    }
}
