//! `mailwave-worker`: the data-plane process. `serve` is the worker of
//! distributed mode (`mailwave_worker::distributed`) on PostgreSQL and
//! RabbitMQ; `check` is the preflight check that migration engineers run
//! before a wave.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mailwave_common::config::{Config, EndpointConfig};
use mailwave_common::model::{MailboxRecord, MailboxState, PassStats};
use mailwave_worker::connector::Shared;
use mailwave_worker::connector::graph::preflight::{self, Direction, Outcome, Probe};
use mailwave_worker::distributed::{self, WorkerSettings};
use mailwave_worker::engine::MailboxConnector;
use mailwave_worker::job::EndpointConnector;

#[derive(Parser)]
#[command(
    name = "mailwave-worker",
    version,
    about = "mailwave data-plane worker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Takes jobs from RabbitMQ and copies mailboxes, state in PostgreSQL,
    /// until SIGTERM or SIGINT (graceful: interrupted mailboxes are handed back).
    Serve {
        /// TOML with a [worker] table (MAILWAVE__WORKER__* override it).
        #[arg(long)]
        settings: PathBuf,
    },
    /// Logs in to a mailbox's source and target and lists its folders:
    /// proves credentials, TLS and impersonation before a wave starts. A
    /// Graph endpoint is probed instead with each kind of request the
    /// migration makes there, naming every application permission missing
    /// (exit code 1).
    Check {
        #[arg(long)]
        config: PathBuf,
        /// The mailbox's source login.
        #[arg(long)]
        source: String,
        /// The mailbox's target login (defaults to the source login).
        #[arg(long)]
        target: Option<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,mailwave_worker::consumer=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match Cli::parse().command {
        Command::Serve { settings } => serve(&settings).await,
        Command::Check {
            config,
            source,
            target,
        } => check(&config, source, target).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Connects to PostgreSQL and RabbitMQ and serves jobs until SIGTERM/SIGINT.
async fn serve(settings: &std::path::Path) -> anyhow::Result<()> {
    let settings = WorkerSettings::load(settings)?;
    let store =
        mailwave_cli::store(&settings.database_url, settings.database_ca_file.as_deref()).await?;
    let queue = mailwave_cli::rabbitmq(
        &settings.amqp_url,
        &settings.queue_prefix,
        settings.amqp_ca_file.as_deref(),
    )
    .await?;
    let shutdown = mailwave_common::shutdown::shutdown_signal();
    distributed::run(settings, store, queue, shutdown).await
}

async fn check(
    config: &std::path::Path,
    source: String,
    target: Option<String>,
) -> anyhow::Result<()> {
    let config = std::sync::Arc::new(Config::load(config)?);
    let mailbox = MailboxRecord {
        id: 0,
        wave: 0,
        target: target.unwrap_or_else(|| source.clone()),
        source,
        state: MailboxState::Pending,
        pass: 0,
        attempts: 0,
        last_error: None,
        stats: PassStats::default(),
    };
    let waits = mailwave_worker::connector::throttle::WaitLimits::new(
        &config.migration,
        tokio_util::sync::CancellationToken::new(),
    );
    let shared = std::sync::Arc::<Shared>::default();
    let connector = EndpointConnector::new(
        config.clone(),
        mailbox.clone(),
        Default::default(),
        waits.clone(),
        shared.clone(),
    );
    let (source_direction, target_direction) = graph_directions(&config);
    let mut problems = Vec::new();
    match (&config.source, source_direction) {
        (EndpointConfig::Graph(endpoint), Some(direction)) => {
            let probes = preflight::probe(endpoint, &mailbox.source, direction, &waits, &shared);
            problems.extend(report_probes("source", &mailbox.source, probes.await));
        }
        _ => {
            let mut source = connector
                .source()
                .await
                .map_err(|e| anyhow::anyhow!("source: {e}"))?;
            let folders = source
                .folders()
                .await
                .map_err(|e| anyhow::anyhow!("source: {e}"))?;
            println!("source {}: {} folders", mailbox.source, folders.len());
            for folder in &folders {
                let role = folder.special.map(|r| format!("{r:?}")).unwrap_or_default();
                println!("  {} {role}", folder.path);
            }
        }
    }
    match (&config.target, target_direction) {
        (EndpointConfig::Graph(endpoint), Some(direction)) => {
            let probes = preflight::probe(endpoint, &mailbox.target, direction, &waits, &shared);
            problems.extend(report_probes("target", &mailbox.target, probes.await));
        }
        _ => {
            let mut target = connector
                .target()
                .await
                .map_err(|e| anyhow::anyhow!("target: {e}"))?;
            let folders = target
                .folders()
                .await
                .map_err(|e| anyhow::anyhow!("target: {e}"))?;
            println!("target {}: {} folders", mailbox.target, folders.len());
        }
    }
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("; "));
    }
    Ok(())
}

/// What each Graph endpoint of the configuration is to the migration
/// (source, target), as `job::EndpointConnector` chooses it.
fn graph_directions(config: &Config) -> (Option<Direction>, Option<Direction>) {
    let target_is_graph = matches!(config.target, EndpointConfig::Graph(_));
    let source = match config.source {
        EndpointConfig::Graph(_) if target_is_graph => Some(Direction::ExportSource),
        EndpointConfig::Graph(_) => Some(Direction::MimeSource),
        _ => None,
    };
    (source, target_is_graph.then_some(Direction::ImportTarget))
}

/// Prints each probe of one side; hands back what keeps the migration
/// from running: missing permissions, failed probes.
fn report_probes(side: &str, login: &str, probes: Vec<Probe>) -> Vec<String> {
    println!("{side} {login} (Graph): permissions");
    let mut problems = Vec::new();
    for probe in probes {
        let permissions = probe.permissions.join(" or ");
        let (status, detail) = match &probe.outcome {
            Outcome::Allowed => ("ok", String::new()),
            Outcome::Missing(reason) => {
                problems.push(format!(
                    "{side} {login}: missing application permission {permissions} (for {})",
                    probe.operation
                ));
                ("MISSING", format!(": {reason}"))
            }
            Outcome::Failed(reason) => {
                problems.push(format!(
                    "{side} {login}: {} failed: {reason}",
                    probe.operation
                ));
                ("FAILED", format!(": {reason}"))
            }
            Outcome::Untried(needs) => ("untried", format!(" (needs {needs})")),
        };
        println!(
            "  {status:<8} {:<48} {permissions}{detail}",
            probe.operation
        );
    }
    problems
}
