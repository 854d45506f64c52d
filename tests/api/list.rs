//! ListCustomers: order, pages, filters, tokens, indexes, size cap.

use std::collections::HashSet;

use customers::api::pb::{self, ListCustomersRequest, ListCustomersResponse};
use prost::Message;
use prost_types::Timestamp;
use tonic::{Code, Status};

use crate::support::{TestApp, assert_error, violations};

async fn list(
    app: &TestApp,
    request: ListCustomersRequest,
) -> Result<ListCustomersResponse, Status> {
    app.client
        .clone()
        .list_customers(request)
        .await
        .map(|r| r.into_inner())
}

/// Every page of `request`, following next_page_token; the ids in order.
async fn walk(app: &TestApp, mut request: ListCustomersRequest) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..10_000 {
        let page = list(app, request.clone()).await.unwrap();
        let limit = if request.page_size == 0 {
            10
        } else {
            request.page_size.min(100)
        };
        assert!(page.customers.len() <= limit as usize);
        ids.extend(page.customers.into_iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        request.page_token = page.next_page_token;
    }
    panic!("pagination never ended");
}

/// Creates `count` customers, eight at a time; returns their ids.
async fn create_many(
    app: &TestApp,
    count: usize,
    make: impl Fn(usize) -> pb::Customer,
) -> Vec<String> {
    let mut ids = Vec::new();
    let customers: Vec<pb::Customer> = (0..count).map(make).collect();
    for chunk in customers.chunks(8) {
        let calls: Vec<_> = chunk
            .iter()
            .cloned()
            .map(|customer| {
                let mut client = app.client.clone();
                tokio::spawn(async move {
                    let request = pb::CreateCustomerRequest {
                        customer: Some(customer),
                        request_id: String::new(),
                    };
                    client
                        .create_customer(request)
                        .await
                        .unwrap()
                        .into_inner()
                        .id
                })
            })
            .collect();
        for call in calls {
            ids.push(call.await.unwrap());
        }
    }
    ids
}

/// The ids the database holds, newest first: the order a listing must have.
async fn expected_order(app: &TestApp, condition: &str) -> Vec<String> {
    let sql =
        format!("SELECT id FROM customers WHERE {condition} ORDER BY create_time DESC, id DESC");
    sqlx::query_scalar(&sql).fetch_all(&app.db).await.unwrap()
}

fn with_email(email: &str) -> pb::Customer {
    pb::Customer {
        email: Some(email.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn walking_a_thousand_customers_returns_each_exactly_once_newest_first() {
    let app = TestApp::spawn().await;
    create_many(&app, 1000, |_| pb::Customer::default()).await;

    let seen = walk(
        &app,
        ListCustomersRequest {
            page_size: 100,
            ..Default::default()
        },
    )
    .await;

    assert_eq!(seen.len(), 1000);
    assert_eq!(seen, expected_order(&app, "true").await);
}

#[tokio::test]
async fn an_email_filter_pages_through_its_25_matches_case_insensitively() {
    let app = TestApp::spawn().await;
    create_many(&app, 50, |i| match i % 2 {
        0 => with_email(if i % 4 == 0 {
            "Shared@Example.com"
        } else {
            "shared@EXAMPLE.com"
        }),
        _ => with_email(&format!("other{i}@example.com")),
    })
    .await;

    let request = ListCustomersRequest {
        page_size: 7,
        email: "SHARED@example.com".into(),
        ..Default::default()
    };
    let seen = walk(&app, request).await;

    assert_eq!(seen.len(), 25);
    assert_eq!(
        seen,
        expected_order(&app, "lower(email) = 'shared@example.com'").await
    );
}

#[tokio::test]
async fn the_email_filter_is_an_exact_match_where_percent_and_underscore_are_plain_characters() {
    let app = TestApp::spawn().await;
    let ids = create_many(&app, 3, |i| {
        with_email(["a_b@example.com", "axb@example.com", "a%b@example.com"][i])
    })
    .await;

    let underscore = walk(
        &app,
        ListCustomersRequest {
            email: "A_B@example.com".into(),
            ..Default::default()
        },
    )
    .await;
    let percent = walk(
        &app,
        ListCustomersRequest {
            email: "a%b@example.com".into(),
            ..Default::default()
        },
    )
    .await;

    assert_eq!(underscore, [ids[0].clone()]);
    assert_eq!(percent, [ids[2].clone()]);
}

#[tokio::test]
async fn time_bounds_are_exclusive_and_combine_with_other_filters() {
    let app = TestApp::spawn().await;
    // One at a time, so that no two share a create_time and the bounds
    // below fall between customers.
    for i in 0..12 {
        app.create(with_email(if i % 2 == 0 {
            "even@example.com"
        } else {
            "odd@example.com"
        }))
        .await;
    }
    let all = expected_order(&app, "true").await;
    let time_of = |id: &str| {
        let id = id.to_owned();
        let db = app.db.clone();
        async move {
            let t: time::OffsetDateTime =
                sqlx::query_scalar("SELECT create_time FROM customers WHERE id = $1")
                    .bind(id)
                    .fetch_one(&db)
                    .await
                    .unwrap();
            Timestamp {
                seconds: t.unix_timestamp(),
                nanos: t.nanosecond() as i32,
            }
        }
    };
    // all[0] is the newest; bounds at all[2] and all[9] exclude both.
    let before = time_of(&all[2]).await;
    let after = time_of(&all[9]).await;

    let between = walk(
        &app,
        ListCustomersRequest {
            created_after: Some(after),
            created_before: Some(before),
            page_size: 3,
            ..Default::default()
        },
    )
    .await;
    let between_even = walk(
        &app,
        ListCustomersRequest {
            created_after: Some(after),
            created_before: Some(before),
            email: "even@example.com".into(),
            ..Default::default()
        },
    )
    .await;
    let by_ids = walk(
        &app,
        ListCustomersRequest {
            ids: vec![
                all[0].clone(),
                all[5].clone(),
                all[5].clone(),
                all[11].clone(),
                "cus_unknown".into(),
            ],
            created_before: Some(before),
            page_size: 1,
            ..Default::default()
        },
    )
    .await;

    assert_eq!(between, all[3..9].to_vec());
    let even: HashSet<String> = expected_order(&app, "email = 'even@example.com'")
        .await
        .into_iter()
        .collect();
    assert_eq!(
        between_even,
        all[3..9]
            .iter()
            .filter(|id| even.contains(*id))
            .cloned()
            .collect::<Vec<_>>()
    );
    assert_eq!(by_ids, [all[5].clone(), all[11].clone()]);
}

#[tokio::test]
async fn an_upper_bound_with_nanoseconds_keeps_the_customer_created_just_below_it() {
    let app = TestApp::spawn().await;
    let created = app.create(pb::Customer::default()).await;
    let t = created.create_time.unwrap();

    let bound = |nanos: i32| ListCustomersRequest {
        ids: vec![created.id.clone()],
        created_before: Some(Timestamp {
            seconds: t.seconds,
            nanos,
        }),
        ..Default::default()
    };
    let just_after = list(&app, bound(t.nanos + 1)).await.unwrap();
    let at = list(&app, bound(t.nanos)).await.unwrap();

    assert_eq!(
        just_after.customers.len(),
        1,
        "{t:?} is before {}ns",
        t.nanos + 1
    );
    assert_eq!(at.customers.len(), 0, "the bound is exclusive");
}

#[tokio::test]
async fn the_latest_upper_bounds_there_are_keep_every_customer() {
    let app = TestApp::spawn().await;
    let created = app.create(pb::Customer::default()).await;
    // 9999-12-31T23:59:59Z, the last second a timestamp may name. Bounds
    // with nanoseconds round up to the next microsecond, which for the
    // last two does not exist.
    let last_second = 253_402_300_799;

    let mut found = Vec::new();
    for nanos in [0, 999_999_000, 999_999_001, 999_999_999] {
        let request = ListCustomersRequest {
            created_before: Some(Timestamp {
                seconds: last_second,
                nanos,
            }),
            ..Default::default()
        };
        let page = list(&app, request).await;
        found.push(page.map(|p| p.customers.into_iter().map(|c| c.id).collect::<Vec<_>>()));
    }

    let found: Vec<_> = found.into_iter().map(|r| r.map_err(|e| e.code())).collect();
    assert_eq!(found, vec![Ok(vec![created.id.clone()]); 4]);

    // Bounds in the wrong order stay an error there too.
    let reversed = ListCustomersRequest {
        created_after: Some(Timestamp {
            seconds: last_second,
            nanos: 999_999_999,
        }),
        created_before: Some(Timestamp {
            seconds: last_second,
            nanos: 999_999_001,
        }),
        ..Default::default()
    };
    let error = list(&app, reversed).await.unwrap_err();
    assert_error(&error, Code::InvalidArgument, "INVALID_PARAMETER");
    assert_eq!(
        violations(&error),
        [("created_after".to_owned(), "OUT_OF_RANGE".to_owned())]
    );
}

#[tokio::test]
async fn customers_created_while_paging_cause_no_gaps_or_repeats() {
    let app = TestApp::spawn().await;
    let original: HashSet<String> = create_many(&app, 30, |_| pb::Customer::default())
        .await
        .into_iter()
        .collect();

    let mut request = ListCustomersRequest {
        page_size: 7,
        ..Default::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = list(&app, request.clone()).await.unwrap();
        seen.extend(page.customers.into_iter().map(|c| c.id));
        create_many(&app, 3, |_| pb::Customer::default()).await;
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }

    assert_eq!(seen.len(), 30, "no repeats");
    assert_eq!(
        seen.into_iter().collect::<HashSet<_>>(),
        original,
        "no gaps, nothing newer"
    );
}

#[tokio::test]
async fn page_sizes_default_to_10_cap_at_100_and_reject_negatives() {
    let app = TestApp::spawn().await;
    create_many(&app, 120, |_| pb::Customer::default()).await;

    let default = list(&app, ListCustomersRequest::default()).await.unwrap();
    let capped = list(
        &app,
        ListCustomersRequest {
            page_size: 5000,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let negative = list(
        &app,
        ListCustomersRequest {
            page_size: -1,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();

    assert_eq!(default.customers.len(), 10);
    assert_eq!(capped.customers.len(), 100);
    assert_error(&negative, Code::InvalidArgument, "INVALID_PARAMETER");
    assert_eq!(
        violations(&negative),
        [("page_size".to_owned(), "OUT_OF_RANGE".to_owned())]
    );
}

#[tokio::test]
async fn altered_truncated_foreign_and_made_up_tokens_are_invalid() {
    let app = TestApp::spawn().await;
    create_many(&app, 5, |_| with_email("a@example.com")).await;
    let request = ListCustomersRequest {
        page_size: 2,
        email: "a@example.com".into(),
        ..Default::default()
    };
    let token = list(&app, request.clone()).await.unwrap().next_page_token;
    assert!(!token.is_empty());
    let flip = |i: usize| {
        let mut bytes = token.clone().into_bytes();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).unwrap()
    };

    let attempts = [
        (request.clone(), flip(0)),
        (request.clone(), flip(token.len() / 2)),
        (request.clone(), flip(token.len() - 1)),
        (request.clone(), token[..token.len() - 4].to_owned()),
        (
            ListCustomersRequest {
                email: "b@example.com".into(),
                ..request.clone()
            },
            token.clone(),
        ),
        (
            ListCustomersRequest {
                email: String::new(),
                ..request.clone()
            },
            token.clone(),
        ),
        (
            ListCustomersRequest {
                ids: vec!["x".into()],
                ..request.clone()
            },
            token.clone(),
        ),
        (request.clone(), "bm90IGEgdG9rZW4".to_owned()),
        (request.clone(), "%%%".to_owned()),
    ];

    for (mut attempt, bad_token) in attempts {
        attempt.page_token = bad_token.clone();
        let error = list(&app, attempt).await.unwrap_err();
        assert_error(&error, Code::InvalidArgument, "INVALID_PARAMETER");
        assert_eq!(
            violations(&error),
            [("page_token".to_owned(), "INVALID_FORMAT".to_owned())],
            "{bad_token}"
        );
    }
    let good = list(
        &app,
        ListCustomersRequest {
            page_token: token,
            ..request
        },
    )
    .await
    .unwrap();
    assert_eq!(good.customers.len(), 2);
}

#[tokio::test]
async fn bad_filters_are_invalid_argument() {
    let app = TestApp::spawn().await;
    let at = |seconds: i64, nanos: i32| Some(Timestamp { seconds, nanos });
    let cases = [
        (
            ListCustomersRequest {
                ids: (0..101).map(|i| i.to_string()).collect(),
                ..Default::default()
            },
            "ids",
            "TOO_MANY",
        ),
        (
            ListCustomersRequest {
                ids: vec!["ok".into(), "a b".into()],
                ..Default::default()
            },
            "ids[1]",
            "FORBIDDEN_CHARACTER",
        ),
        (
            ListCustomersRequest {
                created_after: at(10, 0),
                created_before: at(5, 0),
                ..Default::default()
            },
            "created_after",
            "OUT_OF_RANGE",
        ),
        (
            ListCustomersRequest {
                created_after: at(0, 1_000_000_000),
                ..Default::default()
            },
            "created_after",
            "OUT_OF_RANGE",
        ),
        (
            ListCustomersRequest {
                created_before: at(300_000_000_000, 0),
                ..Default::default()
            },
            "created_before",
            "OUT_OF_RANGE",
        ),
        (
            ListCustomersRequest {
                created_before: at(-62_135_596_801, 0),
                ..Default::default()
            },
            "created_before",
            "OUT_OF_RANGE",
        ),
        (
            ListCustomersRequest {
                email: "a\0@example.com".into(),
                ..Default::default()
            },
            "email",
            "CONTROL_CHARACTER",
        ),
    ];

    for (request, field, reason) in cases {
        let error = list(&app, request).await.unwrap_err();
        assert_error(&error, Code::InvalidArgument, "INVALID_PARAMETER");
        assert_eq!(violations(&error), [(field.to_owned(), reason.to_owned())]);
    }
}

#[tokio::test]
async fn a_page_never_exceeds_4_mib_and_the_rest_follows_on_later_pages() {
    let app = TestApp::spawn().await;
    let big_value = "価".repeat(500);
    let ids = create_many(&app, 100, |_| pb::Customer {
        metadata: (0..50)
            .map(|k| (format!("key{k}"), big_value.clone()))
            .collect(),
        ..Default::default()
    })
    .await;

    let mut request = ListCustomersRequest {
        page_size: 100,
        ..Default::default()
    };
    let mut pages = 0;
    let mut seen = HashSet::new();
    loop {
        let page = list(&app, request.clone()).await.unwrap();
        assert!(
            page.encoded_len() <= 4 * 1024 * 1024,
            "page of {} bytes",
            page.encoded_len()
        );
        pages += 1;
        seen.extend(page.customers.into_iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }

    assert!(pages > 1);
    assert_eq!(seen, ids.into_iter().collect());
}

#[tokio::test]
async fn every_filter_and_the_page_order_are_served_by_an_index() {
    use customers::domain::{AccountScope, Cursor, CustomerId, ListFilter, ListQuery};
    use customers::store::CustomerStore;
    let app = TestApp::spawn().await;
    app.insert_customers_and_analyze(
        "INSERT INTO customers (account_id, live_mode, id, email, email_folded, customer_type,
             enabled, create_time, update_time, etag)
         SELECT 'acct_default', false, 'cus_' || g, 'u' || g || '@example.com', 'u' || g || '@example.com',
             1, true, now() - g * interval '1 second', now(), 'etag'
         FROM generate_series(1, 5000) g",
    )
    .await;
    let store = CustomerStore::new(app.db.clone(), std::time::Duration::from_secs(5));
    let scope = AccountScope::default_account();
    let now = time::OffsetDateTime::now_utc();
    let cursor = Some(Cursor {
        create_time: now,
        id: CustomerId::from_trusted("x".into()),
    });
    let query = |filter: ListFilter| {
        // An ids filter is one short page; the others are read deep.
        let after = if filter.ids.is_some() {
            None
        } else {
            cursor.clone()
        };
        ListQuery {
            filter,
            page_size: 10,
            after,
        }
    };
    let cases = [
        (ListFilter::default(), "customers_by_create_time"),
        (
            ListFilter {
                email_folded: Some("a@example.com".into()),
                ..Default::default()
            },
            "customers_by_email",
        ),
        (
            ListFilter {
                created_after: Some(now),
                created_before: Some(now),
                ..Default::default()
            },
            "customers_by_create_time",
        ),
        (
            ListFilter {
                ids: Some(vec![CustomerId::from_trusted("a".into())]),
                ..Default::default()
            },
            "customers_pkey",
        ),
    ];

    for (filter, index) in cases {
        let ordered = filter.ids.is_none();
        let plan = store.explain_list(&scope, &query(filter)).await.unwrap();
        assert!(plan.contains(index), "{index} not in {plan}");
        assert!(!plan.contains("Seq Scan"), "{plan}");
        if ordered {
            let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
            assert!(
                !sorts_outside_subplans(&plan[0]["Plan"]),
                "the index provides the order: {plan}"
            );
        }
    }
}

/// Whether the plan sorts the customers themselves; the sources subqueries
/// may sort their (at most 25) rows.
fn sorts_outside_subplans(node: &serde_json::Value) -> bool {
    if node["Node Type"] == "Sort" {
        return true;
    }
    let children = node["Plans"].as_array().cloned().unwrap_or_default();
    children
        .iter()
        .filter(|child| child["Parent Relationship"] != "SubPlan")
        .any(sorts_outside_subplans)
}
