//! The path of every Graph request: authentication (bearer token or
//! import session), the throttling rules, injected faults and latency,
//! then the handler under the state lock.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::GraphError;
use super::identity;
use super::model::Mailbox;
use super::rules::{Fault, Rejection, ThrottleReason};
use super::{Shared, State};

pub(crate) const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

/// Who a request acts on.
pub(crate) enum Access<'a> {
    /// `/admin/exchange/mailboxes/{mailboxId}/...` with a bearer token.
    Mailbox(&'a str),
    /// `/users/{id | userPrincipalName}/...` with a bearer token.
    User(&'a str),
    /// A pre-authenticated import URL.
    ImportSession { token: &'a str, target: &'a str },
}

/// What a handler knows about its request.
pub(crate) struct Ctx {
    pub base_url: String,
    pub client_id: String,
    pub mailbox_id: String,
    /// `Prefer: IdType="ImmutableId"` was sent.
    pub immutable_ids: bool,
    /// `Prefer: odata.maxpagesize=N` was sent.
    pub max_page_size: Option<usize>,
}

impl Ctx {
    pub fn graph(&self) -> String {
        format!("{}/v1.0", self.base_url)
    }
}

/// Parses the `Prefer` headers.
fn preferences(headers: &HeaderMap) -> (bool, Option<usize>) {
    let mut immutable_ids = false;
    let mut max_page_size = None;
    let values = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok());
    for preference in values.flat_map(|v| v.split(',')) {
        let (name, value) = preference.split_once('=').unwrap_or((preference, ""));
        let name = name.trim();
        let value = value.trim().trim_matches('"');
        if name.eq_ignore_ascii_case("IdType") && value.eq_ignore_ascii_case("ImmutableId") {
            immutable_ids = true;
        }
        if name.eq_ignore_ascii_case("odata.maxpagesize") {
            max_page_size = value.parse().ok().filter(|n| *n > 0);
        }
    }
    (immutable_ids, max_page_size)
}

/// Authenticates the request and finds its mailbox: (app, mailbox id).
fn resolve(
    shared: &Shared,
    headers: &HeaderMap,
    access: &Access<'_>,
) -> Result<(String, String), GraphError> {
    match access {
        Access::ImportSession { token, target } => resolve_import_session(shared, token, target),
        Access::Mailbox(id) => {
            let (tenant_id, client_id) = identity::authenticate(shared, headers)?;
            let state = shared.lock();
            let mailbox = state
                .directory
                .mailboxes
                .iter()
                .find(|m| m.id == *id && m.tenant_id == tenant_id)
                .ok_or_else(|| {
                    GraphError::new(
                        StatusCode::NOT_FOUND,
                        "ResourceNotFound",
                        format!("Mailbox '{id}' was not found."),
                    )
                })?;
            Ok((client_id, mailbox.id.clone()))
        }
        Access::User(user) => {
            let (tenant_id, client_id) = identity::authenticate(shared, headers)?;
            let state = shared.lock();
            let mailbox = state
                .directory
                .mailboxes
                .iter()
                .find(|m| {
                    m.tenant_id == tenant_id
                        && (m.upn.eq_ignore_ascii_case(user)
                            || m.user_id.eq_ignore_ascii_case(user))
                })
                .ok_or_else(|| {
                    GraphError::new(
                        StatusCode::NOT_FOUND,
                        "ErrorInvalidUser",
                        format!("The requested user '{user}' is invalid."),
                    )
                })?;
            Ok((client_id, mailbox.id.clone()))
        }
    }
}

/// An import URL carries its own authorization: the session's token.
fn resolve_import_session(
    shared: &Shared,
    token: &str,
    target: &str,
) -> Result<(String, String), GraphError> {
    let state = shared.lock();
    let session = state
        .import_sessions
        .get(token)
        .ok_or_else(|| GraphError::unauthorized("The import URL is not valid."))?;
    if std::time::Instant::now() >= session.expires_at {
        return Err(GraphError::unauthorized("The import session has expired."));
    }
    if target != format!("Mailboxes('{}')", session.mailbox_id) {
        return Err(GraphError::unauthorized(
            "The import URL does not match its session.",
        ));
    }
    Ok((session.client_id.clone(), session.mailbox_id.clone()))
}

/// Frees a concurrency slot and records the final status, even if the
/// client went away mid-request.
struct Slot {
    shared: Arc<Shared>,
    client_id: String,
    mailbox_id: String,
    event: usize,
    status: u16,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared
            .lock()
            .rules
            .finish(&self.client_id, &self.mailbox_id, self.event, self.status);
    }
}

/// Runs a Graph request through authentication, the rules, faults and
/// latency, then `handler` under the state lock.
pub(crate) async fn serve<F>(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    access: Access<'_>,
    upload_bytes: u64,
    handler: F,
) -> Response
where
    F: FnOnce(&mut State, &Ctx) -> Result<Response, GraphError>,
{
    let (client_id, mailbox_id) = match resolve(shared, headers, &access) {
        Ok(resolved) => resolved,
        Err(e) => return e.into_response(),
    };
    let (immutable_ids, max_page_size) = preferences(headers);
    let (event, decision, latency) = {
        let mut state = shared.lock();
        let (event, decision) =
            state
                .rules
                .admit(&client_id, &mailbox_id, upload_bytes, immutable_ids);
        (event, decision, state.rules.faults.latency)
    };
    if let Err(rejection) = decision {
        return rejection_response(rejection).into_response();
    }
    let mut slot = Slot {
        shared: shared.clone(),
        client_id: client_id.clone(),
        mailbox_id: mailbox_id.clone(),
        event,
        status: 0,
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let ctx = Ctx {
        base_url: shared.base_url.clone(),
        client_id,
        mailbox_id,
        immutable_ids,
        max_page_size,
    };
    let result = {
        let mut state = shared.lock();
        handler(&mut state, &ctx)
    };
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    if immutable_ids {
        response.headers_mut().append(
            PREFERENCE_APPLIED,
            HeaderValue::from_static("IdType=\"ImmutableId\""),
        );
    }
    slot.status = response.status().as_u16();
    response
}

pub(crate) fn rejection_response(rejection: Rejection) -> GraphError {
    let error = match rejection {
        Rejection::Throttled {
            reason: ThrottleReason::Concurrency,
            ..
        } => GraphError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "ApplicationThrottled",
            "Application is over its MailboxConcurrency limit.",
        ),
        Rejection::Throttled { reason, .. } => {
            let message = match reason {
                ThrottleReason::UploadVolume => {
                    "Application is over its upload limit for this mailbox."
                }
                ThrottleReason::RetryAfterWindow => {
                    "Application is throttled for this mailbox; retry after the Retry-After period."
                }
                ThrottleReason::Injected => "Application is over its limit for this mailbox.",
                ThrottleReason::RequestRate | ThrottleReason::Concurrency => {
                    "Application is over its request limit for this mailbox."
                }
            };
            GraphError::new(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", message)
        }
        Rejection::Fault(Fault::ServerBusy { empty_body }) => GraphError {
            empty_body,
            ..GraphError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "serviceNotAvailable",
                "The service is temporarily unavailable. Try again later.",
            )
        },
        Rejection::Fault(Fault::GatewayTimeout) => GraphError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "UnknownError",
            "The gateway did not receive a timely response from the upstream server.",
        ),
    };
    match rejection {
        Rejection::Throttled {
            retry_after: Some(secs),
            ..
        } => error.header(header::RETRY_AFTER, secs.to_string()),
        _ => error,
    }
}

pub(crate) fn mailbox_of<'a>(state: &'a State, ctx: &Ctx) -> Result<&'a Mailbox, GraphError> {
    state.directory.mailbox(&ctx.mailbox_id).ok_or_else(|| {
        GraphError::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            "The mailbox is gone.",
        )
    })
}

pub(crate) fn mailbox_of_mut<'a>(
    state: &'a mut State,
    ctx: &Ctx,
) -> Result<&'a mut Mailbox, GraphError> {
    state.directory.mailbox_mut(&ctx.mailbox_id).ok_or_else(|| {
        GraphError::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            "The mailbox is gone.",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefer_headers() {
        let mut headers = HeaderMap::new();
        headers.append("Prefer", HeaderValue::from_static("IdType=\"ImmutableId\""));
        headers.append("Prefer", HeaderValue::from_static("odata.maxpagesize=2"));
        assert_eq!(preferences(&headers), (true, Some(2)));
        let mut headers = HeaderMap::new();
        headers.append(
            "Prefer",
            HeaderValue::from_static("odata.maxpagesize=5, IdType=\"ImmutableId\""),
        );
        assert_eq!(preferences(&headers), (true, Some(5)));
        assert_eq!(preferences(&HeaderMap::new()), (false, None));
    }
}
