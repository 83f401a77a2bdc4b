//! Control-plane benchmark, measured from the outside: a real
//! `mailwave coordinator serve` over PostgreSQL and RabbitMQ on 127.0.0.1
//! (a database and queues of its own, removed at the end), driven by the
//! operator CLI as an operator would:
//!
//! - `mailwave wave create` with a CSV of N mailboxes (100,000 by default),
//!   then `mailwave wave start`, timed from the moment `create` starts until
//!   the broker's jobs queue holds every job (a passive declare's message
//!   count, polled every 10 ms);
//! - `GET /api/v1/waves/{id}` (the wave's status) latency over R requests
//!   (200 by default) after 10 of warm-up, on one kept-alive connection;
//! - the coordinator's peak RSS (`VmHWM`).
//!
//! Prints a Markdown table with the machine's load. It is a measurement,
//! not a test. Run it through `tests/bench/control-plane.sh`, which builds
//! the release binaries first.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

const USAGE: &str = "\
usage: bench-control-plane [--mailboxes N] [--status-requests R]

  --mailboxes N         the wave's size (default 100000)
  --status-requests R   GET /api/v1/waves/{id} requests measured (default 200)

Environment: MAILWAVE_BIN overrides the mailwave binary (default: the one
next to this driver); RUST_LOG is passed on to the coordinator.";

const TOKEN: &str = "bench-token-0123456789";
const PG_ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";
const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Targets of issue 8, point 10.
const QUEUED_TARGET: Duration = Duration::from_secs(5);
const STATUS_P95_TARGET: Duration = Duration::from_millis(50);

struct Args {
    mailboxes: usize,
    status_requests: usize,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut args = Args {
            mailboxes: 100_000,
            status_requests: 200,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "-h" || flag == "--help" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            let value: usize = it
                .next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))?
                .parse()
                .with_context(|| format!("{flag}: not a number"))?;
            match flag.as_str() {
                "--mailboxes" => args.mailboxes = value,
                "--status-requests" => args.status_requests = value,
                _ => bail!("unknown option {flag:?}\n{USAGE}"),
            }
        }
        ensure!(
            args.mailboxes > 0 && args.status_requests > 0,
            "--mailboxes and --status-requests must be positive"
        );
        Ok(args)
    }
}

/// The database and queues of one run, removed by [`Resources::remove`].
struct Resources {
    admin: tokio_postgres::Client,
    database: String,
    prefix: String,
}

impl Resources {
    async fn create() -> Result<Resources> {
        let (admin, connection) = tokio_postgres::connect(PG_ADMIN, tokio_postgres::NoTls)
            .await
            .context("PostgreSQL is not reachable on 127.0.0.1:5432")?;
        tokio::spawn(connection);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        let database = format!("mailwave_bench_{}_{nanos}", std::process::id());
        admin
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await?;
        Ok(Resources {
            admin,
            database,
            prefix: format!("mailwave-bench-{}-{nanos}", std::process::id()),
        })
    }

    fn database_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.database)
    }

    /// The coordinator's queue names (`<prefix>.jobs`, …; see `QueueNames`).
    fn queue(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.prefix)
    }

    async fn remove(self) -> Result<()> {
        if let Ok(amqp) = Connection::connect(AMQP, ConnectionProperties::default()).await {
            if let Ok(channel) = amqp.create_channel().await {
                for queue in [self.queue("jobs"), self.queue("jobs.dead")] {
                    let _ = channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                let _ = channel
                    .exchange_delete(
                        self.queue("jobs.dead").as_str().into(),
                        ExchangeDeleteOptions::default(),
                    )
                    .await;
            }
            let _ = amqp.close(200, "bye".into()).await;
        }
        self.admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.database
            ))
            .await?;
        Ok(())
    }
}

/// The mailwave binary: `MAILWAVE_BIN`, else the one built next to us.
/// A running `mailwave coordinator serve`, stopped with SIGTERM on drop.
struct Coordinator {
    child: Child,
    base: String,
}

impl Coordinator {
    async fn start(binary: &Path, dir: &Path, resources: &Resources) -> Result<Coordinator> {
        let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let settings = dir.join("coordinator.toml");
        std::fs::write(
            &settings,
            format!(
                "[coordinator]\nlisten = \"{listen}\"\ndatabase_url = \"{}\"\n\
                 amqp_url = \"{AMQP}\"\nqueue_prefix = \"{}\"\ntoken_file = \"{}\"\n",
                resources.database_url(),
                resources.prefix,
                dir.join("token").display(),
            ),
        )?;
        let child = Command::new(binary)
            .args(["coordinator", "serve", "--settings"])
            .arg(&settings)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("coordinator.log"))?)
            .spawn()
            .context("starting the coordinator")?;
        let mut coordinator = Coordinator {
            child,
            base: format!("http://{listen}/api/v1"),
        };
        let health = format!("{}/healthz", coordinator.base);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !reqwest::get(&health)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            if let Some(status) = coordinator.child.try_wait()? {
                bail!("the coordinator exited ({status}); see its log");
            }
            ensure!(Instant::now() < deadline, "the coordinator never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(coordinator)
    }

    /// The peak resident set so far, from `/proc/PID/status`.
    fn peak_rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in /proc/PID/status")
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// Jobs on the queue right now.
async fn queued(channel: &lapin::Channel, queue: &str) -> Result<usize> {
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(declared.message_count() as usize)
}

/// Runs `mailwave wave ARGS` against the coordinator; fails unless it succeeds.
fn wave_command(binary: &Path, coordinator: &Coordinator, dir: &Path, args: &[&str]) -> Result<()> {
    let server = coordinator.base.trim_end_matches("/api/v1");
    let output = Command::new(binary)
        .arg("wave")
        .args(args)
        .arg("--server")
        .arg(server)
        .arg("--token-file")
        .arg(dir.join("token"))
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        output.status.success(),
        "mailwave wave {}: {}\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// What one run measured.
struct Figures {
    created: Duration,
    started: Duration,
    queued: Duration,
    status: Vec<Duration>,
    peak_rss_kib: u64,
}

async fn measure(args: &Args, resources: &Resources) -> Result<Figures> {
    let binary = mailwave_tests::harness::bench_binary()?;
    // Kept, with the coordinator's log.
    let dir = tempfile::Builder::new()
        .prefix("mailwave-bench-control-")
        .tempdir()?
        .keep();
    println!("logs: {}", dir.display());
    let dir = dir.as_path();
    std::fs::write(dir.join("token"), format!("{TOKEN}\n"))?;
    let n = args.mailboxes;
    let mut csv = String::with_capacity(n * 56 + 16);
    csv.push_str("source,target\n");
    for i in 0..n {
        csv.push_str(&format!(
            "user{i:06}@old.example.com,user{i:06}@new.example.com\n"
        ));
    }
    std::fs::write(dir.join("mailboxes.csv"), csv)?;
    std::fs::write(
        dir.join("wave.toml"),
        format!(
            "[source]\nkind = \"imap\"\nhost = \"imap.old.example\"\nadmin_user = \"admin\"\n\
             credential = \"source-admin\"\n\
             [target]\nkind = \"maildir\"\npath = \"/srv/mail/{{mailbox}}\"\n\
             [migration]\nmax_concurrent_mailboxes = {n}\n"
        ),
    )?;
    let coordinator = Coordinator::start(&binary, dir, resources).await?;
    let amqp = Connection::connect(AMQP, ConnectionProperties::default()).await?;
    let channel = amqp.create_channel().await?;
    let jobs = resources.queue("jobs");

    let t = Instant::now();
    let (config, mailboxes) = (dir.join("wave.toml"), dir.join("mailboxes.csv"));
    wave_command(
        &binary,
        &coordinator,
        dir,
        &[
            "create",
            "bench",
            "--config",
            config.to_str().context("temp dir not UTF-8")?,
            "--mailboxes",
            mailboxes.to_str().context("temp dir not UTF-8")?,
        ],
    )?;
    let created = t.elapsed();
    wave_command(&binary, &coordinator, dir, &["start", "bench"])?;
    let started = t.elapsed();
    let deadline = t + Duration::from_secs(600);
    loop {
        let count = queued(&channel, &jobs).await?;
        if count >= n {
            break;
        }
        ensure!(Instant::now() < deadline, "only {count} jobs after 600 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let queued = t.elapsed();
    let _ = amqp.close(200, "bye".into()).await;

    let http = reqwest::Client::new();
    let url = format!("{}/waves", coordinator.base);
    let waves: serde_json::Value = http
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await?
        .json()
        .await?;
    let id = waves[0]["id"].as_i64().context("no wave listed")?;
    let url = format!("{url}/{id}");
    let mut status = Vec::with_capacity(args.status_requests);
    for i in 0..args.status_requests + 10 {
        let t = Instant::now();
        let response = http.get(&url).bearer_auth(TOKEN).send().await?;
        ensure!(
            response.status().is_success(),
            "status: {}",
            response.status()
        );
        let body: serde_json::Value = response.json().await?;
        let elapsed = t.elapsed();
        ensure!(body["mailboxes"] == n, "status: {body}");
        if i >= 10 {
            status.push(elapsed);
        }
    }
    status.sort();
    Ok(Figures {
        created,
        started,
        queued,
        status,
        peak_rss_kib: coordinator.peak_rss_kib()?,
    })
}

fn print_table(args: &Args, load_before: &str, figures: &Figures) {
    let n = args.mailboxes;
    let quantile = |q: f64| {
        let s = &figures.status;
        s[((s.len() as f64 * q).ceil() as usize).saturating_sub(1)]
    };
    let met = |ok: bool| if ok { "yes" } else { "**no**" };
    let (p95, r) = (quantile(0.95), args.status_requests);
    println!(
        "load average: {load_before} before, {} after",
        load_average()
    );
    println!("\n| measure | figure | target | met |\n| --- | ---: | --- | --- |");
    println!(
        "| `wave create` of {n} mailboxes returned | {} | | |",
        ms(figures.created)
    );
    println!(
        "| `wave start` returned (from `create`'s start) | {} | | |",
        ms(figures.started)
    );
    println!(
        "| **{n} jobs on the queue** (from `create`'s start) | {} | < {} | {} |",
        ms(figures.queued),
        ms(QUEUED_TARGET),
        met(figures.queued < QUEUED_TARGET)
    );
    println!(
        "| `GET /waves/{{id}}` p50 ({r} requests) | {} | | |",
        ms(quantile(0.50))
    );
    println!(
        "| **`GET /waves/{{id}}` p95** | {} | < {} | {} |",
        ms(p95),
        ms(STATUS_P95_TARGET),
        met(p95 < STATUS_P95_TARGET)
    );
    println!("| `GET /waves/{{id}}` p99 | {} | | |", ms(quantile(0.99)));
    println!(
        "| coordinator peak RSS | {:.0} MiB | | |",
        figures.peak_rss_kib as f64 / 1024.0
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse()?;
    let load_before = load_average();
    let resources = Resources::create().await?;
    let outcome = measure(&args, &resources).await;
    resources.remove().await?;
    print_table(&args, &load_before, &outcome?);
    Ok(())
}
