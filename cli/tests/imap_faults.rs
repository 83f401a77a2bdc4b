//! `mailwave run` against IMAP servers that misbehave on cue (our own
//! fault-injecting server, `fake_imap`), named after the cases of issue 7:
//! nothing is lost silently, a hostile server fails its connection and not
//! the process, and no control byte from a server reaches the operator.

use std::collections::BTreeMap;
use std::time::Duration;

use mailwave_tests::fake_imap::{Capabilities, FakeImap, Folder, message};
use mailwave_tests::harness::{Migration, RunResult};

/// The `[source]`/`[target]` body for a fake server; mailboxes log in with
/// the passwords of the CSV.
fn endpoint(server: &FakeImap) -> String {
    format!(
        "kind = \"imap\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\ntimeout_secs = 10\n",
        server.port()
    )
}

/// A CSV migrating each user to the same name, password `pw`.
fn csv(users: &[&str]) -> String {
    let mut csv = String::from("source,target,source_password,target_password\n");
    for user in users {
        csv.push_str(&format!("{user},{user},pw,pw\n"));
    }
    csv
}

/// Source and target fake servers with these users, and a migration
/// between them (one attempt per pass unless `extra` says otherwise).
async fn setup(users: &[&str], extra: &str) -> (FakeImap, FakeImap, Migration) {
    let source = FakeImap::start(Capabilities::default()).await;
    let target = FakeImap::start(Capabilities::default()).await;
    for user in users {
        source.add_user(user, "pw");
        target.add_user(user, "pw");
    }
    let extra = if extra.contains("[migration]") {
        extra.to_string()
    } else {
        format!("[migration]\nmax_attempts = 1\n{extra}")
    };
    let migration = Migration::new(&endpoint(&source), &endpoint(&target), &extra, &csv(users))
        .expect("write the migration");
    (source, target, migration)
}

/// Runs `mailwave run` to its end; the fake servers go on serving on the
/// runtime's other threads meanwhile.
async fn run(migration: &Migration) -> RunResult {
    tokio::task::block_in_place(|| migration.run().expect("run mailwave"))
}

/// `(folder, body, flags)` of every message, sorted: what must match
/// between source and target.
fn contents(folders: &BTreeMap<String, Folder>) -> Vec<(String, Vec<u8>, Vec<String>)> {
    let mut all: Vec<_> = folders
        .iter()
        .flat_map(|(name, folder)| {
            folder.messages.iter().map(move |m| {
                (
                    name.clone(),
                    m.body.clone(),
                    m.flags.iter().cloned().collect::<Vec<_>>(),
                )
            })
        })
        .collect();
    all.sort();
    all
}

fn assert_exact(source: &FakeImap, target: &FakeImap, user: &str) {
    let want = contents(&source.folders(user));
    let have = contents(&target.folders(user));
    assert_eq!(
        have.len(),
        want.len(),
        "{user}: {} messages in the target for {} in the source",
        have.len(),
        want.len()
    );
    assert_eq!(have, want, "{user}: target differs from source");
}

fn inbox_count(server: &FakeImap, user: &str) -> usize {
    server.folders(user)["INBOX"].messages.len()
}

/// The fixture itself: with every capability set it offers, a migration
/// between two well-behaved fake servers is exact, and a delta pass copies
/// what is new and the flags that changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_behaved_fake_servers_migrate_exactly_with_every_capability_set() {
    let minimal = Capabilities {
        uidplus: false,
        literal_plus: false,
        multiappend: false,
        condstore: false,
    };
    let condstore = Capabilities {
        condstore: true,
        ..Capabilities::default()
    };
    for capabilities in [Capabilities::default(), condstore, minimal] {
        let source = FakeImap::start(capabilities.clone()).await;
        let target = FakeImap::start(capabilities.clone()).await;
        source.add_user("ann", "pw");
        target.add_user("ann", "pw");
        source.create_folder("ann", "Work", None);
        for n in 0..5 {
            let inbox = message(&format!("inbox {n}"), "hello");
            source.add_message("ann", "INBOX", &inbox, &["\\Seen"]);
            source.add_message("ann", "Work", &message(&format!("work {n}"), "work"), &[]);
        }
        let migration = Migration::new(
            &endpoint(&source),
            &endpoint(&target),
            "[migration]\nmax_attempts = 1\n",
            &csv(&["ann"]),
        )
        .unwrap();
        let first = run(&migration).await;
        assert!(
            first.success,
            "{capabilities:?}: {}\n{}",
            first.stdout, first.stderr
        );
        assert_eq!(first.stat("ann", "items_copied"), 10, "{capabilities:?}");
        assert_exact(&source, &target, "ann");

        source.set_flags("ann", "INBOX", 2, &["\\Flagged"]);
        source.add_message("ann", "Work", &message("late", "work"), &[]);
        let delta = run(&migration).await;
        assert!(
            delta.success,
            "{capabilities:?}: {}\n{}",
            delta.stdout, delta.stderr
        );
        assert_eq!(delta.stat("ann", "items_copied"), 1, "{capabilities:?}");
        assert_eq!(delta.stat("ann", "flags_updated"), 1, "{capabilities:?}");
        assert_exact(&source, &target, "ann");
    }
}

/// Case 6, listing: answers the parser does not understand (an unknown
/// item, a garbled line) and entries without INTERNALDATE, FLAGS or
/// RFC822.SIZE are errors,
/// never "expunged": the run does not pass them by, and once the server is
/// fixed the next run copies them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_6_items_not_understood_are_never_taken_for_gone() {
    let (source, target, migration) = setup(&["bea"], "").await;
    for n in 1..=7 {
        source.add_message("bea", "INBOX", &message(&format!("m{n}"), "text"), &[]);
    }
    source.faults("bea", |f| {
        f.omit_internal_date.insert(2);
        f.omit_flags.insert(3);
        f.omit_size.insert(4);
        f.unknown_item.insert(5);
        f.garbled.insert(6);
    });
    let faulty = run(&migration).await;
    assert!(!faulty.success, "{}\n{}", faulty.stdout, faulty.stderr);
    assert_ne!(faulty.mailbox("bea")["state"], "completed");
    assert!(
        inbox_count(&target, "bea") < 7,
        "nothing to copy all of while the server garbles"
    );

    source.faults("bea", |f| *f = Default::default());
    let fixed = run(&migration).await;
    assert!(fixed.success, "{}\n{}", fixed.stdout, fixed.stderr);
    assert_exact(&source, &target, "bea");
}

/// Case 6, bodies: `BODY[] NIL` for a message the server still holds is
/// an error, not "expunged"; the next run copies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_6_body_nil_is_not_taken_for_gone() {
    let (source, target, migration) = setup(&["cid"], "").await;
    for n in 1..=3 {
        source.add_message("cid", "INBOX", &message(&format!("m{n}"), "text"), &[]);
    }
    source.faults("cid", |f| {
        f.body_nil.insert(2);
    });
    let faulty = run(&migration).await;
    assert!(!faulty.success, "{}\n{}", faulty.stdout, faulty.stderr);
    assert_ne!(faulty.mailbox("cid")["state"], "completed");
    source.faults("cid", |f| *f = Default::default());
    let fixed = run(&migration).await;
    assert!(fixed.success, "{}\n{}", fixed.stdout, fixed.stderr);
    assert_exact(&source, &target, "cid");
}

/// Case 7: a LIST line the parser does not understand fails the pass; the
/// folder it names never vanishes with only a DEBUG line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_7_an_unparsable_list_line_is_an_error() {
    let (source, target, migration) = setup(&["dan"], "").await;
    source.create_folder("dan", "oddattr", None);
    source.add_message("dan", "INBOX", &message("inbox", "text"), &[]);
    source.add_message("dan", "oddattr", &message("odd", "text"), &[]);
    source.faults("dan", |f| {
        f.weird_list_attribute.insert("oddattr".into());
    });
    let result = run(&migration).await;
    assert!(!result.success, "{}\n{}", result.stdout, result.stderr);
    assert_ne!(result.mailbox("dan")["state"], "completed");
    let error = result.mailbox("dan")["last_error"].to_string();
    assert!(error.contains("LIST"), "{error}");

    source.faults("dan", |f| *f = Default::default());
    let fixed = run(&migration).await;
    assert!(fixed.success, "{}\n{}", fixed.stdout, fixed.stderr);
    assert_exact(&source, &target, "dan");
}

/// Case 10: one message the source refuses to FETCH is found by bisecting
/// the batch; the six others are copied and the refused UID recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_10_a_refused_message_is_bisected_out_of_its_batch() {
    let (source, target, migration) = setup(&["eve"], "").await;
    for n in 1..=7 {
        source.add_message("eve", "INBOX", &message(&format!("m{n}"), "text"), &[]);
    }
    source.faults("eve", |f| {
        f.refuse_fetch.insert(4);
    });
    let result = run(&migration).await;
    let copied: Vec<Vec<u8>> = target.folders("eve")["INBOX"]
        .messages
        .iter()
        .map(|m| m.body.clone())
        .collect();
    let mut expected: Vec<Vec<u8>> = source.folders("eve")["INBOX"]
        .messages
        .iter()
        .filter(|m| m.uid != 4)
        .map(|m| m.body.clone())
        .collect();
    let mut copied_sorted = copied.clone();
    copied_sorted.sort();
    expected.sort();
    assert_eq!(
        copied_sorted, expected,
        "{}\n{}",
        result.stdout, result.stderr
    );
    let failures = result.mailbox("eve")["item_failures"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["item"], "4");
    assert!(
        failures[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cannot be read")),
        "the reason quotes the server: {failures:?}"
    );
    // Case 11: not plain `completed`, and the exit code says so.
    assert_eq!(result.mailbox("eve")["state"], "completed_with_errors");
    assert_eq!(result.code, Some(3), "{}", result.stdout);
}

/// Case 12: an unsolicited FETCH nested 400 deep fails that connection,
/// not the process: the other mailbox of the run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_12_deep_nesting_fails_one_mailbox_not_the_process() {
    let (source, target, migration) = setup(&["evil", "good"], "").await;
    for user in ["evil", "good"] {
        for n in 1..=3 {
            source.add_message(user, "INBOX", &message(&format!("{user}{n}"), "text"), &[]);
        }
    }
    source.faults("evil", |f| f.nested_bodystructure = Some(400));
    let result = run(&migration).await;
    assert!(
        result.report.is_object(),
        "the process wrote its report (it did not abort)\n{}\n{}",
        result.stdout,
        result.stderr
    );
    assert_eq!(result.mailbox("good")["state"], "completed");
    assert_ne!(result.mailbox("evil")["state"], "completed");
    assert_exact(&source, &target, "good");
    assert!(!result.success);
}

/// Peak resident memory of a process so far (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Case 13: a literal announcing 2 GiB does not make a 16 MiB-budget
/// process grow: it fails that mailbox, peak RSS stays within budget plus
/// a fixed overhead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_13_a_huge_literal_stays_within_the_memory_budget() {
    const BUDGET: u64 = 16 * 1024 * 1024;
    const OVERHEAD: u64 = 96 * 1024 * 1024;
    let extra = format!("[migration]\nmax_attempts = 1\nmemory_budget_bytes = {BUDGET}\n");
    let (source, _target, migration) = setup(&["hog"], &extra).await;
    for n in 1..=3 {
        source.add_message("hog", "INBOX", &message(&format!("m{n}"), "text"), &[]);
    }
    source.faults("hog", |f| f.huge_literal = Some(1 << 31));
    let mut peak = 0;
    let result = tokio::task::block_in_place(|| {
        migration.run_within(Duration::from_secs(30), |pid| {
            peak = peak.max(peak_rss(pid).unwrap_or_default());
        })
    })
    .expect("run mailwave");
    assert!(
        peak < BUDGET + OVERHEAD,
        "peak RSS {} MiB for a budget of {} MiB",
        peak >> 20,
        BUDGET >> 20
    );
    eprintln!(
        "a 2 GiB literal: peak RSS {} MiB for a budget of {} MiB",
        peak >> 20,
        BUDGET >> 20
    );
    let result = result.expect("the run ends by itself, failing the mailbox");
    assert_ne!(result.mailbox("hog")["state"], "completed");
}

/// Case 15: an ESC sequence in server text (a NO answer, an untagged
/// warning, a folder name) never reaches stdout, stderr or the report raw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_15_control_bytes_from_a_server_are_escaped_everywhere() {
    let (source, _target, migration) = setup(&["esc", "named"], "").await;
    source.add_message("esc", "INBOX", &message("m", "text"), &[]);
    source.faults("esc", |f| {
        f.untagged_warning = Some("\x1b[2J\x1b[Hall mailboxes completed".into());
        f.select_refusal = Some("\x1b[2J\x1b[31mall mailboxes completed".into());
    });
    // A folder whose name carries an ESC sequence.
    source.create_folder("named", "clear\x1b[2Jscreen", None);
    source.add_message("named", "clear\x1b[2Jscreen", &message("n", "text"), &[]);
    let result = run(&migration).await;
    assert!(
        !result.stdout.contains('\x1b'),
        "stdout: {:?}",
        result.stdout
    );
    assert!(
        !result.stderr.contains('\x1b'),
        "stderr: {:?}",
        result.stderr
    );
    let report = std::fs::read(&migration.report).expect("the report");
    assert!(
        !report.contains(&0x1b),
        "{}",
        String::from_utf8_lossy(&report)
    );
    assert!(
        result.stdout.contains("all mailboxes completed"),
        "the server's words are quoted, escaped: {}",
        result.stdout
    );
}

/// Case 19 (IMAP): subscribed source folders arrive subscribed, the
/// others not (real Dovecot on both sides).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_19_subscriptions_are_copied_dovecot_to_dovecot() {
    use mailwave_tests::harness::dovecot_endpoint;
    use mailwave_tests::{DovecotOptions, DovecotServer};
    let start = || {
        DovecotServer::start(
            DovecotOptions::default()
                .separator('/')
                .user("sue", "pw-sue"),
        )
        .expect("start Dovecot")
    };
    let (source, target) = (start(), start());
    let mut client = source.master_endpoint("sue").connect().await.unwrap();
    for folder in ["Kept", "Quiet"] {
        client.create(folder).await.unwrap();
        client
            .append(folder, &[], None, &message(folder, "text"))
            .await
            .unwrap();
    }
    client.subscribe("Kept").await.unwrap();
    client.logout().await;

    let migration = Migration::new("", "", "", "source,target\nsue,sue\n").unwrap();
    let source_toml = dovecot_endpoint(&source, &migration.dir().join("source.pw"));
    let target_toml = dovecot_endpoint(&target, &migration.dir().join("target.pw"));
    std::fs::write(
        &migration.config,
        format!("[source]\n{source_toml}\n[target]\n{target_toml}\n"),
    )
    .unwrap();
    let result = run(&migration).await;
    assert!(result.success, "{}\n{}", result.stdout, result.stderr);

    let mut client = target.master_endpoint("sue").connect().await.unwrap();
    let lsub = client.run_text("LSUB \"\" \"*\"").await.unwrap();
    let subscribed: Vec<String> = lsub
        .untagged
        .iter()
        .map(|line| String::from_utf8_lossy(line).into_owned())
        .collect();
    assert!(
        subscribed
            .iter()
            .any(|l| l.ends_with("Kept") || l.ends_with("\"Kept\"")),
        "{subscribed:?}"
    );
    assert!(
        !subscribed.iter().any(|l| l.contains("Quiet")),
        "{subscribed:?}"
    );
    let listed = client.list().await.unwrap();
    assert!(listed.iter().any(|e| e.name == "Quiet"), "Quiet is copied");
}

// ----- Tests for the engine's exactly-once fixes (issue 7 cases 2, 3, 5,
// 14): the fixture misbehaves, the engine must cope. -----

/// Target bodies without the trace header the target prepends.
fn without_trace(body: &[u8]) -> Vec<u8> {
    match body.strip_prefix(b"Received: ") {
        Some(rest) => {
            let end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .map_or(0, |at| at + 2);
            rest[end..].to_vec()
        }
        None => body.to_vec(),
    }
}

/// Case 2: a source folder's UIDVALIDITY changes between passes (same
/// messages renumbered, one new), then the target connection drops before
/// the folder's first commit: the retry must not append the folder again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_2_uidvalidity_change_then_a_drop_gives_zero_duplicates() {
    let (source, target, migration) = setup(&["fay"], "[migration]\nmax_attempts = 3\n").await;
    for n in 1..=4 {
        source.add_message("fay", "INBOX", &message(&format!("m{n}"), "text"), &[]);
    }
    let first = run(&migration).await;
    assert!(first.success, "{}\n{}", first.stdout, first.stderr);

    source.renumber("fay", "INBOX", 4242);
    source.add_message("fay", "INBOX", &message("new", "text"), &[]);
    target.faults("fay", |f| f.drop_after_appends = Some(1));
    let _interrupted = run(&migration).await;
    let again = run(&migration).await;
    assert!(again.success, "{}\n{}", again.stdout, again.stderr);
    assert_exact(&source, &target, "fay");
}

/// Case 3: a target that prepends a trace header on store and drops the
/// connection after storing the k-th APPEND (before its tagged OK): the
/// next run recovers the in-doubt copies, zero duplicates, for several k.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_3_a_rewriting_target_that_drops_after_storing_gives_zero_duplicates() {
    for k in [1, 2, 4] {
        let source = FakeImap::start(Capabilities::default()).await;
        // One APPEND per message, so that the drop lands inside a batch.
        let target = FakeImap::start(Capabilities {
            multiappend: false,
            ..Capabilities::default()
        })
        .await;
        source.add_user("gus", "pw");
        target.add_user("gus", "pw");
        for n in 1..=6 {
            source.add_message(
                "gus",
                "INBOX",
                &message(&format!("m{n}"), "text"),
                &["\\Seen"],
            );
        }
        target.faults("gus", |f| {
            f.prepend_received = true;
            f.drop_after_appends = Some(k);
        });
        let migration = Migration::new(
            &endpoint(&source),
            &endpoint(&target),
            "[migration]\nmax_attempts = 1\nbatch_messages = 6\n",
            &csv(&["gus"]),
        )
        .unwrap();
        let interrupted = run(&migration).await;
        assert!(!interrupted.success, "k={k}: the drop fails the first run");
        assert_eq!(
            inbox_count(&target, "gus"),
            k,
            "k={k}: stored before the drop"
        );

        let next = run(&migration).await;
        assert!(next.success, "k={k}: {}\n{}", next.stdout, next.stderr);
        let mut have: Vec<Vec<u8>> = target.folders("gus")["INBOX"]
            .messages
            .iter()
            .map(|m| without_trace(&m.body))
            .collect();
        let mut want: Vec<Vec<u8>> = source.folders("gus")["INBOX"]
            .messages
            .iter()
            .map(|m| m.body.clone())
            .collect();
        have.sort();
        want.sort();
        assert_eq!(have, want, "k={k}: zero duplicates, nothing missing");
        assert!(
            next.stat("gus", "items_recovered") > 0,
            "k={k}: {}",
            next.stdout
        );
    }
}

/// Issue 8, point 3: a target that stores an APPEND and drops the
/// connection before its tagged OK, with attempts left: the pass restarts
/// once (a retry, counted) and recovers the copies in doubt; no APPEND is
/// sent again, so the target holds every message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_stored_then_dropped_is_never_sent_again() {
    let source = FakeImap::start(Capabilities::default()).await;
    let target = FakeImap::start(Capabilities {
        multiappend: false,
        ..Capabilities::default()
    })
    .await;
    source.add_user("kim", "pw");
    target.add_user("kim", "pw");
    for n in 1..=4 {
        source.add_message("kim", "INBOX", &message(&format!("m{n}"), "text"), &[]);
    }
    target.faults("kim", |f| f.drop_after_appends = Some(2));
    let migration = Migration::new(
        &endpoint(&source),
        &endpoint(&target),
        "[migration]\nmax_attempts = 3\n",
        &csv(&["kim"]),
    )
    .unwrap();
    let result = run(&migration).await;
    assert!(result.success, "{}\n{}", result.stdout, result.stderr);
    assert_exact(&source, &target, "kim");
    let appends = target
        .command_log()
        .iter()
        .filter(|c| c.line.to_ascii_uppercase().starts_with("APPEND"))
        .count();
    assert_eq!(appends, 4, "one APPEND per message");
    assert_eq!(result.stat("kim", "retries"), 1, "{}", result.stdout);
    // The batch's first copy was answered, the second not: both in doubt.
    assert_eq!(
        result.stat("kim", "items_recovered"),
        2,
        "{}",
        result.stdout
    );
}

/// A target that drops the connection after every second APPEND it
/// stores, for good: every attempt of the pass recovers what the last one
/// left in doubt and copies more before it fails, so the pass never runs
/// out of attempts although there are more failures than `max_attempts`
/// (attempts count in a row without progress). Still one APPEND per
/// message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_failing_again_and_again_after_progress_still_gets_everything() {
    let source = FakeImap::start(Capabilities::default()).await;
    let target = FakeImap::start(Capabilities {
        multiappend: false,
        ..Capabilities::default()
    })
    .await;
    source.add_user("max", "pw");
    target.add_user("max", "pw");
    for n in 1..=8 {
        source.add_message("max", "INBOX", &message(&format!("m{n}"), "text"), &[]);
    }
    target.faults("max", |f| f.drop_every_appends = Some(2));
    let migration = Migration::new(
        &endpoint(&source),
        &endpoint(&target),
        "[migration]\nmax_attempts = 2\n",
        &csv(&["max"]),
    )
    .unwrap();
    let result = run(&migration).await;
    assert!(result.success, "{}\n{}", result.stdout, result.stderr);
    assert_exact(&source, &target, "max");
    let appends = target
        .command_log()
        .iter()
        .filter(|c| c.line.to_ascii_uppercase().starts_with("APPEND"))
        .count();
    assert_eq!(appends, 8, "one APPEND per message");
    assert_eq!(result.stat("max", "retries"), 4, "{}", result.stdout);
}

/// Issue 8, point 3: item failures are not retries. A message the source
/// refuses is recorded as the item's failure; the mailbox reports no retry,
/// nor does either server's scheduler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn item_failures_are_not_counted_as_retries() {
    let (source, _target, migration) = setup(&["lou"], "[migration]\nmax_attempts = 3\n").await;
    for n in 1..=3 {
        source.add_message("lou", "INBOX", &message(&format!("m{n}"), "text"), &[]);
    }
    source.faults("lou", |f| {
        f.refuse_fetch.insert(2);
    });
    let result = run(&migration).await;
    assert_eq!(result.mailbox("lou")["state"], "completed_with_errors");
    let failures = result.mailbox("lou")["item_failures"].as_array().cloned();
    assert_eq!(failures.unwrap_or_default().len(), 1, "{}", result.stdout);
    assert_eq!(result.stat("lou", "retries"), 0, "{}", result.stdout);
    let endpoints = result.report["endpoints"].as_object().expect("endpoints");
    for (endpoint, counters) in endpoints {
        assert_eq!(
            counters["retries"],
            serde_json::json!({}),
            "{endpoint}: {counters}"
        );
    }
}

/// Case 5: the target folder is re-created between passes (UIDVALIDITY 77
/// → 78, holding other mail): the delta pass never stores flags on a
/// message mailwave did not write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_5_a_recreated_target_folder_is_never_touched_by_stale_uids() {
    let (source, target, migration) = setup(&["hal"], "").await;
    target.recreate_folder("hal", "INBOX", 77, &[]);
    for n in 1..=3 {
        source.add_message("hal", "INBOX", &message(&format!("m{n}"), "text"), &[]);
    }
    let first = run(&migration).await;
    assert!(first.success, "{}\n{}", first.stdout, first.stderr);

    let strangers: Vec<Vec<u8>> = (1..=3)
        .map(|n| message(&format!("stranger{n}"), "not ours"))
        .collect();
    let stranger_refs: Vec<&[u8]> = strangers.iter().map(Vec::as_slice).collect();
    target.recreate_folder("hal", "INBOX", 78, &stranger_refs);
    let before = target.command_log().len();
    source.set_flags("hal", "INBOX", 1, &["\\Flagged"]);
    let _delta = run(&migration).await;

    let stores: Vec<_> = target.command_log()[before..]
        .iter()
        .filter(|c| c.line.to_ascii_uppercase().starts_with("UID STORE"))
        .cloned()
        .collect();
    let strangers_now = &target.folders("hal")["INBOX"].messages;
    assert!(
        strangers_now.iter().take(3).all(|m| m.flags.is_empty()),
        "flags were stored on mail mailwave never wrote: {stores:?}"
    );
}

/// Case 14: `Suggested Backoff Time: 99999999 seconds` fails that mailbox
/// at once, quoting the server; the other mailbox completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_14_an_absurd_backoff_hint_fails_the_mailbox_instead_of_sleeping() {
    let (source, target, migration) =
        setup(&["ida", "jon"], "[migration]\nmax_attempts = 3\n").await;
    for user in ["ida", "jon"] {
        source.add_message(user, "INBOX", &message(user, "text"), &[]);
    }
    source.faults("ida", |f| {
        f.refuse_with = Some(
            "[THROTTLED] Request is throttled. Suggested Backoff Time: 99999999 seconds".into(),
        );
    });
    let result =
        tokio::task::block_in_place(|| migration.run_within(Duration::from_secs(120), |_| {}))
            .expect("run mailwave")
            .expect("the run ends instead of sleeping for years");
    assert_eq!(result.mailbox("jon")["state"], "completed");
    assert_exact(&source, &target, "jon");
    assert_eq!(result.mailbox("ida")["state"], "failed");
    let error = result.mailbox("ida")["last_error"].to_string();
    assert!(error.contains("99999999"), "{error}");
}

/// A source whose STATUS reports a HIGHESTMODSEQ that its SELECT then
/// withdraws (`[NOMODSEQ]`, as Dovecot does after an index failure) and
/// that answers a modseq FETCH with BAD: the delta pass reads every flag
/// instead, loses no flag change and skips no folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_withdraws_its_modseqs_on_select_still_syncs_every_flag() {
    let condstore = Capabilities {
        condstore: true,
        ..Capabilities::default()
    };
    let source = FakeImap::start(condstore.clone()).await;
    let target = FakeImap::start(condstore).await;
    source.add_user("ann", "pw");
    target.add_user("ann", "pw");
    for n in 0..4 {
        source.add_message("ann", "INBOX", &message(&format!("m {n}"), "x"), &[]);
    }
    let migration = Migration::new(
        &endpoint(&source),
        &endpoint(&target),
        "[migration]\nmax_attempts = 1\n",
        &csv(&["ann"]),
    )
    .unwrap();
    let first = run(&migration).await;
    assert!(first.success, "{}\n{}", first.stdout, first.stderr);

    source.faults("ann", |f| f.nomodseq_on_select = true);
    source.set_flags("ann", "INBOX", 3, &["\\Flagged", "\\Seen"]);
    let delta = run(&migration).await;
    assert!(delta.success, "{}\n{}", delta.stdout, delta.stderr);
    assert_eq!(delta.stat("ann", "flags_updated"), 1, "{}", delta.stdout);
    assert_eq!(delta.stat("ann", "items_failed"), 0, "{}", delta.stdout);
    assert_exact(&source, &target, "ann");

    // Once the server keeps modseqs again, a later pass runs as usual.
    source.faults("ann", |f| f.nomodseq_on_select = false);
    source.set_flags("ann", "INBOX", 1, &["\\Answered"]);
    let healed = run(&migration).await;
    assert!(healed.success, "{}\n{}", healed.stdout, healed.stderr);
    assert_eq!(healed.stat("ann", "flags_updated"), 1, "{}", healed.stdout);
    assert_exact(&source, &target, "ann");
}

/// Issue 9, point 13: a target that stores no custom keywords (Exchange
/// Online's IMAP: PERMANENTFLAGS without `\*`, keywords dropped without a
/// word) gets the messages with their system flags; every keyword left off
/// is counted per mailbox, named in the report, and said in the summary,
/// on the first copy and on a delta pass's flag changes alike. A mailbox on
/// a folder that stores keywords keeps them and counts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keywords_a_target_does_not_store_are_counted_and_reported_never_dropped_silently() {
    let (source, target, migration) = setup(&["ann", "bob"], "").await;
    target.faults("ann", |f| f.no_custom_keywords = true);
    for user in ["ann", "bob"] {
        source.add_message(user, "INBOX", &message("one", "1"), &["\\Seen", "$Label1"]);
        source.add_message(user, "INBOX", &message("two", "2"), &["Work"]);
        source.add_message(user, "INBOX", &message("three", "3"), &["\\Flagged"]);
        source.add_message(user, "INBOX", &message("four", "4"), &[]);
    }

    let first = run(&migration).await;
    assert!(first.success, "{}\n{}", first.stdout, first.stderr);
    assert_eq!(first.stat("ann", "items_copied"), 4);
    assert_eq!(first.stat("ann", "keywords_refused"), 2, "{}", first.stdout);
    assert_eq!(
        first.mailbox("ann")["stats"]["refused_keywords"],
        serde_json::json!(["$Label1", "Work"])
    );
    assert_eq!(first.stat("bob", "keywords_refused"), 0);
    assert!(
        first.stdout.contains(
            "KEYWORDS NOT KEPT ann: the target stores no custom keywords; 2 left off copied messages ($Label1, Work)"
        ),
        "{}",
        first.stdout
    );
    assert!(
        !first.stdout.contains("KEYWORDS NOT KEPT bob"),
        "{}",
        first.stdout
    );
    let flags = |user: &str| -> Vec<Vec<String>> {
        target.folders(user)["INBOX"]
            .messages
            .iter()
            .map(|m| m.flags.iter().cloned().collect())
            .collect()
    };
    assert_eq!(
        flags("ann"),
        [vec!["\\Seen"], vec![], vec!["\\Flagged"], vec![]],
        "system flags go, keywords do not"
    );
    assert_exact(&source, &target, "bob");

    // A delta pass: a keyword added with a system flag.
    source.set_flags("ann", "INBOX", 4, &["\\Seen", "Urgent"]);
    let delta = run(&migration).await;
    assert!(delta.success, "{}\n{}", delta.stdout, delta.stderr);
    assert_eq!(delta.stat("ann", "flags_updated"), 1, "{}", delta.stdout);
    assert_eq!(delta.stat("ann", "keywords_refused"), 1, "{}", delta.stdout);
    assert_eq!(
        delta.mailbox("ann")["stats"]["refused_keywords"],
        serde_json::json!(["Urgent"])
    );
    assert_eq!(flags("ann")[3], ["\\Seen"]);
}
