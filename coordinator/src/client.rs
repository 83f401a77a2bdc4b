//! The operator's side of distributed mode: an HTTP client of the
//! coordinator API ([`crate::api`]) and what `mailwave wave …` prints.
//!
//! [`Client`] speaks the API (bearer token, JSON, errors as
//! [`ClientError`]); the `render_*` functions turn its answers into the
//! text the commands print, so that tests can check both without a
//! terminal. A wave is named on the command line by id or by name
//! ([`Client::resolve`]).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use mailwave_common::model::{MailboxRecord, MailboxState, WaveId, WaveState};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::{Command, CreateWave, Created, WaveStatus, WaveSummary};
use crate::report::human_bytes;

/// The coordinator's address when none is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// How long one API request may take (a 100,000-mailbox CSV included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a command failed. Its `Display` is what the operator reads after
/// `error: `.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with an error: `{"error": {"code", "message"}}`.
    #[error("{code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// No connection to the coordinator (refused, unresolvable, timed out).
    #[error(
        "cannot reach the coordinator at {server} ({reason}); is it running? (--server or MAILWAVE_SERVER)"
    )]
    Unreachable { server: String, reason: String },
    /// The coordinator answered something that is not the API's JSON.
    #[error("unexpected answer from the coordinator at {server}: {reason}")]
    Protocol { server: String, reason: String },
    /// Bad input on our side (server URL, files).
    #[error("{0}")]
    Input(String),
}

impl ClientError {
    /// The API's error code, if the API answered with an error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

pub type ClientResult<T> = Result<T, ClientError>;

/// A wave in `mailwave wave list`: its summary and its status counts.
#[derive(Debug)]
pub struct WaveRow {
    pub summary: WaveSummary,
    pub mailboxes: u64,
    pub completed: u64,
    pub failed: u64,
}

/// An HTTP client of one coordinator.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Without a trailing slash, e.g. `http://127.0.0.1:8080`.
    server: String,
    token: Option<String>,
}

/// How a [`Client`] reaches its coordinator.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Send the token over plain `http://` to a host that is not this
    /// machine (where anyone on the path can read it).
    pub insecure_http: bool,
    /// Extra trusted roots (PEM) for an `https://` coordinator, e.g. a
    /// private CA.
    pub ca_file: Option<PathBuf>,
}

impl Client {
    /// A client of the coordinator at `server` (`http://` or `https://`),
    /// sending `token` as the bearer token.
    pub fn new(server: &str, token: Option<String>) -> ClientResult<Client> {
        Client::with_options(server, token, &ClientOptions::default())
    }

    /// [`Client::new`] with `options`. A token is never sent over plain
    /// `http://` to another machine unless `options.insecure_http`.
    pub fn with_options(
        server: &str,
        token: Option<String>,
        options: &ClientOptions,
    ) -> ClientResult<Client> {
        let server = server.trim().trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&server)
            .map_err(|e| ClientError::Input(format!("--server {server:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ClientError::Input(format!(
                "--server {server:?}: the URL must start with http:// or https://"
            )));
        }
        let loopback = url
            .host_str()
            .is_some_and(mailwave_common::config::is_loopback_host);
        if url.scheme() == "http" && token.is_some() && !loopback && !options.insecure_http {
            return Err(ClientError::Input(format!(
                "--server {server:?}: refusing to send the API token over plain http:// to another \
                 machine; use https:// (the coordinator's tls_certificate_file and tls_key_file), \
                 or --insecure-http if the network is trusted"
            )));
        }
        let mut builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("mailwave/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &options.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| ClientError::Input(format!("--ca-file {}: {e}", path.display())))?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| ClientError::Input(format!("--ca-file {}: {e}", path.display())))?;
            if roots.is_empty() {
                return Err(ClientError::Input(format!(
                    "--ca-file {}: no PEM certificate in it",
                    path.display()
                )));
            }
            for root in roots {
                builder = builder.add_root_certificate(root);
            }
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Input(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Client {
            http,
            server,
            token: token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()),
        })
    }

    /// The coordinator's address as given (without a trailing slash).
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sends one request under `/api/v1` and returns the answer's JSON;
    /// an API error becomes [`ClientError::Api`].
    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> ClientResult<Value> {
        let url = format!("{}/api/v1{path}", self.server);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.transport(e))?;
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        if status.is_success() {
            return parsed.ok_or_else(|| ClientError::Protocol {
                server: self.server.clone(),
                reason: format!("HTTP {status} without a JSON body"),
            });
        }
        Err(api_error(status, parsed.as_ref(), &bytes))
    }

    /// A transport failure as the operator should read it.
    fn transport(&self, error: reqwest::Error) -> ClientError {
        let reason = root_cause(&error);
        if error.is_connect() || error.is_timeout() {
            ClientError::Unreachable {
                server: self.server.clone(),
                reason: if error.is_timeout() {
                    format!("timed out: {reason}")
                } else {
                    reason
                },
            }
        } else {
            ClientError::Protocol {
                server: self.server.clone(),
                reason,
            }
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> ClientResult<T> {
        let value = self.request(reqwest::Method::GET, path, None).await?;
        self.decode(value)
    }

    fn decode<T: DeserializeOwned>(&self, value: Value) -> ClientResult<T> {
        serde_json::from_value(value).map_err(|e| ClientError::Protocol {
            server: self.server.clone(),
            reason: format!("the answer does not have the expected shape: {e}"),
        })
    }

    /// `GET /waves` as the API answers it.
    pub async fn waves_json(&self) -> ClientResult<Value> {
        self.request(reqwest::Method::GET, "/waves", None).await
    }

    /// `GET /waves`.
    pub async fn waves(&self) -> ClientResult<Vec<WaveSummary>> {
        self.get("/waves").await
    }

    /// `GET /waves/{id}` as the API answers it.
    pub async fn status_json(&self, wave: WaveId) -> ClientResult<Value> {
        self.request(reqwest::Method::GET, &format!("/waves/{wave}"), None)
            .await
    }

    /// `GET /waves/{id}`.
    pub async fn status(&self, wave: WaveId) -> ClientResult<WaveStatus> {
        self.get(&format!("/waves/{wave}")).await
    }

    /// `GET /waves/{id}/mailboxes`.
    pub async fn mailboxes(&self, wave: WaveId) -> ClientResult<Vec<MailboxRecord>> {
        self.get(&format!("/waves/{wave}/mailboxes")).await
    }

    /// `POST /waves`.
    pub async fn create(
        &self,
        name: &str,
        config_toml: &str,
        mailboxes_csv: &str,
    ) -> ClientResult<Created> {
        let body = serde_json::to_value(CreateWave {
            name: name.to_owned(),
            config_toml: config_toml.to_owned(),
            mailboxes_csv: mailboxes_csv.to_owned(),
        })
        .map_err(|e| ClientError::Input(e.to_string()))?;
        let value = self
            .request(reqwest::Method::POST, "/waves", Some(&body))
            .await?;
        self.decode(value)
    }

    /// `POST /waves/{id}/{command}`: the wave after the command.
    pub async fn command(&self, wave: WaveId, command: Command) -> ClientResult<WaveSummary> {
        let path = format!("/waves/{wave}/{}", command.as_str());
        let value = self.request(reqwest::Method::POST, &path, None).await?;
        self.decode(value)
    }

    /// The id of the wave the operator named: a wave whose id is `wave`
    /// (when it is a number), else the wave called `wave`.
    pub async fn resolve(&self, wave: &str) -> ClientResult<WaveId> {
        let waves = self.waves().await?;
        let wanted = wave.trim();
        if let Ok(id) = wanted.parse::<WaveId>()
            && waves.iter().any(|w| w.id == id)
        {
            return Ok(id);
        }
        if let Some(found) = waves.iter().find(|w| w.name == wanted) {
            return Ok(found.id);
        }
        Err(ClientError::Api {
            status: StatusCode::NOT_FOUND.as_u16(),
            code: "not_found".into(),
            message: format!(
                "no wave with the id or name {wanted:?} ({} waves known; see `mailwave wave list`)",
                waves.len()
            ),
        })
    }

    /// Every wave with its counts (one status request per wave).
    pub async fn list(&self) -> ClientResult<Vec<WaveRow>> {
        let mut rows = Vec::new();
        for summary in self.waves().await? {
            let status = match self.status(summary.id).await {
                Ok(status) => status,
                // Deleted between the two requests: not listed.
                Err(ClientError::Api { status: 404, .. }) => continue,
                Err(e) => return Err(e),
            };
            rows.push(WaveRow {
                mailboxes: status.mailboxes,
                completed: status.counts.completed,
                failed: status.counts.failed,
                summary,
            });
        }
        Ok(rows)
    }
}

/// An API error from the answer's status and body.
fn api_error(status: StatusCode, body: Option<&Value>, raw: &[u8]) -> ClientError {
    let error = body.and_then(|b| b.get("error"));
    let code = error.and_then(|e| e.get("code")).and_then(Value::as_str);
    let message = error.and_then(|e| e.get("message")).and_then(Value::as_str);
    match (code, message) {
        (Some(code), Some(message)) => ClientError::Api {
            status: status.as_u16(),
            code: code.to_owned(),
            message: message.to_owned(),
        },
        // Not the API (a proxy, another service on the port).
        _ => {
            let text = String::from_utf8_lossy(raw);
            let text: String = text.trim().chars().take(200).collect();
            ClientError::Api {
                status: status.as_u16(),
                code: format!("http_{}", status.as_u16()),
                message: if text.is_empty() {
                    status.to_string()
                } else {
                    format!("{status}: {text}")
                },
            }
        }
    }
}

/// The innermost cause of an error, e.g. "Connection refused (os error 111)".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// Reads a file the operator named, with its path in the error.
pub fn read_input(path: &std::path::Path) -> ClientResult<String> {
    std::fs::read_to_string(path)
        .map_err(|e| ClientError::Input(format!("reading {}: {e}", path.display())))
}

/// What `wave create` prints.
pub fn render_created(created: &Created) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "wave {} {:?} created ({}): {} mailboxes",
        created.id,
        created.name,
        created.state.as_str(),
        created.mailboxes
    );
    if !created.rejected_rows.is_empty() {
        let _ = writeln!(
            out,
            "{} CSV rows rejected (not in the wave):",
            created.rejected_rows.len()
        );
        for row in &created.rejected_rows {
            let _ = writeln!(out, "  line {}: {}", row.line, row.reason);
        }
    }
    out
}

/// What a command on a wave prints.
pub fn render_command(command: Command, wave: &WaveSummary) -> String {
    format!(
        "{} wave {} {:?}: now {}{}\n",
        command.as_str(),
        wave.id,
        wave.name,
        wave.state.as_str(),
        if wave.final_pass && wave.state == WaveState::Running {
            " (final pass)"
        } else {
            ""
        }
    )
}

/// What `wave list` prints: one line per wave.
pub fn render_list(rows: &[WaveRow]) -> String {
    if rows.is_empty() {
        return "no waves\n".into();
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.summary.id.to_string(),
                r.summary.name.clone(),
                state_label(r.summary.state, r.summary.final_pass),
                r.mailboxes.to_string(),
                r.completed.to_string(),
                r.failed.to_string(),
            ]
        })
        .collect();
    render_table(
        &["ID", "NAME", "STATE", "MAILBOXES", "COMPLETED", "FAILED"],
        &[false, false, false, true, true, true],
        &table,
    )
}

fn state_label(state: WaveState, final_pass: bool) -> String {
    if final_pass && state == WaveState::Running {
        "running (final pass)".into()
    } else {
        state.as_str().into()
    }
}

/// A text progress bar of `width` cells: `[#####.....]`.
pub fn progress_bar(done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 {
        0
    } else {
        ((done.min(total) as u128 * width as u128) / total as u128) as usize
    };
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

/// Order of the per-mailbox table: what needs attention first.
fn attention(state: MailboxState) -> u8 {
    match state {
        MailboxState::Failed => 0,
        MailboxState::CompletedWithErrors => 1,
        MailboxState::Running => 2,
        MailboxState::Queued => 3,
        MailboxState::Pending => 4,
        MailboxState::Completed => 5,
    }
}

/// What `wave status` prints: the dashboard. `max_rows` limits the
/// per-mailbox table (failed, then running, queued, pending, completed;
/// `0`: every mailbox).
pub fn render_status(status: &WaveStatus, mailboxes: &[MailboxRecord], max_rows: usize) -> String {
    let mut out = String::new();
    let wave = &status.wave;
    let counts = &status.counts;
    let total = status.mailboxes;
    let _ = writeln!(out, "wave {} {:?}", wave.id, wave.name);
    let _ = match (&status.config_error, status.max_concurrent_mailboxes) {
        (Some(error), _) => writeln!(
            out,
            "state      {}   (nothing dispatched: {error})",
            state_label(wave.state, wave.final_pass)
        ),
        (None, cap) => writeln!(
            out,
            "state      {}   (at most {} mailboxes at once)",
            state_label(wave.state, wave.final_pass),
            cap.unwrap_or_default()
        ),
    };
    let percent = if total == 0 {
        0.0
    } else {
        counts.completed as f64 * 100.0 / total as f64
    };
    let _ = writeln!(
        out,
        "progress   {} {}/{} mailboxes completed ({percent:.1}%)",
        progress_bar(counts.completed, total, 40),
        counts.completed,
        total
    );
    let _ = writeln!(
        out,
        "mailboxes  pending {}  queued {}  running {}  completed {}  with errors {}  failed {}",
        counts.pending,
        counts.queued,
        counts.running,
        counts.completed,
        counts.completed_with_errors,
        counts.failed
    );
    let _ = writeln!(
        out,
        "copied     {} items, {}   skipped items {}",
        counts.items_copied,
        human_bytes(counts.bytes_copied),
        counts.items_skipped
    );
    if !status.errors.is_empty() {
        let _ = writeln!(out, "\nfailures ({}):", counts.failed);
        for error in &status.errors {
            let _ = writeln!(
                out,
                "  {} → {} (pass {}): {}",
                error.source, error.target, error.pass, error.error
            );
        }
        if counts.failed > status.errors.len() as u64 {
            let _ = writeln!(
                out,
                "  … and {} more",
                counts.failed - status.errors.len() as u64
            );
        }
    }
    let mut sorted: Vec<&MailboxRecord> = mailboxes.iter().collect();
    sorted.sort_by_key(|m| (attention(m.state), m.id));
    let shown = if max_rows == 0 {
        sorted.len()
    } else {
        max_rows.min(sorted.len())
    };
    let table: Vec<Vec<String>> = sorted[..shown]
        .iter()
        .map(|m| {
            vec![
                format!("{} → {}", m.source, m.target),
                m.state.as_str().to_owned(),
                m.pass.to_string(),
                m.attempts.to_string(),
                m.stats.items_copied.to_string(),
                human_bytes(m.stats.bytes_copied),
                m.last_error
                    .as_deref()
                    .map(|e| one_line(e, 80))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let _ = writeln!(out);
    if table.is_empty() {
        let _ = writeln!(out, "no mailboxes");
    } else {
        out.push_str(&render_table(
            &[
                "MAILBOX",
                "STATE",
                "PASS",
                "ATTEMPTS",
                "COPIED",
                "BYTES",
                "LAST ERROR",
            ],
            &[false, false, true, true, true, true, false],
            &table,
        ));
    }
    if shown < sorted.len() {
        let _ = writeln!(
            out,
            "… and {} more mailboxes (--rows 0 shows all)",
            sorted.len() - shown
        );
    }
    out
}

/// `text` on one line, at most `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// Columns padded to their widest cell; `right[i]`: column `i` is aligned
/// right (numbers). The last column is not padded.
fn render_table(header: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = widths[i] - cell.chars().count();
            let last = i + 1 == row.len();
            if right[i] {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if !last {
                    line.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One status screen of `wave` (the dashboard) and whether the wave is
/// over (completed or cancelled).
pub async fn status_screen(
    client: &Client,
    wave: WaveId,
    max_rows: usize,
) -> ClientResult<(String, bool)> {
    let status = client.status(wave).await?;
    let mailboxes = client.mailboxes(wave).await?;
    let over = matches!(
        status.wave.state,
        WaveState::Completed | WaveState::Cancelled
    );
    Ok((render_status(&status, &mailboxes, max_rows), over))
}

/// `wave status --watch`: draws the dashboard every `interval` until the
/// wave is completed or cancelled; `clear` redraws the terminal in place
/// (otherwise screens follow each other, separated by a blank line).
pub async fn watch(
    client: &Client,
    wave: WaveId,
    max_rows: usize,
    interval: Duration,
    clear: bool,
    out: &mut (dyn std::io::Write + Send),
) -> ClientResult<()> {
    let write = |out: &mut (dyn std::io::Write + Send), text: &str| {
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| ClientError::Input(format!("writing to stdout: {e}")))
    };
    let mut first = true;
    loop {
        let (screen, over) = status_screen(client, wave, max_rows).await?;
        let mut frame = String::new();
        if clear {
            // Home the cursor and clear the screen: a plain redraw.
            frame.push_str("\x1b[H\x1b[2J");
        } else if !first {
            frame.push('\n');
        }
        frame.push_str(&screen);
        if !over {
            let _ = writeln!(
                frame,
                "\nrefreshing every {} s; Ctrl-C to stop watching",
                interval.as_secs_f64()
            );
        }
        write(out, &frame)?;
        if over {
            return Ok(());
        }
        first = false;
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{MailboxError, RejectedRow};
    use mailwave_common::model::{PassStats, WaveCounts};

    #[test]
    fn progress_bars_and_bytes() {
        assert_eq!(progress_bar(0, 0, 4), "[....]");
        assert_eq!(progress_bar(1, 2, 4), "[##..]");
        assert_eq!(progress_bar(3, 2, 4), "[####]");
    }

    #[test]
    fn renders_created_status_and_list() {
        let created = Created {
            id: 7,
            name: "w".into(),
            state: WaveState::Created,
            mailboxes: 2,
            rejected_rows: vec![RejectedRow {
                line: 4,
                reason: "missing target".into(),
            }],
        };
        let text = render_created(&created);
        assert!(text.contains("wave 7 \"w\" created (created): 2 mailboxes"));
        assert!(text.contains("line 4: missing target"), "{text}");

        let summary = WaveSummary {
            id: 7,
            name: "w".into(),
            state: WaveState::Running,
            final_pass: true,
        };
        let status = WaveStatus {
            wave: summary,
            max_concurrent_mailboxes: Some(2),
            config_error: None,
            mailboxes: 3,
            counts: WaveCounts {
                running: 1,
                completed: 1,
                failed: 1,
                items_copied: 12,
                bytes_copied: 2048,
                items_skipped: 1,
                ..WaveCounts::default()
            },
            errors: vec![MailboxError {
                mailbox: 3,
                source: "c@old".into(),
                target: "c@new".into(),
                pass: 1,
                error: "login refused".into(),
            }],
        };
        let record = |id, source: &str, state, error: Option<&str>| MailboxRecord {
            id,
            wave: 7,
            source: source.into(),
            target: source.replace("old", "new"),
            state,
            pass: 1,
            attempts: 1,
            last_error: error.map(Into::into),
            stats: PassStats {
                items_copied: 6,
                bytes_copied: 1024,
                ..PassStats::default()
            },
        };
        let mailboxes = vec![
            record(1, "a@old", MailboxState::Completed, None),
            record(2, "b@old", MailboxState::Running, None),
            record(3, "c@old", MailboxState::Failed, Some("login\nrefused")),
        ];
        let text = render_status(&status, &mailboxes, 0);
        assert!(text.contains("running (final pass)"), "{text}");
        assert!(text.contains("1/3 mailboxes completed (33.3%)"), "{text}");
        assert!(text.contains(&progress_bar(1, 3, 40)), "{text}");
        assert!(
            text.contains("pending 0  queued 0  running 1  completed 1  with errors 0  failed 1"),
            "{text}"
        );
        assert!(
            text.contains("12 items, 2.0 KiB   skipped items 1"),
            "{text}"
        );
        assert!(
            text.contains("c@old → c@new (pass 1): login refused"),
            "{text}"
        );
        let table: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("MAILBOX"))
            .collect();
        assert_eq!(table.len(), 4, "{text}");
        assert!(table[1].starts_with("c@old → c@new  failed"), "{text}");
        assert!(table[1].ends_with("login refused"), "{text}");
        assert!(table[3].starts_with("a@old → a@new  completed"), "{text}");

        let limited = render_status(&status, &mailboxes, 1);
        assert!(limited.contains("… and 2 more mailboxes"), "{limited}");

        let rows = vec![WaveRow {
            summary: status.wave,
            mailboxes: 3,
            completed: 1,
            failed: 1,
        }];
        let text = render_list(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "ID  NAME  STATE                 MAILBOXES  COMPLETED  FAILED"
        );
        assert_eq!(
            lines[1],
            "7   w     running (final pass)          3          1       1"
        );
        assert_eq!(render_list(&[]), "no waves\n");
    }
}
