//! AttachSource and DetachSource, and the default source rule.

use customers::api::pb::{self, AttachSourceRequest, DetachSourceRequest, UpdateCustomerRequest};
use tonic::{Code, Status};

use crate::support::{TestApp, assert_error, violations};

async fn attach(app: &TestApp, customer: &str, source: &str) -> Result<pb::Customer, Status> {
    let request = AttachSourceRequest {
        customer_id: customer.into(),
        source_id: source.into(),
    };
    app.client
        .clone()
        .attach_source(request)
        .await
        .map(|r| r.into_inner())
}

async fn detach(app: &TestApp, customer: &str, source: &str) -> Result<pb::Customer, Status> {
    let request = DetachSourceRequest {
        customer_id: customer.into(),
        source_id: source.into(),
    };
    app.client
        .clone()
        .detach_source(request)
        .await
        .map(|r| r.into_inner())
}

async fn set_default(app: &TestApp, customer: &str, source: &str) -> Result<pb::Customer, Status> {
    let customer = pb::Customer {
        id: customer.into(),
        default_source_id: Some(source.into()),
        ..Default::default()
    };
    let request = UpdateCustomerRequest {
        customer: Some(customer),
        update_mask: None,
    };
    app.client
        .clone()
        .update_customer(request)
        .await
        .map(|r| r.into_inner())
}

async fn stored_sources(app: &TestApp, customer: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT source_id FROM customer_sources WHERE customer_id = $1 ORDER BY attach_time, source_id")
        .bind(customer)
        .fetch_all(&app.db)
        .await
        .unwrap()
}

fn ids(customer: &pb::Customer) -> Vec<&str> {
    customer.sources.iter().map(|s| s.id.as_str()).collect()
}

#[tokio::test]
async fn the_first_source_becomes_the_default_and_later_ones_do_not() {
    let app = TestApp::spawn().await;
    let created = app
        .create(pb::Customer {
            id: "cus_1".into(),
            ..Default::default()
        })
        .await;

    let first = attach(&app, "cus_1", "src_card").await.unwrap();
    let second = attach(&app, "cus_1", "src_bank").await.unwrap();

    assert_eq!(first.default_source_id.as_deref(), Some("src_card"));
    assert_eq!(second.default_source_id.as_deref(), Some("src_card"));
    assert_eq!(ids(&second), ["src_card", "src_bank"]);
    assert!(second.sources.iter().all(|s| s.attach_time.is_some()));
    assert_ne!(first.etag, created.etag);
    assert_ne!(second.etag, first.etag);
    assert_eq!(
        stored_sources(&app, "cus_1").await,
        ["src_card", "src_bank"]
    );
}

#[tokio::test]
async fn attaching_an_attached_source_again_changes_nothing() {
    let app = TestApp::spawn().await;
    app.create(pb::Customer {
        id: "cus_1".into(),
        ..Default::default()
    })
    .await;
    let first = attach(&app, "cus_1", "src_card").await.unwrap();

    let again = attach(&app, "cus_1", "src_card").await.unwrap();

    assert_eq!(again, first);
}

#[tokio::test]
async fn the_default_must_name_an_attached_source() {
    let app = TestApp::spawn().await;
    app.create(pb::Customer {
        id: "cus_1".into(),
        ..Default::default()
    })
    .await;
    attach(&app, "cus_1", "src_a").await.unwrap();
    attach(&app, "cus_1", "src_b").await.unwrap();

    let unattached = set_default(&app, "cus_1", "src_zzz").await.unwrap_err();
    let attached = set_default(&app, "cus_1", "src_b").await.unwrap();

    assert_error(&unattached, Code::FailedPrecondition, "SOURCE_NOT_ATTACHED");
    assert_eq!(attached.default_source_id.as_deref(), Some("src_b"));
}

#[tokio::test]
async fn detaching_the_default_clears_it_and_detaching_another_keeps_it() {
    let app = TestApp::spawn().await;
    app.create(pb::Customer {
        id: "cus_1".into(),
        ..Default::default()
    })
    .await;
    attach(&app, "cus_1", "src_a").await.unwrap();
    attach(&app, "cus_1", "src_b").await.unwrap();
    attach(&app, "cus_1", "src_c").await.unwrap();

    let other = detach(&app, "cus_1", "src_b").await.unwrap();
    let default = detach(&app, "cus_1", "src_a").await.unwrap();

    assert_eq!(other.default_source_id.as_deref(), Some("src_a"));
    assert_eq!(default.default_source_id, None);
    assert_eq!(ids(&default), ["src_c"]);
    assert_eq!(stored_sources(&app, "cus_1").await, ["src_c"]);
}

#[tokio::test]
async fn detaching_a_source_that_is_not_attached_is_not_found() {
    let app = TestApp::spawn().await;
    app.create(pb::Customer {
        id: "cus_1".into(),
        ..Default::default()
    })
    .await;

    let error = detach(&app, "cus_1", "src_none").await.unwrap_err();
    let unknown_customer = detach(&app, "cus_none", "src_none").await.unwrap_err();

    assert_error(&error, Code::NotFound, "SOURCE_NOT_FOUND");
    assert_error(&unknown_customer, Code::NotFound, "CUSTOMER_NOT_FOUND");
}

#[tokio::test]
async fn the_26th_source_is_too_many() {
    let app = TestApp::spawn().await;
    app.create(pb::Customer {
        id: "cus_1".into(),
        ..Default::default()
    })
    .await;
    for i in 0..25 {
        attach(&app, "cus_1", &format!("src_{i}")).await.unwrap();
    }

    let error = attach(&app, "cus_1", "src_25").await.unwrap_err();
    let again = attach(&app, "cus_1", "src_7").await;

    assert_error(&error, Code::FailedPrecondition, "TOO_MANY_SOURCES");
    assert!(again.is_ok(), "re-attaching at the limit is still a no-op");
    assert_eq!(stored_sources(&app, "cus_1").await.len(), 25);
}

#[tokio::test]
async fn forty_concurrent_attaches_leave_25_sources_and_an_attached_default() {
    let app = TestApp::spawn().await;
    app.create(pb::Customer {
        id: "cus_1".into(),
        ..Default::default()
    })
    .await;

    let calls: Vec<_> = (0..40)
        .map(|i| {
            let mut client = app.client.clone();
            tokio::spawn(async move {
                let request = AttachSourceRequest {
                    customer_id: "cus_1".into(),
                    source_id: format!("src_{i}"),
                };
                client.attach_source(request).await
            })
        })
        .collect();
    let mut ok = 0;
    let mut too_many = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(status) if status.code() == Code::FailedPrecondition => too_many += 1,
            Err(status) => panic!("unexpected {status:?}"),
        }
    }

    assert_eq!((ok, too_many), (25, 15));
    let stored = stored_sources(&app, "cus_1").await;
    assert_eq!(stored.len(), 25);
    let default: Option<String> =
        sqlx::query_scalar("SELECT default_source_id FROM customers WHERE id = 'cus_1'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(stored.contains(&default.unwrap()));
}

#[tokio::test]
async fn invalid_ids_are_reported_on_both_fields_and_a_forgotten_customer_takes_no_sources() {
    let app = TestApp::spawn().await;
    app.create(pb::Customer {
        id: "cus_1".into(),
        ..Default::default()
    })
    .await;
    let forget = pb::Customer {
        id: "cus_1".into(),
        request_to_be_forgotten: Some(true),
        ..Default::default()
    };
    app.client
        .clone()
        .update_customer(UpdateCustomerRequest {
            customer: Some(forget),
            update_mask: None,
        })
        .await
        .unwrap();

    let invalid = attach(&app, "a b", &"s".repeat(101)).await.unwrap_err();
    let forgotten = attach(&app, "cus_1", "src_a").await.unwrap_err();

    assert_eq!(
        violations(&invalid),
        [
            ("customer_id".to_owned(), "FORBIDDEN_CHARACTER".to_owned()),
            ("source_id".to_owned(), "TOO_LONG".to_owned())
        ]
    );
    assert_error(&forgotten, Code::FailedPrecondition, "CUSTOMER_FORGOTTEN");
}
