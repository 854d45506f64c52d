//! Log output. Lines carry ids, codes and timings, never personal data.
//!
//! Every call runs in a span named `rpc` (see `api::observe`) with the
//! fields `method`, `request_id`, `customer_id`, `code` and `duration_ms`;
//! in the JSON format each line carries its spans' fields.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

/// Without `RUST_LOG`: `info`, except PostgreSQL's notices, which are
/// chatter such as "relation already exists, skipping" from the idempotent
/// migrations at every start.
const DEFAULT_FILTER: &str = "info,sqlx::postgres::notice=warn";

/// Installs the global subscriber, writing to stderr. The level comes from
/// `RUST_LOG`, else [`DEFAULT_FILTER`].
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Colours only for a terminal, not for files and pipes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    init_with(format, filter, std::io::stderr, ansi);
}

/// Installs the global subscriber with `filter`, writing to `writer`. A
/// second call (tests that start several servers) keeps the first.
pub fn init_with<W>(format: LogFormat, filter: EnvFilter, writer: W, ansi: bool)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}
