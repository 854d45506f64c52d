//! What the benchmarks share: a database to measure against, and a client.

use customers::store::embedded::{EmbeddedPostgres, traversable_temp_dir};
use sqlx::PgPool;

/// A fresh database for a benchmark, `bench_<pid>`, on the server named by
/// DATABASE_URL, else on a private one started from the system's binaries
/// in a temporary folder. Keep it alive for the whole run, and end it with
/// [`BenchDatabase::remove`], which drops the database (it would stay on a
/// server of your own) and stops a private server.
pub struct BenchDatabase {
    /// The URL of the fresh database.
    pub url: String,
    name: String,
    admin: PgPool,
    embedded: Option<EmbeddedPostgres>,
    _dir: Option<tempfile::TempDir>,
}

impl BenchDatabase {
    pub async fn create() -> anyhow::Result<BenchDatabase> {
        let without_name = |url: &str| url[..url.rfind('/').unwrap_or(url.len())].to_owned();
        let (base_url, embedded, dir) = match std::env::var("DATABASE_URL") {
            Ok(url) => (without_name(&url), None, None),
            Err(_) => {
                let dir = traversable_temp_dir()?;
                let data_dir = dir.path().join("pgdata");
                let embedded =
                    tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&data_dir, None))
                        .await??;
                (without_name(embedded.url()), Some(embedded), Some(dir))
            }
        };
        let admin = PgPool::connect(&format!("{base_url}/postgres")).await?;
        let name = format!("bench_{}", std::process::id());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await?;
        Ok(BenchDatabase {
            url: format!("{base_url}/{name}"),
            name,
            admin,
            embedded,
            _dir: dir,
        })
    }

    /// Drops the database, ending connections still open to it, and stops
    /// a private server, the latter even when the former fails.
    pub async fn remove(self) -> anyhow::Result<()> {
        let dropped = sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&self.admin)
            .await;
        self.admin.close().await;
        if let Some(embedded) = self.embedded {
            tokio::task::spawn_blocking(move || embedded.stop()).await??;
        }
        dropped?;
        Ok(())
    }
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
