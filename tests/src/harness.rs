//! Running the real `mailwave` binary as an operator would: a temp dir with
//! a configuration, a mailbox CSV, a state file and a JSON report.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::DovecotServer;
use crate::verify::SourceFolderInfo;

/// The path of one of mailwave's binaries: `CARGO_BIN_EXE_<name>`, which
/// cargo sets only when it runs the integration tests of the package owning
/// the binaries (`cargo test -p mailwave-cli`), having built them from the
/// current sources first; so an end-to-end test never runs a stale build.
/// `tests/bench/graph-goodput.sh` gives its driver the same variable; the
/// other drivers measure [`bench_binary`].
pub fn binary(name: &str) -> PathBuf {
    let variable = format!("CARGO_BIN_EXE_{name}");
    let path = std::env::var_os(&variable).unwrap_or_else(|| {
        panic!(
            "{variable} is not set: the end-to-end tests run the binaries cargo builds for them \
             (`cargo test -p mailwave-cli`)"
        )
    });
    PathBuf::from(path)
}

/// The `mailwave` binary a benchmark driver measures: `MAILWAVE_BIN`, or
/// the one built beside the driver (the scripts build both in release).
pub fn bench_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("MAILWAVE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::current_exe()?.with_file_name("mailwave");
    anyhow::ensure!(
        path.is_file(),
        "{} not found: run `cargo build --release --workspace --bins` or set MAILWAVE_BIN",
        path.display()
    );
    Ok(path)
}

/// The `[source]`/`[target]` body for a Dovecot server, logging in as its
/// master user on behalf of each mailbox (`{mailbox}*{admin}`).
pub fn dovecot_endpoint(server: &DovecotServer, password_file: &Path) -> String {
    let password = server.master_credentials().1;
    std::fs::write(password_file, format!("{password}\n")).expect("write password file");
    master_endpoint(
        server,
        "127.0.0.1",
        &format!("password_file = \"{}\"", password_file.display()),
    )
}

/// [`dovecot_endpoint`] for a wave sent to the coordinator: reached as
/// `host`, the password named by `credential` (a `[credentials.NAME]` of
/// the workers' settings).
pub fn dovecot_named_endpoint(server: &DovecotServer, host: &str, credential: &str) -> String {
    master_endpoint(server, host, &format!("credential = \"{credential}\""))
}

fn master_endpoint(server: &DovecotServer, host: &str, password: &str) -> String {
    let master = server.master_credentials().0;
    format!(
        "kind = \"imap\"\nhost = \"{host}\"\nport = {}\ntls = \"none\"\nadmin_user = \"{master}\"\nimpersonation = \"template\"\nlogin_template = \"{{mailbox}}*{{admin}}\"\n{password}\ntimeout_secs = 60\n",
        server.port(),
    )
}

/// Where a source folder lands in a target with `target_separator`, by
/// mailwave's rules for servers whose special folders have the same names:
/// same levels, a target separator inside a level replaced by a look-alike.
pub fn folder_on(target_separator: char) -> impl Fn(&SourceFolderInfo) -> String {
    move |info| {
        let lookalike = match target_separator {
            '/' => '\u{2215}',
            '.' => '\u{2024}',
            _ => '_',
        };
        info.components()
            .iter()
            .map(|level| level.replace(target_separator, &lookalike.to_string()))
            .collect::<Vec<_>>()
            .join(&target_separator.to_string())
    }
}

/// One migration set up on disk.
pub struct Migration {
    dir: tempfile::TempDir,
    pub config: PathBuf,
    pub mailboxes: PathBuf,
    pub state: PathBuf,
    pub report: PathBuf,
}

/// What a run printed and reported.
#[derive(Debug)]
pub struct RunResult {
    pub success: bool,
    /// The exit code (`None`: ended by a signal). 0 every mailbox completed,
    /// 1 a mailbox failed, 3 completed with items not copied, 130 stopped.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// The JSON report (`Value::Null` when none was written).
    pub report: Value,
}

impl RunResult {
    /// The report's entry for the mailbox with this source login.
    pub fn mailbox(&self, source: &str) -> &Value {
        self.report["mailboxes"]
            .as_array()
            .and_then(|all| all.iter().find(|m| m["source"] == source))
            .unwrap_or_else(|| panic!("no mailbox {source} in the report: {self:#?}"))
    }

    /// A counter of one mailbox's pass (`items_copied`, `flags_updated`, …).
    pub fn stat(&self, source: &str, counter: &str) -> u64 {
        self.mailbox(source)["stats"][counter]
            .as_u64()
            .unwrap_or_else(|| panic!("no stats.{counter} for {source}: {self:#?}"))
    }

    /// The sum of a counter over all mailboxes.
    pub fn total(&self, counter: &str) -> u64 {
        self.report["mailboxes"].as_array().map_or(0, |all| {
            all.iter()
                .filter_map(|m| m["stats"][counter].as_u64())
                .sum()
        })
    }
}

impl Migration {
    /// Writes the configuration (`[source]` and `[target]` bodies plus any
    /// extra TOML) and the CSV into a fresh temp dir.
    pub fn new(source: &str, target: &str, extra: &str, csv: &str) -> Result<Migration> {
        let dir = tempfile::Builder::new().prefix("mailwave-run-").tempdir()?;
        let config = dir.path().join("mailwave.toml");
        std::fs::write(
            &config,
            format!("[source]\n{source}\n[target]\n{target}\n{extra}\n"),
        )?;
        let mailboxes = dir.path().join("wave.csv");
        std::fs::write(&mailboxes, csv)?;
        Ok(Migration {
            state: dir.path().join("state.db"),
            report: dir.path().join("report.json"),
            config,
            mailboxes,
            dir,
        })
    }

    /// The temp dir, for extra files (password files, Maildir targets).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self) -> Command {
        let mut command = Command::new(binary("mailwave"));
        command
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--mailboxes")
            .arg(&self.mailboxes)
            .arg("--state")
            .arg(&self.state)
            .arg("--report")
            .arg(&self.report)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn,mailwave_worker=info");
        command
    }

    /// Runs `mailwave run` to its end.
    pub fn run(&self) -> Result<RunResult> {
        let _ = std::fs::remove_file(&self.report);
        let output: Output = self.command().output().context("running mailwave")?;
        let report = match std::fs::read(&self.report) {
            Ok(bytes) => serde_json::from_slice(&bytes).context("parsing the report")?,
            Err(_) => Value::Null,
        };
        Ok(RunResult {
            success: output.status.success(),
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            report,
        })
    }

    /// Runs `mailwave run` and insists that every mailbox completed.
    pub fn run_ok(&self) -> Result<RunResult> {
        let result = self.run()?;
        if !result.success {
            bail!(
                "mailwave run failed\n--- stdout\n{}\n--- stderr\n{}",
                result.stdout,
                result.stderr
            );
        }
        Ok(result)
    }

    /// Runs `mailwave run`, killing it if it has not ended within `limit`
    /// (`None` then). `watch` sees the child's pid every 20 ms while it runs.
    pub fn run_within(
        &self,
        limit: std::time::Duration,
        mut watch: impl FnMut(u32),
    ) -> Result<Option<RunResult>> {
        let _ = std::fs::remove_file(&self.report);
        let stdout_path = self.dir.path().join("stdout.txt");
        let stderr_path = self.dir.path().join("stderr.txt");
        let mut child = self
            .command()
            .stdout(std::fs::File::create(&stdout_path)?)
            .stderr(std::fs::File::create(&stderr_path)?)
            .spawn()
            .context("running mailwave")?;
        let deadline = std::time::Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                break None;
            }
            watch(child.id());
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let Some(status) = status else {
            return Ok(None);
        };
        let report = match std::fs::read(&self.report) {
            Ok(bytes) => serde_json::from_slice(&bytes).context("parsing the report")?,
            Err(_) => Value::Null,
        };
        Ok(Some(RunResult {
            success: status.success(),
            code: status.code(),
            stdout: String::from_utf8_lossy(&std::fs::read(&stdout_path)?).into_owned(),
            stderr: String::from_utf8_lossy(&std::fs::read(&stderr_path)?).into_owned(),
            report,
        }))
    }

    /// Starts `mailwave run` in the background (to be killed).
    pub fn spawn(&self) -> Result<Child> {
        Ok(self
            .command()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?)
    }

    /// Ledger rows committed so far (read from the state store while a run
    /// may be writing it).
    pub fn ledger_rows(&self) -> u64 {
        let Ok(conn) = rusqlite::Connection::open_with_flags(
            &self.state,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        ) else {
            return 0;
        };
        conn.query_row("SELECT count(*) FROM ledger", [], |r| r.get::<_, i64>(0))
            .map_or(0, |n| n as u64)
    }
}
