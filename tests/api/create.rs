//! CreateCustomer: defaults, round trips, validation, duplicates.

use customers::api::pb::{self, CreateCustomerRequest, GetCustomerRequest};
use tonic::Code;

use crate::support::{TestApp, assert_error, full_customer, violations};

fn request(customer: pb::Customer) -> CreateCustomerRequest {
    CreateCustomerRequest {
        customer: Some(customer),
        request_id: String::new(),
    }
}

#[tokio::test]
async fn an_empty_create_stores_an_enabled_individual_with_a_uuid_v7_id() {
    let app = TestApp::spawn().await;

    let created = app
        .client
        .clone()
        .create_customer(CreateCustomerRequest::default())
        .await
        .unwrap()
        .into_inner();

    let uuid = uuid::Uuid::parse_str(&created.id).unwrap();
    assert_eq!(uuid.get_version_num(), 7);
    assert_eq!(created.id, created.id.to_lowercase());
    assert_eq!(created.r#type, pb::CustomerType::Individual as i32);
    assert_eq!(created.enabled, Some(true));
    assert_eq!(created.request_to_be_forgotten, None);
    assert!(!created.etag.is_empty());
    assert_eq!(created.create_time, created.update_time);
    let row: (String, bool, String) =
        sqlx::query_as("SELECT account_id, live_mode, id FROM customers")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(row, ("acct_default".to_owned(), false, created.id));
}

#[tokio::test]
async fn every_field_round_trips_and_get_returns_exactly_what_create_returned() {
    let app = TestApp::spawn().await;
    let mut sent = full_customer("cus_roundtrip");
    // OUTPUT_ONLY fields sent by a client are ignored.
    sent.live_mode = true;
    sent.etag = "client-etag".to_owned();
    sent.sources = vec![pb::Source {
        id: "src_x".to_owned(),
        attach_time: None,
    }];
    sent.create_time = Some(prost_types::Timestamp {
        seconds: 1,
        nanos: 0,
    });

    let created = app.create(sent.clone()).await;
    let read = app
        .client
        .clone()
        .get_customer(GetCustomerRequest {
            id: "cus_roundtrip".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();

    assert_eq!(
        read, created,
        "timestamps and every field round-trip exactly"
    );
    assert!(!created.live_mode);
    assert!(created.sources.is_empty());
    assert_ne!(created.etag, "client-etag");
    assert_ne!(created.create_time.unwrap().seconds, 1);
    assert_eq!(
        created.create_time.unwrap().nanos % 1000,
        0,
        "microsecond precision"
    );
    let mut expected = sent;
    expected.live_mode = false;
    expected.sources = vec![];
    expected.etag = created.etag.clone();
    expected.create_time = created.create_time;
    expected.update_time = created.update_time;
    expected.tax_identifiers = vec![
        pb::TaxIdentifier {
            r#type: "jp_cn".to_owned(),
            value: "1234567890123".to_owned(),
        },
        pb::TaxIdentifier {
            r#type: "eu_vat".to_owned(),
            value: "DE123456788".to_owned(),
        },
    ];
    assert_eq!(created, expected);
}

#[tokio::test]
async fn ids_count_characters_so_forty_multibyte_characters_pass_and_forty_one_fail() {
    let app = TestApp::spawn().await;
    let forty = "顧".repeat(40);

    let created = app
        .create(pb::Customer {
            id: forty.clone(),
            ..Default::default()
        })
        .await;
    let error = app
        .client
        .clone()
        .create_customer(request(pb::Customer {
            id: "顧".repeat(41),
            ..Default::default()
        }))
        .await
        .unwrap_err();

    assert_eq!(created.id, forty);
    assert_error(&error, Code::InvalidArgument, "INVALID_PARAMETER");
    assert_eq!(
        violations(&error),
        [("customer.id".to_owned(), "TOO_LONG".to_owned())]
    );
    assert_eq!(app.customer_count().await, 1);
}

/// One invalid field at a time: the exact path and reason it is reported
/// with.
#[tokio::test]
async fn each_validation_rule_reports_its_field_path_and_reason() {
    let app = TestApp::spawn().await;
    let long = |n: usize| "x".repeat(n);
    type Mutation = Box<dyn Fn(&mut pb::Customer)>;
    let cases: Vec<(Mutation, &str, &str)> = vec![
        (
            Box::new(|c| c.id = "a b".into()),
            "customer.id",
            "FORBIDDEN_CHARACTER",
        ),
        (
            Box::new(|c| c.id = "a/b".into()),
            "customer.id",
            "FORBIDDEN_CHARACTER",
        ),
        (
            Box::new(|c| c.id = "a\0b".into()),
            "customer.id",
            "CONTROL_CHARACTER",
        ),
        (
            Box::new(move |c| c.id = long(41)),
            "customer.id",
            "TOO_LONG",
        ),
        (
            Box::new(|c| c.email = Some("not-an-email".into())),
            "customer.email",
            "INVALID_FORMAT",
        ),
        (
            Box::new(|c| c.email = Some("Ana <a@example.com>".into())),
            "customer.email",
            "INVALID_FORMAT",
        ),
        (
            Box::new(|c| c.email = Some("a@localhost".into())),
            "customer.email",
            "INVALID_FORMAT",
        ),
        (
            Box::new(|c| c.email = Some("a@[10.0.0.1]".into())),
            "customer.email",
            "INVALID_FORMAT",
        ),
        (
            Box::new(|c| c.email = Some("\"a b\"@example.com".into())),
            "customer.email",
            "INVALID_FORMAT",
        ),
        (
            Box::new(move |c| c.email = Some(format!("{}@{}.com", long(64), long(186)))),
            "customer.email",
            "TOO_LONG",
        ),
        (
            Box::new(move |c| shipping(c).name = Some(long(201))),
            "customer.shipping.name",
            "TOO_LONG",
        ),
        (
            Box::new(move |c| shipping(c).phone = Some(long(51))),
            "customer.shipping.phone",
            "TOO_LONG",
        ),
        (
            Box::new(|c| shipping(c).email = Some("x".into())),
            "customer.shipping.email",
            "INVALID_FORMAT",
        ),
        (
            Box::new(move |c| shipping(c).organization = Some(long(201))),
            "customer.shipping.organization",
            "TOO_LONG",
        ),
        (
            Box::new(|c| address(c).line1 = Some("a\0".into())),
            "customer.shipping.address.line1",
            "CONTROL_CHARACTER",
        ),
        (
            Box::new(move |c| address(c).line2 = Some(long(201))),
            "customer.shipping.address.line2",
            "TOO_LONG",
        ),
        (
            Box::new(|c| address(c).city = Some("bell\u{7}".into())),
            "customer.shipping.address.city",
            "CONTROL_CHARACTER",
        ),
        (
            Box::new(move |c| address(c).postal_code = Some(long(201))),
            "customer.shipping.address.postal_code",
            "TOO_LONG",
        ),
        (
            Box::new(move |c| address(c).state = Some(long(201))),
            "customer.shipping.address.state",
            "TOO_LONG",
        ),
        (
            Box::new(|c| address(c).country = Some("de".into())),
            "customer.shipping.address.country",
            "INVALID_FORMAT",
        ),
        (
            Box::new(|c| address(c).country = Some("ZZ".into())),
            "customer.shipping.address.country",
            "INVALID_FORMAT",
        ),
        (
            Box::new(move |c| extra(c).neighborhood = Some(long(201))),
            "customer.shipping.additional_address_info.neighborhood",
            "TOO_LONG",
        ),
        (
            Box::new(|c| extra(c).division = Some("\u{1b}[31m".into())),
            "customer.shipping.additional_address_info.division",
            "CONTROL_CHARACTER",
        ),
        (
            Box::new(move |c| extra(c).phonetic_name = Some("ア".repeat(201))),
            "customer.shipping.additional_address_info.phonetic_name",
            "TOO_LONG",
        ),
        (
            Box::new(|c| c.locale = Some("en_us".into())),
            "customer.locale",
            "UNSUPPORTED",
        ),
        (Box::new(|c| c.r#type = 7), "customer.type", "UNSUPPORTED"),
        (
            Box::new(|c| c.metadata = (0..51).map(|i| (format!("k{i}"), "v".into())).collect()),
            "customer.metadata",
            "TOO_MANY",
        ),
        (
            Box::new(move |c| c.metadata = [(long(41), "v".into())].into()),
            "customer.metadata.key",
            "TOO_LONG",
        ),
        (
            Box::new(|c| c.metadata = [(String::new(), "v".into())].into()),
            "customer.metadata.key",
            "INVALID_FORMAT",
        ),
        (
            Box::new(move |c| c.metadata = [("k".into(), long(501))].into()),
            "customer.metadata.k",
            "TOO_LONG",
        ),
        (
            Box::new(|c| c.metadata = [("k".into(), "nul\0".into())].into()),
            "customer.metadata.k",
            "CONTROL_CHARACTER",
        ),
        (
            Box::new(|c| c.tax_identifiers = vec![tax("xx_vat", "1")]),
            "customer.tax_identifiers[0].type",
            "UNSUPPORTED",
        ),
        (
            Box::new(|c| c.tax_identifiers = vec![tax("eu_vat", "GR123456789")]),
            "customer.tax_identifiers[0].value",
            "INVALID_FORMAT",
        ),
        (
            Box::new(|c| {
                c.tax_identifiers = vec![
                    tax("gb_vat", "GB123456789"),
                    tax("gb_vat", "gb 123 456 789"),
                ]
            }),
            "customer.tax_identifiers[1]",
            "DUPLICATE",
        ),
        (
            Box::new(|c| {
                c.tax_identifiers = (0..11)
                    .map(|i| tax("us_ein", &format!("1234567{i:02}")))
                    .collect()
            }),
            "customer.tax_identifiers",
            "TOO_MANY",
        ),
        (
            Box::new(|c| c.default_source_id = Some("a/b".into())),
            "customer.default_source_id",
            "FORBIDDEN_CHARACTER",
        ),
        (
            Box::new(|c| c.request_to_be_forgotten = Some(true)),
            "customer.request_to_be_forgotten",
            "NOT_ALLOWED",
        ),
    ];

    for (mutate, field, expected_reason) in &cases {
        let mut customer = pb::Customer::default();
        mutate(&mut customer);
        let error = app
            .client
            .clone()
            .create_customer(request(customer))
            .await
            .unwrap_err();
        assert_error(&error, Code::InvalidArgument, "INVALID_PARAMETER");
        assert_eq!(
            violations(&error),
            [(field.to_string(), expected_reason.to_string())],
            "case {field}"
        );
    }
    assert_eq!(app.customer_count().await, 0);
}

#[tokio::test]
async fn all_violations_of_one_request_come_back_together_and_nothing_is_written() {
    let app = TestApp::spawn().await;
    let customer = pb::Customer {
        id: "bad id".into(),
        email: Some("nope".into()),
        shipping: Some(pb::Shipping {
            name: Some("Ana\0".into()),
            address: Some(pb::Address {
                country: Some("xx".into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        locale: Some("klingon".into()),
        tax_identifiers: vec![tax("eu_vat", "nonsense")],
        ..Default::default()
    };

    let error = app
        .client
        .clone()
        .create_customer(CreateCustomerRequest {
            customer: Some(customer),
            request_id: "r".repeat(65),
        })
        .await
        .unwrap_err();

    assert_error(&error, Code::InvalidArgument, "INVALID_PARAMETER");
    let mut sorted: Vec<String> = violations(&error).into_iter().map(|(f, _)| f).collect();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "customer.email",
            "customer.id",
            "customer.locale",
            "customer.shipping.address.country",
            "customer.shipping.name",
            "customer.tax_identifiers[0].value",
            "request_id",
        ]
    );
    assert_eq!(app.customer_count().await, 0);
}

#[tokio::test]
async fn a_duplicate_id_is_already_exists_and_leaves_the_first_customer_unchanged() {
    let app = TestApp::spawn().await;
    let first = app
        .create(pb::Customer {
            id: "cus_dup".into(),
            email: Some("a@example.com".into()),
            ..Default::default()
        })
        .await;

    let error = app
        .client
        .clone()
        .create_customer(request(pb::Customer {
            id: "cus_dup".into(),
            email: Some("b@example.com".into()),
            ..Default::default()
        }))
        .await
        .unwrap_err();

    assert_error(&error, Code::AlreadyExists, "CUSTOMER_EXISTS");
    let email: String = sqlx::query_scalar("SELECT email FROM customers WHERE id = 'cus_dup'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(email, "a@example.com");
    assert_eq!(first.email.as_deref(), Some("a@example.com"));
}

#[tokio::test]
async fn thirty_concurrent_creates_of_one_id_succeed_exactly_once() {
    let app = TestApp::spawn().await;
    let calls = (0..30).map(|i| {
        let mut client = app.client.clone();
        async move {
            client
                .create_customer(request(pb::Customer {
                    id: "cus_race".into(),
                    metadata: [("caller".into(), i.to_string())].into(),
                    ..Default::default()
                }))
                .await
        }
    });

    let results = futures_join_all(calls).await;

    let ok = results.iter().filter(|r| r.is_ok()).count();
    let exists = results
        .iter()
        .filter(|r| matches!(r, Err(s) if s.code() == Code::AlreadyExists))
        .count();
    assert_eq!((ok, exists), (1, 29));
    assert_eq!(app.customer_count().await, 1);
}

#[tokio::test]
async fn a_default_source_on_create_is_failed_precondition_since_none_is_attached() {
    let app = TestApp::spawn().await;

    let error = app
        .client
        .clone()
        .create_customer(request(pb::Customer {
            default_source_id: Some("src_1".into()),
            ..Default::default()
        }))
        .await
        .unwrap_err();

    assert_error(&error, Code::FailedPrecondition, "SOURCE_NOT_ATTACHED");
    assert_eq!(app.customer_count().await, 0);
}

#[tokio::test]
async fn empty_strings_on_create_mean_unset() {
    let app = TestApp::spawn().await;

    let created = app
        .create(pb::Customer {
            email: Some(String::new()),
            locale: Some(String::new()),
            ..Default::default()
        })
        .await;

    assert_eq!((created.email, created.locale), (None, None));
}

async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for handle in handles {
        outputs.push(handle.await.unwrap());
    }
    outputs
}

fn tax(kind: &str, value: &str) -> pb::TaxIdentifier {
    pb::TaxIdentifier {
        r#type: kind.into(),
        value: value.into(),
    }
}

fn shipping(c: &mut pb::Customer) -> &mut pb::Shipping {
    c.shipping.get_or_insert_with(Default::default)
}

fn address(c: &mut pb::Customer) -> &mut pb::Address {
    shipping(c).address.get_or_insert_with(Default::default)
}

fn extra(c: &mut pb::Customer) -> &mut pb::AdditionalAddressInfo {
    shipping(c)
        .additional_address_info
        .get_or_insert_with(Default::default)
}

/// Concurrent creates share one INSERT (group commit); each call still gets
/// its own outcome.
#[tokio::test]
async fn concurrent_creates_mixing_new_taken_and_repeated_ids_each_get_their_own_answer() {
    let app = TestApp::spawn().await;
    for i in 0..10 {
        app.create(pb::Customer {
            id: format!("cus_taken_{i}"),
            ..Default::default()
        })
        .await;
    }
    let mut ids: Vec<String> = (0..10).map(|i| format!("cus_taken_{i}")).collect();
    ids.extend((0..20).map(|i| format!("cus_new_{i}")));
    ids.extend((0..10).map(|i| format!("cus_new_{i}")));

    let calls: Vec<_> = ids
        .iter()
        .map(|id| {
            let mut client = app.client.clone();
            let customer = pb::Customer {
                id: id.clone(),
                locale: Some("en_GB".into()),
                ..Default::default()
            };
            tokio::spawn(async move { client.create_customer(request(customer)).await })
        })
        .collect();
    let mut outcomes: std::collections::HashMap<String, (usize, usize)> = Default::default();
    for (id, call) in ids.iter().zip(calls) {
        let entry = outcomes.entry(id.clone()).or_default();
        match call.await.unwrap() {
            Ok(created) => {
                assert_eq!(created.into_inner().locale.as_deref(), Some("en_GB"));
                entry.0 += 1;
            }
            Err(status) => {
                assert_error(&status, Code::AlreadyExists, "CUSTOMER_EXISTS");
                entry.1 += 1;
            }
        }
    }

    for i in 0..10 {
        assert_eq!(
            outcomes[&format!("cus_taken_{i}")],
            (0, 1),
            "a taken id fails"
        );
        assert_eq!(
            outcomes[&format!("cus_new_{i}")],
            (1, 1),
            "a repeated new id succeeds once"
        );
    }
    for i in 10..20 {
        assert_eq!(outcomes[&format!("cus_new_{i}")], (1, 0));
    }
    assert_eq!(app.customer_count().await, 30);
    let taken_locales: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM customers WHERE id LIKE 'cus_taken_%' AND locale IS NOT NULL",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(taken_locales, 0, "taken ids keep their first customer");
}
