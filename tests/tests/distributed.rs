//! Distributed mode end to end: the real `mailwave coordinator serve` and
//! three `mailwave-worker serve` processes over the local PostgreSQL
//! (127.0.0.1:5432, trust) and RabbitMQ (127.0.0.1:5672, guest), migrating
//! Dovecot to Dovecot; the independent checker compares every message.
//! Each test has a database (`mailwave_test_<hex>`, dropped afterwards) and
//! queue names of its own. Nothing is skipped: a missing PostgreSQL,
//! RabbitMQ or Dovecot fails the test.

use std::hash::{BuildHasher, RandomState};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mailwave_tests::harness::{binary, dovecot_named_endpoint, folder_on};
use mailwave_tests::verify;
use mailwave_tests::{CorpusSpec, DovecotOptions, DovecotServer, corpus};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADMIN_DB: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";
const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const TOKEN: &str = "distributed-test-token-0123456789";

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

fn server(separator: char, users: &[String]) -> DovecotServer {
    let mut options = DovecotOptions::default().separator(separator);
    for user in users {
        options = options.user(user, &format!("pw-{user}"));
    }
    DovecotServer::start(options).expect("start Dovecot (apt-get install dovecot-imapd)")
}

/// Runs `f` on a runtime of its own, from a plain thread (usable in `Drop`
/// inside a test's runtime).
fn block_on_side<F: std::future::Future<Output = ()> + Send + 'static>(f: F) {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f);
    })
    .join()
    .unwrap();
}

/// A database of the test's own, dropped afterwards.
struct TestDb {
    name: String,
}

impl TestDb {
    async fn create() -> TestDb {
        let name = format!("mailwave_test_{}", unique());
        let client = admin().await;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        TestDb { name }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        client
    }
}

async fn admin() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(ADMIN_DB, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL on 127.0.0.1:5432 (start it: pg_ctlcluster <version> main start): {e}"
            )
        });
    tokio::spawn(connection);
    client
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        block_on_side(async move {
            let client = admin().await;
            let _ = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        });
    }
}

/// The queues of the test's own prefix, deleted afterwards.
struct TestQueues {
    prefix: String,
}

impl TestQueues {
    async fn new() -> TestQueues {
        // Fail loudly, and early, without a broker.
        lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| {
                panic!("RabbitMQ on 127.0.0.1:5672 (start it: rabbitmq-server -detached): {e}")
            });
        TestQueues {
            prefix: format!("mailwave-test-{}", unique()),
        }
    }
}

impl Drop for TestQueues {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        block_on_side(async move {
            use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
            let Ok(connection) =
                lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default()).await
            else {
                return;
            };
            let Ok(channel) = connection.create_channel().await else {
                return;
            };
            for queue in [format!("{prefix}.jobs"), format!("{prefix}.jobs.dead")] {
                let _ = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            let _ = channel
                .exchange_delete(
                    format!("{prefix}.jobs.dead").as_str().into(),
                    ExchangeDeleteOptions::default(),
                )
                .await;
            let _ = connection.close(0, "done".into()).await;
        });
    }
}

/// A coordinator and its workers, as processes.
struct Cluster {
    db: TestDb,
    queues: TestQueues,
    dir: tempfile::TempDir,
    settings: PathBuf,
    listen: std::net::SocketAddr,
    coordinator: Option<Child>,
    workers: Vec<(String, Child)>,
}

/// Timing of a cluster.
struct Timing {
    lease_ttl_secs: u64,
    reaper_interval_secs: u64,
    worker_concurrency: usize,
    shutdown_grace_secs: u64,
}

impl Cluster {
    async fn start(timing: Timing, workers: usize) -> Cluster {
        let db = TestDb::create().await;
        let queues = TestQueues::new().await;
        let dir = tempfile::Builder::new()
            .prefix("mailwave-distributed-")
            .tempdir()
            .unwrap();
        let listen = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, TOKEN).unwrap();
        let settings = dir.path().join("settings.toml");
        std::fs::write(
            &settings,
            format!(
                "[coordinator]\nlisten = \"{listen}\"\ndatabase_url = \"{db}\"\namqp_url = \"{AMQP_URL}\"\n\
                 queue_prefix = \"{prefix}\"\ntoken_file = \"{token}\"\nreaper_interval_secs = {reaper}\n\
                 dispatch_interval_ms = 200\n\
                 [worker]\ndatabase_url = \"{db}\"\namqp_url = \"{AMQP_URL}\"\nqueue_prefix = \"{prefix}\"\n\
                 lease_ttl_secs = {ttl}\nconcurrency = {concurrency}\nshutdown_grace_secs = {grace}\n\
                 [credentials.source-master]\nhosts = [\"127.0.0.1\"]\npassword_file = \"{dir}/source.pw\"\n\
                 [credentials.target-master]\nhosts = [\"127.0.0.1\"]\npassword_file = \"{dir}/target.pw\"\n\
                 [credentials.tenant-a]\nhosts = [\"127.0.0.1\"]\nclient_secret_file = \"{dir}/a.secret\"\n\
                 [credentials.tenant-b]\nhosts = [\"127.0.0.1\"]\nclient_secret_file = \"{dir}/b.secret\"\n",
                dir = dir.path().display(),
                db = db.url(),
                prefix = queues.prefix,
                token = token.display(),
                reaper = timing.reaper_interval_secs,
                ttl = timing.lease_ttl_secs,
                concurrency = timing.worker_concurrency,
                grace = timing.shutdown_grace_secs,
            ),
        )
        .unwrap();
        let mut cluster = Cluster {
            db,
            queues,
            dir,
            settings,
            listen,
            coordinator: None,
            workers: Vec::new(),
        };
        cluster.spawn_coordinator();
        cluster.wait_healthy().await;
        for i in 1..=workers {
            cluster.add_worker(&format!("w{i}"));
        }
        cluster
    }

    fn spawn(&self, program: PathBuf, args: &[&str], log: &str, env: &[(&str, &str)]) -> Child {
        let log = std::fs::File::create(self.log_path(log)).unwrap();
        Command::new(program)
            .args(args)
            .arg("--settings")
            .arg(&self.settings)
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                "warn,mailwave_worker::distributed=info,mailwave_coordinator=info",
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn add_worker(&mut self, id: &str) {
        let child = self.spawn(
            binary("mailwave-worker"),
            &["serve"],
            id,
            &[("MAILWAVE__WORKER__WORKER_ID", id)],
        );
        self.workers.push((id.to_owned(), child));
    }

    fn worker(&mut self, id: &str) -> &mut Child {
        &mut self
            .workers
            .iter_mut()
            .find(|(w, _)| w == id)
            .expect("a worker of that id")
            .1
    }

    /// Every process's log, for failure messages.
    fn logs(&self) -> String {
        let mut all = String::new();
        let names = std::iter::once("coordinator".to_owned())
            .chain(self.workers.iter().map(|(id, _)| id.clone()));
        for name in names {
            let text = std::fs::read_to_string(self.log_path(&name)).unwrap_or_default();
            let tail: Vec<_> = text.lines().rev().take(40).collect();
            all.push_str(&format!("--- {name} (last lines)\n"));
            for line in tail.into_iter().rev() {
                all.push_str(line);
                all.push('\n');
            }
        }
        all
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = self.http("GET", "/api/v1/healthz", None).await {
                return;
            }
            if let Some(status) = self.coordinator.as_mut().unwrap().try_wait().unwrap() {
                panic!("the coordinator exited ({status}):\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "the coordinator never answered:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> std::io::Result<(u16, Value)> {
        let mut stream = tokio::net::TcpStream::connect(self.listen).await?;
        let body = body.map(Value::to_string).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.listen,
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok((status, serde_json::from_str(body).unwrap_or(Value::Null)))
    }

    async fn api(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, value) = self.http(method, path, body).await.unwrap();
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {value}"
        );
        value
    }

    /// Creates and starts a wave; returns its id.
    async fn start_wave(&self, config_toml: &str, users: &[String]) -> i64 {
        let mut csv = String::from("source,target\n");
        for user in users {
            csv.push_str(&format!("{user},{user}\n"));
        }
        self.start_wave_csv(config_toml, &csv, users.len()).await
    }

    /// Creates and starts a wave of the `mailboxes` rows of `csv`.
    async fn start_wave_csv(&self, config_toml: &str, csv: &str, mailboxes: usize) -> i64 {
        let created = self
            .api(
                "POST",
                "/api/v1/waves",
                Some(&json!({"name": "wave", "config_toml": config_toml, "mailboxes_csv": csv})),
            )
            .await;
        assert_eq!(created["mailboxes"], mailboxes, "{created}");
        let id = created["id"].as_i64().unwrap();
        let started = self
            .api("POST", &format!("/api/v1/waves/{id}/start"), None)
            .await;
        assert_eq!(started["state"], "running", "{started}");
        id
    }

    /// Polls the wave's status until every mailbox completed. The API's
    /// "try again" (503 `unavailable`, the store briefly unreachable, as in
    /// the PostgreSQL fault test) is waited out like any client would.
    async fn wait_completed(&mut self, wave: i64, mailboxes: u64, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let path = format!("/api/v1/waves/{wave}");
            let (code, status) = self.http("GET", &path, None).await.unwrap();
            if code == 503 && status["error"]["code"] == "unavailable" {
                assert!(Instant::now() < deadline, "the store stayed unavailable");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            assert!((200..300).contains(&code), "GET {path}: {code} {status}");
            let counts = &status["counts"];
            if counts["completed"] == mailboxes {
                return status;
            }
            assert_eq!(
                counts["failed"],
                0,
                "a mailbox failed: {status}\n{}",
                self.logs()
            );
            assert!(
                Instant::now() < deadline,
                "the wave did not complete in {limit:?}: {status}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A mailbox that `worker` leases, still running, with ledger rows
    /// already committed (it is in the middle of it).
    async fn mid_mailbox_of(&self, worker: &str, limit: Duration) -> i64 {
        let client = self.db.client().await;
        let deadline = Instant::now() + limit;
        loop {
            let row = client
                .query_opt(
                    "SELECT l.mailbox FROM leases l JOIN mailboxes m ON m.id = l.mailbox
                     WHERE l.worker = $1 AND m.state = 'running'
                       AND EXISTS (SELECT 1 FROM ledger g WHERE g.mailbox = l.mailbox)
                     LIMIT 1",
                    &[&worker],
                )
                .await
                .unwrap();
            if let Some(row) = row {
                return row.get(0);
            }
            assert!(
                Instant::now() < deadline,
                "{worker} never held a mailbox mid-way:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn workers_lost(&self, mailbox: i64) -> i64 {
        self.db
            .client()
            .await
            .query_one(
                "SELECT workers_lost::BIGINT FROM mailboxes WHERE id = $1",
                &[&mailbox],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn ledger_rows(&self, mailbox: i64) -> i64 {
        self.db
            .client()
            .await
            .query_one(
                "SELECT count(*) FROM ledger WHERE mailbox = $1",
                &[&mailbox],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Polls until `condition` (a boolean SQL expression over the test's
    /// database) holds; `what` names it in the failure message.
    async fn wait_until(&self, condition: &str, what: &str, limit: Duration) {
        let client = self.db.client().await;
        let deadline = Instant::now() + limit;
        loop {
            let holds: bool = client
                .query_one(&format!("SELECT {condition}"), &[])
                .await
                .unwrap()
                .get(0);
            if holds {
                return;
            }
            assert!(Instant::now() < deadline, "never: {what}:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the ledger has rows (some mailbox is in the middle).
    async fn wait_ledger_rows(&self) {
        self.wait_until(
            "EXISTS (SELECT 1 FROM ledger)",
            "the ledger has rows",
            Duration::from_secs(120),
        )
        .await;
    }

    /// Waits until at least one mailbox completed, with others still to do.
    async fn wait_some_completed(&self) {
        self.wait_until(
            "EXISTS (SELECT 1 FROM mailboxes WHERE state = 'completed')",
            "a mailbox completed",
            Duration::from_secs(180),
        )
        .await;
        let left: i64 = self
            .db
            .client()
            .await
            .query_one(
                "SELECT count(*) FROM mailboxes WHERE state <> 'completed'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(left > 0, "every mailbox completed before the fault");
    }

    /// Each mailbox's pass, by mailbox id.
    async fn passes(&self) -> Vec<(i64, i64)> {
        self.db
            .client()
            .await
            .query("SELECT id, pass FROM mailboxes ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    }

    fn spawn_coordinator(&mut self) {
        let coordinator = self.spawn(
            binary("mailwave"),
            &["coordinator", "serve"],
            "coordinator",
            &[],
        );
        self.coordinator = Some(coordinator);
    }

    /// A wave of `source` to `target`; their master passwords are written
    /// where the workers' named credentials say.
    fn config(&self, source: &DovecotServer, target: &DovecotServer, migration: &str) -> String {
        for (server, file) in [(source, "source.pw"), (target, "target.pw")] {
            std::fs::write(self.dir.path().join(file), server.master_credentials().1).unwrap();
        }
        let source_toml = dovecot_named_endpoint(source, "127.0.0.1", "source-master");
        let target_toml = dovecot_named_endpoint(target, "127.0.0.1", "target-master");
        format!("[source]\n{source_toml}\n[target]\n{target_toml}\n[migration]\n{migration}\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self
            .workers
            .iter_mut()
            .map(|(_, c)| c)
            .chain(self.coordinator.as_mut())
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn assert_exact(source: &DovecotServer, target: &DovecotServer, users: &[String]) {
    for user in users {
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
}

fn users(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}{i:02}")).collect()
}

fn users_ref(users: &[String]) -> Vec<&str> {
    users.iter().map(String::as_str).collect()
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn coordinator_and_three_workers_migrate_20_mailboxes_exactly() {
    let started = Instant::now();
    let users = users("e2e", 20);
    let source = server('.', &users);
    let target = server('/', &users);
    let spec = CorpusSpec::for_server(&source, 31).messages(40).folders(4);
    let corpora = corpus::load_users(&source, &users_ref(&users), &spec).unwrap();
    let expected: usize = corpora.iter().map(|c| c.messages.len()).sum();

    let mut cluster = Cluster::start(
        Timing {
            lease_ttl_secs: 10,
            reaper_interval_secs: 2,
            worker_concurrency: 4,
            shutdown_grace_secs: 20,
        },
        3,
    )
    .await;
    let config = cluster.config(&source, &target, "max_concurrent_mailboxes = 12\n");
    let wave = cluster.start_wave(&config, &users).await;
    let status = cluster
        .wait_completed(wave, 20, Duration::from_secs(240))
        .await;
    assert_eq!(
        status["counts"]["items_copied"].as_u64().unwrap() as usize,
        expected,
        "{status}"
    );
    assert_exact(&source, &target, &users).await;
    eprintln!(
        "20 mailboxes, {expected} messages, exact, in {:?}",
        started.elapsed()
    );
}

/// Corpus, cluster and wave of the fault tests: mailboxes big enough, and
/// batches small enough, for a worker to be caught in the middle of one.
async fn fault_setup(
    prefix: &str,
    timing: Timing,
) -> (Vec<String>, DovecotServer, DovecotServer, Cluster, i64) {
    fault_setup_with(prefix, timing, 6, 3).await
}

/// [`fault_setup`] with `mailboxes` mailboxes (still at most 6 at once) and
/// `workers` workers at the start.
async fn fault_setup_with(
    prefix: &str,
    timing: Timing,
    mailboxes: usize,
    workers: usize,
) -> (Vec<String>, DovecotServer, DovecotServer, Cluster, i64) {
    let users = users(prefix, mailboxes);
    let source = server('/', &users);
    let target = server('.', &users);
    let spec = CorpusSpec::for_server(&source, 47).messages(400).folders(3);
    corpus::load_users(&source, &users_ref(&users), &spec).unwrap();
    let cluster = Cluster::start(timing, workers).await;
    let config = cluster.config(
        &source,
        &target,
        "max_concurrent_mailboxes = 6\nbatch_messages = 10\nconnections_per_mailbox = 1\n",
    );
    let wave = cluster.start_wave(&config, &users).await;
    (users, source, target, cluster, wave)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_mailbox_is_resumed_by_another_exactly() {
    let started = Instant::now();
    let (users, source, target, mut cluster, wave) = fault_setup(
        "kill",
        Timing {
            lease_ttl_secs: 3,
            reaper_interval_secs: 1,
            worker_concurrency: 2,
            shutdown_grace_secs: 20,
        },
    )
    .await;
    let victim = cluster.mid_mailbox_of("w1", Duration::from_secs(120)).await;
    let rows_before = cluster.ledger_rows(victim).await;
    cluster.worker("w1").kill().unwrap(); // SIGKILL
    cluster.worker("w1").wait().unwrap();
    let killed_at = Instant::now();

    cluster
        .wait_completed(wave, users.len() as u64, Duration::from_secs(240))
        .await;
    assert!(
        cluster.workers_lost(victim).await >= 1,
        "the reaper re-queued mailbox {victim}:\n{}",
        cluster.logs()
    );
    assert!(cluster.ledger_rows(victim).await >= rows_before);
    assert_exact(&source, &target, &users).await;
    eprintln!(
        "killed w1 in mailbox {victim} at {rows_before} ledger rows; completed {:?} later; total {:?}",
        killed_at.elapsed(),
        started.elapsed()
    );
}

/// Issue 7, case 1: a worker frozen (SIGSTOP) past its lease while another
/// worker finishes its mailbox must, once it runs again, append nothing and
/// record nothing: the lease is a fence, checked by the store on every write
/// and by the worker's own clock before every append.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_frozen_past_its_lease_writes_nothing_when_it_wakes() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let (users, source, target, mut cluster, wave) = fault_setup(
        "frozen",
        Timing {
            lease_ttl_secs: 3,
            reaper_interval_secs: 1,
            worker_concurrency: 2,
            shutdown_grace_secs: 20,
        },
    )
    .await;
    let victim = cluster.mid_mailbox_of("w1", Duration::from_secs(120)).await;
    let pid = Pid::from_raw(cluster.worker("w1").id() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let status = cluster
        .wait_completed(wave, users.len() as u64, Duration::from_secs(240))
        .await;
    assert!(
        cluster.workers_lost(victim).await >= 1,
        "the reaper re-queued mailbox {victim}:\n{}",
        cluster.logs()
    );
    kill(pid, Signal::SIGCONT).unwrap();
    // The woken worker notices by its own clock that its leases are gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(cluster.log_path("w1"))
        .unwrap_or_default()
        .contains("lease lost")
    {
        assert!(
            Instant::now() < deadline,
            "w1 never noticed:\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_exact(&source, &target, &users).await;
    let after = cluster
        .api("GET", &format!("/api/v1/waves/{wave}"), None)
        .await;
    assert_eq!(
        after["counts"], status["counts"],
        "the woken worker changed no mailbox's record"
    );
}

/// Issue 7, case 1: the database is unreachable for longer than the lease
/// TTL. Every worker stops writing by its own clock; once the database is
/// back the leases are reaped, the mailboxes resumed, and nothing doubled.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_outage_longer_than_the_lease_doubles_nothing() {
    let (users, source, target, mut cluster, wave) = fault_setup(
        "pgdown",
        Timing {
            lease_ttl_secs: 3,
            reaper_interval_secs: 1,
            worker_concurrency: 2,
            shutdown_grace_secs: 20,
        },
    )
    .await;
    cluster.wait_ledger_rows().await;
    // An outage of this test's database only: no new connection is allowed
    // and the open ones are cut.
    let admin = admin().await;
    let name = &cluster.db.name;
    admin
        .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .await
        .unwrap();
    admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[name],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(9)).await;
    admin
        .batch_execute(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    cluster
        .wait_completed(wave, users.len() as u64, Duration::from_secs(240))
        .await;
    assert_exact(&source, &target, &users).await;
    let noticed = cluster
        .workers
        .iter()
        .filter(|(id, _)| {
            std::fs::read_to_string(cluster.log_path(id))
                .is_ok_and(|log| log.contains("lease lost"))
        })
        .count();
    let full: String = cluster
        .workers
        .iter()
        .map(|(id, _)| {
            let log = std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default();
            format!("--- {id}\n{log}")
        })
        .collect();
    assert!(
        noticed > 0,
        "the workers stopped by their own clocks:\n{full}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_stopped_by_sigterm_hands_its_mailboxes_back() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let started = Instant::now();
    let grace = Duration::from_secs(20);
    let (users, source, target, mut cluster, wave) = fault_setup(
        "term",
        Timing {
            // Long enough that only the hand-back (not the reaper) can
            // bring the mailbox back while the wave runs.
            lease_ttl_secs: 30,
            reaper_interval_secs: 1,
            worker_concurrency: 2,
            shutdown_grace_secs: grace.as_secs(),
        },
    )
    .await;
    let victim = cluster.mid_mailbox_of("w1", Duration::from_secs(120)).await;
    let pid = Pid::from_raw(cluster.worker("w1").id() as i32);
    let signalled = Instant::now();
    kill(pid, Signal::SIGTERM).unwrap();
    let status = wait_exit(cluster.worker("w1"), grace + Duration::from_secs(2))
        .unwrap_or_else(|| panic!("w1 did not exit within the grace time:\n{}", cluster.logs()));
    let stopped_in = signalled.elapsed();
    assert!(
        status.success(),
        "w1 exited with {status}:\n{}",
        cluster.logs()
    );
    assert!(stopped_in <= grace, "{stopped_in:?}");
    let log = std::fs::read_to_string(cluster.log_path("w1")).unwrap();
    assert!(log.contains("mailbox handed back"), "{log}");

    cluster
        .wait_completed(wave, users.len() as u64, Duration::from_secs(240))
        .await;
    assert_eq!(
        cluster.workers_lost(victim).await,
        0,
        "mailbox {victim} was handed back, not reaped:\n{}",
        cluster.logs()
    );
    assert_exact(&source, &target, &users).await;
    eprintln!(
        "SIGTERM: w1 exited 0 in {stopped_in:?}; mailbox {victim} finished by the others; total {:?}",
        started.elapsed()
    );
}

/// Timing of the fault tests below: the reaper quick enough to matter, the
/// lease long enough not to expire while a worker merely reconnects.
fn fault_timing() -> Timing {
    Timing {
        lease_ttl_secs: 5,
        reaper_interval_secs: 1,
        worker_concurrency: 2,
        shutdown_grace_secs: 20,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_added_mid_wave_takes_work() {
    let started = Instant::now();
    // More mailboxes than the wave runs at once, so that some are
    // published only after the others joined: a worker takes (and acks) a
    // job as it starts it, so w1 alone holds its `concurrency` running
    // mailboxes plus as many prefetched.
    let (users, source, target, mut cluster, wave) =
        fault_setup_with("scale", fault_timing(), 12, 1).await;
    cluster.wait_some_completed().await;
    cluster.add_worker("w2");
    cluster.add_worker("w3");
    let added_at = Instant::now();

    cluster
        .wait_completed(wave, users.len() as u64, Duration::from_secs(240))
        .await;
    for added in ["w2", "w3"] {
        let log = std::fs::read_to_string(cluster.log_path(added)).unwrap();
        assert!(
            log.contains("job finished"),
            "{added} ran no job:\n{}",
            cluster.logs()
        );
    }
    assert_exact(&source, &target, &users).await;
    eprintln!(
        "scale up: w2 and w3 added; completed {:?} later; total {:?}",
        added_at.elapsed(),
        started.elapsed()
    );
}

/// Has the broker close every connection of the test's coordinator and
/// workers (each named after the test's jobs queue), and only those.
async fn close_rabbitmq_connections(prefix: &str) -> usize {
    let name = format!("\"{prefix}.jobs\"");
    tokio::task::spawn_blocking(move || {
        let rabbitmqctl = |args: &[&str]| {
            let output = Command::new("rabbitmqctl")
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("rabbitmqctl (run the tests as root): {e}"));
            assert!(output.status.success(), "rabbitmqctl {args:?}: {output:?}");
            String::from_utf8(output.stdout).unwrap()
        };
        let listing = rabbitmqctl(&["list_connections", "--silent", "pid", "client_properties"]);
        let pids: Vec<&str> = listing
            .lines()
            .filter(|line| line.contains(&name))
            .filter_map(|line| line.split_whitespace().next())
            .collect();
        for pid in &pids {
            rabbitmqctl(&["close_connection", pid, "mailwave fault test"]);
        }
        pids.len()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_connections_closed_mid_wave() {
    let started = Instant::now();
    let (users, source, target, mut cluster, wave) = fault_setup("amqp", fault_timing()).await;
    cluster.wait_ledger_rows().await;
    let closed = close_rabbitmq_connections(&cluster.queues.prefix).await;
    // The coordinator's and the three workers'.
    assert_eq!(closed, 4, "connections closed:\n{}", cluster.logs());
    let closed_at = Instant::now();

    cluster
        .wait_completed(wave, users.len() as u64, Duration::from_secs(240))
        .await;
    assert_exact(&source, &target, &users).await;
    eprintln!(
        "closed {closed} RabbitMQ connections; completed {:?} later; total {:?}",
        closed_at.elapsed(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_connections_terminated_mid_wave() {
    let started = Instant::now();
    let (users, source, target, mut cluster, wave) = fault_setup("pgterm", fault_timing()).await;
    cluster.wait_ledger_rows().await;
    let terminated = admin()
        .await
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&cluster.db.name],
        )
        .await
        .unwrap()
        .len();
    assert!(terminated > 0, "no connection to terminate");
    let terminated_at = Instant::now();

    cluster
        .wait_completed(wave, users.len() as u64, Duration::from_secs(240))
        .await;
    assert_exact(&source, &target, &users).await;
    eprintln!(
        "terminated {terminated} PostgreSQL connections; completed {:?} later; total {:?}",
        terminated_at.elapsed(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn coordinator_restarted_mid_wave() {
    let started = Instant::now();
    let (users, source, target, mut cluster, wave) = fault_setup("coord", fault_timing()).await;
    cluster.wait_some_completed().await;
    let coordinator = cluster.coordinator.as_mut().unwrap();
    coordinator.kill().unwrap(); // SIGKILL
    coordinator.wait().unwrap();
    let first_log = std::fs::read_to_string(cluster.log_path("coordinator")).unwrap();
    std::fs::write(cluster.log_path("coordinator-1"), first_log).unwrap();
    cluster.spawn_coordinator();
    cluster.wait_healthy().await;
    let restarted_at = Instant::now();

    cluster
        .wait_completed(wave, users.len() as u64, Duration::from_secs(240))
        .await;
    let passes = cluster.passes().await;
    assert!(
        passes.iter().all(|&(_, pass)| pass == 1),
        "a mailbox ran its pass twice: {passes:?}\n{}",
        cluster.logs()
    );
    assert_exact(&source, &target, &users).await;
    eprintln!(
        "coordinator restarted; completed {:?} later; total {:?}",
        restarted_at.elapsed(),
        started.elapsed()
    );
}

/// Takes one message off `queue` without a consumer, waiting up to `limit`
/// (dead-lettering is asynchronous).
async fn get_message(queue: &str, limit: Duration) -> Option<Vec<u8>> {
    use lapin::options::BasicGetOptions;
    let connection = lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let got = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        if let Some(message) = got {
            return Some(message.delivery.data);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_job_reaches_the_dead_letter_queue_and_the_wave_goes_on() {
    use lapin::BasicProperties;
    use lapin::options::BasicPublishOptions;

    let users = users("poison", 3);
    let source = server('.', &users);
    let target = server('.', &users);
    let spec = CorpusSpec::for_server(&source, 53).messages(30).folders(2);
    corpus::load_users(&source, &users_ref(&users), &spec).unwrap();
    let mut cluster = Cluster::start(fault_timing(), 2).await;
    let config = cluster.config(&source, &target, "max_concurrent_mailboxes = 3\n");
    let wave = cluster.start_wave(&config, &users).await;

    // A job for a mailbox this deployment does not have (left over from a
    // database that was reset, say): well-formed, but no worker can run it.
    let poison = json!({"wave": wave, "mailbox": 999_999, "pass": 1});
    let connection = lapin::Connection::connect(AMQP_URL, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let jobs = format!("{}.jobs", cluster.queues.prefix);
    channel
        .basic_publish(
            "".into(),
            jobs.as_str().into(),
            BasicPublishOptions::default(),
            poison.to_string().as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    cluster
        .wait_completed(wave, users.len() as u64, Duration::from_secs(240))
        .await;
    assert_exact(&source, &target, &users).await;
    let dead_letters = format!("{}.jobs.dead", cluster.queues.prefix);
    let dead = get_message(&dead_letters, Duration::from_secs(20))
        .await
        .unwrap_or_else(|| panic!("no dead letter:\n{}", cluster.logs()));
    assert_eq!(
        serde_json::from_slice::<Value>(&dead).unwrap(),
        poison,
        "{}",
        cluster.logs()
    );
    assert!(
        cluster
            .logs()
            .contains("no worker can run this job: dead-lettering it"),
        "{}",
        cluster.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn graph_tenant_to_tenant_survives_a_worker_killed_mid_mailbox() {
    use mailwave_tests::GraphEmulator;
    use mailwave_tests::graph_emulator::Faults;
    use mailwave_tests::tenants;

    let started = Instant::now();
    let users = 4;
    let emu = GraphEmulator::start(tenants::two_tenants(users, 25))
        .await
        .expect("the Graph emulator starts");
    // Slow enough to catch a worker in the middle of a mailbox.
    emu.set_faults(Faults {
        latency: Duration::from_millis(30),
        ..Faults::default()
    });
    let mut cluster = Cluster::start(
        Timing {
            lease_ttl_secs: 3,
            reaper_interval_secs: 1,
            worker_concurrency: 2,
            shutdown_grace_secs: 20,
        },
        2,
    )
    .await;
    let secret_a = cluster.dir.path().join("a.secret");
    let secret_b = cluster.dir.path().join("b.secret");
    std::fs::write(&secret_a, tenants::SECRET_A).unwrap();
    std::fs::write(&secret_b, tenants::SECRET_B).unwrap();
    let (source, target) = tenants::named_endpoints(&emu, "tenant-a", "tenant-b");
    let config = format!(
        "[source]\n{source}\n[target]\n{target}\n\
         [migration]\nmax_concurrent_mailboxes = {users}\nbatch_messages = 5\n"
    );
    let wave = cluster
        .start_wave_csv(&config, &tenants::csv(users), users)
        .await;

    let victim = cluster.mid_mailbox_of("w1", Duration::from_secs(120)).await;
    let rows_before = cluster.ledger_rows(victim).await;
    cluster.worker("w1").kill().unwrap(); // SIGKILL
    cluster.worker("w1").wait().unwrap();
    cluster
        .wait_completed(wave, users as u64, Duration::from_secs(240))
        .await;
    assert!(
        cluster.workers_lost(victim).await >= 1,
        "the reaper re-queued mailbox {victim}:\n{}",
        cluster.logs()
    );
    tenants::assert_exact(&emu, users);
    eprintln!(
        "killed w1 in mailbox {victim} at {rows_before} ledger rows; exact after {:?}",
        started.elapsed()
    );
}
