//! `graph-emulator`: the Microsoft Graph emulator of `mailwave-tests` as a
//! standalone server, for manual runs and benchmarks.
//!
//! ```text
//! graph-emulator --listen 127.0.0.1:8080 --seed tenants.json --latency-ms 50
//! ```
//!
//! The seed file is the JSON of `EmulatorConfig` (camelCase): `tenants`
//! with `apps` and `users` (folders, items), and optionally `limits`,
//! `faults`, `tokenLifetimeSecs`, `importSessionLifetimeSecs`. Flags
//! override the file. Once listening it prints
//! `graph-emulator listening on http://ADDR` on stdout; the test API is
//! under `/_emulator/`. It stops on SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use mailwave_tests::graph_emulator::{EmulatorConfig, GraphEmulator};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Parser)]
#[command(
    name = "graph-emulator",
    about = "Emulates Microsoft Graph's mailbox import/export and mail APIs"
)]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// JSON seed file: tenants, apps, users, items, limits, faults.
    #[arg(long)]
    seed: Option<PathBuf>,
    /// Concurrent requests per app and mailbox.
    #[arg(long)]
    concurrent_requests: Option<usize>,
    /// Requests per app and mailbox per request window.
    #[arg(long)]
    requests_per_window: Option<u64>,
    #[arg(long)]
    request_window_secs: Option<f64>,
    /// Upload bytes per app and mailbox per upload window.
    #[arg(long)]
    upload_bytes_per_window: Option<u64>,
    #[arg(long)]
    upload_window_secs: Option<f64>,
    /// Requests inside a Retry-After window restart it.
    #[arg(long)]
    retry_after_extends: bool,
    /// Minimum time each Graph request takes.
    #[arg(long)]
    latency_ms: Option<u64>,
    /// Seed of the fault RNG; giving any fault rate turns faults on.
    #[arg(long)]
    fault_seed: Option<u64>,
    /// Share of requests answered 503.
    #[arg(long)]
    server_busy_rate: Option<f64>,
    /// Share of the 503s with an empty body.
    #[arg(long)]
    empty_body_share: Option<f64>,
    /// Share of requests answered 504.
    #[arg(long)]
    gateway_timeout_rate: Option<f64>,
    #[arg(long)]
    token_lifetime_secs: Option<u64>,
    #[arg(long)]
    import_session_lifetime_secs: Option<u64>,
}

impl Args {
    fn config(&self) -> Result<EmulatorConfig> {
        let mut config = match &self.seed {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?
            }
            None => EmulatorConfig::default(),
        };
        config.listen = self.listen;
        let limits = &mut config.limits;
        limits.concurrent_requests = self
            .concurrent_requests
            .unwrap_or(limits.concurrent_requests);
        limits.requests_per_window = self
            .requests_per_window
            .unwrap_or(limits.requests_per_window);
        if let Some(secs) = self.request_window_secs {
            limits.request_window = seconds("--request-window-secs", secs)?;
        }
        limits.upload_bytes_per_window = self
            .upload_bytes_per_window
            .unwrap_or(limits.upload_bytes_per_window);
        if let Some(secs) = self.upload_window_secs {
            limits.upload_window = seconds("--upload-window-secs", secs)?;
        }
        limits.retry_after_extends |= self.retry_after_extends;
        let faults = &mut config.faults;
        if let Some(ms) = self.latency_ms {
            faults.latency = Duration::from_millis(ms);
        }
        faults.seed = self.fault_seed.unwrap_or(faults.seed);
        let rates = [self.server_busy_rate, self.gateway_timeout_rate];
        faults.enabled |= rates.iter().any(Option::is_some);
        faults.server_busy_rate = self.server_busy_rate.unwrap_or(faults.server_busy_rate);
        faults.empty_body_share = self.empty_body_share.unwrap_or(faults.empty_body_share);
        faults.gateway_timeout_rate = self
            .gateway_timeout_rate
            .unwrap_or(faults.gateway_timeout_rate);
        if let Some(secs) = self.token_lifetime_secs {
            config.token_lifetime = Duration::from_secs(secs);
        }
        if let Some(secs) = self.import_session_lifetime_secs {
            config.import_session_lifetime = Duration::from_secs(secs);
        }
        Ok(config)
    }
}

fn seconds(flag: &str, secs: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(secs).with_context(|| format!("{flag} {secs}"))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let emulator = GraphEmulator::start(args.config()?).await?;
    println!("graph-emulator listening on {}", emulator.base_url());
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    drop(emulator);
    Ok(())
}
