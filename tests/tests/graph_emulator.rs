//! The Microsoft Graph emulator over real HTTP: identity, introspection,
//! the mailbox import/export and mail APIs, delta queries, and the
//! throttling and fault rules, each checked against Microsoft's documented
//! behaviour.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use mailwave_tests::graph_emulator::{
    AppSeed, ConcurrencyScope, EmulatorConfig, Faults, FlagStatus, GRAPH_SCOPE, GraphEmulator,
    ItemFault, ItemSeed, ItemUpdate, Language, Limits, OUTLOOK_SCOPE, SyncReset, TenantSeed,
    ThrottleReason, UserSeed,
};
use mailwave_tests::{DovecotOptions, DovecotServer};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SECRET_A: &str = "secret-of-app-a";
const SECRET_B: &str = "secret-of-app-b";
const ALICE: &str = "alice@contoso.example";
const CAROL: &str = "carol@contoso.example";
const BOB: &str = "bob@fabrikam.example";

const MIME_PLAIN: &[u8] = b"From: Alice <alice@contoso.example>\r\nTo: bob@fabrikam.example\r\nSubject: Quarterly numbers\r\nMessage-ID: <q1@contoso.example>\r\nDate: Mon, 06 May 2024 09:30:00 +0200\r\n\r\nHello Bob,\r\nthe numbers are in.\r\n";
const MIME_BARE_LF: &[u8] =
    b"From: x@contoso.example\nSubject: bare LF\nMessage-ID: <lf@contoso.example>\n\nline one\nline two\n";
const MIME_8BIT: &[u8] = b"From: z@contoso.example\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nMessage-ID: <8bit@contoso.example>\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln \xff\r\n";
const MIME_PROJECT: &[u8] =
    b"From: pm@contoso.example\r\nSubject: Kick-off\r\nMessage-ID: <kickoff@contoso.example>\r\n\r\nAgenda.\r\n";
const MIME_SENT: &[u8] =
    b"From: alice@contoso.example\r\nSubject: Re: lunch\r\nMessage-ID: <sent1@contoso.example>\r\n\r\nSure.\r\n";

fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
    s.parse().expect("a valid timestamp")
}

/// Alice's mailbox: messages in three folders, an appointment, a contact.
fn alice() -> UserSeed {
    UserSeed::new(ALICE)
        .folder("Inbox/Projects", "IPF.Note")
        .item(ItemSeed::message("Inbox", MIME_PLAIN).received(at("2024-05-06T07:31:00Z")))
        .item(
            ItemSeed::message("Inbox", MIME_BARE_LF)
                .read(true)
                .received(at("2024-05-07T08:00:00Z")),
        )
        .item(
            ItemSeed::message("Inbox", MIME_8BIT)
                .flag(FlagStatus::Flagged)
                .received(at("2024-05-08T09:00:00Z")),
        )
        .item(
            ItemSeed::message("Inbox/Projects", MIME_PROJECT)
                .flag(FlagStatus::Complete)
                .read(true)
                .received(at("2024-04-01T12:00:00Z")),
        )
        .item(
            ItemSeed::message("sentitems", MIME_SENT)
                .read(true)
                .received(at("2024-05-02T11:00:00Z")),
        )
        .item(ItemSeed::new(
            "Calendar",
            "IPM.Appointment",
            b"BEGIN:VEVENT\r\nSUMMARY:Review\r\nDTSTART:20240510T090000Z\r\nEND:VEVENT\r\n",
        ))
        .item(ItemSeed::new(
            "Contacts",
            "IPM.Contact",
            br#"{"displayName":"Dana Swope"}"#,
        ))
}

fn contoso() -> TenantSeed {
    TenantSeed::new("contoso-tenant")
        .app(AppSeed::with_secret("app-a", SECRET_A))
        .user(alice())
        .user(UserSeed::new(CAROL))
}

fn fabrikam() -> TenantSeed {
    TenantSeed::new("fabrikam-tenant")
        .app(AppSeed::with_secret("app-b", SECRET_B))
        .user(UserSeed::new(BOB))
}

async fn start(config: EmulatorConfig) -> GraphEmulator {
    GraphEmulator::start(config)
        .await
        .expect("the emulator starts")
}

async fn two_tenants() -> GraphEmulator {
    start(
        EmulatorConfig::default()
            .tenant(contoso())
            .tenant(fabrikam()),
    )
    .await
}

/// Status, headers and JSON body (Null when empty or not JSON).
async fn send(request: reqwest::RequestBuilder) -> (StatusCode, HeaderMap, Value) {
    let response = request
        .send()
        .await
        .expect("the request reaches the emulator");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("a body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, body)
}

async fn request_token(
    emu: &GraphEmulator,
    tenant: &str,
    form: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Value) {
    send(
        reqwest::Client::new()
            .post(emu.token_url(tenant))
            .form(form),
    )
    .await
}

async fn token(
    emu: &GraphEmulator,
    tenant: &str,
    client_id: &str,
    secret: &str,
    scope: &str,
) -> String {
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("client_secret", secret),
        ("scope", scope),
    ];
    let (status, _, body) = request_token(emu, tenant, &form).await;
    assert_eq!(status, StatusCode::OK, "token request failed: {body}");
    body["access_token"]
        .as_str()
        .expect("an access token")
        .to_owned()
}

/// A Graph client for one app.
struct Graph {
    http: reqwest::Client,
    root: String,
    token: String,
    immutable_ids: bool,
}

impl Graph {
    async fn new(emu: &GraphEmulator, tenant: &str, client_id: &str, secret: &str) -> Graph {
        Graph {
            http: reqwest::Client::new(),
            root: emu.graph_url(),
            token: token(emu, tenant, client_id, secret, GRAPH_SCOPE).await,
            immutable_ids: true,
        }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.root)
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.token);
        if self.immutable_ids {
            request.header("Prefer", "IdType=\"ImmutableId\"")
        } else {
            request
        }
    }

    async fn get(&self, path: &str) -> (StatusCode, HeaderMap, Value) {
        send(self.request(Method::GET, path)).await
    }

    async fn get_ok(&self, path: &str) -> Value {
        let (status, _, body) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, HeaderMap, Value) {
        send(self.request(Method::POST, path).json(body)).await
    }

    /// Every entry of a collection, following `@odata.nextLink`.
    async fn all_pages(&self, path: &str) -> Vec<Value> {
        let mut values = Vec::new();
        let mut next = Some(path.to_owned());
        while let Some(url) = next {
            let body = self.get_ok(&url).await;
            values.extend(
                body["value"]
                    .as_array()
                    .expect("a value array")
                    .iter()
                    .cloned(),
            );
            next = body["@odata.nextLink"].as_str().map(str::to_owned);
        }
        values
    }

    /// One delta round with a page size: (pages, entries, deltaLink).
    async fn delta_round(&self, path: &str, page_size: usize) -> (usize, Vec<Value>, String) {
        let mut pages = 0;
        let mut values = Vec::new();
        let mut url = path.to_owned();
        loop {
            let request = self
                .request(Method::GET, &url)
                .header("Prefer", format!("odata.maxpagesize={page_size}"));
            let (status, headers, body) = send(request).await;
            assert_eq!(status, StatusCode::OK, "delta GET {url}: {body}");
            assert_eq!(
                headers
                    .get("preference-applied")
                    .and_then(|v| v.to_str().ok()),
                Some(format!("odata.maxpagesize={page_size}").as_str())
            );
            pages += 1;
            let page = body["value"].as_array().expect("a value array");
            assert!(page.len() <= page_size);
            values.extend(page.iter().cloned());
            if let Some(next) = body["@odata.nextLink"].as_str() {
                assert!(next.contains("$skiptoken="), "{next}");
                url = next.to_owned();
                continue;
            }
            let delta = body["@odata.deltaLink"]
                .as_str()
                .expect("a nextLink or a deltaLink");
            assert!(delta.contains("$deltatoken="), "{delta}");
            return (pages, values, delta.to_owned());
        }
    }

    async fn mailbox_id(&self, user: &str) -> String {
        let body = self
            .get_ok(&format!("/users/{user}/settings/exchange"))
            .await;
        body["primaryMailboxId"]
            .as_str()
            .expect("primaryMailboxId")
            .to_owned()
    }
}

fn ids(values: &[Value]) -> BTreeSet<String> {
    values
        .iter()
        .map(|v| v["id"].as_str().expect("an id").to_owned())
        .collect()
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn token_endpoint_secrets_errors_and_expiry() {
    let emu = start(
        EmulatorConfig::default()
            .tenant(contoso())
            .token_lifetime(Duration::from_secs(1)),
    )
    .await;
    let form = |secret: &'static str| {
        vec![
            ("grant_type", "client_credentials"),
            ("client_id", "app-a"),
            ("client_secret", secret),
            ("scope", GRAPH_SCOPE),
        ]
    };

    let (status, headers, body) = request_token(&emu, "contoso-tenant", &form(SECRET_A)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 1);
    assert_eq!(body["ext_expires_in"], 1);
    assert!(body["access_token"].as_str().is_some_and(|t| t.len() >= 32));
    assert!(headers.get("cache-control").is_some());
    // The tenant's domain names it as well.
    let (status, _, _) = request_token(&emu, "contoso.example", &form(SECRET_A)).await;
    assert_eq!(status, StatusCode::OK);

    let (status, _, body) = request_token(&emu, "contoso-tenant", &form("wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS7000215: ")
    );
    assert_eq!(body["error_codes"], json!([7000215]));

    let (status, _, body) = request_token(&emu, "no-such-tenant", &form(SECRET_A)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS90002: ")
    );
    let mut unknown_app = form(SECRET_A);
    unknown_app[1] = ("client_id", "app-x");
    let (status, _, body) = request_token(&emu, "contoso-tenant", &unknown_app).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unauthorized_client"))
    );
    let mut bad_scope = form(SECRET_A);
    bad_scope[3] = ("scope", "Mail.Read");
    let (status, _, body) = request_token(&emu, "contoso-tenant", &bad_scope).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope"))
    );
    let (status, _, body) = request_token(&emu, "contoso-tenant", &form(SECRET_A)[..3]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS900144: ")
    );

    // A live token works; without one, or after it expired: 401.
    let graph = Graph::new(&emu, "contoso-tenant", "app-a", SECRET_A).await;
    assert!(graph.mailbox_id(ALICE).await.starts_with("MBX:"));
    let (status, _, body) = send(reqwest::Client::new().get(format!(
        "{}/users/{ALICE}/settings/exchange",
        emu.graph_url()
    )))
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken")
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, _, body) = graph
        .get(&format!("/users/{ALICE}/settings/exchange"))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body["error"],
        json!({
            "code": "InvalidAuthenticationToken",
            "message": "Access token has expired or is not yet valid.",
            "innerError": body["error"]["innerError"].clone(),
        })
    );
    // An Outlook-scope token is not for Graph.
    let outlook = token(&emu, "contoso-tenant", "app-a", SECRET_A, OUTLOOK_SCOPE).await;
    let (status, _, body) = send(
        reqwest::Client::new()
            .get(format!(
                "{}/users/{ALICE}/settings/exchange",
                emu.graph_url()
            ))
            .bearer_auth(outlook),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Invalid audience")
    );
}

/// An RSA key and a self-signed certificate, made with `openssl`.
fn rsa_certificate(dir: &std::path::Path, name: &str) -> (ring::signature::RsaKeyPair, String) {
    let (cert, key) = mailwave_tests::tenants::app_certificate(dir, name);
    let key_pem = std::fs::read(&key).unwrap();
    let der = match PrivateKeyDer::from_pem_slice(&key_pem).unwrap() {
        PrivateKeyDer::Pkcs8(der) => der.secret_pkcs8_der().to_vec(),
        other => panic!("expected a PKCS#8 key, got {other:?}"),
    };
    let key_pair = ring::signature::RsaKeyPair::from_pkcs8(&der).expect("an RSA key");
    (key_pair, std::fs::read_to_string(&cert).unwrap())
}

/// The JOSE header of an assertion signed with `alg` naming `cert_pem`
/// as the identity platform's current page asks (PS256, `x5t#S256`) or
/// as its older one did (`x5t`).
fn assertion_header(alg: &str, cert_pem: &str) -> Value {
    let der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    if alg == "PS256" {
        let sha256 = ring::digest::digest(&ring::digest::SHA256, &der);
        return json!({ "alg": alg, "typ": "JWT", "x5t#S256": URL_SAFE_NO_PAD.encode(sha256) });
    }
    let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
    json!({ "alg": alg, "typ": "JWT", "x5t": URL_SAFE_NO_PAD.encode(sha1) })
}

/// Signs `header` and `claims` with `padding` (PSS or PKCS#1 v1.5).
fn sign_jwt(
    key: &ring::signature::RsaKeyPair,
    padding: &'static dyn ring::signature::RsaEncoding,
    header: &Value,
    claims: &Value,
) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        padding,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .unwrap();
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

#[tokio::test]
async fn certificate_client_assertions() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = rsa_certificate(dir.path(), "registered");
    let (other_key, other_cert) = rsa_certificate(dir.path(), "other");
    let tenant = TenantSeed::new("contoso-tenant")
        .app(AppSeed::with_certificate("cert-app", &cert))
        .user(UserSeed::new(ALICE));
    let emu = start(EmulatorConfig::default().tenant(tenant)).await;
    let now = chrono::Utc::now().timestamp();
    let aud = emu.token_url("contoso-tenant");
    let claims = |aud: &str, exp: i64| {
        json!({ "aud": aud, "iss": "cert-app", "sub": "cert-app",
            "jti": "7c1b6f2e-0d1a-4c55-9a0e-3f2d8e9b1a77",
            "iat": now - 10, "nbf": now - 10, "exp": exp })
    };
    let valid = claims(&aud, now + 600);
    let ps256 = |key: &ring::signature::RsaKeyPair, cert: &str, claims: &Value| {
        sign_jwt(
            key,
            &ring::signature::RSA_PSS_SHA256,
            &assertion_header("PS256", cert),
            claims,
        )
    };
    let exchange = |assertion: String| {
        let emu = &emu;
        async move {
            let form = [
                ("grant_type", "client_credentials"),
                ("client_id", "cert-app"),
                ("scope", GRAPH_SCOPE),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", assertion.as_str()),
            ];
            request_token(emu, "contoso-tenant", &form).await
        }
    };

    // The current form: PS256, x5t#S256, iat.
    let (status, _, body) = exchange(ps256(&key, &cert, &valid)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let graph = Graph {
        http: reqwest::Client::new(),
        root: emu.graph_url(),
        token: body["access_token"].as_str().unwrap().to_owned(),
        immutable_ids: false,
    };
    assert!(graph.mailbox_id(ALICE).await.starts_with("MBX:"));
    // The older form: RS256, x5t, no iat.
    let mut older = valid.clone();
    older.as_object_mut().unwrap().remove("iat");
    let rs256 = sign_jwt(
        &key,
        &ring::signature::RSA_PKCS1_SHA256,
        &assertion_header("RS256", &cert),
        &older,
    );
    let (status, _, body) = exchange(rs256).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Microsoft's own audience is accepted too.
    let login_aud = "https://login.microsoftonline.com/contoso-tenant/oauth2/v2.0/token";
    let (status, _, _) = exchange(ps256(&key, &cert, &claims(login_aud, now + 600))).await;
    assert_eq!(status, StatusCode::OK);

    // `valid` with one claim changed (`Null`: left out).
    let with = |claim: &str, value: Value| {
        let mut claims = valid.clone();
        let claims_map = claims.as_object_mut().unwrap();
        match value {
            Value::Null => claims_map.remove(claim),
            value => claims_map.insert(claim.to_owned(), value),
        };
        claims
    };
    let cases = [
        // Unregistered certificate; registered thumbprint, another key.
        (ps256(&other_key, &other_cert, &valid), "AADSTS700027"),
        (ps256(&other_key, &cert, &valid), "AADSTS700027"),
        // A PSS signature under a header that says PKCS#1 v1.5.
        (
            sign_jwt(
                &key,
                &ring::signature::RSA_PSS_SHA256,
                &assertion_header("RS256", &cert),
                &valid,
            ),
            "AADSTS700027",
        ),
        // An algorithm the platform does not take; no thumbprint at all.
        (
            sign_jwt(
                &key,
                &ring::signature::RSA_PKCS1_SHA512,
                &assertion_header("RS512", &cert),
                &valid,
            ),
            "AADSTS700027",
        ),
        (
            sign_jwt(
                &key,
                &ring::signature::RSA_PSS_SHA256,
                &json!({ "alg": "PS256", "typ": "JWT" }),
                &valid,
            ),
            "AADSTS50120",
        ),
        // Expired, not yet valid, issued in the future, another audience.
        (ps256(&key, &cert, &claims(&aud, now - 3600)), "AADSTS50027"),
        (
            ps256(&key, &cert, &with("nbf", json!(now + 3600))),
            "AADSTS50027",
        ),
        (
            ps256(&key, &cert, &with("iat", json!(now + 3600))),
            "AADSTS50027",
        ),
        (
            ps256(&key, &cert, &claims("https://elsewhere/token", now + 600)),
            "AADSTS50027",
        ),
        // PS256 without iat; no jti; another issuer; subject not the issuer.
        (ps256(&key, &cert, &with("iat", Value::Null)), "AADSTS50027"),
        (ps256(&key, &cert, &with("jti", Value::Null)), "AADSTS50027"),
        (
            ps256(&key, &cert, &with("iss", json!("other-app"))),
            "AADSTS50027",
        ),
        (
            ps256(&key, &cert, &with("sub", json!("other-app"))),
            "AADSTS50048",
        ),
        ("not-a-jwt".to_owned(), "AADSTS50027"),
    ];
    for (assertion, code) in cases {
        let (status, _, body) = exchange(assertion).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{code}: {body}");
        assert_eq!(body["error"], "invalid_client", "{body}");
        let description = body["error_description"].as_str().unwrap();
        assert!(description.starts_with(&format!("{code}: ")), "{body}");
    }
}

#[tokio::test]
async fn introspection_for_imap_logins() {
    let emu = start(
        EmulatorConfig::default()
            .tenant(contoso())
            .tenant(fabrikam()),
    )
    .await;
    let http = reqwest::Client::new();
    let outlook = token(&emu, "contoso-tenant", "app-a", SECRET_A, OUTLOOK_SCOPE).await;
    let graph = token(&emu, "contoso-tenant", "app-a", SECRET_A, GRAPH_SCOPE).await;
    let base = emu.base_url();

    let (status, _, body) = send(http.get(format!("{}{outlook}", emu.introspection_url()))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["active"], true);
    assert_eq!(body["client_id"], "app-a");
    assert_eq!(body["scope"], OUTLOOK_SCOPE);
    assert_eq!(body["tenant"], "contoso-tenant");
    assert_eq!(body["username"], "app-a@contoso.example");
    assert!(body["exp"].as_i64().unwrap() > chrono::Utc::now().timestamp());
    // The same answer by path and by POST form (RFC 7662).
    let (_, _, by_path) = send(http.get(format!("{base}/introspect/{outlook}"))).await;
    let (_, _, by_post) = send(
        http.post(format!("{base}/introspect"))
            .form(&[("token", outlook.as_str())]),
    )
    .await;
    assert_eq!(by_path, body);
    assert_eq!(by_post, body);

    // Per mailbox: any mailbox of the token's tenant, no other.
    let (_, _, body) = send(http.get(format!("{base}/introspect/{CAROL}?token={outlook}"))).await;
    assert_eq!(
        (body["active"].as_bool(), body["username"].as_str()),
        (Some(true), Some(CAROL))
    );
    let (_, _, body) = send(http.get(format!("{base}/introspect/{BOB}?token={outlook}"))).await;
    assert_eq!(body, json!({ "active": false }));

    // Graph tokens, unknown tokens: inactive.
    for token in [graph.as_str(), "no-such-token"] {
        let (status, _, body) = send(http.get(format!("{}{token}", emu.introspection_url()))).await;
        assert_eq!((status, body), (StatusCode::OK, json!({ "active": false })));
    }
}

#[tokio::test]
async fn folders_list_page_filter_and_tenant_isolation() {
    let emu = two_tenants().await;
    let graph = Graph::new(&emu, "contoso-tenant", "app-a", SECRET_A).await;
    let mbx = graph.mailbox_id(ALICE).await;
    assert_eq!(mbx, emu.mailbox_id(ALICE).unwrap());
    let folders_url = format!("/admin/exchange/mailboxes/{mbx}/folders");

    // Paging: 13 default top-level folders, 4 per page.
    let first = graph.get_ok(&format!("{folders_url}?$top=4")).await;
    assert_eq!(first["value"].as_array().unwrap().len(), 4);
    let next = first["@odata.nextLink"].as_str().expect("a nextLink");
    assert!(
        next.contains("$skip=4") && next.contains("$top=4"),
        "{next}"
    );
    let all = graph.all_pages(&format!("{folders_url}?$top=4")).await;
    let names: Vec<&str> = all
        .iter()
        .map(|f| f["displayName"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Inbox",
            "Sent Items",
            "Drafts",
            "Deleted Items",
            "Junk Email",
            "Archive",
            "Calendar",
            "Contacts",
            "Tasks",
            "Notes",
            "Outbox",
            "Sync Issues",
            "Conversation History"
        ]
    );
    let inbox = &all[0];
    assert_eq!(inbox["@odata.type"], "#microsoft.graph.mailboxFolder");
    assert_eq!(inbox["wellKnownName"], "inbox");
    assert_eq!(inbox["type"], "IPF.Note");
    assert_eq!(inbox["totalItemCount"], 3);
    assert_eq!(inbox["childFolderCount"], 1);
    assert_eq!(
        inbox["parentMailboxUrl"],
        format!("{}/admin/exchange/mailboxes/{mbx}", emu.graph_url())
    );
    assert_eq!(all[6]["wellKnownName"], "calendar");
    assert_eq!(all[6]["type"], "IPF.Appointment");

    // $filter by class, $select.
    let calendars = graph
        .get_ok(&format!(
            "{folders_url}?$filter=type eq 'IPF.Appointment'&$select=displayName,type"
        ))
        .await;
    let calendars = calendars["value"].as_array().unwrap();
    assert_eq!(calendars.len(), 1);
    assert_eq!(calendars[0]["displayName"], "Calendar");
    assert!(calendars[0].get("totalItemCount").is_none());
    assert!(calendars[0].get("id").is_some());
    let (status, _, body) = graph
        .get(&format!("{folders_url}?$filter=displayName eq 'Inbox'"))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "BadRequest")
    );

    // A folder by well-known name and by id; its children.
    let by_name = graph.get_ok(&format!("{folders_url}/inbox")).await;
    assert_eq!(by_name["id"], inbox["id"]);
    let children = graph
        .all_pages(&format!("{folders_url}/inbox/childFolders"))
        .await;
    assert_eq!(children.len(), 1);
    assert_eq!(children[0]["displayName"], "Projects");
    assert_eq!(children[0]["parentFolderId"], inbox["id"]);
    assert_eq!(children[0]["wellKnownName"], Value::Null);
    let (status, _, body) = graph.get(&format!("{folders_url}/no-such-folder")).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "ErrorFolderNotFound")
    );

    // Another tenant's users and mailboxes are invisible.
    let bob_mbx = emu.mailbox_id(BOB).unwrap();
    let (status, _, body) = graph.get(&format!("/users/{BOB}/settings/exchange")).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "Request_ResourceNotFound")
    );
    let (status, _, _) = graph
        .get(&format!("/admin/exchange/mailboxes/{bob_mbx}/folders"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn create_folders_with_class_and_duplicates() {
    let emu = two_tenants().await;
    let graph = Graph::new(&emu, "fabrikam-tenant", "app-b", SECRET_B).await;
    let mbx = graph.mailbox_id(BOB).await;
    let folders = format!("/admin/exchange/mailboxes/{mbx}/folders");

    let (status, _, team) = graph
        .post(
            &folders,
            &json!({ "displayName": "Team Calendar", "type": "IPF.Appointment" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{team}");
    assert_eq!(team["displayName"], "Team Calendar");
    assert_eq!(team["type"], "IPF.Appointment");
    assert_eq!(team["childFolderCount"], 0);
    assert_eq!(team["totalItemCount"], 0);
    assert_eq!(team["wellKnownName"], Value::Null);
    let inbox = graph.get_ok(&format!("{folders}/inbox")).await;
    assert_eq!(
        team["parentFolderId"], inbox["parentFolderId"],
        "created at the top"
    );

    let (status, _, child) = graph
        .post(
            &format!("{folders}/inbox/childFolders"),
            &json!({ "displayName": "Invoices", "type": "IPF.Note" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(child["parentFolderId"], inbox["id"]);
    let (status, _, _) = graph
        .post(
            &format!("{folders}/{}/childFolders", child["id"].as_str().unwrap()),
            &json!({ "displayName": "2024", "type": "IPF.Note" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    // The same name under the same parent (case-insensitively) is refused;
    // under another parent it is fine.
    let (status, _, body) = graph
        .post(
            &format!("{folders}/inbox/childFolders"),
            &json!({ "displayName": "invoices", "type": "IPF.Note" }),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "ErrorFolderExists")
    );
    let (status, _, _) = graph
        .post(
            &folders,
            &json!({ "displayName": "Invoices", "type": "IPF.Note" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, body) = graph
        .post(&folders, &json!({ "displayName": "No class" }))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "ErrorInvalidRequest")
    );

    let snapshot = emu.snapshot(BOB).unwrap();
    assert_eq!(
        snapshot.folder(&["Team Calendar"]).unwrap().class,
        "IPF.Appointment"
    );
    assert!(snapshot.folder(&["Inbox", "Invoices", "2024"]).is_some());
    // Folder delta reports every folder, nested ones included.
    let (_, entries, _) = graph.delta_round(&format!("{folders}/delta"), 5).await;
    let names: BTreeSet<&str> = entries
        .iter()
        .map(|f| f["displayName"].as_str().unwrap())
        .collect();
    assert_eq!(entries.len(), 16 + 4);
    assert!(names.contains("2024") && names.contains("Team Calendar"));
}

/// A mailbox set up in Dutch names its default folders in Dutch, their
/// well-known names unchanged; a search folder is told apart by
/// `PidTagFolderType` (import/export API) and by its `@odata.type` (mail
/// API); `repeatFolders` lists every folder twice.
#[tokio::test]
async fn localised_folders_search_folders_and_repeated_listings() {
    const JAN: &str = "jan@nl.example";
    let tenant = TenantSeed::new("nl-tenant")
        .app(AppSeed::with_secret("app-nl", SECRET_A))
        .user(
            UserSeed::new(JAN)
                .language(Language::Dutch)
                .folder("inbox/Projecten", "IPF.Note")
                .search_folder("Ongelezen")
                .item(ItemSeed::message("inbox/Projecten", MIME_PROJECT)),
        );
    let emu = start(EmulatorConfig::default().tenant(tenant)).await;
    let graph = Graph::new(&emu, "nl-tenant", "app-nl", SECRET_A).await;
    let mbx = graph.mailbox_id(JAN).await;
    let folders_url = format!(
        "/admin/exchange/mailboxes/{mbx}/folders\
         ?$expand=singleValueExtendedProperties($filter=id eq 'Integer 0x3601')"
    );
    let folders = graph.all_pages(&folders_url).await;
    let by_name = |name: &str| {
        folders
            .iter()
            .find(|f| f["displayName"] == name)
            .unwrap_or_else(|| panic!("{name} in {folders:?}"))
    };
    for (name, well_known) in [
        ("Postvak IN", "inbox"),
        ("Verzonden items", "sentitems"),
        ("Agenda", "calendar"),
        ("Synchronisatieproblemen", "syncissues"),
    ] {
        assert_eq!(by_name(name)["wellKnownName"], well_known);
    }
    let folder_type = |f: &Value| f["singleValueExtendedProperties"][0]["value"].clone();
    assert_eq!(folder_type(by_name("Postvak IN")), "1");
    assert_eq!(folder_type(by_name("Ongelezen")), "2");
    assert_eq!(by_name("Ongelezen")["wellKnownName"], Value::Null);
    let inbox = by_name("Postvak IN")["id"].as_str().unwrap().to_owned();
    let children = graph
        .all_pages(&format!(
            "/admin/exchange/mailboxes/{mbx}/folders/{inbox}/childFolders"
        ))
        .await;
    assert_eq!(children.len(), 1);
    assert_eq!(children[0]["displayName"], "Projecten");
    assert_eq!(children[0]["totalItemCount"], 1);

    let mail = graph.all_pages(&format!("/users/{JAN}/mailFolders")).await;
    let types: BTreeSet<&str> = mail
        .iter()
        .filter(|f| f["displayName"] == "Ongelezen" || f["displayName"] == "Postvak IN")
        .map(|f| f["@odata.type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        BTreeSet::from([
            "#microsoft.graph.mailFolder",
            "#microsoft.graph.mailSearchFolder"
        ])
    );

    emu.set_faults(Faults {
        repeat_folders: true,
        ..Faults::default()
    });
    let twice = graph.all_pages(&folders_url).await;
    assert_eq!(twice.len(), 2 * folders.len());
    assert_eq!(twice[folders.len()..], folders[..]);
    let mail_twice = graph.all_pages(&format!("/users/{JAN}/mailFolders")).await;
    assert_eq!(mail_twice.len(), 2 * mail.len());
}

/// Recreates `source`'s folder tree in `target` (by well-known name or
/// display name and class) and copies every item with exportItems and an
/// import session; returns source item id → exported data.
async fn migrate(
    source: &Graph,
    source_mbx: &str,
    target: &Graph,
    target_mbx: &str,
) -> BTreeMap<String, String> {
    let session_url = format!("/admin/exchange/mailboxes/{target_mbx}/createImportSession");
    let (status, _, session) = target.post(&session_url, &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{session}");
    let import_url = session["importUrl"].as_str().unwrap().to_owned();
    assert!(import_url.contains("authtoken="));
    assert!(session["expirationDateTime"].as_str().is_some());

    let mut exported = BTreeMap::new();
    let src_folders = format!("/admin/exchange/mailboxes/{source_mbx}/folders");
    let tgt_folders = format!("/admin/exchange/mailboxes/{target_mbx}/folders");
    // (source folder id, target parent id or None for the top)
    let mut queue: Vec<(Value, Option<String>)> = source
        .all_pages(&format!("{src_folders}?$top=100"))
        .await
        .into_iter()
        .map(|f| (f, None))
        .collect();
    while let Some((folder, target_parent)) = queue.pop() {
        let target_id = match folder["wellKnownName"].as_str() {
            Some(well_known) => target.get_ok(&format!("{tgt_folders}/{well_known}")).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
            None => {
                let url = match &target_parent {
                    Some(parent) => format!("{tgt_folders}/{parent}/childFolders"),
                    None => tgt_folders.clone(),
                };
                let body = json!({ "displayName": folder["displayName"], "type": folder["type"] });
                let (status, _, created) = target.post(&url, &body).await;
                assert_eq!(status, StatusCode::CREATED, "{created}");
                created["id"].as_str().unwrap().to_owned()
            }
        };
        let folder_id = folder["id"].as_str().unwrap();
        for child in source
            .all_pages(&format!("{src_folders}/{folder_id}/childFolders"))
            .await
        {
            queue.push((child, Some(target_id.clone())));
        }
        let items = source
            .all_pages(&format!("{src_folders}/{folder_id}/items?$top=2"))
            .await;
        for batch in items.chunks(20) {
            let body =
                json!({ "itemIds": batch.iter().map(|i| i["id"].clone()).collect::<Vec<_>>() });
            let (status, _, answer) = source
                .post(
                    &format!("/admin/exchange/mailboxes/{source_mbx}/exportItems"),
                    &body,
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{answer}");
            for entry in answer["value"].as_array().unwrap() {
                let data = entry["data"].as_str().expect("exported data").to_owned();
                assert!(entry["changeKey"].as_str().is_some());
                let import = json!({ "FolderId": target_id, "Mode": "create", "Data": data });
                let request = target
                    .http
                    .post(&import_url)
                    .header("Prefer", "IdType=\"ImmutableId\"");
                let (status, _, imported) = send(request.json(&import)).await;
                assert_eq!(status, StatusCode::OK, "{imported}");
                assert!(
                    imported["itemId"].as_str().is_some()
                        && imported["changeKey"].as_str().is_some()
                );
                exported.insert(entry["itemId"].as_str().unwrap().to_owned(), data);
            }
        }
    }
    exported
}

#[tokio::test]
async fn export_import_round_trips_across_tenants() {
    let emu = two_tenants().await;
    let contoso = Graph::new(&emu, "contoso-tenant", "app-a", SECRET_A).await;
    let fabrikam = Graph::new(&emu, "fabrikam-tenant", "app-b", SECRET_B).await;
    let alice_mbx = contoso.mailbox_id(ALICE).await;
    let bob_mbx = fabrikam.mailbox_id(BOB).await;

    let exported = migrate(&contoso, &alice_mbx, &fabrikam, &bob_mbx).await;
    assert_eq!(exported.len(), 7);
    // The client asked for immutable ids on every request.
    let stats = emu.stats(BOB).unwrap();
    assert!(stats.requests_total > 10);
    assert_eq!(stats.immutable_id_requests, stats.requests_total);
    assert!(
        stats
            .events
            .iter()
            .all(|e| e.immutable_id && (200..300).contains(&e.status))
    );

    // Item by item: same folders (path, class), same items (content, MIME,
    // flags, dates, search keys).
    let source = emu.snapshot(ALICE).unwrap();
    let target = emu.snapshot(BOB).unwrap();
    assert_eq!(target.item_count(), 7);
    assert_eq!(source.differences(&target), Vec::<String>::new());
    let inbox = target.folder(&["Inbox"]).unwrap();
    let mimes: BTreeSet<&[u8]> = inbox
        .items
        .iter()
        .filter_map(|i| i.mime.as_deref())
        .collect();
    assert_eq!(mimes, BTreeSet::from([MIME_PLAIN, MIME_BARE_LF, MIME_8BIT]));
    assert!(
        inbox
            .items
            .iter()
            .any(|i| i.flag_status == FlagStatus::Flagged)
    );

    // Exporting the copies gives other bytes: each copy is a new item of
    // its store (as Exchange's stream, not byte-stable).
    let mut reexported = BTreeSet::new();
    for folder in fabrikam
        .all_pages(&format!(
            "/admin/exchange/mailboxes/{bob_mbx}/folders/delta"
        ))
        .await
    {
        let id = folder["id"].as_str().unwrap();
        let items = fabrikam
            .all_pages(&format!(
                "/admin/exchange/mailboxes/{bob_mbx}/folders/{id}/items"
            ))
            .await;
        if items.is_empty() {
            continue;
        }
        let body = json!({ "ItemIds": items.iter().map(|i| i["id"].clone()).collect::<Vec<_>>() });
        let (_, _, answer) = fabrikam
            .post(
                &format!("/admin/exchange/mailboxes/{bob_mbx}/exportItems"),
                &body,
            )
            .await;
        for entry in answer["value"].as_array().unwrap() {
            reexported.insert(entry["data"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(reexported.len(), exported.len());
    let originals: BTreeSet<String> = exported.values().cloned().collect();
    assert!(reexported.is_disjoint(&originals));

    // exportItems limits and per-item errors.
    let export_url = format!("/admin/exchange/mailboxes/{alice_mbx}/exportItems");
    let known = exported.keys().next().unwrap().clone();
    let too_many: Vec<String> = (0..21).map(|_| known.clone()).collect();
    let (status, _, body) = contoso
        .post(&export_url, &json!({ "itemIds": too_many }))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "ErrorInvalidRequest")
    );
    let (status, _, body) = contoso
        .post(
            &export_url,
            &json!({ "itemIds": [known, "AAkALgNoSuchItem"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["value"][0]["data"].is_string());
    assert_eq!(body["value"][1]["itemId"], "AAkALgNoSuchItem");
    // The entry's error is a mailTipsError: errorCode and message.
    assert_eq!(body["value"][1]["error"]["errorCode"], "ErrorItemNotFound");
    assert!(body["value"][1].get("data").is_none());

    // An item failing on cue: an error entry until the cue is cleared.
    let fault = ItemFault::new(500, "ErrorCorruptData", "The item is corrupt.");
    emu.fail_item(ALICE, &known, fault).unwrap();
    let (status, _, body) = contoso
        .post(&export_url, &json!({ "itemIds": [known] }))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["value"][0]["itemId"], known.as_str());
    assert_eq!(body["value"][0]["error"]["errorCode"], "ErrorCorruptData");
    assert_eq!(body["value"][0]["error"]["message"], "The item is corrupt.");
    assert!(body["value"][0].get("data").is_none());
    emu.clear_item_faults(ALICE).unwrap();
    let (_, _, body) = contoso
        .post(&export_url, &json!({ "itemIds": [known] }))
        .await;
    assert!(body["value"][0]["data"].is_string(), "{body}");

    // Damaged data and bad modes are refused; nothing is created.
    let (_, _, session) = fabrikam
        .post(
            &format!("/admin/exchange/mailboxes/{bob_mbx}/createImportSession"),
            &json!({}),
        )
        .await;
    let import_url = session["importUrl"].as_str().unwrap();
    let bad = json!({ "FolderId": "inbox", "Mode": "create", "Data": STANDARD.encode(b"garbage") });
    let (status, _, body) = send(reqwest::Client::new().post(import_url).json(&bad)).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "ErrorCorruptData")
    );
    let data = exported.values().next().unwrap();
    let bad = json!({ "FolderId": "inbox", "Mode": "create", "Data": data, "ItemId": "x" });
    let (status, _, _) = send(reqwest::Client::new().post(import_url).json(&bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(emu.snapshot(BOB).unwrap().item_count(), 7);
}

#[tokio::test]
async fn import_sessions_expire() {
    let emu = start(
        EmulatorConfig::default()
            .tenant(contoso())
            .import_session_lifetime(Duration::from_secs(1))
            .expired_import_url_status(401),
    )
    .await;
    let graph = Graph::new(&emu, "contoso-tenant", "app-a", SECRET_A).await;
    let mbx = graph.mailbox_id(ALICE).await;
    let item = graph
        .all_pages(&format!(
            "/admin/exchange/mailboxes/{mbx}/folders/sentitems/items"
        ))
        .await;
    let (_, _, export) = graph
        .post(
            &format!("/admin/exchange/mailboxes/{mbx}/exportItems"),
            &json!({ "itemIds": [item[0]["id"]] }),
        )
        .await;
    let body =
        json!({ "FolderId": "archive", "Mode": "create", "Data": export["value"][0]["data"] });
    let (_, _, session) = graph
        .post(
            &format!("/admin/exchange/mailboxes/{mbx}/createImportSession"),
            &json!({}),
        )
        .await;
    let created_at = std::time::Instant::now();
    let import_url = session["importUrl"].as_str().unwrap().to_owned();
    let (status, _, _) = send(reqwest::Client::new().post(&import_url).json(&body)).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep_until((created_at + Duration::from_millis(1100)).into()).await;
    let (status, _, answer) = send(reqwest::Client::new().post(&import_url).json(&body)).await;
    assert_eq!(
        (status, error_code(&answer)),
        (StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken")
    );
    let tampered = import_url.replace("authtoken=", "authtoken=x");
    let (status, _, _) = send(reqwest::Client::new().post(&tampered).json(&body)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(emu.stats(ALICE).unwrap().import_urls_refused, 2);
    assert_eq!(
        emu.snapshot(ALICE)
            .unwrap()
            .folder(&["Archive"])
            .unwrap()
            .items
            .len(),
        1
    );
}

#[tokio::test]
async fn item_delta_tracks_changes_and_resets() {
    let mut user = UserSeed::new(CAROL);
    for i in 0..5 {
        let mime = format!(
            "Subject: message {i}\r\nMessage-ID: <m{i}@contoso.example>\r\n\r\nbody {i}\r\n"
        );
        user = user.item(ItemSeed::message("Inbox", mime.as_bytes()));
    }
    let tenant = TenantSeed::new("contoso-tenant")
        .app(AppSeed::with_secret("app-a", SECRET_A))
        .user(user);
    let emu = start(EmulatorConfig::default().tenant(tenant)).await;
    let graph = Graph::new(&emu, "contoso-tenant", "app-a", SECRET_A).await;
    let mbx = graph.mailbox_id(CAROL).await;
    let delta_url = format!("/admin/exchange/mailboxes/{mbx}/folders/inbox/items/delta");

    // The initial round: everything, 2 per page, then a deltaLink.
    let (pages, entries, delta_link) = graph.delta_round(&delta_url, 2).await;
    assert_eq!((pages, entries.len()), (3, 5));
    let first_ids = ids(&entries);
    assert_eq!(first_ids.len(), 5);
    assert!(
        entries
            .iter()
            .all(|e| e["type"] == "IPM.Note" && e["size"].as_u64().unwrap() > 0)
    );
    assert!(
        entries
            .iter()
            .all(|e| e["@odata.type"] == "#microsoft.graph.mailboxItem")
    );

    // Nothing changed: an empty round.
    let (_, entries, delta_link) = graph.delta_round(&delta_link, 2).await;
    assert!(entries.is_empty());

    // A new item, a changed one, a deleted one.
    let mut existing = first_ids.iter();
    let changed = existing.next().unwrap().clone();
    let deleted = existing.next().unwrap().clone();
    let before = graph
        .get_ok(&format!(
            "/admin/exchange/mailboxes/{mbx}/folders/inbox/items/{changed}"
        ))
        .await;
    let added = emu
        .add_item(
            CAROL,
            &ItemSeed::message("Inbox", b"Subject: new\r\n\r\nnew\r\n"),
        )
        .unwrap();
    emu.update_item(
        CAROL,
        &changed,
        &ItemUpdate {
            is_read: Some(true),
            ..ItemUpdate::default()
        },
    )
    .unwrap();
    emu.delete_item(CAROL, &deleted).unwrap();
    let (_, entries, delta_link) = graph.delta_round(&delta_link, 2).await;
    assert_eq!(entries.len(), 3, "{entries:?}");
    let by_id: BTreeMap<String, &Value> = entries
        .iter()
        .map(|e| (e["id"].as_str().unwrap().to_owned(), e))
        .collect();
    assert_eq!(by_id[&deleted]["@removed"], json!({ "reason": "deleted" }));
    assert_ne!(by_id[&changed]["changeKey"], before["changeKey"]);
    assert!(by_id[&added]["changeKey"].is_string());

    // Moving an item: it leaves the Inbox's delta; its immutable id stays,
    // its default id changes.
    let plain = Graph {
        immutable_ids: false,
        http: reqwest::Client::new(),
        root: graph.root.clone(),
        token: graph.token.clone(),
    };
    let rest_before = ids(&plain
        .all_pages(&format!(
            "/admin/exchange/mailboxes/{mbx}/folders/inbox/items"
        ))
        .await);
    emu.update_item(
        CAROL,
        &added,
        &ItemUpdate {
            folder: Some("archive".to_owned()),
            ..ItemUpdate::default()
        },
    )
    .unwrap();
    let archived = graph
        .all_pages(&format!(
            "/admin/exchange/mailboxes/{mbx}/folders/archive/items"
        ))
        .await;
    assert_eq!(ids(&archived), BTreeSet::from([added.clone()]));
    let archived_rest = plain
        .all_pages(&format!(
            "/admin/exchange/mailboxes/{mbx}/folders/archive/items"
        ))
        .await;
    assert!(!rest_before.contains(archived_rest[0]["id"].as_str().unwrap()));
    let (_, entries, delta_link) = graph.delta_round(&delta_link, 2).await;
    assert_eq!(
        entries,
        vec![json!({
            "@odata.type": "#microsoft.graph.mailboxItem",
            "id": added,
            "@removed": { "reason": "deleted" },
        })]
    );

    // After a reset, old state tokens are gone: 410 with the way back.
    let (_, _, nextlink_page) = send(
        graph
            .request(Method::GET, &delta_url)
            .header("Prefer", "odata.maxpagesize=1"),
    )
    .await;
    let skip_link = nextlink_page["@odata.nextLink"]
        .as_str()
        .unwrap()
        .to_owned();
    let inbox = inbox_id(&graph, &mbx).await;
    let initial_url = graph.url(&format!(
        "/admin/exchange/mailboxes/{mbx}/folders/{inbox}/items/delta"
    ));
    emu.reset_delta_tokens(&mbx).unwrap();
    for link in [delta_link, skip_link] {
        let (status, headers, body) = graph.get(&link).await;
        assert_eq!(status, StatusCode::GONE);
        assert_eq!(error_code(&body), "syncStateNotFound");
        let location = headers.get("location").unwrap().to_str().unwrap();
        assert_eq!(location, initial_url);
    }
    let (_, entries, _) = graph.delta_round(&delta_url, 10).await;
    assert_eq!(entries.len(), 4, "a full resync after the reset");
}

async fn inbox_id(graph: &Graph, mbx: &str) -> String {
    graph
        .get_ok(&format!("/admin/exchange/mailboxes/{mbx}/folders/inbox"))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn mail_api_delta_and_exact_mime() {
    let emu = two_tenants().await;
    let graph = Graph::new(&emu, "contoso-tenant", "app-a", SECRET_A).await;

    // Mail folders only (no Calendar/Contacts/Tasks), paged.
    let folders = graph
        .all_pages(&format!("/users/{ALICE}/mailFolders?$top=4"))
        .await;
    let names: Vec<&str> = folders
        .iter()
        .map(|f| f["displayName"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Inbox",
            "Sent Items",
            "Drafts",
            "Deleted Items",
            "Junk Email",
            "Archive",
            "Outbox",
            "Sync Issues",
            "Conversation History"
        ]
    );
    assert_eq!(folders[0]["totalItemCount"], 3);
    assert_eq!(folders[0]["unreadItemCount"], 2);
    assert_eq!(folders[0]["childFolderCount"], 1);
    let inbox = graph
        .get_ok(&format!("/users/{ALICE}/mailFolders/inbox"))
        .await;
    assert_eq!(inbox["id"], folders[0]["id"]);
    let children = graph
        .all_pages(&format!("/users/{ALICE}/mailFolders/inbox/childFolders"))
        .await;
    assert_eq!(children[0]["displayName"], "Projects");
    let (status, _, _) = graph
        .get(&format!("/users/{ALICE}/mailFolders/calendar"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Message delta with $select, then $value of each message.
    let delta_url = format!(
        "/users/{ALICE}/mailFolders/inbox/messages/delta?$select=isRead,receivedDateTime,flag"
    );
    let (pages, messages, delta_link) = graph.delta_round(&delta_url, 2).await;
    assert_eq!((pages, messages.len()), (2, 3));
    for message in &messages {
        assert!(
            message.get("subject").is_none(),
            "$select applies: {message}"
        );
        assert!(message["isRead"].is_boolean() && message["receivedDateTime"].is_string());
        assert!(message["flag"]["flagStatus"].is_string());
    }
    let mut mimes = BTreeMap::new();
    for message in &messages {
        let id = message["id"].as_str().unwrap();
        let full = graph.get_ok(&format!("/users/{ALICE}/messages/{id}")).await;
        let response = graph
            .request(Method::GET, &format!("/users/{ALICE}/messages/{id}/$value"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = response.bytes().await.unwrap().to_vec();
        mimes.insert(
            full["internetMessageId"].as_str().unwrap().to_owned(),
            (full, bytes),
        );
    }
    let (plain, plain_mime) = &mimes["<q1@contoso.example>"];
    assert_eq!(plain_mime.as_slice(), MIME_PLAIN);
    assert_eq!(plain["subject"], "Quarterly numbers");
    assert_eq!(plain["receivedDateTime"], "2024-05-06T07:31:00Z");
    assert_eq!(plain["sentDateTime"], "2024-05-06T07:30:00Z");
    assert_eq!(plain["isRead"], false);
    assert_eq!(plain["parentFolderId"], inbox["id"]);
    assert_eq!(mimes["<lf@contoso.example>"].1.as_slice(), MIME_BARE_LF);
    let (eight_bit, eight_bit_mime) = &mimes["<8bit@contoso.example>"];
    assert_eq!(eight_bit_mime.as_slice(), MIME_8BIT);
    assert_eq!(eight_bit["flag"]["flagStatus"], "flagged");

    // Calendar items are not messages.
    let appointments = emu.snapshot(ALICE).unwrap();
    assert!(
        appointments.folder(&["Calendar"]).unwrap().items[0]
            .mime
            .is_none()
    );

    // A flag change shows up in the next round, with the selected fields.
    let id = plain["id"].as_str().unwrap();
    emu.update_item(
        ALICE,
        id,
        &ItemUpdate {
            is_read: Some(true),
            ..ItemUpdate::default()
        },
    )
    .unwrap();
    let (_, changes, _) = graph.delta_round(&delta_link, 2).await;
    assert_eq!(changes.len(), 1);
    assert_eq!(
        (changes[0]["id"].as_str(), changes[0]["isRead"].as_bool()),
        (Some(id), Some(true))
    );
    // changeType=created sees only new messages.
    let (_, _, created_link) = graph
        .delta_round(
            &format!("/users/{ALICE}/mailFolders/inbox/messages/delta?changeType=created"),
            10,
        )
        .await;
    emu.update_item(
        ALICE,
        id,
        &ItemUpdate {
            flag_status: Some(FlagStatus::Complete),
            ..ItemUpdate::default()
        },
    )
    .unwrap();
    let new = emu
        .add_item(
            ALICE,
            &ItemSeed::message("Inbox", b"Subject: later\r\n\r\n"),
        )
        .unwrap();
    let (_, created, _) = graph.delta_round(&created_link, 10).await;
    assert_eq!(ids(&created), BTreeSet::from([new]));
}

/// The default page is 10 entries; `Prefer: odata.maxpagesize` asks for
/// up to 1,000 (the list-messages page: "within the range of 1 and 1000").
#[tokio::test]
async fn pages_of_ten_by_default_and_of_up_to_a_thousand_on_request() {
    let mut user = UserSeed::new(CAROL);
    for i in 0..1005 {
        user = user.item(ItemSeed::new(
            "Calendar",
            "IPM.Appointment",
            format!("meeting {i}").as_bytes(),
        ));
    }
    let tenant = TenantSeed::new("contoso-tenant")
        .app(AppSeed::with_secret("app-a", SECRET_A))
        .user(user);
    let emu = start(EmulatorConfig::default().tenant(tenant)).await;
    let graph = Graph::new(&emu, "contoso-tenant", "app-a", SECRET_A).await;
    let mbx = graph.mailbox_id(CAROL).await;
    let folder = format!("/admin/exchange/mailboxes/{mbx}/folders/calendar/items");
    let page_of = |url: String, prefer: Option<&'static str>| {
        let mut request = graph.request(Method::GET, &url);
        if let Some(prefer) = prefer {
            request = request.header("Prefer", prefer);
        }
        send(request)
    };
    for path in [folder.clone(), format!("{folder}/delta")] {
        let (_, _, body) = page_of(path.clone(), None).await;
        assert_eq!(body["value"].as_array().unwrap().len(), 10, "{path}");
        let (_, _, body) = page_of(path.clone(), Some("odata.maxpagesize=5000")).await;
        assert_eq!(body["value"].as_array().unwrap().len(), 1000, "{path}");
        let next = body["@odata.nextLink"].as_str().unwrap().to_owned();
        let (_, _, body) = page_of(next, Some("odata.maxpagesize=5000")).await;
        assert_eq!(body["value"].as_array().unwrap().len(), 5, "{path}");
    }
}

#[tokio::test]
async fn fifth_concurrent_request_is_throttled() {
    let emu = two_tenants().await;
    emu.set_limits(Limits {
        concurrency_scope: ConcurrencyScope::Mailbox,
        ..Limits::default()
    });
    emu.set_faults(Faults {
        latency: Duration::from_millis(800),
        ..Faults::default()
    });
    let graph = Graph::new(&emu, "contoso-tenant", "app-a", SECRET_A).await;
    let mbx = emu.mailbox_id(ALICE).unwrap();
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let request = graph.request(
            Method::GET,
            &format!("/admin/exchange/mailboxes/{mbx}/folders"),
        );
        requests.spawn(send(request));
    }
    let mut statuses = BTreeMap::new();
    while let Some(result) = requests.join_next().await {
        let (status, headers, body) = result.unwrap();
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(body["error"]["code"], "ApplicationThrottled", "{body}");
            assert_eq!(
                body["error"]["message"],
                "Application is over its MailboxConcurrency limit."
            );
            assert!(headers.get("retry-after").is_none());
        }
        *statuses.entry(status.as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses, BTreeMap::from([(200, 4), (429, 1)]));
    // Another mailbox of the same app is not affected, and slots free up.
    let graph_b = Graph::new(&emu, "contoso-tenant", "app-a", SECRET_A).await;
    let (status, _, _) = graph_b
        .get(&format!("/users/{CAROL}/settings/exchange"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let stats = emu.stats(ALICE).unwrap();
    assert_eq!(stats.throttled_by(ThrottleReason::Concurrency), 1);
    assert_eq!(stats.events.iter().filter(|e| e.status == 200).count(), 4);
}

#[tokio::test]
async fn request_rate_window_and_retry_after() {
    let emu = two_tenants().await;
    emu.set_limits(Limits {
        requests_per_window: 5,
        request_window: Duration::from_secs(2),
        ..Limits::default()
    });
    let graph = Graph::new(&emu, "contoso-tenant", "app-a", SECRET_A).await;
    let path = format!("/users/{ALICE}/settings/exchange");
    for _ in 0..5 {
        assert_eq!(graph.get(&path).await.0, StatusCode::OK);
    }
    let retry_after = |headers: &HeaderMap| -> u64 {
        headers
            .get("retry-after")
            .expect("Retry-After")
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (status, headers, body) = graph.get(&path).await;
    let throttled_at = std::time::Instant::now();
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests")
    );
    let wait = retry_after(&headers);
    assert!((1..=2).contains(&wait), "Retry-After: {wait}");
    // Inside the window: refused again, without extending it by default.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, headers, _) = graph.get(&path).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&headers) <= wait);
    // Other users are not affected (limits are per mailbox).
    let other = graph
        .get(&format!("/users/{CAROL}/settings/exchange"))
        .await;
    assert_eq!(other.0, StatusCode::OK);
    let window_end = throttled_at + Duration::from_secs(wait) + Duration::from_millis(150);
    tokio::time::sleep_until(window_end.into()).await;
    assert_eq!(graph.get(&path).await.0, StatusCode::OK);
    let stats = emu.stats(ALICE).unwrap();
    assert_eq!(stats.throttled_by(ThrottleReason::RequestRate), 1);
    assert_eq!(stats.throttled_by(ThrottleReason::RetryAfterWindow), 1);
    assert_eq!(stats.requests_total, 8);

    // With extension on, a request inside the window restarts it.
    emu.set_limits(Limits {
        requests_per_window: 1,
        request_window: Duration::from_secs(2),
        retry_after_extends: true,
        ..Limits::default()
    });
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(graph.get(&path).await.0, StatusCode::OK);
    let (status, headers, _) = graph.get(&path).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let wait = retry_after(&headers);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, headers, _) = graph.get(&path).await;
    assert_eq!(retry_after(&headers), wait, "the window restarted");
}

#[tokio::test]
async fn upload_budget_window() {
    let emu = two_tenants().await;
    let contoso = Graph::new(&emu, "contoso-tenant", "app-a", SECRET_A).await;
    let fabrikam = Graph::new(&emu, "fabrikam-tenant", "app-b", SECRET_B).await;
    let alice_mbx = contoso.mailbox_id(ALICE).await;
    let bob_mbx = fabrikam.mailbox_id(BOB).await;
    let items = contoso
        .all_pages(&format!(
            "/admin/exchange/mailboxes/{alice_mbx}/folders/inbox/items"
        ))
        .await;
    let (_, _, export) = contoso
        .post(
            &format!("/admin/exchange/mailboxes/{alice_mbx}/exportItems"),
            &json!({ "itemIds": ids(&items) }),
        )
        .await;
    let bodies: Vec<Vec<u8>> = export["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            serde_json::to_vec(&json!({ "FolderId": "inbox", "Mode": "create", "Data": e["data"] }))
                .unwrap()
        })
        .collect();
    let largest = bodies.iter().map(Vec::len).max().unwrap() as u64;
    emu.set_limits(Limits {
        upload_bytes_per_window: largest + 10,
        upload_window: Duration::from_secs(2),
        ..Limits::default()
    });
    let (_, _, session) = fabrikam
        .post(
            &format!("/admin/exchange/mailboxes/{bob_mbx}/createImportSession"),
            &json!({}),
        )
        .await;
    let import_url = session["importUrl"].as_str().unwrap();
    let import = |body: &Vec<u8>| {
        send(
            reqwest::Client::new()
                .post(import_url)
                .header("content-type", "application/json")
                .body(body.clone()),
        )
    };
    assert_eq!(import(&bodies[0]).await.0, StatusCode::OK);
    let (status, headers, body) = import(&bodies[1]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait));
    // Small requests are refused too while the window is open.
    assert_eq!(
        fabrikam
            .get(&format!("/users/{BOB}/settings/exchange"))
            .await
            .0,
        StatusCode::TOO_MANY_REQUESTS
    );
    tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(100)).await;
    assert_eq!(import(&bodies[1]).await.0, StatusCode::OK);

    let stats = emu.stats(BOB).unwrap();
    assert_eq!(stats.throttled_by(ThrottleReason::UploadVolume), 1);
    assert_eq!(stats.throttled_by(ThrottleReason::RetryAfterWindow), 1);
    assert_eq!(
        stats.bytes_uploaded,
        (bodies[0].len() + bodies[1].len() + 2) as u64,
        "bodies + the session's {{}}"
    );
    assert_eq!(emu.snapshot(BOB).unwrap().item_count(), 2);
}

#[tokio::test]
async fn mailbox_quota_is_enforced() {
    let tenant = TenantSeed::new("fabrikam-tenant")
        .app(AppSeed::with_secret("app-b", SECRET_B))
        .user(UserSeed::new(BOB).quota_bytes(400));
    let emu = start(EmulatorConfig::default().tenant(contoso()).tenant(tenant)).await;
    let contoso = Graph::new(&emu, "contoso-tenant", "app-a", SECRET_A).await;
    let fabrikam = Graph::new(&emu, "fabrikam-tenant", "app-b", SECRET_B).await;
    let alice_mbx = contoso.mailbox_id(ALICE).await;
    let bob_mbx = fabrikam.mailbox_id(BOB).await;
    let items = contoso
        .all_pages(&format!(
            "/admin/exchange/mailboxes/{alice_mbx}/folders/inbox/items"
        ))
        .await;
    let sizes: Vec<u64> = items.iter().map(|i| i["size"].as_u64().unwrap()).collect();
    let (_, _, export) = contoso
        .post(
            &format!("/admin/exchange/mailboxes/{alice_mbx}/exportItems"),
            &json!({ "itemIds": ids(&items) }),
        )
        .await;
    let (_, _, session) = fabrikam
        .post(
            &format!("/admin/exchange/mailboxes/{bob_mbx}/createImportSession"),
            &json!({}),
        )
        .await;
    let import_url = session["importUrl"].as_str().unwrap();
    let mut outcomes = Vec::new();
    for entry in export["value"].as_array().unwrap() {
        let body = json!({ "FolderId": "inbox", "Mode": "create", "Data": entry["data"] });
        let (status, _, answer) = send(reqwest::Client::new().post(import_url).json(&body)).await;
        if status == StatusCode::INSUFFICIENT_STORAGE {
            assert_eq!(error_code(&answer), "ErrorQuotaExceeded");
        }
        outcomes.push(status);
    }
    let stored = emu.snapshot(BOB).unwrap();
    let stored_bytes: u64 = stored
        .folders
        .iter()
        .flat_map(|f| &f.items)
        .map(|i| i.export_data.len() as u64)
        .sum();
    assert!(stored_bytes <= 400, "quota kept: {stored_bytes}");
    assert!(
        outcomes.contains(&StatusCode::OK),
        "{outcomes:?} with sizes {sizes:?}"
    );
    assert!(
        outcomes.contains(&StatusCode::INSUFFICIENT_STORAGE),
        "{outcomes:?} with sizes {sizes:?}"
    );
    assert_eq!(
        stored.item_count(),
        outcomes.iter().filter(|s| **s == StatusCode::OK).count()
    );
}

/// The statuses of `count` identical requests, and how many 503s had no body.
async fn status_sequence(emu: &GraphEmulator, count: usize) -> (Vec<u16>, usize) {
    let graph = Graph::new(emu, "contoso-tenant", "app-a", SECRET_A).await;
    let mut statuses = Vec::new();
    let mut empty_bodies = 0;
    for _ in 0..count {
        let response = graph
            .request(Method::GET, &format!("/users/{ALICE}/settings/exchange"))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap();
        if status == 503 && body.is_empty() {
            empty_bodies += 1;
        }
        if status == 503 && !body.is_empty() {
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(error_code(&body), "serviceNotAvailable");
        }
        statuses.push(status);
    }
    (statuses, empty_bodies)
}

#[tokio::test]
async fn fault_injection_is_seeded_and_switchable() {
    let faults = Faults {
        enabled: true,
        seed: 42,
        server_busy_rate: 0.2,
        empty_body_share: 0.5,
        gateway_timeout_rate: 0.1,
        ..Faults::default()
    };
    let config = || {
        EmulatorConfig::default()
            .tenant(contoso())
            .faults(faults.clone())
    };
    let emu = start(config()).await;
    let (statuses, empty_bodies) = status_sequence(&emu, 400).await;
    let count = |code: u16| statuses.iter().filter(|s| **s == code).count();
    let (busy, timeouts, ok) = (count(503), count(504), count(200));
    assert_eq!(busy + timeouts + ok, 400);
    assert!((55..=105).contains(&busy), "503: {busy} of 400 at 20%");
    assert!(
        (22..=60).contains(&timeouts),
        "504: {timeouts} of 400 at 10%"
    );
    assert!(
        empty_bodies > busy / 4 && empty_bodies < busy * 3 / 4,
        "{empty_bodies} of {busy} empty"
    );
    let stats = emu.stats(ALICE).unwrap();
    assert_eq!(
        (stats.server_busy_503, stats.gateway_timeout_504),
        (busy as u64, timeouts as u64)
    );

    // The same seed gives the same sequence.
    let again = start(config()).await;
    assert_eq!(status_sequence(&again, 400).await, (statuses, empty_bodies));

    // Off at runtime.
    emu.set_faults(Faults {
        enabled: false,
        ..faults
    });
    let (statuses, _) = status_sequence(&emu, 50).await;
    assert!(statuses.iter().all(|s| *s == 200));
}

#[tokio::test]
async fn binary_serves_a_seed_file() {
    let dir = tempfile::tempdir().unwrap();
    let seed = json!({
        "tenants": [{
            "id": "contoso-tenant",
            "apps": [{ "clientId": "app-a", "secret": SECRET_A }],
            "users": [{
                "userPrincipalName": ALICE,
                "folders": [{ "path": "Inbox/Projects", "type": "IPF.Note" }],
                "items": [{ "folder": "Inbox/Projects", "mime": "Subject: hi\r\n\r\nhello\r\n", "isRead": true }],
            }],
        }],
        "limits": { "concurrentRequests": 2 },
        "tokenLifetimeSecs": 120,
    });
    let seed_path = dir.path().join("seed.json");
    std::fs::write(&seed_path, serde_json::to_vec_pretty(&seed).unwrap()).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_graph-emulator"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--seed")
        .arg(&seed_path)
        .arg("--latency-ms")
        .arg("1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the graph-emulator binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the emulator prints its address")
        .unwrap()
        .unwrap();
    let base = line
        .strip_prefix("graph-emulator listening on ")
        .expect(&line)
        .to_owned();

    let http = reqwest::Client::new();
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "app-a"),
        ("client_secret", SECRET_A),
        ("scope", GRAPH_SCOPE),
    ];
    let (status, _, body) = send(
        http.post(format!("{base}/contoso-tenant/oauth2/v2.0/token"))
            .form(&form),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["expires_in"], 120);
    let token = body["access_token"].as_str().unwrap();
    let (status, _, body) = send(
        http.get(format!("{base}/v1.0/users/{ALICE}/settings/exchange"))
            .bearer_auth(token),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["primaryMailboxId"]
            .as_str()
            .unwrap()
            .starts_with("MBX:")
    );

    // The test API over HTTP.
    let (_, _, limits) = send(http.get(format!("{base}/_emulator/limits"))).await;
    assert_eq!(limits["concurrentRequests"], 2);
    let (_, _, snapshot) =
        send(http.get(format!("{base}/_emulator/mailboxes/{ALICE}/snapshot"))).await;
    let projects = snapshot["folders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == json!(["Inbox", "Projects"]))
        .unwrap();
    assert_eq!(projects["items"][0]["isRead"], true);
    assert_eq!(
        projects["items"][0]["mime"],
        STANDARD.encode("Subject: hi\r\n\r\nhello\r\n")
    );
    let (status, _, _) = send(
        http.post(format!("{base}/_emulator/mailboxes/{ALICE}/items"))
            .json(&json!({ "folder": "Inbox", "mime": "Subject: added\r\n\r\n" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, stats) = send(http.get(format!("{base}/_emulator/mailboxes/{ALICE}/stats"))).await;
    assert_eq!(stats["requestsTotal"], 1);
    assert_eq!(stats["events"][0]["status"], 200);
    child.kill().await.unwrap();
}

/// Logs in over IMAP with SASL XOAUTH2 from 127.0.0.`source`; whether
/// Dovecot said OK. Failed logins from one address make Dovecot delay the
/// next ones from it (auth penalty), so each refusal gets its own.
async fn xoauth2_login(source: u8, port: u16, user: &str, token: &str) -> bool {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, source], 0)))
        .unwrap();
    let stream = socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("Dovecot accepts connections");
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    let greeting = lines.next_line().await.unwrap().unwrap();
    assert!(greeting.starts_with("* OK"), "{greeting}");
    let sasl = STANDARD.encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"));
    let command = format!("a AUTHENTICATE XOAUTH2 {sasl}\r\n");
    write.write_all(command.as_bytes()).await.unwrap();
    loop {
        let line = lines.next_line().await.unwrap().expect("a tagged answer");
        if line.starts_with("+ ") {
            // The error challenge: an empty response ends the exchange.
            write.write_all(b"\r\n").await.unwrap();
            continue;
        }
        if line.starts_with("a ") {
            return line.starts_with("a OK");
        }
    }
}

#[tokio::test]
async fn dovecot_accepts_xoauth2_tokens_of_its_tenant() {
    let lifetime = Duration::from_secs(3);
    let emu = start(
        EmulatorConfig::default()
            .tenant(contoso())
            .tenant(fabrikam())
            .token_lifetime(lifetime),
    )
    .await;
    let options = DovecotOptions::default()
        .user(ALICE, "pw-alice")
        .user(CAROL, "pw-carol")
        .user(BOB, "pw-bob")
        .oauth2_introspection(&emu.introspection_url());
    let dovecot = tokio::task::spawn_blocking(move || DovecotServer::start(options))
        .await
        .unwrap()
        .expect("start Dovecot");
    let port = dovecot.port();
    let issued = std::time::Instant::now();
    let contoso = token(&emu, "contoso-tenant", "app-a", SECRET_A, OUTLOOK_SCOPE).await;
    let fabrikam = token(&emu, "fabrikam-tenant", "app-b", SECRET_B, OUTLOOK_SCOPE).await;
    let graph = token(&emu, "contoso-tenant", "app-a", SECRET_A, GRAPH_SCOPE).await;

    // An app-only token is good for every mailbox of its tenant.
    let logged_in = |source, user, token| xoauth2_login(source, port, user, token);
    assert!(
        logged_in(1, ALICE, &contoso).await,
        "{}",
        dovecot.log_contents()
    );
    assert!(logged_in(1, CAROL, &contoso).await);
    assert!(logged_in(1, BOB, &fabrikam).await);
    // Not for another tenant's mailbox; Graph tokens and made-up ones never.
    assert!(!logged_in(2, BOB, &contoso).await);
    assert!(!logged_in(3, ALICE, &fabrikam).await);
    assert!(!logged_in(4, ALICE, &graph).await);
    assert!(!logged_in(5, ALICE, "no-such-token").await);
    // Passwords still work next to OAuth.
    let client = dovecot.endpoint(ALICE).unwrap().connect().await.unwrap();
    client.logout().await;

    let expiry = (issued + lifetime + Duration::from_millis(200))
        .saturating_duration_since(std::time::Instant::now());
    tokio::time::sleep(expiry).await;
    assert!(!logged_in(6, ALICE, &contoso).await, "an expired token");
}

#[tokio::test]
async fn application_permissions_are_enforced_per_operation() {
    let tenant = TenantSeed::new("contoso-tenant")
        .app(
            AppSeed::with_secret("app-a", SECRET_A)
                .roles(&["User.Read.All", "MailboxFolder.Read.All"]),
        )
        .app(AppSeed::with_secret("app-b", SECRET_B).roles(&["MailboxItem.ImportExport.All"]))
        .user(alice());
    let emu = start(EmulatorConfig::default().tenant(tenant)).await;
    let reader = Graph::new(&emu, "contoso-tenant", "app-a", SECRET_A).await;
    let mbx = reader.mailbox_id(ALICE).await;
    let root = format!("/admin/exchange/mailboxes/{mbx}");
    let inbox = reader.get_ok(&format!("{root}/folders/inbox")).await;
    assert_eq!(inbox["displayName"], "Inbox");
    reader
        .get_ok(&format!("{root}/folders/inbox/childFolders"))
        .await;

    let denied = |status: StatusCode, body: &Value, code: &str| {
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(error_code(body), code, "{body}");
    };
    // Items, exports, imports and folder creation need other permissions.
    let (status, _, body) = reader
        .get(&format!("{root}/folders/inbox/items/delta"))
        .await;
    denied(status, &body, "ErrorAccessDenied");
    let (status, _, body) = reader.get(&format!("{root}/folders/inbox/items")).await;
    denied(status, &body, "ErrorAccessDenied");
    let (status, _, body) = reader
        .post(&format!("{root}/exportItems"), &json!({ "itemIds": ["x"] }))
        .await;
    denied(status, &body, "ErrorAccessDenied");
    let (status, _, body) = reader
        .post(&format!("{root}/createImportSession"), &json!({}))
        .await;
    denied(status, &body, "ErrorAccessDenied");
    let (status, _, body) = reader
        .post(&format!("{root}/folders"), &json!({ "displayName": "New" }))
        .await;
    denied(status, &body, "ErrorAccessDenied");
    let (status, _, body) = reader
        .get(&format!("/users/{ALICE}/mailFolders/inbox"))
        .await;
    denied(status, &body, "ErrorAccessDenied");

    // The directory refuses in its own words; an import session works.
    let importer = Graph::new(&emu, "contoso-tenant", "app-b", SECRET_B).await;
    let (status, _, body) = importer
        .get(&format!("/users/{ALICE}/settings/exchange"))
        .await;
    denied(status, &body, "Authorization_RequestDenied");
    let (status, _, body) = importer
        .post(&format!("{root}/createImportSession"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["importUrl"].as_str().is_some(), "{body}");
    let (status, _, body) = importer.get(&format!("{root}/folders/inbox/items")).await;
    denied(status, &body, "ErrorAccessDenied");

    // A token that is no token is still 401, not 403.
    let stranger = Graph {
        token: "not-a-token".to_owned(),
        ..Graph::new(&emu, "contoso-tenant", "app-a", SECRET_A).await
    };
    let (status, _, _) = stranger.get(&format!("{root}/folders/inbox/items")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// An import session's URL for `mailbox`.
async fn import_url(graph: &Graph, mailbox: &str) -> String {
    let url = format!("/admin/exchange/mailboxes/{mailbox}/createImportSession");
    let (status, _, session) = graph.post(&url, &json!({})).await;
    assert_eq!(status, StatusCode::OK, "{session}");
    session["importUrl"].as_str().unwrap().to_owned()
}

/// The export data of items of `mailbox`.
async fn export_data(graph: &Graph, mailbox: &str, ids: &[&str]) -> Vec<String> {
    let url = format!("/admin/exchange/mailboxes/{mailbox}/exportItems");
    let (status, _, answer) = graph.post(&url, &json!({ "itemIds": ids })).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"].as_str().expect("data").to_owned())
        .collect()
}

/// The server time of an answer's `Date` header.
fn date_of(headers: &HeaderMap) -> chrono::DateTime<chrono::Utc> {
    let date = headers
        .get("date")
        .expect("a Date header")
        .to_str()
        .unwrap();
    chrono::DateTime::parse_from_rfc2822(date).unwrap().to_utc()
}

const EXPAND_KEYS: &str =
    "singleValueExtendedProperties($filter=id eq 'Binary 0x300B' or id eq 'String 0x1035')";

/// The extended property `id` of a listed item.
fn property<'a>(item: &'a Value, id: &str) -> Option<&'a str> {
    item["singleValueExtendedProperties"]
        .as_array()?
        .iter()
        .find(|p| p["id"].as_str().is_some_and(|p| p.eq_ignore_ascii_case(id)))?["value"]
        .as_str()
}

/// Issue 9, point 2, as the documentation has Exchange: an imported item is
/// a new item of the target's store (new export bytes, created and modified
/// by the service's clock, which need not be the client's), its search key
/// (`Binary 0x300B`) and internet message id (`String 0x1035`) survive, and
/// a folder's items list with `$filter` on their timestamps and with those
/// properties `$expand`ed. Every answer carries the service's `Date`.
#[tokio::test]
async fn imports_are_new_items_of_the_store_that_keep_their_search_key() {
    let emu = two_tenants().await;
    let skew = chrono::TimeDelta::hours(-2);
    emu.set_clock_skew(skew);
    let contoso = Graph::new(&emu, "contoso-tenant", "app-a", SECRET_A).await;
    let fabrikam = Graph::new(&emu, "fabrikam-tenant", "app-b", SECRET_B).await;
    let alice_mbx = contoso.mailbox_id(ALICE).await;
    let bob_mbx = fabrikam.mailbox_id(BOB).await;

    let (_, headers, _) = contoso
        .get(&format!("/admin/exchange/mailboxes/{alice_mbx}/folders"))
        .await;
    let behind = chrono::Utc::now() - date_of(&headers);
    assert!(
        (behind - chrono::TimeDelta::hours(2)).num_seconds().abs() <= 2,
        "{behind}"
    );

    let source_items = contoso
        .all_pages(&format!(
            "/admin/exchange/mailboxes/{alice_mbx}/folders/inbox/items?$expand={EXPAND_KEYS}"
        ))
        .await;
    let original = source_items
        .iter()
        .find(|i| property(i, "String 0x1035") == Some("<q1@contoso.example>"))
        .unwrap_or_else(|| panic!("the message, with its internet message id: {source_items:?}"));
    let search_key = property(original, "Binary 0x300B")
        .expect("a search key")
        .to_owned();
    assert_eq!(STANDARD.decode(&search_key).unwrap().len(), 16);
    let keys: BTreeSet<&str> = source_items
        .iter()
        .filter_map(|i| property(i, "Binary 0x300B"))
        .collect();
    assert_eq!(
        keys.len(),
        source_items.len(),
        "each item its own search key"
    );

    let data = export_data(&contoso, &alice_mbx, &[original["id"].as_str().unwrap()]).await;
    let before_import = emu.now();
    let import = json!({ "FolderId": "inbox", "Mode": "create", "Data": data[0] });
    let url = import_url(&fabrikam, &bob_mbx).await;
    let request = fabrikam
        .http
        .post(&url)
        .header("Prefer", "IdType=\"ImmutableId\"");
    let (status, headers, imported) = send(request.json(&import)).await;
    assert_eq!(status, StatusCode::OK, "{imported}");
    assert!((date_of(&headers) - before_import).num_seconds().abs() <= 2);
    let copy_id = imported["itemId"].as_str().unwrap();

    // Other bytes, the same key, the service's timestamps.
    let copy_data = export_data(&fabrikam, &bob_mbx, &[copy_id]).await;
    assert_ne!(copy_data[0], data[0]);
    let inbox = format!("/admin/exchange/mailboxes/{bob_mbx}/folders/inbox/items");
    let listed = fabrikam
        .all_pages(&format!("{inbox}?$expand={EXPAND_KEYS}"))
        .await;
    let copy = listed
        .iter()
        .find(|i| i["id"] == copy_id)
        .expect("the copy");
    assert_eq!(property(copy, "Binary 0x300B"), Some(search_key.as_str()));
    assert_eq!(
        property(copy, "String 0x1035"),
        Some("<q1@contoso.example>")
    );
    for field in ["createdDateTime", "lastModifiedDateTime"] {
        let at = chrono::DateTime::parse_from_rfc3339(copy[field].as_str().unwrap()).unwrap();
        assert!(
            (at.to_utc() - before_import).num_seconds().abs() <= 2,
            "{field} {at}"
        );
    }
    // Only the search key, when only it is asked for.
    let only_key = fabrikam
        .all_pages(&format!(
            "{inbox}?$select=id&$expand=singleValueExtendedProperties($filter=id eq 'Binary 0x300B')"
        ))
        .await;
    let copy = only_key.iter().find(|i| i["id"] == copy_id).unwrap();
    assert_eq!(
        copy["singleValueExtendedProperties"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(copy.get("size").is_none(), "$select applies: {copy}");

    // $filter on the timestamps, by the service's clock.
    emu.add_item(
        BOB,
        &ItemSeed::message("Inbox", MIME_PROJECT).received(at("2024-01-01T00:00:00Z")),
    )
    .unwrap();
    let since = (before_import - chrono::TimeDelta::seconds(5))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let recent = fabrikam
        .all_pages(&format!("{inbox}?$filter=lastModifiedDateTime ge {since}"))
        .await;
    assert_eq!(
        recent.len(),
        2,
        "the copy and the item added since: {recent:?}"
    );
    let created = fabrikam
        .all_pages(&format!("{inbox}?$filter=createdDateTime ge {since}"))
        .await;
    assert_eq!(
        ids(&created),
        BTreeSet::from([copy_id.to_owned()]),
        "the seed was created in 2024"
    );
    let window = fabrikam
        .all_pages(&format!(
            "{inbox}?$filter=createdDateTime ge 2023-12-31 and createdDateTime lt 2024-01-02"
        ))
        .await;
    assert_eq!(window.len(), 1);
    let local = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let by_local_clock = fabrikam
        .all_pages(&format!("{inbox}?$filter=lastModifiedDateTime ge {local}"))
        .await;
    assert!(
        by_local_clock.is_empty(),
        "the service's clock is two hours behind"
    );
    for bad in [
        "size gt 3",
        "lastModifiedDateTime ge yesterday",
        "createdDateTime",
    ] {
        let (status, _, body) = fabrikam.get(&format!("{inbox}?$filter={bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, _, _) = fabrikam.get(&format!("{inbox}?$expand=attachments")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// The fault of issue 9, point 1: a gateway that answers `504` after the
/// store imported the item. The item is there all the same, and counted.
#[tokio::test]
async fn imports_answered_504_after_they_were_stored() {
    let emu = two_tenants().await;
    let contoso = Graph::new(&emu, "contoso-tenant", "app-a", SECRET_A).await;
    let fabrikam = Graph::new(&emu, "fabrikam-tenant", "app-b", SECRET_B).await;
    let alice_mbx = contoso.mailbox_id(ALICE).await;
    let bob_mbx = fabrikam.mailbox_id(BOB).await;
    let items = contoso
        .all_pages(&format!(
            "/admin/exchange/mailboxes/{alice_mbx}/folders/inbox/items"
        ))
        .await;
    let data = export_data(&contoso, &alice_mbx, &[items[0]["id"].as_str().unwrap()]).await;
    let url = import_url(&fabrikam, &bob_mbx).await;
    emu.set_faults(Faults {
        enabled: true,
        applied_timeout_rate: 1.0,
        only_mailboxes: vec![bob_mbx.clone()],
        ..Faults::default()
    });
    let import = json!({ "FolderId": "inbox", "Mode": "create", "Data": data[0] });
    let (status, _, body) = send(fabrikam.http.post(&url).json(&import)).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(error_code(&body), "UnknownError");
    let stats = emu.stats(BOB).unwrap();
    assert_eq!((stats.applied_timeout_504, stats.imports), (1, 1));
    assert_eq!(
        emu.snapshot(BOB).unwrap().item_count(),
        1,
        "stored all the same"
    );
    // A refused import stores nothing and is answered as it is.
    let bad = json!({ "FolderId": "inbox", "Mode": "create", "Data": STANDARD.encode(b"x") });
    let (status, _, _) = send(fabrikam.http.post(&url).json(&bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(emu.stats(BOB).unwrap().applied_timeout_504, 1);
}

/// The delta query overview: a forgotten state token is answered `410
/// Gone` with a `Location`, or with "a 40X-series error" whose code is
/// `syncStateNotFound` (or `resyncRequired`, `SyncStateInvalid`).
#[tokio::test]
async fn forgotten_delta_tokens_in_every_documented_form() {
    let emu = two_tenants().await;
    let contoso = Graph::new(&emu, "contoso-tenant", "app-a", SECRET_A).await;
    let alice_mbx = contoso.mailbox_id(ALICE).await;
    let delta_url = format!("/admin/exchange/mailboxes/{alice_mbx}/folders/inbox/items/delta");
    let forms = [
        (SyncReset::Gone, StatusCode::GONE, "syncStateNotFound"),
        (
            SyncReset::NotFound,
            StatusCode::NOT_FOUND,
            "syncStateNotFound",
        ),
        (
            SyncReset::ResyncRequired,
            StatusCode::BAD_REQUEST,
            "resyncRequired",
        ),
        (
            SyncReset::SyncStateInvalid,
            StatusCode::BAD_REQUEST,
            "SyncStateInvalid",
        ),
    ];
    for (form, status, code) in forms {
        let (_, _, link) = contoso.delta_round(&delta_url, 10).await;
        emu.reset_delta_tokens_as(ALICE, form).unwrap();
        let (answered, headers, body) = contoso.get(&link).await;
        assert_eq!((answered, error_code(&body)), (status, code), "{form:?}");
        assert_eq!(
            headers.contains_key("location"),
            form == SyncReset::Gone,
            "{form:?}"
        );
        // A new round starts afresh.
        let (_, entries, _) = contoso.delta_round(&delta_url, 10).await;
        assert!(!entries.is_empty());
    }
}

/// The oracle of the end-to-end tests ([`MailboxSnapshot::differences`])
/// rejects a broken copy: an item missing, one twice, one altered, and a
/// copy of another folder class; it accepts copies whose export bytes and
/// creation times are their store's own.
#[tokio::test]
async fn the_copy_checker_rejects_broken_copies() {
    let emu = two_tenants().await;
    let contoso = Graph::new(&emu, "contoso-tenant", "app-a", SECRET_A).await;
    let fabrikam = Graph::new(&emu, "fabrikam-tenant", "app-b", SECRET_B).await;
    let alice_mbx = contoso.mailbox_id(ALICE).await;
    let bob_mbx = fabrikam.mailbox_id(BOB).await;
    let exported = migrate(&contoso, &alice_mbx, &fabrikam, &bob_mbx).await;
    let source = emu.snapshot(ALICE).unwrap();
    let exact = emu.snapshot(BOB).unwrap();
    assert!(source.differences(&exact).is_empty());
    assert_ne!(source.folders, exact.folders, "export bytes differ");

    let inbox = |snapshot: &mailwave_tests::graph_emulator::MailboxSnapshot| {
        snapshot.folder(&["Inbox"]).unwrap().items.clone()
    };
    let mut missing = exact.clone();
    let folder = missing
        .folders
        .iter_mut()
        .find(|f| f.path == ["Inbox"])
        .unwrap();
    folder.items.pop();
    let found = source.differences(&missing);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("missing from the copy"), "{found:?}");

    let mut duplicate = exact.clone();
    let folder = duplicate
        .folders
        .iter_mut()
        .find(|f| f.path == ["Inbox"])
        .unwrap();
    folder.items.push(inbox(&exact)[0].clone());
    let found = source.differences(&duplicate);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("1 item(s) extra in the copy"),
        "{found:?}"
    );

    let mut altered = exact.clone();
    let folder = altered
        .folders
        .iter_mut()
        .find(|f| f.path == ["Inbox"])
        .unwrap();
    folder.items[0].is_read = !folder.items[0].is_read;
    assert_eq!(
        source.differences(&altered).len(),
        2,
        "one missing, one extra"
    );
    let mut rekeyed = exact.clone();
    let folder = rekeyed
        .folders
        .iter_mut()
        .find(|f| f.path == ["Inbox"])
        .unwrap();
    folder.items[0].search_key = Some(vec![0; 16]);
    assert_eq!(source.differences(&rekeyed).len(), 2, "another search key");
    let mut reclassed = exact.clone();
    reclassed.folders[0].class = "IPF.Task".to_owned();
    assert_eq!(source.differences(&reclassed).len(), 1);
    let mut unfoldered = exact.clone();
    unfoldered.folders.retain(|f| f.path != ["Inbox"]);
    assert!(source.differences(&unfoldered)[0].contains("missing from the copy"));

    // The same on the service: a second import of an item is a duplicate.
    let data = exported.values().next().unwrap();
    let url = import_url(&fabrikam, &bob_mbx).await;
    let import = json!({ "FolderId": "inbox", "Mode": "create", "Data": data });
    let (status, _, _) = send(fabrikam.http.post(&url).json(&import)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!source.differences(&emu.snapshot(BOB).unwrap()).is_empty());
}
