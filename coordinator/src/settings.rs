//! The coordinator's settings: the `[coordinator]` table of a TOML file,
//! every key overridable by `MAILWAVE__COORDINATOR__KEY` (e.g.
//! `MAILWAVE__COORDINATOR__LISTEN=0.0.0.0:8080`). Other tables of the file
//! are left alone, so one file can serve the coordinator and the workers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mailwave_common::config::{load_section, read_secret_file};
use serde::Deserialize;

/// `[coordinator]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorSettings {
    /// Address of the HTTP API.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// PostgreSQL, e.g. `postgres://mailwave@db/mailwave`: verified TLS
    /// unless the host is this machine (or `sslmode=disable`).
    pub database_url: String,
    /// Extra trusted roots (PEM) for PostgreSQL's certificate, e.g. a private CA.
    pub database_ca_file: Option<PathBuf>,
    /// RabbitMQ, e.g. `amqps://mailwave:…@mq:5671/%2f` (`amqp://` only on
    /// this machine).
    pub amqp_url: String,
    /// Extra trusted roots (PEM) for RabbitMQ's certificate.
    pub amqp_ca_file: Option<PathBuf>,
    /// Prefix of the queue names (`<prefix>.jobs`, …): one per deployment.
    #[serde(default = "default_queue_prefix")]
    pub queue_prefix: String,
    /// The API's bearer token: name of an environment variable holding it…
    pub token_env: Option<String>,
    /// …or a file holding it.
    pub token_file: Option<PathBuf>,
    /// How often the reaper looks for expired leases.
    #[serde(default = "default_reaper_interval_secs")]
    pub reaper_interval_secs: u64,
    /// How often the dispatcher publishes (it also runs at once after a command).
    #[serde(default = "default_dispatch_interval_ms")]
    pub dispatch_interval_ms: u64,
    /// Seconds a client has to send a request's headers; also how long an
    /// idle connection is kept open.
    #[serde(default = "default_header_timeout_secs")]
    pub header_timeout_secs: u64,
    /// Seconds one request may take, its body included.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// Connections served at once; more wait to be accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// The largest request body (a CSV of 100,000 mailboxes is about 6 MB).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// TLS for the API: the certificate chain (PEM)…
    pub tls_certificate_file: Option<PathBuf>,
    /// …and its private key (PEM).
    pub tls_key_file: Option<PathBuf>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_queue_prefix() -> String {
    "mailwave".into()
}
fn default_reaper_interval_secs() -> u64 {
    10
}
fn default_dispatch_interval_ms() -> u64 {
    500
}
fn default_header_timeout_secs() -> u64 {
    10
}
fn default_request_timeout_secs() -> u64 {
    60
}
fn default_max_connections() -> usize {
    256
}
fn default_max_body_bytes() -> usize {
    64 * 1024 * 1024
}

impl CoordinatorSettings {
    /// Reads `[coordinator]` from the TOML file, then the environment overrides.
    pub fn load(path: &Path) -> anyhow::Result<CoordinatorSettings> {
        CoordinatorSettings::load_with_env(path, None)
    }

    /// [`CoordinatorSettings::load`] with the environment as a map (`None`:
    /// the process's).
    pub fn load_with_env(
        path: &Path,
        env: Option<HashMap<String, String>>,
    ) -> anyhow::Result<CoordinatorSettings> {
        let settings: CoordinatorSettings = load_section(path, "coordinator", env)?;
        if settings.token_env.is_some() == settings.token_file.is_some() {
            anyhow::bail!(
                "settings {}: give exactly one of coordinator.token_env and coordinator.token_file",
                path.display()
            );
        }
        if settings.reaper_interval_secs == 0
            || settings.dispatch_interval_ms == 0
            || settings.header_timeout_secs == 0
            || settings.request_timeout_secs == 0
            || settings.max_connections == 0
            || settings.max_body_bytes == 0
        {
            anyhow::bail!(
                "settings {}: reaper_interval_secs, dispatch_interval_ms, header_timeout_secs, \
                 request_timeout_secs, max_connections and max_body_bytes must be positive",
                path.display()
            );
        }
        if settings.tls_certificate_file.is_some() != settings.tls_key_file.is_some() {
            anyhow::bail!(
                "settings {}: coordinator.tls_certificate_file and coordinator.tls_key_file go together",
                path.display()
            );
        }
        Ok(settings)
    }

    /// The API's bearer token, from the named variable or file; never empty.
    pub fn token(&self) -> anyhow::Result<String> {
        let token = match (&self.token_env, &self.token_file) {
            (Some(var), _) => std::env::var(var)
                .map_err(|_| anyhow::anyhow!("token_env {var}: environment variable is not set"))?,
            (None, Some(path)) => read_secret_file(path)?,
            (None, None) => anyhow::bail!("no token_env or token_file"),
        };
        let token = token.trim().to_owned();
        if token.len() < 16 {
            anyhow::bail!("the API token must be at least 16 characters long");
        }
        Ok(token)
    }

    pub fn reaper_interval(&self) -> Duration {
        Duration::from_secs(self.reaper_interval_secs)
    }

    pub fn dispatch_interval(&self) -> Duration {
        Duration::from_millis(self.dispatch_interval_ms)
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_the_coordinator_table_with_overrides_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        let token = dir.path().join("token");
        std::fs::write(&token, "0123456789abcdef-token\n").unwrap();
        std::fs::write(
            &path,
            format!(
                "[coordinator]\ndatabase_url = \"postgres://db/x\"\namqp_url = \"amqp://mq\"\n\
                 token_file = {:?}\nreaper_interval_secs = 3\n[worker]\nanything = 1\n",
                token.display().to_string()
            ),
        )
        .unwrap();
        let env = [
            ("MAILWAVE__COORDINATOR__LISTEN", "0.0.0.0:9000"),
            ("MAILWAVE__SOURCE__HOST", "not ours"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let settings = CoordinatorSettings::load_with_env(&path, Some(env)).unwrap();
        assert_eq!(settings.listen, "0.0.0.0:9000".parse().unwrap());
        assert_eq!(settings.reaper_interval(), Duration::from_secs(3));
        assert_eq!(settings.dispatch_interval(), Duration::from_millis(500));
        assert_eq!(settings.queue_prefix, "mailwave");
        assert_eq!(settings.token().unwrap(), "0123456789abcdef-token");

        let env = [("MAILWAVE__COORDINATOR__LISTN", "x")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let error = CoordinatorSettings::load_with_env(&path, Some(env)).unwrap_err();
        assert!(error.to_string().contains("listn"), "{error}");

        std::fs::write(
            &path,
            "[coordinator]\ndatabase_url = \"d\"\namqp_url = \"a\"\n",
        )
        .unwrap();
        let error = CoordinatorSettings::load_with_env(&path, Some(HashMap::new())).unwrap_err();
        assert!(error.to_string().contains("token_env"), "{error}");
    }
}
