//! PostgreSQL: the connection pool, migrations, and the SQL for customers.
//!
//! Every statement names the owning account and mode in its `WHERE` clause;
//! there is no query that crosses accounts.

mod api_keys;
mod batch;
mod customers;
pub mod embedded;
mod lane;
mod reads;

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

pub use api_keys::{ApiKeyRecord, KeyStore};
pub use customers::CustomerStore;

use crate::domain::CustomerError;

/// Why a store operation failed. Cloneable, because one failed batch
/// answers every call in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A rule of the domain refused the operation.
    #[error(transparent)]
    Rejected(#[from] CustomerError),
    /// The database could not be reached or is overloaded; the operation
    /// did not commit (or its outcome is unknown) and may be retried.
    #[error("database unavailable")]
    Unavailable(#[source] Arc<sqlx::Error>),
    /// Anything else: a bug, or data that breaks an invariant.
    #[error("database error")]
    Internal(#[source] Arc<sqlx::Error>),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if is_transient(&error) {
            StoreError::Unavailable(Arc::new(error))
        } else {
            StoreError::Internal(Arc::new(error))
        }
    }
}

/// Whether retrying later may succeed: connection trouble, an exhausted
/// pool, a server shutting down or short of resources, a statement timeout.
/// Decided by SQLSTATE class, never by message text.
fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception, 53: insufficient resources,
            // 57: operator intervention (shutdown, statement timeout),
            // 40: serialization failure or deadlock.
            ["08", "53", "57", "40"]
                .iter()
                .any(|class| code.starts_with(class))
        }),
        _ => false,
    }
}

/// How to reach PostgreSQL and how hard to lean on it.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub statement_timeout: Duration,
}

/// Opens a pool to `url`. Connections are made lazily, so the service starts
/// (and reports NOT_SERVING) while the database is still down.
///
/// Known gap: statements on pooled connections are bounded only by the
/// server's own statement timeout, so a server that goes silent in the
/// middle of one holds the call until the client's deadline. (The batch
/// workers bound theirs; see `lane`.)
pub fn connect(url: &str, settings: &PoolSettings) -> Result<PgPool, sqlx::Error> {
    let timeout_ms = settings.statement_timeout.as_millis().to_string();
    let options: PgConnectOptions = url
        .parse::<PgConnectOptions>()?
        .options([("statement_timeout", timeout_ms.as_str())])
        .log_statements(log::LevelFilter::Off)
        .log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(1));
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        // A ping before each checkout costs a round trip but keeps the
        // calls after a database restart from failing on connections that
        // died with it. The batched creates and gets do not pay it: they
        // run on connections of their own (see `lane`).
        .test_before_acquire(true)
        .connect_lazy_with(options))
}

/// Applies the migrations in `migrations/`, which are compiled in.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("./migrations").run(pool).await
}
