//! `mailwave`: the operator command.

mod standalone;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mailwave",
    version,
    about = "Mailbox migration in waves, exactly once"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Migrates every mailbox of the CSV in this one process (embedded store
    /// and queue). Running it again performs a delta pass.
    Run(RunArgs),
    /// Distributed mode's control plane.
    #[command(subcommand)]
    Coordinator(CoordinatorCommand),
    /// Distributed mode's waves, through the coordinator's API.
    Wave(WaveArgs),
}

/// `mailwave wave …`: the options every wave command takes, and the command.
#[derive(clap::Args)]
struct WaveArgs {
    /// The coordinator's API.
    #[arg(
        long,
        global = true,
        env = "MAILWAVE_SERVER",
        default_value = mailwave_coordinator::client::DEFAULT_SERVER
    )]
    server: String,
    /// A file holding the API token (default: the MAILWAVE_TOKEN environment variable).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Trust this CA (PEM) for an https:// coordinator.
    #[arg(long, global = true)]
    ca_file: Option<PathBuf>,
    /// Send the token over plain http:// to another machine (a trusted network only).
    #[arg(long, global = true)]
    insecure_http: bool,
    #[command(subcommand)]
    command: WaveCommand,
}

#[derive(Subcommand)]
enum WaveCommand {
    /// Creates a wave from an endpoint configuration and a mailbox CSV;
    /// prints its id, its mailbox count and the rejected CSV rows.
    Create {
        /// The wave's name (unique).
        name: String,
        /// The wave's configuration (TOML: [source], [target], [migration],
        /// [folders]); secrets by name only.
        #[arg(long)]
        config: PathBuf,
        /// The mailboxes: CSV with the columns `source` and `target`.
        #[arg(long)]
        mailboxes: PathBuf,
    },
    /// created → running: every mailbox gets its first (pre-stage) pass.
    Start(WaveRef),
    /// running → paused: nothing more is published; running jobs finish.
    Pause(WaveRef),
    /// paused → running.
    Resume(WaveRef),
    /// Asks for a delta pass of every mailbox (running or paused wave).
    Sync(WaveRef),
    /// Asks for the final delta pass; the wave completes when it ends.
    Complete(WaveRef),
    /// Stops the wave for good; queued mailboxes go back to pending.
    Cancel(WaveRef),
    /// The wave's dashboard: state, progress, mailboxes per state, copied
    /// items and bytes, failures, and a per-mailbox table.
    Status {
        #[command(flatten)]
        wave: WaveRef,
        /// Redraws every 2 s until the wave is completed or cancelled.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
        /// Prints the API's JSON (GET /api/v1/waves/{id}) instead.
        #[arg(long)]
        json: bool,
        /// Rows of the per-mailbox table (failed and running first); 0: all.
        #[arg(long, default_value_t = 50)]
        rows: usize,
    },
    /// Every wave: id, name, state, mailboxes, completed, failed.
    List {
        /// Prints the API's JSON (GET /api/v1/waves) instead.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct WaveRef {
    /// The wave's id or name.
    wave: String,
}

#[derive(Subcommand)]
enum CoordinatorCommand {
    /// Applies the PostgreSQL schema migrations (under an advisory lock).
    Migrate {
        /// e.g. postgres://mailwave@db:5432/mailwave?sslmode=require
        #[arg(long, env = "MAILWAVE_DATABASE_URL")]
        database_url: String,
    },
    /// Migrates, then serves the API and runs the dispatcher and the reaper
    /// until SIGTERM or SIGINT.
    Serve {
        /// TOML with a [coordinator] table (MAILWAVE__COORDINATOR__* override it).
        #[arg(long)]
        settings: PathBuf,
    },
}

/// Arguments of `mailwave run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The migration's configuration (TOML).
    #[arg(long)]
    config: PathBuf,
    /// The wave's mailboxes: CSV with the columns `source` and `target`.
    #[arg(long)]
    mailboxes: PathBuf,
    /// The state store (SQLite file) holding checkpoints and the item ledger.
    #[arg(long, default_value = "mailwave-state.db")]
    state: PathBuf,
    /// Writes a JSON report of the run here.
    #[arg(long)]
    report: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run(args) => runtime.block_on(standalone::run(args)),
        Command::Coordinator(command) => runtime
            .block_on(coordinator(command))
            .map(|()| ExitCode::SUCCESS),
        Command::Wave(args) => runtime.block_on(wave(args)).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn coordinator(command: CoordinatorCommand) -> anyhow::Result<()> {
    use anyhow::Context;
    use mailwave_common::store::PostgresStore;
    use mailwave_coordinator::settings::CoordinatorSettings;
    match command {
        CoordinatorCommand::Migrate { database_url } => {
            let store = PostgresStore::connect(&database_url)
                .await
                .context("connecting to PostgreSQL")?;
            store.migrate().await.context("migrating the schema")?;
            eprintln!("schema up to date");
            Ok(())
        }
        CoordinatorCommand::Serve { settings } => {
            let settings = CoordinatorSettings::load(&settings)?;
            serve_coordinator(settings).await
        }
    }
}

/// `mailwave coordinator serve`: checks the settings, connects, migrates the
/// schema (under the store's advisory lock), then serves until SIGTERM or
/// SIGINT.
async fn serve_coordinator(
    settings: mailwave_coordinator::settings::CoordinatorSettings,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use mailwave_coordinator::serve;
    // A missing token or certificate is found before anything is connected.
    serve::preflight(&settings)?;
    let store =
        mailwave_cli::postgres(&settings.database_url, settings.database_ca_file.as_deref())
            .await?;
    store.migrate().await.context("migrating the schema")?;
    let queue = mailwave_cli::rabbitmq(
        &settings.amqp_url,
        &settings.queue_prefix,
        settings.amqp_ca_file.as_deref(),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("listening on {}", settings.listen))?;
    let shutdown = mailwave_common::shutdown::shutdown_signal();
    serve::run(
        settings,
        std::sync::Arc::new(store),
        queue,
        listener,
        shutdown,
    )
    .await
}

/// The API token: `--token-file`, else `MAILWAVE_TOKEN`.
fn api_token(token_file: Option<&std::path::Path>) -> anyhow::Result<String> {
    let token = match token_file {
        Some(path) => mailwave_common::config::read_secret_file(path)?,
        None => std::env::var("MAILWAVE_TOKEN").map_err(|_| {
            anyhow::anyhow!(
                "no API token: set MAILWAVE_TOKEN or give --token-file FILE (the coordinator's token)"
            )
        })?,
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        anyhow::bail!("the API token is empty");
    }
    Ok(token)
}

async fn wave(args: WaveArgs) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};

    use mailwave_coordinator::api::Command as Action;
    use mailwave_coordinator::client::{self, Client, ClientOptions};

    let token = api_token(args.token_file.as_deref())?;
    let options = ClientOptions {
        insecure_http: args.insecure_http,
        ca_file: args.ca_file,
    };
    let client = Client::with_options(&args.server, Some(token), &options)?;
    let action = |wave: WaveRef, action: Action| (wave, action);
    let (wave, action) = match args.command {
        WaveCommand::Create {
            name,
            config,
            mailboxes,
        } => {
            let config = client::read_input(&config)?;
            let mailboxes = client::read_input(&mailboxes)?;
            let created = client.create(&name, &config, &mailboxes).await?;
            print!("{}", client::render_created(&created));
            return Ok(());
        }
        WaveCommand::List { json } => {
            if json {
                println!("{:#}", client.waves_json().await?);
            } else {
                print!("{}", client::render_list(&client.list().await?));
            }
            return Ok(());
        }
        WaveCommand::Status {
            wave,
            watch,
            json,
            rows,
        } => {
            let id = client.resolve(&wave.wave).await?;
            if json {
                println!("{:#}", client.status_json(id).await?);
            } else if watch {
                let mut out = std::io::stdout();
                let clear = out.is_terminal();
                client::watch(
                    &client,
                    id,
                    rows,
                    std::time::Duration::from_secs(2),
                    clear,
                    &mut out,
                )
                .await?;
                out.flush()?;
            } else {
                let (screen, _) = client::status_screen(&client, id, rows).await?;
                print!("{screen}");
            }
            return Ok(());
        }
        WaveCommand::Start(wave) => action(wave, Action::Start),
        WaveCommand::Pause(wave) => action(wave, Action::Pause),
        WaveCommand::Resume(wave) => action(wave, Action::Resume),
        WaveCommand::Sync(wave) => action(wave, Action::Sync),
        WaveCommand::Complete(wave) => action(wave, Action::Complete),
        WaveCommand::Cancel(wave) => action(wave, Action::Cancel),
    };
    let id = client.resolve(&wave.wave).await?;
    let summary = client.command(id, action).await?;
    print!("{}", client::render_command(action, &summary));
    Ok(())
}
