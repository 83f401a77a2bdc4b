//! `mailwave run` into an IMAP target that only takes XOAUTH2, as Exchange
//! Online does, with app-only tokens from the client credentials grant:
//! the real binary, real Dovecot servers (the target validates tokens at the
//! Graph emulator's introspection endpoint), the emulator in-process as the
//! identity platform, and the independent checker on every message.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use mailwave_tests::graph_emulator::{
    AppSeed, EmulatorConfig, GraphEmulator, OUTLOOK_SCOPE, TenantSeed,
};
use mailwave_tests::harness::{Migration, RunResult, dovecot_endpoint, folder_on};
use mailwave_tests::verify::{self, CompareOptions};
use mailwave_tests::{Auth, CorpusSpec, DovecotOptions, DovecotServer, corpus};
use serde_json::{Value, json};

const TENANT: &str = "contoso-tenant";
/// The tenant's primary domain: an app-only token of the tenant is good
/// for every `user@DOMAIN` of the target.
const DOMAIN: &str = "contoso.example";
/// The app mailwave runs as.
const APP: &str = "mailwave-migration";
const APP_SECRET: &str = "app-secret-Qx7~vT2pLm9";
/// A second app, for the checker's own logins to the target.
const CHECKER_APP: &str = "exactness-checker";
const CHECKER_SECRET: &str = "checker-secret-Zr4";

/// The identity platform, with mailwave's app (`app`) and the checker's.
async fn emulator(app: AppSeed, token_lifetime: Duration) -> GraphEmulator {
    let mut tenant = TenantSeed::new(TENANT)
        .app(app)
        .app(AppSeed::with_secret(CHECKER_APP, CHECKER_SECRET));
    tenant.domains = vec![DOMAIN.to_owned()];
    GraphEmulator::start(
        EmulatorConfig::default()
            .tenant(tenant)
            .token_lifetime(token_lifetime),
    )
    .await
    .expect("the Graph emulator starts")
}

fn start_dovecot(options: DovecotOptions) -> DovecotServer {
    DovecotServer::start(options).expect("start Dovecot (apt-get install dovecot-imapd)")
}

/// A password source with the users' corpora.
fn source_with_mail(users: &[&str], seed: u64, messages: usize) -> DovecotServer {
    let mut options = DovecotOptions::default().separator('.');
    for user in users {
        options = options.user(user, &format!("pw-{user}"));
    }
    let source = start_dovecot(options);
    let spec = CorpusSpec::for_server(&source, seed).messages(messages);
    corpus::load_users(&source, users, &spec).expect("load the source corpus");
    source
}

/// A target that takes XOAUTH2 (and OAUTHBEARER) logins only, validated at
/// `introspection_url`; its users are `user@DOMAIN`.
fn xoauth2_only_target(users: &[&str], introspection_url: &str) -> DovecotServer {
    let mut options = DovecotOptions {
        auth_mechanisms: Vec::new(),
        ..DovecotOptions::default()
    }
    .separator('/')
    .oauth2_introspection(introspection_url);
    for user in users {
        options = options.user(&target_user(user), "passwords-are-not-accepted-here");
    }
    start_dovecot(options)
}

fn target_user(user: &str) -> String {
    format!("{user}@{DOMAIN}")
}

/// A migration of `users` (`user` → `user@DOMAIN`) into the XOAUTH2 target
/// as mailwave's app of the emulator's tenant; `credential` gives the
/// app's credential lines of `[target.oauth2]` (it may write files into the
/// migration's directory, which it is given).
fn migration(
    source: &DovecotServer,
    target: &DovecotServer,
    emu: &GraphEmulator,
    users: &[&str],
    credential: impl FnOnce(&Path) -> String,
    extra: &str,
) -> Arc<Migration> {
    let mut csv = String::from("source,target\n");
    for user in users {
        csv.push_str(&format!("{user},{}\n", target_user(user)));
    }
    let migration = Migration::new("", "", "", &csv).expect("a migration directory");
    let source_toml = dovecot_endpoint(source, &migration.dir().join("source.pw"));
    let credential = credential(migration.dir());
    let config = format!(
        "[source]\n{source_toml}\n\
         [target]\nkind = \"imap\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nauth = \"xoauth2\"\ntimeout_secs = 60\n\n\
         [target.oauth2]\ntenant = \"{TENANT}\"\nclient_id = \"{APP}\"\nauthority = \"{authority}\"\n{credential}\n\
         {extra}\n",
        port = target.port(),
        authority = emu.authority_url(),
    );
    std::fs::write(&migration.config, config).expect("write the configuration");
    Arc::new(migration)
}

/// Writes the client secret into a file of `dir` and returns the
/// `[target.oauth2]` line naming it.
fn secret_file(dir: &Path, secret: &str) -> String {
    let path = dir.join("client-secret");
    std::fs::write(&path, format!("{secret}\n")).expect("write the secret file");
    format!("client_secret_file = \"{}\"\n", path.display())
}

/// Runs `mailwave run` off the runtime's threads: the emulator in this
/// process must keep answering while the binary waits for it. Returns the
/// run and how long it took.
async fn run(migration: &Arc<Migration>) -> (RunResult, Duration) {
    let migration = Arc::clone(migration);
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let result = migration.run().expect("mailwave runs");
        (result, started.elapsed())
    })
    .await
    .expect("the run's thread")
}

/// An app-only token of the checker's app, for the checker's logins.
async fn checker_token(emu: &GraphEmulator) -> String {
    let response = reqwest::Client::new()
        .post(emu.token_url(TENANT))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CHECKER_APP),
            ("client_secret", CHECKER_SECRET),
            ("scope", OUTLOOK_SCOPE),
        ])
        .send()
        .await
        .expect("the token endpoint answers");
    let body: Value = response.json().await.expect("a JSON token response");
    body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access token: {body}"))
        .to_owned()
}

/// Every message of every user is in the target exactly once, with its
/// flags, date and folder. The target is read first, right after its token
/// was issued (tokens live a few seconds in these tests).
async fn assert_exact(
    emu: &GraphEmulator,
    source: &DovecotServer,
    target: &DovecotServer,
    users: &[&str],
) {
    let options = CompareOptions::default();
    for user in users {
        let mut target_endpoint = target.master_endpoint(user);
        target_endpoint.auth = Auth::Xoauth2 {
            user: target_user(user),
            token: checker_token(emu).await,
        };
        let target_snapshot = verify::snapshot(&target_endpoint, &options)
            .await
            .unwrap_or_else(|e| panic!("reading {user}'s target: {e:#}"));
        let source_snapshot = verify::snapshot(&source.master_endpoint(user), &options)
            .await
            .unwrap_or_else(|e| panic!("reading {user}'s source: {e:#}"));
        let report = verify::compare_snapshots(
            &source_snapshot,
            &target_snapshot,
            folder_on(target.separator()),
            &options,
        );
        assert!(
            report.source_messages > 0,
            "{user}: the source has messages"
        );
        report.assert_exact();
    }
}

/// The target's token introspection, in front of the emulator's: it
/// counts the tokens the target asks about and those it was told are not
/// active (a refused login), can call the first `refuse_first` tokens
/// inactive, as a server does with a token that expired between its fetch
/// and the login, and answers `slowness` after the emulator did, as
/// Exchange Online's logins take their time (the token's validity is
/// checked on arrival).
struct Introspection {
    url: String,
    lookups: AtomicUsize,
    inactive: AtomicUsize,
    refuse_first: usize,
    slowness: Duration,
    upstream: String,
    http: reqwest::Client,
}

impl Introspection {
    async fn start(
        emu: &GraphEmulator,
        refuse_first: usize,
        slowness: Duration,
    ) -> Arc<Introspection> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let introspection = Arc::new(Introspection {
            url: format!(
                "http://{}/introspect?token=",
                listener.local_addr().unwrap()
            ),
            lookups: AtomicUsize::new(0),
            inactive: AtomicUsize::new(0),
            refuse_first,
            slowness,
            upstream: emu.introspection_url(),
            http: reqwest::Client::new(),
        });
        let router = axum::Router::new()
            .route("/introspect", axum::routing::get(introspect))
            .with_state(Arc::clone(&introspection));
        tokio::spawn(async move { axum::serve(listener, router).await });
        introspection
    }

    /// Tokens asked about, and how many of them were found inactive.
    fn counts(&self) -> (usize, usize) {
        (
            self.lookups.load(Ordering::SeqCst),
            self.inactive.load(Ordering::SeqCst),
        )
    }
}

async fn introspect(
    State(introspection): State<Arc<Introspection>>,
    Query(query): Query<HashMap<String, String>>,
) -> Json<Value> {
    let lookup = introspection.lookups.fetch_add(1, Ordering::SeqCst);
    let answer = if lookup < introspection.refuse_first {
        json!({ "active": false })
    } else {
        let token = query.get("token").cloned().unwrap_or_default();
        introspection
            .http
            .get(format!("{}{token}", introspection.upstream))
            .send()
            .await
            .expect("the emulator answers")
            .json()
            .await
            .expect("a JSON introspection")
    };
    if answer["active"] != true {
        introspection.inactive.fetch_add(1, Ordering::SeqCst);
    }
    tokio::time::sleep(introspection.slowness).await;
    Json(answer)
}

/// XOAUTH2 logins the target accepted, from its log.
fn xoauth2_logins(target: &DovecotServer) -> usize {
    target
        .log_contents()
        .lines()
        .filter(|l| l.contains(" Login: user=<") && l.contains("method=XOAUTH2"))
        .count()
}

/// The target takes no password, not even the master user's.
async fn assert_passwords_are_refused(target: &DovecotServer, user: &str) {
    let mut with_password = target.master_endpoint(user);
    with_password.auth = Auth::Login {
        user: target_user(user),
        password: "passwords-are-not-accepted-here".into(),
    };
    assert!(
        with_password.connect().await.is_err(),
        "a password login to the XOAUTH2 target"
    );
    assert!(
        target
            .master_endpoint(&target_user(user))
            .connect()
            .await
            .is_err(),
        "a master-user login to the XOAUTH2 target"
    );
}

/// The shared body of the secret and certificate runs: several mailboxes,
/// one at a time, while tokens live two seconds and every login takes
/// 0.7 s: the run outlives its first token whatever the machine's speed.
async fn run_with_expiring_tokens(app: AppSeed, credential: impl FnOnce(&Path) -> String) {
    let lifetime = Duration::from_secs(2);
    let users = ["alice", "bob", "carol", "dave", "erin", "fred"];
    let emu = emulator(app, lifetime).await;
    let introspection = Introspection::start(&emu, 0, Duration::from_millis(700)).await;
    let source = source_with_mail(&users, 41, 80);
    let target = xoauth2_only_target(&users, &introspection.url);
    let migration = migration(
        &source,
        &target,
        &emu,
        &users,
        credential,
        "[migration]\nmax_concurrent_mailboxes = 1\n",
    );

    let (result, took) = run(&migration).await;
    assert!(
        result.success,
        "mailwave run failed\n--- stdout\n{}\n--- stderr\n{}\n--- target log\n{}",
        result.stdout,
        result.stderr,
        target.log_contents()
    );
    let tokens = emu.tokens_issued();
    let accepted = xoauth2_logins(&target);
    let (lookups, inactive) = introspection.counts();
    for user in users {
        assert_eq!(result.mailbox(user)["state"], "completed");
    }
    // A mailbox may be retried from its checkpoints when Dovecot's imap
    // process dies on two concurrent CREATEs of one user (its list index
    // locks, "Resource deadlock avoided"), but never for its login.
    for retry in result
        .stderr
        .lines()
        .filter(|l| l.contains("retrying mailbox"))
    {
        assert!(
            !retry.contains("logging in") && !retry.contains("access token"),
            "{retry}"
        );
    }
    assert_eq!(inactive, 0, "no login failed:\n{}", target.log_contents());
    assert_eq!(lookups, accepted, "{}", target.log_contents());
    assert!(
        accepted >= users.len(),
        "{accepted} XOAUTH2 logins:\n{}",
        target.log_contents()
    );
    // The run outlived its first token (six mailboxes one after the other,
    // each waiting 0.7 s for a login), so it had to get more; one token
    // serves every connection until a tenth of its lifetime is left, so no
    // more than one per 1.8 s (plus the first).
    assert!(took > lifetime * 2, "the run took {took:?}");
    assert!(tokens > 1, "{tokens} tokens in a run of {took:?}");
    let most = (took.as_secs_f64() / 1.8).floor() as usize + 1;
    assert!(
        tokens <= most,
        "{tokens} tokens for {accepted} logins in {took:?}: the token is not shared"
    );

    assert_exact(&emu, &source, &target, &users).await;
    assert_passwords_are_refused(&target, users[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_secret_run_refreshes_its_token_and_copies_exactly() {
    run_with_expiring_tokens(AppSeed::with_secret(APP, APP_SECRET), |dir| {
        secret_file(dir, APP_SECRET)
    })
    .await;
}

/// A run whose app signs its client assertions with a certificate, the
/// `oauth2` table's `extra` lines choosing how.
async fn certificate_run(extra: &str) {
    let keys = tempfile::tempdir().unwrap();
    let (cert, key) = mailwave_tests::tenants::app_certificate(keys.path(), "mailwave-migration");
    let app = AppSeed::with_certificate(APP, &std::fs::read_to_string(&cert).unwrap());
    run_with_expiring_tokens(app, |_| {
        format!(
            "certificate_file = \"{}\"\nprivate_key_file = \"{}\"\n{extra}",
            cert.display(),
            key.display()
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_assertion_run_refreshes_its_token_and_copies_exactly() {
    certificate_run("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rs256_certificate_assertion_run_for_an_older_registration_copies_exactly() {
    certificate_run("assertion_algorithm = \"RS256\"\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_secret_fails_every_mailbox_with_a_reason_that_hides_it() {
    let users = ["gina", "hank", "ivan"];
    let emu = emulator(
        AppSeed::with_secret(APP, APP_SECRET),
        Duration::from_secs(3599),
    )
    .await;
    let introspection = Introspection::start(&emu, 0, Duration::ZERO).await;
    let source = source_with_mail(&users, 43, 10);
    let target = xoauth2_only_target(&users, &introspection.url);
    let wrong = "wrong-secret-Hq3vN8";
    let migration = migration(
        &source,
        &target,
        &emu,
        &users,
        |dir| secret_file(dir, wrong),
        "",
    );

    let (result, _) = run(&migration).await;
    assert!(!result.success, "a failed mailbox gives a non-zero exit");
    for user in users {
        let mailbox = result.mailbox(user);
        assert_eq!(mailbox["state"], "failed", "{}", result.stdout);
        assert_eq!(
            result.stat(user, "retries"),
            0,
            "a wrong secret is not retried"
        );
        let reason = mailbox["last_error"].as_str().expect("a reason");
        assert!(!reason.contains('\n'), "one line: {reason}");
        assert!(
            reason.contains(&format!("client {APP} of tenant {TENANT}")),
            "{reason}"
        );
        assert!(reason.contains("invalid_client"), "{reason}");
        assert!(
            result.stdout.contains(&format!("FAILED {user}: ")),
            "{}",
            result.stdout
        );
    }
    let report = result.report.to_string();
    for secret in [wrong, APP_SECRET] {
        for (what, text) in [
            ("stdout", &result.stdout),
            ("stderr", &result.stderr),
            ("report", &report),
        ] {
            assert!(
                !text.contains(secret),
                "the secret is in the {what}:\n{text}"
            );
        }
    }
    assert_eq!(emu.tokens_issued(), 0);
    assert_eq!(
        introspection.counts(),
        (0, 0),
        "no login was tried without a token"
    );
    assert_eq!(xoauth2_logins(&target), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_refused_at_login_is_replaced_once_and_the_login_retried() {
    let users = ["kate"];
    let emu = emulator(
        AppSeed::with_secret(APP, APP_SECRET),
        Duration::from_secs(3599),
    )
    .await;
    let introspection = Introspection::start(&emu, 1, Duration::ZERO).await;
    let source = source_with_mail(&users, 47, 30);
    let target = xoauth2_only_target(&users, &introspection.url);
    let migration = migration(
        &source,
        &target,
        &emu,
        &users,
        |dir| secret_file(dir, APP_SECRET),
        "[migration]\nconnections_per_mailbox = 1\n",
    );

    let (result, _) = run(&migration).await;
    assert!(
        result.success,
        "mailwave run failed\n--- stdout\n{}\n--- stderr\n{}",
        result.stdout, result.stderr
    );
    assert_eq!(result.mailbox("kate")["state"], "completed");
    assert_eq!(
        result.stat("kate", "retries"),
        0,
        "the login was retried, not the mailbox"
    );
    let accepted = xoauth2_logins(&target);
    let (lookups, inactive) = introspection.counts();
    assert_eq!(inactive, 1, "the first login was refused");
    assert_eq!(lookups, accepted + 1, "{}", target.log_contents());
    assert_eq!(
        emu.tokens_issued(),
        2,
        "the first token and the one that replaced it"
    );
    assert_exact(&emu, &source, &target, &users).await;
}
