//! Safe writes under stress: concurrent edits, database crashes, deadlines,
//! overload and shutdown. Each test is bounded to a few seconds.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use customers::api::pb::{self, GetCustomerRequest, UpdateCustomerRequest};
use customers::config::Config;
use customers::store::embedded::EmbeddedPostgres;
use prost_types::FieldMask;
use sqlx::PgPool;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::support::{RunningServer, TestApp, assert_error};

fn set_metadata(id: &str, key: &str, value: &str, etag: &str) -> UpdateCustomerRequest {
    UpdateCustomerRequest {
        customer: Some(pb::Customer {
            id: id.into(),
            etag: etag.into(),
            metadata: [(key.to_owned(), value.to_owned())].into(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec![format!("metadata.{key}")],
        }),
    }
}

/// Holds the customer's row lock until the returned transaction ends, so
/// that calls touching it stay in flight.
async fn hold_lock(db: &PgPool, id: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM customers WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

#[tokio::test]
async fn twenty_clients_editing_with_etags_lose_no_acknowledged_update() {
    let app = TestApp::spawn().await;
    app.create(pb::Customer {
        id: "cus_counter".into(),
        metadata: [("n".into(), "0".into())].into(),
        ..Default::default()
    })
    .await;
    let until = Instant::now() + Duration::from_secs(2);

    let clients: Vec<_> = (0..20)
        .map(|_| {
            let mut client = app.client.clone();
            tokio::spawn(async move {
                let (mut acknowledged, mut conflicts) = (0u64, 0u64);
                while Instant::now() < until {
                    let read = client
                        .get_customer(GetCustomerRequest {
                            id: "cus_counter".into(),
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    let n: u64 = read.metadata["n"].parse().unwrap();
                    match client
                        .update_customer(set_metadata(
                            "cus_counter",
                            "n",
                            &(n + 1).to_string(),
                            &read.etag,
                        ))
                        .await
                    {
                        Ok(_) => acknowledged += 1,
                        Err(status) if status.code() == Code::Aborted => conflicts += 1,
                        Err(status) => panic!("unexpected {status:?}"),
                    }
                }
                (acknowledged, conflicts)
            })
        })
        .collect();
    let (mut acknowledged, mut conflicts) = (0, 0);
    for client in clients {
        let (a, c) = client.await.unwrap();
        acknowledged += a;
        conflicts += c;
    }

    let stored: serde_json::Value =
        sqlx::query_scalar("SELECT metadata FROM customers WHERE id = 'cus_counter'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    println!("{acknowledged} acknowledged updates, {conflicts} stale-etag conflicts");
    assert!(
        acknowledged > 0 && conflicts > 0,
        "the clients really raced"
    );
    assert_eq!(
        stored["n"],
        acknowledged.to_string(),
        "every acknowledged update is in the final state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_crash_loses_no_acknowledged_create_and_the_service_recovers_by_itself() {
    let root = customers::store::embedded::traversable_temp_dir().unwrap();
    let data_dir = root.path().join("pgdata");
    let pg = Arc::new(
        tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&data_dir, None))
            .await
            .unwrap()
            .unwrap(),
    );
    let mut config = Config::for_database(pg.url(), "127.0.0.1:0".parse().unwrap());
    config.db_acquire_timeout_ms = 500;
    config.db_statement_timeout_ms = 2000;
    let mut server = RunningServer::start(&config).await.unwrap();
    let channel = server.channel().await;
    let mut health = HealthClient::new(channel.clone());
    let key = {
        let db = PgPool::connect(pg.url()).await.unwrap();
        let key = crate::support::issue_key(&db, "acct_default", false).await;
        db.close().await;
        key
    };

    let running = Arc::new(AtomicBool::new(true));
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let mut client = crate::support::client_with_key(channel.clone(), &key);
            let running = running.clone();
            tokio::spawn(async move {
                let (mut acknowledged, mut failures) = (Vec::new(), Vec::new());
                for n in 0.. {
                    if !running.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("cus_{writer}_{n}");
                    let customer = pb::Customer {
                        id: id.clone(),
                        ..Default::default()
                    };
                    let request = pb::CreateCustomerRequest {
                        customer: Some(customer),
                        request_id: String::new(),
                    };
                    let started = Instant::now();
                    match client.create_customer(request).await {
                        Ok(_) => acknowledged.push(id.clone()),
                        Err(status) => {
                            failures.push((status.code(), started.elapsed()));
                            continue;
                        }
                    }
                    // Reads go through their own batched path; they must
                    // see every acknowledged create, or fail UNAVAILABLE.
                    let started = Instant::now();
                    match client
                        .get_customer(GetCustomerRequest { id: id.clone() })
                        .await
                    {
                        Ok(found) => assert_eq!(found.into_inner().id, id),
                        Err(status) => failures.push((status.code(), started.elapsed())),
                    }
                }
                (acknowledged, failures)
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(500)).await;
    let crashing = pg.clone();
    tokio::task::spawn_blocking(move || crashing.stop_immediately())
        .await
        .unwrap()
        .unwrap();
    let down = wait_for_health(
        &mut health,
        ServingStatus::NotServing,
        Duration::from_secs(5),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarting = pg.clone();
    tokio::task::spawn_blocking(move || restarting.restart())
        .await
        .unwrap()
        .unwrap();
    let back = Instant::now();
    wait_for_health(&mut health, ServingStatus::Serving, Duration::from_secs(5)).await;
    let recovered_in = back.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.store(false, Ordering::Relaxed);

    let (mut acknowledged, mut failures) = (Vec::new(), Vec::new());
    for writer in writers {
        let (a, f) = writer.await.unwrap();
        acknowledged.extend(a);
        failures.extend(f);
    }
    let db = PgPool::connect(pg.url()).await.unwrap();
    let stored: Vec<String> = sqlx::query_scalar("SELECT id FROM customers")
        .fetch_all(&db)
        .await
        .unwrap();
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !stored.contains(id))
        .collect();
    let slowest = failures
        .iter()
        .map(|(_, elapsed)| *elapsed)
        .max()
        .unwrap_or_default();
    println!(
        "{} acknowledged, {} failed (slowest {slowest:?}); NOT_SERVING after {down:?}; SERVING {recovered_in:?} after restart",
        acknowledged.len(),
        failures.len()
    );
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    assert!(!failures.is_empty(), "the outage was noticed");
    assert!(
        failures.iter().all(|(code, _)| *code == Code::Unavailable),
        "{failures:?}"
    );
    assert!(
        slowest < Duration::from_millis(2500),
        "failures come within the configured timeouts"
    );
    assert!(recovered_in < Duration::from_secs(5));
    // Once SERVING, the first calls succeed: no dead connection is reused.
    let mut client = crate::support::client_with_key(channel.clone(), &key);
    let first = client
        .get_customer(GetCustomerRequest {
            id: acknowledged[0].clone(),
        })
        .await
        .unwrap();
    assert_eq!(first.into_inner().id, acknowledged[0]);
    client
        .create_customer(pb::CreateCustomerRequest::default())
        .await
        .unwrap();

    server.stop().await.unwrap();
    db.close().await;
    let pg = Arc::try_unwrap(pg).unwrap();
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap()
        .unwrap();
}

/// Stops (SIGSTOP) a PostgreSQL server and every process it started, and
/// lets them go on (SIGCONT) when dropped, even if the test fails.
struct Frozen(Vec<nix::unistd::Pid>);

impl Frozen {
    fn freeze(data_dir: &std::path::Path) -> Frozen {
        let pid_file = std::fs::read_to_string(data_dir.join("postmaster.pid")).unwrap();
        let postmaster: i32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            // /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces.
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
            let parent: i32 = after_comm.split(' ').nth(1).unwrap().parse().unwrap();
            if parent == postmaster {
                pids.push(pid);
            }
        }
        let pids: Vec<_> = pids.into_iter().map(nix::unistd::Pid::from_raw).collect();
        for &pid in &pids {
            nix::sys::signal::kill(pid, nix::sys::signal::SIGSTOP).unwrap();
        }
        Frozen(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGCONT);
        }
    }
}

/// A server that stops answering (hung, or a network path that drops
/// everything) must not hold calls for as long as it is silent: neither the
/// batched gets and creates, nor an update already waiting in a statement
/// on a pooled connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_stops_answering_fails_calls_with_unavailable_in_time() {
    let root = customers::store::embedded::traversable_temp_dir().unwrap();
    let data_dir = root.path().join("pgdata");
    let dir = data_dir.clone();
    let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir, None))
        .await
        .unwrap()
        .unwrap();
    let mut config = Config::for_database(pg.url(), "127.0.0.1:0".parse().unwrap());
    config.db_acquire_timeout_ms = 500;
    config.db_statement_timeout_ms = 1000;
    // Keys are checked from the cache while the database is silent.
    config.api_key_cache_ms = 600_000;
    let mut server = RunningServer::start(&config).await.unwrap();
    let channel = server.channel().await;
    let db = PgPool::connect(pg.url()).await.unwrap();
    let key = crate::support::issue_key(&db, "acct_default", false).await;
    let client = crate::support::client_with_key(channel.clone(), &key);
    let created = client
        .clone()
        .create_customer(pb::CreateCustomerRequest::default())
        .await
        .unwrap()
        .into_inner();
    let get = |id: String| {
        let mut client = client.clone();
        async move {
            let started = Instant::now();
            // A deadline, so that a regression fails instead of hanging.
            let mut request = tonic::Request::new(GetCustomerRequest { id });
            request.set_timeout(Duration::from_secs(20));
            let outcome = client.get_customer(request).await;
            (outcome.map(|r| r.into_inner()), started.elapsed())
        }
    };
    get(created.id.clone()).await.0.unwrap();
    let update = |etag: String| {
        let mut client = client.clone();
        let mut request = tonic::Request::new(set_metadata(&created.id, "k", "v", &etag));
        request.set_timeout(Duration::from_secs(20));
        async move {
            let started = Instant::now();
            (client.update_customer(request).await, started.elapsed())
        }
    };

    // An update that has its pooled connection and waits in its locking
    // statement when the server falls silent.
    let lock = hold_lock(&db, &created.id).await;
    let waiting = tokio::spawn(update(created.etag.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let frozen = Frozen::freeze(&data_dir);
    let create = |n: usize| {
        let mut client = client.clone();
        async move {
            let started = Instant::now();
            let mut request = tonic::Request::new(pb::CreateCustomerRequest {
                customer: Some(pb::Customer {
                    id: format!("cus_frozen_{n}"),
                    ..Default::default()
                }),
                request_id: String::new(),
            });
            request.set_timeout(Duration::from_secs(20));
            (client.create_customer(request).await, started.elapsed())
        }
    };
    let gets: Vec<_> = (0..5)
        .map(|_| tokio::spawn(get(created.id.clone())))
        .collect();
    let creates: Vec<_> = (0..5).map(|n| tokio::spawn(create(n))).collect();
    for call in gets {
        let (outcome, took) = call.await.unwrap();
        let error = outcome.unwrap_err();
        assert_eq!(error.code(), Code::Unavailable, "{error:?}");
        assert!(took < Duration::from_secs(5), "a get waited {took:?}");
    }
    for call in creates {
        let (outcome, took) = call.await.unwrap();
        let error = outcome.unwrap_err();
        assert_eq!(error.code(), Code::Unavailable, "{error:?}");
        assert!(took < Duration::from_secs(5), "a create waited {took:?}");
    }
    let (outcome, took) = waiting.await.unwrap();
    let error = outcome.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert!(took < Duration::from_secs(5), "the update waited {took:?}");

    drop(frozen);
    lock.rollback().await.unwrap();
    let started = Instant::now();
    let found = loop {
        match get(created.id.clone()).await.0 {
            Ok(found) => break found,
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(error) => panic!("still failing once the database answers: {error:?}"),
        }
    };
    assert_eq!(found.id, created.id);
    // The pool recovers too: the update's abandoned connection was closed,
    // not left waiting to be returned.
    let (updated, _) = update(created.etag.clone()).await;
    assert_eq!(updated.unwrap().into_inner().metadata["k"], "v");

    db.close().await;
    server.stop().await.unwrap();
    tokio::task::spawn_blocking(move || pg.stop())
        .await
        .unwrap()
        .unwrap();
}

/// Counted and logged once each, although tonic drops them unfinished.
#[tokio::test]
async fn calls_ended_while_their_handler_waits_count_as_cancelled_or_deadline_exceeded() {
    let app = TestApp::spawn().await;
    let created = app.create(pb::Customer::default()).await;
    let lock = hold_lock(&app.db, &created.id).await;

    let mut client = app.client.clone();
    let request = set_metadata(&created.id, "k", "v", "");
    let abandoned = tokio::spawn(async move { client.update_customer(request).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    abandoned.abort();
    let mut late = tonic::Request::new(set_metadata(&created.id, "k", "v", ""));
    late.set_timeout(Duration::from_millis(300));
    let late = app.client.clone().update_customer(late).await.unwrap_err();
    let codes = app.calls_by_code("UpdateCustomer", 2).await;
    lock.rollback().await.unwrap();
    let after = app
        .client
        .clone()
        .get_customer(GetCustomerRequest {
            id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();

    // tonic ends a call at its deadline with CANCELLED.
    assert_eq!(late.code(), Code::Cancelled, "{late:?}");
    assert_eq!(codes, vec![r#""Cancelled"} 1"#, r#""DeadlineExceeded"} 1"#]);
    assert_eq!(after, created, "neither update was written");
}

/// Calls dropped mid-statement, however many, hold no more connections on
/// the database server than the pool has: a dropped call's connection
/// waits in the pool for its abandoned statement rather than being closed
/// and replaced at once (the server would keep the old session until it
/// noticed, and a storm of dropped calls could take every connection it
/// allows).
#[tokio::test]
async fn dropped_calls_never_hold_more_connections_than_the_pool_has() {
    let app = TestApp::spawn_with(|config| config.db_max_connections = 2).await;
    let created = app.create(pb::Customer::default()).await;
    let lock = hold_lock(&app.db, &created.id).await;
    let waiting_updates = async || -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'
               AND query LIKE 'SELECT 1 FROM customers%'",
        )
        .fetch_one(&app.db)
        .await
        .unwrap()
    };

    let mut codes = Vec::new();
    let mut most_waiting = 0;
    for _ in 0..5 {
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let mut client = app.client.clone();
                let mut request = tonic::Request::new(set_metadata(&created.id, "k", "v", ""));
                request.set_timeout(Duration::from_millis(100));
                tokio::spawn(async move { client.update_customer(request).await })
            })
            .collect();
        for call in calls {
            codes.push(call.await.unwrap().unwrap_err().code());
        }
        most_waiting = most_waiting.max(waiting_updates().await);
    }
    lock.rollback().await.unwrap();
    let updated = app
        .client
        .clone()
        .update_customer(set_metadata(&created.id, "k", "v", ""))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(codes, vec![Code::Cancelled; 40]);
    assert_eq!(most_waiting, 2, "abandoned statements beyond the pool's 2");
    assert_eq!(updated.metadata["k"], "v");
}

#[tokio::test]
async fn a_call_past_its_deadline_leaves_nothing_behind() {
    let app = TestApp::spawn().await;
    let before = app
        .create(pb::Customer {
            id: "cus_slow".into(),
            ..Default::default()
        })
        .await;
    let lock = hold_lock(&app.db, "cus_slow").await;

    let mut request = tonic::Request::new(set_metadata("cus_slow", "k", "v", ""));
    request.set_timeout(Duration::from_millis(300));
    let error = app
        .client
        .clone()
        .update_customer(request)
        .await
        .unwrap_err();
    lock.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert!(
        matches!(error.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{error:?}"
    );
    let after = app
        .client
        .clone()
        .get_customer(GetCustomerRequest {
            id: "cus_slow".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, before);
}

#[tokio::test]
async fn calls_whose_request_never_finishes_arriving_take_no_place() {
    let app = TestApp::spawn_with(|config| config.max_concurrent_calls = 4).await;
    let stored = app.create(pb::Customer::default()).await;
    // Twice the limit of calls that send their headers, without an API
    // key, and then never send the request message.
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut grpc = tonic::client::Grpc::new(app.channel().await);
        grpc.ready().await.unwrap();
        stalled.push(tokio::spawn(async move {
            let never = tokio_stream::pending::<GetCustomerRequest>();
            grpc.client_streaming(
                tonic::Request::new(never),
                tonic::codegen::http::uri::PathAndQuery::from_static(
                    "/customers.v1.CustomerService/GetCustomer",
                ),
                tonic_prost::ProstCodec::<GetCustomerRequest, pb::Customer>::default(),
            )
            .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut answered = Vec::new();
    for _ in 0..8 {
        let got = app
            .client
            .clone()
            .get_customer(GetCustomerRequest {
                id: stored.id.clone(),
            })
            .await;
        answered.push(got.map(|r| r.into_inner().id).map_err(|e| e.code()));
    }
    let health = HealthClient::new(app.channel().await)
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    let still_waiting = stalled.iter().filter(|call| !call.is_finished()).count();
    for call in stalled {
        call.abort();
    }

    assert_eq!(answered, vec![Ok(stored.id.clone()); 8]);
    assert_eq!(health.status(), ServingStatus::Serving);
    assert_eq!(still_waiting, 8, "the stalled calls were still open");
}

#[tokio::test]
async fn calls_beyond_the_limit_are_refused_fast_and_memory_stays_bounded() {
    let app = TestApp::spawn_with(|config| config.max_concurrent_calls = 4).await;
    let busy = app.blocked_updates("cus_busy", 4).await;

    let rss_before = resident_kib();
    let mut slowest = Duration::ZERO;
    let mut codes: HashMap<Code, usize> = HashMap::new();
    for _ in 0..2000 {
        let started = Instant::now();
        let result = app
            .client
            .clone()
            .get_customer(GetCustomerRequest {
                id: "cus_busy".into(),
            })
            .await;
        slowest = slowest.max(started.elapsed());
        let error = result.unwrap_err();
        if error.code() == Code::ResourceExhausted {
            assert_error(&error, Code::ResourceExhausted, "OVERLOADED");
        }
        *codes.entry(error.code()).or_default() += 1;
    }
    let rss_after = resident_kib();
    busy.lock.commit().await.unwrap();
    for call in busy.calls {
        call.await.unwrap().unwrap();
    }

    println!(
        "2000 refusals, slowest {slowest:?}; RSS {rss_before} KiB before, {rss_after} KiB after"
    );
    assert_eq!(codes, HashMap::from([(Code::ResourceExhausted, 2000)]));
    assert!(
        slowest < Duration::from_millis(250),
        "refusals do not queue: {slowest:?}"
    );
    assert!(rss_after < rss_before + 64 * 1024, "memory stays bounded");
}

#[tokio::test]
async fn shutdown_lets_in_flight_calls_finish_and_refuses_new_connections() {
    let mut app = TestApp::spawn().await;
    let in_flight = app.blocked_updates("cus_busy", 10).await;
    let addr = app.addr;
    let db = app.db.clone();

    let stopping = tokio::spawn(async move { app.stop().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new_connection = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await;
    in_flight.lock.commit().await.unwrap();

    assert!(
        new_connection.is_err(),
        "no new connections during shutdown"
    );
    for call in in_flight.calls {
        call.await.unwrap().expect("an in-flight call completes");
    }
    stopping.await.unwrap().unwrap();
    let metadata: serde_json::Value =
        sqlx::query_scalar("SELECT metadata FROM customers WHERE id = 'cus_busy'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(metadata.as_object().unwrap().len(), 10);
}

async fn wait_for_health(
    health: &mut HealthClient<tonic::transport::Channel>,
    wanted: ServingStatus,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(response) = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            && response.into_inner().status == wanted as i32
        {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("health never became {wanted:?} within {limit:?}");
}

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
