//! Building and running the server, split so that tests and benchmarks can
//! start the real thing on port 0 and learn its address before it serves.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::Code;
use tonic::codegen::http;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::util::MapResultLayer;

use crate::api::pb::customer_service_server::CustomerServiceServer;
use crate::api::{Authenticator, CustomerApi, ObserveLayer, PageTokens, error, pb};
use crate::config::{Config, KeysCommand};
use crate::domain::{Violations, identifier};
use crate::metrics::Metrics;
use crate::store::embedded::EmbeddedPostgres;
use crate::store::{self, CustomerStore, KeyStore, PoolSettings};

/// Largest response message. Larger ones would be refused by a client with
/// default settings.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// How often health is re-checked against the database.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// How often expired idempotency records are deleted.
const PURGE_INTERVAL: Duration = Duration::from_secs(600);
/// Longest account id a key may be created for.
const MAX_ACCOUNT_ID_CHARS: usize = 64;
/// Name under which the customer service reports its health.
const SERVICE_NAME: &str = "customers.v1.CustomerService";

/// A server that is bound and migrated but not yet serving.
pub struct Application {
    listener: TcpListener,
    metrics_listener: TcpListener,
    pool: PgPool,
    /// One connection of its own for health checks, so that a request pool
    /// exhausted by slow calls is not mistaken for a database outage.
    health_pool: PgPool,
    embedded: Option<EmbeddedPostgres>,
    tokens: PageTokens,
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
    tls: Option<ServerTlsConfig>,
    max_request_bytes: usize,
    max_concurrent_calls: usize,
    shutdown_grace: Duration,
    statement_timeout: Duration,
}

impl Application {
    /// Binds the listen addresses, starts the embedded PostgreSQL when no
    /// database URL is configured, opens the pools and applies migrations.
    ///
    /// The addresses are bound first, so that a second copy of the service
    /// fails before it touches any database.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let listener = bind(config.listen_addr).await?;
        let metrics_listener = bind(config.metrics_addr).await?;
        let tls = tls_config(config)?;
        let (url, embedded) = database(config).await?;
        let (pool, health_pool) = match prepare(config, &url, embedded.is_some()).await {
            Ok(pools) => pools,
            Err(error) => {
                stop_embedded(embedded).await;
                return Err(error);
            }
        };

        if config.page_token_key.is_none() {
            tracing::info!(
                "PAGE_TOKEN_KEY unset: page tokens are signed with a random key of this process"
            );
        }
        let auth = if config.insecure_no_auth {
            tracing::warn!(
                "AUTHENTICATION IS OFF (--insecure-no-auth): every caller acts for the test-mode \
                 account acct_default. Never run this way outside local experiments."
            );
            Authenticator::disabled()
        } else {
            let ttl = Duration::from_millis(config.api_key_cache_ms);
            let keys = KeyStore::new(pool.clone(), config.pool_settings().statement_timeout);
            Authenticator::with_keys(keys, ttl)
        };
        let metrics = Metrics::new(pool.clone(), config.db_max_connections, embedded.is_some());
        Ok(Self {
            listener,
            metrics_listener,
            pool,
            health_pool,
            embedded,
            tokens: PageTokens::new(&config.page_token_key()),
            auth: Arc::new(auth),
            metrics,
            tls,
            max_request_bytes: config.max_request_bytes,
            max_concurrent_calls: config.max_concurrent_calls,
            shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
            statement_timeout: config.pool_settings().statement_timeout,
        })
    }

    /// The bound gRPC address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The bound address of the metrics endpoint.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes. Then health turns NOT_SERVING, new
    /// connections are refused, and in-flight calls finish; calls and
    /// streams (such as health watches) still open after the grace period
    /// are cut. The embedded PostgreSQL, if any, is stopped last.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Application {
            listener,
            metrics_listener,
            pool,
            health_pool,
            embedded,
            tokens,
            auth,
            metrics,
            tls,
            max_request_bytes,
            max_concurrent_calls,
            shutdown_grace,
            statement_timeout,
        } = self;
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let (stopping_tx, stopping_rx) = watch::channel(false);
        let embedded = embedded.map(Arc::new);
        tracing::info!(addr = %metrics_listener.local_addr()?, "serving metrics at /metrics");
        let store = CustomerStore::new(pool.clone(), statement_timeout);
        let background = [
            tokio::spawn(watch_database(
                health_pool.clone(),
                reporter.clone(),
                metrics.clone(),
                embedded.clone(),
                stopping_rx.clone(),
            )),
            tokio::spawn(purge_expired_requests(store.clone(), stopping_rx.clone())),
            tokio::spawn(serve_metrics(
                metrics_listener,
                metrics.clone(),
                stopping_rx.clone(),
            )),
        ];

        let customers =
            CustomerServiceServer::new(CustomerApi::new(store, tokens, auth, max_concurrent_calls))
                .max_decoding_message_size(max_request_bytes)
                .max_encoding_message_size(MAX_RESPONSE_BYTES);
        tracing::info!(addr = %listener.local_addr()?, "serving");
        // Without TCP_NODELAY a reply waits for the client's delayed ACK
        // (tens of milliseconds) whenever it spans several segments.
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut builder = Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).context("configuring TLS")?;
        }
        let served = builder
            // Outermost first: one span, log line and metric per call;
            // contract statuses for what tonic refuses. The limit of calls
            // at once is the handlers' (`CustomerApi::admit`), so that it
            // counts only requests that have arrived whole.
            .layer(ObserveLayer::new(metrics, served_paths()?))
            .layer(MapResultLayer::new(contract_errors))
            .add_service(health_service)
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?)
            .add_service(customers)
            .serve_with_incoming_shutdown(incoming, async {
                shutdown.await;
                tracing::info!("shutting down: finishing in-flight calls");
                let _ = stopping_tx.send(true);
                reporter
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
                reporter
                    .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
                    .await;
            });
        let mut grace = stopping_rx.clone();
        let served = tokio::select! {
            served = served => served.context("gRPC server failed"),
            _ = async {
                let _ = grace.wait_for(|stopping| *stopping).await;
                tokio::time::sleep(shutdown_grace).await;
            } => {
                tracing::warn!(grace_ms = shutdown_grace.as_millis() as u64, "grace period over: closing the remaining calls");
                Ok(())
            }
        };

        for task in background {
            let _ = task.await;
        }
        pool.close().await;
        health_pool.close().await;
        // The monitor, the only other holder, has ended.
        stop_embedded(embedded.and_then(|e| Arc::try_unwrap(e).ok())).await;
        served
    }
}

/// Binds a TCP listener, saying which address failed.
async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

/// Opens the request pool and the health pool, applies migrations and, on
/// the embedded default, makes sure a local API key exists.
async fn prepare(config: &Config, url: &str, embedded: bool) -> anyhow::Result<(PgPool, PgPool)> {
    let pool = store::connect(url, &config.pool_settings()).context("invalid database URL")?;
    let health_settings = PoolSettings {
        max_connections: 1,
        acquire_timeout: HEALTH_INTERVAL,
        statement_timeout: HEALTH_INTERVAL,
    };
    let health_pool = store::connect(url, &health_settings).context("invalid database URL")?;
    store::migrate(&pool)
        .await
        .context("applying database migrations")?;
    if embedded && !config.insecure_no_auth {
        quickstart_key(config, &pool)
            .await
            .context("creating the local API key")?;
    }
    Ok((pool, health_pool))
}

/// Serves `GET /metrics` until shutdown.
async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    mut stopping: watch::Receiver<bool>,
) {
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    let stopped = async move {
        let _ = stopping.wait_for(|stopping| *stopping).await;
    };
    if let Err(error) = axum::serve(listener, router)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(%error, "metrics endpoint failed");
    }
}

/// Applies the migrations and exits: the `migrate` subcommand, for
/// deployments that migrate once per rollout rather than at every start.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    with_migrated_pool(config, |_| async { Ok(()) }).await?;
    tracing::info!("migrations applied");
    Ok(())
}

/// Runs a `keys` subcommand, printing to stdout.
pub async fn manage_keys(config: &Config, command: &KeysCommand) -> anyhow::Result<()> {
    with_migrated_pool(config, |pool| async move {
        let keys = KeyStore::new(pool, config.pool_settings().statement_timeout);
        match command {
            KeysCommand::Create { account, live } => {
                let mut violations = Violations::new();
                if identifier("account", account, MAX_ACCOUNT_ID_CHARS, &mut violations).is_none() {
                    anyhow::bail!(
                        "--account must be 1..{MAX_ACCOUNT_ID_CHARS} characters without whitespace, \
                         control characters or '/'"
                    );
                }
                let (text, record) = keys.create(account, *live).await?;
                println!("{text}");
                eprintln!(
                    "created key {} for account {} ({} mode); store it now, it is not shown again",
                    record.id,
                    record.account_id,
                    if record.live_mode { "live" } else { "test" }
                );
            }
            KeysCommand::List => {
                println!(
                    "{:<18} {:<24} {:<5} {:<27} revoked",
                    "id", "account", "mode", "created"
                );
                for key in keys.list().await? {
                    let mode = if key.live_mode { "live" } else { "test" };
                    let revoked = key
                        .revoke_time
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "{:<18} {:<24} {mode:<5} {:<27} {revoked}",
                        key.id,
                        key.account_id,
                        key.create_time.to_string()
                    );
                }
            }
            KeysCommand::Revoke { id } => {
                if !keys.revoke(id).await? {
                    anyhow::bail!("no active key has the id {id}");
                }
                eprintln!("revoked key {id}");
            }
        }
        Ok(())
    })
    .await
}

/// Runs `work` for a one-shot command on a migrated pool, then closes the
/// pool and stops an embedded server that was started for the command.
async fn with_migrated_pool<F, Fut>(config: &Config, work: F) -> anyhow::Result<()>
where
    F: FnOnce(PgPool) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let (url, embedded) = tool_database(config).await?;
    let result = async {
        let pool = store::connect(&url, &config.pool_settings()).context("invalid database URL")?;
        store::migrate(&pool)
            .await
            .context("applying database migrations")?;
        let outcome = work(pool.clone()).await;
        pool.close().await;
        outcome
    }
    .await;
    stop_embedded(embedded).await;
    result
}

/// TLS settings from the configured PEM files, if any.
fn tls_config(config: &Config) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let read = |path: &std::path::PathBuf| {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &config.tls_client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    tracing::info!(mutual = config.tls_client_ca.is_some(), "serving TLS");
    Ok(Some(tls))
}

/// The encoded descriptors of every service this server runs: customers,
/// health and both reflection versions.
const SERVED: [&[u8]; 4] = [
    pb::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

/// The path (`/package.Service/Method`) of every method in [`SERVED`].
fn served_paths() -> anyhow::Result<Vec<String>> {
    let mut paths = Vec::new();
    for encoded in SERVED {
        let set = <prost_types::FileDescriptorSet as prost::Message>::decode(encoded)?;
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    paths.push(match file.package() {
                        "" => format!("/{}/{}", service.name(), method.name()),
                        package => format!("/{package}.{}/{}", service.name(), method.name()),
                    });
                }
            }
        }
    }
    Ok(paths)
}

/// Server reflection over everything this server speaks: both reflection
/// versions list every service (health included), and the google.rpc error
/// details are resolvable so that grpcurl can print them.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    SERVED
        .into_iter()
        .chain([tonic_types::pb::FILE_DESCRIPTOR_SET])
        .fold(
            tonic_reflection::server::Builder::configure().include_reflection_service(false),
            |builder, encoded| builder.register_encoded_file_descriptor_set(encoded),
        )
}

/// The database for a one-shot command: DATABASE_URL, else the embedded
/// server a running service has started (left running), else the embedded
/// server started for this command alone.
async fn tool_database(config: &Config) -> anyhow::Result<(String, Option<EmbeddedPostgres>)> {
    if config.database_url.is_none()
        && let Some(url) = EmbeddedPostgres::running_url(&config.data_dir())
    {
        return Ok((url, None));
    }
    database(config).await
}

/// On the embedded default, creates a test-mode key on first start and
/// tells where it is, so that the README's examples work by copy and paste.
async fn quickstart_key(config: &Config, pool: &PgPool) -> anyhow::Result<()> {
    let path = config.quickstart_key_file();
    if path.exists() {
        tracing::info!(path = %path.display(), "the local test-mode API key is in this file");
        return Ok(());
    }
    let (text, record) = KeyStore::new(pool.clone(), config.pool_settings().statement_timeout)
        .create("acct_default", false)
        .await?;
    let mut file = std::fs::OpenOptions::new();
    std::os::unix::fs::OpenOptionsExt::mode(file.write(true).create_new(true), 0o600);
    std::io::Write::write_all(&mut file.open(&path)?, format!("{text}\n").as_bytes())?;
    // Printed, not logged: log lines never carry secrets.
    eprintln!(
        "\nCreated a test-mode API key for account acct_default (id {}):\n\n  {text}\n\n\
         It is saved in {}. Send it as `authorization: Bearer <key>`.\n",
        record.id,
        path.display()
    );
    Ok(())
}

/// The database URL to use, starting the embedded server when none is set.
async fn database(config: &Config) -> anyhow::Result<(String, Option<EmbeddedPostgres>)> {
    if let Some(url) = &config.database_url {
        return Ok((url.clone(), None));
    }
    let data_dir = config.data_dir();
    let bin_dir = config.postgres_bin_dir.clone();
    let embedded =
        tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&data_dir, bin_dir.as_deref()))
            .await?
            .context("starting the embedded PostgreSQL")?;
    Ok((embedded.url().to_owned(), Some(embedded)))
}

async fn stop_embedded(embedded: Option<EmbeddedPostgres>) {
    if let Some(embedded) = embedded {
        match tokio::task::spawn_blocking(move || embedded.stop()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "stopping the embedded PostgreSQL failed"),
            Err(error) => tracing::error!(%error, "stopping the embedded PostgreSQL panicked"),
        }
    }
}

/// Keeps the health status in step with the database: SERVING only while a
/// trivial query succeeds. Stops (leaving NOT_SERVING) at shutdown.
///
/// With an embedded PostgreSQL it is also its supervisor: when the database
/// does not answer and the server is no longer running (it crashed, or was
/// killed), it starts it again on the same port, so the pools reconnect.
async fn watch_database(
    pool: PgPool,
    reporter: HealthReporter,
    metrics: Arc<Metrics>,
    embedded: Option<Arc<EmbeddedPostgres>>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut last = None;
    loop {
        let ping = sqlx::query("SELECT 1").execute(&pool);
        let up = matches!(tokio::time::timeout(HEALTH_INTERVAL, ping).await, Ok(Ok(_)));
        if *stopping.borrow() {
            return;
        }
        if let (false, Some(server)) = (up, &embedded) {
            restart_if_dead(server.clone()).await;
        }
        metrics.set_database_up(up);
        if last != Some(up) {
            let status = if up {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            reporter.set_service_status(SERVICE_NAME, status).await;
            if up {
                tracing::info!("database reachable: SERVING");
            } else {
                tracing::warn!("database unreachable: NOT_SERVING");
            }
            last = Some(up);
        }
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
            _ = stopping.changed() => return,
        }
    }
}

/// Starts the embedded server again if it is not running.
async fn restart_if_dead(server: Arc<EmbeddedPostgres>) {
    let restarted = tokio::task::spawn_blocking(move || {
        if server.is_running() {
            return Ok(false);
        }
        server.restart().map(|()| true)
    })
    .await;
    match restarted {
        Ok(Ok(true)) => tracing::warn!("the embedded PostgreSQL had stopped: restarted it"),
        Ok(Ok(false)) => {}
        Ok(Err(error)) => tracing::error!(%error, "restarting the embedded PostgreSQL failed"),
        Err(error) => tracing::error!(%error, "restarting the embedded PostgreSQL panicked"),
    }
}

/// Gives what tonic refuses the contract's statuses, each with an
/// ErrorInfo:
/// - a request message over the size limit, which tonic refuses with
///   OUT_OF_RANGE before any handler runs: RESOURCE_EXHAUSTED,
///   `REQUEST_TOO_LARGE` (no handler of ours answers OUT_OF_RANGE);
/// - a request tonic could not frame (empty or truncated body, a wrong
///   compression flag or content type), which it calls INTERNAL without
///   details: INVALID_ARGUMENT, `MALFORMED_REQUEST`. Our own INTERNAL
///   always carries details, so it is never mistaken for one of these;
/// - any other error without details (an unknown method, say) keeps its
///   code and gains an ErrorInfo naming it.
fn contract_errors<B: Default, E>(
    result: Result<http::Response<B>, E>,
) -> Result<http::Response<B>, E> {
    let response = result?;
    let Some(code) = header_status(&response) else {
        return Ok(response);
    };
    if code == Code::Ok || response.headers().contains_key("grpc-status-details-bin") {
        return Ok(response);
    }
    let status = match code {
        Code::OutOfRange => error::status(
            Code::ResourceExhausted,
            "the request is larger than the server accepts",
            "REQUEST_TOO_LARGE",
        ),
        Code::Internal => error::malformed_request(),
        code => {
            // The header is percent-encoded; Status encodes it again.
            let message = response
                .headers()
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .filter(|m| !m.is_empty())
                .map(|m| {
                    percent_encoding::percent_decode_str(m)
                        .decode_utf8_lossy()
                        .into_owned()
                })
                .unwrap_or_else(|| "the request cannot be served".to_owned());
            let reason = format!("{code:?}")
                .chars()
                .fold(String::new(), |mut out, c| {
                    if c.is_uppercase() && !out.is_empty() {
                        out.push('_');
                    }
                    out.push(c.to_ascii_uppercase());
                    out
                });
            error::status(code, &message, &reason)
        }
    };
    Ok(status.into_http())
}

/// The status in a trailers-only reply's headers, if there is one.
fn header_status<B>(response: &http::Response<B>) -> Option<Code> {
    let value = response.headers().get("grpc-status")?.to_str().ok()?;
    value.parse::<i32>().ok().map(Code::from)
}

/// Deletes expired idempotency records every few minutes until shutdown.
/// Runs beside the requests, never in their path.
async fn purge_expired_requests(store: CustomerStore, mut stopping: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PURGE_INTERVAL) => {}
            _ = stopping.changed() => return,
        }
        match store.purge_expired_requests().await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "purged expired idempotency records"),
            Err(error) => tracing::warn!(%error, "purging idempotency records failed"),
        }
    }
}
