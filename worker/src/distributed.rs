//! `mailwave-worker serve`: the worker of distributed mode, its settings
//! and its wiring of the job consumer ([`crate::consumer`]). It takes jobs
//! from RabbitMQ and keeps all of its state in PostgreSQL (connected by
//! `mailwave-cli`), so any number of workers can be started, stopped or
//! killed at any moment. SIGTERM or SIGINT stops it gracefully within
//! `shutdown_grace_secs`, interrupted mailboxes handed back, and it exits 0.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mailwave_common::config::{NamedCredential, load_credentials, load_section};
use mailwave_common::queue::JobQueue;
use mailwave_common::store::WorkerStore;
use serde::Deserialize;

use crate::consumer::{self, ConsumerSettings, WaveConfigs};
use crate::credentials::WavePolicy;
use crate::engine::NoProgress;
use crate::job::{EndpointCredentialsOnly, WorkerContext};

/// `[worker]` of the settings file; every key can be overridden by
/// `MAILWAVE__WORKER__KEY` (e.g. `MAILWAVE__WORKER__CONCURRENCY=8`). Other
/// tables are left alone, so one file can serve the coordinator too.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// PostgreSQL, the coordinator's database (verified TLS unless on this
    /// machine or `sslmode=disable`).
    pub database_url: String,
    /// Extra trusted roots (PEM) for PostgreSQL's certificate.
    pub database_ca_file: Option<PathBuf>,
    /// RabbitMQ, the coordinator's broker (`amqp://` only on this machine).
    pub amqp_url: String,
    /// Extra trusted roots (PEM) for RabbitMQ's certificate.
    pub amqp_ca_file: Option<PathBuf>,
    /// Prefix of the queue names; the coordinator's.
    #[serde(default = "default_queue_prefix")]
    pub queue_prefix: String,
    /// This worker's name in leases; defaults to `hostname-pid`.
    pub worker_id: Option<String>,
    /// Mailboxes copied at once; the worker takes a job only for a free one.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// The lease TTL; must be the coordinator's `lease_ttl_secs`.
    #[serde(default = "default_lease_ttl_secs")]
    pub lease_ttl_secs: u64,
    /// Bytes of message bodies in memory at once, across all mailboxes.
    #[serde(default = "default_memory_budget_bytes")]
    pub memory_budget_bytes: u64,
    /// How long SIGTERM may take before the process exits.
    #[serde(default = "default_shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
    /// Directories the Maildir endpoints of waves may be in (checked after
    /// resolving `..` and symbolic links); none: no Maildir endpoints.
    #[serde(default)]
    pub maildir_roots: Vec<PathBuf>,
    /// The `[credentials.NAME]` tables of the settings file (beside
    /// `[worker]`), which waves refer to by name; each must list its
    /// `hosts`.
    #[serde(skip)]
    pub credentials: BTreeMap<String, NamedCredential>,
}

fn default_queue_prefix() -> String {
    "mailwave".into()
}
fn default_concurrency() -> usize {
    4
}
fn default_lease_ttl_secs() -> u64 {
    60
}
fn default_memory_budget_bytes() -> u64 {
    96 * 1024 * 1024
}
fn default_shutdown_grace_secs() -> u64 {
    30
}

impl WorkerSettings {
    /// Reads `[worker]` from the TOML file, then the environment overrides.
    pub fn load(path: &Path) -> anyhow::Result<WorkerSettings> {
        WorkerSettings::load_with_env(path, None)
    }

    /// [`WorkerSettings::load`] with the environment as a map (`None`: the
    /// process's).
    pub fn load_with_env(
        path: &Path,
        env: Option<HashMap<String, String>>,
    ) -> anyhow::Result<WorkerSettings> {
        let mut settings: WorkerSettings = load_section(path, "worker", env.clone())?;
        settings.credentials = load_credentials(path, env)?;
        if let Some((name, _)) = settings
            .credentials
            .iter()
            .find(|(_, credential)| credential.hosts.is_empty())
        {
            anyhow::bail!(
                "settings {}: credentials.{name} must list the hosts it may be sent to (hosts = [\"imap.example.com\"])",
                path.display()
            );
        }
        if settings.concurrency == 0
            || settings.lease_ttl_secs == 0
            || settings.memory_budget_bytes == 0
            || settings.concurrency > usize::from(u16::MAX)
        {
            anyhow::bail!(
                "settings {}: concurrency (at most 65535), lease_ttl_secs and memory_budget_bytes must be positive",
                path.display()
            );
        }
        if settings
            .worker_id
            .as_deref()
            .is_some_and(|id| id.trim().is_empty())
        {
            anyhow::bail!("settings {}: worker_id is empty", path.display());
        }
        Ok(settings)
    }

    /// The configured worker id, or `hostname-pid`.
    pub fn worker_id(&self) -> String {
        self.worker_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "worker".into());
            format!("{host}-{}", std::process::id())
        })
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl_secs)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// What this worker accepts of a wave's configuration.
    pub fn wave_policy(&self) -> WavePolicy {
        WavePolicy {
            credentials: self.credentials.clone(),
            maildir_roots: self.maildir_roots.clone(),
        }
    }
}

/// Serves jobs from `queue` with the wave configurations stored in `store`
/// until `shutdown` completes (see [`crate::consumer`]).
pub async fn run(
    settings: WorkerSettings,
    store: Arc<dyn WorkerStore>,
    queue: Arc<dyn JobQueue>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let ctx = WorkerContext::new(
        store,
        settings.memory_budget_bytes,
        Arc::new(NoProgress),
        Arc::new(EndpointCredentialsOnly),
    );
    let consumer = ConsumerSettings {
        worker_id: settings.worker_id(),
        lease_ttl: settings.lease_ttl(),
        concurrency: settings.concurrency,
        grace: Some(settings.shutdown_grace()),
        job_ended: None,
    };
    consumer::serve(
        Arc::new(ctx),
        WaveConfigs::Stored(settings.wave_policy()),
        consumer,
        queue,
        shutdown,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_the_worker_table_with_overrides_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "[worker]\ndatabase_url = \"postgres://db/x\"\namqp_url = \"amqp://mq\"\n\
             lease_ttl_secs = 3\n[coordinator]\nanything = 1\n",
        )
        .unwrap();
        let env = [
            ("MAILWAVE__WORKER__CONCURRENCY", "8"),
            ("MAILWAVE__WORKER__WORKER_ID", "w-7"),
            ("MAILWAVE__COORDINATOR__LISTEN", "not ours"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let settings = WorkerSettings::load_with_env(&path, Some(env)).unwrap();
        assert_eq!(settings.concurrency, 8);
        assert_eq!(settings.worker_id(), "w-7");
        assert_eq!(settings.lease_ttl(), Duration::from_secs(3));
        assert_eq!(settings.shutdown_grace(), Duration::from_secs(30));
        assert_eq!(settings.queue_prefix, "mailwave");
        assert_eq!(settings.memory_budget_bytes, 96 * 1024 * 1024);

        let settings = WorkerSettings::load_with_env(&path, Some(HashMap::new())).unwrap();
        assert_eq!(settings.concurrency, 4);
        let id = settings.worker_id();
        assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");

        let env = [("MAILWAVE__WORKER__CONCURENCY", "8")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let error = WorkerSettings::load_with_env(&path, Some(env)).unwrap_err();
        assert!(error.to_string().contains("concurency"), "{error}");
        let env = [("MAILWAVE__WORKER__CONCURRENCY", "0")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert!(WorkerSettings::load_with_env(&path, Some(env)).is_err());
    }

    #[test]
    fn named_credentials_sit_beside_the_worker_table_and_list_their_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        let worker = "[worker]\ndatabase_url = \"postgres://db/x\"\namqp_url = \"amqp://mq\"\n\
                      maildir_roots = [\"/srv/mail\"]\n";
        std::fs::write(
            &path,
            format!(
                "{worker}[credentials.src-admin]\nhosts = [\"imap.old.example\"]\npassword_env = \"SRC_PW\"\n"
            ),
        )
        .unwrap();
        let settings = WorkerSettings::load_with_env(&path, Some(HashMap::new())).unwrap();
        let policy = settings.wave_policy();
        assert_eq!(policy.maildir_roots, [PathBuf::from("/srv/mail")]);
        assert_eq!(
            policy.credentials["src-admin"].password_env.as_deref(),
            Some("SRC_PW")
        );

        std::fs::write(&path, worker).unwrap();
        let settings = WorkerSettings::load_with_env(&path, Some(HashMap::new())).unwrap();
        assert!(settings.credentials.is_empty());

        std::fs::write(
            &path,
            format!("{worker}[credentials.anywhere]\npassword_env = \"SRC_PW\"\n"),
        )
        .unwrap();
        let error = WorkerSettings::load_with_env(&path, Some(HashMap::new())).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("credentials.anywhere must list the hosts"),
            "{error}"
        );
    }
}
