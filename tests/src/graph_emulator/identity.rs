//! The identity platform: the v2.0 token endpoint (client credentials with
//! a secret or a certificate assertion) and RFC 7662 introspection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, State as AxumState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{AadError, GraphError};
use super::model::{App, Tenant};
use super::{AccessToken, GRAPH_SCOPE, OUTLOOK_SCOPE, Shared};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Clock skew tolerated for `exp` and `nbf`.
const SKEW_SECS: i64 = 300;

/// `POST /{tenant}/oauth2/v2.0/token`.
pub(crate) async fn token(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path(tenant): Path<String>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return AadError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'grant_type'.",
        )
        .into_response();
    };
    match issue_token(&shared, &tenant, &form) {
        Ok(body) => {
            let mut response = Json(body).into_response();
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                "no-store, no-cache".parse().expect("valid header"),
            );
            response
        }
        Err(e) => e.into_response(),
    }
}

fn issue_token(
    shared: &Shared,
    tenant_name: &str,
    form: &HashMap<String, String>,
) -> Result<Value, AadError> {
    let mut state = shared.lock();
    let tenant = state.directory.tenant(tenant_name).ok_or_else(|| {
        AadError::new(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            90002,
            format!(
                "Tenant '{tenant_name}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        )
    })?;
    let param = |name: &str| form.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let grant_type = param("grant_type").ok_or_else(|| missing_parameter("grant_type"))?;
    if grant_type != "client_credentials" {
        return Err(AadError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    let client_id = param("client_id").ok_or_else(|| missing_parameter("client_id"))?;
    let app = tenant
        .apps
        .iter()
        .find(|a| a.client_id.eq_ignore_ascii_case(client_id))
        .ok_or_else(|| {
            AadError::new(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                700016,
                format!(
                    "Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant.",
                    tenant.id
                ),
            )
        })?;
    let scope = parse_scope(param("scope").ok_or_else(|| missing_parameter("scope"))?)?;
    match (param("client_secret"), param("client_assertion")) {
        (Some(secret), _) => {
            if app.secret.as_deref() != Some(secret) {
                return Err(AadError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7000215,
                    format!(
                        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                        app.client_id
                    ),
                ));
            }
        }
        (None, Some(assertion)) => {
            if param("client_assertion_type") != Some(ASSERTION_TYPE) {
                return Err(AadError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    50027,
                    "Invalid client_assertion_type: it must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
                ));
            }
            let audiences = [
                format!("{}/{tenant_name}/oauth2/v2.0/token", shared.base_url),
                format!("{}/{}/oauth2/v2.0/token", shared.base_url, tenant.id),
                format!("https://login.microsoftonline.com/{tenant_name}/oauth2/v2.0/token"),
                format!(
                    "https://login.microsoftonline.com/{}/oauth2/v2.0/token",
                    tenant.id
                ),
            ];
            verify_assertion(assertion, app, &audiences, chrono::Utc::now().timestamp())?;
        }
        (None, None) => {
            return Err(AadError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            ));
        }
    }
    let token = random_token();
    let lifetime = state.token_lifetime;
    let now_unix = chrono::Utc::now().timestamp();
    let access = AccessToken {
        tenant_id: tenant.id.clone(),
        client_id: app.client_id.clone(),
        scope,
        roles: app.roles.clone(),
        expires_at: Instant::now() + lifetime,
        issued_unix: now_unix,
        expires_unix: now_unix + lifetime.as_secs() as i64,
    };
    state.tokens.insert(token.clone(), access);
    Ok(json!({
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs(),
        "ext_expires_in": lifetime.as_secs(),
        "access_token": token,
    }))
}

fn missing_parameter(name: &str) -> AadError {
    AadError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        900144,
        format!("The request body must contain the following parameter: '{name}'."),
    )
}

fn parse_scope(scope: &str) -> Result<&'static str, AadError> {
    let scope = scope.trim();
    for known in [GRAPH_SCOPE, OUTLOOK_SCOPE] {
        if scope.eq_ignore_ascii_case(known) {
            return Ok(known);
        }
    }
    if !scope.ends_with("/.default") {
        return Err(AadError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        ));
    }
    Err(AadError::new(
        StatusCode::BAD_REQUEST,
        "invalid_resource",
        500011,
        format!(
            "The resource principal named {} was not found in the tenant.",
            scope.trim_end_matches("/.default")
        ),
    ))
}

fn invalid_assertion(aadsts: u32, description: &str) -> AadError {
    AadError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        aadsts,
        description,
    )
}

#[derive(Deserialize)]
struct AssertionHeader {
    alg: String,
    #[serde(default)]
    x5t: Option<String>,
    #[serde(default, rename = "x5t#S256")]
    x5t_s256: Option<String>,
}

/// The claims of a client assertion, each checked when present and
/// refused when missing.
#[derive(Deserialize)]
struct AssertionClaims {
    aud: Option<String>,
    iss: Option<String>,
    sub: Option<String>,
    jti: Option<String>,
    exp: Option<i64>,
    nbf: Option<i64>,
    iat: Option<i64>,
}

/// A signature algorithm the token endpoint accepts for assertions.
enum AssertionAlgorithm {
    /// RSASSA-PSS, the identity platform's current form (with `iat`).
    Ps256,
    /// RSASSA-PKCS1-v1_5, the older form.
    Rs256,
}

/// Checks a certificate client assertion as the identity platform's
/// "certificate credentials" page describes it: PS256 (the current form,
/// with `iat`) or RS256 (the older one), signed by a registered certificate
/// named by its thumbprint (`x5t#S256`, or `x5t`), with `aud` the token
/// endpoint, `iss` and `sub` the app, a `jti`, and `nbf`/`exp` (and `iat`)
/// around now. Refusals carry the error codes of the identity platform's
/// error code reference (AADSTS50027 invalid JWT, AADSTS50048 subject
/// mismatches issuer, AADSTS50120 JWT header, AADSTS700027 signature).
fn verify_assertion(
    assertion: &str,
    app: &App,
    audiences: &[String],
    now: i64,
) -> Result<(), AadError> {
    let malformed = || invalid_assertion(50027, "JWT token is invalid or malformed.");
    let mut parts = assertion.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part.trim_end_matches('='));
    let header: AssertionHeader = decode(header_b64)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(malformed)?;
    let claims: AssertionClaims = decode(claims_b64)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(malformed)?;
    let signature = decode(signature_b64).map_err(|_| malformed())?;
    let algorithm = match header.alg.as_str() {
        "PS256" => AssertionAlgorithm::Ps256,
        "RS256" => AssertionAlgorithm::Rs256,
        other => {
            return Err(invalid_assertion(
                700027,
                &format!(
                    "Client assertion failed signature validation: '{other}' is not a supported signing algorithm (PS256, RS256)."
                ),
            ));
        }
    };
    if header.x5t.is_none() && header.x5t_s256.is_none() {
        return Err(invalid_assertion(
            50120,
            "Issue with JWT header: the client assertion names no certificate (x5t#S256 or x5t).",
        ));
    }
    let thumbprint_matches = |cert: &&super::model::Certificate| {
        let sha1 = header.x5t.as_deref().and_then(|t| decode(t).ok());
        let sha256 = header.x5t_s256.as_deref().and_then(|t| decode(t).ok());
        sha1.is_some_and(|t| t == cert.sha1) || sha256.is_some_and(|t| t == cert.sha256)
    };
    let certificate = app.certificates.iter().find(thumbprint_matches).ok_or_else(|| {
        invalid_assertion(
            700027,
            "The certificate with identifier used to sign the client assertion is not registered on application.",
        )
    })?;
    let bad_signature =
        || invalid_assertion(700027, "Client assertion failed signature validation.");
    let der = rustls::pki_types::CertificateDer::from(certificate.der.as_slice());
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|_| bad_signature())?;
    let verification = match algorithm {
        AssertionAlgorithm::Ps256 => webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        AssertionAlgorithm::Rs256 => webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    };
    let signed = format!("{header_b64}.{claims_b64}");
    cert.verify_signature(verification, signed.as_bytes(), &signature)
        .map_err(|_| bad_signature())?;
    let missing = |claim: &str| {
        invalid_assertion(
            50027,
            &format!("Invalid JWT token: the client assertion has no '{claim}' claim."),
        )
    };
    let aud = claims.aud.ok_or_else(|| missing("aud"))?;
    let iss = claims.iss.ok_or_else(|| missing("iss"))?;
    let sub = claims.sub.ok_or_else(|| missing("sub"))?;
    claims.jti.ok_or_else(|| missing("jti"))?;
    let exp = claims.exp.ok_or_else(|| missing("exp"))?;
    let nbf = claims.nbf.ok_or_else(|| missing("nbf"))?;
    let iat = match (algorithm, claims.iat) {
        (_, Some(iat)) => Some(iat),
        (AssertionAlgorithm::Ps256, None) => return Err(missing("iat")),
        (AssertionAlgorithm::Rs256, None) => None,
    };
    if !audiences.iter().any(|a| a.eq_ignore_ascii_case(&aud)) {
        return Err(invalid_assertion(
            50027,
            &format!(
                "Invalid JWT token: unexpected audience '{aud}'; the client assertion's audience is the token endpoint."
            ),
        ));
    }
    if iss != app.client_id {
        return Err(invalid_assertion(
            50027,
            &format!("Invalid JWT token: unexpected issuer '{iss}'."),
        ));
    }
    if sub != iss {
        return Err(invalid_assertion(
            50048,
            "Subject mismatches Issuer claim in the client assertion.",
        ));
    }
    let early = |at: i64| at - SKEW_SECS > now;
    if exp + SKEW_SECS < now || early(nbf) || iat.is_some_and(early) {
        return Err(invalid_assertion(
            50027,
            "Invalid JWT token: the client assertion is not within its valid time range.",
        ));
    }
    Ok(())
}

/// A fresh opaque token (URL-safe).
pub(crate) fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The bearer token of a request's `Authorization` header.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Checks a Graph request's bearer token; returns (tenant, client id).
pub(crate) fn authenticate(
    shared: &Shared,
    headers: &HeaderMap,
) -> Result<(String, String), GraphError> {
    let token =
        bearer_token(headers).ok_or_else(|| GraphError::unauthorized("Access token is empty."))?;
    let state = shared.lock();
    let access = state
        .tokens
        .get(token)
        .filter(|t| t.is_live())
        .ok_or_else(|| GraphError::unauthorized("Access token has expired or is not yet valid."))?;
    if access.scope != GRAPH_SCOPE {
        return Err(GraphError::unauthorized(
            "Access token validation failure. Invalid audience.",
        ));
    }
    Ok((access.tenant_id.clone(), access.client_id.clone()))
}

#[derive(Deserialize)]
pub(crate) struct TokenQuery {
    token: Option<String>,
}

/// `GET /introspect?token=`.
pub(crate) async fn introspect_query(
    AxumState(shared): AxumState<Arc<Shared>>,
    Query(query): Query<TokenQuery>,
) -> Json<Value> {
    Json(introspection(
        &shared,
        query.token.as_deref().unwrap_or_default(),
        None,
    ))
}

/// `POST /introspect` with a form `token=`.
pub(crate) async fn introspect_form(
    AxumState(shared): AxumState<Arc<Shared>>,
    form: Result<Form<TokenQuery>, FormRejection>,
) -> Json<Value> {
    let token = form.ok().and_then(|Form(f)| f.token).unwrap_or_default();
    Json(introspection(&shared, &token, None))
}

/// `GET /introspect/{token}`, or `GET /introspect/{user}?token=` to ask
/// whether the token gives access to that mailbox.
pub(crate) async fn introspect_path(
    AxumState(shared): AxumState<Arc<Shared>>,
    Path(segment): Path<String>,
    Query(query): Query<TokenQuery>,
) -> Json<Value> {
    let body = match query.token {
        Some(token) => introspection(&shared, &token, Some(&segment)),
        None => introspection(&shared, &segment, None),
    };
    Json(body)
}

/// The RFC 7662 answer: active only for a live token with the Outlook
/// scope (and, with `user`, only if that user is in the token's tenant).
fn introspection(shared: &Shared, token: &str, user: Option<&str>) -> Value {
    let inactive = json!({ "active": false });
    let state = shared.lock();
    let Some(access) = state.tokens.get(token).filter(|t| t.is_live()) else {
        return inactive;
    };
    if access.scope != OUTLOOK_SCOPE {
        return inactive;
    }
    let Some(tenant) = state.directory.tenant(&access.tenant_id) else {
        return inactive;
    };
    let username = match user {
        Some(user) => match state.directory.mailbox(user) {
            Some(mailbox) if mailbox.tenant_id == tenant.id => mailbox.upn.clone(),
            _ => return inactive,
        },
        None => app_principal(tenant, &access.client_id),
    };
    json!({
        "active": true,
        "token_type": "Bearer",
        "client_id": access.client_id,
        "scope": access.scope,
        "iat": access.issued_unix,
        "exp": access.expires_unix,
        "tenant": tenant.id,
        "username": username,
    })
}

/// The name an app-only token introspects as: the app in the tenant's
/// primary domain.
fn app_principal(tenant: &Tenant, client_id: &str) -> String {
    format!("{client_id}@{}", tenant.primary_domain())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        assert_eq!(
            parse_scope("https://graph.microsoft.com/.default").unwrap(),
            GRAPH_SCOPE
        );
        assert_eq!(
            parse_scope("https://outlook.office365.com/.default").unwrap(),
            OUTLOOK_SCOPE
        );
        assert_eq!(parse_scope("Mail.Read").unwrap_err().aadsts, 1002012);
        assert_eq!(
            parse_scope("https://example.org/.default")
                .unwrap_err()
                .aadsts,
            500011
        );
    }
}
