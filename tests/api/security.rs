//! API keys, account and mode isolation, and authentication errors.

use customers::api::pb::customer_service_client::CustomerServiceClient;
use customers::api::pb::{
    self, AttachSourceRequest, CreateCustomerRequest, DeleteCustomerRequest, DetachSourceRequest,
    GetCustomerRequest, ListCustomersRequest, UpdateCustomerRequest,
};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::support::{Client, TestApp, assert_error, client_with_key, full_customer, issue_key};

fn get(id: &str) -> GetCustomerRequest {
    GetCustomerRequest { id: id.into() }
}

#[tokio::test]
async fn missing_and_malformed_authorization_is_unauthenticated() {
    let app = TestApp::spawn().await;
    let key = issue_key(&app.db, "acct_default", false).await;
    let cases: Vec<(Option<Vec<u8>>, &str)> = vec![
        (None, "API_KEY_MISSING"),
        (Some(b"".to_vec()), "API_KEY_MISSING"),
        (Some(key.clone().into_bytes()), "API_KEY_MISSING"),
        (Some(b"Basic dXNlcjpwYXNz".to_vec()), "API_KEY_MISSING"),
        (Some(b"Bearer ".to_vec()), "API_KEY_MISSING"),
        (Some(b"Bearer sk_test_nothex".to_vec()), "API_KEY_MISSING"),
        (
            Some(format!("Bearer {}", "a".repeat(10_000)).into_bytes()),
            "API_KEY_MISSING",
        ),
        (
            Some("Bearer sk_test_ключ".as_bytes().to_vec()),
            "API_KEY_MISSING",
        ),
        (
            Some(format!("Bearer {}0", &key).into_bytes()),
            "API_KEY_MISSING",
        ),
    ];

    for (value, reason) in cases {
        let mut request = tonic::Request::new(get("cus_1"));
        if let Some(value) = &value
            && let Ok(header) = MetadataValue::try_from(value.as_slice())
        {
            request.metadata_mut().insert("authorization", header);
        }
        let mut client = CustomerServiceClient::new(app.channel().await);
        let error = client.get_customer(request).await.unwrap_err();
        assert_error(&error, Code::Unauthenticated, reason);
    }
}

#[tokio::test]
async fn two_authorization_headers_are_refused_even_when_one_is_valid() {
    let app = TestApp::spawn().await;
    let key = issue_key(&app.db, "acct_default", false).await;
    let mut request = tonic::Request::new(get("cus_1"));
    let value: MetadataValue<_> = format!("Bearer {key}").parse().unwrap();
    request
        .metadata_mut()
        .append("authorization", value.clone());
    request.metadata_mut().append("authorization", value);

    let error = CustomerServiceClient::new(app.channel().await)
        .get_customer(request)
        .await
        .unwrap_err();

    assert_error(&error, Code::Unauthenticated, "API_KEY_MISSING");
}

#[tokio::test]
async fn unknown_wrong_and_revoked_keys_get_the_same_answer() {
    let app = TestApp::spawn_with(|config| config.api_key_cache_ms = 0).await;
    let good = issue_key(&app.db, "acct_default", false).await;
    let (id, _) = good["sk_test_".len()..].split_once('_').unwrap();
    let wrong_secret = format!("sk_test_{id}_{}", "0".repeat(64));
    let wrong_mode = good.replace("sk_test_", "sk_live_");
    let unknown = format!("sk_test_{}_{}", "f".repeat(16), "0".repeat(64));
    let mut client = client_with_key(app.channel().await, &good);
    client
        .list_customers(ListCustomersRequest::default())
        .await
        .unwrap();
    customers::store::KeyStore::new(app.db.clone(), std::time::Duration::from_secs(5))
        .revoke(id)
        .await
        .unwrap();

    let mut answers = Vec::new();
    for key in [&good, &wrong_secret, &wrong_mode, &unknown] {
        let mut client = client_with_key(app.channel().await, key);
        let error = client
            .list_customers(ListCustomersRequest::default())
            .await
            .unwrap_err();
        assert_error(&error, Code::Unauthenticated, "API_KEY_INVALID");
        answers.push(error.message().to_owned());
    }
    assert!(
        answers.iter().all(|m| *m == answers[0]),
        "no hint which: {answers:?}"
    );
}

/// Callers with made-up keys take no place among the calls served at once,
/// and their lookups occupy at most four database connections at a time.
#[tokio::test]
async fn made_up_keys_neither_take_places_nor_crowd_the_database() {
    let app = TestApp::spawn_with(|config| config.max_concurrent_calls = 2).await;
    // Also puts the test client's key in the cache.
    let stored = app.create(pb::Customer::default()).await;
    // Every lookup of a key that is not cached now waits on this lock.
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let mut strangers = Vec::new();
    for _ in 0..8 {
        let (key, _) = customers::domain::PresentedKey::generate(false);
        let mut client = client_with_key(app.channel().await, &key);
        strangers.push(tokio::spawn(async move {
            client
                .get_customer(get("cus_x"))
                .await
                .map(|_| ())
                .map_err(|e| e.code())
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let lookups_in_database: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'
           AND query LIKE '%FROM api_keys WHERE id%'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    let mut answered = Vec::new();
    for _ in 0..4 {
        let got = app.client.clone().get_customer(get(&stored.id)).await;
        answered.push(got.map(|r| r.into_inner().id).map_err(|e| e.code()));
    }
    // Past the one second that a lookup may wait for its turn.
    tokio::time::sleep(std::time::Duration::from_millis(1300).saturating_sub(started.elapsed()))
        .await;
    lock.rollback().await.unwrap();
    let mut refused = Vec::new();
    for stranger in strangers {
        refused.push(stranger.await.unwrap().unwrap_err());
    }
    refused.sort_by_key(|code| *code as i32);

    assert_eq!(lookups_in_database, 4);
    assert_eq!(answered, vec![Ok(stored.id.clone()); 4]);
    let expected = [[Code::ResourceExhausted; 4], [Code::Unauthenticated; 4]].concat();
    assert_eq!(refused, expected, "four looked up, four found no turn");
}

#[tokio::test]
async fn health_and_reflection_need_no_key() {
    let app = TestApp::spawn().await;

    let health = HealthClient::new(app.channel().await)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;

    assert!(health.is_ok());
}

/// Every RPC from every other owner: NOT_FOUND or empty, and nothing changes.
#[tokio::test]
async fn accounts_and_modes_are_isolated_for_every_rpc() {
    let app = TestApp::spawn().await;
    let mut owner = app.client_for("acct_a", false).await;
    let created = create(&mut owner, full_customer("cus_shared")).await;
    owner
        .attach_source(AttachSourceRequest {
            customer_id: "cus_shared".into(),
            source_id: "src_1".into(),
        })
        .await
        .unwrap();
    let before = owner
        .get_customer(get("cus_shared"))
        .await
        .unwrap()
        .into_inner();
    assert!(!created.live_mode);

    for (account, live) in [("acct_a", true), ("acct_b", false), ("acct_b", true)] {
        let mut other = app.client_for(account, live).await;
        let who = format!("{account} live={live}");
        let not_found = |result: Result<tonic::Response<pb::Customer>, tonic::Status>,
                         what: &str| {
            let error = result.expect_err(what);
            assert_error(&error, Code::NotFound, "CUSTOMER_NOT_FOUND");
        };

        not_found(other.get_customer(get("cus_shared")).await, &who);
        let change = pb::Customer {
            id: "cus_shared".into(),
            email: Some("x@example.com".into()),
            ..Default::default()
        };
        not_found(
            other
                .update_customer(UpdateCustomerRequest {
                    customer: Some(change),
                    update_mask: None,
                })
                .await,
            &who,
        );
        let erase = pb::Customer {
            id: "cus_shared".into(),
            request_to_be_forgotten: Some(true),
            ..Default::default()
        };
        not_found(
            other
                .update_customer(UpdateCustomerRequest {
                    customer: Some(erase),
                    update_mask: None,
                })
                .await,
            &who,
        );
        not_found(
            other
                .attach_source(AttachSourceRequest {
                    customer_id: "cus_shared".into(),
                    source_id: "src_2".into(),
                })
                .await,
            &who,
        );
        not_found(
            other
                .detach_source(DetachSourceRequest {
                    customer_id: "cus_shared".into(),
                    source_id: "src_1".into(),
                })
                .await,
            &who,
        );
        let delete = other
            .delete_customer(DeleteCustomerRequest {
                id: "cus_shared".into(),
                etag: String::new(),
            })
            .await;
        assert_error(&delete.unwrap_err(), Code::NotFound, "CUSTOMER_NOT_FOUND");
        let listed = other
            .list_customers(ListCustomersRequest {
                ids: vec!["cus_shared".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let all = other
            .list_customers(ListCustomersRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(
            listed.customers.is_empty() && all.customers.is_empty(),
            "{who}"
        );
    }

    assert_eq!(
        owner
            .get_customer(get("cus_shared"))
            .await
            .unwrap()
            .into_inner(),
        before
    );
}

#[tokio::test]
async fn one_id_may_exist_in_several_accounts_and_modes_and_live_mode_shows_the_mode() {
    let app = TestApp::spawn().await;
    let mut a_test = app.client_for("acct_a", false).await;
    let mut a_live = app.client_for("acct_a", true).await;
    let mut b_test = app.client_for("acct_b", false).await;

    let first = create(
        &mut a_test,
        pb::Customer {
            id: "cus_same".into(),
            ..Default::default()
        },
    )
    .await;
    let live = create(
        &mut a_live,
        pb::Customer {
            id: "cus_same".into(),
            ..Default::default()
        },
    )
    .await;
    let other = create(
        &mut b_test,
        pb::Customer {
            id: "cus_same".into(),
            ..Default::default()
        },
    )
    .await;

    assert_eq!(
        (first.live_mode, live.live_mode, other.live_mode),
        (false, true, false)
    );
    let rows: Vec<(String, bool)> =
        sqlx::query_as("SELECT account_id, live_mode FROM customers ORDER BY 1, 2")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [
            ("acct_a".into(), false),
            ("acct_a".into(), true),
            ("acct_b".into(), false)
        ]
    );
}

#[tokio::test]
async fn page_tokens_of_one_account_are_invalid_in_another() {
    let app = TestApp::spawn().await;
    let mut a = app.client_for("acct_a", false).await;
    let mut b = app.client_for("acct_b", false).await;
    for _ in 0..3 {
        create(&mut a, pb::Customer::default()).await;
    }
    let token = a
        .list_customers(ListCustomersRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .next_page_token;

    let error = b
        .list_customers(ListCustomersRequest {
            page_size: 1,
            page_token: token,
            ..Default::default()
        })
        .await
        .unwrap_err();

    assert_error(&error, Code::InvalidArgument, "INVALID_PARAMETER");
}

#[tokio::test]
async fn the_keys_command_creates_lists_and_revokes_keys() {
    let app = TestApp::spawn_with(|config| config.api_key_cache_ms = 0).await;
    let run = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_customer-service"))
            .args(args)
            .env("DATABASE_URL", &app.database_url)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };

    let bad_account = std::process::Command::new(env!("CARGO_BIN_EXE_customer-service"))
        .args(["keys", "create", "--account", "acct x"])
        .env("DATABASE_URL", &app.database_url)
        .output()
        .unwrap();
    assert!(
        !bad_account.status.success(),
        "an account with a space is refused"
    );
    let key = run(&["keys", "create", "--account", "acct_cli", "--live"])
        .trim()
        .to_owned();
    let id = key["sk_live_".len()..]
        .split_once('_')
        .unwrap()
        .0
        .to_owned();
    let listed = run(&["keys", "list"]);
    let mut client = client_with_key(app.channel().await, &key);
    let created = create(&mut client, pb::Customer::default()).await;
    run(&["keys", "revoke", &id]);
    let after = client.get_customer(get(&created.id)).await.unwrap_err();

    assert!(
        key.starts_with("sk_live_") && key.len() == 8 + 16 + 1 + 64,
        "{key}"
    );
    assert!(listed.contains(&id) && listed.contains("acct_cli") && listed.contains("live"));
    assert!(
        !listed.contains(&key[key.len() - 64..]),
        "secrets are never listed"
    );
    assert!(created.live_mode);
    assert_error(&after, Code::Unauthenticated, "API_KEY_INVALID");
}

#[tokio::test]
async fn with_authentication_explicitly_off_calls_act_for_the_default_test_account() {
    let app = TestApp::spawn_with(|config| config.insecure_no_auth = true).await;
    let mut anonymous = CustomerServiceClient::new(app.channel().await);

    let created = anonymous
        .create_customer(CreateCustomerRequest {
            customer: None,
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();

    let owner: String = sqlx::query_scalar("SELECT account_id FROM customers")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!((owner.as_str(), created.live_mode), ("acct_default", false));
}

async fn create(client: &mut Client, customer: pb::Customer) -> pb::Customer {
    client
        .create_customer(CreateCustomerRequest {
            customer: Some(customer),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
}
