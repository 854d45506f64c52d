//! What the benchmarks share: a PostgreSQL to measure against.

use customers::store::embedded::{EmbeddedPostgres, traversable_temp_dir};

/// A PostgreSQL server for a benchmark: its URL without a database name,
/// and what to stop and delete afterwards when it was started here.
pub struct BenchDatabase {
    pub base_url: String,
    pub embedded: Option<EmbeddedPostgres>,
    _dir: Option<tempfile::TempDir>,
}

/// The server named by DATABASE_URL, else a private one started from the
/// system's binaries in a temporary folder.
pub async fn database() -> anyhow::Result<BenchDatabase> {
    let without_name = |url: &str| url[..url.rfind('/').unwrap_or(url.len())].to_owned();
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return Ok(BenchDatabase {
            base_url: without_name(&url),
            embedded: None,
            _dir: None,
        });
    }
    let dir = traversable_temp_dir()?;
    let data_dir = dir.path().join("pgdata");
    let embedded =
        tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&data_dir, None)).await??;
    Ok(BenchDatabase {
        base_url: without_name(embedded.url()),
        embedded: Some(embedded),
        _dir: Some(dir),
    })
}
