//! Settings, each a command-line flag and an environment variable.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::store::PoolSettings;

/// Command line of the `customer-service` binary.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "gRPC service for the customers of an e-commerce platform"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

/// What to do; `serve` when none is given.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the gRPC server (the default).
    Serve,
    /// Apply the database migrations, then exit.
    Migrate,
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// API key management.
#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it; it is shown this once and stored only as
    /// a hash.
    Create {
        /// The account the key acts for.
        #[arg(long, default_value = "acct_default")]
        account: String,
        /// A live-mode key (`sk_live_…`); test mode (`sk_test_…`) otherwise.
        #[arg(long)]
        live: bool,
    },
    /// List keys (ids, accounts, modes, dates; never secrets).
    List,
    /// Revoke a key by its id (the hex part after `sk_test_` / `sk_live_`).
    Revoke {
        /// The key's id.
        id: String,
    },
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, for terminals.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Every setting of the service.
#[derive(Clone, Args)]
pub struct Config {
    /// Address the gRPC server listens on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub listen_addr: SocketAddr,

    /// PostgreSQL URL. Without it, the service runs its own PostgreSQL from
    /// the system's binaries in --data-dir.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Data directory of the embedded PostgreSQL [default:
    /// $XDG_DATA_HOME/customer-service/postgres, or
    /// ~/.local/share/customer-service/postgres; as root
    /// /var/lib/customer-service/postgres].
    #[arg(long, env = "DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Folder with initdb and pg_ctl [default: found on PATH, else the
    /// newest /usr/lib/postgresql/*/bin].
    #[arg(long, env = "POSTGRES_BIN_DIR")]
    pub postgres_bin_dir: Option<PathBuf>,

    /// Largest accepted request message, in bytes; larger ones are
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "MAX_REQUEST_BYTES", default_value_t = 1024 * 1024)]
    pub max_request_bytes: usize,

    /// Threads that run the server. With one (the default) every task runs
    /// on a single thread, so the replies that one database batch releases
    /// leave in one write per connection; more threads use tokio's
    /// work-stealing scheduler, which suits CPU-heavy loads such as large
    /// list pages better but writes each reply on its own.
    #[arg(long, env = "WORKER_THREADS", default_value_t = 1, value_parser = at_least_one)]
    pub worker_threads: usize,

    /// Most customer-service calls served at once, counted from when a
    /// call's request has arrived whole and its API key was accepted;
    /// beyond it calls are refused at once with RESOURCE_EXHAUSTED (reason
    /// OVERLOADED) instead of queueing.
    /// Health and reflection calls are not counted.
    #[arg(long, env = "MAX_CONCURRENT_CALLS", default_value_t = 64, value_parser = at_least_one)]
    pub max_concurrent_calls: usize,

    /// Most open database connections.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub db_max_connections: u32,

    /// How long a call waits for a free database connection before it
    /// fails with UNAVAILABLE, in milliseconds.
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT_MS", default_value_t = 2000)]
    pub db_acquire_timeout_ms: u64,

    /// Longest a single SQL statement may run, in milliseconds.
    #[arg(long, env = "DB_STATEMENT_TIMEOUT_MS", default_value_t = 5000)]
    pub db_statement_timeout_ms: u64,

    /// Secret that signs ListCustomers page tokens; every replica needs the
    /// same one. Unset: a random key per process, so tokens do not survive
    /// a restart.
    #[arg(long, env = "PAGE_TOKEN_KEY", hide_env_values = true, value_parser = signing_key)]
    pub page_token_key: Option<String>,

    /// Serve without API keys: every call acts for the default test-mode
    /// account. For local experiments only; logged loudly at start.
    #[arg(long, env = "INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// How long a looked-up API key is trusted before it is read again, in
    /// milliseconds; a revocation takes effect within this time.
    #[arg(long, env = "API_KEY_CACHE_MS", default_value_t = 5000)]
    pub api_key_cache_ms: u64,

    /// PEM certificate chain to serve TLS with (needs --tls-key). Without
    /// it the server speaks plaintext gRPC.
    #[arg(long, env = "TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM certificate(s) of the authorities whose client certificates are
    /// accepted; with it, every client must present one (mutual TLS).
    #[arg(long, env = "TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Address of the Prometheus metrics endpoint (`GET /metrics`).
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,

    /// How long shutdown waits for in-flight calls and open streams before
    /// it closes them, in milliseconds.
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 15000)]
    pub shutdown_grace_ms: u64,

    /// Log line format. The level comes from RUST_LOG (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// A count that must be at least one.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(error) => Err(error.to_string()),
    }
}

/// A signing key long enough to be a secret (32 bytes or more).
fn signing_key(text: &str) -> Result<String, String> {
    if text.len() < 32 {
        return Err("must be at least 32 bytes, e.g. `openssl rand -base64 32`".to_owned());
    }
    Ok(text.to_owned())
}

impl Config {
    /// The embedded PostgreSQL's data directory.
    pub fn data_dir(&self) -> PathBuf {
        if let Some(dir) = &self.data_dir {
            // Absolute, because PostgreSQL's tools run from another directory.
            return std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
        }
        if nix::unistd::Uid::effective().is_root() {
            return PathBuf::from("/var/lib/customer-service/postgres");
        }
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share"))
            })
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("customer-service/postgres")
    }

    /// Where the embedded setup keeps the test-mode key it creates on first
    /// start: beside the data directory.
    pub fn quickstart_key_file(&self) -> PathBuf {
        let data_dir = self.data_dir();
        data_dir
            .parent()
            .map(|p| p.join("api-key"))
            .unwrap_or_else(|| PathBuf::from("api-key"))
    }

    /// Connection pool settings.
    pub fn pool_settings(&self) -> PoolSettings {
        PoolSettings {
            max_connections: self.db_max_connections,
            acquire_timeout: Duration::from_millis(self.db_acquire_timeout_ms),
            statement_timeout: Duration::from_millis(self.db_statement_timeout_ms),
        }
    }

    /// The key that signs page tokens.
    pub fn page_token_key(&self) -> Vec<u8> {
        match &self.page_token_key {
            Some(key) => key.as_bytes().to_vec(),
            None => rand::random::<[u8; 32]>().to_vec(),
        }
    }

    /// Settings for a server on `listen_addr` over `database_url`, everything
    /// else at its default. Used by tests and benchmarks.
    pub fn for_database(database_url: &str, listen_addr: SocketAddr) -> Self {
        let mut config = Cli::parse_from(["customer-service"]).config;
        config.database_url = Some(database_url.to_owned());
        config.listen_addr = listen_addr;
        config.metrics_addr = SocketAddr::new(listen_addr.ip(), 0);
        config
    }
}

impl fmt::Debug for Config {
    /// Like a derived Debug, but the database URL (which may hold a
    /// password) is shown only as set or unset.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen_addr", &self.listen_addr)
            .field(
                "database_url",
                &self.database_url.as_ref().map(|_| "<redacted>"),
            )
            .field("data_dir", &self.data_dir)
            .field("postgres_bin_dir", &self.postgres_bin_dir)
            .field("worker_threads", &self.worker_threads)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("max_concurrent_calls", &self.max_concurrent_calls)
            .field("db_max_connections", &self.db_max_connections)
            .field("db_acquire_timeout_ms", &self.db_acquire_timeout_ms)
            .field("db_statement_timeout_ms", &self.db_statement_timeout_ms)
            .field(
                "page_token_key",
                &self.page_token_key.as_ref().map(|_| "<redacted>"),
            )
            .field("insecure_no_auth", &self.insecure_no_auth)
            .field("api_key_cache_ms", &self.api_key_cache_ms)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tls_client_ca", &self.tls_client_ca)
            .field("metrics_addr", &self.metrics_addr)
            .field("shutdown_grace_ms", &self.shutdown_grace_ms)
            .field("log_format", &self.log_format)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_database_password() {
        let config =
            Config::for_database("postgres://u:hunter2@db/x", "127.0.0.1:0".parse().unwrap());
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn a_tls_certificate_needs_its_key() {
        let only_cert = Cli::try_parse_from(["customer-service", "--tls-cert", "c.pem"]);
        let only_ca = Cli::try_parse_from(["customer-service", "--tls-client-ca", "ca.pem"]);
        let both = Cli::try_parse_from([
            "customer-service",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ]);
        assert!(only_cert.is_err() && only_ca.is_err());
        assert!(both.is_ok());
    }

    #[test]
    fn zero_limits_and_short_signing_keys_are_refused() {
        for args in [
            &["customer-service", "--db-max-connections", "0"][..],
            &["customer-service", "--max-concurrent-calls", "0"],
            &["customer-service", "--worker-threads", "0"],
            &["customer-service", "--page-token-key", "short"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn defaults_listen_on_loopback_port_50051() {
        let cli = Cli::try_parse_from(["customer-service"]).unwrap();
        assert_eq!(cli.config.listen_addr, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(cli.config.max_request_bytes, 1 << 20);
        assert_eq!(cli.config.worker_threads, 1);
    }
}
