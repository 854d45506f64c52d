//! The request to be forgotten.

use customers::api::pb::{self, AttachSourceRequest, GetCustomerRequest, UpdateCustomerRequest};
use prost_types::FieldMask;
use tonic::Code;

use crate::support::{TestApp, assert_error, full_customer, with_personal_values};

/// Values that appear nowhere but in the erased customer.
const DISTINCTIVE: &[&str] = &[
    "zq-erase-email@example.org",
    "Zqerase Shipname",
    "+99 555 0199 733",
    "zq-erase-ship@example.org",
    "Zqerase Holdings",
    "17 Zqerase Lane",
    "Zqerase Building",
    "Zqeraseville",
    "ZQ9 9QZ",
    "Zqerase County",
    "Zqerase Heights",
    "Zqerase Division",
    "ゼットキューイレース",
    "ZQERASE-META-VALUE",
    "zqerase_meta_key",
    "DE999999999",
    "src_zqerase_card",
];

fn distinctive_customer() -> pb::Customer {
    let v = DISTINCTIVE;
    let personal: &[&str; 13] = v[..13].try_into().unwrap();
    let mut customer = with_personal_values(full_customer("cus_forget"), personal);
    customer.metadata = [(v[14].to_owned(), v[13].to_owned())].into();
    customer.tax_identifiers = vec![pb::TaxIdentifier {
        r#type: "eu_vat".into(),
        value: "de 999 999 999".into(),
    }];
    customer.locale = Some("en_GB".into());
    customer
}

async fn forget(
    app: &TestApp,
    id: &str,
    mask: Option<&str>,
) -> Result<pb::Customer, tonic::Status> {
    let customer = pb::Customer {
        id: id.into(),
        request_to_be_forgotten: Some(true),
        ..Default::default()
    };
    let update_mask = mask.map(|p| FieldMask {
        paths: vec![p.into()],
    });
    app.client
        .clone()
        .update_customer(UpdateCustomerRequest {
            customer: Some(customer),
            update_mask,
        })
        .await
        .map(|r| r.into_inner())
}

/// Every text-like column of every table in the service's schema, found
/// through the catalog so that tables added later are covered too.
async fn text_columns(app: &TestApp) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT c.table_name::text, c.column_name::text
         FROM information_schema.columns c
         JOIN information_schema.tables t USING (table_schema, table_name)
         WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
           AND (c.data_type IN ('text', 'character varying', 'character', 'json', 'jsonb', 'bytea', 'ARRAY')
                OR c.udt_name IN ('citext'))",
    )
    .fetch_all(&app.db)
    .await
    .unwrap()
}

#[tokio::test]
async fn erasure_scrubs_every_personal_value_from_every_table() {
    let app = TestApp::spawn().await;
    app.create(distinctive_customer()).await;
    let request = AttachSourceRequest {
        customer_id: "cus_forget".into(),
        source_id: DISTINCTIVE[16].into(),
    };
    app.client.clone().attach_source(request).await.unwrap();
    app.create(pb::Customer {
        id: "cus_bystander".into(),
        email: Some("keep@example.org".into()),
        ..Default::default()
    })
    .await;
    let columns = text_columns(&app).await;
    assert!(
        columns.len() >= 8,
        "the catalog query finds the tables: {columns:?}"
    );
    let hits_of = |value: &'static str| {
        let db = app.db.clone();
        let columns = columns.clone();
        async move {
            let mut hits = Vec::new();
            for (table, column) in &columns {
                let sql = format!(
                    "SELECT count(*) FROM \"{table}\" WHERE strpos(\"{column}\"::text, $1) > 0"
                );
                let count: i64 = sqlx::query_scalar(&sql)
                    .bind(value)
                    .fetch_one(&db)
                    .await
                    .unwrap();
                if count > 0 {
                    hits.push(format!("{table}.{column}"));
                }
            }
            hits
        }
    };
    assert!(
        !hits_of(DISTINCTIVE[0]).await.is_empty(),
        "the scan finds values before erasure"
    );

    let erased = forget(&app, "cus_forget", None).await.unwrap();

    for value in DISTINCTIVE {
        assert_eq!(
            hits_of(value).await,
            Vec::<String>::new(),
            "{value} survived erasure"
        );
    }
    assert_eq!(
        hits_of("keep@example.org").await.len(),
        2,
        "other customers are untouched"
    );
    let expected = pb::Customer {
        id: "cus_forget".into(),
        r#type: pb::CustomerType::Business as i32,
        enabled: Some(false),
        request_to_be_forgotten: Some(true),
        create_time: erased.create_time,
        update_time: erased.update_time,
        etag: erased.etag.clone(),
        ..Default::default()
    };
    assert_eq!(erased, expected);
    let read = app
        .client
        .clone()
        .get_customer(GetCustomerRequest {
            id: "cus_forget".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, expected);
}

#[tokio::test]
async fn after_erasure_every_update_is_failed_precondition() {
    let app = TestApp::spawn().await;
    app.create(distinctive_customer()).await;
    forget(&app, "cus_forget", Some("request_to_be_forgotten"))
        .await
        .unwrap();

    let change = pb::Customer {
        id: "cus_forget".into(),
        email: Some("back@example.org".into()),
        ..Default::default()
    };
    let update = app
        .client
        .clone()
        .update_customer(UpdateCustomerRequest {
            customer: Some(change),
            update_mask: None,
        })
        .await
        .unwrap_err();
    let again = forget(&app, "cus_forget", None).await.unwrap_err();

    assert_error(&update, Code::FailedPrecondition, "CUSTOMER_FORGOTTEN");
    assert_error(&again, Code::FailedPrecondition, "CUSTOMER_FORGOTTEN");
}

#[tokio::test]
async fn erasure_respects_the_etag_guard() {
    let app = TestApp::spawn().await;
    let created = app.create(distinctive_customer()).await;
    let request = AttachSourceRequest {
        customer_id: "cus_forget".into(),
        source_id: "src_1".into(),
    };
    app.client.clone().attach_source(request).await.unwrap();
    let stale = pb::Customer {
        id: "cus_forget".into(),
        etag: created.etag,
        request_to_be_forgotten: Some(true),
        ..Default::default()
    };

    let error = app
        .client
        .clone()
        .update_customer(UpdateCustomerRequest {
            customer: Some(stale),
            update_mask: None,
        })
        .await
        .unwrap_err();

    assert_error(&error, Code::Aborted, "ETAG_MISMATCH");
    let email: Option<String> = sqlx::query_scalar("SELECT email FROM customers")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(email.as_deref(), Some(DISTINCTIVE[0]));
}
