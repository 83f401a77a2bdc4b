//! Maildir as Dovecot reads and writes it (issue 7, cases 8, 19 and 20):
//! what mailwave writes, a fresh Dovecot serving exactly those files must
//! show as the source had it, and what Dovecot wrote, mailwave must read
//! exactly — folder names in modified UTF-7 (or the `UTF-8` layout), `&`,
//! `%`, keywords, received dates and subscriptions included. The
//! independent checker ([`verify`]) compares over IMAP.

use std::collections::BTreeSet;
use std::path::Path;

use mailwave_tests::harness::{Migration, dovecot_endpoint};
use mailwave_tests::imap::{Tok, parse_tokens};
use mailwave_tests::verify::{self, Report};
use mailwave_tests::{CorpusSpec, DovecotOptions, DovecotServer, Endpoint, mutf7};

const USER: &str = "alice";
const PASSWORD: &str = "pw-alice";

/// Folders whose names Dovecot spells otherwise on disk: modified UTF-7
/// (`.Priv&AOk-`), `&` as `&-`, a `%` that escapes nothing, a `/` inside a
/// level (listescape's `\2f`).
const FOLDERS: [&str; 10] = [
    "INBOX",
    "Privé",
    "Privé.日本語 📧",
    "Projecten",
    "Projecten.Überprüfung",
    "Clients",
    "Clients.Acme & Co",
    "100% done",
    "50%off",
    "a/b",
];

/// Subscribed in the source: a child without its parent, a folder with `%`.
const SUBSCRIBED: [&str; 4] = ["INBOX", "Privé.日本語 📧", "Clients.Acme & Co", "100% done"];

/// A Dovecot without special-use folders: those are subscribed by the
/// configuration (`auto = subscribe`), not by the `subscriptions` file.
fn options() -> DovecotOptions {
    DovecotOptions::default().special_folders(Vec::new())
}

fn start(options: DovecotOptions) -> DovecotServer {
    DovecotServer::start(options).expect("start Dovecot (apt-get install dovecot-imapd)")
}

/// A Dovecot holding the corpus in [`FOLDERS`], written by Dovecot itself
/// (IMAP APPEND with flags, keywords and received dates), with
/// [`SUBSCRIBED`] subscribed.
async fn source_with_corpus() -> DovecotServer {
    let source = start(options().user(USER, PASSWORD));
    let corpus = CorpusSpec::for_server(&source, 20)
        .messages(60)
        .folder_names(FOLDERS.iter().map(|name| (*name).to_owned()).collect())
        .generate();
    assert!(!corpus.keywords().is_empty(), "the corpus has keywords");
    for (folder, count) in corpus.counts() {
        assert!(count > 0, "{folder} is empty");
    }
    corpus.append_imap(&source, USER).await.expect("load");
    let mut client = source.master_endpoint(USER).connect().await.expect("login");
    for folder in SUBSCRIBED {
        client.subscribe(folder).await.expect("subscribe");
    }
    client.logout().await;
    source
}

/// The names LSUB lists.
async fn subscribed(endpoint: &Endpoint) -> BTreeSet<String> {
    let mut client = endpoint.connect().await.expect("login");
    let result = client.run_text("LSUB \"\" \"*\"").await.expect("LSUB");
    client.logout().await;
    result
        .untagged
        .iter()
        .filter_map(|line| {
            let tokens = parse_tokens(line).expect("LSUB line");
            let is_lsub = matches!(tokens.get(1), Some(Tok::Atom(atom)) if atom.eq_ignore_ascii_case(b"LSUB"));
            let raw = String::from_utf8_lossy(tokens.get(4)?.bytes()?).into_owned();
            is_lsub.then(|| mutf7::decode(&raw).unwrap_or(raw))
        })
        .collect()
}

/// A Maildir endpoint under `dir`, one Maildir per mailbox.
fn maildir_endpoint(dir: &Path, utf8_names: bool) -> String {
    format!(
        "kind = \"maildir\"\npath = \"{}/{{mailbox}}\"\nutf8_names = {utf8_names}\n",
        dir.display()
    )
}

/// Runs `mailwave run` from `source` to `target` (endpoint bodies, made
/// knowing the run's directory) for [`USER`] and insists that it completed.
fn migrate(source: impl FnOnce(&Path) -> String, target: impl FnOnce(&Path) -> String) {
    let migration =
        Migration::new("", "", "", &format!("source,target\n{USER},{USER}\n")).expect("migration");
    let source = source(migration.dir());
    let target = target(migration.dir());
    std::fs::write(
        &migration.config,
        format!("[source]\n{source}\n[target]\n{target}\n"),
    )
    .expect("config");
    let result = migration.run_ok().expect("mailwave run");
    assert_eq!(
        result.mailbox(USER)["state"],
        "completed",
        "{}",
        result.stdout
    );
    assert_eq!(result.stat(USER, "items_skipped"), 0, "{}", result.stdout);
}

/// Names of the directories right under `root` that start with `.`.
fn folder_dirs(root: &Path) -> BTreeSet<String> {
    std::fs::read_dir(root)
        .expect("list")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .into_string()
                .expect("UTF-8")
        })
        .filter(|name| name.starts_with('.'))
        .collect()
}

/// Copies a tree with its times (`cp -a`).
fn copy_tree(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success());
}

/// Drops the keyword letters of the first message file under `root` (the
/// inbox or a folder) that has some.
fn drop_keywords(root: &Path) {
    let mut folders = vec![root.to_path_buf()];
    folders.extend(folder_dirs(root).into_iter().map(|dir| root.join(dir)));
    for cur in folders.iter().map(|folder| folder.join("cur")) {
        for entry in std::fs::read_dir(&cur).expect("cur") {
            let name = entry
                .expect("entry")
                .file_name()
                .into_string()
                .expect("UTF-8");
            let Some((unique, flags)) = name.split_once(":2,") else {
                continue;
            };
            if !flags.contains(|c: char| c.is_ascii_lowercase()) {
                continue;
            }
            let system: String = flags.chars().filter(char::is_ascii_uppercase).collect();
            let renamed = format!("{unique}:2,{system}");
            std::fs::rename(cur.join(&name), cur.join(renamed)).expect("rename");
            return;
        }
    }
    panic!("no message with keywords under {}", root.display());
}

/// The checker's report on [`USER`] of `source` against `user` of `target`.
async fn compare_with(
    source: &DovecotServer,
    target: &DovecotServer,
    user: &str,
) -> anyhow::Result<Report> {
    verify::compare(
        &source.master_endpoint(USER),
        &target.master_endpoint(user),
        verify::same_name,
    )
    .await
}

fn describe(report: &Report) -> String {
    report.to_string()
}

/// Issue 7, case 20, and the checker's own test: an IMAP corpus migrated
/// into a Maildir is served by a fresh Dovecot on exactly those files as
/// the source has it; the same files with one folder under its raw UTF-8
/// name and one message's keywords lost are rejected by the checker.
#[tokio::test]
async fn maildir_written_by_mailwave_is_served_exactly_by_a_fresh_dovecot() {
    let source = source_with_corpus().await;
    let out = tempfile::tempdir().expect("temp dir");
    migrate(
        |dir| dovecot_endpoint(&source, &dir.join("source.pw")),
        |_| maildir_endpoint(out.path(), false),
    );
    let written = out.path().join(USER);
    assert_eq!(
        folder_dirs(&written),
        BTreeSet::from(
            [
                ".Priv&AOk-",
                ".Priv&AOk-.&ZeVnLIqe- &2D3c5w-",
                ".Projecten",
                ".Projecten.&ANw-berpr&APw-fung",
                ".Clients",
                ".Clients.Acme &- Co",
                ".100% done",
                ".50%off",
                ".a\\2fb",
            ]
            .map(str::to_owned)
        )
    );

    // Two broken copies: the parent folder under its raw UTF-8 name (what
    // mailwave wrote before), and one message's keywords lost.
    let misnamed = out.path().join("misnamed");
    copy_tree(&written, &misnamed);
    std::fs::rename(misnamed.join(".Priv&AOk-"), misnamed.join(".Privé")).expect("rename");
    let unflagged = out.path().join("unflagged");
    copy_tree(&written, &unflagged);
    drop_keywords(&unflagged);

    let served = start(
        options()
            .serve_maildir(USER, PASSWORD, &written, false)
            .serve_maildir("misnamed", PASSWORD, &misnamed, false)
            .serve_maildir("unflagged", PASSWORD, &unflagged, false),
    );
    // Dovecot lists the misnamed folder but cannot open it.
    match compare_with(&source, &served, "misnamed").await {
        Ok(report) => assert!(
            !report.is_exact(),
            "the checker must reject a misnamed folder"
        ),
        Err(error) => {
            let error = format!("{error:#}");
            assert!(error.contains("Mailbox doesn't exist: Privé"), "{error}");
        }
    }
    let report = compare_with(&source, &served, "unflagged")
        .await
        .expect("compare the unflagged copy");
    assert!(!report.is_exact(), "the checker must reject a lost keyword");
    assert_eq!(report.flag_mismatches.len(), 1, "{}", describe(&report));

    let report = verify::compare(
        &source.master_endpoint(USER),
        &served.master_endpoint(USER),
        verify::same_name,
    )
    .await
    .expect("compare");
    report.assert_exact();
}

/// Issue 7, case 20: with `utf8_names`, the Maildir is Dovecot's `UTF-8`
/// layout, and a Dovecot with that option serves it exactly.
#[tokio::test]
async fn utf8_names_are_served_by_dovecots_utf8_layout() {
    let source = source_with_corpus().await;
    let out = tempfile::tempdir().expect("temp dir");
    migrate(
        |dir| dovecot_endpoint(&source, &dir.join("source.pw")),
        |_| maildir_endpoint(out.path(), true),
    );
    let written = out.path().join(USER);
    let dirs = folder_dirs(&written);
    assert!(dirs.contains(".Privé.日本語 📧"), "{dirs:?}");
    assert!(dirs.contains(".Clients.Acme & Co"), "{dirs:?}");
    let served = start(options().serve_maildir(USER, PASSWORD, &written, true));
    verify::compare(
        &source.master_endpoint(USER),
        &served.master_endpoint(USER),
        verify::same_name,
    )
    .await
    .expect("compare")
    .assert_exact();
}

/// Issue 7, cases 8 and 19: the Maildir Dovecot wrote, read by mailwave
/// as a source, arrives exactly in an IMAP target, with its subscriptions.
#[tokio::test]
async fn maildir_written_by_dovecot_is_read_exactly() {
    let source = source_with_corpus().await;
    let target = start(options().user(USER, PASSWORD));
    let mail_root = source
        .user_maildir(USER)
        .parent()
        .expect("mail root")
        .to_path_buf();
    migrate(
        |_| maildir_endpoint(&mail_root, false),
        |dir| dovecot_endpoint(&target, &dir.join("target.pw")),
    );
    verify::compare(
        &source.master_endpoint(USER),
        &target.master_endpoint(USER),
        verify::same_name,
    )
    .await
    .expect("compare")
    .assert_exact();
    let expected: BTreeSet<String> = SUBSCRIBED.iter().map(|name| (*name).to_owned()).collect();
    assert_eq!(subscribed(&source.master_endpoint(USER)).await, expected);
    assert_eq!(subscribed(&target.master_endpoint(USER)).await, expected);
}

/// Issue 7, cases 19 and 20: Dovecot's Maildir copied by mailwave into a
/// Maildir is served by a fresh Dovecot exactly, and LSUB there lists
/// exactly the folders subscribed in the source.
#[tokio::test]
async fn maildir_to_maildir_keeps_subscriptions_for_dovecot() {
    let source = source_with_corpus().await;
    let mail_root = source
        .user_maildir(USER)
        .parent()
        .expect("mail root")
        .to_path_buf();
    let out = tempfile::tempdir().expect("temp dir");
    migrate(
        |_| maildir_endpoint(&mail_root, false),
        |_| maildir_endpoint(out.path(), false),
    );
    let served = start(options().serve_maildir(USER, PASSWORD, &out.path().join(USER), false));
    verify::compare(
        &source.master_endpoint(USER),
        &served.master_endpoint(USER),
        verify::same_name,
    )
    .await
    .expect("compare")
    .assert_exact();
    let expected: BTreeSet<String> = SUBSCRIBED.iter().map(|name| (*name).to_owned()).collect();
    assert_eq!(subscribed(&served.master_endpoint(USER)).await, expected);
}

/// Issue 7, case 8: Maildir folders named `.100% done` and `.50%off` are
/// copied; a folder and a message file whose names are not UTF-8 are
/// recorded as failures with their names, not skipped.
#[tokio::test]
async fn unreadable_maildir_names_are_recorded_not_skipped() {
    use std::os::unix::ffi::OsStrExt;
    let input = tempfile::tempdir().expect("temp dir");
    let root = input.path().join(USER);
    let deliver = |dir: &Path, name: &std::ffi::OsStr| {
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).expect("folder");
        }
        std::fs::write(
            dir.join("cur").join(name),
            b"Subject: hello\r\n\r\nhello\r\n",
        )
        .expect("message");
    };
    deliver(&root, "1700000000.P1Q1.host:2,S".as_ref());
    deliver(
        &root,
        std::ffi::OsStr::from_bytes(b"1700000001.P1Q2.h\xf6st:2,S"),
    );
    deliver(&root.join(".100% done"), "1700000002.P1Q3.host:2,".as_ref());
    deliver(&root.join(".50%off"), "1700000003.P1Q4.host:2,F".as_ref());
    deliver(
        &root.join(std::ffi::OsStr::from_bytes(b".Entw\xfcrfe")),
        "1700000004.P1Q5.host:2,".as_ref(),
    );

    let out = tempfile::tempdir().expect("temp dir");
    let migration = Migration::new(
        &maildir_endpoint(input.path(), false),
        &maildir_endpoint(out.path(), false),
        "",
        &format!("source,target\n{USER},{USER}\n"),
    )
    .expect("migration");
    let result = migration.run().expect("mailwave run");
    let failures = result.mailbox(USER)["item_failures"]
        .as_array()
        .expect("failures")
        .clone();
    let failed: BTreeSet<(String, String)> = failures
        .iter()
        .map(|failure| {
            (
                failure["folder"].as_str().expect("folder").to_owned(),
                match failure["scope"].as_str().expect("scope") {
                    "folder" => "(folder)".to_owned(),
                    _ => failure["item"].as_str().expect("item").to_owned(),
                },
            )
        })
        .collect();
    assert_eq!(
        failed,
        BTreeSet::from([
            (
                "INBOX".to_owned(),
                "1700000001.P1Q2.h\u{fffd}st:2,S".to_owned()
            ),
            (".Entw\u{fffd}rfe".to_owned(), "(folder)".to_owned()),
        ]),
        "{}",
        result.stdout
    );
    for failure in &failures {
        let reason = failure["reason"].as_str().expect("reason");
        assert!(reason.contains("not UTF-8"), "{reason}");
    }
    let written = out.path().join(USER);
    assert_eq!(
        folder_dirs(&written),
        BTreeSet::from([".100% done".to_owned(), ".50%off".to_owned()])
    );
    for dir in [
        written.clone(),
        written.join(".100% done"),
        written.join(".50%off"),
    ] {
        let copies = std::fs::read_dir(dir.join("cur")).expect("cur").count();
        assert_eq!(copies, 1, "{}", dir.display());
    }
}
