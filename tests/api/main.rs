//! Behaviour of the customer service through a real gRPC client, against a
//! real server and a real PostgreSQL.

mod create;
mod delete;
mod erasure;
mod get;
mod idempotency;
mod list;
mod operations;
mod resilience;
mod security;
mod sources;
mod support;
mod surface;
mod tls;
mod update;
