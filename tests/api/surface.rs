//! What the server offers besides the customer RPCs: reflection, health,
//! shutdown, the embedded database, and its answers to broken requests.

use customers::api::pb::{self, CreateCustomerRequest};
use customers::config::Config;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::support::{RunningServer, TestApp, assert_error, embedded_config, quickstart_client};

const CREATE_PATH: &str = "/customers.v1.CustomerService/CreateCustomer";

#[tokio::test]
async fn reflection_v1_lists_every_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let app = TestApp::spawn().await;
    let mut client = ServerReflectionClient::new(app.channel().await);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();

    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "customers.v1.CustomerService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]
    );
}

#[tokio::test]
async fn reflection_v1alpha_resolves_the_service_and_the_files_it_imports() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let app = TestApp::spawn().await;
    let mut client = ServerReflectionClient::new(app.channel().await);
    let ask = |request: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let requests = vec![
        ask(MessageRequest::FileContainingSymbol(
            "customers.v1.CustomerService".into(),
        )),
        ask(MessageRequest::FileByFilename(
            "google/protobuf/field_mask.proto".into(),
        )),
        ask(MessageRequest::FileByFilename(
            "google/protobuf/timestamp.proto".into(),
        )),
        ask(MessageRequest::FileByFilename(
            "google/protobuf/empty.proto".into(),
        )),
        ask(MessageRequest::FileContainingSymbol(
            "google.rpc.BadRequest".into(),
        )),
    ];

    let mut responses = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();

    for _ in 0..5 {
        let response = responses.next().await.unwrap().unwrap();
        assert!(
            matches!(response.message_response, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
            "{response:?}"
        );
    }
}

#[tokio::test]
async fn health_is_serving_for_the_server_and_the_customer_service() {
    let app = TestApp::spawn().await;
    let mut health = HealthClient::new(app.channel().await);

    let overall = wait_for_status(&mut health, "").await;
    let customers = wait_for_status(&mut health, "customers.v1.CustomerService").await;

    assert_eq!(
        (overall, customers),
        (ServingStatus::Serving, ServingStatus::Serving)
    );
}

#[tokio::test]
async fn shutdown_turns_health_not_serving_then_stops_the_server() {
    let mut app = TestApp::spawn().await;
    let mut health = HealthClient::new(app.channel().await);
    wait_for_status(&mut health, "").await;
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status_of(watch.next().await.unwrap().unwrap()),
        ServingStatus::Serving
    );

    let stopping = tokio::spawn(async move { app.stop().await });

    let next = watch.next().await.unwrap().unwrap();
    assert_eq!(status_of(next), ServingStatus::NotServing);
    drop(watch);
    drop(health);
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn bytes_that_are_not_protobuf_are_invalid_argument_and_write_nothing() {
    let app = TestApp::spawn().await;
    let mut grpc = tonic::client::Grpc::new(app.channel().await);
    grpc.ready().await.unwrap();

    // Field 1 (customer) as a length-delimited value claiming 100 bytes, then 2.
    let garbage = vec![0x0a, 0x64, 0x01, 0x02];
    let error = grpc
        .unary(
            tonic::Request::new(garbage),
            PathAndQuery::from_static(CREATE_PATH),
            RawCodec,
        )
        .await
        .unwrap_err();

    assert_error(&error, Code::InvalidArgument, "MALFORMED_REQUEST");
    assert_eq!(app.customer_count().await, 0);
}

#[tokio::test]
async fn a_request_over_the_size_limit_is_resource_exhausted() {
    let app = TestApp::spawn_with(|config| config.max_request_bytes = 64 * 1024).await;
    let customer = pb::Customer {
        shipping: Some(pb::Shipping {
            name: Some("x".repeat(100 * 1024)),
            ..Default::default()
        }),
        ..Default::default()
    };

    let error = app
        .client
        .clone()
        .create_customer(CreateCustomerRequest {
            customer: Some(customer),
            request_id: String::new(),
        })
        .await
        .unwrap_err();

    assert_error(&error, Code::ResourceExhausted, "REQUEST_TOO_LARGE");
    assert_eq!(app.customer_count().await, 0);
}

#[tokio::test]
async fn without_a_database_url_the_service_runs_its_own_postgres_and_keeps_data_across_restarts() {
    let root = customers::store::embedded::traversable_temp_dir().unwrap();
    let config = embedded_config(root.path());

    let first = run_once(&config, |mut client| async move {
        client
            .create_customer(CreateCustomerRequest {
                customer: Some(pb::Customer {
                    id: "cus_persist".into(),
                    ..Default::default()
                }),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
    })
    .await;
    let second = run_once(&config, |mut client| async move {
        client
            .get_customer(pb::GetCustomerRequest {
                id: "cus_persist".into(),
            })
            .await
            .unwrap()
            .into_inner()
    })
    .await;

    assert_eq!(first, second);
    assert!(root.path().join("pgdata/PG_VERSION").exists());
}

/// Starts the server on `config`, runs `body` against it, stops it.
async fn run_once<F, Fut>(config: &Config, body: F) -> pb::Customer
where
    F: FnOnce(crate::support::Client) -> Fut,
    Fut: std::future::Future<Output = pb::Customer>,
{
    let mut server = RunningServer::start(config).await.unwrap();
    let result = body(quickstart_client(&server, config).await).await;
    server.stop().await.unwrap();
    result
}

async fn wait_for_status(
    health: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
) -> ServingStatus {
    for _ in 0..50 {
        let request = HealthCheckRequest {
            service: service.into(),
        };
        if let Ok(response) = health.check(request).await {
            let status = status_of(response.into_inner());
            if status == ServingStatus::Serving {
                return status;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{service:?} never became SERVING");
}

fn status_of(response: HealthCheckResponse) -> ServingStatus {
    ServingStatus::try_from(response.status).unwrap()
}

/// Sends raw bytes as a request and decodes the answer as a Customer.
#[derive(Clone, Copy)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = pb::Customer;
    type Encoder = RawEncoder;
    type Decoder = tonic_prost::ProstDecoder<pb::Customer>;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        buf.put_slice(&item);
        Ok(())
    }
}
