//! Control-plane benchmark (issue 3): plans a wave of N mailboxes (100,000
//! by default) against the real PostgreSQL and RabbitMQ on 127.0.0.1 and
//! times
//!
//! - the import (`POST /api/v1/waves` with the CSV),
//! - the publishing (`start` until the jobs queue holds every job),
//! - `GET /api/v1/waves/{id}` (wave status) latency, 50 requests after warm-up,
//! - `GET /api/v1/waves/{id}/mailboxes`, for information.
//!
//! The coordinator runs in-process (`serve::run`) over a database of its own
//! (`mailwave_bench_<hex>`, dropped at the end) and queues of their own
//! (prefix `mailwave-bench-<pid>-<nanos>`, deleted at the end). Prints a
//! Markdown table. Run with `tests/bench/control-plane.sh`
//! (`cargo bench -p mailwave-coordinator --bench control_plane -- [N]`).

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use mailwave_common::queue::{JobQueue, QueueNames, RabbitQueue};
use mailwave_common::store::{PostgresStore, Store};
use mailwave_coordinator::settings::CoordinatorSettings;
use serde_json::{Value, json};

const TOKEN: &str = "bench-token-0123456789";
const PG_ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";
const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

const IMPORT_TARGET: Duration = Duration::from_secs(10);
const STATUS_TARGET: Duration = Duration::from_millis(100);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; the first number is the wave's size.
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .try_init();

    let (admin, connection) = tokio_postgres::connect(PG_ADMIN, tokio_postgres::NoTls)
        .await
        .map_err(|e| anyhow::anyhow!("PostgreSQL is not reachable on 127.0.0.1:5432: {e}"))?;
    tokio::spawn(connection);
    let db = format!(
        "mailwave_bench_{:016x}",
        RandomState::new().hash_one(std::process::id())
    );
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await?;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos();
    let prefix = format!("mailwave-bench-{}-{nanos}", std::process::id());
    let names = QueueNames::with_prefix(&prefix);

    let outcome = tokio::spawn(bench(n, db.clone(), names.clone())).await;

    // Clean up whatever happened.
    if let Ok(amqp) = Connection::connect(AMQP, ConnectionProperties::default()).await {
        if let Ok(channel) = amqp.create_channel().await {
            for queue in [&names.jobs, &names.dead_letters] {
                let _ = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            let _ = channel
                .exchange_delete(
                    names.dead_letters.as_str().into(),
                    ExchangeDeleteOptions::default(),
                )
                .await;
        }
        let _ = amqp.close(200, "bye".into()).await;
    }
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await?;
    match outcome {
        Ok(result) => result,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

struct Row {
    what: String,
    figure: String,
    target: String,
    ok: Option<bool>,
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn bench(n: usize, db: String, names: QueueNames) -> anyhow::Result<()> {
    let url = format!("postgres://postgres@127.0.0.1:5432/{db}");
    let store = PostgresStore::connect_and_migrate(&url).await?;
    let store: Arc<dyn Store> = Arc::new(store);
    let queue: Arc<dyn JobQueue> = Arc::new(RabbitQueue::connect(AMQP, names.clone()).await?);

    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n"))?;
    let settings = CoordinatorSettings {
        listen: "127.0.0.1:0".parse()?,
        database_url: url.clone(),
        database_ca_file: None,
        amqp_url: AMQP.into(),
        amqp_ca_file: None,
        queue_prefix: String::new(),
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}/api/v1", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mailwave_coordinator::serve::run(
        settings,
        store,
        queue,
        listener,
        async move {
            let _ = stopped.await;
        },
    ));

    let http = reqwest::Client::new();
    let auth = format!("Bearer {TOKEN}");

    // The CSV and the request body.
    let t = Instant::now();
    let mut csv = String::with_capacity(n * 48 + 16);
    csv.push_str("source,target\n");
    for i in 0..n {
        csv.push_str(&format!(
            "user{i:06}@old.example.com,user{i:06}@new.example.com\n"
        ));
    }
    let config = format!(
        "[source]\nkind = \"imap\"\nhost = \"imap.old.example\"\nadmin_user = \"admin\"\n\
         credential = \"source-admin\"\n\
         [target]\nkind = \"maildir\"\npath = \"/srv/mail/{{mailbox}}\"\n\
         [migration]\nmax_concurrent_mailboxes = {n}\n"
    );
    let body = json!({"name": "bench", "config_toml": config, "mailboxes_csv": csv}).to_string();
    eprintln!(
        "generated a CSV of {n} mailboxes ({:.1} MB) in {}",
        csv.len() as f64 / 1e6,
        ms(t.elapsed())
    );

    // (a) import.
    let t = Instant::now();
    let response = http
        .post(format!("{base}/waves"))
        .header("authorization", &auth)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = response.status();
    let created: Value = response.json().await?;
    let import = t.elapsed();
    anyhow::ensure!(status.as_u16() == 201, "create: {status} {created}");
    anyhow::ensure!(created["mailboxes"] == n, "created {created}");
    let wave = created["id"].as_i64().unwrap();
    eprintln!("import: {}", ms(import));

    // (b) start until the queue holds every job.
    let amqp = Connection::connect(AMQP, ConnectionProperties::default()).await?;
    let channel = amqp.create_channel().await?;
    let t = Instant::now();
    let response = http
        .post(format!("{base}/waves/{wave}/start"))
        .header("authorization", &auth)
        .send()
        .await?;
    anyhow::ensure!(
        response.status().is_success(),
        "start: {}",
        response.status()
    );
    let deadline = t + Duration::from_secs(600);
    let mut last = 0;
    let mut last_report = Instant::now();
    loop {
        let declared = channel
            .queue_declare(
                names.jobs.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let count = declared.message_count() as usize;
        if count >= n {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "  … {count} jobs on the queue after {:.1} s",
                t.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        anyhow::ensure!(Instant::now() < deadline, "only {count} jobs after 600 s");
        last = count;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = last;
    let publish = t.elapsed();
    let _ = amqp.close(200, "bye".into()).await;
    eprintln!("publish: {}", ms(publish));

    // (c) wave status latency.
    let status_url = format!("{base}/waves/{wave}");
    let mut samples = Vec::new();
    for i in 0..60 {
        let t = Instant::now();
        let response = http
            .get(&status_url)
            .header("authorization", &auth)
            .send()
            .await?;
        let ok = response.status().is_success();
        let body: Value = response.json().await?;
        let elapsed = t.elapsed();
        anyhow::ensure!(ok, "status: {body}");
        if i == 0 {
            anyhow::ensure!(body["mailboxes"] == n, "status: {body}");
        }
        if i >= 10 {
            samples.push(elapsed);
        }
    }
    samples.sort();
    let p = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    let (p50, p95, max) = (p(0.50), p(0.95), *samples.last().unwrap());

    // (d) the mailbox list.
    let t = Instant::now();
    let response = http
        .get(format!("{base}/waves/{wave}/mailboxes"))
        .header("authorization", &auth)
        .send()
        .await?;
    let bytes = response.bytes().await?;
    let list = t.elapsed();
    let listed: Vec<Value> = serde_json::from_slice(&bytes)?;
    anyhow::ensure!(listed.len() == n, "listed {}", listed.len());

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), server).await???;

    let plan = import + publish;
    let rows = [
        Row {
            what: format!("import: `POST /waves`, CSV of {n} mailboxes"),
            figure: ms(import),
            target: String::new(),
            ok: None,
        },
        Row {
            what: format!("publish: `start` until {n} jobs are on the queue"),
            figure: ms(publish),
            target: String::new(),
            ok: None,
        },
        Row {
            what: "**plan a wave** (import + publish)".into(),
            figure: ms(plan),
            target: "< 10 s".into(),
            ok: Some(plan < IMPORT_TARGET),
        },
        Row {
            what: "`GET /waves/{id}` (wave status) p50, 50 requests".into(),
            figure: ms(p50),
            target: "< 100 ms".into(),
            ok: Some(p50 < STATUS_TARGET),
        },
        Row {
            what: "`GET /waves/{id}` p95".into(),
            figure: ms(p95),
            target: "< 100 ms".into(),
            ok: Some(p95 < STATUS_TARGET),
        },
        Row {
            what: "`GET /waves/{id}` max".into(),
            figure: ms(max),
            target: String::new(),
            ok: None,
        },
        Row {
            what: format!(
                "`GET /waves/{{id}}/mailboxes` ({n} rows, {:.1} MB), for information",
                bytes.len() as f64 / 1e6
            ),
            figure: ms(list),
            target: String::new(),
            ok: None,
        },
    ];
    println!("\n| measure | figure | target | met |\n| --- | ---: | --- | --- |");
    for row in rows {
        let met = match row.ok {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        println!(
            "| {} | {} | {} | {} |",
            row.what, row.figure, row.target, met
        );
    }
    Ok(())
}
