//! Requests to Microsoft Graph for one mailbox: the app-only token, the
//! throttling-aware scheduler around every request, retries with the
//! server's hints, paging, and the classification of every failure.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use mailwave_common::config::OAuth2ClientCredentials;
use mailwave_common::error::{error_chain, http_retry_hint};
use mailwave_common::retry::Budgets;
use mailwave_common::{Classify, ErrorClass};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

use crate::connector::throttle::{MailboxThrottle, UploadTurn, WaitError};
use crate::connector::{ConnectorError, Shared};

/// The longest any one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Most characters of an error body quoted in a message.
const QUOTED_BODY_CHARS: usize = 300;
/// Most bytes of an error answer read (the rest is not needed to classify
/// it, and a hostile server could send without end).
const ERROR_BODY_BYTES: u64 = 64 * 1024;
/// The largest buffer made ahead for an answer of the length its server
/// announces.
const PRESIZED_BODY_BYTES: u64 = 64 * 1024 * 1024;

/// Every request asks for immutable ids…
const PREFER: &str = "IdType=\"ImmutableId\"";
/// …and every GET for pages of up to 1,000 entries (Outlook's largest
/// page; its default is 10), so that a 50,000-item folder is listed in 50
/// requests rather than 5,000.
const PREFER_PAGED: &str = "IdType=\"ImmutableId\", odata.maxpagesize=1000";

/// A failure of a Graph request, with what the engine needs to decide.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct GraphError {
    pub class: ErrorClass,
    pub retry_after: Option<Duration>,
    /// The HTTP status, when the server answered.
    pub status: Option<StatusCode>,
    /// Graph's error code (`error.code`), when the body had one.
    pub code: Option<String>,
    pub message: String,
}

impl GraphError {
    /// A delta link the server no longer knows: `410 Gone`, or any 40x
    /// with `syncStateNotFound`, `resyncRequired` or `SyncStateInvalid`
    /// (the delta query overview: "a 40X-series error with error codes such
    /// as syncStateNotFound"). The folder must be synchronised from scratch.
    pub fn is_sync_state_lost(&self) -> bool {
        const LOST: [&str; 3] = ["syncStateNotFound", "resyncRequired", "SyncStateInvalid"];
        let Some(status) = self.status else {
            return false;
        };
        status == StatusCode::GONE
            || (status.is_client_error()
                && self
                    .code
                    .as_deref()
                    .is_some_and(|code| LOST.iter().any(|l| l.eq_ignore_ascii_case(code))))
    }

    /// An import URL the server no longer takes: its session expired or
    /// was deleted (`401`, `403`, or a `404` that names neither the folder
    /// nor an item).
    pub fn is_import_session_refused(&self) -> bool {
        match self.status {
            Some(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => true,
            Some(StatusCode::NOT_FOUND) => !matches!(
                self.code.as_deref(),
                Some("ErrorFolderNotFound" | "ErrorItemNotFound")
            ),
            _ => false,
        }
    }

    /// Access to what the request named is denied (`403`): for a folder's
    /// listing or export, that folder's failure, not the mailbox's.
    pub fn is_access_denied(&self) -> bool {
        self.status == Some(StatusCode::FORBIDDEN)
    }

    fn local(class: ErrorClass, message: String) -> GraphError {
        GraphError {
            class,
            retry_after: None,
            status: None,
            code: None,
            message,
        }
    }
}

impl Classify for GraphError {
    fn class(&self) -> ErrorClass {
        self.class
    }

    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl From<WaitError> for GraphError {
    fn from(error: WaitError) -> Self {
        let class = match error {
            WaitError::Stopped => ErrorClass::Transient,
            WaitError::HintTooLong { .. } | WaitError::PassWaitSpent { .. } => ErrorClass::Mailbox,
        };
        GraphError::local(class, error.to_string())
    }
}

impl From<GraphError> for ConnectorError {
    fn from(error: GraphError) -> Self {
        ConnectorError::classified(error.class, error.message, error.retry_after)
    }
}

/// One mailbox's view of a Graph endpoint.
#[derive(Clone)]
pub struct GraphClient {
    http: reqwest::Client,
    /// `https://graph.microsoft.com/v1.0`, no trailing slash.
    pub api: String,
    credentials: OAuth2ClientCredentials,
    throttle: MailboxThrottle,
    /// The worker's token cache.
    shared: Arc<Shared>,
    /// How far the server's clock is ahead of this machine's, as of its
    /// last answer with a `Date` (shared by the clones of this client).
    server_offset: Arc<Mutex<Option<chrono::TimeDelta>>>,
}

/// A successful answer's body, read up to the request's limit.
#[derive(Debug)]
pub enum Answer {
    Whole(Bytes),
    /// Longer than `limit` bytes: not read any further.
    TooLarge {
        limit: u64,
    },
}

/// Whether a request may be sent again after a failure that leaves open
/// whether the server carried it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// Reads, and writes whose repetition does no harm: after any
    /// throttled or transient failure.
    Idempotent,
    /// A write that would be done twice (an import): only when the server
    /// surely did not carry it out, after a throttle (429, 509) or a connection
    /// that was never made. Any other failure goes up to the pass, whose
    /// in-doubt path finds out whether the item is in the target.
    OnlyIfNotDone,
}

/// What to send.
pub enum Body<'a> {
    None,
    Json(&'a Value),
    /// JSON carrying item data to an import session's pre-authenticated
    /// URL (sent without a bearer token): paced by the mailbox's upload
    /// window (see [`crate::connector::throttle`]), its first attempt with
    /// the turn taken for it, if any.
    Upload(&'a Value, Option<UploadTurn>),
}

impl GraphClient {
    /// A client of `api` (the Graph root with its version) with tokens for
    /// `credentials`, scheduling every request through `throttle`.
    pub fn new(
        api: &str,
        credentials: OAuth2ClientCredentials,
        throttle: MailboxThrottle,
        shared: Arc<Shared>,
    ) -> Result<GraphClient, ConnectorError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| ConnectorError::mailbox(format!("HTTP client: {e}")))?;
        Ok(GraphClient {
            http,
            api: api.trim_end_matches('/').to_owned(),
            credentials,
            throttle,
            shared,
            server_offset: Arc::default(),
        })
    }

    /// The mailbox's scheduler.
    pub fn throttle(&self) -> &MailboxThrottle {
        &self.throttle
    }

    /// The server's time now, by the `Date` of its last answer (to the
    /// second: the header's resolution) and this machine's clock since;
    /// `None` before any answer with a `Date`.
    pub fn server_now(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let offset = *self
            .server_offset
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        offset.map(|offset| chrono::Utc::now() + offset)
    }

    /// Learns the server's clock from an answer's `Date`.
    fn note_date(&self, response: &reqwest::Response) {
        let date = response
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok());
        if let Some(date) = date {
            let offset = date.to_utc() - chrono::Utc::now();
            *self
                .server_offset
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(offset);
        }
    }

    /// The URL of an API path (`/users/…`) or an absolute URL as given
    /// (`@odata.nextLink`, delta links, import URLs).
    pub fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_owned()
        } else {
            format!("{}{path_or_url}", self.api)
        }
    }

    /// GETs a JSON document.
    pub async fn get(&self, path_or_url: &str) -> Result<Value, GraphError> {
        self.send(
            Method::GET,
            path_or_url,
            Body::None,
            Resend::Idempotent,
            None,
            json_answer,
        )
        .await
    }

    /// GETs a document as the server sent it, byte for byte (a message's
    /// MIME from `$value`), unless it is longer than `limit` bytes: then
    /// it is not read whole (nor kept) at all.
    pub async fn get_bytes_within(
        &self,
        path_or_url: &str,
        limit: u64,
    ) -> Result<Answer, GraphError> {
        self.send(
            Method::GET,
            path_or_url,
            Body::None,
            Resend::Idempotent,
            Some(limit),
            Ok,
        )
        .await
    }

    /// POSTs JSON and returns the JSON answer: for requests that may be
    /// repeated (`exportItems`, `createImportSession`, and folder creation,
    /// where a repeated one meets `409 Conflict` and the folder is listed).
    pub async fn post(&self, path_or_url: &str, body: &Value) -> Result<Value, GraphError> {
        self.send(
            Method::POST,
            path_or_url,
            Body::Json(body),
            Resend::Idempotent,
            None,
            json_answer,
        )
        .await
    }

    /// POSTs an item to an import session's pre-authenticated URL (no
    /// bearer token is sent), with the upload `turn` taken for it if any.
    /// Not repeated after a failure that may hide an imported item (see
    /// [`Resend::OnlyIfNotDone`]).
    pub async fn import(
        &self,
        url: &str,
        body: &Value,
        turn: Option<UploadTurn>,
    ) -> Result<Value, GraphError> {
        self.send(
            Method::POST,
            url,
            Body::Upload(body, turn),
            Resend::OnlyIfNotDone,
            None,
            json_answer,
        )
        .await
    }

    /// POSTs an update of an existing item (`Mode: "update"`) to an import
    /// session's URL: it carries the item's whole new version, so it is
    /// sent again after any throttled or transient failure. `turn`: as
    /// for [`GraphClient::import`].
    pub async fn import_update(
        &self,
        url: &str,
        body: &Value,
        turn: Option<UploadTurn>,
    ) -> Result<Value, GraphError> {
        self.send(
            Method::POST,
            url,
            Body::Upload(body, turn),
            Resend::Idempotent,
            None,
            json_answer,
        )
        .await
    }

    /// Every item of a collection, following `@odata.nextLink`.
    pub async fn get_all(&self, path_or_url: &str) -> Result<Vec<Value>, GraphError> {
        let mut items = Vec::new();
        let mut next = Some(path_or_url.to_owned());
        while let Some(url) = next.take() {
            let mut page = self.get(&url).await?;
            if let Some(Value::Array(values)) = page.get_mut("value").map(Value::take) {
                items.extend(values);
            }
            next = page["@odata.nextLink"].as_str().map(str::to_owned);
        }
        Ok(items)
    }

    /// Sends one request, retrying throttled and transient failures as
    /// `resend` allows within [`Budgets::graph_request`] (the whole mailbox
    /// waits out a throttle), and refreshing a refused token once. A
    /// successful answer is read by `decode`; an answer it refuses counts
    /// as a transient failure; `limit` bounds the bytes of a successful
    /// answer that are read. A throttle whose hint is over the limit fails
    /// the mailbox at once, quoting the server; a stop ends every wait (see
    /// [`crate::connector::throttle::WaitLimits`]).
    async fn send<T>(
        &self,
        method: Method,
        path_or_url: &str,
        body: Body<'_>,
        resend: Resend,
        limit: Option<u64>,
        decode: fn(Answer) -> Result<T, String>,
    ) -> Result<T, GraphError> {
        let url = self.url(path_or_url);
        let (payload, upload, mut turn) = match body {
            Body::None => (None, false, None),
            Body::Json(json) => (Some(to_json(json)?), false, None),
            Body::Upload(json, turn) => (Some(to_json(json)?), true, turn),
        };
        let mut token = if upload {
            None
        } else {
            Some(self.shared.tokens.token(&self.credentials).await?)
        };
        let mut token_refreshed = false;
        let mut backoff = Budgets::default().graph_request.start();
        loop {
            let permit = match &payload {
                Some(bytes) if upload => {
                    self.throttle
                        .acquire_upload(bytes.len() as u64, turn.take())
                        .await
                }
                _ => self.throttle.acquire().await,
            }?;
            let prefer = if method == Method::GET {
                PREFER_PAGED
            } else {
                PREFER
            };
            let mut request = self
                .http
                .request(method.clone(), &url)
                .header("Prefer", prefer);
            if let Some(token) = &token {
                request = request.bearer_auth(token.secret());
            }
            if let Some(bytes) = &payload {
                request = request
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(bytes.clone());
            }
            let started = Instant::now();
            // Whether the request may have reached the server.
            let (outcome, reached) = match request.send().await {
                Ok(response) => {
                    self.note_date(&response);
                    (read(response, &method, &url, limit, decode).await, true)
                }
                // Without its URL: an import URL carries a token.
                Err(error) => {
                    let reached = !error.is_connect();
                    let message = format!(
                        "{method} {}: {}",
                        redact(&url),
                        error_chain(&error.without_url())
                    );
                    (
                        Err(GraphError::local(ErrorClass::Transient, message)),
                        reached,
                    )
                }
            };
            let error = match outcome {
                Ok(value) => {
                    permit.succeeded(started.elapsed());
                    return Ok(value);
                }
                Err(error) => error,
            };
            if error.status == Some(StatusCode::UNAUTHORIZED)
                && !token_refreshed
                && let Some(refused) = &token
            {
                drop(permit);
                token_refreshed = true;
                token = Some(
                    self.shared
                        .tokens
                        .replace_refused(&self.credentials, refused)
                        .await?,
                );
                continue;
            }
            // A throttle pauses the whole mailbox: the next permit waits
            // for the pause's end, whatever the back-off below.
            match error.class {
                ErrorClass::Throttled => {
                    // Too many at once (no hint: no budget was spent): the
                    // scheduler learns whether the limit is the app's.
                    if error.code.as_deref() == Some(CONCURRENCY_THROTTLE)
                        && error.retry_after.is_none()
                    {
                        permit.concurrency_throttled();
                    }
                    if let Err(over) = permit.throttled(error.retry_after) {
                        return Err(over.quoting(&error).into());
                    }
                }
                class => permit.failed(class),
            }
            if resend == Resend::OnlyIfNotDone && reached && error.class != ErrorClass::Throttled {
                return Err(error);
            }
            // A throttle's hint is the mailbox's pause above; a passing
            // fault's (`503` with `Retry-After`) is this request's least wait.
            let hint = error
                .retry_after
                .filter(|_| error.class == ErrorClass::Transient);
            let Ok(wait) = backoff.next_after(error.class, hint) else {
                return Err(error);
            };
            self.throttle.retrying(error.class);
            tracing::debug!(%error, ?wait, retry = backoff.retries(), "Graph request retried");
            self.throttle.sleep(wait).await?;
        }
    }
}

impl From<crate::connector::oauth::TokenError> for GraphError {
    fn from(error: crate::connector::oauth::TokenError) -> Self {
        GraphError::local(error.class(), error.to_string())
    }
}

/// A successful answer's JSON (`null` when the body is empty).
fn json_answer(answer: Answer) -> Result<Value, String> {
    let body = match answer {
        Answer::Whole(body) => body,
        Answer::TooLarge { limit } => return Err(format!("answer longer than {limit} bytes")),
    };
    if body.trim_ascii().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&body).map_err(|e| format!("answer is not JSON: {e}"))
}

/// A request body's JSON bytes.
fn to_json(value: &Value) -> Result<Bytes, GraphError> {
    serde_json::to_vec(value).map(Bytes::from).map_err(|e| {
        GraphError::local(ErrorClass::Item, format!("a request body is not JSON: {e}"))
    })
}

/// The body of `response`, read up to `limit` bytes (none: all of it).
async fn read_within(
    mut response: reqwest::Response,
    limit: Option<u64>,
) -> Result<Answer, reqwest::Error> {
    let over = |length: u64| limit.filter(|limit| length > *limit);
    if let Some(limit) = response.content_length().and_then(over) {
        return Ok(Answer::TooLarge { limit });
    }
    // Sized ahead by the length announced (within reason), not grown by
    // doubling: a growing buffer briefly holds its old and new copies.
    let announced = response.content_length().unwrap_or(0);
    let mut body = bytes::BytesMut::with_capacity(announced.min(PRESIZED_BODY_BYTES) as usize);
    while let Some(chunk) = response.chunk().await? {
        if let Some(limit) = over((body.len() + chunk.len()) as u64) {
            return Ok(Answer::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer::Whole(body.freeze()))
}

/// The answer as `decode` reads it (at most `limit` bytes of it), or its
/// failure classified.
async fn read<T>(
    response: reqwest::Response,
    method: &Method,
    url: &str,
    limit: Option<u64>,
    decode: fn(Answer) -> Result<T, String>,
) -> Result<T, GraphError> {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let limit = if status.is_success() {
        limit
    } else {
        Some(ERROR_BODY_BYTES)
    };
    let answer = read_within(response, limit).await.map_err(|e| {
        GraphError::local(
            ErrorClass::Transient,
            format!(
                "{method} {}: reading the answer: {}",
                redact(url),
                error_chain(&e.without_url())
            ),
        )
    })?;
    if status.is_success() {
        return decode(answer).map_err(|e| {
            GraphError::local(
                ErrorClass::Transient,
                format!("{method} {}: {e}", redact(url)),
            )
        });
    }
    let body = match answer {
        Answer::Whole(body) => body,
        Answer::TooLarge { .. } => Bytes::new(),
    };
    let text = String::from_utf8_lossy(&body);
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().map(str::to_owned);
    let detail = body["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| text.chars().take(QUOTED_BODY_CHARS).collect());
    let class = class_of(status, code.as_deref());
    let retry_after = if class.is_retryable() {
        http_retry_hint(retry_after.as_deref(), &text, chrono::Utc::now())
    } else {
        None
    };
    Err(GraphError {
        class,
        retry_after,
        status: Some(status),
        message: format!(
            "{method} {}: {status} {}{}",
            redact(url),
            code.as_deref().unwrap_or(""),
            if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            }
        ),
        code,
    })
}

/// Outlook's code of a `429` for too many concurrent requests.
const CONCURRENCY_THROTTLE: &str = "ApplicationThrottled";

/// `509 Bandwidth Limit Exceeded`: Graph's throttle of an app over its
/// bandwidth cap (the error responses page).
const BANDWIDTH_LIMIT_EXCEEDED: u16 = 509;

/// The class of a Graph answer (see the error taxonomy).
fn class_of(status: StatusCode, code: Option<&str>) -> ErrorClass {
    match status {
        StatusCode::TOO_MANY_REQUESTS => ErrorClass::Throttled,
        status if status.as_u16() == BANDWIDTH_LIMIT_EXCEEDED => ErrorClass::Throttled,
        StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT
        | StatusCode::BAD_GATEWAY
        | StatusCode::INTERNAL_SERVER_ERROR
        | StatusCode::REQUEST_TIMEOUT => ErrorClass::Transient,
        // A token the server refused twice, a mailbox the app may not
        // touch, a full mailbox, an unknown user: the mailbox stops.
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::INSUFFICIENT_STORAGE => {
            ErrorClass::Mailbox
        }
        StatusCode::NOT_FOUND
            if matches!(
                code,
                Some(
                    "ErrorInvalidUser"
                        | "ErrorNonExistentMailbox"
                        | "MailboxNotEnabledForRESTAPI"
                        | "Request_ResourceNotFound"
                        | "ResourceNotFound"
                )
            ) =>
        {
            ErrorClass::Mailbox
        }
        // A delta link gone (410) is handled by the caller; anything else
        // concerns the request's item.
        _ => ErrorClass::Item,
    }
}

/// The URL without its query (import URLs carry a pre-authenticated token).
fn redact(url: &str) -> &str {
    url.split_once('?').map_or(url, |(path, _)| path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_of_graph_answers() {
        let class = |status: u16, code| class_of(StatusCode::from_u16(status).unwrap(), code);
        assert_eq!(
            class(429, Some("ApplicationThrottled")),
            ErrorClass::Throttled
        );
        assert_eq!(class(503, None), ErrorClass::Transient);
        assert_eq!(class(504, Some("UnknownError")), ErrorClass::Transient);
        assert_eq!(class(507, Some("ErrorQuotaExceeded")), ErrorClass::Mailbox);
        assert_eq!(class(404, Some("ErrorInvalidUser")), ErrorClass::Mailbox);
        assert_eq!(
            class(404, Some("Request_ResourceNotFound")),
            ErrorClass::Mailbox
        );
        assert_eq!(
            class(404, Some("ErrorNonExistentMailbox")),
            ErrorClass::Mailbox
        );
        assert_eq!(class(509, None), ErrorClass::Throttled);
        assert_eq!(class(404, Some("ErrorItemNotFound")), ErrorClass::Item);
        assert_eq!(class(400, Some("ErrorCorruptData")), ErrorClass::Item);
    }

    #[test]
    fn lost_sync_states_in_every_documented_form() {
        let error = |status: u16, code: Option<&str>| GraphError {
            status: Some(StatusCode::from_u16(status).unwrap()),
            code: code.map(str::to_owned),
            ..GraphError::local(ErrorClass::Item, String::new())
        };
        assert!(error(410, None).is_sync_state_lost());
        assert!(error(404, Some("syncStateNotFound")).is_sync_state_lost());
        assert!(error(400, Some("resyncRequired")).is_sync_state_lost());
        assert!(error(400, Some("SyncStateInvalid")).is_sync_state_lost());
        assert!(!error(400, Some("ErrorInvalidRequest")).is_sync_state_lost());
        assert!(!error(503, Some("syncStateNotFound")).is_sync_state_lost());
        assert!(!GraphError::local(ErrorClass::Transient, String::new()).is_sync_state_lost());
    }

    /// An HTTP server on loopback that answers one request with `head`,
    /// then sends `chunk` for ever (an empty one: nothing more).
    async fn server(head: &'static str, chunk: Vec<u8>) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            socket.write_all(head.as_bytes()).await.unwrap();
            while !chunk.is_empty() && socket.write_all(&chunk).await.is_ok() {}
        });
        url
    }

    #[tokio::test]
    async fn an_answer_over_its_limit_is_not_read_whole() {
        let http = reqwest::Client::new();
        let limit = 64 * 1024;
        // Announced as 2 GiB: refused before a byte of the body is read.
        let announced = server(
            "HTTP/1.1 200 OK\r\nContent-Length: 2147483648\r\n\r\n",
            vec![b'x'; 1024],
        )
        .await;
        let response = http.get(&announced).send().await.unwrap();
        let answer = read_within(response, Some(limit)).await.unwrap();
        assert!(
            matches!(answer, Answer::TooLarge { limit: 65536 }),
            "{answer:?}"
        );

        // Of no announced length, sent without end: read up to the limit.
        let chunk = format!("400\r\n{}\r\n", "x".repeat(1024)).into_bytes();
        let unannounced = server(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            chunk,
        )
        .await;
        let response = http.get(&unannounced).send().await.unwrap();
        let answer = read_within(response, Some(limit)).await.unwrap();
        assert!(
            matches!(answer, Answer::TooLarge { limit: 65536 }),
            "{answer:?}"
        );

        // Within the limit: the whole body.
        let small = server(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            Vec::new(),
        )
        .await;
        let response = http.get(&small).send().await.unwrap();
        let answer = read_within(response, Some(5)).await.unwrap();
        assert!(matches!(answer, Answer::Whole(body) if body.as_ref() == b"hello"));
    }

    #[test]
    fn import_urls_lose_their_token_in_messages() {
        assert_eq!(
            redact("https://outlook.office365.com/api/gv1.0/x/importItem?authtoken=secret"),
            "https://outlook.office365.com/api/gv1.0/x/importItem"
        );
        assert_eq!(
            redact("https://graph.microsoft.com/v1.0/users"),
            "https://graph.microsoft.com/v1.0/users"
        );
    }
}
