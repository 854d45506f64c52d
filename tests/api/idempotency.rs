//! CreateCustomer with request_id: retries return the first result.

use customers::api::pb::{
    self, CreateCustomerRequest, DeleteCustomerRequest, UpdateCustomerRequest,
};
use tonic::Code;

use crate::support::{TestApp, assert_error, full_customer};

fn request(customer: Option<pb::Customer>, request_id: &str) -> CreateCustomerRequest {
    CreateCustomerRequest {
        customer,
        request_id: request_id.into(),
    }
}

async fn records(app: &TestApp) -> Vec<(String, String, bool)> {
    sqlx::query_as("SELECT request_id, customer_id, fingerprint IS NOT NULL FROM idempotency_keys ORDER BY request_id")
        .fetch_all(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_retry_returns_the_first_result_with_the_same_generated_id() {
    let app = TestApp::spawn().await;
    let customer = pb::Customer {
        email: Some("retry@example.com".into()),
        ..Default::default()
    };

    let first = app
        .client
        .clone()
        .create_customer(request(Some(customer.clone()), "req-1"))
        .await
        .unwrap()
        .into_inner();
    // The reply was "lost"; the client sends the same request again.
    let retry = app
        .client
        .clone()
        .create_customer(request(Some(customer), "req-1"))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(retry, first);
    assert_eq!(app.customer_count().await, 1);
    assert_eq!(records(&app).await, [("req-1".to_owned(), first.id, true)]);
}

#[tokio::test]
async fn fifty_concurrent_creates_with_one_request_id_create_one_customer_and_answer_alike() {
    let app = TestApp::spawn().await;
    let customer = full_customer("");

    let calls: Vec<_> = (0..50)
        .map(|_| {
            let mut client = app.client.clone();
            let customer = customer.clone();
            tokio::spawn(async move {
                client
                    .create_customer(request(Some(customer), "req-race"))
                    .await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap().unwrap().into_inner());
    }

    assert_eq!(app.customer_count().await, 1);
    assert!(
        answers.iter().all(|answer| *answer == answers[0]),
        "50 identical answers"
    );
}

#[tokio::test]
async fn the_same_request_id_with_a_different_customer_is_request_id_reused() {
    let app = TestApp::spawn().await;
    let first = pb::Customer {
        email: Some("a@example.com".into()),
        ..Default::default()
    };
    let other = pb::Customer {
        email: Some("b@example.com".into()),
        ..Default::default()
    };
    app.client
        .clone()
        .create_customer(request(Some(first), "req-1"))
        .await
        .unwrap();

    let error = app
        .client
        .clone()
        .create_customer(request(Some(other), "req-1"))
        .await
        .unwrap_err();
    let without_customer = app
        .client
        .clone()
        .create_customer(request(None, "req-1"))
        .await
        .unwrap_err();

    assert_error(&error, Code::FailedPrecondition, "REQUEST_ID_REUSED");
    assert_error(
        &without_customer,
        Code::FailedPrecondition,
        "REQUEST_ID_REUSED",
    );
    assert_eq!(app.customer_count().await, 1);
}

#[tokio::test]
async fn a_replay_returns_the_current_state_and_a_deleted_customer_is_not_found() {
    let app = TestApp::spawn().await;
    let customer = pb::Customer {
        id: "cus_1".into(),
        ..Default::default()
    };
    app.client
        .clone()
        .create_customer(request(Some(customer.clone()), "req-1"))
        .await
        .unwrap();
    let changed = pb::Customer {
        id: "cus_1".into(),
        locale: Some("fr_FR".into()),
        ..Default::default()
    };
    app.client
        .clone()
        .update_customer(UpdateCustomerRequest {
            customer: Some(changed),
            update_mask: None,
        })
        .await
        .unwrap();

    let replay = app
        .client
        .clone()
        .create_customer(request(Some(customer.clone()), "req-1"))
        .await
        .unwrap()
        .into_inner();
    app.client
        .clone()
        .delete_customer(DeleteCustomerRequest {
            id: "cus_1".into(),
            etag: String::new(),
        })
        .await
        .unwrap();
    let after_delete = app
        .client
        .clone()
        .create_customer(request(Some(customer), "req-1"))
        .await
        .unwrap_err();

    assert_eq!(replay.locale.as_deref(), Some("fr_FR"));
    assert_error(&after_delete, Code::NotFound, "CUSTOMER_NOT_FOUND");
    assert_eq!(
        app.customer_count().await,
        0,
        "a replay never recreates a deleted customer"
    );

    // Someone else creates a customer with the freed id: still not ours.
    app.create(pb::Customer {
        id: "cus_1".into(),
        email: Some("other@example.com".into()),
        ..Default::default()
    })
    .await;
    let after_reuse = app
        .client
        .clone()
        .create_customer(request(Some(customer_again()), "req-1"))
        .await
        .unwrap_err();
    assert_error(&after_reuse, Code::NotFound, "CUSTOMER_NOT_FOUND");
}

fn customer_again() -> pb::Customer {
    pb::Customer {
        id: "cus_1".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn erasure_clears_the_fingerprint_and_a_replay_returns_the_scrubbed_customer() {
    let app = TestApp::spawn().await;
    let customer = full_customer("cus_1");
    app.client
        .clone()
        .create_customer(request(Some(customer.clone()), "req-1"))
        .await
        .unwrap();
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

    let replay = app
        .client
        .clone()
        .create_customer(request(Some(customer), "req-1"))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(
        records(&app).await,
        [("req-1".to_owned(), "cus_1".to_owned(), false)]
    );
    assert_eq!(replay.request_to_be_forgotten, Some(true));
    assert_eq!(replay.email, None);

    // The requested id survives erasure, so another id is still a misuse.
    let other = pb::Customer {
        id: "cus_other".into(),
        ..Default::default()
    };
    let reused = app
        .client
        .clone()
        .create_customer(request(Some(other), "req-1"))
        .await
        .unwrap_err();
    assert_error(&reused, Code::FailedPrecondition, "REQUEST_ID_REUSED");
}

#[tokio::test]
async fn a_failed_create_keeps_no_record_and_records_older_than_a_day_expire() {
    let app = TestApp::spawn().await;
    app.create(pb::Customer {
        id: "cus_taken".into(),
        ..Default::default()
    })
    .await;
    let taken = pb::Customer {
        id: "cus_taken".into(),
        ..Default::default()
    };

    let error = app
        .client
        .clone()
        .create_customer(request(Some(taken), "req-fail"))
        .await
        .unwrap_err();
    assert_error(&error, Code::AlreadyExists, "CUSTOMER_EXISTS");
    assert_eq!(records(&app).await, []);

    let first = pb::Customer {
        email: Some("old@example.com".into()),
        ..Default::default()
    };
    let old = app
        .client
        .clone()
        .create_customer(request(Some(first), "req-old"))
        .await
        .unwrap()
        .into_inner();
    sqlx::query("UPDATE idempotency_keys SET create_time = now() - interval '25 hours'")
        .execute(&app.db)
        .await
        .unwrap();
    let other = pb::Customer {
        email: Some("new@example.com".into()),
        ..Default::default()
    };
    let reused = app
        .client
        .clone()
        .create_customer(request(Some(other), "req-old"))
        .await
        .unwrap()
        .into_inner();

    assert_ne!(reused.id, old.id, "an expired request_id starts afresh");
    let store =
        customers::store::CustomerStore::new(app.db.clone(), std::time::Duration::from_secs(5));
    sqlx::query("UPDATE idempotency_keys SET create_time = now() - interval '25 hours'")
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(store.purge_expired_requests().await.unwrap(), 1);
    assert_eq!(records(&app).await, []);
}
