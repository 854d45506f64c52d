//! What operators rely on: metrics, request ids, error details on every
//! refusal, bounded shutdown, one service per data directory.

use std::time::{Duration, Instant};

use customers::api::pb::{self, CreateCustomerRequest, GetCustomerRequest, UpdateCustomerRequest};
use customers::startup::Application;
use prost_types::FieldMask;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

use crate::support::{
    RunningServer, TestApp, assert_error, embedded_config, quickstart_client, sample, violations,
};

#[tokio::test]
async fn metrics_count_calls_by_method_and_code_and_show_the_pool() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    for id in ["cus_1", "cus_2"] {
        let customer = pb::Customer {
            id: id.into(),
            ..Default::default()
        };
        client
            .create_customer(CreateCustomerRequest {
                customer: Some(customer),
                request_id: String::new(),
            })
            .await
            .unwrap();
    }
    client
        .get_customer(GetCustomerRequest { id: "cus_1".into() })
        .await
        .unwrap();
    client
        .get_customer(GetCustomerRequest {
            id: "cus_none".into(),
        })
        .await
        .unwrap_err();
    HealthClient::new(app.channel().await)
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    // Paths nobody serves, each its own, share one pair of labels.
    for path in ["/made.Up/Thing", "/customers.v1.CustomerService/Nope"] {
        let mut grpc = tonic::client::Grpc::new(app.channel().await);
        grpc.ready().await.unwrap();
        let error = grpc
            .unary(
                tonic::Request::new(GetCustomerRequest::default()),
                PathAndQuery::from_static(path),
                tonic_prost::ProstCodec::<GetCustomerRequest, pb::Customer>::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::Unimplemented);
    }

    let metrics = app.scrape_metrics().await;

    let calls_of = |service: &str, method: &str, code: &str| {
        let series = format!(
            "customers_grpc_calls_total{{grpc_service=\"{service}\",grpc_method=\"{method}\",grpc_code=\"{code}\"}}"
        );
        sample(&metrics, &series)
    };
    let calls = |method: &str, code: &str| calls_of("customers.v1.CustomerService", method, code);
    assert_eq!(calls("CreateCustomer", "Ok"), Some(2.0), "{metrics}");
    assert_eq!(calls("GetCustomer", "Ok"), Some(1.0));
    assert_eq!(calls("GetCustomer", "NotFound"), Some(1.0));
    assert_eq!(calls_of("grpc.health.v1.Health", "Check", "Ok"), Some(1.0));
    assert_eq!(calls_of("unknown", "unknown", "Unimplemented"), Some(2.0));
    let latency_count = "customers_grpc_call_duration_seconds_count{grpc_service=\"customers.v1.CustomerService\",grpc_method=\"GetCustomer\"}";
    assert_eq!(sample(&metrics, latency_count), Some(2.0));
    assert!(sample(&metrics, "customers_db_pool_connections").unwrap() >= 1.0);
    assert_eq!(
        sample(&metrics, "customers_db_pool_max_connections"),
        Some(16.0)
    );
    assert_eq!(sample(&metrics, "customers_embedded_postgres"), Some(0.0));
    assert!(metrics.contains("customers_database_up"));
}

#[tokio::test]
async fn the_request_id_is_echoed_or_generated() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();

    let mut request = tonic::Request::new(GetCustomerRequest {
        id: "cus_none".into(),
    });
    request
        .metadata_mut()
        .insert("x-request-id", "trace-4711".parse().unwrap());
    let echoed = client.get_customer(request).await.unwrap_err();
    let created = client
        .create_customer(CreateCustomerRequest::default())
        .await
        .unwrap();

    assert_eq!(echoed.metadata().get("x-request-id").unwrap(), "trace-4711");
    let generated = created
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");
}

#[tokio::test]
async fn refusals_from_the_grpc_layer_carry_error_info_too() {
    let app = TestApp::spawn().await;
    let mut grpc = tonic::client::Grpc::new(app.channel().await);
    grpc.ready().await.unwrap();

    let unknown = grpc
        .unary(
            tonic::Request::new(GetCustomerRequest::default()),
            PathAndQuery::from_static("/customers.v1.CustomerService/Nope"),
            tonic_prost::ProstCodec::<GetCustomerRequest, pb::Customer>::default(),
        )
        .await
        .unwrap_err();

    assert_error(&unknown, Code::Unimplemented, "UNIMPLEMENTED");
}

#[tokio::test]
async fn too_many_violations_are_listed_within_a_header_sized_budget() {
    let app = TestApp::spawn().await;
    let customer = pb::Customer {
        metadata: (0..50)
            .map(|i| (format!("key-{i:02}-{}", "k".repeat(30)), "v".repeat(501)))
            .collect(),
        tax_identifiers: (0..10)
            .map(|_| pb::TaxIdentifier {
                r#type: "eu_vat".into(),
                value: "XX1".into(),
            })
            .collect(),
        ..Default::default()
    };
    let paths: Vec<String> = (0..101).map(|i| format!("bogus{i}")).collect();

    let error = app
        .client
        .clone()
        .create_customer(CreateCustomerRequest {
            customer: Some(customer),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    let masked = app
        .client
        .clone()
        .update_customer(UpdateCustomerRequest {
            customer: Some(pb::Customer {
                id: "cus_1".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask { paths }),
        })
        .await
        .unwrap_err();

    assert_error(&error, Code::InvalidArgument, "INVALID_PARAMETER");
    assert!(
        error.details().len() < 6 * 1024,
        "{} bytes of details",
        error.details().len()
    );
    let info = error.get_details_error_info().unwrap();
    assert_eq!(info.metadata["violations"], "60");
    assert!(info.metadata["listed"].parse::<usize>().unwrap() < 60);
    assert_eq!(
        violations(&masked),
        [("update_mask.paths".to_owned(), "TOO_MANY".to_owned())]
    );
}

#[tokio::test]
async fn an_etag_with_control_characters_is_invalid() {
    let app = TestApp::spawn().await;
    let customer = pb::Customer {
        id: "cus_1".into(),
        etag: "\0abc".into(),
        ..Default::default()
    };

    let error = app
        .client
        .clone()
        .update_customer(UpdateCustomerRequest {
            customer: Some(customer),
            update_mask: None,
        })
        .await
        .unwrap_err();

    assert_eq!(
        violations(&error),
        [("customer.etag".to_owned(), "CONTROL_CHARACTER".to_owned())]
    );
}

#[tokio::test]
async fn an_open_health_watch_delays_shutdown_only_by_the_grace_period() {
    let mut app = TestApp::spawn_with(|config| config.shutdown_grace_ms = 500).await;
    let mut health = HealthClient::new(app.channel().await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    watch.next().await.unwrap().unwrap();

    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), app.stop())
        .await
        .expect("shutdown finishes")
        .unwrap();

    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn health_stays_serving_while_slow_calls_hold_every_pooled_connection() {
    let app = TestApp::spawn_with(|config| config.db_max_connections = 2).await;
    let busy = app.blocked_updates("cus_busy", 2).await;

    let mut health = HealthClient::new(app.channel().await);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        statuses.push(status);
    }
    busy.lock.commit().await.unwrap();
    for call in busy.calls {
        call.await.unwrap().unwrap();
    }

    assert!(
        statuses.iter().all(|s| *s == ServingStatus::Serving as i32),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn a_second_service_on_the_same_data_directory_refuses_to_start_and_leaves_the_first_alone() {
    let root = customers::store::embedded::traversable_temp_dir().unwrap();
    // A staging folder left by an interrupted first start is cleaned up.
    std::fs::create_dir_all(root.path().join("pgdata.init/garbage")).unwrap();
    let config = embedded_config(root.path());
    let mut first = RunningServer::start(&config).await.unwrap();

    let second = Application::build(&config).await;

    let error = second
        .err()
        .expect("the second service must not start")
        .to_string();
    assert!(
        error.contains("starting the embedded PostgreSQL"),
        "{error}"
    );
    let mut client = quickstart_client(&first, &config).await;
    client
        .create_customer(CreateCustomerRequest::default())
        .await
        .expect("the first still serves");
    assert!(!root.path().join("pgdata.init").exists());
    first.stop().await.unwrap();
}

#[tokio::test]
async fn an_embedded_postgres_that_was_killed_is_started_again() {
    let root = customers::store::embedded::traversable_temp_dir().unwrap();
    let config = embedded_config(root.path());
    let mut server = RunningServer::start(&config).await.unwrap();
    let mut health = HealthClient::new(server.channel().await);
    let status = |health: &mut HealthClient<tonic::transport::Channel>| {
        let mut health = health.clone();
        async move {
            health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|r| r.into_inner().status)
                .unwrap_or(-1)
        }
    };

    let pid_file = std::fs::read_to_string(root.path().join("pgdata/postmaster.pid")).unwrap();
    let pid: i32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    let started = Instant::now();
    let mut seen_down = false;
    while started.elapsed() < Duration::from_secs(20) {
        match status(&mut health).await {
            s if s == ServingStatus::Serving as i32 && seen_down => break,
            s if s != ServingStatus::Serving as i32 => seen_down = true,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let back_in = started.elapsed();

    assert!(seen_down, "the outage was noticed");
    assert_eq!(
        status(&mut health).await,
        ServingStatus::Serving as i32,
        "back after {back_in:?}"
    );
    let mut client = quickstart_client(&server, &config).await;
    client
        .create_customer(CreateCustomerRequest::default())
        .await
        .expect("serving again");
    println!("embedded PostgreSQL back {back_in:?} after SIGKILL");
    server.stop().await.unwrap();
}

/// The released binary, started with `threads` worker threads, until dropped.
struct ServerProcess(std::process::Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_binary_serves_and_stops_cleanly_on_one_thread_and_on_several() {
    for threads in ["1", "2"] {
        let url = crate::support::fresh_database().await;
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut server = ServerProcess(
            std::process::Command::new(env!("CARGO_BIN_EXE_customer-service"))
                .env("DATABASE_URL", &url)
                .env("LISTEN_ADDR", addr.to_string())
                .env("METRICS_ADDR", "127.0.0.1:0")
                .env("WORKER_THREADS", threads)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let started = Instant::now();
        let channel = loop {
            let endpoint =
                tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap();
            if let Ok(channel) = endpoint.connect().await {
                let health = HealthClient::new(channel.clone())
                    .check(HealthCheckRequest::default())
                    .await;
                if health.is_ok_and(|h| h.into_inner().status() == ServingStatus::Serving) {
                    break channel;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{threads} thread(s): not SERVING after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let db = sqlx::PgPool::connect(&url).await.unwrap();
        let key = crate::support::issue_key(&db, "acct_threads", false).await;
        let mut client = crate::support::client_with_key(channel, &key);

        let created = client
            .create_customer(CreateCustomerRequest {
                customer: Some(pb::Customer {
                    email: Some("threads@example.com".into()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let read = client
            .get_customer(GetCustomerRequest {
                id: created.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(server.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = server.0.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "{threads} thread(s): no exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };

        assert_eq!(read.email.as_deref(), Some("threads@example.com"));
        assert_eq!(read.id, created.id);
        assert!(status.success(), "{threads} thread(s): {status}");
    }
}

/// A request body that sends its bytes and then neither ends nor sends more.
struct NeverFinished(Option<bytes::Bytes>);

impl http_body::Body for NeverFinished {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        match self.0.take() {
            Some(bytes) => std::task::Poll::Ready(Some(Ok(http_body::Frame::data(bytes)))),
            None => std::task::Poll::Pending,
        }
    }
}

/// Starts a GetCustomer call over `channel` whose message announces 100
/// bytes and sends 2, so that the server waits for the rest.
fn half_sent_get(mut channel: tonic::transport::Channel) -> tokio::task::JoinHandle<()> {
    use tower::Service;
    // Frame header (uncompressed, length 100), then field 1 cut short.
    let torn = bytes::Bytes::from_static(&[0, 0, 0, 0, 100, 10, 3]);
    let request = tonic::codegen::http::Request::post(
        "http://customers/customers.v1.CustomerService/GetCustomer",
    )
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(tonic::body::Body::new(NeverFinished(Some(torn))))
    .unwrap();
    tokio::spawn(async move {
        std::future::poll_fn(|cx| channel.poll_ready(cx))
            .await
            .unwrap();
        let _ = channel.call(request).await;
    })
}

#[tokio::test]
async fn calls_the_caller_breaks_off_count_as_cancelled_not_as_failures() {
    let app = TestApp::spawn().await;

    // A caller that resets its stream mid-message.
    let channel = app.channel().await;
    let call = half_sent_get(channel.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    call.abort();

    // A caller whose connection goes away mid-message, as when its process
    // dies: the connection runs through a relay that is then dropped.
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let server_addr = app.addr;
    let pipe = tokio::spawn(async move {
        let (mut inbound, _) = relay.accept().await.unwrap();
        let mut outbound = tokio::net::TcpStream::connect(server_addr).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    });
    let relayed = tonic::transport::Channel::from_shared(format!("http://{relay_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let _call = half_sent_get(relayed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    pipe.abort();

    assert_eq!(
        app.calls_by_code("GetCustomer", 2).await,
        vec![r#""Cancelled"} 2"#]
    );
    // The connection whose stream was reset still serves.
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
}
