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

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
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

/// How long the service waits for PostgreSQL to finish a unit of work (a
/// batch, or a call's statements on a pooled connection) before it gives
/// up with UNAVAILABLE. Longer than the statement timeout, so that the
/// server's own timeout, which rolls back cleanly, normally fires first;
/// this bound is for a server that has gone silent and answers nothing.
fn answer_limit(pool: &PgPool, statement_timeout: Duration) -> Duration {
    statement_timeout + pool.options().get_acquire_timeout()
}

/// `work`, or UNAVAILABLE if it has not finished within `limit`.
async fn within<T>(
    limit: Duration,
    work: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        let silent = std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "PostgreSQL did not answer in time",
        );
        Err(StoreError::from(sqlx::Error::Io(silent)))
    })
}

/// The request pool, with a bound on how long a call's statements may go
/// unanswered (the answer limit).
#[derive(Debug, Clone)]
struct BoundedPool {
    pool: PgPool,
    answer_limit: Duration,
}

impl BoundedPool {
    /// `pool`, whose connections end statements after `statement_timeout`.
    fn new(pool: PgPool, statement_timeout: Duration) -> Self {
        Self {
            answer_limit: answer_limit(&pool, statement_timeout),
            pool,
        }
    }

    /// Runs `work` on a connection from the pool, and fails it with
    /// UNAVAILABLE once it has waited longer than the answer limit for a
    /// server that went silent. That connection is then closed, not
    /// returned: its state is unknown, and the pool's check on return would
    /// wait on the silent server too. A transaction left open is rolled
    /// back by the server when the connection ends.
    ///
    /// A call dropped mid-statement (its caller went away, or its deadline
    /// passed) does return its connection, and the pool's check waits for
    /// the abandoned statement. Closing it would free the pool's slot while
    /// the server kept the session until it noticed, so a storm of dropped
    /// calls could take every connection the server allows.
    async fn run<T>(
        &self,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut connection = self.pool.acquire().await?;
        let outcome = within(self.answer_limit, work(&mut connection)).await;
        if let Err(StoreError::Unavailable(_)) = outcome {
            connection.close_on_drop();
        }
        outcome
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
