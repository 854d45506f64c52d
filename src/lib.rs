//! The customer service: a gRPC API over PostgreSQL for the customers of an
//! e-commerce platform.
//!
//! - [`api`]: the wire contract's handlers; turns messages into domain values
//!   and failures into statuses.
//! - [`domain`]: validated customer types and their rules, without I/O.
//! - [`store`]: PostgreSQL access, migrations, and the embedded server used
//!   when no database is configured.
//! - [`config`]: settings from flags and environment.
//! - [`startup`]: builds the server (database, migrations, listener) and runs
//!   it until shutdown.
//! - [`telemetry`]: log output; [`metrics`]: Prometheus metrics.

pub mod api;
pub mod config;
pub mod domain;
pub mod metrics;
pub mod startup;
pub mod store;
pub mod telemetry;
