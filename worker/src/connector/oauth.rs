//! App-only OAuth 2 access tokens from Microsoft's identity platform (the
//! client credentials grant, with a client secret or a certificate
//! assertion), for every connector that needs one: XOAUTH2 logins to
//! Exchange Online's IMAP side, and Microsoft Graph with the Graph scope.
//!
//! One [`TokenCache`] serves a whole worker (held by `connector::Shared`):
//! every connection and mailbox of the same authority, tenant, app and scope
//! uses the same token until it comes close to its expiry. Then the first
//! caller asks for a new one while the others wait for it: one request in
//! flight per key, its outcome (token or error) shared by all who waited.

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use mailwave_common::config::{AssertionAlgorithm, ClientCredential, OAuth2ClientCredentials};
use mailwave_common::error::{error_chain, http_retry_hint};
use mailwave_common::retry::Budgets;
use mailwave_common::{Classify, ErrorClass};
use ring::rand::SecureRandom as _;
use serde::Deserialize;
use serde_json::json;
use tokio::time::Instant;

use crate::connector::ConnectorError;

/// `client_assertion_type` of a certificate (JWT bearer) assertion.
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How long a client assertion is valid (`exp` - `nbf`).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(600);
/// A token is refreshed this long before its expiry at the most.
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Longest a token request may take, from connecting to the last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most characters of a non-JSON error body quoted in a message.
const QUOTED_BODY_CHARS: usize = 200;

/// A token request that failed, classified like every other failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TokenError {
    class: ErrorClass,
    retry_after: Option<Duration>,
    message: String,
}

impl Classify for TokenError {
    fn class(&self) -> ErrorClass {
        self.class
    }

    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl From<TokenError> for ConnectorError {
    fn from(error: TokenError) -> Self {
        ConnectorError::classified(error.class, error.message, error.retry_after)
    }
}

/// An access token as the token endpoint issued it.
pub struct IssuedToken {
    /// The bearer token itself.
    pub access_token: String,
    /// Its lifetime from the moment it was asked for (`expires_in`).
    pub expires_in: Duration,
}

/// A cached access token. Its `Debug` form never shows the token.
#[derive(Clone)]
pub struct AccessToken {
    value: String,
    expires_at: Instant,
    lifetime: Duration,
}

impl AccessToken {
    /// The bearer token, for the request or login that needs it.
    pub fn secret(&self) -> &str {
        &self.value
    }

    /// Whether the token is good for a while yet: more than the refresh
    /// margin is left before its expiry.
    fn is_fresh(&self, now: Instant) -> bool {
        now + refresh_margin(self.lifetime) < self.expires_at
    }

    /// Whether the token has not expired yet.
    fn is_valid(&self, now: Instant) -> bool {
        now < self.expires_at
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("expires_at", &self.expires_at)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// How long before its expiry a token of this lifetime is replaced: a
/// tenth of its lifetime, five minutes at the most.
fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(MAX_REFRESH_MARGIN)
}

/// Where tokens come from: the identity platform over HTTPS
/// ([`HttpTokenEndpoint`]), or a stand-in in tests.
#[async_trait]
pub trait TokenEndpoint: Send + Sync {
    /// Asks for a new token for `client`.
    async fn request(&self, client: &OAuth2ClientCredentials) -> Result<IssuedToken, TokenError>;
}

/// What a token is cached under. Authorities, tenants, ids and scopes are
/// compared without regard to case, as the identity platform does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    authority: String,
    tenant: String,
    client_id: String,
    scope: String,
}

impl CacheKey {
    fn of(client: &OAuth2ClientCredentials) -> CacheKey {
        CacheKey {
            authority: client.authority.trim_end_matches('/').to_lowercase(),
            tenant: client.tenant.to_lowercase(),
            client_id: client.client_id.to_lowercase(),
            scope: client.scope.to_lowercase(),
        }
    }
}

/// The token of one key, and the outcome of its last request.
struct Slot {
    /// Requests finished so far; a caller that saw fewer before it waited
    /// takes the outcome of the request it waited for.
    requests_finished: AtomicU64,
    state: tokio::sync::Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    token: Option<AccessToken>,
    last_error: Option<TokenError>,
    /// After a refresh failed while the token was still valid: no new
    /// request before this moment; the token serves until then.
    quiet_until: Option<Instant>,
}

/// Access tokens by authority, tenant, app and scope, refreshed ahead of
/// their expiry with one request in flight per key.
pub struct TokenCache {
    endpoint: Box<dyn TokenEndpoint>,
    slots: Mutex<HashMap<CacheKey, Arc<Slot>>>,
}

/// A cache asking the identity platform over HTTPS.
impl Default for TokenCache {
    fn default() -> TokenCache {
        TokenCache::new(HttpTokenEndpoint)
    }
}

impl TokenCache {
    /// An empty cache asking `endpoint` for its tokens.
    pub fn new(endpoint: impl TokenEndpoint + 'static) -> TokenCache {
        TokenCache {
            endpoint: Box::new(endpoint),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// A token for `client`: the cached one while it is fresh, else a new one.
    pub async fn token(&self, client: &OAuth2ClientCredentials) -> Result<AccessToken, TokenError> {
        self.obtain(client, None).await
    }

    /// A token other than `refused`, which a server did not accept (it
    /// expired between its fetch and its use, or was revoked): the one
    /// another caller got meanwhile, else a new one.
    pub async fn replace_refused(
        &self,
        client: &OAuth2ClientCredentials,
        refused: &AccessToken,
    ) -> Result<AccessToken, TokenError> {
        self.obtain(client, Some(refused.secret())).await
    }

    fn slot(&self, client: &OAuth2ClientCredentials) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = slots.entry(CacheKey::of(client)).or_insert_with(|| {
            Arc::new(Slot {
                requests_finished: AtomicU64::new(0),
                state: tokio::sync::Mutex::new(SlotState::default()),
            })
        });
        Arc::clone(slot)
    }

    async fn obtain(
        &self,
        client: &OAuth2ClientCredentials,
        refused: Option<&str>,
    ) -> Result<AccessToken, TokenError> {
        let slot = self.slot(client);
        let finished_before = slot.requests_finished.load(Ordering::Acquire);
        let mut state = slot.state.lock().await;
        let answered_while_waiting =
            slot.requests_finished.load(Ordering::Acquire) != finished_before;
        if answered_while_waiting && let Some(error) = &state.last_error {
            return Err(error.clone());
        }
        let now = Instant::now();
        let quiet = state.quiet_until.is_some_and(|until| now < until);
        if let Some(token) = &state.token
            && refused != Some(token.secret())
            && (answered_while_waiting || token.is_fresh(now) || (quiet && token.is_valid(now)))
        {
            return Ok(token.clone());
        }
        let outcome = self
            .endpoint
            .request(client)
            .await
            .map(|issued| AccessToken {
                value: issued.access_token,
                // Counted from before the request: never later than the
                // server's own expiry.
                expires_at: now + issued.expires_in,
                lifetime: issued.expires_in,
            });
        state.quiet_until = None;
        let outcome = match outcome {
            Ok(token) => {
                tracing::info!(tenant = %client.tenant, client_id = %client.client_id,
                    scope = %client.scope, expires_in = ?token.lifetime, "access token fetched");
                state.token = Some(token.clone());
                state.last_error = None;
                Ok(token)
            }
            Err(error) => {
                let now = Instant::now();
                let still_valid = state
                    .token
                    .clone()
                    .filter(|token| refused != Some(token.secret()) && token.is_valid(now));
                match still_valid {
                    // Refreshing early leaves time to try again: the
                    // current token serves meanwhile.
                    Some(token) => {
                        tracing::warn!(tenant = %client.tenant, client_id = %client.client_id,
                            %error, "refreshing the access token failed; the current one serves until it expires");
                        let retry = Budgets::default().token_refresh;
                        state.quiet_until = Some(now + retry.wait(0, error.retry_after));
                        state.last_error = None;
                        Ok(token)
                    }
                    None => {
                        state.token = None;
                        state.last_error = Some(error.clone());
                        Err(error)
                    }
                }
            }
        };
        slot.requests_finished.fetch_add(1, Ordering::Release);
        outcome
    }
}

/// The identity platform's v2.0 token endpoint, over HTTPS (plain HTTP
/// only for loopback authorities, see the configuration).
pub struct HttpTokenEndpoint;

#[async_trait]
impl TokenEndpoint for HttpTokenEndpoint {
    async fn request(&self, client: &OAuth2ClientCredentials) -> Result<IssuedToken, TokenError> {
        let token_url = client.token_url();
        let failure =
            |class: ErrorClass, retry_after: Option<Duration>, reason: String| TokenError {
                class,
                retry_after,
                message: format!(
                    "access token for client {} of tenant {} from {token_url}: {reason}",
                    client.client_id, client.tenant
                ),
            };
        let credential = client
            .credential()
            .map_err(|e| failure(ErrorClass::Mailbox, None, e.to_string()))?;
        let mut form = vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", client.client_id.clone()),
            ("scope", client.scope.clone()),
        ];
        let secret = match credential {
            ClientCredential::Secret(secret) => {
                form.push(("client_secret", secret.clone()));
                Some(secret)
            }
            ClientCredential::Certificate {
                certificate_file,
                private_key_file,
                algorithm,
            } => {
                let signer = AssertionSigner::load(certificate_file, private_key_file, algorithm)
                    .map_err(|reason| failure(ErrorClass::Mailbox, None, reason))?;
                let assertion = signer
                    .sign(&client.client_id, &token_url, Utc::now().timestamp())
                    .map_err(|reason| failure(ErrorClass::Mailbox, None, reason))?;
                form.push(("client_assertion_type", ASSERTION_TYPE.to_owned()));
                form.push(("client_assertion", assertion));
                None
            }
        };
        // Never follow a redirect: it could carry the secret elsewhere.
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("mailwave/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| failure(ErrorClass::Transient, None, error_chain(&e)))?;
        let response = http
            .post(&token_url)
            .form(&form)
            .send()
            .await
            .map_err(|e| failure(ErrorClass::Transient, None, error_chain(&e)))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| http_retry_hint(Some(value), "", Utc::now()));
        let body = response
            .bytes()
            .await
            .map_err(|e| failure(ErrorClass::Transient, None, error_chain(&e)))?;
        if !status.is_success() {
            let (class, reason) = classify_refusal(status, &body);
            let reason = match &secret {
                Some(secret) => redact(&reason, secret),
                None => reason,
            };
            return Err(failure(class, retry_after, reason));
        }
        parse_issued(&body).map_err(|reason| failure(ErrorClass::Transient, None, reason))
    }
}

/// The JSON of a successful token response.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    /// Seconds; some servers send it as a string.
    expires_in: serde_json::Value,
}

fn parse_issued(body: &[u8]) -> Result<IssuedToken, String> {
    let response: TokenResponse = serde_json::from_slice(body)
        .map_err(|e| format!("the token endpoint's answer is not a token response: {e}"))?;
    let seconds = match &response.expires_in {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        format!(
            "expires_in {} is not a number of seconds",
            response.expires_in
        )
    })?;
    if response.access_token.is_empty() {
        return Err("the token endpoint answered an empty access_token".into());
    }
    Ok(IssuedToken {
        access_token: response.access_token,
        expires_in: Duration::from_secs(seconds),
    })
}

/// An error answer of the identity platform (RFC 6749 §5.2).
#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// The class and a one-line reason of a token endpoint's refusal. Entra
/// ID's descriptions carry trace and correlation ids on further lines: only
/// the first line is kept.
fn classify_refusal(status: reqwest::StatusCode, body: &[u8]) -> (ErrorClass, String) {
    let parsed: Option<ErrorResponse> = serde_json::from_slice(body).ok();
    let class = match status.as_u16() {
        429 => ErrorClass::Throttled,
        408 | 500..=599 => ErrorClass::Transient,
        _ if parsed
            .as_ref()
            .is_some_and(|e| e.error == "temporarily_unavailable") =>
        {
            ErrorClass::Transient
        }
        _ => ErrorClass::Mailbox,
    };
    let detail = match parsed {
        Some(error) => {
            let description = error
                .error_description
                .lines()
                .next()
                .unwrap_or_default()
                .trim();
            if description.is_empty() {
                error.error
            } else {
                format!("{}: {description}", error.error)
            }
        }
        None => String::from_utf8_lossy(body)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(QUOTED_BODY_CHARS)
            .collect(),
    };
    let reason = if detail.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {detail}")
    };
    (class, reason)
}

/// `text` with every occurrence of `secret` masked.
fn redact(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        return text.to_owned();
    }
    text.replace(secret, "[redacted]")
}

/// Signs client assertions with the key of a certificate registered on the
/// app: PS256 naming the certificate by its SHA-256 thumbprint
/// (`x5t#S256`), as the identity platform's certificate credentials page
/// asks today, or RS256 with the SHA-1 thumbprint (`x5t`) for older
/// registrations.
struct AssertionSigner {
    key: ring::signature::RsaKeyPair,
    algorithm: AssertionAlgorithm,
    /// The certificate's DER.
    certificate: Vec<u8>,
}

impl AssertionSigner {
    /// Reads the certificate (the first of the PEM file) and its RSA key
    /// (PKCS#8 or PKCS#1 PEM).
    fn load(
        certificate_file: &Path,
        private_key_file: &Path,
        algorithm: AssertionAlgorithm,
    ) -> Result<AssertionSigner, String> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
        };
        let certificate_pem = read(certificate_file)?;
        let certificate = CertificateDer::pem_slice_iter(&certificate_pem)
            .next()
            .ok_or_else(|| format!("{}: no PEM certificate", certificate_file.display()))?
            .map_err(|e| format!("{}: {e}", certificate_file.display()))?
            .to_vec();
        let key_pem = read(private_key_file)?;
        let not_rsa = || format!("{}: not an RSA private key", private_key_file.display());
        let key = match PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
            pem::Error::NoItemsFound => {
                format!("{}: no PEM private key", private_key_file.display())
            }
            e => format!("{}: {e}", private_key_file.display()),
        })? {
            PrivateKeyDer::Pkcs8(der) => {
                ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
            }
            PrivateKeyDer::Pkcs1(der) => {
                ring::signature::RsaKeyPair::from_der(der.secret_pkcs1_der())
            }
            _ => return Err(not_rsa()),
        }
        .map_err(|_| not_rsa())?;
        Ok(AssertionSigner {
            key,
            algorithm,
            certificate,
        })
    }

    /// The JOSE header: the algorithm and the certificate's thumbprint.
    fn header(&self) -> serde_json::Value {
        match self.algorithm {
            AssertionAlgorithm::Ps256 => json!({
                "alg": "PS256",
                "typ": "JWT",
                "x5t#S256": thumbprint(&ring::digest::SHA256, &self.certificate),
            }),
            AssertionAlgorithm::Rs256 => json!({
                "alg": "RS256",
                "typ": "JWT",
                "x5t": thumbprint(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &self.certificate),
            }),
        }
    }

    /// A client assertion for `client_id` at `token_url`, issued at `now`
    /// (seconds since the epoch) and valid for ten minutes.
    fn sign(&self, client_id: &str, token_url: &str, now: i64) -> Result<String, String> {
        let random = ring::rand::SystemRandom::new();
        let mut jti = [0u8; 16];
        random
            .fill(&mut jti)
            .map_err(|_| "no randomness for the assertion's jti".to_owned())?;
        let claims = json!({
            "aud": token_url,
            "iss": client_id,
            "sub": client_id,
            "jti": guid(jti),
            "iat": now,
            "nbf": now,
            "exp": now + ASSERTION_LIFETIME.as_secs() as i64,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(self.header().to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let padding: &dyn ring::signature::RsaEncoding = match self.algorithm {
            AssertionAlgorithm::Ps256 => &ring::signature::RSA_PSS_SHA256,
            AssertionAlgorithm::Rs256 => &ring::signature::RSA_PKCS1_SHA256,
        };
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(padding, &random, signing_input.as_bytes(), &mut signature)
            .map_err(|_| "signing the client assertion failed".to_owned())?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

/// A certificate's thumbprint (the digest of its DER), base64url-encoded.
fn thumbprint(algorithm: &'static ring::digest::Algorithm, der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(algorithm, der))
}

/// Sixteen random bytes as a version 4 GUID (`jti` is "a Guid").
fn guid(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn client(scope: &str) -> OAuth2ClientCredentials {
        OAuth2ClientCredentials {
            tenant: "contoso-tenant".into(),
            client_id: "app-a".into(),
            credential: None,
            client_secret_env: Some("UNUSED".into()),
            client_secret_file: None,
            certificate_file: None,
            private_key_file: None,
            assertion_algorithm: AssertionAlgorithm::default(),
            authority: "https://login.example".into(),
            scope: scope.into(),
        }
    }

    const OUTLOOK: &str = "https://outlook.office365.com/.default";

    /// Issues `token-1`, `token-2`, … of a fixed lifetime after a delay,
    /// or fails with the queued errors first.
    struct FakeEndpoint {
        lifetime: Duration,
        delay: Duration,
        requests: Arc<AtomicUsize>,
        failures: Arc<Mutex<Vec<TokenError>>>,
    }

    /// What a test sees of its [`FakeEndpoint`]: requests made so far, and
    /// the errors the next requests fail with.
    struct FakeControls {
        requests: Arc<AtomicUsize>,
        failures: Arc<Mutex<Vec<TokenError>>>,
    }

    impl FakeControls {
        fn requests(&self) -> usize {
            self.requests.load(Ordering::SeqCst)
        }

        fn fail_next(&self, error: TokenError) {
            self.failures.lock().unwrap().push(error);
        }
    }

    impl FakeEndpoint {
        fn new(lifetime: Duration) -> (FakeEndpoint, FakeControls) {
            let controls = FakeControls {
                requests: Arc::new(AtomicUsize::new(0)),
                failures: Arc::new(Mutex::new(Vec::new())),
            };
            let endpoint = FakeEndpoint {
                lifetime,
                delay: Duration::from_millis(50),
                requests: Arc::clone(&controls.requests),
                failures: Arc::clone(&controls.failures),
            };
            (endpoint, controls)
        }
    }

    fn transient(retry_after: Option<Duration>) -> TokenError {
        TokenError {
            class: ErrorClass::Transient,
            retry_after,
            message: "HTTP 503".into(),
        }
    }

    #[async_trait]
    impl TokenEndpoint for FakeEndpoint {
        async fn request(&self, _: &OAuth2ClientCredentials) -> Result<IssuedToken, TokenError> {
            let number = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(self.delay).await;
            if let Some(error) = self.failures.lock().unwrap().pop() {
                return Err(error);
            }
            Ok(IssuedToken {
                access_token: format!("token-{number}"),
                expires_in: self.lifetime,
            })
        }
    }

    #[test]
    fn the_refresh_margin_is_a_tenth_of_the_lifetime_and_five_minutes_at_most() {
        assert_eq!(
            refresh_margin(Duration::from_secs(3599)),
            Duration::from_secs(300)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(2)),
            Duration::from_millis(200)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_is_reused_until_its_refresh_margin_then_replaced() {
        let (endpoint, fake) = FakeEndpoint::new(Duration::from_secs(100));
        let cache = TokenCache::new(endpoint);
        let outlook = client(OUTLOOK);
        let first = cache.token(&outlook).await.unwrap();
        assert_eq!(first.secret(), "token-1");
        // Valid until 100 s after it was asked for, replaced 10 s before.
        tokio::time::advance(Duration::from_secs(85)).await;
        assert_eq!(cache.token(&outlook).await.unwrap().secret(), "token-1");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(cache.token(&outlook).await.unwrap().secret(), "token-2");
        assert_eq!(fake.requests(), 2);

        // Another scope (or tenant, app, authority) is another token.
        let graph = client("https://graph.microsoft.com/.default");
        assert_eq!(cache.token(&graph).await.unwrap().secret(), "token-3");
        let mut same_in_other_case = client(OUTLOOK);
        same_in_other_case.tenant = "Contoso-Tenant".into();
        same_in_other_case.authority = "https://LOGIN.example/".into();
        assert_eq!(
            cache.token(&same_in_other_case).await.unwrap().secret(),
            "token-2"
        );
        assert_eq!(fake.requests(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_request() {
        let (endpoint, fake) = FakeEndpoint::new(Duration::from_secs(3600));
        let cache = TokenCache::new(endpoint);
        let outlook = client(OUTLOOK);
        let tokens = futures::future::join_all((0..20).map(|_| cache.token(&outlook))).await;
        assert!(
            tokens
                .iter()
                .all(|t| t.as_ref().unwrap().secret() == "token-1")
        );
        assert_eq!(fake.requests(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_is_shared_with_the_callers_that_waited_for_it_and_not_cached() {
        let (endpoint, fake) = FakeEndpoint::new(Duration::from_secs(3600));
        let throttled = TokenError {
            class: ErrorClass::Throttled,
            retry_after: Some(Duration::from_secs(7)),
            message: "HTTP 429".into(),
        };
        fake.fail_next(throttled.clone());
        let cache = TokenCache::new(endpoint);
        let outlook = client(OUTLOOK);
        let outcomes = futures::future::join_all((0..5).map(|_| cache.token(&outlook))).await;
        for outcome in outcomes {
            let error = outcome.unwrap_err();
            assert_eq!(error, throttled);
            assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
        }
        assert_eq!(fake.requests(), 1);
        // The next caller asks again.
        assert_eq!(cache.token(&outlook).await.unwrap().secret(), "token-2");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_refresh_keeps_the_valid_token_until_the_retry_or_its_expiry() {
        let (endpoint, fake) = FakeEndpoint::new(Duration::from_secs(1000));
        let cache = TokenCache::new(endpoint);
        let outlook = client(OUTLOOK);
        assert_eq!(cache.token(&outlook).await.unwrap().secret(), "token-1");
        tokio::time::advance(Duration::from_secs(930)).await;
        fake.fail_next(transient(Some(Duration::from_secs(20))));
        // The refresh fails: the token, valid for 70 s more, still serves…
        assert_eq!(cache.token(&outlook).await.unwrap().secret(), "token-1");
        assert_eq!(fake.requests(), 2);
        // …without another request until the endpoint's Retry-After is over.
        assert_eq!(cache.token(&outlook).await.unwrap().secret(), "token-1");
        assert_eq!(fake.requests(), 2);
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(cache.token(&outlook).await.unwrap().secret(), "token-3");
        assert_eq!(fake.requests(), 3);

        // A hint shorter than the policy's delay is a floor, not the wait.
        tokio::time::advance(Duration::from_secs(930)).await;
        fake.fail_next(transient(Some(Duration::from_secs(2))));
        assert_eq!(cache.token(&outlook).await.unwrap().secret(), "token-3");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(cache.token(&outlook).await.unwrap().secret(), "token-3");
        assert_eq!(fake.requests(), 4);
        tokio::time::advance(Budgets::default().token_refresh.delay(0)).await;
        assert_eq!(cache.token(&outlook).await.unwrap().secret(), "token-5");

        // An expired token never serves.
        tokio::time::advance(Duration::from_secs(1001)).await;
        fake.fail_next(transient(None));
        let error = cache.token(&outlook).await.unwrap_err();
        assert_eq!(error.class(), ErrorClass::Transient);
        // Nor a refused one.
        let current = cache.token(&outlook).await.unwrap();
        assert_eq!(current.secret(), "token-7");
        tokio::time::advance(Duration::from_secs(950)).await;
        fake.fail_next(transient(None));
        assert!(cache.replace_refused(&outlook, &current).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_token_is_replaced_once_for_every_connection_that_had_it() {
        let (endpoint, fake) = FakeEndpoint::new(Duration::from_secs(3600));
        let cache = TokenCache::new(endpoint);
        let outlook = client(OUTLOOK);
        let refused = cache.token(&outlook).await.unwrap();
        let replaced = cache.replace_refused(&outlook, &refused).await.unwrap();
        assert_eq!(replaced.secret(), "token-2");
        // A second connection refused with the same old token gets the new one.
        let again = cache.replace_refused(&outlook, &refused).await.unwrap();
        assert_eq!(again.secret(), "token-2");
        assert_eq!(cache.token(&outlook).await.unwrap().secret(), "token-2");
        assert_eq!(fake.requests(), 2);
    }

    #[test]
    fn refusals_are_classified_with_a_one_line_reason() {
        let entra = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 1\r\nCorrelation ID: 2","error_codes":[7000215]}"#;
        let (class, reason) = classify_refusal(reqwest::StatusCode::UNAUTHORIZED, entra);
        assert_eq!(class, ErrorClass::Mailbox);
        assert_eq!(
            reason,
            "HTTP 401 Unauthorized: invalid_client: AADSTS7000215: Invalid client secret provided."
        );
        let unknown_app =
            br#"{"error":"unauthorized_client","error_description":"AADSTS700016: not found"}"#;
        assert_eq!(
            classify_refusal(reqwest::StatusCode::BAD_REQUEST, unknown_app).0,
            ErrorClass::Mailbox
        );
        assert_eq!(
            classify_refusal(reqwest::StatusCode::TOO_MANY_REQUESTS, b"").0,
            ErrorClass::Throttled
        );
        let (class, reason) = classify_refusal(
            reqwest::StatusCode::SERVICE_UNAVAILABLE,
            b"<html>\n busy </html>",
        );
        assert_eq!(class, ErrorClass::Transient);
        assert_eq!(reason, "HTTP 503 Service Unavailable: <html> busy </html>");
        let unavailable = br#"{"error":"temporarily_unavailable"}"#;
        assert_eq!(
            classify_refusal(reqwest::StatusCode::BAD_REQUEST, unavailable),
            (
                ErrorClass::Transient,
                "HTTP 400 Bad Request: temporarily_unavailable".to_owned()
            )
        );
        assert_eq!(
            redact("bad secret s3cr3t!", "s3cr3t"),
            "bad secret [redacted]!"
        );
    }

    #[test]
    fn token_responses_are_parsed() {
        let issued =
            parse_issued(br#"{"token_type":"Bearer","expires_in":3599,"access_token":"abc"}"#)
                .unwrap();
        assert_eq!(issued.access_token, "abc");
        assert_eq!(issued.expires_in, Duration::from_secs(3599));
        let issued = parse_issued(br#"{"expires_in":"60","access_token":"abc"}"#).unwrap();
        assert_eq!(issued.expires_in, Duration::from_secs(60));
        assert!(parse_issued(b"<html>").is_err());
        assert!(parse_issued(br#"{"expires_in":"x","access_token":"abc"}"#).is_err());
    }

    /// An RSA key and a self-signed certificate made with `openssl`.
    fn certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = dir.join("app.key");
        let cert = dir.join("app.pem");
        let status = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=mailwave-test"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl made a key and certificate");
        (cert, key)
    }

    fn decode_json(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    /// Signs an assertion with `algorithm` and checks it as the identity
    /// platform would: claims, and the signature with the certificate's key
    /// under `verification`; hands back the header and the certificate's DER.
    fn check_assertion(
        algorithm: AssertionAlgorithm,
        verification: &'static ring::signature::RsaParameters,
    ) -> (serde_json::Value, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = certificate(dir.path());
        let signer = AssertionSigner::load(&cert, &key, algorithm).unwrap();
        let url = "https://login.example/contoso-tenant/oauth2/v2.0/token";
        let assertion = signer.sign("app-a", url, 1_700_000_000).unwrap();
        let parts: Vec<&str> = assertion.split('.').collect();
        assert_eq!(parts.len(), 3);

        let claims = decode_json(parts[1]);
        assert_eq!(claims["aud"], url);
        assert_eq!(claims["iss"], "app-a");
        assert_eq!(claims["sub"], "app-a");
        assert_eq!(claims["iat"], 1_700_000_000);
        assert_eq!(claims["nbf"], 1_700_000_000);
        assert_eq!(claims["exp"], 1_700_000_600);
        let jti = claims["jti"].as_str().unwrap();
        let groups: Vec<usize> = jti.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{jti} is a GUID");
        let other = signer.sign("app-a", url, 1_700_000_000).unwrap();
        assert_ne!(
            decode_json(other.split('.').nth(1).unwrap())["jti"],
            claims["jti"]
        );

        let public_key =
            ring::signature::UnparsedPublicKey::new(verification, signer.key.public().as_ref());
        let signed = format!("{}.{}", parts[0], parts[1]);
        public_key
            .verify(
                signed.as_bytes(),
                &URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
            )
            .expect("the signature verifies with the certificate's key");

        let error = AssertionSigner::load(&cert, &dir.path().join("missing.key"), algorithm)
            .err()
            .unwrap();
        assert!(error.contains("missing.key"), "{error}");
        let der = CertificateDer::pem_slice_iter(&std::fs::read(&cert).unwrap())
            .next()
            .unwrap()
            .unwrap();
        (decode_json(parts[0]), der.to_vec())
    }

    #[test]
    fn a_client_assertion_is_a_ps256_jwt_naming_its_certificate_by_sha256() {
        let (header, der) = check_assertion(
            AssertionAlgorithm::Ps256,
            &ring::signature::RSA_PSS_2048_8192_SHA256,
        );
        assert_eq!(header["alg"], "PS256");
        assert_eq!(header["typ"], "JWT");
        let sha256 = ring::digest::digest(&ring::digest::SHA256, &der);
        assert_eq!(header["x5t#S256"], URL_SAFE_NO_PAD.encode(sha256));
        assert!(header.get("x5t").is_none(), "{header}");
    }

    #[test]
    fn an_older_registration_gets_an_rs256_jwt_naming_its_certificate_by_sha1() {
        let (header, der) = check_assertion(
            AssertionAlgorithm::Rs256,
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        );
        assert_eq!(header["alg"], "RS256");
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
        assert_eq!(header["x5t"], URL_SAFE_NO_PAD.encode(sha1));
        assert!(header.get("x5t#S256").is_none(), "{header}");
    }

    /// Answers one HTTP request with `head` (status line and headers) and
    /// `body`; hands back the request.
    async fn one_shot_server(
        head: &'static str,
        body: &'static str,
    ) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let response = format!(
            "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let served = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            loop {
                let n = socket.read(&mut buffer).await.unwrap();
                request.extend_from_slice(&buffer[..n]);
                let text = String::from_utf8_lossy(&request).into_owned();
                let Some((head, body)) = text.split_once("\r\n\r\n") else {
                    continue;
                };
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if n == 0 || body.len() >= length {
                    socket.write_all(response.as_bytes()).await.unwrap();
                    return text;
                }
            }
        });
        (url, served)
    }

    #[tokio::test]
    async fn a_throttled_request_names_the_app_honours_retry_after_and_hides_the_secret() {
        let (authority, served) = one_shot_server(
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 17\r\nContent-Type: application/json",
            r#"{"error":"throttled","error_description":"slow down, s3cr3t-value-42 !!"}"#,
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, "s3cr3t-value-42\n").unwrap();
        let client = OAuth2ClientCredentials {
            client_secret_env: None,
            client_secret_file: Some(secret_file),
            authority,
            ..client(OUTLOOK)
        };
        let error = HttpTokenEndpoint.request(&client).await.err().unwrap();
        assert_eq!(error.class(), ErrorClass::Throttled);
        assert_eq!(error.retry_after(), Some(Duration::from_secs(17)));
        let message = error.to_string();
        assert!(
            message.starts_with(
                "access token for client app-a of tenant contoso-tenant from http://127.0.0.1:"
            ),
            "{message}"
        );
        assert!(
            message.contains("HTTP 429 Too Many Requests: throttled: slow down"),
            "{message}"
        );
        assert!(!message.contains("s3cr3t"), "{message}");

        let request = served.await.unwrap();
        assert!(
            request.starts_with("POST /contoso-tenant/oauth2/v2.0/token HTTP/1.1\r\n"),
            "{request}"
        );
        let body = request.split_once("\r\n\r\n").unwrap().1;
        let form: HashMap<String, String> = body
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.replace("%3A", ":").replace("%2F", "/")))
            .collect();
        assert_eq!(form["grant_type"], "client_credentials");
        assert_eq!(form["client_id"], "app-a");
        assert_eq!(form["scope"], OUTLOOK);
        assert_eq!(form["client_secret"], "s3cr3t-value-42");

        let unreachable = OAuth2ClientCredentials {
            authority: "http://127.0.0.1:9".into(),
            ..client.clone()
        };
        let error = HttpTokenEndpoint.request(&unreachable).await.err().unwrap();
        assert_eq!(error.class(), ErrorClass::Transient, "{error}");
    }
}
