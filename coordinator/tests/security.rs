//! The API's defences: a wave that would make a worker run a command, read
//! a file or an environment variable is refused; and the HTTP server's
//! limits (body size, timeouts).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use mailwave_common::store::{SqliteStore, Store};
use mailwave_coordinator::api::{ApiState, router};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tower::ServiceExt;

const TOKEN: &str = "security-test-token-0123456789";

fn app() -> (axum::Router, Arc<dyn Store>) {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let app = router(ApiState::new(
        Arc::clone(&store),
        TOKEN,
        Arc::new(Notify::new()),
    ));
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
