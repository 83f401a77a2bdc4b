//! Distributed mode end to end with named credentials: the real
//! `mailwave coordinator serve` and `mailwave-worker serve` on loopback
//! PostgreSQL and RabbitMQ, Dovecot on both sides. The wave names its
//! credentials; only the worker's settings (and its environment) say where
//! the secrets are, and a credential goes only to the hosts it lists.

use std::hash::{BuildHasher, RandomState};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mailwave_tests::harness::{binary, dovecot_named_endpoint as named_endpoint, folder_on};
use mailwave_tests::verify;
use mailwave_tests::{CorpusSpec, DovecotOptions, DovecotServer, corpus};
use serde_json::{Value, json};

const ADMIN_DB: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const TOKEN: &str = "security-e2e-token-0123456789";
/// Set in the worker's environment only: the target's master password.
const TARGET_PASSWORD_VAR: &str = "MAILWAVE_SECURITY_TEST_TARGET_PW";

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{:016x}",
        RandomState::new().hash_one((nanos, std::process::id()))
    )
}

async fn admin() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(ADMIN_DB, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL on 127.0.0.1:5432: {e}"));
    tokio::spawn(connection);
    client
}

/// Deletes the queues and the dead-letter exchange of `prefix`.
async fn delete_queues(prefix: &str) {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let Ok(connection) =
        lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default()).await
    else {
        return;
    };
    let Ok(channel) = connection.create_channel().await else {
        return;
    };
    let dead = format!("{prefix}.jobs.dead");
    for queue in [format!("{prefix}.jobs"), dead.clone()] {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete(dead.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    let _ = connection.close(0, "done".into()).await;
}

/// The processes of the test, killed when it ends; its database dropped.
struct Stack {
    database: String,
    queue_prefix: String,
    children: Vec<Child>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let database = self.database.clone();
        let prefix = self.queue_prefix.clone();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let _ = admin()
                        .await
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                        .await;
                    delete_queues(&prefix).await;
                });
        })
        .join()
        .unwrap();
    }
}

async fn api(
    http: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http
        .request(method, format!("{base}/api/v1{path}"))
        .bearer_auth(TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the coordinator answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn log_tail(dir: &Path) -> String {
    ["coordinator", "worker"]
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
            let tail: Vec<_> = text.lines().rev().take(30).collect();
            format!(
                "--- {name}\n{}\n",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_distributed_wave_runs_with_the_workers_named_credentials_only() {
    let users: Vec<String> = (1..=2).map(|i| format!("sec{i:02}")).collect();
    let users_ref: Vec<&str> = users.iter().map(String::as_str).collect();
    let dovecot = |separator: char| {
        let mut options = DovecotOptions::default().separator(separator);
        for user in &users {
            options = options.user(user, &format!("pw-{user}"));
        }
        DovecotServer::start(options).expect("start Dovecot")
    };
    let source = dovecot('.');
    let target = dovecot('/');
    let spec = CorpusSpec::for_server(&source, 16).messages(12).folders(2);
    corpus::load_users(&source, &users_ref, &spec).unwrap();

    let database = format!("mailwave_security_{}", unique());
    admin()
        .await
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .unwrap();
    let prefix = format!("mailwave-security-{}", unique());
    let mut stack = Stack {
        database: database.clone(),
        queue_prefix: prefix.clone(),
        children: Vec::new(),
    };
    let dir = tempfile::Builder::new()
        .prefix("mailwave-security-")
        .tempdir()
        .unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let source_password = dir.path().join("source.pw");
    std::fs::write(&source_password, source.master_credentials().1).unwrap();
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let db = format!("postgres://postgres@127.0.0.1:5432/{database}");
    let settings = dir.path().join("settings.toml");
    std::fs::write(
        &settings,
        format!(
            "[coordinator]\nlisten = \"{listen}\"\ndatabase_url = \"{db}\"\namqp_url = \"{AMQP_URL}\"\n\
             queue_prefix = \"{prefix}\"\ntoken_file = \"{token}\"\nreaper_interval_secs = 2\n\
             dispatch_interval_ms = 200\n\
             [worker]\ndatabase_url = \"{db}\"\namqp_url = \"{AMQP_URL}\"\nqueue_prefix = \"{prefix}\"\n\
             lease_ttl_secs = 10\nconcurrency = 2\n\
             [credentials.source-master]\nhosts = [\"127.0.0.1\"]\npassword_file = \"{source_pw}\"\n\
             [credentials.target-master]\nhosts = [\"127.0.0.1\"]\npassword_env = \"{TARGET_PASSWORD_VAR}\"\n",
            token = token.display(),
            source_pw = source_password.display(),
        ),
    )
    .unwrap();
    let spawn = |program: &str, args: &[&str], log: &str, env: &[(&str, &str)]| {
        Command::new(binary(program))
            .args(args)
            .arg("--settings")
            .arg(&settings)
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                "warn,mailwave_worker=info,mailwave_coordinator=info",
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(format!("{log}.log"))).unwrap())
            .spawn()
            .unwrap()
    };
    stack.children.push(spawn(
        "mailwave",
        &["coordinator", "serve"],
        "coordinator",
        &[],
    ));
    stack.children.push(spawn(
        "mailwave-worker",
        &["serve"],
        "worker",
        &[(TARGET_PASSWORD_VAR, target.master_credentials().1)],
    ));

    let http = reqwest::Client::new();
    let base = format!("http://{listen}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http
        .get(format!("{base}/api/v1/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the coordinator never answered:\n{}",
            log_tail(dir.path())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let csv: String = std::iter::once("source,target\n".to_owned())
        .chain(users.iter().map(|u| format!("{u},{u}\n")))
        .collect();
    let create = |name: &str, config: String| json!({"name": name, "config_toml": config, "mailboxes_csv": csv});

    // A wave carrying a command is refused by the API, naming the key.
    let command = format!(
        "[source]\nkind = \"imap\"\nhost = \"127.0.0.1\"\nauth = \"xoauth2\"\n\
         oauth2_token_command = \"id > {}/owned\"\n[target]\n{}",
        dir.path().display(),
        named_endpoint(&target, "127.0.0.1", "target-master")
    );
    let (status, body) = api(
        &http,
        &base,
        reqwest::Method::POST,
        "/waves",
        Some(create("rce", command)),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("source.oauth2_token_command"),
        "{body}"
    );

    // Named credentials: the worker finds the secrets in its own settings.
    let config = format!(
        "[source]\n{}[target]\n{}[migration]\nmax_concurrent_mailboxes = 2\n",
        named_endpoint(&source, "127.0.0.1", "source-master"),
        named_endpoint(&target, "127.0.0.1", "target-master"),
    );
    let (status, created) = api(
        &http,
        &base,
        reqwest::Method::POST,
        "/waves",
        Some(create("named", config)),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let wave = created["id"].as_i64().unwrap();
    let (status, body) = api(
        &http,
        &base,
        reqwest::Method::POST,
        &format!("/waves/{wave}/start"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // The same credential asked for a host it does not list: refused by
    // the worker, the mailboxes fail with the reason.
    let elsewhere = format!(
        "[source]\n{}[target]\n{}",
        named_endpoint(&source, "localhost", "source-master"),
        named_endpoint(&target, "127.0.0.1", "target-master"),
    );
    let (status, created) = api(
        &http,
        &base,
        reqwest::Method::POST,
        "/waves",
        Some(create("elsewhere", elsewhere)),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let refused_wave = created["id"].as_i64().unwrap();
    let (status, body) = api(
        &http,
        &base,
        reqwest::Method::POST,
        &format!("/waves/{refused_wave}/start"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let deadline = Instant::now() + Duration::from_secs(180);
    let mailboxes = users.len() as u64;
    let wait_for = |wave: i64, state: &'static str| {
        let (http, base, dir) = (&http, &base, dir.path());
        async move {
            loop {
                let (code, status) = api(
                    http,
                    base,
                    reqwest::Method::GET,
                    &format!("/waves/{wave}"),
                    None,
                )
                .await;
                if code == 200 && status["counts"][state] == mailboxes {
                    return status;
                }
                assert!(
                    Instant::now() < deadline,
                    "wave {wave}: not all {state}: {status}\n{}",
                    log_tail(dir)
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    let status = wait_for(wave, "completed").await;
    assert_eq!(status["counts"]["failed"], 0, "{status}");
    for user in &users {
        let report = verify::compare(
            &source.master_endpoint(user),
            &target.master_endpoint(user),
            folder_on(target.separator()),
        )
        .await
        .expect("read both sides");
        assert!(
            report.source_messages > 0,
            "{user}: the source has messages"
        );
        report.assert_exact();
    }
    let refused = wait_for(refused_wave, "failed").await;
    for error in refused["errors"].as_array().unwrap() {
        let message = error["error"].as_str().unwrap();
        assert!(
            message.contains("credentials.source-master may not be sent to localhost"),
            "{message}"
        );
    }
    assert!(
        !dir.path().join("owned").exists(),
        "the refused wave's command ran"
    );
    drop(stack);
}
