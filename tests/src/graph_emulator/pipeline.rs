//! The path of every Graph request: authentication (bearer token or
//! import session), the throttling rules, injected faults and latency,
//! then the handler under the state lock.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::GraphError;
use super::identity;
use super::model::Mailbox;
use super::odata::MAX_PAGE_SIZE;
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
            max_page_size = value
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .map(|n: usize| n.min(MAX_PAGE_SIZE));
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
                    // The directory's answer for an unknown user.
                    GraphError::new(
                        StatusCode::NOT_FOUND,
                        "Request_ResourceNotFound",
                        format!(
                            "Resource '{user}' does not exist or one of its queried reference-property objects are not present."
                        ),
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
    let mut state = shared.lock();
    let live = state
        .import_sessions
        .get(token)
        .filter(|s| std::time::Instant::now() < s.expires_at)
        .filter(|s| target == format!("Mailboxes('{}')", s.mailbox_id))
        .map(|s| (s.client_id.clone(), s.mailbox_id.clone()));
    if let Some(resolved) = live {
        return Ok(resolved);
    }
    // An expired URL "expires and is deleted": it is answered like one
    // never issued, before anything reaches the mailbox.
    let mailbox = target
        .strip_prefix("Mailboxes('")
        .and_then(|t| t.strip_suffix("')"))
        .unwrap_or(target)
        .to_owned();
    state.rules.import_url_refused(&mailbox);
    Err(refused_import_url(state.expired_import_url_status))
}

/// The answer to an import URL that expired or was never issued.
fn refused_import_url(status: u16) -> GraphError {
    const MESSAGE: &str = "The import URL is not valid or has expired.";
    match status {
        401 => GraphError::unauthorized(MESSAGE),
        403 => GraphError::new(StatusCode::FORBIDDEN, "ErrorAccessDenied", MESSAGE),
        _ => GraphError::new(StatusCode::NOT_FOUND, "ResourceNotFound", MESSAGE),
    }
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
        Rejection::Throttled {
            reason: ThrottleReason::AppConcurrency,
            ..
        } => GraphError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "ApplicationThrottled",
            "Application is over its concurrency limit.",
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
                ThrottleReason::RequestRate
                | ThrottleReason::Concurrency
                | ThrottleReason::AppConcurrency => {
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
        let mut headers = HeaderMap::new();
        headers.append("Prefer", HeaderValue::from_static("odata.maxpagesize=5000"));
        assert_eq!(preferences(&headers), (false, Some(MAX_PAGE_SIZE)));
    }
}
