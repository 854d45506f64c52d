//! What the benchmarks share: a PostgreSQL to measure against.

use customers::store::embedded::{EmbeddedPostgres, traversable_temp_dir};

/// A PostgreSQL server for a benchmark: its URL without a database name,
/// and what to stop and delete afterwards when it was started here. Keep it
/// alive for the whole run: dropping it deletes the data directory.
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

/// A customer client that sends an API key with every call.
pub type Client = customers::api::pb::customer_service_client::CustomerServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

/// Adds `authorization: Bearer <key>` to every call.
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Bearer {
    /// The header for `key`.
    pub fn new(key: &str) -> anyhow::Result<Self> {
        Ok(Self(format!("Bearer {key}").parse()?))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}
