//! UpdateCustomer: masks, clearing, etags, and what is never written.

use customers::api::pb::{self, GetCustomerRequest, UpdateCustomerRequest};
use prost_types::FieldMask;
use tonic::Code;

use crate::support::{TestApp, assert_error, full_customer, violations};

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

async fn update(
    app: &TestApp,
    customer: pb::Customer,
    paths: Option<&[&str]>,
) -> Result<pb::Customer, tonic::Status> {
    let request = UpdateCustomerRequest {
        customer: Some(customer),
        update_mask: paths.and_then(mask),
    };
    app.client
        .clone()
        .update_customer(request)
        .await
        .map(|r| r.into_inner())
}

async fn get(app: &TestApp, id: &str) -> pb::Customer {
    app.client
        .clone()
        .get_customer(GetCustomerRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

fn only_id(id: &str) -> pb::Customer {
    pb::Customer {
        id: id.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn without_a_mask_only_populated_fields_change_and_etag_and_update_time_move() {
    let app = TestApp::spawn().await;
    let before = app.create(full_customer("cus_1")).await;
    let mut change = only_id("cus_1");
    change.shipping = Some(pb::Shipping {
        address: Some(pb::Address {
            city: Some("大阪市".into()),
            ..Default::default()
        }),
        ..Default::default()
    });

    let after = update(&app, change, None).await.unwrap();

    let mut expected = before.clone();
    expected
        .shipping
        .as_mut()
        .unwrap()
        .address
        .as_mut()
        .unwrap()
        .city = Some("大阪市".into());
    expected.etag = after.etag.clone();
    expected.update_time = after.update_time;
    assert_eq!(after, expected);
    assert_ne!(after.etag, before.etag);
    let micros = |t: Option<prost_types::Timestamp>| t.map(|t| (t.seconds, t.nanos)).unwrap();
    assert!(micros(after.update_time) > micros(before.update_time));
    assert_eq!(
        get(&app, "cus_1").await,
        after,
        "update_time round-trips exactly"
    );
}

#[tokio::test]
async fn without_a_mask_an_empty_string_clears_the_field() {
    let app = TestApp::spawn().await;
    app.create(full_customer("cus_1")).await;
    let mut change = only_id("cus_1");
    change.email = Some(String::new());

    let after = update(&app, change, None).await.unwrap();

    assert_eq!(after.email, None);
    let stored: Option<String> = sqlx::query_scalar("SELECT email FROM customers")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, None);
}

#[tokio::test]
async fn with_a_mask_exactly_the_named_paths_change() {
    let app = TestApp::spawn().await;
    let before = app.create(full_customer("cus_1")).await;
    let mut change = full_customer("cus_1");
    change.email = Some("new@example.com".into());
    change.shipping.as_mut().unwrap().name = Some("Someone Else".into());

    let after = update(&app, change, Some(&["email"])).await.unwrap();

    assert_eq!(after.email.as_deref(), Some("new@example.com"));
    assert_eq!(after.shipping, before.shipping);
}

#[tokio::test]
async fn a_named_nested_path_without_a_value_is_cleared_and_its_siblings_stay() {
    let app = TestApp::spawn().await;
    app.create(full_customer("cus_1")).await;

    let after = update(&app, only_id("cus_1"), Some(&["shipping.address.city"]))
        .await
        .unwrap();

    let address = after.shipping.unwrap().address.unwrap();
    assert_eq!(address.city, None);
    assert_eq!(address.country.as_deref(), Some("JP"));
}

#[tokio::test]
async fn naming_a_group_path_replaces_the_whole_group() {
    let app = TestApp::spawn().await;
    app.create(full_customer("cus_1")).await;
    let mut change = only_id("cus_1");
    change.shipping = Some(pb::Shipping {
        name: Some("Only Name".into()),
        ..Default::default()
    });

    let after = update(&app, change, Some(&["shipping"])).await.unwrap();

    assert_eq!(
        after.shipping,
        Some(pb::Shipping {
            name: Some("Only Name".into()),
            ..Default::default()
        })
    );
}

#[tokio::test]
async fn star_replaces_every_writable_field() {
    let app = TestApp::spawn().await;
    let before = app.create(full_customer("cus_1")).await;
    let mut change = only_id("cus_1");
    change.email = Some("only@example.com".into());

    let after = update(&app, change, Some(&["*"])).await.unwrap();

    let expected = pb::Customer {
        id: "cus_1".into(),
        email: Some("only@example.com".into()),
        r#type: pb::CustomerType::Individual as i32,
        enabled: Some(true),
        create_time: before.create_time,
        update_time: after.update_time,
        etag: after.etag.clone(),
        ..Default::default()
    };
    assert_eq!(after, expected);
}

#[tokio::test]
async fn output_only_paths_and_id_are_ignored_so_a_read_customer_can_be_sent_back() {
    let app = TestApp::spawn().await;
    let before = app.create(full_customer("cus_1")).await;
    let mut change = before.clone();
    change.email = Some("changed@example.com".into());
    change.live_mode = true;
    change.create_time = Some(prost_types::Timestamp {
        seconds: 5,
        nanos: 0,
    });

    let paths = [
        "id",
        "etag",
        "create_time",
        "update_time",
        "live_mode",
        "sources",
        "email",
    ];
    let after = update(&app, change, Some(&paths)).await.unwrap();

    assert_eq!(after.email.as_deref(), Some("changed@example.com"));
    assert_eq!(after.create_time, before.create_time);
    assert!(!after.live_mode);
}

#[tokio::test]
async fn an_unknown_path_is_invalid_and_nothing_changes() {
    let app = TestApp::spawn().await;
    let before = app.create(full_customer("cus_1")).await;
    let mut change = only_id("cus_1");
    change.email = Some("changed@example.com".into());

    let error = update(&app, change, Some(&["email", "shipping.address.zip"]))
        .await
        .unwrap_err();

    assert_error(&error, Code::InvalidArgument, "INVALID_PARAMETER");
    assert_eq!(
        violations(&error),
        [("update_mask.paths[1]".to_owned(), "UNSUPPORTED".to_owned())]
    );
    assert_eq!(get(&app, "cus_1").await, before);
}

#[tokio::test]
async fn a_stale_etag_is_aborted_and_nothing_changes_while_the_current_one_passes() {
    let app = TestApp::spawn().await;
    let before = app.create(full_customer("cus_1")).await;
    let mut first = only_id("cus_1");
    first.etag = before.etag.clone();
    first.locale = Some("en_US".into());
    let current = update(&app, first, None).await.unwrap();

    let mut stale = only_id("cus_1");
    stale.etag = before.etag.clone();
    stale.locale = Some("de_DE".into());
    let error = update(&app, stale, None).await.unwrap_err();

    assert_error(&error, Code::Aborted, "ETAG_MISMATCH");
    assert_eq!(get(&app, "cus_1").await, current);
}

#[tokio::test]
async fn metadata_replaces_the_whole_map_and_metadata_key_paths_change_one_entry() {
    let app = TestApp::spawn().await;
    app.create(full_customer("cus_1")).await;
    let mut change = only_id("cus_1");
    change.metadata = [
        ("tier".into(), "platinum".into()),
        ("new.key".into(), "1".into()),
    ]
    .into();

    let one = update(
        &app,
        change.clone(),
        Some(&["metadata.tier", "metadata.new.key", "metadata.crm"]),
    )
    .await
    .unwrap();
    let whole = update(&app, change, Some(&["metadata"])).await.unwrap();

    let entries = |c: &pb::Customer| {
        let mut e: Vec<_> = c.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
        e.sort();
        e
    };
    assert_eq!(
        entries(&one),
        ["new.key=1", "tier=platinum"],
        "crm removed, tier changed, new.key added"
    );
    assert_eq!(entries(&whole), ["new.key=1", "tier=platinum"]);
}

#[tokio::test]
async fn invalid_values_are_rejected_only_in_fields_the_update_writes() {
    let app = TestApp::spawn().await;
    app.create(full_customer("cus_1")).await;
    let mut change = only_id("cus_1");
    change.email = Some("not an email".into());
    change.locale = Some("en_US".into());

    let ignored = update(&app, change.clone(), Some(&["locale"]))
        .await
        .unwrap();
    let error = update(&app, change, None).await.unwrap_err();

    assert_eq!(ignored.locale.as_deref(), Some("en_US"));
    assert_eq!(
        violations(&error),
        [("customer.email".to_owned(), "INVALID_FORMAT".to_owned())]
    );
}

#[tokio::test]
async fn an_unknown_customer_is_not_found_and_a_missing_customer_is_a_missing_parameter() {
    let app = TestApp::spawn().await;

    let unknown = update(&app, only_id("cus_missing"), Some(&["email"]))
        .await
        .unwrap_err();
    let missing = app
        .client
        .clone()
        .update_customer(UpdateCustomerRequest::default())
        .await
        .unwrap_err();
    let no_id = update(&app, only_id(""), Some(&["email"]))
        .await
        .unwrap_err();

    assert_error(&unknown, Code::NotFound, "CUSTOMER_NOT_FOUND");
    assert_error(&missing, Code::InvalidArgument, "MISSING_PARAMETER");
    assert_eq!(
        violations(&missing),
        [("customer".to_owned(), "REQUIRED".to_owned())]
    );
    assert_eq!(
        violations(&no_id),
        [("customer.id".to_owned(), "REQUIRED".to_owned())]
    );
}

#[tokio::test]
async fn clearing_type_and_enabled_restores_their_defaults() {
    let app = TestApp::spawn().await;
    app.create(full_customer("cus_1")).await;

    let after = update(&app, only_id("cus_1"), Some(&["type", "enabled"]))
        .await
        .unwrap();

    assert_eq!(after.r#type, pb::CustomerType::Individual as i32);
    assert_eq!(after.enabled, Some(true));
}

#[tokio::test]
async fn an_update_that_changes_nothing_keeps_the_etag() {
    let app = TestApp::spawn().await;
    let before = app.create(full_customer("cus_1")).await;

    let after = update(&app, before.clone(), Some(&["*"])).await.unwrap();

    assert_eq!(after, before);
}

#[tokio::test]
async fn request_to_be_forgotten_false_is_invalid() {
    let app = TestApp::spawn().await;
    app.create(full_customer("cus_1")).await;
    let mut change = only_id("cus_1");
    change.request_to_be_forgotten = Some(false);

    let error = update(&app, change, None).await.unwrap_err();

    assert_eq!(
        violations(&error),
        [(
            "customer.request_to_be_forgotten".to_owned(),
            "NOT_ALLOWED".to_owned()
        )]
    );
}

#[tokio::test]
async fn a_default_source_that_is_not_attached_is_failed_precondition() {
    let app = TestApp::spawn().await;
    app.create(full_customer("cus_1")).await;
    let mut change = only_id("cus_1");
    change.default_source_id = Some("src_1".into());

    let error = update(&app, change, None).await.unwrap_err();

    assert_error(&error, Code::FailedPrecondition, "SOURCE_NOT_ATTACHED");
}
