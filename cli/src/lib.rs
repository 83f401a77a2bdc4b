//! What the `mailwave` and `mailwave-worker` commands share: connecting to
//! distributed mode's backends (the coordinator and worker libraries take a
//! [`Store`] and a [`JobQueue`] and never pick one).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use mailwave_common::queue::{JobQueue, QueueNames, RabbitOptions, RabbitQueue};
use mailwave_common::store::{PostgresStore, Store};

/// PostgreSQL (verified TLS unless on this machine or `sslmode=disable`),
/// with extra trusted roots from `ca_file`.
pub async fn postgres(url: &str, ca_file: Option<&Path>) -> anyhow::Result<PostgresStore> {
    PostgresStore::connect_with_tls(url, PostgresStore::DEFAULT_POOL_SIZE, ca_file)
        .await
        .context("connecting to PostgreSQL")
}

/// The store of distributed mode, as the libraries take it.
pub async fn store(url: &str, ca_file: Option<&Path>) -> anyhow::Result<Arc<dyn Store>> {
    Ok(Arc::new(postgres(url, ca_file).await?))
}

/// RabbitMQ, its queues named with `prefix`, with extra trusted roots from
/// `ca_file`.
pub async fn rabbitmq(
    url: &str,
    prefix: &str,
    ca_file: Option<&Path>,
) -> anyhow::Result<Arc<dyn JobQueue>> {
    let queue = RabbitQueue::connect_with(
        url,
        QueueNames::with_prefix(prefix),
        RabbitOptions {
            ca_file: ca_file.map(Path::to_path_buf),
            ..RabbitOptions::default()
        },
    )
    .await
    .context("connecting to RabbitMQ")?;
    Ok(Arc::new(queue))
}
