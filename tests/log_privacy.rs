//! No log line carries personal data or secrets, at any level.
//!
//! A test binary of its own, because it installs the process-wide log
//! subscriber (at TRACE, for every crate) and captures its output.

#[path = "api/support.rs"]
#[allow(dead_code)]
mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use customers::api::pb::{
    self, AttachSourceRequest, CreateCustomerRequest, DeleteCustomerRequest, DetachSourceRequest,
    GetCustomerRequest, ListCustomersRequest, UpdateCustomerRequest,
};
use customers::config::LogFormat;
use prost_types::FieldMask;
use support::TestApp;
use tracing_subscriber::EnvFilter;

/// Everything the subscriber wrote.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const PERSONAL: &[&str] = &[
    "zqlog.person@example.net",
    "Zqlog Personname",
    "+99 123 456 7890",
    "zqlog.ship@example.net",
    "Zqlog Organisation",
    "42 Zqlog Street",
    "Zqlog Apartment",
    "Zqlogtown",
    "ZQ1 2LG",
    "Zqlogshire",
    "Zqlog Quarter",
    "Zqlog District",
    "ゼットキューログ",
    "ZQLOG-METADATA-VALUE",
    "GB987654321",
];

fn customer(id: &str) -> pb::Customer {
    let v = PERSONAL;
    let base = pb::Customer {
        id: id.into(),
        metadata: [("note".into(), v[13].into())].into(),
        tax_identifiers: vec![pb::TaxIdentifier {
            r#type: "gb_vat".into(),
            value: v[14].into(),
        }],
        ..Default::default()
    };
    support::with_personal_values(base, v[..13].try_into().unwrap())
}

#[tokio::test]
async fn every_kind_of_call_logs_json_lines_without_personal_values() {
    let captured = Captured::default();
    let writer = captured.clone();
    customers::telemetry::init_with(
        LogFormat::Json,
        EnvFilter::new("trace"),
        move || writer.clone(),
        false,
    );
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();

    let created = client
        .create_customer(CreateCustomerRequest {
            customer: Some(customer("cus_log")),
            request_id: "req-log".into(),
        })
        .await
        .unwrap()
        .into_inner();
    client
        .create_customer(CreateCustomerRequest {
            customer: Some(customer("cus_log")),
            request_id: "req-log".into(),
        })
        .await
        .unwrap();
    let mut invalid = customer("cus log");
    invalid.email = Some(format!("not an email {}", PERSONAL[0]));
    invalid.shipping.as_mut().unwrap().name = Some(format!("{}\0", PERSONAL[1]));
    client
        .create_customer(CreateCustomerRequest {
            customer: Some(invalid),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    client
        .create_customer(CreateCustomerRequest {
            customer: Some(customer("cus_log")),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    client
        .get_customer(GetCustomerRequest {
            id: "cus_log".into(),
        })
        .await
        .unwrap();
    let update = UpdateCustomerRequest {
        customer: Some(customer("cus_log")),
        update_mask: Some(FieldMask {
            paths: vec!["email".into(), "shipping".into(), "metadata.note".into()],
        }),
    };
    client.update_customer(update).await.unwrap();
    let stale = pb::Customer {
        etag: format!("not-{}", created.etag),
        ..customer("cus_log")
    };
    client
        .update_customer(UpdateCustomerRequest {
            customer: Some(stale),
            update_mask: None,
        })
        .await
        .unwrap_err();
    client
        .list_customers(ListCustomersRequest {
            email: PERSONAL[0].into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .attach_source(AttachSourceRequest {
            customer_id: "cus_log".into(),
            source_id: "src_1".into(),
        })
        .await
        .unwrap();
    client
        .detach_source(DetachSourceRequest {
            customer_id: "cus_log".into(),
            source_id: "src_1".into(),
        })
        .await
        .unwrap();
    let forget = pb::Customer {
        id: "cus_log".into(),
        request_to_be_forgotten: Some(true),
        ..Default::default()
    };
    client
        .update_customer(UpdateCustomerRequest {
            customer: Some(forget),
            update_mask: None,
        })
        .await
        .unwrap();
    client
        .delete_customer(DeleteCustomerRequest {
            id: "cus_log".into(),
            etag: String::new(),
        })
        .await
        .unwrap();
    let key_line = format!(
        "Bearer {}",
        "sk_test_0123456789abcdef_".to_owned() + &"9".repeat(64)
    );
    let mut bad_key = tonic::Request::new(GetCustomerRequest {
        id: "cus_log".into(),
    });
    bad_key
        .metadata_mut()
        .insert("authorization", key_line.parse().unwrap());
    customers::api::pb::customer_service_client::CustomerServiceClient::new(app.channel().await)
        .get_customer(bad_key)
        .await
        .unwrap_err();

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("CreateCustomer"),
        "the capture works: {} bytes",
        logs.len()
    );
    for value in PERSONAL {
        assert!(!logs.contains(value), "{value} was logged");
    }
    assert!(
        !logs.contains(&"9".repeat(64)),
        "an API key secret was logged"
    );
    assert!(
        !logs.to_lowercase().contains("zqlog"),
        "a personal value was logged in another form"
    );

    // The JSON line that ends a call carries the fields operators filter on.
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["message"] == "call finished")
        .collect();
    let create = lines
        .iter()
        .find(|l| l["span"]["method"] == "CreateCustomer" && l["span"]["code"] == "Ok")
        .unwrap_or_else(|| {
            panic!(
                "no finished CreateCustomer line among {} call lines",
                lines.len()
            )
        });
    let span = &create["span"];
    assert_eq!(
        (span["name"].as_str(), span["customer_id"].as_str()),
        (Some("rpc"), Some("cus_log"))
    );
    assert!(span["duration_ms"].as_f64().is_some(), "{span}");
    assert!(
        uuid::Uuid::parse_str(span["request_id"].as_str().unwrap()).is_ok(),
        "{span}"
    );
    assert_eq!(create["level"], "DEBUG");
    assert!(
        lines.iter().any(|l| l["span"]["code"] == "Aborted"),
        "failed calls have lines too"
    );
}
