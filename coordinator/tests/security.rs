//! The API's defences: a wave that would make a worker run a command, read
//! a file or an environment variable is refused; and the HTTP server's
//! limits (body size, timeouts).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use mailwave_common::queue::MemoryQueue;
use mailwave_common::store::{SqliteStore, Store};
use mailwave_coordinator::api::{ApiState, router};
use mailwave_coordinator::client::{Client, ClientOptions};
use mailwave_coordinator::settings::CoordinatorSettings;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tower::ServiceExt;

const TOKEN: &str = "security-test-token-0123456789";

fn app() -> (axum::Router, Arc<dyn Store>) {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let app = router(ApiState::new(store.clone(), TOKEN, Arc::new(Notify::new())));
    (app, store)
}

async fn post_wave(app: &axum::Router, name: &str, config_toml: &str) -> (StatusCode, Value) {
    let body = json!({
        "name": name,
        "config_toml": config_toml,
        "mailboxes_csv": "source,target\nu1@old,u1@new\n",
    });
    let request = Request::post("/api/v1/waves")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

const MAILDIR_TARGET: &str = "[target]\nkind = \"maildir\"\npath = \"/srv/mail/{mailbox}\"\n";
const XOAUTH2_SOURCE: &str =
    "[source]\nkind = \"imap\"\nhost = \"outlook.office365.com\"\nauth = \"xoauth2\"\n";
const ADMIN_SOURCE: &str =
    "[source]\nkind = \"imap\"\nhost = \"imap.old.example\"\nadmin_user = \"admin\"\n";
const OAUTH2_TABLE: &str = "[source.oauth2]\ntenant = \"t\"\nclient_id = \"c\"\n";

#[tokio::test]
async fn the_api_refuses_a_wave_naming_a_command_a_file_or_an_environment_variable() {
    let (app, store) = app();
    let cases = [
        (
            format!("{XOAUTH2_SOURCE}oauth2_token_command = \"id > /tmp/owned\"\n{MAILDIR_TARGET}"),
            "source.oauth2_token_command",
        ),
        (
            format!("{XOAUTH2_SOURCE}oauth2_token_file = \"/root/.token\"\n{MAILDIR_TARGET}"),
            "source.oauth2_token_file",
        ),
        (
            format!("{ADMIN_SOURCE}password_env = \"DATABASE_PASSWORD\"\n{MAILDIR_TARGET}"),
            "source.password_env",
        ),
        (
            format!("{ADMIN_SOURCE}password_file = \"/etc/shadow\"\n{MAILDIR_TARGET}"),
            "source.password_file",
        ),
        (
            format!(
                "{ADMIN_SOURCE}credential = \"src\"\nca_file = \"/etc/ssl/private/key.pem\"\n{MAILDIR_TARGET}"
            ),
            "source.ca_file",
        ),
        (
            format!(
                "{XOAUTH2_SOURCE}{OAUTH2_TABLE}client_secret_file = \"/etc/shadow\"\n{MAILDIR_TARGET}"
            ),
            "source.oauth2.client_secret_file",
        ),
        (
            format!(
                "{XOAUTH2_SOURCE}{OAUTH2_TABLE}client_secret_env = \"AWS_SECRET\"\n{MAILDIR_TARGET}"
            ),
            "source.oauth2.client_secret_env",
        ),
        (
            format!(
                "{XOAUTH2_SOURCE}{OAUTH2_TABLE}certificate_file = \"/c.pem\"\nprivate_key_file = \"/k.pem\"\n{MAILDIR_TARGET}"
            ),
            "source.oauth2.certificate_file",
        ),
        (
            format!(
                "{ADMIN_SOURCE}credential = \"src\"\n{MAILDIR_TARGET}[credentials.src]\ntoken_command = \"id\"\n"
            ),
            "credentials",
        ),
    ];
    for (config, key) in &cases {
        let (status, body) = post_wave(&app, key, config).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{key}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{key}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(key), "{key}: {message}");
        assert!(message.contains("not accepted"), "{key}: {message}");
    }
    assert!(
        store.waves().await.unwrap().is_empty(),
        "a refused wave was stored"
    );

    // Named credentials are what a wave carries instead.
    let (status, body) = post_wave(
        &app,
        "admin",
        &format!("{ADMIN_SOURCE}credential = \"src-admin\"\n{MAILDIR_TARGET}"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = post_wave(
        &app,
        "app",
        &format!("{XOAUTH2_SOURCE}{OAUTH2_TABLE}credential = \"exo-app\"\n{MAILDIR_TARGET}"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// A coordinator served on loopback by `serve::run` (SQLite store, memory
/// queue) with `adjust` applied to its settings; stopped when dropped.
struct Served {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    dir: tempfile::TempDir,
}

impl Served {
    async fn start(adjust: impl FnOnce(&mut CoordinatorSettings, &Path)) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let mut settings = CoordinatorSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: String::new(),
            database_ca_file: None,
            amqp_url: String::new(),
            amqp_ca_file: None,
            queue_prefix: "security-test".into(),
            token_env: None,
            token_file: Some(token_file),
            reaper_interval_secs: 60,
            dispatch_interval_ms: 1000,
            header_timeout_secs: 10,
            request_timeout_secs: 60,
            max_connections: 64,
            max_body_bytes: 64 * 1024 * 1024,
            tls_certificate_file: None,
            tls_key_file: None,
        };
        adjust(&mut settings, dir.path());
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(mailwave_coordinator::serve::run(
            settings,
            store,
            Arc::new(MemoryQueue::default()),
            listener,
            async move {
                let _ = stopped.await;
            },
        ));
        Served {
            addr,
            stop: Some(stop),
            dir,
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Reads until the server closes the connection; `None` if it is still
/// open after `limit`.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buffer = [0u8; 1024];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| received)
}

#[tokio::test]
async fn a_slow_loris_client_is_cut_off_after_the_header_timeout() {
    let served = Served::start(|settings, _| settings.header_timeout_secs = 1).await;

    // Headers begun, never finished, no token: closed, never answered 200.
    let mut slow = tokio::net::TcpStream::connect(served.addr).await.unwrap();
    slow.write_all(b"GET /api/v1/waves HTTP/1.1\r\nHost: coordinator\r\nX-Slow: 1")
        .await
        .unwrap();
    let answer = closed_within(&mut slow, Duration::from_secs(15)).await;
    let answer = answer.expect("the connection was still open 15 s after a 1 s header timeout");
    let text = String::from_utf8_lossy(&answer);
    assert!(!text.contains("200 OK"), "{text}");

    // A connection that sends nothing at all is closed too.
    let mut idle = tokio::net::TcpStream::connect(served.addr).await.unwrap();
    assert!(
        closed_within(&mut idle, Duration::from_secs(15))
            .await
            .is_some(),
        "an idle connection was still open 15 s after a 1 s header timeout"
    );

    // A prompt client is served as before.
    let mut prompt = tokio::net::TcpStream::connect(served.addr).await.unwrap();
    prompt
        .write_all(b"GET /api/v1/healthz HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_within(&mut prompt, Duration::from_secs(15))
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200 OK"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_to_be_accepted() {
    let served = Served::start(|settings, _| {
        settings.max_connections = 1;
        settings.header_timeout_secs = 2;
    })
    .await;
    // The one slot is held by a connection that sends nothing…
    let _holder = tokio::net::TcpStream::connect(served.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // …so a second client gets no answer until the slot is freed by the
    // header timeout of the first.
    let started = tokio::time::Instant::now();
    let mut second = tokio::net::TcpStream::connect(served.addr).await.unwrap();
    second
        .write_all(b"GET /api/v1/healthz HTTP/1.1\r\nHost: c\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_within(&mut second, Duration::from_secs(15))
        .await
        .expect("the second client was never served");
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200 OK"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "served at once: the connection limit did not hold"
    );
}

#[tokio::test]
async fn an_oversized_body_is_answered_413_payload_too_large() {
    let (app, store) = app();
    let body = format!(
        "{{\"name\": \"big\", \"config_toml\": \"\", \"mailboxes_csv\": \"{}\"}}",
        "u@old,u@new\\n".repeat(6 * 1024 * 1024)
    );
    let request = Request::post("/api/v1/waves")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    assert!(store.waves().await.unwrap().is_empty());

    // The limit is a setting of the served API.
    let served = Served::start(|settings, _| settings.max_body_bytes = 1024).await;
    let client = Client::new(&format!("http://{}", served.addr), Some(TOKEN.into())).unwrap();
    let error = client
        .create("w", &"x".repeat(4096), "source,target\nu@old,u@new\n")
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("payload_too_large"), "{error}");
}

/// A test CA and a certificate it signed for `localhost` and 127.0.0.1,
/// made with the openssl command: (CA certificate, certificate, key).
fn test_certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let path = |name: &str| dir.join(name).display().to_string();
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=mailwave test CA",
            "-keyout",
            &path("ca.key"),
            "-out",
            &path("ca.pem"),
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &path("api.key"),
            "-out",
            &path("api.csr"),
        ],
        &[
            "x509",
            "-req",
            "-in",
            &path("api.csr"),
            "-CA",
            &path("ca.pem"),
            "-CAkey",
            &path("ca.key"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &path("ext.cnf"),
            "-out",
            &path("api.pem"),
        ],
    ];
    for args in steps {
        let made = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("the openssl command");
        assert!(
            made.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    (dir.join("ca.pem"), dir.join("api.pem"), dir.join("api.key"))
}

#[tokio::test]
async fn the_api_serves_https_with_its_certificate() {
    let served = Served::start(|settings, dir| {
        let (_, certificate, key) = test_certificate(dir);
        settings.tls_certificate_file = Some(certificate);
        settings.tls_key_file = Some(key);
    })
    .await;
    let options = ClientOptions {
        ca_file: Some(served.dir.path().join("ca.pem")),
        ..ClientOptions::default()
    };
    let https = format!("https://localhost:{}", served.addr.port());
    let client = Client::with_options(&https, Some(TOKEN.into()), &options).unwrap();
    assert!(client.list().await.unwrap().is_empty());

    // Without the certificate's CA, the client refuses the server…
    let untrusting = Client::new(&https, Some(TOKEN.into())).unwrap();
    let error = untrusting.list().await.unwrap_err();
    assert!(error.code().is_none(), "{error}");
    // …and plain HTTP gets no answer from the TLS port.
    let mut plain = tokio::net::TcpStream::connect(served.addr).await.unwrap();
    plain
        .write_all(b"GET /api/v1/healthz HTTP/1.1\r\nHost: c\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_within(&mut plain, Duration::from_secs(15))
        .await
        .expect("the TLS port kept a plain-HTTP connection open");
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
}

#[tokio::test]
async fn the_cli_refuses_to_send_the_token_over_plain_http_to_another_machine() {
    // TEST-NET-1: never contacted (the refusal comes before any I/O).
    let remote = "http://192.0.2.10:8080";
    let error = Client::new(remote, Some(TOKEN.into())).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("refusing to send the API token over plain http://"),
        "{message}"
    );
    assert!(message.contains("--insecure-http"), "{message}");
    let insecure = ClientOptions {
        insecure_http: true,
        ..ClientOptions::default()
    };
    assert!(Client::with_options(remote, Some(TOKEN.into()), &insecure).is_ok());
    assert!(Client::new("https://192.0.2.10:8443", Some(TOKEN.into())).is_ok());
    for loopback in [
        "http://127.0.0.1:8080",
        "http://localhost:8080",
        "http://[::1]:8080",
    ] {
        assert!(
            Client::new(loopback, Some(TOKEN.into())).is_ok(),
            "{loopback}"
        );
    }

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_mailwave"))
        .args(["wave", "list", "--server", remote])
        .env("MAILWAVE_TOKEN", TOKEN)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refusing to send the API token"),
        "{stderr}"
    );
}
