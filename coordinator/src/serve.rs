//! `mailwave coordinator serve`: migrates the PostgreSQL schema (under the
//! store's advisory lock, so two coordinators starting together never race),
//! then serves the API and runs the dispatcher and the reaper until SIGTERM
//! or SIGINT. Everything lives in PostgreSQL: a restarted coordinator picks
//! up where the last one stopped (see `dispatcher` for why it never
//! publishes a job twice).

//!
//! The API has its own accept loop (not `axum::serve`) for its limits: a
//! client must send a request's headers within `header_timeout_secs` (an
//! idle connection is closed after as long), at most `max_connections` are
//! served at once (more wait in the listen backlog), and with
//! `tls_certificate_file` and `tls_key_file` it speaks HTTPS only.

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use mailwave_common::queue::{JobQueue, QueueNames, RabbitOptions, RabbitQueue};
use mailwave_common::shutdown::shutdown_signal;
use mailwave_common::store::{PostgresStore, WaveStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::api::{ApiState, router};
use crate::settings::CoordinatorSettings;
use crate::{dispatcher, reaper};

/// Runs the coordinator until a termination signal.
pub async fn serve(settings: CoordinatorSettings) -> anyhow::Result<()> {
    // A missing token or certificate is found before anything is connected.
    settings.token()?;
    tls_acceptor(&settings)?;
    let store = PostgresStore::connect_with_tls(
        &settings.database_url,
        PostgresStore::DEFAULT_POOL_SIZE,
        settings.database_ca_file.as_deref(),
    )
    .await
    .context("connecting to PostgreSQL")?;
    store.migrate().await.context("migrating the schema")?;
    let store: Arc<dyn WaveStore> = Arc::new(store);
    let queue: Arc<dyn JobQueue> = Arc::new(
        RabbitQueue::connect_with(
            &settings.amqp_url,
            QueueNames::with_prefix(&settings.queue_prefix),
            RabbitOptions {
                ca_file: settings.amqp_ca_file.clone(),
                ..RabbitOptions::default()
            },
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
    store: Arc<dyn WaveStore>,
    queue: Arc<dyn JobQueue>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let token = settings.token()?;
    let tls = tls_acceptor(&settings)?;
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
    tracing::info!(listen = %listener.local_addr()?, tls = tls.is_some(), "coordinator serving");
    let app = router(
        ApiState::new(store, &token, wake)
            .with_limits(settings.max_body_bytes, settings.request_timeout()),
    );
    let limits = ConnectionLimits {
        header_timeout: settings.header_timeout(),
        max_connections: settings.max_connections,
        drain: settings.request_timeout(),
    };
    let mut stopped_api = stopped;
    serve_http(listener, app, limits, tls, async move {
        tokio::select! {
            () = shutdown => {}
            _ = stopped_api.changed() => {}
        }
    })
    .await;
    let _ = stop.send(true);
    dispatcher.await.context("dispatcher task")?;
    reaper.await.context("reaper task")?;
    tracing::info!("coordinator stopped");
    Ok(())
}

/// What one connection may take.
#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    /// To send a request's headers, or to finish a TLS handshake.
    header_timeout: Duration,
    /// Connections served at once.
    max_connections: usize,
    /// How long open connections may finish their request at shutdown.
    drain: Duration,
}

/// The TLS acceptor of the configured certificate and key, if any.
fn tls_acceptor(settings: &CoordinatorSettings) -> anyhow::Result<Option<TlsAcceptor>> {
    let (Some(certificate_file), Some(key_file)) =
        (&settings.tls_certificate_file, &settings.tls_key_file)
    else {
        return Ok(None);
    };
    let config = server_tls_config(certificate_file, key_file)?;
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

/// A TLS server configuration (HTTP/1.1) of a PEM certificate chain and key.
fn server_tls_config(
    certificate_file: &Path,
    key_file: &Path,
) -> anyhow::Result<rustls::ServerConfig> {
    let read =
        |path: &Path| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let certificates = CertificateDer::pem_slice_iter(&read(certificate_file)?)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("tls_certificate_file {}", certificate_file.display()))?;
    if certificates.is_empty() {
        anyhow::bail!(
            "tls_certificate_file {}: no PEM certificate in it",
            certificate_file.display()
        );
    }
    let key = match PrivateKeyDer::from_pem_slice(&read(key_file)?) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => anyhow::bail!(
            "tls_key_file {}: no PEM private key in it",
            key_file.display()
        ),
        Err(error) => {
            return Err(error).with_context(|| format!("tls_key_file {}", key_file.display()));
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .context("tls_certificate_file and tls_key_file do not make a certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Serves `app` on `listener` within `limits` until `shutdown` completes;
/// then takes no more connections and lets the open ones finish their
/// request, for `limits.drain` at most.
async fn serve_http(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (closing, closing_seen) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(error) => {
                // Out of file descriptors, typically: wait a little.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        connections.spawn(serve_connection(
            tcp,
            app.clone(),
            tls.clone(),
            limits,
            closing_seen.clone(),
            slot,
        ));
    }
    let _ = closing.send(true);
    let drained = tokio::time::timeout(limits.drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("API connections still open at shutdown were closed");
    }
}

/// One connection, holding its `slot` of the connection limit.
async fn serve_connection(
    tcp: tokio::net::TcpStream,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    closing: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let Some(acceptor) = tls else {
        return serve_http1(tcp, app, limits, closing).await;
    };
    match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => serve_http1(stream, app, limits, closing).await,
        Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
        Err(_) => tracing::debug!("TLS handshake timed out"),
    }
}

/// HTTP/1.1 over `io` with the header-read timeout, until the client
/// closes, a timeout closes, or shutdown ends it after its request.
async fn serve_http1<I>(
    io: I,
    app: Router,
    limits: ConnectionLimits,
    mut closing: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let connection = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
    tokio::pin!(connection);
    let closed = async move {
        // The guard `wait_for` returns must not live across an await.
        let _ = closing.wait_for(|closing| *closing).await.map(drop);
    };
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = closed => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = served {
        tracing::debug!(%error, "API connection ended");
    }
}
