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
use tower::BoxError;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::load_shed::error::Overloaded;
use tower::util::MapResultLayer;

use crate::api::pb::customer_service_server::CustomerServiceServer;
use crate::api::{Authenticator, CustomerApi, PageTokens, error, pb};
use crate::config::{Config, KeysCommand};
use crate::store::embedded::EmbeddedPostgres;
use crate::store::{self, CustomerStore, KeyStore};

/// Largest response message. Larger ones would be refused by a client with
/// default settings.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// How often health is re-checked against the database.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// How often expired idempotency records are deleted.
const PURGE_INTERVAL: Duration = Duration::from_secs(600);
/// Name under which the customer service reports its health.
const SERVICE_NAME: &str = "customers.v1.CustomerService";

/// A server that is bound and migrated but not yet serving.
pub struct Application {
    listener: TcpListener,
    pool: PgPool,
    embedded: Option<EmbeddedPostgres>,
    max_request_bytes: usize,
    max_concurrent_calls: usize,
    tokens: PageTokens,
    auth: Arc<Authenticator>,
    tls: Option<ServerTlsConfig>,
}

impl Application {
    /// Starts the embedded PostgreSQL when no database URL is configured,
    /// opens the pool, applies migrations and binds the listen address.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let (url, embedded) = database(config).await?;
        let pool = store::connect(&url, &config.pool_settings()).context("invalid database URL")?;
        let prepared = async {
            store::migrate(&pool)
                .await
                .context("applying database migrations")?;
            if embedded.is_some() && !config.insecure_no_auth {
                quickstart_key(config, &pool)
                    .await
                    .context("creating the local API key")?;
            }
            TcpListener::bind(config.listen_addr)
                .await
                .with_context(|| format!("binding {}", config.listen_addr))
        };
        let listener = match prepared.await {
            Ok(listener) => listener,
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
        let tokens = PageTokens::new(&config.page_token_key());
        let tls = match tls_config(config) {
            Ok(tls) => tls,
            Err(error) => {
                stop_embedded(embedded).await;
                return Err(error);
            }
        };
        let auth = if config.insecure_no_auth {
            tracing::warn!(
                "AUTHENTICATION IS OFF (--insecure-no-auth): every caller acts for the test-mode \
                 account acct_default. Never run this way outside local experiments."
            );
            Authenticator::disabled()
        } else {
            let ttl = Duration::from_millis(config.api_key_cache_ms);
            Authenticator::with_keys(KeyStore::new(pool.clone()), ttl)
        };
        Ok(Self {
            listener,
            pool,
            embedded,
            max_request_bytes: config.max_request_bytes,
            max_concurrent_calls: config.max_concurrent_calls,
            tokens,
            auth: Arc::new(auth),
            tls,
        })
    }

    /// The bound address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes. Then health turns NOT_SERVING, new
    /// connections are refused, in-flight calls finish, and the embedded
    /// PostgreSQL (if any) is stopped last.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Application {
            listener,
            pool,
            embedded,
            max_request_bytes,
            max_concurrent_calls,
            tokens,
            auth,
            tls,
        } = self;
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let (stopping_tx, stopping_rx) = watch::channel(false);
        let monitor = tokio::spawn(watch_database(
            pool.clone(),
            reporter.clone(),
            stopping_rx.clone(),
        ));
        let purger = tokio::spawn(purge_expired_requests(
            CustomerStore::new(pool.clone()),
            stopping_rx,
        ));

        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;
        let customers = CustomerServiceServer::new(CustomerApi::new(
            CustomerStore::new(pool.clone()),
            tokens,
            auth,
        ))
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
            // Outermost first: contract statuses for what the layers below
            // refuse; refusal instead of queueing beyond the call limit.
            .layer(MapResultLayer::new(contract_errors))
            .layer(LoadShedLayer::new())
            .layer(GlobalConcurrencyLimitLayer::new(max_concurrent_calls))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
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
            })
            .await;

        let _ = monitor.await;
        let _ = purger.await;
        pool.close().await;
        stop_embedded(embedded).await;
        served.context("gRPC server failed")
    }
}

/// Applies the migrations and exits: the `migrate` subcommand, for
/// deployments that migrate once per rollout rather than at every start.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let (url, embedded) = tool_database(config).await?;
    let result = async {
        let pool = store::connect(&url, &config.pool_settings()).context("invalid database URL")?;
        store::migrate(&pool)
            .await
            .context("applying database migrations")?;
        pool.close().await;
        anyhow::Ok(())
    }
    .await;
    stop_embedded(embedded).await;
    tracing::info!("migrations applied");
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

/// Server reflection over everything this server speaks: both reflection
/// versions list every service (health included), and the google.rpc error
/// details are resolvable so that grpcurl can print them.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

/// Runs a `keys` subcommand, printing to stdout.
pub async fn manage_keys(config: &Config, command: &KeysCommand) -> anyhow::Result<()> {
    let (url, embedded) = tool_database(config).await?;
    let result = async {
        let pool = store::connect(&url, &config.pool_settings()).context("invalid database URL")?;
        store::migrate(&pool)
            .await
            .context("applying database migrations")?;
        let keys = KeyStore::new(pool.clone());
        match command {
            KeysCommand::Create { account, live } => {
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
        pool.close().await;
        anyhow::Ok(())
    }
    .await;
    stop_embedded(embedded).await;
    result
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
    let (text, record) = KeyStore::new(pool.clone())
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
async fn watch_database(
    pool: PgPool,
    reporter: HealthReporter,
    mut stopping: watch::Receiver<bool>,
) {
    let mut last = None;
    loop {
        let ping = sqlx::query("SELECT 1").execute(&pool);
        let up = matches!(tokio::time::timeout(HEALTH_INTERVAL, ping).await, Ok(Ok(_)));
        if *stopping.borrow() {
            return;
        }
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

/// Gives what the server's layers refuse the contract's statuses, each with
/// an ErrorInfo:
/// - a call beyond the concurrency limit: RESOURCE_EXHAUSTED, `OVERLOADED`;
/// - a request message over the size limit, which tonic refuses with
///   OUT_OF_RANGE before any handler runs: RESOURCE_EXHAUSTED,
///   `REQUEST_TOO_LARGE`. No handler of ours answers OUT_OF_RANGE, so the
///   rewrite cannot catch anything else.
fn contract_errors<B: Default>(
    result: Result<http::Response<B>, BoxError>,
) -> Result<http::Response<B>, BoxError> {
    match result {
        Err(error) if error.is::<Overloaded>() => Ok(error::status(
            Code::ResourceExhausted,
            "the server is at its limit of concurrent calls; retry with backoff",
            "OVERLOADED",
        )
        .into_http()),
        Ok(response) if is_status(&response, Code::OutOfRange) => Ok(error::status(
            Code::ResourceExhausted,
            "the request is larger than the server accepts",
            "REQUEST_TOO_LARGE",
        )
        .into_http()),
        other => other,
    }
}

fn is_status<B>(response: &http::Response<B>, code: Code) -> bool {
    let code = (code as i32).to_string();
    response
        .headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == code.as_bytes())
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
