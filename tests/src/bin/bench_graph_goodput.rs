//! Goodput under throttling (issue 4): the real `mailwave run` moves several
//! mailboxes from tenant A to tenant B through the Graph emulator, which
//! enforces Exchange Online's per-mailbox limits scaled from minutes to
//! seconds. Reports, per target mailbox and over all, the upload rate
//! achieved after the warm-up as a share of the allowed budget, and the
//! share of requests answered 429 after the warm-up. Prints a Markdown
//! table. Run with `tests/bench/graph-goodput.sh`.
//!
//! Scaling: Exchange allows 150 MB of uploads per 5 minutes and 10,000
//! requests per 10 minutes per app and mailbox. Divided by `--scale`
//! (default 60: minutes become seconds), that is 2.5 MB per 5 s and 167
//! requests per 10 s; "after the first minute" becomes "after the first
//! second" — the benchmark waits one whole upload window (5 s) instead, so
//! the first burst into the empty budget is not counted as goodput.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use mailwave_tests::GraphEmulator;
use mailwave_tests::graph_emulator::{
    AppSeed, EmulatorConfig, Faults, ItemSeed, Limits, MailboxStats, TenantSeed, UserSeed,
};
use mailwave_tests::harness::binary;
use mailwave_tests::tenants::{self, source_user, target_user};

#[derive(Parser)]
struct Args {
    /// Mailboxes migrated at once.
    #[arg(long, default_value_t = 4)]
    mailboxes: usize,
    /// Size of each item's payload in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    item_bytes: usize,
    /// Seconds of upload at the full budget each mailbox holds.
    #[arg(long, default_value_t = 30.0)]
    seconds_of_data: f64,
    /// Exchange's windows divided by this.
    #[arg(long, default_value_t = 60.0)]
    scale: f64,
    /// Latency the emulator adds to every request, in milliseconds.
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
}

/// Exchange Online's limits per app and mailbox.
const UPLOAD_BYTES: f64 = 150.0 * 1024.0 * 1024.0;
const UPLOAD_WINDOW_SECS: f64 = 300.0;
const REQUESTS: f64 = 10_000.0;
const REQUEST_WINDOW_SECS: f64 = 600.0;

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let upload_window = Duration::from_secs_f64(UPLOAD_WINDOW_SECS / args.scale);
    let upload_budget = (UPLOAD_BYTES / args.scale) as u64;
    let request_window = Duration::from_secs_f64(REQUEST_WINDOW_SECS / args.scale);
    let request_budget = (REQUESTS / args.scale) as u64;
    let budget_rate = upload_budget as f64 / upload_window.as_secs_f64();

    // Enough items for `seconds_of_data` at the budget rate (an import's
    // body is the base64 of the item, about 4/3 of its size).
    let upload_per_item = (args.item_bytes as f64 * 4.0 / 3.0) as u64 + 200;
    let items = ((budget_rate * args.seconds_of_data) / upload_per_item as f64).ceil() as usize;
    let mut source = TenantSeed::new(tenants::TENANT_A)
        .app(AppSeed::with_secret(tenants::APP_A, tenants::SECRET_A));
    for i in 1..=args.mailboxes {
        let mut user = UserSeed::new(&source_user(i));
        for n in 0..items {
            let mut mime = tenants::mime(i, "Inbox", n);
            mime.resize(args.item_bytes.max(mime.len()), b'x');
            user = user.item(ItemSeed::message("Inbox", &mime));
        }
        source = source.user(user);
    }
    let limits = Limits {
        requests_per_window: request_budget,
        request_window,
        upload_bytes_per_window: upload_budget,
        upload_window,
        ..Limits::default()
    };
    let emu = GraphEmulator::start(
        EmulatorConfig::default()
            .tenant(source)
            .tenant(tenants::tenant_b(args.mailboxes))
            .limits(limits)
            .faults(Faults {
                latency: Duration::from_millis(args.latency_ms),
                ..Faults::default()
            }),
    )
    .await?;
    eprintln!(
        "{} mailboxes × {items} items of {} KiB; budget {:.0} KiB per {:?} ({:.0} KiB/s), {request_budget} requests per {:?}",
        args.mailboxes,
        args.item_bytes / 1024,
        upload_budget as f64 / 1024.0,
        upload_window,
        budget_rate / 1024.0,
        request_window
    );

    let dir = tempfile::tempdir()?;
    let (source_toml, target_toml) = tenants::endpoints(&emu, "a.secret", "b.secret");
    // The target is told the (scaled) budget, as it knows Exchange's own by
    // default.
    let target_toml = target_toml.replacen(
        "[target.oauth2]",
        &format!(
            "upload_bytes_per_window = {upload_budget}\nupload_window_secs = {}\n[target.oauth2]",
            upload_window.as_secs().max(1)
        ),
        1,
    );
    std::fs::write(dir.path().join("a.secret"), tenants::SECRET_A)?;
    std::fs::write(dir.path().join("b.secret"), tenants::SECRET_B)?;
    std::fs::write(
        dir.path().join("mailwave.toml"),
        format!(
            "[source]\n{source_toml}\n[target]\n{target_toml}\n[migration]\n\
             max_concurrent_mailboxes = {}\nmax_attempts = 10\n",
            args.mailboxes
        ),
    )?;
    std::fs::write(dir.path().join("wave.csv"), tenants::csv(args.mailboxes))?;
    let started = Instant::now();
    let mailwave = binary("mailwave");
    let run = tokio::task::spawn_blocking({
        let dir: PathBuf = dir.path().to_owned();
        move || {
            Command::new(mailwave)
                .args([
                    "run",
                    "--config",
                    "mailwave.toml",
                    "--mailboxes",
                    "wave.csv",
                ])
                .args(["--state", "state.db", "--report", "report.json"])
                .current_dir(dir)
                .env("RUST_LOG", "warn")
                .output()
        }
    })
    .await??;
    let elapsed = started.elapsed();
    if !run.status.success() {
        bail!(
            "mailwave run failed: {}\n{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
    }
    tenants::assert_exact(&emu, args.mailboxes);

    println!(
        "| target mailbox | uploaded after warm-up | seconds | share of budget | requests after warm-up | answered 429 |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let mut total = Window::default();
    for i in 1..=args.mailboxes {
        let stats = emu.stats(&target_user(i)).context("target stats")?;
        let window = Window::after(&stats, upload_window);
        println!(
            "| {} | {:.1} MiB | {:.1} | {:.1}% | {} | {} ({:.2}%) |",
            target_user(i),
            window.bytes as f64 / 1048576.0,
            window.seconds,
            100.0 * window.rate() / budget_rate,
            window.requests,
            window.throttled,
            window.throttled_share()
        );
        total.add(&window);
    }
    let goodput = total.bytes as f64 / total.seconds / budget_rate;
    let mut warm_up_throttles = std::collections::BTreeMap::new();
    for i in 1..=args.mailboxes {
        for (reason, count) in emu.stats(&target_user(i))?.throttled {
            *warm_up_throttles.entry(format!("{reason:?}")).or_insert(0) += count;
        }
    }
    eprintln!("429s over the whole run, by reason: {warm_up_throttles:?}");
    println!(
        "| **all** | {:.1} MiB | {:.1} | **{:.1}%** (target ≥ 90%) | {} | **{} ({:.2}%)** (target < 2%) |",
        total.bytes as f64 / 1048576.0,
        total.seconds,
        100.0 * goodput,
        total.requests,
        total.throttled,
        total.throttled_share()
    );
    println!(
        "\nwhole run: {:.1} s for {} mailboxes of {:.1} MiB each; every item exact",
        elapsed.as_secs_f64(),
        args.mailboxes,
        (items * args.item_bytes) as f64 / 1048576.0
    );
    Ok(())
}

/// What one target mailbox saw from the end of the warm-up to its last
/// upload.
#[derive(Default)]
struct Window {
    bytes: u64,
    seconds: f64,
    requests: u64,
    throttled: u64,
}

impl Window {
    /// The warm-up is the first upload window after the mailbox's first
    /// request.
    fn after(stats: &MailboxStats, warm_up: Duration) -> Window {
        let Some(first) = stats.events.first() else {
            return Window::default();
        };
        let from = first.at + warm_up;
        let last_upload = stats
            .events
            .iter()
            .filter(|e| e.uploaded_bytes > 0)
            .map(|e| e.at)
            .max()
            .unwrap_or(from);
        let counted = stats.events.iter().filter(|e| e.at >= from);
        let mut window = Window {
            seconds: last_upload.saturating_sub(from).as_secs_f64(),
            ..Window::default()
        };
        for event in counted {
            window.requests += 1;
            window.bytes += event.uploaded_bytes;
            window.throttled += u64::from(event.status == 429);
        }
        window
    }

    fn rate(&self) -> f64 {
        self.bytes as f64 / self.seconds.max(f64::EPSILON)
    }

    fn throttled_share(&self) -> f64 {
        100.0 * self.throttled as f64 / self.requests.max(1) as f64
    }

    fn add(&mut self, other: &Window) {
        self.bytes += other.bytes;
        self.seconds += other.seconds;
        self.requests += other.requests;
        self.throttled += other.throttled;
    }
}
