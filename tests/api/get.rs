//! GetCustomer.

use customers::api::pb::{self, GetCustomerRequest};
use customers::store::CustomerStore;
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

/// Gets made at once share one statement (see `store::reads`); each call
/// must still get its own customer, and only its own.
#[tokio::test]
async fn concurrent_gets_of_present_absent_repeated_and_foreign_ids_each_get_their_own_answer() {
    // Room for all 125 calls at once.
    let app = TestApp::spawn_with(|config| config.max_concurrent_calls = 512).await;
    let other = app.client_for("acct_other", false).await;
    let live = app.client_for("acct_default", true).await;
    for i in 0..20 {
        app.create(pb::Customer {
            id: format!("cus_{i}"),
            metadata: [("n".to_owned(), i.to_string())].into(),
            ..Default::default()
        })
        .await;
    }

    // Each id three times from the owner, plus absent ids, plus the same
    // ids from another account and from the owner's live mode.
    let mut calls = Vec::new();
    for round in 0..3 {
        for i in 0..25 {
            for (who, client) in [("owner", &app.client), ("other", &other), ("live", &live)] {
                if who != "owner" && round > 0 {
                    continue;
                }
                let mut client = client.clone();
                let id = format!("cus_{i}");
                calls.push((
                    who,
                    i,
                    tokio::spawn(
                        async move { client.get_customer(GetCustomerRequest { id }).await },
                    ),
                ));
            }
        }
    }

    let mut found = 0;
    for (who, i, call) in calls {
        match call.await.unwrap() {
            Ok(customer) => {
                let customer = customer.into_inner();
                assert_eq!(
                    (who, customer.id.as_str()),
                    ("owner", format!("cus_{i}").as_str())
                );
                assert_eq!(customer.metadata["n"], i.to_string());
                assert!(i < 20);
                found += 1;
            }
            Err(error) => {
                assert!(who != "owner" || i >= 20, "{who} cus_{i}: {error:?}");
                assert_error(&error, Code::NotFound, "CUSTOMER_NOT_FOUND");
            }
        }
    }
    assert_eq!(found, 60);
}

#[tokio::test]
async fn a_batch_of_gets_reads_by_primary_key() {
    let app = TestApp::spawn().await;
    let store = CustomerStore::new(app.db.clone(), std::time::Duration::from_secs(5));
    app.insert_customers_and_analyze(
        "INSERT INTO customers (account_id, live_mode, id, customer_type, enabled,
             create_time, update_time, etag)
         SELECT 'acct_' || (g % 4), g % 2 = 0, 'cus_' || g, 1, true, now(), now(), md5(g::text)
         FROM generate_series(1, 5000) g",
    )
    .await;

    let plan = store.explain_get_batch().await.unwrap();

    assert!(plan.contains("customers_pkey"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
}
