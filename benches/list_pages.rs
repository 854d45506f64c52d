//! Does a deep page cost what the first page costs?
//!
//! Stores 100 000 customers, then times ListCustomers for the first page and
//! for the page 10 000 rows deep (page size 100) through the real server and
//! client, and prints both and their ratio (goal: at most 1.2). For contrast
//! it also times the same page read with SQL `OFFSET`, which keyset
//! pagination avoids.
//!
//! Run: `cargo bench --bench list_pages` (uses DATABASE_URL when set, else a
//! private PostgreSQL in a temporary directory).

mod common;

use std::time::{Duration, Instant};

use customers::api::pb::ListCustomersRequest;
use customers::api::pb::customer_service_client::CustomerServiceClient;
use customers::config::Config;
use customers::startup::Application;
use sqlx::PgPool;

const CUSTOMERS: i64 = 100_000;
const PAGE_SIZE: i32 = 100;
const DEPTH: usize = 10_000;
const SAMPLES: usize = 300;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let database = common::BenchDatabase::create().await?;
    let outcome = measure(&database.url).await;
    // Whatever happened, the database goes and a private server stops.
    let removed = database.remove().await;
    outcome.and(removed)
}

/// Stores the customers in the database at `url`, times the pages, prints.
async fn measure(url: &str) -> anyhow::Result<()> {
    let app = Application::build(&Config::for_database(url, "127.0.0.1:0".parse()?)).await?;
    let addr = app.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));

    let db = PgPool::connect(url).await?;
    let started = Instant::now();
    fill(&db).await?;
    println!("stored {CUSTOMERS} customers in {:.1?}", started.elapsed());

    let key = customers::store::KeyStore::new(db.clone(), std::time::Duration::from_secs(5))
        .create("acct_default", false)
        .await?
        .0;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = CustomerServiceClient::with_interceptor(channel, common::Bearer::new(&key)?);
    let first = ListCustomersRequest {
        page_size: PAGE_SIZE,
        ..Default::default()
    };
    let deep = ListCustomersRequest {
        page_token: token_at(&mut client, DEPTH).await?,
        ..first.clone()
    };

    let mut first_times = Vec::with_capacity(SAMPLES);
    let mut deep_times = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        first_times.push(time(client.list_customers(first.clone())).await?);
        deep_times.push(time(client.list_customers(deep.clone())).await?);
    }
    let offset_times = offset_reference(&db).await?;

    let (first_p50, deep_p50) = (
        percentile(&mut first_times, 50),
        percentile(&mut deep_times, 50),
    );
    println!("page size {PAGE_SIZE}, {SAMPLES} samples each, interleaved");
    println!("{:<32} {:>10} {:>10}", "", "p50", "p99");
    print_row("ListCustomers first page", &mut first_times);
    print_row(&format!("ListCustomers {DEPTH} rows deep"), &mut deep_times);
    print_row(
        &format!("SQL OFFSET {DEPTH} (reference)"),
        &mut offset_times.clone(),
    );
    let ratio = deep_p50.as_secs_f64() / first_p50.as_secs_f64();
    let verdict = if ratio <= 1.2 { "meets" } else { "misses" };
    println!("deep / first (p50): {ratio:.2} ({verdict} the goal of at most 1.20)");

    stop.send(()).ok();
    server.await??;
    db.close().await;
    Ok(())
}

/// Inserts the customers in one statement, one second apart, with a
/// realistic amount of data each.
async fn fill(db: &PgPool) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO customers (account_id, live_mode, id, email, email_folded, shipping,
             customer_type, enabled, metadata, create_time, update_time, etag)
         SELECT 'acct_default', false, 'cus_' || g, 'user' || g || '@example.com',
             'user' || g || '@example.com',
             jsonb_build_object('name', 'Customer ' || g,
                 'address', jsonb_build_object('line1', g || ' Main Street', 'city', 'Springfield',
                     'postal_code', '12345', 'country', 'US')),
             1, true, jsonb_build_object('crm', g::text),
             timestamptz '2026-01-01' + g * interval '1 second', now(), md5(g::text)
         FROM generate_series(1, $1) g",
    )
    .bind(CUSTOMERS)
    .execute(db)
    .await?;
    sqlx::query("ANALYZE customers").execute(db).await?;
    Ok(())
}

/// The page token that starts `depth` rows into the listing.
async fn token_at(client: &mut common::Client, depth: usize) -> anyhow::Result<String> {
    let mut request = ListCustomersRequest {
        page_size: PAGE_SIZE,
        ..Default::default()
    };
    for _ in 0..depth / PAGE_SIZE as usize {
        request.page_token = client
            .list_customers(request.clone())
            .await?
            .into_inner()
            .next_page_token;
    }
    Ok(request.page_token)
}

/// The same deep page with OFFSET, straight to PostgreSQL.
async fn offset_reference(db: &PgPool) -> anyhow::Result<Vec<Duration>> {
    let sql = "SELECT * FROM customers WHERE account_id = 'acct_default' AND live_mode = false
               ORDER BY create_time DESC, id DESC OFFSET $1 LIMIT $2";
    let mut times = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let started = Instant::now();
        sqlx::query(sql)
            .bind(DEPTH as i64)
            .bind(i64::from(PAGE_SIZE))
            .fetch_all(db)
            .await?;
        times.push(started.elapsed());
    }
    Ok(times)
}

/// How long `call` takes; it starts when first polled.
async fn time<T>(call: impl Future<Output = Result<T, tonic::Status>>) -> anyhow::Result<Duration> {
    let mut call = std::pin::pin!(call);
    let started = Instant::now();
    call.as_mut().await?;
    Ok(started.elapsed())
}

fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    samples.sort();
    samples[(samples.len() * p / 100).min(samples.len() - 1)]
}

fn print_row(label: &str, samples: &mut [Duration]) {
    let (p50, p99) = (percentile(samples, 50), percentile(samples, 99));
    println!("{label:<32} {:>8.2}ms {:>8.2}ms", ms(p50), ms(p99));
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
