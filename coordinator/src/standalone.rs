//! `mailwave run`: the coordinator and a pool of workers in one process,
//! wired to the embedded SQLite store and the in-process queue. The same
//! planning, job and engine code as distributed mode, not a second path.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use mailwave_common::config::Config;
use mailwave_common::mailboxes::{MailboxSecrets, parse_mailbox_csv};
use mailwave_common::model::{MailboxId, MailboxRecord, MailboxState};
use mailwave_common::queue::MemoryQueue;
use mailwave_common::store::{SqliteStore, Store};
use mailwave_coordinator::report::{WaveReport, human_bytes};
use mailwave_coordinator::wave::{pass_records, plan_pass};
use mailwave_worker::engine::ProgressSink;
use mailwave_worker::job::{Credentials, WorkerContext};
use tokio_util::sync::CancellationToken;

use crate::RunArgs;

/// Per-user passwords from the CSV, held in memory for this run only.
struct CsvCredentials(HashMap<String, MailboxSecrets>);

impl Credentials for CsvCredentials {
    fn secrets(&self, mailbox: &MailboxRecord) -> MailboxSecrets {
        self.0.get(&mailbox.source).cloned().unwrap_or_default()
    }
}

/// Items and bytes committed so far, for the progress display.
#[derive(Default)]
struct Counters {
    items: AtomicU64,
    bytes: AtomicU64,
}

impl ProgressSink for Counters {
    fn copied(&self, _: MailboxId, items: u64, bytes: u64) {
        self.items.fetch_add(items, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Takes the exclusive lock of `STATE.lock` beside the state file, or says
/// why not: another `mailwave run` holds it.
fn lock_state_file(state: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let mut name = state.as_os_str().to_owned();
    name.push(".lock");
    let path = std::path::PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another mailwave run is using the state file {} (its lock {} is held); \
             wait for it to finish, or give this run its own --state",
            state.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("locking {}", path.display()))
        }
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = Arc::new(Config::load(&args.config)?);
    let csv = std::fs::File::open(&args.mailboxes)
        .with_context(|| format!("opening {}", args.mailboxes.display()))?;
    let list = parse_mailbox_csv(csv)?;
    for error in &list.errors {
        eprintln!("{}: {error}", args.mailboxes.display());
    }
    let wave_name = config.migration.wave.clone().unwrap_or_else(|| {
        args.mailboxes
            .file_stem()
            .map_or_else(|| "wave".into(), |s| s.to_string_lossy().into_owned())
    });
    // One run at a time per state file: a second one would copy everything
    // the first is copying. Held until this function returns.
    let _lock = lock_state_file(&args.state)?;
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&args.state)
            .with_context(|| format!("opening the state store {}", args.state.display()))?,
    );
    let queue = Arc::new(MemoryQueue::new());
    let specs: Vec<_> = list.rows.iter().map(|r| r.spec.clone()).collect();
    let planned = plan_pass(store.as_ref(), queue.as_ref(), &wave_name, &specs).await?;
    queue.close();

    let credentials = CsvCredentials(
        list.rows
            .iter()
            .map(|r| (r.spec.source.clone(), r.secrets.clone()))
            .collect(),
    );
    let counters = Arc::new(Counters::default());
    let ctx = Arc::new(WorkerContext::new(
        store.clone(),
        Arc::clone(&config),
        counters.clone(),
        Arc::new(credentials),
    ));
    let shared = Arc::clone(&ctx.shared);
    // Ctrl-C stops every mailbox at its next checkpoint; running the same
    // command again resumes from there.
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: stopping at the next checkpoint…");
                stop.cancel();
            }
        }
    });
    let workers = tokio::spawn(mailwave_worker::pool::serve(
        queue,
        ctx,
        config.migration.max_concurrent_mailboxes,
        stop.clone(),
    ));

    let bar = ProgressBar::new(planned.jobs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} mailboxes  {msg}",
        )
        .expect("a valid template"),
    );
    let records = loop {
        let records = pass_records(store.as_ref(), &planned).await?;
        let count = |state| records.iter().filter(|r| r.state == state).count();
        let done = records.iter().filter(|r| r.state.is_terminal()).count();
        bar.set_position(done as u64);
        bar.set_message(format!(
            "running {}, failed {} | {} items, {}",
            count(MailboxState::Running),
            count(MailboxState::Failed),
            counters.items.load(Ordering::Relaxed),
            human_bytes(counters.bytes.load(Ordering::Relaxed))
        ));
        if done == records.len() || (stop.is_cancelled() && workers.is_finished()) {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    bar.finish_and_clear();
    workers.await.context("worker pool")??;

    if stop.is_cancelled() {
        eprintln!(
            "interrupted: progress is checkpointed in {}; run the same command again to resume",
            args.state.display()
        );
        return Ok(ExitCode::from(130));
    }
    let report = WaveReport::gather(store.as_ref(), &wave_name, records, &list.errors).await?;
    print!("{}", report.summary());
    // What each server's scheduler saw: requests, throttles, retries, waits.
    let endpoints = shared.schedulers.counters();
    for (endpoint, c) in &endpoints {
        println!(
            "{endpoint}: {} requests, {} throttled, retries {:?}, {:.1} s waiting",
            c.requests, c.throttle_events, c.retries, c.seconds_waiting
        );
    }
    if let Some(path) = &args.report {
        let mut json = serde_json::to_value(&report)?;
        json["endpoints"] = serde_json::to_value(&endpoints)?;
        let json = serde_json::to_vec_pretty(&json)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::from(report.outcome().exit_code()))
}
