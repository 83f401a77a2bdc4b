//! The control plane of distributed mode end to end, without workers: the
//! API over a store and a queue, the dispatcher and the reaper, with workers
//! simulated through the store calls a worker makes. The same flow runs over
//! the SQLite store and over PostgreSQL (a database of its own on
//! 127.0.0.1:5432, dropped afterwards).

use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use mailwave_common::model::{Job, MailboxState, PassStats, WaveId};
use mailwave_common::queue::{Delivery, JobQueue, MemoryQueue, QueueError};
use mailwave_common::store::{PassOutcome, PostgresStore, ReapOutcome, SqliteStore, Store};
use mailwave_coordinator::api::{ApiState, router};
use mailwave_coordinator::dispatcher::dispatch_once;
use mailwave_coordinator::reaper::reap_once;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tower::ServiceExt;

const TOKEN: &str = "test-token-0123456789";

/// A memory queue that remembers every job published to it.
#[derive(Default)]
struct RecordingQueue {
    inner: MemoryQueue,
    published: Mutex<Vec<Job>>,
}

impl RecordingQueue {
    fn take(&self) -> Vec<Job> {
        std::mem::take(&mut *self.published.lock().unwrap())
    }
}

#[async_trait]
impl JobQueue for RecordingQueue {
    async fn publish(&self, jobs: &[Job]) -> Result<(), QueueError> {
        self.published.lock().unwrap().extend_from_slice(jobs);
        self.inner.publish(jobs).await
    }

    async fn next(&self) -> Result<Option<Box<dyn Delivery>>, QueueError> {
        self.inner.next().await
    }
}

struct Harness {
    app: Router,
    store: Arc<dyn Store>,
    queue: Arc<RecordingQueue>,
}

impl Harness {
    fn new(store: Arc<dyn Store>) -> Harness {
        Harness {
            app: router(ApiState::new(store.clone(), TOKEN, Arc::new(Notify::new()))),
            store,
            queue: Arc::new(RecordingQueue::default()),
        }
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    async fn api(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(method, uri, Some(TOKEN), body).await
    }

    async fn command(&self, wave: WaveId, command: &str) -> (StatusCode, Value) {
        self.api("POST", &format!("/api/v1/waves/{wave}/{command}"), None)
            .await
    }

    /// One dispatcher round; the jobs it published (first time or again).
    async fn dispatch(&self, wave: WaveId) -> Vec<Job> {
        dispatch_once(self.store.as_ref(), self.queue.as_ref())
            .await
            .unwrap();
        let jobs = self.queue.take();
        let in_flight = self.store.in_flight(wave).await.unwrap();
        assert!(in_flight <= 2, "{in_flight} mailboxes in flight, cap 2");
        jobs
    }

    async fn status(&self, wave: WaveId) -> Value {
        let (status, body) = self
            .api("GET", &format!("/api/v1/waves/{wave}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// What a worker does with a job, in the real worker's order: take the
    /// lease, start the pass, finish it, release the lease.
    async fn work(&self, job: &Job) {
        let lease = self
            .store
            .acquire_lease(job.mailbox, job.pass, "worker", Duration::from_secs(60))
            .await
            .unwrap()
            .expect("the lease is free");
        assert!(self.store.start_pass(&lease).await.unwrap());
        let outcome = PassOutcome {
            state: MailboxState::Completed,
            error: None,
            stats: PassStats {
                items_copied: 10,
                bytes_copied: 1000,
                ..PassStats::default()
            },
        };
        self.store.finish_pass(&lease, &outcome).await.unwrap();
        self.store.release_lease(&lease).await.unwrap();
    }

    /// A worker that takes a lease, starts the pass and dies.
    async fn lose_worker(&self, job: &Job, worker: &str) {
        let lease = self
            .store
            .acquire_lease(job.mailbox, job.pass, worker, Duration::from_secs(60))
            .await
            .unwrap()
            .expect("the lease is free");
        assert!(self.store.start_pass(&lease).await.unwrap());
        // It stops renewing: its lease runs out.
        self.store
            .acquire_lease(job.mailbox, job.pass, worker, Duration::from_millis(1))
            .await
            .unwrap()
            .expect("its own lease");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self
            .store
            .expired_leases()
            .await
            .unwrap()
            .iter()
            .any(|(m, _, _)| *m == job.mailbox)
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "lease never expired"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn config(max_concurrent: usize) -> String {
    format!(
        "[source]\nkind = \"imap\"\nhost = \"imap.old.example\"\nadmin_user = \"admin\"\n\
         credential = \"source-admin\"\n\
         [target]\nkind = \"maildir\"\npath = \"/srv/mail/{{mailbox}}\"\n\
         [migration]\nmax_concurrent_mailboxes = {max_concurrent}\nmax_attempts = 2\n"
    )
}

fn create_body(name: &str, csv: &str) -> Value {
    json!({"name": name, "config_toml": config(2), "mailboxes_csv": csv})
}

const CSV: &str = "source,target\nu1@old,u1@new\nu2@old,u2@new\nbad row\nu3@old,u3@new\nu4@old,u4@new\nu5@old,u5@new\n";

/// The whole flow: create, start under the cap, pause, a restarted
/// dispatcher, sync, the reaper, cancel.
async fn control_plane_flow(store: Arc<dyn Store>) {
    let h = Harness::new(store);

    // Authentication on every route but the health check.
    let (status, body) = h.call("GET", "/api/v1/waves", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, body) = h
        .call("GET", "/api/v1/waves", Some("test-token-0123456788"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = h
        .call(
            "POST",
            "/api/v1/waves",
            Some("nope"),
            Some(create_body("x", CSV)),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(h.store.waves().await.unwrap().is_empty(), "nothing created");
    let (status, body) = h.call("GET", "/api/v1/healthz", None, None).await;
    assert_eq!((status, &body["status"]), (StatusCode::OK, &json!("ok")));

    // Creating: a bad row is reported by line; password columns are refused.
    let (status, body) = h
        .api("POST", "/api/v1/waves", Some(create_body("wave-1", CSV)))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["mailboxes"], 5);
    assert_eq!(body["state"], "created");
    let rejected = body["rejected_rows"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{body}");
    assert_eq!(rejected[0]["line"], 4);
    let wave = body["id"].as_i64().unwrap();
    let stored = h.store.wave(wave).await.unwrap();
    let stored = serde_json::to_value(stored.config.config().unwrap().unwrap().as_ref()).unwrap();
    assert_eq!(
        stored["source"]["credential"], "source-admin",
        "the credential's name is stored, never a secret"
    );

    let (status, body) = h
        .api("POST", "/api/v1/waves", Some(create_body("wave-1", CSV)))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "conflict");
    let with_passwords = "source,target,source_password\na@old,a@new,hunter2\n";
    let (status, body) = h
        .api(
            "POST",
            "/api/v1/waves",
            Some(create_body("wave-pw", with_passwords)),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_request");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("password columns"), "{message}");
    assert!(!message.contains("hunter2"));
    let bad_config = json!({"name": "wave-cfg", "config_toml": "[source]\nkind = \"imap\"\n", "mailboxes_csv": CSV});
    let (status, body) = h.api("POST", "/api/v1/waves", Some(bad_config)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = h
        .api("POST", "/api/v1/waves", Some(json!({"name": "x"})))
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_request"))
    );
    assert_eq!(h.store.waves().await.unwrap().len(), 1);

    let (status, body) = h.api("GET", "/api/v1/waves", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_array().unwrap().len(), 1);
    assert_eq!(body[0]["name"], "wave-1");
    let status = h.status(wave).await;
    assert_eq!(status["state"], "created");
    assert_eq!(status["counts"]["pending"], 5);
    assert_eq!(status["max_concurrent_mailboxes"], 2);
    let (code, body) = h.api("GET", "/api/v1/waves/999999", None).await;
    assert_eq!(
        (code, &body["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("not_found"))
    );
    let (code, body) = h.command(wave, "explode").await;
    assert_eq!(
        (code, &body["error"]["code"]),
        (StatusCode::NOT_FOUND, &json!("not_found"))
    );
    let (code, body) = h.command(wave, "pause").await;
    assert_eq!(
        (code, &body["error"]["code"]),
        (StatusCode::CONFLICT, &json!("conflict"))
    );

    // Nothing is published before start; then exactly the cap.
    assert!(h.dispatch(wave).await.is_empty());
    let (code, body) = h.command(wave, "start").await;
    assert_eq!((code, &body["state"]), (StatusCode::OK, &json!("running")));
    let first = h.dispatch(wave).await;
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(first.iter().all(|j| j.pass == 1 && j.wave == wave));
    assert!(h.dispatch(wave).await.is_empty(), "the cap is reached");

    // Finishing one lets exactly one more go.
    h.work(&first[0]).await;
    let more = h.dispatch(wave).await;
    assert_eq!(more.len(), 1);

    // Paused: running jobs finish, nothing is published.
    let (code, body) = h.command(wave, "pause").await;
    assert_eq!((code, &body["state"]), (StatusCode::OK, &json!("paused")));
    h.work(&first[1]).await;
    assert!(h.dispatch(wave).await.is_empty());
    let (code, _) = h.command(wave, "resume").await;
    assert_eq!(code, StatusCode::OK);
    let resumed = h.dispatch(wave).await;
    assert_eq!(resumed.len(), 1);

    // A coordinator that died between marking and publishing: the next
    // round (a new dispatcher) publishes that job again, and nothing else.
    h.work(&more[0]).await;
    let next = h.store.next_to_publish(wave, 1).await.unwrap();
    assert_eq!(h.store.mark_published(&next).await.unwrap(), next);
    let again = h.dispatch(wave).await;
    assert_eq!(again, next, "only the unconfirmed job is published again");
    // A restarted dispatcher does not publish what was published.
    assert!(h.dispatch(wave).await.is_empty());

    // The rest of pass 1.
    let mut pending = vec![resumed[0].clone(), next[0].clone()];
    for _ in 0..10 {
        for job in pending.drain(..) {
            h.work(&job).await;
        }
        pending = h.dispatch(wave).await;
        if pending.is_empty() {
            break;
        }
    }
    let status = h.status(wave).await;
    assert_eq!(status["counts"]["completed"], 5, "{status}");
    assert_eq!(status["counts"]["items_copied"], 50);
    assert_eq!(status["counts"]["bytes_copied"], 5000);
    assert_eq!(status["state"], "running", "no final pass was asked for");

    // Sync asks every mailbox for pass 2.
    let (code, _) = h.command(wave, "sync").await;
    assert_eq!(code, StatusCode::OK);
    let delta = h.dispatch(wave).await;
    assert_eq!(delta.len(), 2);
    assert!(delta.iter().all(|j| j.pass == 2));

    // The reaper: a lost worker's pass is queued again and re-published...
    h.lose_worker(&delta[0], "worker-a").await;
    let reaped = reap_once(h.store.as_ref()).await.unwrap();
    assert_eq!(reaped, [(delta[0].mailbox, ReapOutcome::Requeued)]);
    assert_eq!(
        h.store.mailbox(delta[0].mailbox).await.unwrap().state,
        MailboxState::Queued
    );
    assert_eq!(h.dispatch(wave).await, [delta[0].clone()]);
    // ...and after max_attempts (2) it fails with the reason.
    h.lose_worker(&delta[0], "worker-b").await;
    let reaped = reap_once(h.store.as_ref()).await.unwrap();
    assert_eq!(
        reaped,
        [(
            delta[0].mailbox,
            ReapOutcome::Failed("worker lost 2 times".into())
        )]
    );
    assert!(reap_once(h.store.as_ref()).await.unwrap().is_empty());
    let status = h.status(wave).await;
    assert_eq!(status["counts"]["failed"], 1);
    assert_eq!(status["errors"][0]["mailbox"], delta[0].mailbox);
    assert_eq!(status["errors"][0]["error"], "worker lost 2 times");
    let (code, body) = h
        .api("GET", &format!("/api/v1/waves/{wave}/mailboxes"), None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body.as_array().unwrap().len(), 5);

    // Cancel: queued mailboxes go back to pending, nothing more is published.
    let queued = h.dispatch(wave).await;
    assert_eq!(queued.len(), 1, "the failed one freed a slot");
    let (code, body) = h.command(wave, "cancel").await;
    assert_eq!(
        (code, &body["state"]),
        (StatusCode::OK, &json!("cancelled"))
    );
    assert_eq!(
        h.store.mailbox(queued[0].mailbox).await.unwrap().state,
        MailboxState::Pending
    );
    let lease = h
        .store
        .acquire_lease(
            queued[0].mailbox,
            queued[0].pass,
            "late",
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        .expect("nobody holds it");
    assert!(
        !h.store.start_pass(&lease).await.unwrap(),
        "its job is stale"
    );
    assert!(h.dispatch(wave).await.is_empty());
    let (code, body) = h.command(wave, "start").await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "conflict");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cancelled"),
        "{body}"
    );
}

/// Complete: a final pass for every mailbox, then the wave is completed.
async fn final_pass_flow(store: Arc<dyn Store>) {
    let h = Harness::new(store);
    let csv = "source,target\na@old,a@new\nb@old,b@new\n";
    let (code, body) = h
        .api("POST", "/api/v1/waves", Some(create_body("final", csv)))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    let wave = body["id"].as_i64().unwrap();
    let (code, _) = h.command(wave, "complete").await;
    assert_eq!(
        code,
        StatusCode::CONFLICT,
        "a created wave is started first"
    );
    h.command(wave, "start").await;
    for job in h.dispatch(wave).await {
        h.work(&job).await;
    }
    let (code, body) = h.command(wave, "complete").await;
    assert_eq!((code, &body["final_pass"]), (StatusCode::OK, &json!(true)));
    let last = h.dispatch(wave).await;
    assert_eq!(last.len(), 2);
    assert!(last.iter().all(|j| j.pass == 2));
    assert_eq!(h.status(wave).await["state"], "running");
    for job in &last {
        h.work(job).await;
    }
    h.dispatch(wave).await;
    let status = h.status(wave).await;
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(status["counts"]["completed"], 2);
    let (code, _) = h.command(wave, "sync").await;
    assert_eq!(code, StatusCode::CONFLICT);
}

/// Waves between the same pair of servers share one cap; a wave to other
/// servers has its own.
async fn waves_between_the_same_servers_share_the_cap(store: Arc<dyn Store>) {
    let h = Harness::new(store);
    let csv = "source,target\na@old,a@new\nb@old,b@new\nc@old,c@new\n";
    let elsewhere = config(2).replace("/srv/mail/", "/srv/elsewhere/");
    let mut waves = Vec::new();
    for (name, config) in [
        ("pair-1", config(2)),
        ("pair-2", config(3)),
        ("elsewhere", elsewhere),
    ] {
        let body = json!({"name": name, "config_toml": config, "mailboxes_csv": csv});
        let (code, body) = h.api("POST", "/api/v1/waves", Some(body)).await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
        let wave = body["id"].as_i64().unwrap();
        h.command(wave, "start").await;
        waves.push(wave);
    }
    let [pair_1, pair_2, elsewhere] = waves[..] else {
        unreachable!()
    };
    let mut done = 0;
    let mut rounds = 0;
    while done < 9 {
        rounds += 1;
        assert!(rounds < 20, "the waves never finished");
        let published = h.dispatch(pair_1).await;
        let shared =
            h.store.in_flight(pair_1).await.unwrap() + h.store.in_flight(pair_2).await.unwrap();
        assert!(
            shared <= 2,
            "{shared} in flight between one pair of servers, caps 2 and 3"
        );
        assert!(h.store.in_flight(elsewhere).await.unwrap() <= 2);
        if rounds == 1 {
            let of = |wave| published.iter().filter(|j| j.wave == wave).count();
            assert_eq!(
                (of(pair_1) + of(pair_2), of(elsewhere)),
                (2, 2),
                "{published:?}"
            );
        }
        for job in &published {
            h.work(job).await;
        }
        done += published.len();
    }
}

/// A queue whose first publish waits (up to 10 s) until the store shows
/// every job of the wave marked and none confirmed: the next batch marked
/// while the first is being published.
struct OverlapQueue {
    store: Arc<dyn Store>,
    wave: WaveId,
    jobs: usize,
    overlapped: Mutex<Option<bool>>,
    inner: MemoryQueue,
}

#[async_trait]
impl JobQueue for OverlapQueue {
    async fn publish(&self, jobs: &[Job]) -> Result<(), QueueError> {
        if self.overlapped.lock().unwrap().is_none() {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let overlapped = loop {
                let unconfirmed = self.store.unpublished_jobs(self.wave).await.unwrap();
                if unconfirmed.len() == self.jobs {
                    break true;
                }
                if tokio::time::Instant::now() >= deadline {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            *self.overlapped.lock().unwrap() = Some(overlapped);
        }
        self.inner.publish(jobs).await
    }

    async fn next(&self) -> Result<Option<Box<dyn Delivery>>, QueueError> {
        self.inner.next().await
    }
}

#[tokio::test]
async fn the_next_batch_is_marked_while_one_is_published() {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let jobs = 2500;
    let h = Harness::new(Arc::clone(&store));
    let csv: String = std::iter::once("source,target\n".to_owned())
        .chain((0..jobs).map(|i| format!("u{i}@old,u{i}@new\n")))
        .collect();
    let body = json!({"name": "overlap", "config_toml": config(jobs), "mailboxes_csv": csv});
    let (status, created) = h.api("POST", "/api/v1/waves", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let wave = created["id"].as_i64().unwrap();
    assert_eq!(h.command(wave, "start").await.0, StatusCode::OK);
    let queue = OverlapQueue {
        store: Arc::clone(&store),
        wave,
        jobs,
        overlapped: Mutex::new(None),
        inner: MemoryQueue::default(),
    };
    let report = dispatch_once(store.as_ref(), &queue).await.unwrap();
    assert_eq!(report.published.len(), jobs);
    assert_eq!(*queue.overlapped.lock().unwrap(), Some(true));
    assert!(store.unpublished_jobs(wave).await.unwrap().is_empty());
}

/// A wave whose stored configuration this build cannot read (here: a
/// value of the wrong type, as a newer coordinator might write) is not
/// dispatched at all: not at a default cap, not sharing the pair's cap. Its
/// status says why; the other waves go on; its expired leases are re-queued,
/// never failed on a guessed attempt limit.
async fn an_unreadable_configuration_stops_its_wave_only(store: Arc<dyn Store>, url: &str) {
    let h = Harness::new(store);
    let csv = "source,target\nx@old,x@new\ny@old,y@new\n";
    let mut waves = Vec::new();
    for name in ["readable", "unreadable"] {
        let body = json!({"name": name, "config_toml": config(1), "mailboxes_csv": csv});
        let (code, body) = h.api("POST", "/api/v1/waves", Some(body)).await;
        assert_eq!(code, StatusCode::CREATED, "{body}");
        waves.push(body["id"].as_i64().unwrap());
    }
    let [readable, unreadable] = waves[..] else {
        unreachable!()
    };
    h.command(readable, "start").await;
    h.command(unreadable, "start").await;
    let (db, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    db.execute(
        "UPDATE waves SET config = jsonb_set(config, '{config,migration,max_concurrent_mailboxes}', '\"many\"') WHERE id = $1",
        &[&unreadable],
    )
    .await
    .unwrap();

    let report = dispatch_once(h.store.as_ref(), h.queue.as_ref())
        .await
        .unwrap();
    let published = h.queue.take();
    assert!(
        published.iter().all(|j| j.wave == readable),
        "{published:?}"
    );
    assert_eq!(published.len(), 1, "the readable wave at its own cap of 1");
    assert_eq!(report.unreadable.len(), 1, "{report:?}");
    assert_eq!(report.unreadable[0].0, unreadable);
    assert!(
        report.unreadable[0].1.contains("max_concurrent_mailboxes"),
        "{report:?}"
    );
    assert_eq!(h.store.in_flight(unreadable).await.unwrap(), 0);

    let status = h.status(unreadable).await;
    assert!(status["max_concurrent_mailboxes"].is_null(), "{status}");
    assert!(
        status["config_error"]
            .as_str()
            .unwrap()
            .contains("cannot be read"),
        "{status}"
    );
    assert!(h.status(readable).await["config_error"].is_null());
}

#[tokio::test]
async fn waves_share_the_cap_over_sqlite() {
    waves_between_the_same_servers_share_the_cap(Arc::new(SqliteStore::in_memory().unwrap())).await;
}

#[tokio::test]
async fn control_plane_over_sqlite() {
    control_plane_flow(Arc::new(SqliteStore::in_memory().unwrap())).await;
}

#[tokio::test]
async fn final_pass_over_sqlite() {
    final_pass_flow(Arc::new(SqliteStore::in_memory().unwrap())).await;
}

#[tokio::test]
async fn control_plane_over_postgres() {
    const ADMIN: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";
    let (admin, connection) = tokio_postgres::connect(ADMIN, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable on 127.0.0.1:5432 ({e}); this test needs it")
        });
    tokio::spawn(connection);
    let name = format!(
        "mailwave_test_{:016x}",
        RandomState::new().hash_one(std::process::id())
    );
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    let outcome = tokio::spawn(async move {
        let store = PostgresStore::connect_and_migrate(&url).await.unwrap();
        let store: Arc<dyn Store> = Arc::new(store);
        control_plane_flow(Arc::clone(&store)).await;
        final_pass_flow(Arc::clone(&store)).await;
        an_unreadable_configuration_stops_its_wave_only(store, &url).await;
    })
    .await;
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Sends one HTTP/1.1 request over a fresh connection; the status and body.
async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1;
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn served_coordinator_dispatches_and_stops_on_shutdown() {
    use mailwave_coordinator::settings::CoordinatorSettings;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let settings = CoordinatorSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: String::new(),
        database_ca_file: None,
        amqp_url: String::new(),
        amqp_ca_file: None,
        queue_prefix: "test".into(),
        token_env: None,
        token_file: Some(token_file),
        reaper_interval_secs: 1,
        // Long: the command's wake-up, not the interval, must publish.
        dispatch_interval_ms: 3_600_000,
        header_timeout_secs: 10,
        request_timeout_secs: 60,
        max_connections: 64,
        max_body_bytes: 64 * 1024 * 1024,
        tls_certificate_file: None,
        tls_key_file: None,
    };
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let queue = Arc::new(RecordingQueue::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mailwave_coordinator::serve::run(
        settings,
        store.clone(),
        queue.clone(),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));

    let body = create_body(
        "served",
        "source,target\na@old,a@new\nb@old,b@new\nc@old,c@new\n",
    );
    let (code, created) = http(addr, "POST", "/api/v1/waves", &body.to_string()).await;
    assert_eq!(code, 201, "{created}");
    let wave = created["id"].as_i64().unwrap();
    let (code, _) = http(addr, "POST", &format!("/api/v1/waves/{wave}/start"), "").await;
    assert_eq!(code, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while queue.published.lock().unwrap().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "nothing dispatched");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(queue.take().len(), 2, "the cap of the wave");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the coordinator stops on shutdown")
        .unwrap()
        .unwrap();
}
