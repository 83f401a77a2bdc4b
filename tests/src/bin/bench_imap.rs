//! Benchmark: mailwave against mbsync (isync), Dovecot → Dovecot.
//!
//! Starts one source Dovecot (`.` separator) and two targets (`/`), loads
//! the same seeded corpus into every source user, then migrates it once
//! with `mailwave run` (into target 1, followed by a no-op delta pass) and
//! once with `mbsync` (into target 2, a few channels at a time). Every run
//! is wrapped in `/usr/bin/time`; the servers' CPU comes from `/proc`.
//! Both targets are checked message by message with the independent
//! checker, and a Markdown table is printed.
//!
//! It is a measurement, not a test: only harness errors make it fail.
//! Run it through `tests/bench/imap-vs-mbsync.sh`, which builds everything
//! in release mode first.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use mailwave_tests::corpus;
use mailwave_tests::harness::{Migration, dovecot_endpoint, folder_on};
use mailwave_tests::verify::{self, CompareOptions, Snapshot};
use mailwave_tests::{CorpusSpec, DovecotOptions, DovecotServer, Endpoint, Report, SizeProfile};

const USAGE: &str = "\
usage: bench-imap [--users N] [--messages M] [--seed S] [--mbsync-parallel P]
                  [--mailwave-extra-toml TOML] [--skip-mbsync] [--log-dir DIR]

  --users N                 mailboxes user01..userNN (default 20)
  --messages M              ordinary messages per mailbox (default 300; the
                            corpus's tricky messages come on top)
  --seed S                  corpus seed (default 20240601)
  --mbsync-parallel P       mbsync processes at a time (default 4)
  --mailwave-extra-toml T   appended to mailwave's config; a literal `\\n`
                            is a newline, e.g. '[migration]\\nconnections_per_mailbox = 4'
  --skip-mbsync             measure mailwave only (for tuning runs)
  --log-dir DIR             where the tools' stdout/stderr go (default: a new
                            directory under the temp dir)

Environment: MAILWAVE_BIN overrides the mailwave binary (default: the one
next to this driver); RUST_LOG is passed on to mailwave.";

/// `/usr/bin/time` output: wall s, user s, sys s, max RSS KiB.
const TIME_FORMAT: &str = "%e %U %S %M";

/// Command-line options.
#[derive(Debug)]
struct Args {
    users: usize,
    messages: usize,
    seed: u64,
    mbsync_parallel: usize,
    mailwave_extra_toml: String,
    skip_mbsync: bool,
    log_dir: Option<PathBuf>,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut args = Args {
            users: 20,
            messages: 300,
            seed: 20_240_601,
            mbsync_parallel: 4,
            mailwave_extra_toml: String::new(),
            skip_mbsync: false,
            log_dir: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "--skip-mbsync" {
                args.skip_mbsync = true;
                continue;
            }
            if flag == "-h" || flag == "--help" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            let value = it
                .next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
            let number = || {
                value
                    .parse::<u64>()
                    .with_context(|| format!("{flag} {value:?}: not a number"))
            };
            match flag.as_str() {
                "--users" => args.users = number()? as usize,
                "--messages" => args.messages = number()? as usize,
                "--seed" => args.seed = number()?,
                "--mbsync-parallel" => args.mbsync_parallel = number()? as usize,
                "--mailwave-extra-toml" => args.mailwave_extra_toml = value.replace("\\n", "\n"),
                "--log-dir" => args.log_dir = Some(PathBuf::from(value)),
                _ => bail!("unknown option {flag:?}\n{USAGE}"),
            }
        }
        ensure!((1..=99).contains(&args.users), "--users must be 1..=99");
        ensure!(args.mbsync_parallel >= 1, "--mbsync-parallel must be >= 1");
        Ok(args)
    }
}

/// What `/usr/bin/time` measured for one process.
#[derive(Clone, Copy, Debug, Default)]
struct Timing {
    wall: f64,
    cpu: f64,
    max_rss_kib: u64,
}

impl Timing {
    /// Reads the last line of a `/usr/bin/time -o FILE -f TIME_FORMAT` file
    /// (a first line "Command exited with non-zero status" may precede it).
    fn read(path: &Path) -> Result<Timing> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let line = text.lines().last().unwrap_or_default();
        let fields: Vec<f64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing /usr/bin/time output {line:?}"))?;
        let [wall, user, sys, rss] = fields[..] else {
            bail!("unexpected /usr/bin/time output {line:?}");
        };
        Ok(Timing {
            wall,
            cpu: user + sys,
            max_rss_kib: rss as u64,
        })
    }
}

/// Runs `program args` under `/usr/bin/time`, stdout and stderr into
/// `<log_stem>.out` / `<log_stem>.err`.
fn run_timed(program: &Path, args: &[&str], log_stem: &Path) -> Result<(ExitStatus, Timing)> {
    let time_file = log_stem.with_extension("time");
    let status = Command::new("/usr/bin/time")
        .arg("-f")
        .arg(TIME_FORMAT)
        .arg("-o")
        .arg(&time_file)
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(log_stem.with_extension("out"))?)
        .stderr(File::create(log_stem.with_extension("err"))?)
        .status()
        .with_context(|| format!("running /usr/bin/time {}", program.display()))?;
    Ok((status, Timing::read(&time_file)?))
}

/// CPU seconds (user + system, including reaped children) of every process
/// in the process groups of these Dovecot instances. Dovecot's master reaps
/// the short-lived `imap` processes, so their time lands in its `cutime`.
fn servers_cpu(servers: &[&DovecotServer], ticks_per_second: f64) -> Result<f64> {
    let mut groups = BTreeSet::new();
    for server in servers {
        let pid_file = server.dir().join("run/master.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("reading {}", pid_file.display()))?;
        let stat = proc_stat(pid.trim().parse()?)
            .with_context(|| format!("Dovecot master {} is gone", pid.trim()))?;
        groups.insert(stat[2].parse::<u64>()?);
    }
    let mut ticks = 0u64;
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // Processes come and go while we read; a vanished one is skipped.
        let Some(stat) = proc_stat(pid) else {
            continue;
        };
        if groups.contains(&stat[2].parse::<u64>()?) {
            for field in &stat[11..=14] {
                ticks += field.parse::<u64>()?;
            }
        }
    }
    Ok(ticks as f64 / ticks_per_second)
}

/// The fields of `/proc/PID/stat` after the command name: index 0 is the
/// state, 2 the process group, 11..=14 utime, stime, cutime, cstime.
fn proc_stat(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(") ")?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn clock_ticks() -> Result<f64> {
    let out = Command::new("getconf").arg("CLK_TCK").output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// One tool's run over all mailboxes.
#[derive(Debug)]
struct ToolResult {
    name: String,
    wall: f64,
    cpu: f64,
    servers_cpu: f64,
    max_rss_kib: u64,
    exactness: Exactness,
    /// Printed below the table.
    notes: Vec<String>,
}

/// Exactness totals over all users.
#[derive(Debug, Default)]
struct Exactness {
    duplicates: usize,
    missing: usize,
    flags: usize,
    dates: usize,
    missing_folders: BTreeSet<String>,
    unexpected: usize,
}

impl Exactness {
    fn of(reports: &[Report]) -> Exactness {
        let mut e = Exactness::default();
        for r in reports {
            e.duplicates += r.duplicates.len();
            e.missing += r.missing.len();
            e.flags += r.flag_mismatches.len();
            e.dates += r.date_mismatches.len();
            e.missing_folders.extend(r.missing_folders.iter().cloned());
            e.unexpected += r.unexpected.len();
        }
        e
    }

    fn exact(&self) -> bool {
        self.duplicates + self.missing + self.flags + self.dates + self.unexpected == 0
            && self.missing_folders.is_empty()
    }

    /// `yes (0/0/0/0)` or `no (dups/missing/flags/dates)`.
    fn cell(&self) -> String {
        format!(
            "{} ({}/{}/{}/{})",
            if self.exact() { "yes" } else { "no" },
            self.duplicates,
            self.missing,
            self.flags,
            self.dates
        )
    }
}

/// The benchmark's servers and corpus.
struct Setup {
    users: Vec<String>,
    source: DovecotServer,
    mailwave_target: DovecotServer,
    mbsync_target: DovecotServer,
    messages: usize,
    bytes: u64,
    ticks: f64,
    log_dir: PathBuf,
    runtime: tokio::runtime::Runtime,
}

impl Setup {
    fn start(args: &Args) -> Result<Setup> {
        let options = DovecotOptions::default().numbered_users(args.users);
        let users: Vec<String> = options.users.iter().map(|(u, _)| u.clone()).collect();
        let source = DovecotServer::start(options.clone().separator('.'))?;
        let mailwave_target = DovecotServer::start(options.clone().separator('/'))?;
        let mbsync_target = DovecotServer::start(options.separator('/'))?;

        let started = Instant::now();
        let spec = CorpusSpec::for_server(&source, args.seed)
            .messages(args.messages)
            .size_profile(SizeProfile::Realistic)
            .tricky(true);
        let names: Vec<&str> = users.iter().map(String::as_str).collect();
        corpus::load_users(&source, &names, &spec).context("loading the corpus")?;
        let loaded = started.elapsed();

        let log_dir = match &args.log_dir {
            Some(dir) => dir.clone(),
            None => tempfile::Builder::new()
                .prefix("mailwave-bench-logs-")
                .tempdir()?
                .keep(),
        };
        std::fs::create_dir_all(&log_dir)?;
        let mut setup = Setup {
            users,
            source,
            mailwave_target,
            mbsync_target,
            messages: 0,
            bytes: 0,
            ticks: clock_ticks().context("getconf CLK_TCK")?,
            log_dir,
            runtime: tokio::runtime::Runtime::new()?,
        };

        // Read everything once so that Dovecot's index building is not
        // charged to whichever tool runs first.
        let started = Instant::now();
        for user in &setup.users {
            let endpoint = setup.source.master_endpoint(user);
            let snapshot = setup
                .runtime
                .block_on(verify::snapshot(&endpoint, &CompareOptions::default()))
                .with_context(|| format!("warming {user}"))?;
            setup.messages += snapshot.message_count();
            setup.bytes += snapshot
                .folders
                .iter()
                .flat_map(|f| &f.messages)
                .map(|m| m.size as u64)
                .sum::<u64>();
        }
        println!(
            "corpus: {} users, {} messages, {:.1} MiB (written in {:.1} s, source warmed in {:.1} s)",
            setup.users.len(),
            setup.messages,
            mib(setup.bytes),
            loaded.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        let load = std::fs::read_to_string("/proc/loadavg")?;
        println!(
            "machine: {} CPUs, load average {} (other work on the machine skews the timings)",
            std::thread::available_parallelism()?,
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        );
        Ok(setup)
    }

    fn servers_cpu(&self) -> Result<f64> {
        servers_cpu(
            &[&self.source, &self.mailwave_target, &self.mbsync_target],
            self.ticks,
        )
    }

    /// Compares every user's source with `target` (mailwave's folder
    /// rules); with `strip_tuid`, target bodies are hashed without the
    /// `X-TUID` header line mbsync adds to every message it stores.
    fn verify(&self, target: &DovecotServer, strip_tuid: bool) -> Result<Exactness> {
        let started = Instant::now();
        let options = CompareOptions::default();
        let mut reports = Vec::new();
        for user in &self.users {
            let report = self
                .runtime
                .block_on(async {
                    let source =
                        verify::snapshot(&self.source.master_endpoint(user), &options).await?;
                    let endpoint = target.master_endpoint(user);
                    let mut copy = verify::snapshot(&endpoint, &options).await?;
                    if strip_tuid {
                        rehash_without_tuid(&endpoint, &mut copy).await?;
                    }
                    let map = folder_on(target.separator());
                    anyhow::Ok(verify::compare_snapshots(&source, &copy, map, &options))
                })
                .with_context(|| format!("verifying {user}"))?;
            reports.push(report);
        }
        println!("  verified in {:.1} s", started.elapsed().as_secs_f64());
        Ok(Exactness::of(&reports))
    }

    fn log(&self, name: &str) -> PathBuf {
        self.log_dir.join(name)
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Re-reads every message of `snapshot` and replaces its hash by the hash
/// of the body without an `X-TUID:` header line.
async fn rehash_without_tuid(endpoint: &Endpoint, snapshot: &mut Snapshot) -> Result<()> {
    let mut client = endpoint.connect().await?;
    for folder in snapshot
        .folders
        .iter_mut()
        .filter(|f| !f.messages.is_empty())
    {
        client.select_raw("EXAMINE", &folder.info.raw_name).await?;
        let mut hashes = BTreeMap::new();
        client
            .uid_fetch("1:*", true, |m| {
                hashes.insert(m.uid, *blake3::hash(&without_tuid(&m.body)).as_bytes());
                Ok(())
            })
            .await?;
        for message in &mut folder.messages {
            if let Some(hash) = hashes.get(&message.uid) {
                message.hash = *hash;
            }
        }
    }
    client.logout().await;
    Ok(())
}

/// The message without its first `X-TUID:` header line (in the header).
fn without_tuid(body: &[u8]) -> Cow<'_, [u8]> {
    let header_end = find(body, b"\r\n\r\n").unwrap_or(body.len());
    let Some(start) = find(&body[..header_end], b"\r\nX-TUID: ").map(|i| i + 2) else {
        return Cow::Borrowed(body);
    };
    let end = find(&body[start..], b"\r\n").map_or(body.len(), |i| start + i + 2);
    Cow::Owned([&body[..start], &body[end..]].concat())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The mailwave binary: `MAILWAVE_BIN`, else the one built next to us.
/// Runs `mailwave run` twice (first pass, then the no-op delta pass) and
/// checks target 1. Returns the first pass's figures and the delta pass's
/// wall time.
fn bench_mailwave(setup: &Setup, extra_toml: &str) -> Result<(ToolResult, f64)> {
    let binary = mailwave_tests::harness::bench_binary()?;
    let csv: String = std::iter::once("source,target\n".to_owned())
        .chain(setup.users.iter().map(|u| format!("{u},{u}\n")))
        .collect();
    let migration = Migration::new("", "", "", &csv)?;
    let source = dovecot_endpoint(&setup.source, &migration.dir().join("source.pw"));
    let target = dovecot_endpoint(&setup.mailwave_target, &migration.dir().join("target.pw"));
    std::fs::write(
        &migration.config,
        format!("[source]\n{source}\n[target]\n{target}\n{extra_toml}\n"),
    )?;
    let args = [
        "run",
        "--config",
        path_str(&migration.config)?,
        "--mailboxes",
        path_str(&migration.mailboxes)?,
        "--state",
        path_str(&migration.state)?,
        "--report",
        path_str(&migration.report)?,
    ];

    println!("mailwave: {}", binary.display());
    let cpu_before = setup.servers_cpu()?;
    let (status, first) = run_timed(&binary, &args, &setup.log("mailwave-pass1"))?;
    let servers = setup.servers_cpu()? - cpu_before;
    println!(
        "  first pass: {status}, copied {}, {:.2} s",
        report_total(&migration, "items_copied")?,
        first.wall
    );
    summarize_stderr(&setup.log("mailwave-pass1.err"))?;

    let (status, delta) = run_timed(&binary, &args, &setup.log("mailwave-pass2"))?;
    println!(
        "  no-op delta pass: {status}, copied {}, flags updated {}, {:.2} s",
        report_total(&migration, "items_copied")?,
        report_total(&migration, "flags_updated")?,
        delta.wall
    );
    summarize_stderr(&setup.log("mailwave-pass2.err"))?;

    let result = ToolResult {
        name: "mailwave".to_owned(),
        wall: first.wall,
        cpu: first.cpu,
        servers_cpu: servers,
        max_rss_kib: first.max_rss_kib,
        exactness: setup.verify(&setup.mailwave_target, false)?,
        notes: Vec::new(),
    };
    Ok((result, delta.wall))
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// The sum of a counter (`items_copied`, ...) over the mailboxes of
/// mailwave's JSON report (0 when it wrote none).
fn report_total(migration: &Migration, counter: &str) -> Result<u64> {
    let Ok(bytes) = std::fs::read(&migration.report) else {
        return Ok(0);
    };
    let report: serde_json::Value =
        serde_json::from_slice(&bytes).context("parsing mailwave's report")?;
    let mailboxes = report["mailboxes"].as_array().into_iter().flatten();
    Ok(mailboxes.filter_map(|m| m["stats"][counter].as_u64()).sum())
}

/// Prints how many warnings and errors a log has, and the first few.
fn summarize_stderr(path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    println!(
        "  {} warning/error lines in {}, first ones:",
        bad.len(),
        path.display()
    );
    for line in bad.iter().take(5) {
        println!("    {line}");
    }
    Ok(())
}

/// `isync 1.4.4` → (1, 4).
fn mbsync_version() -> Result<(u32, u32)> {
    let out = Command::new("mbsync")
        .arg("--version")
        .output()
        .context("running mbsync (apt-get install isync)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let version = text.split_whitespace().last().unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    println!("mbsync: {}", text.trim());
    Ok(version)
}

/// An mbsyncrc with one channel per user: far = source, near = `target`,
/// both logged in as the master user on behalf of the user.
fn mbsync_config(setup: &Setup, dir: &Path) -> Result<String> {
    // isync 1.5 renamed SSLType to TLSType.
    let tls_key = if mbsync_version()? >= (1, 5) {
        "TLSType"
    } else {
        "SSLType"
    };
    let mut config = String::new();
    for (side, server) in [("far", &setup.source), ("near", &setup.mbsync_target)] {
        let (master, password) = server.master_credentials();
        let password_file = dir.join(format!("{side}.pw"));
        std::fs::write(&password_file, format!("{password}\n"))?;
        for user in &setup.users {
            config.push_str(&format!(
                "IMAPStore {side}-{user}\nHost 127.0.0.1\nPort {}\nUser {user}*{master}\n\
                 PassCmd \"cat {}\"\n{tls_key} None\nAuthMechs LOGIN\n\n",
                server.port(),
                password_file.display(),
            ));
        }
    }
    for user in &setup.users {
        let state = dir.join("state").join(user);
        std::fs::create_dir_all(&state)?;
        config.push_str(&format!(
            "Channel {user}\nFar :far-{user}:\nNear :near-{user}:\nPatterns *\nCreate Near\n\
             Sync Pull\nExpunge None\nCopyArrivalDate yes\nSyncState {}/\n\n",
            state.display()
        ));
    }
    Ok(config)
}

/// Syncs every user's channel, `parallel` mbsync processes at a time, and
/// checks target 2.
fn bench_mbsync(setup: &Setup, parallel: usize) -> Result<ToolResult> {
    let dir = tempfile::Builder::new()
        .prefix("mailwave-mbsync-")
        .tempdir()?;
    let config = dir.path().join("mbsyncrc");
    std::fs::write(&config, mbsync_config(setup, dir.path())?)?;
    let config = path_str(&config)?;
    let mbsync = Path::new("mbsync");

    let next = AtomicUsize::new(0);
    let cpu_before = setup.servers_cpu()?;
    let started = Instant::now();
    let runs: Vec<Result<(ExitStatus, Timing)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..parallel.min(setup.users.len()))
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(user) = setup.users.get(i) else {
                            return done;
                        };
                        let log = setup.log(&format!("mbsync-{user}"));
                        done.push(run_timed(mbsync, &["-c", config, user], &log));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("mbsync worker panicked"))
            .collect()
    });
    let wall = started.elapsed().as_secs_f64();
    let servers = setup.servers_cpu()? - cpu_before;

    let (mut cpu, mut max_rss_kib, mut failed) = (0.0, 0, 0);
    for run in runs {
        let (status, timing) = run?;
        failed += usize::from(!status.success());
        cpu += timing.cpu;
        max_rss_kib = max_rss_kib.max(timing.max_rss_kib);
    }
    println!(
        "  {} channels, {failed} exited non-zero, {wall:.2} s",
        setup.users.len()
    );
    let logs: Vec<PathBuf> = setup
        .users
        .iter()
        .map(|user| setup.log(&format!("mbsync-{user}.err")))
        .collect();
    let mut notes = vec![
        "mbsync: no Flatten: the source's `.` hierarchy goes through mbsync's canonical `/` \
         onto the target's `/` hierarchy"
            .to_owned(),
    ];
    for (line, count) in distinct_lines(&logs)? {
        notes.push(format!("mbsync stderr ({count}×): {line}"));
    }
    let tuid_free = setup.verify(&setup.mbsync_target, true)?;
    notes.push(format!(
        "mbsync with its X-TUID header lines ignored: exact? {}; {} unexpected; missing folders {:?}",
        tuid_free.cell(),
        tuid_free.unexpected,
        tuid_free.missing_folders
    ));
    Ok(ToolResult {
        name: format!("mbsync ({parallel} parallel)"),
        wall,
        cpu,
        servers_cpu: servers,
        max_rss_kib,
        exactness: setup.verify(&setup.mbsync_target, false)?,
        notes,
    })
}

/// The distinct lines of these files with how often each occurs, user
/// names (`userNN`) masked so that the same message counts once.
fn distinct_lines(paths: &[PathBuf]) -> Result<Vec<(String, usize)>> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for path in paths {
        for line in std::fs::read_to_string(path)?.lines() {
            *counts.entry(mask_users(line)).or_default() += 1;
        }
    }
    Ok(counts.into_iter().collect())
}

/// `user07` → `userNN`.
fn mask_users(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(i) = rest.find("user") {
        let digits = rest[i + 4..]
            .chars()
            .take_while(char::is_ascii_digit)
            .count();
        out.push_str(&rest[..i]);
        out.push_str(if digits > 0 { "userNN" } else { "user" });
        rest = &rest[i + 4 + digits..];
    }
    out.push_str(rest);
    out
}

fn print_table(setup: &Setup, results: &[ToolResult]) {
    println!();
    println!(
        "| tool | wall s | messages/s | MiB/s | CPU s (tool) | servers CPU s | peak RSS MiB | exact? (dups/missing/flags/dates) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for r in results {
        println!(
            "| {} | {:.2} | {:.0} | {:.1} | {:.2} | {:.2} | {:.0} | {} |",
            r.name,
            r.wall,
            setup.messages as f64 / r.wall,
            mib(setup.bytes) / r.wall,
            r.cpu,
            r.servers_cpu,
            r.max_rss_kib as f64 / 1024.0,
            r.exactness.cell(),
        );
    }
    println!();
    for r in results {
        let e = &r.exactness;
        if !e.missing_folders.is_empty() || e.unexpected > 0 {
            println!(
                "{}: {} messages in unexpected places; target folders missing: {:?}",
                r.name, e.unexpected, e.missing_folders
            );
        }
        for note in &r.notes {
            println!("{note}");
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse()?;
    let setup = Setup::start(&args)?;

    let (mailwave, noop_wall) = bench_mailwave(&setup, &args.mailwave_extra_toml)?;
    let mut results = vec![mailwave];
    if !args.skip_mbsync {
        results.push(bench_mbsync(&setup, args.mbsync_parallel)?);
    }

    print_table(&setup, &results);
    if let [mailwave, mbsync] = &results[..] {
        println!(
            "mailwave/mbsync wall-time ratio: {:.2}",
            mailwave.wall / mbsync.wall
        );
    }
    println!("mailwave no-op delta pass: {noop_wall:.2} s");
    println!(
        "mailwave peak RSS: {:.0} MiB",
        results[0].max_rss_kib as f64 / 1024.0
    );
    println!("logs: {}", setup.log_dir.display());
    Ok(())
}
