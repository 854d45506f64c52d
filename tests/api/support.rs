//! A real server over a real PostgreSQL for every test.
//!
//! One PostgreSQL per test process, started from the system's binaries in a
//! temporary directory (as an unprivileged user when the tests run as root);
//! each test gets a fresh database in it and its own server on port 0.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;

use std::sync::OnceLock;

use customers::api::pb::customer_service_client::CustomerServiceClient;
use customers::api::pb::{self, CreateCustomerRequest};
use customers::config::Config;
use customers::startup::Application;
use customers::store::KeyStore;
use customers::store::embedded::{EmbeddedPostgres, traversable_temp_dir};
use sqlx::PgPool;
use tokio::sync::oneshot;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The shared server: its URL without a database name, and its data folder.
struct SharedPostgres {
    base_url: String,
}

static POSTGRES: OnceLock<SharedPostgres> = OnceLock::new();

/// Starts the process-wide PostgreSQL on first use. A watchdog shell stops
/// it (immediate mode) and deletes its folder once this process exits, since
/// Rust runs no destructors for statics.
fn shared_postgres() -> &'static SharedPostgres {
    POSTGRES.get_or_init(|| {
        let root = traversable_temp_dir().unwrap().keep();
        let data_dir = root.join("pgdata");
        let server =
            EmbeddedPostgres::start(&data_dir, None).expect("starting the test PostgreSQL");
        spawn_watchdog(&root, &data_dir);
        let url = server.url();
        let base_url = url[..url.rfind('/').unwrap()].to_owned();
        std::mem::forget(server);
        SharedPostgres { base_url }
    })
}

// The watchdog must outlive this process, so it is never waited for.
#[allow(clippy::zombie_processes)]
fn spawn_watchdog(root: &std::path::Path, data_dir: &std::path::Path) {
    let script = format!(
        "trap '' HUP INT TERM; while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
         kill -QUIT $(head -n 1 '{data}/postmaster.pid') 2>/dev/null; sleep 1; rm -rf '{root}'",
        pid = std::process::id(),
        data = data_dir.display(),
        root = root.display(),
    );
    // A process group of its own, ignoring the signals a killed test run
    // sends its group, so that it outlives whatever ends the test process.
    std::process::Command::new("sh")
        .args(["-c", &script])
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting the PostgreSQL watchdog");
}

/// A fresh, empty database on the shared server; returns its URL.
pub async fn fresh_database() -> String {
    let base = &shared_postgres().base_url;
    let admin = PgPool::connect(&format!("{base}/postgres")).await.unwrap();
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    format!("{base}/{name}")
}

/// A customer service client that sends an API key with every call.
pub type Client = CustomerServiceClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <key>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A client on `channel` that authenticates with `key`.
pub fn client_with_key(channel: Channel, key: &str) -> Client {
    let value = format!("Bearer {key}").parse().expect("keys are ASCII");
    CustomerServiceClient::with_interceptor(channel, Bearer(value))
}

/// Creates an API key in the database behind `db`; returns its text.
pub async fn issue_key(db: &PgPool, account: &str, live_mode: bool) -> String {
    KeyStore::new(db.clone(), std::time::Duration::from_secs(5))
        .create(account, live_mode)
        .await
        .unwrap()
        .0
}

/// A server running inside the test process until [`RunningServer::stop`].
pub struct RunningServer {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl RunningServer {
    /// Builds the server on `config` and starts serving.
    pub async fn start(config: &Config) -> anyhow::Result<RunningServer> {
        let app = Application::build(config).await?;
        let (addr, metrics_addr) = (app.local_addr(), app.metrics_addr());
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async {
            let _ = rx.await;
        }));
        Ok(RunningServer {
            addr,
            metrics_addr,
            shutdown: Some(tx),
            server: Some(server),
        })
    }

    /// A new plaintext connection to the server.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Signals shutdown and waits until the server has stopped.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.server.take() {
            Some(server) => server.await.unwrap(),
            None => Ok(()),
        }
    }
}

/// Settings for the embedded default, with its data directory in `root`.
pub fn embedded_config(root: &std::path::Path) -> Config {
    let mut config = Config::for_database("unused", "127.0.0.1:0".parse().unwrap());
    config.database_url = None;
    config.data_dir = Some(root.join("pgdata"));
    config
}

/// A client with the key the embedded default wrote on its first start.
pub async fn quickstart_client(server: &RunningServer, config: &Config) -> Client {
    let key = std::fs::read_to_string(config.quickstart_key_file())
        .expect("the quickstart key was written");
    client_with_key(server.channel().await, key.trim())
}

/// A running server and what a test needs to talk to it and look behind it.
pub struct TestApp {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// Acts for the test-mode default account.
    pub client: Client,
    /// A direct connection to the service's database, to check rows.
    pub db: PgPool,
    pub database_url: String,
    server: RunningServer,
}

impl TestApp {
    /// A server with default settings over a fresh database.
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// A server whose settings `adjust` changes first.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
        let database_url = fresh_database().await;
        let mut config = Config::for_database(&database_url, "127.0.0.1:0".parse().unwrap());
        adjust(&mut config);
        let server = RunningServer::start(&config)
            .await
            .expect("building the server");
        let db = PgPool::connect(&database_url).await.unwrap();
        let key = issue_key(&db, "acct_default", false).await;
        TestApp {
            addr: server.addr,
            metrics_addr: server.metrics_addr,
            client: client_with_key(server.channel().await, &key),
            db,
            database_url,
            server,
        }
    }

    /// A client acting for `account` in the given mode, with a new key.
    pub async fn client_for(&self, account: &str, live_mode: bool) -> Client {
        let key = issue_key(&self.db, account, live_mode).await;
        client_with_key(self.channel().await, &key)
    }

    /// A new connection to the server.
    pub async fn channel(&self) -> Channel {
        self.server.channel().await
    }

    /// Signals shutdown and waits until the server has stopped.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.server.stop().await
    }

    /// Creates `customer` and returns the stored result.
    pub async fn create(&self, customer: pb::Customer) -> pb::Customer {
        self.client
            .clone()
            .create_customer(CreateCustomerRequest {
                customer: Some(customer),
                request_id: String::new(),
            })
            .await
            .expect("create succeeds")
            .into_inner()
    }

    /// Runs `insert`, which writes customers straight to their table, and
    /// refreshes that table's statistics: for tests of query plans, which
    /// on a near-empty table prove nothing.
    pub async fn insert_customers_and_analyze(&self, insert: &str) {
        sqlx::query(insert).execute(&self.db).await.unwrap();
        sqlx::query("ANALYZE customers")
            .execute(&self.db)
            .await
            .unwrap();
    }

    /// How many customers the database holds.
    pub async fn customer_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM customers")
            .fetch_one(&self.db)
            .await
            .unwrap()
    }
}

/// Calls held in flight: `count` updates of one customer that wait on its
/// row lock, which the test holds until it commits the returned
/// transaction.
pub struct BlockedUpdates {
    pub lock: sqlx::Transaction<'static, sqlx::Postgres>,
    pub calls: Vec<tokio::task::JoinHandle<Result<tonic::Response<pb::Customer>, Status>>>,
}

impl TestApp {
    /// Creates customer `id`, locks its row, and starts `count` updates of
    /// it (each setting metadata `k<i>`) that wait on the lock. Returns once
    /// they have had time to reach the database.
    pub async fn blocked_updates(&self, id: &str, count: usize) -> BlockedUpdates {
        self.create(pb::Customer {
            id: id.into(),
            ..Default::default()
        })
        .await;
        let mut lock = self.db.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM customers WHERE id = $1 FOR UPDATE")
            .bind(id)
            .execute(&mut *lock)
            .await
            .unwrap();
        let calls = (0..count)
            .map(|i| {
                let mut client = self.client.clone();
                let customer = pb::Customer {
                    id: id.into(),
                    metadata: [(format!("k{i}"), "v".to_owned())].into(),
                    ..Default::default()
                };
                let mask = prost_types::FieldMask {
                    paths: vec![format!("metadata.k{i}")],
                };
                tokio::spawn(async move {
                    let request = pb::UpdateCustomerRequest {
                        customer: Some(customer),
                        update_mask: Some(mask),
                    };
                    client.update_customer(request).await
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        BlockedUpdates { lock, calls }
    }
}

/// The (field, reason) pairs of a status's BadRequest, in order.
pub fn violations(status: &Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.reason))
                .collect()
        })
        .unwrap_or_default()
}

/// The ErrorInfo reason of a status, checking its domain.
pub fn reason(status: &Status) -> String {
    let info = status
        .get_details_error_info()
        .expect("every error carries ErrorInfo");
    assert_eq!(info.domain, "customers.v1");
    info.reason
}

/// Asserts the code and ErrorInfo reason of an error.
#[track_caller]
pub fn assert_error(status: &Status, code: Code, expected_reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason(status), expected_reason, "{status:?}");
}

/// A customer with every writable field set to distinctive, valid values.
pub fn full_customer(id: &str) -> pb::Customer {
    pb::Customer {
        id: id.to_owned(),
        email: Some("Hanako.Yamada@example.jp".to_owned()),
        shipping: Some(pb::Shipping {
            name: Some("山田 花子".to_owned()),
            phone: Some("+81 3-1234-5678".to_owned()),
            email: Some("shipping@example.jp".to_owned()),
            organization: Some("株式会社みなと".to_owned()),
            address: Some(pb::Address {
                line1: Some("千代田1-1".to_owned()),
                line2: Some("3F".to_owned()),
                city: Some("千代田区".to_owned()),
                postal_code: Some("100-0001".to_owned()),
                state: Some("東京都".to_owned()),
                country: Some("JP".to_owned()),
            }),
            additional_address_info: Some(pb::AdditionalAddressInfo {
                neighborhood: Some("丸の内".to_owned()),
                division: Some("千代田".to_owned()),
                phonetic_name: Some("ヤマダ ハナコ".to_owned()),
            }),
        }),
        default_source_id: None,
        sources: vec![],
        tax_identifiers: vec![
            pb::TaxIdentifier {
                r#type: "jp_cn".to_owned(),
                value: "1234567890123".to_owned(),
            },
            pb::TaxIdentifier {
                r#type: "eu_vat".to_owned(),
                value: "de 123.456-788".to_owned(),
            },
        ],
        locale: Some("ja_JP".to_owned()),
        r#type: pb::CustomerType::Business as i32,
        enabled: Some(false),
        request_to_be_forgotten: None,
        metadata: [
            ("crm".to_owned(), "42".to_owned()),
            ("tier".to_owned(), "gold".to_owned()),
        ]
        .into(),
        live_mode: false,
        create_time: None,
        update_time: None,
        etag: String::new(),
    }
}

/// Sets `customer`'s email and every shipping text field from `values`, in
/// field order (email, name, phone, shipping email, organization, line1,
/// line2, city, postal code, state, neighborhood, division, phonetic name),
/// with country GB. For tests that look for these values afterwards.
pub fn with_personal_values(mut customer: pb::Customer, values: &[&str; 13]) -> pb::Customer {
    let v = |i: usize| Some(values[i].to_owned());
    customer.email = v(0);
    customer.shipping = Some(pb::Shipping {
        name: v(1),
        phone: v(2),
        email: v(3),
        organization: v(4),
        address: Some(pb::Address {
            line1: v(5),
            line2: v(6),
            city: v(7),
            postal_code: v(8),
            state: v(9),
            country: Some("GB".into()),
        }),
        additional_address_info: Some(pb::AdditionalAddressInfo {
            neighborhood: v(10),
            division: v(11),
            phonetic_name: v(12),
        }),
    });
    customer
}

impl TestApp {
    /// The body of the server's `GET /metrics`.
    pub async fn scrape_metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.metrics_addr)
            .await
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response
    }

    /// The `customers_grpc_calls_total` samples of `method` from the code
    /// on (`"Ok"} 2`), sorted, once `count` calls of it have been observed
    /// (or after 5 s, to fail the test).
    pub async fn calls_by_code(&self, method: &str, count: u32) -> Vec<String> {
        let finished = format!(
            "customers_grpc_call_duration_seconds_count{{\
             grpc_service=\"customers.v1.CustomerService\",grpc_method=\"{method}\"}}"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let metrics = loop {
            let metrics = self.scrape_metrics().await;
            if sample(&metrics, &finished) == Some(f64::from(count))
                || std::time::Instant::now() > deadline
            {
                break metrics;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        let method = format!("grpc_method=\"{method}\"");
        let mut codes: Vec<String> = metrics
            .lines()
            .filter(|l| l.starts_with("customers_grpc_calls_total") && l.contains(&method))
            .map(|l| {
                l.split_once("grpc_code=")
                    .map_or(l, |(_, code)| code)
                    .to_owned()
            })
            .collect();
        codes.sort();
        codes
    }
}

/// The value of the sample whose line starts with `series`.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
