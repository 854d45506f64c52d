//! GetCustomer.

use customers::api::pb::GetCustomerRequest;
use tonic::Code;

use crate::support::{TestApp, assert_error, violations};

#[tokio::test]
async fn an_unknown_id_is_not_found() {
    let app = TestApp::spawn().await;

    let error = app
        .client
        .clone()
        .get_customer(GetCustomerRequest {
            id: "cus_missing".into(),
        })
        .await
        .unwrap_err();

    assert_error(&error, Code::NotFound, "CUSTOMER_NOT_FOUND");
}

#[tokio::test]
async fn an_empty_id_is_a_missing_parameter() {
    let app = TestApp::spawn().await;

    let error = app
        .client
        .clone()
        .get_customer(GetCustomerRequest { id: String::new() })
        .await
        .unwrap_err();

    assert_error(&error, Code::InvalidArgument, "MISSING_PARAMETER");
    assert_eq!(
        violations(&error),
        [("id".to_owned(), "REQUIRED".to_owned())]
    );
}

#[tokio::test]
async fn an_id_with_forbidden_characters_is_invalid_not_not_found() {
    let app = TestApp::spawn().await;

    let error = app
        .client
        .clone()
        .get_customer(GetCustomerRequest {
            id: "../etc".into(),
        })
        .await
        .unwrap_err();

    assert_error(&error, Code::InvalidArgument, "INVALID_PARAMETER");
    assert_eq!(
        violations(&error),
        [("id".to_owned(), "FORBIDDEN_CHARACTER".to_owned())]
    );
}

#[tokio::test]
async fn ids_compare_exactly() {
    let app = TestApp::spawn().await;
    app.create(customers::api::pb::Customer {
        id: "Cus_Case".into(),
        ..Default::default()
    })
    .await;

    let error = app
        .client
        .clone()
        .get_customer(GetCustomerRequest {
            id: "cus_case".into(),
        })
        .await
        .unwrap_err();

    assert_error(&error, Code::NotFound, "CUSTOMER_NOT_FOUND");
}
