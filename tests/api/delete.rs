//! DeleteCustomer.

use customers::api::pb::{self, AttachSourceRequest, DeleteCustomerRequest, GetCustomerRequest};
use tonic::{Code, Status};

use crate::support::{TestApp, assert_error};

async fn delete(app: &TestApp, id: &str, etag: &str) -> Result<(), Status> {
    let request = DeleteCustomerRequest {
        id: id.into(),
        etag: etag.into(),
    };
    app.client
        .clone()
        .delete_customer(request)
        .await
        .map(|r| r.into_inner())
}

async fn source_rows(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM customer_sources")
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn deleting_removes_the_customer_and_its_sources_and_a_second_delete_is_not_found() {
    let app = TestApp::spawn().await;
    app.create(pb::Customer {
        id: "cus_1".into(),
        ..Default::default()
    })
    .await;
    let request = AttachSourceRequest {
        customer_id: "cus_1".into(),
        source_id: "src_1".into(),
    };
    app.client.clone().attach_source(request).await.unwrap();

    delete(&app, "cus_1", "").await.unwrap();
    let again = delete(&app, "cus_1", "").await.unwrap_err();
    let get = app
        .client
        .clone()
        .get_customer(GetCustomerRequest { id: "cus_1".into() })
        .await
        .unwrap_err();

    assert_error(&again, Code::NotFound, "CUSTOMER_NOT_FOUND");
    assert_error(&get, Code::NotFound, "CUSTOMER_NOT_FOUND");
    assert_eq!(
        (app.customer_count().await, source_rows(&app).await),
        (0, 0)
    );
}

#[tokio::test]
async fn a_stale_etag_is_aborted_and_keeps_the_customer_while_the_current_one_deletes() {
    let app = TestApp::spawn().await;
    let created = app
        .create(pb::Customer {
            id: "cus_1".into(),
            ..Default::default()
        })
        .await;
    let request = AttachSourceRequest {
        customer_id: "cus_1".into(),
        source_id: "src_1".into(),
    };
    let current = app
        .client
        .clone()
        .attach_source(request)
        .await
        .unwrap()
        .into_inner();

    let stale = delete(&app, "cus_1", &created.etag).await.unwrap_err();
    assert_error(&stale, Code::Aborted, "ETAG_MISMATCH");
    assert_eq!(app.customer_count().await, 1);

    delete(&app, "cus_1", &current.etag).await.unwrap();
    assert_eq!(app.customer_count().await, 0);
}

#[tokio::test]
async fn deleting_an_unknown_or_invalid_id_fails_cleanly() {
    let app = TestApp::spawn().await;

    let unknown = delete(&app, "cus_none", "").await.unwrap_err();
    let unknown_with_etag = delete(&app, "cus_none", "abc").await.unwrap_err();
    let invalid = delete(&app, "", "").await.unwrap_err();

    assert_error(&unknown, Code::NotFound, "CUSTOMER_NOT_FOUND");
    assert_error(&unknown_with_etag, Code::NotFound, "CUSTOMER_NOT_FOUND");
    assert_error(&invalid, Code::InvalidArgument, "MISSING_PARAMETER");
}
