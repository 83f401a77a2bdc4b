//! Self-tests of the fixtures against real Dovecot instances: the servers
//! start and are independent, the corpus loaders produce what the server
//! then serves, and the checker both accepts exact copies and reports
//! every kind of difference.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use mailwave_tests::corpus::{self, LARGE_MESSAGE_BYTES};
use mailwave_tests::imap::StoreOp;
use mailwave_tests::verify::{self, CompareOptions, Snapshot};
use mailwave_tests::{CorpusSpec, DovecotOptions, DovecotServer, SizeProfile, Tls, TlsMode, mutf7};

const USERS: [&str; 3] = ["alice", "bob", "carol"];

fn options(sep: char) -> DovecotOptions {
    let mut o = DovecotOptions::default().separator(sep);
    for u in USERS {
        o = o.user(u, &format!("pw-{u}"));
    }
    o
}

/// Multiset of (folder, CRLF-normalized hash, flags, date) of a corpus, to
/// compare against what the server serves (Dovecot turns bare LF into CRLF).
fn corpus_view(c: &mailwave_tests::Corpus) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for msg in &c.messages {
        let mut flags = msg.flags.clone();
        flags.sort();
        let key = format!(
            "{}|{}|{}|{}",
            msg.folder,
            blake3::hash(&crlf(&msg.raw)).to_hex(),
            flags.join(" "),
            msg.internal_date.timestamp()
        );
        *m.entry(key).or_default() += 1;
    }
    m
}

fn snapshot_view(s: &Snapshot) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for f in &s.folders {
        for msg in &f.messages {
            let flags: Vec<String> = msg.flags.iter().cloned().collect();
            let key = format!(
                "{}|{}|{}|{}",
                msg.folder,
                blake3::Hash::from(msg.hash).to_hex(),
                flags.join(" "),
                msg.internal_date.map(|d| d.timestamp()).unwrap_or_default()
            );
            *m.entry(key).or_default() += 1;
        }
    }
    m
}

/// Bare LF -> CRLF, as Dovecot serves it.
fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 64);
    for (i, b) in raw.iter().enumerate() {
        if *b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(*b);
    }
    out
}

#[tokio::test]
async fn corpus_loads_and_checker_accepts_and_rejects() {
    let t0 = Instant::now();
    let src = DovecotServer::start(options('.')).expect("start source Dovecot");
    let tgt = DovecotServer::start(options('/')).expect("start target Dovecot");
    assert_ne!(src.port(), tgt.port());
    assert_eq!(src.separator(), '.');
    assert_eq!(tgt.separator(), '/');

    // alice: corpus with the 25 MB message; bob, carol: smaller ones.
    let spec = CorpusSpec::for_server(&src, 42).messages(60);
    let alice = spec
        .clone()
        .large_message(Some(LARGE_MESSAGE_BYTES))
        .generate();
    let stats = alice.write_maildir(&src, "alice").expect("load alice");
    eprintln!(
        "alice: {} msgs, {} bytes in {:?}",
        stats.messages, stats.bytes, stats.elapsed
    );
    let others = corpus::load_users(&src, &["bob", "carol"], &spec.clone().messages(40))
        .expect("load bob and carol");

    // What the server serves is what the corpus says.
    for (user, c) in [
        ("alice", &alice),
        ("bob", &others[0]),
        ("carol", &others[1]),
    ] {
        let snap = verify::snapshot(&src.master_endpoint(user), &CompareOptions::default())
            .await
            .expect("snapshot");
        assert_eq!(
            snapshot_view(&snap),
            corpus_view(c),
            "server view of {user}"
        );
        let mut names = snap.folder_names();
        names.sort();
        let mut want = c.folders.clone();
        want.sort();
        assert_eq!(names, want, "folders of {user}");
    }
    let names = verify::snapshot(&src.endpoint("alice").unwrap(), &CompareOptions::default())
        .await
        .unwrap()
        .folder_names();
    for f in [
        "Projecten.Überprüfung",
        "Archiv.2024.Q1",
        "Kunden & Partner",
        "a/b",
        "INBOX.Rechnungen",
    ] {
        assert!(names.contains(&f.to_owned()), "{f} in {names:?}");
    }
    let big = verify::snapshot(&src.master_endpoint("alice"), &CompareOptions::default())
        .await
        .unwrap();
    assert!(
        big.folders
            .iter()
            .flat_map(|f| &f.messages)
            .any(|m| m.size == LARGE_MESSAGE_BYTES),
        "25 MB message served in full"
    );

    // Source against itself: exact (also via the PLAIN-authzid login).
    let report = verify::compare(
        &src.master_endpoint("alice"),
        &src.master_plain_endpoint("alice"),
        verify::same_name,
    )
    .await
    .unwrap();
    assert_eq!(report.source_messages, alice.messages.len());
    assert_eq!(report.target_messages, alice.messages.len());
    report.assert_exact();

    // Copy one message by hand with a wrong flag: the checker must report
    // exactly that flag mismatch, and everything else as missing.
    let inbox_msg = alice
        .messages
        .iter()
        .find(|m| {
            m.folder == "INBOX" && m.kind == "plain" && !m.flags.contains(&"\\Flagged".to_owned())
        })
        .expect("a plain INBOX message");
    let mut wrong_flags = inbox_msg.flags.clone();
    wrong_flags.push("\\Flagged".to_owned());
    let mut client = tgt.master_endpoint("alice").connect().await.unwrap();
    let uid = client
        .append(
            "INBOX",
            &wrong_flags,
            Some(inbox_msg.internal_date),
            &inbox_msg.raw,
        )
        .await
        .unwrap();
    assert!(uid.is_some(), "Dovecot sends APPENDUID");
    let map = verify::with_separator('/');
    let report = verify::compare(
        &src.master_endpoint("alice"),
        &tgt.master_endpoint("alice"),
        &map,
    )
    .await
    .unwrap();
    eprintln!("{report}");
    assert!(!report.is_exact());
    assert_eq!(report.flag_mismatches.len(), 1);
    let mm = &report.flag_mismatches[0];
    assert_eq!(mm.target_folder, "INBOX");
    assert!(mm.target.flags.contains("\\Flagged") && !mm.source.flags.contains("\\Flagged"));
    assert!(report.date_mismatches.is_empty());
    assert!(report.duplicates.is_empty());
    assert!(report.unexpected.is_empty());
    assert_eq!(report.missing.len(), alice.messages.len() - 1);
    assert_eq!(report.target_messages, 1);
    // Special-use folders are auto-created on the target; the rest is missing.
    assert!(
        report
            .missing_folders
            .contains(&"Archiv/2024/Q1".to_owned())
    );
    assert!(
        report
            .missing_folders
            .contains(&"Projecten/Überprüfung".to_owned())
    );
    assert!(!report.missing_folders.contains(&"Sent".to_owned()));
    let text = report.to_string();
    assert!(text.contains("flag mismatches (1)"), "{text}");
    eprintln!("(the next panic message is expected)");
    let panic = std::panic::catch_unwind(|| report.assert_exact()).expect_err("must panic");
    let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("migration not exact") && msg.contains("\\Flagged"),
        "{msg}"
    );

    // A second copy is a duplicate; foreign content is unexpected; a wrong
    // date is a date mismatch.
    client
        .append(
            "INBOX",
            &wrong_flags,
            Some(inbox_msg.internal_date),
            &inbox_msg.raw,
        )
        .await
        .unwrap();
    client
        .append(
            "INBOX",
            &[],
            None,
            b"Subject: stray\r\n\r\nnot from the source\r\n",
        )
        .await
        .unwrap();
    let other = alice
        .messages
        .iter()
        .find(|m| m.folder == "INBOX" && m.kind == "plain" && m.raw != inbox_msg.raw)
        .unwrap();
    let shifted = other.internal_date + chrono::Duration::hours(1);
    client
        .append("INBOX", &other.flags, Some(shifted), &other.raw)
        .await
        .unwrap();
    client.logout().await;
    let report = verify::compare(
        &src.master_endpoint("alice"),
        &tgt.master_endpoint("alice"),
        &map,
    )
    .await
    .unwrap();
    assert_eq!(report.duplicates.len(), 1, "{report}");
    assert_eq!(report.unexpected.len(), 1, "{report}");
    assert_eq!(report.flag_mismatches.len(), 1, "{report}");
    assert_eq!(report.date_mismatches.len(), 1, "{report}");
    assert_eq!(report.missing.len(), alice.messages.len() - 2, "{report}");
    for server in [&src, &tgt] {
        let log = server.log_contents();
        let bad: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("Error:") || l.contains("Warning:") || l.contains("Panic:"))
            .collect();
        assert!(bad.is_empty(), "Dovecot complained:\n{}", bad.join("\n"));
    }
    eprintln!("selftest took {:?}", t0.elapsed());
}

#[tokio::test]
async fn imap_loader_matches_maildir_loader() {
    for sep in ['.', '/'] {
        let server = DovecotServer::start(options(sep)).unwrap();
        let c = CorpusSpec::for_server(&server, 7)
            .messages(80)
            .size_profile(SizeProfile::Tiny)
            .generate();
        let s1 = c.write_maildir(&server, "alice").unwrap();
        let s2 = c.append_imap(&server, "bob").await.unwrap();
        eprintln!(
            "sep {sep}: maildir {:?}, append {:?}",
            s1.elapsed, s2.elapsed
        );
        let report = verify::compare(
            &server.endpoint("alice").unwrap(),
            &server.endpoint("bob").unwrap(),
            verify::same_name,
        )
        .await
        .unwrap();
        report.assert_exact();
        assert_eq!(report.source_messages, c.messages.len());
        let snap = verify::snapshot(&server.endpoint("bob").unwrap(), &CompareOptions::default())
            .await
            .unwrap();
        assert_eq!(
            snapshot_view(&snap),
            corpus_view(&c),
            "IMAP-loaded view (sep {sep})"
        );
        let hostile = if sep == '.' { "a/b" } else { "v1.2" };
        assert!(snap.folder(hostile).is_some(), "{hostile}");
    }
}

#[tokio::test]
async fn master_user_tls_and_capabilities() {
    let server = DovecotServer::start(options('.').tls(Tls::On)).unwrap();
    let ca = server.ca_pem_path().expect("CA PEM").to_path_buf();
    assert!(ca.exists() && server.cert_pem_path().is_some());

    for mode in [TlsMode::Plain, TlsMode::StartTls, TlsMode::Implicit] {
        let ep = server
            .with_tls(server.endpoint("bob").unwrap(), mode.clone())
            .unwrap();
        let c = ep
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e:#}"));
        eprintln!("{mode:?} capabilities: {}", c.capabilities().join(" "));
        for cap in [
            "MULTIAPPEND",
            "LITERAL+",
            "UIDPLUS",
            "CONDSTORE",
            "SPECIAL-USE",
            "NAMESPACE",
            "MOVE",
            "QRESYNC",
            "IDLE",
        ] {
            assert!(c.has_capability(cap), "{mode:?}: {cap}");
        }
        c.logout().await;
    }
    // Pre-login capabilities advertise STARTTLS only on the plain port.
    let c = mailwave_tests::Client::connect(
        "127.0.0.1",
        server.port(),
        &TlsMode::Plain,
        None,
        "localhost",
    )
    .await
    .unwrap();
    eprintln!("pre-login greeting: {}", c.greeting());
    assert!(c.has_capability("STARTTLS"));
    assert!(c.has_capability("AUTH=PLAIN"));

    // Master impersonation: LOGIN user*master and SASL PLAIN authzid land
    // in the user's mailbox.
    let c = CorpusSpec::for_server(&server, 1)
        .messages(5)
        .size_profile(SizeProfile::Tiny)
        .generate();
    c.write_maildir(&server, "carol").unwrap();
    for ep in [
        server.master_endpoint("carol"),
        server.master_plain_endpoint("carol"),
    ] {
        let snap = verify::snapshot(&ep, &CompareOptions::default())
            .await
            .unwrap();
        assert_eq!(snap.message_count(), c.messages.len(), "{}", ep.describe());
    }
    let ep = server
        .with_tls(server.master_plain_endpoint("carol"), TlsMode::Implicit)
        .unwrap();
    assert_eq!(
        verify::snapshot(&ep, &CompareOptions::default())
            .await
            .unwrap()
            .message_count(),
        c.messages.len()
    );
    // Wrong passwords are refused.
    let mut bad = server.endpoint("carol").unwrap();
    bad.auth = mailwave_tests::Auth::Login {
        user: "carol".into(),
        password: "nope".into(),
    };
    assert!(bad.connect().await.is_err());
    let mut bad = server.master_endpoint("carol");
    bad.auth = mailwave_tests::Auth::Login {
        user: "carol*mwadmin".into(),
        password: "pw-carol".into(),
    };
    assert!(bad.connect().await.is_err());
}

#[tokio::test]
async fn special_use_names_are_configurable() {
    use mailwave_tests::SpecialFolder;
    let outlook =
        DovecotServer::start(options('/').special_folders(SpecialFolder::outlook())).unwrap();
    let none = DovecotServer::start(options('.').special_folders(Vec::new())).unwrap();
    let c = CorpusSpec::for_server(&outlook, 3)
        .messages(30)
        .size_profile(SizeProfile::Tiny)
        .generate();
    assert!(c.folders.contains(&"Sent Items".to_owned()));
    c.write_maildir(&outlook, "alice").unwrap();
    let snap = verify::snapshot(
        &outlook.endpoint("alice").unwrap(),
        &CompareOptions::default(),
    )
    .await
    .unwrap();
    let uses: BTreeMap<String, String> = snap
        .folders
        .iter()
        .filter_map(|f| Some((f.info.name.clone(), f.info.special_use.clone()?)))
        .collect();
    assert_eq!(uses.get("Sent Items").map(String::as_str), Some("\\Sent"));
    assert_eq!(
        uses.get("Deleted Items").map(String::as_str),
        Some("\\Trash")
    );
    assert_eq!(uses.get("Junk E-mail").map(String::as_str), Some("\\Junk"));
    assert_eq!(snap.folder("Sent Items").unwrap().info.separator, Some('/'));
    assert_eq!(snapshot_view(&snap), corpus_view(&c));

    let snap = verify::snapshot(&none.endpoint("bob").unwrap(), &CompareOptions::default())
        .await
        .unwrap();
    assert_eq!(snap.folder_names(), vec!["INBOX".to_owned()]);
    assert!(snap.folders.iter().all(|f| f.info.special_use.is_none()));
}

#[tokio::test]
async fn reset_uidvalidity_keeps_messages() {
    for sep in ['.', '/'] {
        let server = DovecotServer::start(options(sep)).unwrap();
        let c = CorpusSpec::for_server(&server, 9)
            .messages(40)
            .size_profile(SizeProfile::Tiny)
            .generate();
        c.write_maildir(&server, "alice").unwrap();
        let folder = if sep == '.' {
            "Archiv.2024.Q1"
        } else {
            "Archiv/2024/Q1"
        };
        let before = verify::snapshot(
            &server.endpoint("alice").unwrap(),
            &CompareOptions::default(),
        )
        .await
        .unwrap();
        let mut client = server.endpoint("alice").unwrap().connect().await.unwrap();
        let st1 = client.status(folder).await.unwrap();
        let st_inbox = client.status("INBOX").await.unwrap();
        client.logout().await;

        let (old, new) = server.reset_uidvalidity("alice", folder).await.unwrap();
        assert_eq!(Some(old), st1.uidvalidity);
        assert_ne!(old, new);

        let mut client = server.endpoint("alice").unwrap().connect().await.unwrap();
        let st2 = client.status(folder).await.unwrap();
        assert_eq!(st2.uidvalidity, Some(new), "STATUS after reset");
        assert_eq!(st2.messages, st1.messages);
        assert_eq!(
            client.status("INBOX").await.unwrap().uidvalidity,
            st_inbox.uidvalidity
        );
        client.logout().await;
        eprintln!("sep {sep}: UIDVALIDITY {old} -> {new}");

        let after = verify::snapshot(
            &server.endpoint("alice").unwrap(),
            &CompareOptions::default(),
        )
        .await
        .unwrap();
        verify::compare_snapshots(
            &before,
            &after,
            verify::same_name,
            &CompareOptions::default(),
        )
        .assert_exact();
        assert_eq!(after.folder(folder).unwrap().uidvalidity, Some(new));
    }
}

#[tokio::test]
async fn delta_helpers() {
    let server = DovecotServer::start(options('/')).unwrap();
    let c = CorpusSpec::for_server(&server, 5)
        .messages(10)
        .tricky(false)
        .size_profile(SizeProfile::Tiny)
        .generate();
    c.write_maildir(&server, "bob").unwrap();
    let before = verify::snapshot(&server.endpoint("bob").unwrap(), &CompareOptions::default())
        .await
        .unwrap();

    let mut extra = CorpusSpec::for_server(&server, 6)
        .messages(3)
        .tricky(false)
        .size_profile(SizeProfile::Tiny)
        .generate()
        .messages;
    extra[0].folder = "Neu/Eingang".to_owned();
    let uids = corpus::add_messages(&server, "bob", &extra).await.unwrap();
    assert_eq!(uids.len(), 3);
    corpus::set_flags(
        &server,
        "bob",
        &extra[1].folder,
        &[uids[1]],
        &["\\Seen", "Work"],
    )
    .await
    .unwrap();
    corpus::store_flags(
        &server,
        "bob",
        &extra[2].folder,
        &[uids[2]],
        StoreOp::Add,
        &["$Label2"],
    )
    .await
    .unwrap();

    let after = verify::snapshot(&server.endpoint("bob").unwrap(), &CompareOptions::default())
        .await
        .unwrap();
    assert_eq!(after.message_count(), before.message_count() + 3);
    let r = verify::compare_snapshots(
        &before,
        &after,
        verify::same_name,
        &CompareOptions::default(),
    );
    assert_eq!(r.unexpected.len(), 3, "{r}");
    let m1 = after
        .folder(&extra[1].folder)
        .unwrap()
        .messages
        .iter()
        .find(|m| m.uid == uids[1])
        .unwrap();
    assert_eq!(
        m1.flags.iter().cloned().collect::<Vec<_>>(),
        vec!["Work", "\\Seen"]
    );
    let m2 = after
        .folder(&extra[2].folder)
        .unwrap()
        .messages
        .iter()
        .find(|m| m.uid == uids[2])
        .unwrap();
    assert!(m2.flags.contains("$Label2"));

    corpus::expunge_messages(&server, "bob", "Neu/Eingang", &[uids[0]])
        .await
        .unwrap();
    let gone = verify::snapshot(&server.endpoint("bob").unwrap(), &CompareOptions::default())
        .await
        .unwrap();
    assert!(gone.folder("Neu/Eingang").unwrap().messages.is_empty());
}

/// Maps a Dovecot Maildir++ directory back to its IMAP name (test helper
/// standing in for mailwave's own Maildir naming).
fn maildirpp_name(rel: &Path) -> String {
    let s = rel.to_string_lossy();
    if s.is_empty() {
        return "INBOX".to_owned();
    }
    let decoded = mutf7::decode(s.trim_start_matches('.')).unwrap();
    decoded
        .replace("\\2f", "/")
        .replace("\\7e", "~")
        .replace("\\5c", "\\")
}

#[tokio::test]
async fn maildir_checker_reads_a_tree() {
    let server = DovecotServer::start(options('.')).unwrap();
    let c = CorpusSpec::for_server(&server, 11)
        .messages(50)
        .size_profile(SizeProfile::Tiny)
        .generate();
    c.write_maildir(&server, "alice").unwrap();
    let opts = CompareOptions {
        normalize_line_endings: true,
        ..CompareOptions::default()
    };
    let report = verify::compare_to_maildir(
        &server.endpoint("alice").unwrap(),
        &server.user_maildir("alice"),
        verify::same_name,
        maildirpp_name,
        &opts,
    )
    .await
    .unwrap();
    report.assert_exact();
    assert_eq!(report.target_messages, c.messages.len());

    // Remove one file and change another's flags on disk: both reported.
    let snap =
        verify::snapshot_maildir(&server.user_maildir("alice"), maildirpp_name, &opts).unwrap();
    let inbox = snap.folder("INBOX").unwrap();
    std::fs::remove_file(&inbox.messages[0].locator).unwrap();
    let victim = inbox
        .messages
        .iter()
        .skip(1)
        .find(|m| !m.flags.contains("\\Flagged"))
        .expect("an unflagged INBOX message");
    let (base, info) = victim.locator.rsplit_once(":2,").unwrap();
    let mut letters: Vec<char> = info.chars().chain(['F']).collect();
    letters.sort_unstable();
    let renamed = format!("{base}:2,{}", letters.into_iter().collect::<String>());
    std::fs::rename(&victim.locator, &renamed).unwrap();
    let t = verify::snapshot_maildir(&server.user_maildir("alice"), maildirpp_name, &opts).unwrap();
    let r = verify::compare_snapshots(&snap, &t, verify::same_name, &opts);
    assert_eq!(r.missing.len(), 1, "{r}");
    assert_eq!(r.flag_mismatches.len(), 1, "{r}");
    assert!(r.flag_mismatches[0].target.flags.contains("\\Flagged"));
}

/// Load-time measurement: 20 users × 300 realistic messages (~750 MB).
/// `cargo test -p mailwave-tests --release -- --ignored --nocapture bench_load`
#[tokio::test]
#[ignore = "slow: loads ~750 MB"]
async fn bench_load_20_users() {
    let users: Vec<String> = (1..=20).map(|i| format!("user{i:02}")).collect();
    let server = DovecotServer::start(DovecotOptions::default().numbered_users(20)).unwrap();
    let spec = CorpusSpec::for_server(&server, 2024).messages(300);
    let names: Vec<&str> = users.iter().map(String::as_str).collect();
    let t = Instant::now();
    let corpora = corpus::load_users(&server, &names, &spec).unwrap();
    let bytes: u64 = corpora.iter().map(|c| c.total_bytes()).sum();
    let msgs: usize = corpora.iter().map(|c| c.messages.len()).sum();
    eprintln!(
        "generate+write_maildir: {msgs} messages, {:.0} MB in {:?}",
        bytes as f64 / 1e6,
        t.elapsed()
    );
    let t = Instant::now();
    let mut total = 0;
    for u in &names {
        total += verify::snapshot(&server.master_endpoint(u), &CompareOptions::default())
            .await
            .unwrap()
            .message_count();
    }
    assert_eq!(total, msgs);
    eprintln!(
        "first IMAP read of everything (index build + hash): {:?}",
        t.elapsed()
    );

    let server2 = DovecotServer::start(DovecotOptions::default().numbered_users(2)).unwrap();
    let t = Instant::now();
    let mut b = 0;
    for (i, u) in ["user01", "user02"].iter().enumerate() {
        b += corpora[i].append_imap(&server2, u).await.unwrap().bytes;
    }
    eprintln!(
        "append_imap 2 users: {:.0} MB in {:?}",
        b as f64 / 1e6,
        t.elapsed()
    );
    let t = Instant::now();
    drop(server2);
    drop(server);
    eprintln!("stopping and deleting both servers: {:?}", t.elapsed());
}

#[test]
fn instances_are_independent_and_cleaned_up() {
    let t = Instant::now();
    let a = DovecotServer::start(options('.')).unwrap();
    let b = DovecotServer::start(options('.')).unwrap();
    eprintln!("two starts: {:?}", t.elapsed());
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir(), b.dir());
    assert!(
        a.log_contents().contains("starting up"),
        "{}",
        a.log_contents()
    );
    let (dir, port) = (a.dir().to_path_buf(), a.port());
    let t = Instant::now();
    drop(a);
    eprintln!("drop: {:?}", t.elapsed());
    assert!(t.elapsed() < std::time::Duration::from_secs(3));
    assert!(!dir.exists(), "temp dir removed");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port closed"
    );
    // The other instance is unaffected.
    let mut s = std::net::TcpStream::connect(b.addr()).unwrap();
    let mut greeting = [0u8; 4];
    std::io::Read::read_exact(&mut s, &mut greeting).unwrap();
    assert_eq!(&greeting, b"* OK");
}
