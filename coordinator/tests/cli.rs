//! The operator CLI (`mailwave wave …`) against a real coordinator API on
//! 127.0.0.1 (an in-memory SQLite store and a memory queue, the dispatcher
//! running): through the `client` functions, and through the `mailwave`
//! binary itself.

use std::sync::Arc;
use std::time::Duration;

use mailwave_common::model::{MailboxRecord, MailboxState, PassStats, WaveId};
use mailwave_common::queue::MemoryQueue;
use mailwave_common::store::{PassOutcome, SqliteStore, Store};
use mailwave_coordinator::api::Command;
use mailwave_coordinator::client::{self, Client, ClientError};
use mailwave_coordinator::settings::CoordinatorSettings;
use serde_json::Value;

const TOKEN: &str = "cli-test-token-0123456789";

const CONFIG: &str = "[source]\nkind = \"imap\"\nhost = \"imap.old.example\"\n\
    admin_user = \"admin\"\ncredential = \"source-admin\"\n\
    [target]\nkind = \"maildir\"\npath = \"/srv/mail/{mailbox}\"\n\
    [migration]\nmax_concurrent_mailboxes = 2\nmax_attempts = 2\n";

/// Line 4 is bad: one column only.
const CSV: &str = "source,target\nu1@old,u1@new\nu2@old,u2@new\nbad row\nu3@old,u3@new\n";

/// A coordinator serving on 127.0.0.1:<ephemeral>, stopped on drop.
struct Coordinator {
    url: String,
    store: Arc<dyn Store>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Coordinator {
    async fn start() -> Coordinator {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let settings = CoordinatorSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: String::new(),
            database_ca_file: None,
            amqp_url: String::new(),
            amqp_ca_file: None,
            queue_prefix: "cli-test".into(),
            token_env: None,
            token_file: Some(token_file),
            reaper_interval_secs: 60,
            dispatch_interval_ms: 50,
            header_timeout_secs: 10,
            request_timeout_secs: 60,
            max_connections: 64,
            max_body_bytes: 64 * 1024 * 1024,
            tls_certificate_file: None,
            tls_key_file: None,
        };
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(mailwave_coordinator::serve::run(
            settings,
            store.clone(),
            Arc::new(MemoryQueue::default()),
            listener,
            async move {
                let _ = stopped.await;
            },
        ));
        Coordinator {
            url,
            store,
            stop: Some(stop),
            _dir: dir,
        }
    }

    fn client(&self) -> Client {
        Client::new(&self.url, Some(TOKEN.into())).unwrap()
    }

    /// Waits until the dispatcher queued `n` mailboxes of the wave.
    async fn queued(&self, wave: WaveId, n: usize) -> Vec<MailboxRecord> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let queued: Vec<_> = self
                .store
                .mailboxes(wave)
                .await
                .unwrap()
                .into_iter()
                .filter(|m| m.state == MailboxState::Queued)
                .collect();
            if queued.len() >= n {
                return queued;
            }
            assert!(tokio::time::Instant::now() < deadline, "nothing dispatched");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What a worker does: runs the pass and records how it ended.
    async fn work(&self, mailbox: &MailboxRecord, error: Option<&str>) {
        let lease = self
            .store
            .acquire_lease(mailbox.id, mailbox.pass, "worker", Duration::from_secs(60))
            .await
            .unwrap()
            .expect("the lease is free");
        assert!(self.store.start_pass(&lease).await.unwrap());
        let outcome = PassOutcome {
            state: if error.is_some() {
                MailboxState::Failed
            } else {
                MailboxState::Completed
            },
            error: error.map(Into::into),
            stats: PassStats {
                items_copied: 10,
                bytes_copied: 3 * 1024 * 1024,
                items_skipped: 1,
                ..PassStats::default()
            },
        };
        self.store.finish_pass(&lease, &outcome).await.unwrap();
        self.store.release_lease(&lease).await.unwrap();
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An address where nothing listens.
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test]
async fn client_drives_a_wave() {
    let coordinator = Coordinator::start().await;
    let client = coordinator.client();

    // Create: the bad row is reported with its line number.
    let created = client.create("spring", CONFIG, CSV).await.unwrap();
    assert_eq!(created.mailboxes, 3);
    let text = client::render_created(&created);
    assert!(
        text.contains(&format!("wave {} \"spring\"", created.id)),
        "{text}"
    );
    assert!(text.contains("3 mailboxes"), "{text}");
    assert!(text.contains("line 4: "), "{text}");
    let error = client.create("spring", CONFIG, CSV).await.unwrap_err();
    assert_eq!(error.code(), Some("conflict"), "{error}");
    assert!(error.to_string().starts_with("conflict: "), "{error}");

    // Names and ids resolve; an unknown name is a clear error.
    let wave = client.resolve("spring").await.unwrap();
    assert_eq!(wave, created.id);
    assert_eq!(client.resolve(&wave.to_string()).await.unwrap(), wave);
    let error = client.resolve("autumn").await.unwrap_err();
    assert_eq!(error.code(), Some("not_found"));
    assert!(error.to_string().contains("\"autumn\""), "{error}");

    // Commands: start, then a conflict on a second start.
    let summary = client.command(wave, Command::Start).await.unwrap();
    assert_eq!(
        client::render_command(Command::Start, &summary),
        format!("start wave {wave} \"spring\": now running\n")
    );
    let error = client.command(wave, Command::Start).await.unwrap_err();
    assert_eq!(error.code(), Some("conflict"));

    // Workers finish one mailbox and fail another.
    let queued = coordinator.queued(wave, 2).await;
    coordinator.work(&queued[0], None).await;
    coordinator
        .work(&queued[1], Some("login refused for u2@old"))
        .await;

    let (screen, over) = client::status_screen(&client, wave, 0).await.unwrap();
    assert!(!over);
    assert!(screen.contains("state      running"), "{screen}");
    assert!(screen.contains("1/3 mailboxes completed"), "{screen}");
    assert!(
        screen.contains("completed 1  with errors 0  failed 1"),
        "{screen}"
    );
    assert!(
        screen.contains("20 items, 6.0 MiB   skipped items 2"),
        "{screen}"
    );
    assert!(
        screen.contains("failures (1):\n  u2@old → u2@new (pass 1): login refused for u2@old"),
        "{screen}"
    );
    let header = screen
        .lines()
        .find(|l| l.starts_with("MAILBOX"))
        .expect("the per-mailbox table");
    for column in ["STATE", "PASS", "ATTEMPTS", "COPIED", "BYTES", "LAST ERROR"] {
        assert!(header.contains(column), "{header}");
    }
    let row = |source: &str| {
        screen
            .lines()
            .find(|l| l.starts_with(source))
            .unwrap_or_else(|| panic!("no row for {source}: {screen}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(row("u1@old"), "u1@old → u1@new completed 1 1 10 3.0 MiB");
    assert_eq!(
        row("u2@old"),
        "u2@old → u2@new failed 1 1 10 3.0 MiB login refused for u2@old"
    );

    // The list counts what the status counts.
    let rows = client.list().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].mailboxes, rows[0].completed, rows[0].failed),
        (3, 1, 1)
    );

    // Pause, resume, cancel; a watch of a cancelled wave draws once and ends.
    for command in [Command::Pause, Command::Resume, Command::Cancel] {
        client.command(wave, command).await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        client::watch(&client, wave, 0, Duration::from_millis(10), false, &mut out),
    )
    .await
    .expect("the watch ends with the wave")
    .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert_eq!(out.matches("state      cancelled").count(), 1, "{out}");

    // A wrong token; no coordinator at all.
    let intruder = Client::new(&coordinator.url, Some("not-the-token".into())).unwrap();
    let error = intruder.waves().await.unwrap_err();
    assert_eq!(error.code(), Some("unauthorized"));
    assert!(error.to_string().starts_with("unauthorized: "), "{error}");
    let url = dead_url().await;
    let error = Client::new(&url, Some(TOKEN.into()))
        .unwrap()
        .waves()
        .await
        .unwrap_err();
    assert!(
        matches!(error, ClientError::Unreachable { .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with(&format!("cannot reach the coordinator at {url}")),
        "{error}"
    );
    assert!(Client::new("ftp://x", None).is_err());
}

/// Runs the `mailwave` binary: exit code, stdout, stderr.
async fn mailwave(server: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_mailwave"))
        .args(args)
        .env("MAILWAVE_SERVER", server)
        .env("MAILWAVE_TOKEN", token)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[tokio::test]
async fn binary_drives_a_wave() {
    let coordinator = Coordinator::start().await;
    let url = coordinator.url.as_str();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("wave.toml");
    let csv = dir.path().join("mailboxes.csv");
    std::fs::write(&config, CONFIG).unwrap();
    std::fs::write(&csv, CSV).unwrap();
    let (config, csv) = (config.to_str().unwrap(), csv.to_str().unwrap());

    let (code, out, err) = mailwave(
        url,
        TOKEN,
        &[
            "wave",
            "create",
            "summer",
            "--config",
            config,
            "--mailboxes",
            csv,
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("wave 1 \"summer\" created"), "{out}");
    assert!(out.contains("3 mailboxes"), "{out}");
    assert!(out.contains("line 4: "), "{out}");

    let (code, out, err) = mailwave(url, TOKEN, &["wave", "start", "summer"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "start wave 1 \"summer\": now running\n");
    let queued = coordinator.queued(1, 2).await;
    coordinator.work(&queued[0], None).await;
    // The freed slot goes to the third mailbox.
    coordinator.queued(1, 2).await;

    // --server after the subcommand works as well as the environment.
    let (code, out, err) = mailwave(
        "http://127.0.0.1:1",
        TOKEN,
        &["wave", "status", "summer", "--server", url],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1/3 mailboxes completed"), "{out}");
    assert!(
        out.contains("pending 0  queued 2  running 0  completed 1  with errors 0  failed 0"),
        "{out}"
    );
    assert!(out.contains("10 items, 3.0 MiB"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("MAILBOX")), "{out}");
    assert!(out.contains("u3@old → u3@new"), "{out}");

    let (code, out, _) = mailwave(url, TOKEN, &["wave", "status", "1", "--json"]).await;
    assert_eq!(code, 0);
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["counts"]["completed"], 1);
    let (code, out, _) = mailwave(url, TOKEN, &["wave", "list"]).await;
    assert_eq!(code, 0);
    let line = out.lines().nth(1).unwrap();
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>(),
        ["1", "summer", "running", "3", "1", "0"],
        "{out}"
    );
    let (code, out, _) = mailwave(url, TOKEN, &["wave", "list", "--json"]).await;
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["name"], "summer");

    // Errors: exit 1 with one clear line.
    let (code, out, err) = mailwave(url, "wrong-token", &["wave", "list"]).await;
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert_eq!(err, "error: unauthorized: wrong token\n");
    let (code, _, err) = mailwave(url, TOKEN, &["wave", "pause", "winter"]).await;
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: not_found: no wave with the id or name \"winter\""),
        "{err}"
    );
    let (code, _, err) = mailwave(url, TOKEN, &["wave", "resume", "summer"]).await;
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: conflict: cannot resume wave 1"),
        "{err}"
    );
    let dead = dead_url().await;
    let (code, _, err) = mailwave(&dead, TOKEN, &["wave", "list"]).await;
    assert_eq!(code, 1);
    assert!(
        err.starts_with(&format!("error: cannot reach the coordinator at {dead}")),
        "{err}"
    );

    // Cancelled: --watch draws once and exits 0.
    let (code, _, err) = mailwave(url, TOKEN, &["wave", "cancel", "summer"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = mailwave(url, TOKEN, &["wave", "status", "summer", "--watch"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("state      cancelled"), "{out}");
}
