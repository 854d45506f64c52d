//! Behaviour of the customer service through a real gRPC client, against a
//! real server and a real PostgreSQL.

mod create;
mod get;
mod support;
mod surface;
mod update;
