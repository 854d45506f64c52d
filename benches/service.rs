//! The service against PostgreSQL's own limit, in one run.
//!
//! Starts the release server as a process of its own (so its memory can be
//! read), runs pgbench with the same INSERT and primary-key SELECT the
//! service executes, then drives the real gRPC client: a health check as
//! the framework's ceiling ("echo"), CreateCustomer, GetCustomer,
//! UpdateCustomer and ListCustomers at 1, 8, 32 and 128 concurrent callers.
//! It prints throughput, latency percentiles, each RPC's ratio to its
//! pgbench twin, p99 of creates at half their peak rate, the server's peak
//! RSS (also under 1 000 concurrent streams) and the time from start to
//! SERVING, each beside its target.
//!
//! Run: `cargo bench --bench service` (DATABASE_URL, when set, names the
//! server to use; else a private PostgreSQL starts in a temporary folder).
//! `BENCH_SECONDS` sets the length of each step (default 4).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use customers::api::pb::customer_service_client::CustomerServiceClient;
use customers::api::pb::{self, CreateCustomerRequest, GetCustomerRequest, ListCustomersRequest};
use customers::store::KeyStore;
use prost_types::FieldMask;
use sqlx::PgPool;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use common::{Bearer, Client};

// The load generator shares the cores with the service and PostgreSQL, so
// it allocates as cheaply as the service does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LEVELS: [usize; 4] = [1, 8, 32, 128];
/// Customers stored before the read benchmarks.
const STORED: i64 = 10_000;
/// Most pgbench connections; the 128-caller twin runs with this many.
const PGBENCH_MAX_CLIENTS: usize = 64;
/// HTTP/2 connections the load is spread over.
const CONNECTIONS: usize = 8;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Rpc {
    Echo,
    Create,
    Get,
    Update,
    List,
}

impl Rpc {
    fn parse(name: &str) -> Option<Rpc> {
        [Rpc::Echo, Rpc::Create, Rpc::Get, Rpc::Update, Rpc::List]
            .into_iter()
            .find(|rpc| format!("{rpc:?}").eq_ignore_ascii_case(name))
    }
}

/// Throughput and latency of one step.
struct Figures {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    errors: usize,
}

// One thread, like the server: the callers woken by one read of a
// connection then send their next calls in one write, where a
// work-stealing runtime writes each on its own (a loopback write costs
// both processes a few microseconds).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    // Read before anything starts, so that a typo leaves nothing behind.
    let only = match std::env::var("BENCH_ONLY") {
        Ok(steps) => Some(parse_steps(&steps)?),
        Err(_) => None,
    };
    let database = common::BenchDatabase::create().await?;
    let outcome = measure(&database.url, seconds, only).await;
    // Whatever happened, the database goes and a private server stops.
    let removed = database.remove().await;
    outcome.and(removed)
}

/// `rpc:callers[,rpc:callers…]`, as in `create:128,get:32`.
fn parse_steps(text: &str) -> anyhow::Result<Vec<(Rpc, usize)>> {
    text.split(',')
        .map(|step| {
            step.split_once(':')
                .and_then(|(rpc, callers)| Some((Rpc::parse(rpc)?, callers.parse().ok()?)))
                .filter(|(_, callers)| *callers > 0)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "BENCH_ONLY wants rpc:callers[,rpc:callers…] with rpc one of echo, \
                         create, get, update, list, as in get:32; got {step:?}"
                    )
                })
        })
        .collect()
}

/// The whole benchmark on the database at `url`, or only the `only` steps.
async fn measure(url: &str, seconds: u64, only: Option<Vec<(Rpc, usize)>>) -> anyhow::Result<()> {
    let step = Duration::from_secs(seconds);
    // A first start migrates the empty database; the timed one finds it
    // migrated, as a restarted service would.
    let mut server = Server::start(url).await?;
    server.stop().await;
    let mut server = Server::start(url).await?;
    let db = PgPool::connect(url).await?;
    let key = KeyStore::new(db.clone(), std::time::Duration::from_secs(5))
        .create("acct_default", false)
        .await?
        .0;
    fill(&db).await?;

    println!(
        "customer-service benchmark: {} cores, {seconds} s per step",
        num_cpus()
    );
    println!(
        "start to SERVING: {:.0} ms (target <= 1000 ms)",
        server.ready_in.as_secs_f64() * 1000.0
    );

    let clients = connect(server.addr, &key).await?;
    let mut quiet = Settle::new();
    // BENCH_ONLY=get:32 (for a profiler, say) runs that one step and stops;
    // BENCH_ONLY=create:128,get:32 runs those steps in that order.
    if let Some(steps) = only {
        println!("server pid {}", server.child.id());
        for (rpc, callers) in steps {
            quiet.settle(&db).await;
            let f = drive(&clients, rpc, callers, step, None).await;
            println!(
                "{rpc:?} at {callers}: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                f.per_second,
                ms(f.p50),
                ms(f.p99),
                f.errors
            );
        }
        drop(clients);
        server.stop().await;
        db.close().await;
        return Ok(());
    }
    let pgbench = PgBench::new(url)?;
    let mut reference: HashMap<(&str, usize), f64> = HashMap::new();
    for &callers in &LEVELS {
        for script in ["insert", "select"] {
            quiet.settle(&db).await;
            reference.insert((script, callers), pgbench.run(script, callers, seconds)?);
        }
    }

    let mut results: HashMap<(Rpc, usize), Figures> = HashMap::new();
    for rpc in [Rpc::Echo, Rpc::Create, Rpc::Get, Rpc::Update, Rpc::List] {
        for &callers in &LEVELS {
            quiet.settle(&db).await;
            results.insert(
                (rpc, callers),
                drive(&clients, rpc, callers, step, None).await,
            );
        }
    }

    println!();
    println!(
        "{:<8} {:>7} {:>10} {:>9} {:>9} {:>9} {:>7} {:>12} {:>7}",
        "rpc", "callers", "calls/s", "p50 ms", "p99 ms", "p999 ms", "errors", "pgbench/s", "ratio"
    );
    for rpc in [Rpc::Echo, Rpc::Create, Rpc::Get, Rpc::Update, Rpc::List] {
        for &callers in &LEVELS {
            let f = &results[&(rpc, callers)];
            let twin = match rpc {
                Rpc::Create => reference.get(&("insert", callers)),
                Rpc::Get => reference.get(&("select", callers)),
                _ => None,
            };
            let (twin, ratio) = match twin {
                Some(t) => (format!("{t:.0}"), format!("{:.2}", f.per_second / t)),
                None => ("-".into(), "-".into()),
            };
            println!(
                "{:<8} {:>7} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>7} {:>12} {:>7}",
                format!("{rpc:?}"),
                callers,
                f.per_second,
                ms(f.p50),
                ms(f.p99),
                ms(f.p999),
                f.errors,
                twin,
                ratio
            );
        }
    }

    let create_peak = LEVELS
        .iter()
        .map(|c| results[&(Rpc::Create, *c)].per_second)
        .fold(0.0, f64::max);
    quiet.settle(&db).await;
    let half = drive(&clients, Rpc::Create, 64, step, Some(create_peak / 2.0)).await;
    let streams = thousand_streams(&clients).await;
    let rss_streams = server.peak_rss_kib();

    let create_ratio = results[&(Rpc::Create, 32)].per_second / reference[&("insert", 32)];
    let get_ratio = results[&(Rpc::Get, 32)].per_second / reference[&("select", 32)];
    println!(
        "(pgbench runs at most {PGBENCH_MAX_CLIENTS} connections; its 128-caller figure uses {PGBENCH_MAX_CLIENTS})"
    );
    println!();
    println!("targets:");
    verdict(
        "CreateCustomer / pgbench INSERT at 32 callers",
        create_ratio,
        ">=",
        1.0,
    );
    verdict(
        "GetCustomer / pgbench SELECT at 32 callers",
        get_ratio,
        ">=",
        0.8,
    );
    verdict(
        &format!(
            "p99 CreateCustomer ms at half peak ({:.0}/s, got {:.0}/s)",
            create_peak / 2.0,
            half.per_second
        ),
        ms(half.p99),
        "<=",
        5.0,
    );
    verdict(
        &format!(
            "server peak RSS MiB (1000 concurrent streams: {} ok)",
            streams
        ),
        rss_streams as f64 / 1024.0,
        "<=",
        64.0,
    );
    verdict(
        "start to SERVING ms",
        server.ready_in.as_secs_f64() * 1000.0,
        "<=",
        1000.0,
    );

    drop(clients);
    server.stop().await;
    db.close().await;
    Ok(())
}

fn verdict(what: &str, value: f64, relation: &str, target: f64) {
    let met = if relation == ">=" {
        value >= target
    } else {
        value <= target
    };
    let mark = if met { "met" } else { "MISSED" };
    println!("  {what:<70} {value:>9.2} (target {relation} {target}) {mark}");
}

/// Runs `callers` loops of `rpc` for `length`, or, with `rate`, issues calls
/// at that many per second spread over the callers.
async fn drive(
    clients: &[(Client, HealthClient<Channel>)],
    rpc: Rpc,
    callers: usize,
    length: Duration,
    rate: Option<f64>,
) -> Figures {
    let until = Instant::now() + length;
    let interval = rate.map(|r| Duration::from_secs_f64(callers as f64 / r));
    let tasks: Vec<_> = (0..callers)
        .map(|n| {
            let (mut client, mut health) = clients[n % clients.len()].clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                let mut next = Instant::now();
                let mut i = 0u64;
                while Instant::now() < until {
                    if let Some(interval) = interval {
                        tokio::time::sleep_until(next.into()).await;
                        next += interval;
                    }
                    let started = Instant::now();
                    let ok = call(&mut client, &mut health, rpc, n, i).await;
                    latencies.push(started.elapsed());
                    errors += usize::from(!ok);
                    i += 1;
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, e) = task.await.expect("a load task");
        all.extend(latencies);
        errors += e;
    }
    all.sort();
    let pick = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
    };
    Figures {
        per_second: all.len() as f64 / length.as_secs_f64(),
        p50: pick(0.5).unwrap_or_default(),
        p99: pick(0.99).unwrap_or_default(),
        p999: pick(0.999).unwrap_or_default(),
        errors,
    }
}

/// One call; whether it succeeded.
async fn call(
    client: &mut Client,
    health: &mut HealthClient<Channel>,
    rpc: Rpc,
    caller: usize,
    i: u64,
) -> bool {
    let stored = |k: u64| {
        format!(
            "cus_{}",
            1 + (caller as u64 * 7919 + k * 104_729) % STORED as u64
        )
    };
    match rpc {
        Rpc::Echo => health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_ok(),
        Rpc::Create => client
            .create_customer(CreateCustomerRequest::default())
            .await
            .is_ok(),
        Rpc::Get => client
            .get_customer(GetCustomerRequest { id: stored(i) })
            .await
            .is_ok(),
        Rpc::Update => {
            let customer = pb::Customer {
                id: stored(i),
                metadata: [("n".to_owned(), i.to_string())].into(),
                ..Default::default()
            };
            let mask = Some(FieldMask {
                paths: vec!["metadata.n".into()],
            });
            client
                .update_customer(pb::UpdateCustomerRequest {
                    customer: Some(customer),
                    update_mask: mask,
                })
                .await
                .is_ok()
        }
        Rpc::List => client
            .list_customers(ListCustomersRequest {
                page_size: 10,
                ..Default::default()
            })
            .await
            .is_ok(),
    }
}

/// 1 000 GetCustomer calls in flight at once; how many succeeded.
async fn thousand_streams(clients: &[(Client, HealthClient<Channel>)]) -> usize {
    let calls: Vec<_> = (0..1000)
        .map(|n| {
            let mut client = clients[n % clients.len()].0.clone();
            tokio::spawn(async move {
                client
                    .get_customer(GetCustomerRequest {
                        id: format!("cus_{}", n + 1),
                    })
                    .await
                    .is_ok()
            })
        })
        .collect();
    let mut ok = 0;
    for call in calls {
        ok += usize::from(call.await.unwrap_or(false));
    }
    ok
}

/// Customer and health clients over [`CONNECTIONS`] connections.
async fn connect(
    addr: std::net::SocketAddr,
    key: &str,
) -> anyhow::Result<Vec<(Client, HealthClient<Channel>)>> {
    let bearer = Bearer::new(key)?;
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        clients.push((
            CustomerServiceClient::with_interceptor(channel.clone(), bearer.clone()),
            HealthClient::new(channel),
        ));
    }
    Ok(clients)
}

/// Brings the database to the same quiet state before every measured step:
/// the rows that earlier steps wrote vacuumed and analysed, their dirty
/// pages written out. Otherwise autovacuum and checkpoints, started by the
/// hundreds of thousands of rows the write steps add, land in whichever
/// step happens to follow.
struct Settle {
    /// CHECKPOINT needs a superuser or `pg_checkpoint`; without, only vacuum.
    checkpoint: bool,
}

impl Settle {
    fn new() -> Self {
        Self { checkpoint: true }
    }

    async fn settle(&mut self, db: &PgPool) {
        if let Err(e) = sqlx::query("VACUUM (ANALYZE) customers").execute(db).await {
            eprintln!("(VACUUM failed, figures may be noisier: {e})");
        }
        if self.checkpoint
            && let Err(e) = sqlx::query("CHECKPOINT").execute(db).await
        {
            eprintln!("(CHECKPOINT refused, figures may be noisier: {e})");
            self.checkpoint = false;
        }
    }
}

/// Stores customers for the read benchmarks, like the ones Create makes.
async fn fill(db: &PgPool) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO customers (account_id, live_mode, id, email, email_folded, shipping,
             customer_type, enabled, metadata, create_time, update_time, etag)
         SELECT 'acct_default', false, 'cus_' || g, 'user' || g || '@example.com',
             'user' || g || '@example.com',
             jsonb_build_object('name', 'Customer ' || g, 'address',
                 jsonb_build_object('city', 'Springfield', 'country', 'US')),
             1, true, '{}', timestamptz '2026-01-01' + g * interval '1 second', now(), md5(g::text)
         FROM generate_series(1, $1) g",
    )
    .bind(STORED)
    .execute(db)
    .await?;
    sqlx::query("ANALYZE").execute(db).await?;
    Ok(())
}

/// The service as a child process.
struct Server {
    child: Child,
    addr: std::net::SocketAddr,
    ready_in: Duration,
}

impl Server {
    async fn start(url: &str) -> anyhow::Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let started = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_customer-service"))
            .env("DATABASE_URL", url)
            .env("LISTEN_ADDR", addr.to_string())
            .env("METRICS_ADDR", "127.0.0.1:0")
            .env("MAX_CONCURRENT_CALLS", "4096")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?;
        loop {
            if let Ok(channel) = Channel::from_shared(format!("http://{addr}"))?
                .connect()
                .await
            {
                let status = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await;
                if status.is_ok_and(|s| s.into_inner().status == 1) {
                    break;
                }
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "the server did not become SERVING"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(Server {
            child,
            addr,
            ready_in: started.elapsed(),
        })
    }

    /// Peak resident memory so far (VmHWM), in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }

    /// Stops the server as an orchestrator would, with SIGTERM, and waits
    /// for it to exit; nothing to do once it has been waited for (its pid
    /// may belong to another process by then). It waits without blocking
    /// the thread: the server finishes once the client's connections
    /// close, and on this one-thread runtime other tasks close them.
    async fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
            while let Ok(None) = self.child.try_wait() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

impl Drop for Server {
    /// A run that fails half way must not leave the server running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// pgbench with the service's own statements.
struct PgBench {
    binary: PathBuf,
    url: String,
    dir: tempfile::TempDir,
}

impl PgBench {
    fn new(url: &str) -> anyhow::Result<PgBench> {
        let binary = find_pgbench()
            .ok_or_else(|| anyhow::anyhow!("pgbench not found (apt-get install postgresql)"))?;
        let dir = tempfile::tempdir()?;
        // The INSERT the service runs for a create, with a new id each time.
        std::fs::write(
            dir.path().join("insert.sql"),
            "INSERT INTO customers (account_id, live_mode, id, email, shipping, default_source_id, \
             tax_identifiers, locale, customer_type, enabled, metadata, etag, email_folded, \
             create_time, update_time) VALUES ('acct_pgbench', false, gen_random_uuid()::text, NULL, \
             '{}', NULL, '[]', NULL, 1, true, '{}', 'e', NULL, now(), now()) RETURNING create_time;\n",
        )?;
        // The SELECT the service runs for a get.
        std::fs::write(
            dir.path().join("select.sql"),
            format!(
                "\\set n random(1, {STORED})\n\
                 SELECT c.account_id, c.id, c.email, c.shipping, c.default_source_id, c.tax_identifiers, c.locale, \
                 c.customer_type, c.enabled, c.forgotten, c.metadata, c.live_mode, c.create_time, \
                 c.update_time, c.etag, \
                 ARRAY(SELECT s.source_id FROM customer_sources s WHERE s.account_id = c.account_id \
                 AND s.live_mode = c.live_mode AND s.customer_id = c.id ORDER BY s.attach_time, s.source_id), \
                 ARRAY(SELECT s.attach_time FROM customer_sources s WHERE s.account_id = c.account_id \
                 AND s.live_mode = c.live_mode AND s.customer_id = c.id ORDER BY s.attach_time, s.source_id) \
                 FROM customers c WHERE c.account_id = 'acct_default' AND c.live_mode = false \
                 AND c.id = 'cus_' || :n;\n"
            ),
        )?;
        Ok(PgBench {
            binary,
            url: url.to_owned(),
            dir,
        })
    }

    /// Transactions per second of `script` with `clients` connections
    /// (at most [`PGBENCH_MAX_CLIENTS`]: PostgreSQL's default connection
    /// limit is 100, and the service holds some).
    fn run(&self, script: &str, clients: usize, seconds: u64) -> anyhow::Result<f64> {
        let clients = clients.min(PGBENCH_MAX_CLIENTS);
        let output = Command::new(&self.binary)
            .args([
                "--no-vacuum",
                "--protocol=prepared",
                "--time",
                &seconds.to_string(),
            ])
            .args([
                "--client",
                &clients.to_string(),
                "--jobs",
                &clients.min(2).to_string(),
            ])
            .arg("--file")
            .arg(self.dir.path().join(format!("{script}.sql")))
            .arg(&self.url)
            .output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let tps = text
            .lines()
            .find(|l| l.starts_with("tps = "))
            .and_then(|l| l["tps = ".len()..].split_whitespace().next()?.parse().ok());
        tps.ok_or_else(|| {
            anyhow::anyhow!(
                "pgbench printed no tps: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }
}

fn find_pgbench() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("pgbench"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| Some(e.ok()?.path().join("bin/pgbench")))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        found.pop()
    })
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
