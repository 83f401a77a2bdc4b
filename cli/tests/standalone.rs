//! `mailwave run` end to end: real Dovecot servers on both sides, the real
//! binary, and the independent checker comparing every message (bytes,
//! flags, received date, folder, duplicates, missing).

use std::time::{Duration, Instant};

use mailwave_tests::corpus::{self, LARGE_MESSAGE_BYTES};
use mailwave_tests::harness::{Migration, dovecot_endpoint, folder_on};
use mailwave_tests::verify::{self, CompareOptions};
use mailwave_tests::{CorpusSpec, DovecotOptions, DovecotServer, SizeProfile, SpecialFolder};

fn server(separator: char, users: &[&str]) -> DovecotServer {
    let mut options = DovecotOptions::default().separator(separator);
    for user in users {
        options = options.user(user, &format!("pw-{user}"));
    }
    DovecotServer::start(options).expect("start Dovecot (apt-get install dovecot-imapd)")
}

fn csv(users: &[&str]) -> String {
    let mut csv = String::from("source,target\n");
    for user in users {
        csv.push_str(&format!("{user},{user}\n"));
    }
    csv
}

/// A migration from `source` to `target`, both Dovecot, master-user login.
fn migration(
    source: &DovecotServer,
    target: &DovecotServer,
    users: &[&str],
    extra: &str,
) -> Migration {
    let migration = Migration::new("", "", extra, &csv(users)).unwrap();
    let source_toml = dovecot_endpoint(source, &migration.dir().join("source.pw"));
    let target_toml = dovecot_endpoint(target, &migration.dir().join("target.pw"));
    std::fs::write(
        &migration.config,
        format!("[source]\n{source_toml}\n[target]\n{target_toml}\n{extra}\n"),
    )
    .unwrap();
    migration
}

async fn assert_exact(source: &DovecotServer, target: &DovecotServer, users: &[&str]) {
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

#[tokio::test]
async fn first_pass_noop_delta_and_delta_with_changes_are_exact() {
    let users = ["alice", "bob", "carol"];
    let source = server('.', &users);
    let target = server('/', &users);
    let spec = CorpusSpec::for_server(&source, 7).messages(60);
    let corpora = corpus::load_users(&source, &users, &spec).unwrap();
    // One mailbox also carries a 25 MB message.
    let large = CorpusSpec::for_server(&source, 8)
        .messages(5)
        .folders(2)
        .tricky(false)
        .large_message(Some(LARGE_MESSAGE_BYTES))
        .generate();
    corpus::add_messages(&source, "alice", &large.messages)
        .await
        .unwrap();
    let migration = migration(&source, &target, &users, "");

    let first = migration.run_ok().unwrap();
    let expected: usize =
        corpora.iter().map(|c| c.messages.len()).sum::<usize>() + large.messages.len();
    assert_eq!(
        first.total("items_copied") as usize,
        expected,
        "{}",
        first.stdout
    );
    assert_exact(&source, &target, &users).await;

    // Nothing changed: a delta pass copies nothing and is quick.
    let started = Instant::now();
    let noop = migration.run_ok().unwrap();
    assert_eq!(noop.total("items_copied"), 0, "{}", noop.stdout);
    assert_eq!(noop.total("flags_updated"), 0);
    assert_eq!(noop.mailbox("alice")["pass"], 2);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_exact(&source, &target, &users).await;

    // New mail arrives and flags change on messages copied before.
    let fresh = CorpusSpec::for_server(&source, 99)
        .messages(12)
        .folders(3)
        .tricky(false)
        .generate();
    corpus::add_messages(&source, "bob", &fresh.messages)
        .await
        .unwrap();
    corpus::set_flags(
        &source,
        "carol",
        "INBOX",
        &[1, 2, 3],
        &["\\Flagged", "$Label1"],
    )
    .await
    .unwrap();
    corpus::set_flags(&source, "carol", "INBOX", &[4], &[])
        .await
        .unwrap();
    let delta = migration.run_ok().unwrap();
    assert_eq!(
        delta.stat("bob", "items_copied") as usize,
        fresh.messages.len()
    );
    assert_eq!(delta.stat("carol", "items_copied"), 0);
    assert_eq!(delta.stat("carol", "flags_updated"), 4, "{}", delta.stdout);
    assert_eq!(delta.stat("alice", "items_copied"), 0);
    assert_exact(&source, &target, &users).await;
}

#[tokio::test]
async fn kill_9_at_any_moment_then_rerun_gives_zero_duplicates() {
    let users = ["dave", "erin"];
    let source = server('/', &users);
    let target = server('.', &users);
    let spec = CorpusSpec::for_server(&source, 21)
        .messages(500)
        .size_profile(SizeProfile::Realistic);
    corpus::load_users(&source, &users, &spec).unwrap();
    // Small batches, so that kills land between and inside many checkpoints.
    let migration = migration(
        &source,
        &target,
        &users,
        "[migration]\nbatch_messages = 25\nconnections_per_mailbox = 2\n",
    );

    let mut kills = 0;
    for wait_for_rows in [30_u64, 250, 600] {
        let mut child = migration.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while migration.ledger_rows() < wait_for_rows && Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(kills >= 2, "the run was killed mid-way at least twice");

    let last = migration.run_ok().unwrap();
    assert_exact(&source, &target, &users).await;
    // A further pass finds nothing to do.
    let again = migration.run_ok().unwrap();
    assert_eq!(again.total("items_copied"), 0, "{}", again.stdout);
    assert!(last.total("items_copied") > 0);
}

#[tokio::test]
async fn changed_uidvalidity_is_remapped_without_duplicating_the_folder() {
    let users = ["frank"];
    let source = server('.', &users);
    let target = server('/', &users);
    let spec = CorpusSpec::for_server(&source, 5).messages(40).folders(4);
    corpus::load_users(&source, &users, &spec).unwrap();
    let migration = migration(&source, &target, &users, "");
    migration.run_ok().unwrap();

    let (old, new) = source.reset_uidvalidity("frank", "INBOX").await.unwrap();
    assert_ne!(old, new);
    let fresh = CorpusSpec::for_server(&source, 6)
        .messages(3)
        .folders(1)
        .tricky(false)
        .generate();
    corpus::add_messages(&source, "frank", &fresh.messages)
        .await
        .unwrap();

    let delta = migration.run_ok().unwrap();
    assert_eq!(
        delta.stat("frank", "items_copied") as usize,
        fresh.messages.len(),
        "{}",
        delta.stdout
    );
    assert_exact(&source, &target, &users).await;
}

/// Turns a state file back into the form the version before connector-owned
/// cursors wrote (migrations V6 and later not applied: HIGHESTMODSEQ and
/// UIDNEXT in their own integer columns, no item versions), with the
/// INBOX's last copy in doubt, as a crash between its APPEND and its commit
/// leaves it.
fn as_written_before_connector_cursors(state: &std::path::Path) {
    let conn = rusqlite::Connection::open(state).unwrap();
    conn.execute_batch(
        "ALTER TABLE ledger DROP COLUMN source_version;
         ALTER TABLE ledger DROP COLUMN target_version;
         ALTER TABLE intents DROP COLUMN source_version;
         ALTER TABLE intents DROP COLUMN target_version;
         ALTER TABLE folder_checkpoints ADD COLUMN highest_modseq INTEGER;
         ALTER TABLE folder_checkpoints ADD COLUMN sync_state TEXT;
         UPDATE folder_checkpoints
             SET highest_modseq = json_extract(source_cursor, '$.highest_modseq');
         ALTER TABLE folder_checkpoints DROP COLUMN source_cursor;
         ALTER TABLE folder_checkpoints ADD COLUMN uid_next INTEGER NOT NULL DEFAULT 0;
         UPDATE folder_checkpoints SET uid_next = json_extract(target_mark, '$.uid_next');
         ALTER TABLE folder_checkpoints DROP COLUMN target_mark;
         ALTER TABLE folder_checkpoints RENAME COLUMN uid_next TO target_mark;
         DROP TABLE folder_failures;
         DELETE FROM refinery_schema_history WHERE version >= 6;

         CREATE TEMP TABLE last AS
             SELECT * FROM ledger WHERE folder = 'INBOX' ORDER BY uid DESC LIMIT 1;
         INSERT INTO intents (mailbox, folder, validity, item, uid, target_folder, target_id,
                              size, content_hash, header_hash, identity, flags)
             SELECT mailbox, folder, validity, item, uid, target_folder, NULL,
                    size, content_hash, header_hash, identity, flags FROM last;
         DELETE FROM ledger WHERE (mailbox, folder, validity, item) IN
             (SELECT mailbox, folder, validity, item FROM last);
         UPDATE folder_checkpoints
             SET high_water_mark = (SELECT uid - 1 FROM last),
                 target_mark = (SELECT CAST(target_id AS INTEGER) FROM last)
             WHERE folder = 'INBOX';",
    )
    .unwrap();
    let modseqs: i64 = conn
        .query_row(
            "SELECT count(*) FROM folder_checkpoints WHERE highest_modseq IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(modseqs > 0, "Dovecot's HIGHESTMODSEQ was kept");
}

#[tokio::test]
async fn a_state_file_of_the_previous_version_resumes_without_recopying() {
    let users = ["dana"];
    let source = server('.', &users);
    let target = server('/', &users);
    let spec = CorpusSpec::for_server(&source, 11).messages(30).folders(3);
    let corpora = corpus::load_users(&source, &users, &spec).unwrap();
    let migration = migration(&source, &target, &users, "");
    let first = migration.run_ok().unwrap();
    assert_eq!(
        first.total("items_copied") as usize,
        corpora[0].messages.len()
    );

    as_written_before_connector_cursors(&migration.state);
    corpus::set_flags(&source, "dana", "INBOX", &[1], &["\\Flagged", "$Resumed"])
        .await
        .unwrap();
    let resumed = migration.run_ok().unwrap();
    assert_eq!(
        resumed.stat("dana", "items_copied"),
        0,
        "{}",
        resumed.stdout
    );
    assert_eq!(
        resumed.stat("dana", "items_recovered"),
        1,
        "the copy in doubt"
    );
    assert_eq!(resumed.stat("dana", "flags_updated"), 1);
    assert_exact(&source, &target, &users).await;
}

#[tokio::test]
async fn bad_rows_and_a_wrong_password_fail_alone() {
    let users = ["gina", "hank", "ivan"];
    let source = server('.', &users);
    let target = server('.', &users);
    let spec = CorpusSpec::for_server(&source, 11).messages(15).folders(3);
    corpus::load_users(&source, &users, &spec).unwrap();
    // Mailboxes log in as themselves with passwords from the CSV.
    let endpoint = |server: &DovecotServer| {
        format!(
            "kind = \"imap\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n",
            server.port()
        )
    };
    let csv = "source,target,source_password,target_password\n\
               gina,gina,pw-gina,pw-gina\n\
               hank,hank,WRONG,pw-hank\n\
               ,nobody,x,y\n\
               ivan,ivan,pw-ivan,pw-ivan,extra\n\
               ivan,ivan,pw-ivan,pw-ivan\n";
    let migration = Migration::new(&endpoint(&source), &endpoint(&target), "", csv).unwrap();

    let result = migration.run().unwrap();
    assert!(!result.success, "a failed mailbox gives a non-zero exit");
    assert!(
        result.stdout.contains("REJECTED CSV line 4"),
        "{}",
        result.stdout
    );
    assert!(
        result.stdout.contains("REJECTED CSV line 5"),
        "{}",
        result.stdout
    );
    assert!(result.stdout.contains("FAILED hank: "), "{}", result.stdout);
    assert!(
        result.stdout.contains("authentication failed"),
        "{}",
        result.stdout
    );
    assert_eq!(result.mailbox("hank")["state"], "failed");
    assert_eq!(
        result.stat("hank", "retries"),
        0,
        "a wrong password is not retried"
    );
    assert_eq!(result.mailbox("gina")["state"], "completed");
    assert_eq!(result.mailbox("ivan")["state"], "completed");
    assert_exact(&source, &target, &["gina", "ivan"]).await;
    let hank = verify::snapshot(&target.master_endpoint("hank"), &CompareOptions::default())
        .await
        .unwrap();
    assert_eq!(
        hank.message_count(),
        0,
        "nothing was written for the failed mailbox"
    );
}

/// A migration of mailbox `kim` from an IMAP port nobody listens on
/// (connection refused: a transient failure) into a Maildir.
fn unreachable_source(extra: &str) -> Migration {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let source = format!(
        "kind = \"imap\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\npassword_file = \"pw\"\n"
    );
    let migration = Migration::new(
        &source,
        "kind = \"maildir\"\npath = \"out/{mailbox}\"\n",
        extra,
        "source,target\nkim,kim\n",
    )
    .unwrap();
    std::fs::write(migration.dir().join("pw"), "secret\n").unwrap();
    migration
}

#[tokio::test]
async fn an_unreachable_server_is_retried_then_fails_with_the_retries_reported() {
    let migration = unreachable_source("[migration]\nmax_attempts = 3\n");
    let result = migration.run().unwrap();
    assert!(!result.success, "{}", result.stdout);
    assert_eq!(result.mailbox("kim")["state"], "failed");
    assert_eq!(result.stat("kim", "retries"), 2, "{}", result.stdout);
    assert_eq!(result.stat("kim", "throttled"), 0);
    assert!(result.stdout.contains("FAILED kim: "), "{}", result.stdout);
}

/// Issue 7, case 14: waiting is counted against a per-pass limit; a pass
/// that would wait past it fails at once, saying so, instead of sleeping.
#[tokio::test]
async fn a_pass_out_of_waiting_time_fails_instead_of_backing_off() {
    let migration = unreachable_source("[migration]\nmax_attempts = 50\nmax_pass_wait_secs = 0\n");
    let result = migration.run().unwrap();
    assert_eq!(result.code, Some(1), "{}", result.stdout);
    assert_eq!(result.stat("kim", "retries"), 0, "{}", result.stdout);
    assert!(
        result.mailbox("kim")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("max_pass_wait_secs")),
        "{:#?}",
        result.report
    );
}

#[tokio::test]
async fn hostile_folder_names_stay_inside_the_maildir_root() {
    let users = ["judy"];
    let source = server('.', &users);
    // `..` and `../../etc` are listed by Dovecot but cannot be opened: they
    // must be recorded as skipped folders while the rest goes on.
    let names = [
        "INBOX",
        "a/b",
        "%2E%2E",
        "~root",
        "x\\y",
        "Projecten.Überprüfung",
        "..",
        "../../etc",
    ];
    let spec = CorpusSpec::for_server(&source, 3)
        .messages(30)
        .tricky(false)
        .folder_names(names.iter().map(|n| n.to_string()).collect());
    corpus::load_users(&source, &users, &spec).unwrap();
    let root_parent = tempfile::tempdir().unwrap();
    let target = format!(
        "kind = \"maildir\"\npath = \"{}/backup/{{mailbox}}\"\n",
        root_parent.path().display()
    );
    let migration = Migration::new("", &target, "", &csv(&users)).unwrap();
    let source_toml = dovecot_endpoint(&source, &migration.dir().join("source.pw"));
    std::fs::write(
        &migration.config,
        format!("[source]\n{source_toml}\n[target]\n{target}\n"),
    )
    .unwrap();

    let result = migration.run().unwrap();
    assert_eq!(
        result.code,
        Some(3),
        "completed, two folders not copied: {}",
        result.stdout
    );
    assert_eq!(result.mailbox("judy")["state"], "completed_with_errors");
    let failures = result.mailbox("judy")["item_failures"].as_array().unwrap();
    let failed_folders: Vec<_> = failures
        .iter()
        .map(|f| f["folder"].as_str().unwrap())
        .collect();
    assert_eq!(failed_folders, ["..", "../../etc"], "{}", result.stdout);
    assert!(
        failures
            .iter()
            .all(|f| f["scope"] == "folder" && f.get("item").is_none())
    );
    assert!(
        result
            .stdout
            .contains("NOT COPIED judy folder \"..\" (the whole folder)"),
        "{}",
        result.stdout
    );

    // Nothing was written outside the mailbox's root.
    let root = root_parent.path().join("backup").join("judy");
    assert_eq!(names_in(root_parent.path()), ["backup"]);
    assert_eq!(names_in(&root_parent.path().join("backup")), ["judy"]);
    let canonical_root = root.canonicalize().unwrap();
    for entry in walk(&root) {
        let canonical = entry.canonicalize().unwrap();
        assert!(
            canonical.starts_with(&canonical_root),
            "{} escaped",
            entry.display()
        );
    }
    // Every other folder is one directory directly under the root (no
    // spurious levels), and every message arrived once, exact.
    let folder_dirs: Vec<_> = names_in(&root)
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    assert_eq!(
        folder_dirs,
        // As Dovecot names them (modified UTF-7, listescape's `\XX`).
        [
            ".%2E%2E",
            ".Archive",
            ".Drafts",
            ".Junk",
            ".Projecten.&ANw-berpr&APw-fung",
            ".Sent",
            ".Trash",
            ".\\7eroot",
            ".a\\2fb",
            ".x\\5cy",
        ]
    );
    let report = verify::compare_to_maildir(
        &source.master_endpoint("judy"),
        &root,
        |info| info.components().join("/"),
        verify::maildir_folder,
        &CompareOptions {
            skip_folders: vec!["..".into(), "../../etc".into()],
            ..CompareOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        report.source_messages as u64,
        result.stat("judy", "items_copied")
    );
    report.assert_exact();
}

fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn special_folders_land_in_the_targets_localised_folders() {
    let users = ["kim"];
    // The source has no SPECIAL-USE attributes, only Dutch names; the target
    // is Outlook-style with SPECIAL-USE.
    let dutch = vec![];
    let source = DovecotServer::start(
        DovecotOptions::default()
            .separator('.')
            .user("kim", "pw-kim")
            .special_folders(dutch),
    )
    .unwrap();
    let target = DovecotServer::start(
        DovecotOptions::default()
            .separator('/')
            .user("kim", "pw-kim")
            .special_folders(SpecialFolder::outlook()),
    )
    .unwrap();
    let names = [
        "INBOX",
        "Verzonden items",
        "Prullenbak",
        "Projecten",
        "Projecten.Sent",
    ];
    let spec = CorpusSpec::for_server(&source, 4)
        .messages(25)
        .tricky(false)
        .folder_names(names.iter().map(|n| n.to_string()).collect());
    corpus::load_users(&source, &users, &spec).unwrap();
    let migration = migration(&source, &target, &users, "");
    migration.run_ok().unwrap();

    let report = verify::compare(
        &source.master_endpoint("kim"),
        &target.master_endpoint("kim"),
        |info| match info.name.as_str() {
            "Verzonden items" => "Sent Items".to_owned(),
            "Prullenbak" => "Deleted Items".to_owned(),
            _ => folder_on('/')(info),
        },
    )
    .await
    .unwrap();
    report.assert_exact();
}

#[tokio::test]
async fn a_message_the_target_refuses_is_recorded_and_the_mailbox_goes_on() {
    let users = ["lena"];
    let source = server('.', &users);
    // The target refuses messages over 1 MB (Dovecot quota plugin).
    let target = DovecotServer::start(
        DovecotOptions::default().separator('.').user("lena", "pw-lena").extra_config(
            "mail_plugins = quota\nprotocol imap {\n  mail_plugins = quota listescape\n}\nplugin {\n  quota = maildir:User quota\n  quota_rule = *:storage=10G\n  quota_max_mail_size = 1M\n}\n",
        ),
    )
    .unwrap();
    let spec = CorpusSpec::for_server(&source, 9)
        .messages(20)
        .folders(2)
        .tricky(false)
        .size_profile(SizeProfile::Tiny)
        .large_message(Some(3 * 1024 * 1024));
    let corpora = corpus::load_users(&source, &users, &spec).unwrap();
    let migration = migration(&source, &target, &users, "");

    let result = migration.run().unwrap();
    assert_eq!(
        result.code,
        Some(3),
        "completed with an item not copied: {}",
        result.stdout
    );
    assert_eq!(result.mailbox("lena")["state"], "completed_with_errors");
    let failures = result.mailbox("lena")["item_failures"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(failures.len(), 1, "{:#?}", result.report);
    assert_eq!(failures[0]["size"], 3 * 1024 * 1024);
    assert!(
        failures[0]["reason"]
            .as_str()
            .unwrap()
            .contains("refused by the target")
    );
    assert_eq!(result.stat("lena", "items_skipped"), 1);
    assert_eq!(result.stat("lena", "items_failed"), 1);
    assert_eq!(result.stat("lena", "items_skipped_by_policy"), 0);
    assert_eq!(
        result.stat("lena", "items_copied") as usize,
        corpora[0].messages.len() - 1
    );
    assert!(
        result.stdout.contains("NOT COPIED lena"),
        "{}",
        result.stdout
    );

    let report = verify::compare(
        &source.master_endpoint("lena"),
        &target.master_endpoint("lena"),
        folder_on('.'),
    )
    .await
    .unwrap();
    assert_eq!(
        report.missing.len(),
        1,
        "only the refused message is missing"
    );
    assert!(report.duplicates.is_empty() && report.unexpected.is_empty());
    assert!(report.flag_mismatches.is_empty() && report.date_mismatches.is_empty());
}

fn walk(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn starttls_and_implicit_tls_with_authzid_impersonation_and_a_folder_filter() {
    let users = ["mia", "noah"];
    let tls_server = |separator: char| {
        let mut options = DovecotOptions::default()
            .separator(separator)
            .tls(mailwave_tests::Tls::Required);
        for user in users {
            options = options.user(user, &format!("pw-{user}"));
        }
        DovecotServer::start(options).expect("start Dovecot with TLS")
    };
    let source = tls_server('.');
    let target = tls_server('/');
    let spec = CorpusSpec::for_server(&source, 13).messages(30);
    corpus::load_users(&source, &users, &spec).unwrap();

    let migration = Migration::new("", "", "", &csv(&users)).unwrap();
    let (admin, password) = source.master_credentials();
    let password_file = migration.dir().join("admin.pw");
    std::fs::write(&password_file, password).unwrap();
    // STARTTLS on the source's plain port, implicit TLS on the target's TLS
    // port; both verified against the fixture's CA; SASL PLAIN authzid.
    let endpoint = |server: &DovecotServer, tls: &str, port: u16| {
        format!(
            "kind = \"imap\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"{tls}\"\nca_file = \"{}\"\nadmin_user = \"{admin}\"\nimpersonation = \"authzid\"\npassword_file = \"{}\"\n",
            server.ca_pem_path().expect("a CA").display(),
            password_file.display()
        )
    };
    let config = format!(
        "[source]\n{}\n[target]\n{}\n[folders]\nexclude = [\"Junk\", \"Archiv*\"]\n",
        endpoint(&source, "starttls", source.port()),
        endpoint(&target, "implicit", target.tls_port().expect("a TLS port")),
    );
    std::fs::write(&migration.config, config).unwrap();

    let result = migration.run_ok().unwrap();
    assert!(result.total("items_copied") > 0);
    let excluded = vec![
        "Junk".to_owned(),
        "Archiv".into(),
        "Archiv.2024".into(),
        "Archiv.2024.Q1".into(),
        "Archive".into(),
    ];
    for user in users {
        let report = verify::compare_with(
            &source.master_endpoint(user),
            &target.master_endpoint(user),
            folder_on('/'),
            &CompareOptions {
                skip_folders: excluded.clone(),
                ..CompareOptions::default()
            },
        )
        .await
        .unwrap();
        report.assert_exact();
        let copied = verify::snapshot(&target.master_endpoint(user), &CompareOptions::default())
            .await
            .unwrap();
        // Junk and Archive exist in the target (its own special folders)
        // but received nothing; the German `Archiv` tree was not created.
        for folder in &copied.folders {
            let name = folder.info.name.as_str();
            assert!(
                !name.starts_with("Archiv/") && name != "Archiv",
                "{name} was copied"
            );
            if name == "Junk" || name == "Archive" {
                assert!(folder.messages.is_empty(), "{name} received messages");
            }
        }
    }

    // Without the CA the certificate is not trusted, and the mailbox fails
    // with that reason instead of silently going on in the clear.
    let untrusted = std::fs::read_to_string(&migration.config).unwrap().replace(
        &format!(
            "ca_file = \"{}\"\n",
            source.ca_pem_path().unwrap().display()
        ),
        "",
    );
    std::fs::write(&migration.config, untrusted).unwrap();
    let refused = migration.run().unwrap();
    assert!(!refused.success);
    assert_eq!(refused.mailbox("mia")["state"], "failed");
    let reason = refused.mailbox("mia")["last_error"]
        .as_str()
        .unwrap()
        .to_lowercase();
    assert!(
        reason.contains("certificate") || reason.contains("tls"),
        "{reason}"
    );
}

#[tokio::test]
async fn the_shipped_maildir_sample_migrates_into_imap_exactly() {
    let users = ["alice", "bob", "carol"];
    let target = server('.', &users);
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/maildir");
    let source = format!(
        "kind = \"maildir\"\npath = \"{}/{{mailbox}}\"\n",
        sample.display()
    );
    let migration = Migration::new(&source, "", "", &csv(&users)).unwrap();
    let target_toml = dovecot_endpoint(&target, &migration.dir().join("target.pw"));
    std::fs::write(
        &migration.config,
        format!("[source]\n{source}\n[target]\n{target_toml}\n"),
    )
    .unwrap();
    migration.run_ok().unwrap();
    let again = migration.run_ok().unwrap();
    assert_eq!(again.total("items_copied"), 0);

    for user in users {
        let options = CompareOptions::default();
        let from =
            verify::snapshot_maildir(&sample.join(user), verify::maildir_folder, &options).unwrap();
        let to = verify::snapshot(&target.master_endpoint(user), &options)
            .await
            .unwrap();
        assert!(from.message_count() > 0);
        // Localised special folders land in the target's special folders.
        let map = |info: &mailwave_tests::SourceFolderInfo| match info.name.as_str() {
            "Gesendete Elemente" | "Éléments envoyés" => "Sent".to_owned(),
            "Entwürfe" => "Drafts".to_owned(),
            "Corbeille" => "Trash".to_owned(),
            name => name.replace('/', "."),
        };
        let report = verify::compare_snapshots(&from, &to, map, &options);
        report.assert_exact();
    }
}

#[tokio::test]
async fn a_target_folder_deleted_between_passes_is_created_again() {
    let users = ["olga"];
    let source = server('.', &users);
    let target = server('.', &users);
    let spec = CorpusSpec::for_server(&source, 17)
        .messages(10)
        .tricky(false)
        .folder_names(vec!["INBOX".into(), "Projecten".into()]);
    corpus::load_users(&source, &users, &spec).unwrap();
    let migration = migration(&source, &target, &users, "");
    migration.run_ok().unwrap();

    let mut client = target.master_endpoint("olga").connect().await.unwrap();
    client.delete("Projecten").await.unwrap();
    client.logout().await;
    let mut fresh = CorpusSpec::for_server(&source, 18)
        .messages(3)
        .tricky(false)
        .folder_names(vec!["INBOX".into()])
        .generate()
        .messages;
    for message in &mut fresh {
        message.folder = "Projecten".into();
    }
    corpus::add_messages(&source, "olga", &fresh).await.unwrap();

    // The folder is created again (a new UIDVALIDITY): the new messages
    // land in it, and the copies deleted with it are reported, each by name,
    // not silently forgotten (and never touched by a stale UID).
    let delta = migration.run().unwrap();
    assert_eq!(delta.code, Some(3), "{}", delta.stdout);
    assert_eq!(delta.stat("olga", "items_copied"), 3, "{}", delta.stdout);
    let gone = delta.mailbox("olga")["item_failures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["folder"] == "Projecten"
                && f["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("no longer in target folder"))
        })
        .count();
    assert!(
        gone > 0,
        "the deleted copies are reported: {}",
        delta.stdout
    );
    assert_eq!(delta.stat("olga", "items_failed") as usize, gone);
    let after = verify::snapshot(&target.master_endpoint("olga"), &CompareOptions::default())
        .await
        .unwrap();
    let projecten = after.folder("Projecten").expect("Projecten exists again");
    assert_eq!(projecten.messages.len(), 3);
}

#[tokio::test]
async fn ctrl_c_stops_at_a_checkpoint_and_the_next_run_resumes() {
    let users = ["pia", "quin"];
    let source = server('.', &users);
    let target = server('/', &users);
    let spec = CorpusSpec::for_server(&source, 31).messages(400);
    corpus::load_users(&source, &users, &spec).unwrap();
    let migration = migration(
        &source,
        &target,
        &users,
        "[migration]\nbatch_messages = 20\n",
    );

    let mut child = migration.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while migration.ledger_rows() < 100 && Instant::now() < deadline {
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the interrupt"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "interrupted runs exit with 130");
    let committed = migration.ledger_rows();
    assert!(committed >= 100);

    let resumed = migration.run_ok().unwrap();
    assert!(
        resumed.total("items_copied") + committed
            >= spec.for_user(0).generate().messages.len() as u64,
        "the resumed run copies the rest"
    );
    assert_exact(&source, &target, &users).await;
}

/// Servers without UIDPLUS, MULTIAPPEND, LITERAL+, CONDSTORE or SPECIAL-USE
/// (many legacy ones): copies are found by their headers, flags by a full
/// listing, and a kill -9 still leaves no duplicates.
#[tokio::test]
async fn servers_with_minimal_capabilities_are_copied_exactly() {
    let users = ["rita", "sven"];
    let minimal = |separator: char| {
        let mut options = DovecotOptions::default().separator(separator).extra_config(
            "protocol imap {\n  imap_capability = IMAP4rev1 SASL-IR ID ENABLE IDLE NAMESPACE\n}\n",
        );
        for user in users {
            options = options.user(user, &format!("pw-{user}"));
        }
        DovecotServer::start(options).expect("start Dovecot")
    };
    let source = minimal('.');
    let target = minimal('/');
    let client = target.master_endpoint("rita").connect().await.unwrap();
    for capability in [
        "UIDPLUS",
        "MULTIAPPEND",
        "LITERAL+",
        "CONDSTORE",
        "SPECIAL-USE",
    ] {
        assert!(
            !client.has_capability(capability),
            "the server still offers {capability}: {:?}",
            client.capabilities()
        );
    }
    client.logout().await;
    let spec = CorpusSpec::for_server(&source, 41).messages(300);
    corpus::load_users(&source, &users, &spec).unwrap();
    let migration = migration(
        &source,
        &target,
        &users,
        "[migration]\nbatch_messages = 15\n",
    );

    // Killed mid-way for certain: still running with a part committed.
    let mut child = migration.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while migration.ledger_rows() < 120 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(
            Instant::now() < deadline,
            "the run never committed 120 items"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(status.code(), None, "ended by the kill, not by itself");
    let total: u64 = (0..users.len())
        .map(|i| spec.for_user(i).generate().messages.len() as u64)
        .sum();
    let killed_at = migration.ledger_rows();
    assert!(killed_at < total, "killed at {killed_at} of {total} items");
    let resumed = migration.run_ok().unwrap();
    assert!(
        resumed.total("items_copied") > 0,
        "the run after the kill copies the rest: {}",
        resumed.stdout
    );
    assert_exact(&source, &target, &users).await;

    // Without CONDSTORE, flag changes are found by comparing every flag
    // with the ledger.
    corpus::set_flags(&source, "sven", "INBOX", &[2, 5], &["\\Answered", "Work"])
        .await
        .unwrap();
    let delta = migration.run_ok().unwrap();
    assert_eq!(delta.stat("sven", "flags_updated"), 2, "{}", delta.stdout);
    assert_eq!(delta.total("items_copied"), 0);
    assert_exact(&source, &target, &users).await;
}

/// Issue 7, case 4: a second `mailwave run` on the state file of a running
/// one refuses to start, and the first one's copy stays exact.
#[tokio::test]
async fn a_second_run_on_the_same_state_file_refuses_to_start() {
    let users = ["quinn"];
    let source = server('.', &users);
    let target = server('.', &users);
    let spec = CorpusSpec::for_server(&source, 41).messages(300);
    corpus::load_users(&source, &users, &spec).unwrap();
    let migration = migration(
        &source,
        &target,
        &users,
        "[migration]\nbatch_messages = 5\n",
    );
    let mut first = migration.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while migration.ledger_rows() == 0 {
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run ended too soon"
        );
        assert!(Instant::now() < deadline, "the first run never committed");
        std::thread::sleep(Duration::from_millis(5));
    }
    let second = migration.run().unwrap();
    let still_running = first.try_wait().unwrap().is_none();
    assert_eq!(second.code, Some(1), "{}", second.stderr);
    assert!(
        second
            .stderr
            .contains("another mailwave run is using the state file"),
        "{}",
        second.stderr
    );
    assert!(
        still_running,
        "the second run was refused while the first ran"
    );
    assert!(first.wait().unwrap().success());
    assert_exact(&source, &target, &users).await;
    // Once the first has ended, the state file is free again.
    migration.run_ok().unwrap();
}
