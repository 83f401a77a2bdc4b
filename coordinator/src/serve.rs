//! `mailwave coordinator serve`: migrates the PostgreSQL schema (under the
//! store's advisory lock, so two coordinators starting together never race),
//! then serves the API and runs the dispatcher and the reaper until SIGTERM
//! or SIGINT. Everything lives in PostgreSQL: a restarted coordinator picks
//! up where the last one stopped (see `dispatcher` for why it never
//! publishes a job twice).

use std::sync::Arc;

use anyhow::Context;
use mailwave_common::queue::{JobQueue, QueueNames, RabbitQueue};
use mailwave_common::shutdown::shutdown_signal;
use mailwave_common::store::{PostgresStore, Store};
use tokio::sync::{Notify, watch};

use crate::api::{ApiState, router};
use crate::settings::CoordinatorSettings;
use crate::{dispatcher, reaper};

/// Runs the coordinator until a termination signal.
pub async fn serve(settings: CoordinatorSettings) -> anyhow::Result<()> {
    // A missing token is found before anything is connected.
    settings.token()?;
    let store = PostgresStore::connect(&settings.database_url)
        .await
        .context("connecting to PostgreSQL")?;
    store.migrate().await.context("migrating the schema")?;
    let store: Arc<dyn Store> = Arc::new(store);
    let queue: Arc<dyn JobQueue> = Arc::new(
        RabbitQueue::connect(
            &settings.amqp_url,
            QueueNames::with_prefix(&settings.queue_prefix),
        )
        .await
        .context("connecting to RabbitMQ")?,
    );
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("listening on {}", settings.listen))?;
    run(settings, store, queue, listener, shutdown_signal()).await
}

/// Serves the API on `listener` and runs the dispatcher and the reaper until
/// `shutdown` completes; then stops taking requests, lets the loops end
/// their round, and returns.
pub async fn run(
    settings: CoordinatorSettings,
    store: Arc<dyn Store>,
    queue: Arc<dyn JobQueue>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let token = settings.token()?;
    let wake = Arc::new(Notify::new());
    let (stop, stopped) = watch::channel(false);
    let dispatcher = tokio::spawn(dispatcher::run(
        Arc::clone(&store),
        Arc::clone(&queue),
        settings.dispatch_interval(),
        Arc::clone(&wake),
        stopped.clone(),
    ));
    let reaper = tokio::spawn(reaper::run(
        Arc::clone(&store),
        settings.reaper_interval(),
        stopped.clone(),
    ));
    tracing::info!(listen = %listener.local_addr()?, "coordinator serving");
    let app = router(ApiState::new(store, &token, wake));
    let mut stopped_api = stopped;
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                () = shutdown => {}
                _ = stopped_api.changed() => {}
            }
        })
        .await;
    let _ = stop.send(true);
    dispatcher.await.context("dispatcher task")?;
    reaper.await.context("reaper task")?;
    served.context("HTTP server")?;
    tracing::info!("coordinator stopped");
    Ok(())
}
