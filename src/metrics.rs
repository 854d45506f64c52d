//! Prometheus metrics, served as text on a port of their own.
//!
//! Each server has its own registry (no process-wide state), so several
//! servers in one process, as in the tests, count separately.

use std::sync::Arc;

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sqlx::PgPool;

/// Labels of a finished call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    grpc_service: String,
    grpc_method: String,
    grpc_code: String,
}

/// Labels of a latency observation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    grpc_service: String,
    grpc_method: String,
}

type LatencyFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

/// The service's metrics.
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    latency: LatencyFamily,
    pool_connections: Gauge,
    pool_idle: Gauge,
    database_up: Gauge,
    pool: PgPool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// Latency buckets in seconds: 0.25 ms to about 4 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

impl Metrics {
    /// Metrics of a server over `pool`; `embedded` says whether it runs its
    /// own PostgreSQL.
    pub fn new(pool: PgPool, max_connections: u32, embedded: bool) -> Arc<Self> {
        let mut registry = Registry::with_prefix("customers");
        let calls = Family::<CallLabels, Counter>::default();
        let latency = LatencyFamily::new_with_constructor(latency_histogram);
        let pool_connections: Gauge = Gauge::default();
        let pool_idle: Gauge = Gauge::default();
        let pool_max: Gauge = Gauge::default();
        let database_up: Gauge = Gauge::default();
        let embedded_database: Gauge = Gauge::default();
        registry.register(
            "grpc_calls",
            "Finished gRPC calls by method and status code",
            calls.clone(),
        );
        registry.register(
            "grpc_call_duration_seconds",
            "Time to answer a gRPC call",
            latency.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Open database connections",
            pool_connections.clone(),
        );
        registry.register(
            "db_pool_idle_connections",
            "Idle database connections",
            pool_idle.clone(),
        );
        registry.register(
            "db_pool_max_connections",
            "Most database connections the pool opens",
            pool_max.clone(),
        );
        registry.register(
            "database_up",
            "1 while the database answers the health check",
            database_up.clone(),
        );
        registry.register(
            "embedded_postgres",
            "1 when the service runs its own PostgreSQL, 0 when it uses DATABASE_URL",
            embedded_database.clone(),
        );
        pool_max.set(i64::from(max_connections));
        embedded_database.set(i64::from(embedded));
        Arc::new(Self {
            registry,
            calls,
            latency,
            pool_connections,
            pool_idle,
            database_up,
            pool,
        })
    }

    /// Counts a finished call.
    pub fn observe_call(&self, service: &str, method: &str, code: tonic::Code, elapsed: Duration) {
        let (grpc_service, grpc_method) = (service.to_owned(), method.to_owned());
        let labels = CallLabels {
            grpc_service: grpc_service.clone(),
            grpc_method: grpc_method.clone(),
            grpc_code: format!("{code:?}"),
        };
        self.calls.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&MethodLabels {
                grpc_service,
                grpc_method,
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Records whether the database answered the latest health check.
    pub fn set_database_up(&self, up: bool) {
        self.database_up.set(i64::from(up));
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let size = i64::from(self.pool.size());
        self.pool_connections.set(size);
        self.pool_idle.set(self.pool.num_idle() as i64);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}
