//! Group commit for creates: concurrent CreateCustomer calls without a
//! request_id share one INSERT statement and so one commit.
//!
//! A commit waits for the WAL to reach disk; one commit for many rows is
//! what lets the service insert faster than one transaction per row. Each
//! call keeps its own outcome: when an id of the batch is taken, the batch
//! runs again with `ON CONFLICT DO NOTHING`, which skips the rows whose id
//! exists, and exactly those calls get ALREADY_EXISTS. A batch that fails
//! (the database went away, say) fails every call in it and wrote nothing,
//! so no call is ever told "created" for a row that is not committed.
//! Each row's create_time is the clock when its row was built.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgConnection;
use time::OffsetDateTime;
use tokio::sync::oneshot;

use super::StoreError;
use super::customers::kind_to_column;
use super::lane::{Batcher, InFlight, Lane, Queue};
use crate::domain::{AccountScope, Customer, CustomerError, CustomerId, Etag, Profile};

/// Most rows in one statement.
const MAX_BATCH: usize = 128;
/// Batches out at once: while one is out, the next gathers.
const WORKERS: usize = 2;
/// Fewest rows of a batch sent while another is out.
const MIN_BATCH: usize = 16;

/// One create waiting for its batch.
struct Pending {
    scope: AccountScope,
    id: CustomerId,
    profile: Profile,
    reply: oneshot::Sender<Result<Customer, StoreError>>,
}

/// Queues creates for the workers.
#[derive(Debug, Clone)]
pub struct InsertBatcher {
    batcher: Batcher<Pending>,
}

impl InsertBatcher {
    /// Starts the workers on the current runtime.
    pub fn start(pool: &PgPool, statement_timeout: Duration) -> Self {
        Self {
            batcher: Batcher::start(pool, statement_timeout, WORKERS, work),
        }
    }

    /// Inserts a customer in the next batch and waits for its outcome.
    pub async fn insert(
        &self,
        scope: &AccountScope,
        id: &CustomerId,
        profile: &Profile,
    ) -> Result<Customer, StoreError> {
        self.batcher
            .call(|reply| Pending {
                scope: scope.clone(),
                id: id.clone(),
                profile: profile.clone(),
                reply,
            })
            .await
    }
}

/// Takes whatever is queued (at least one), inserts it, answers, repeats.
async fn work(mut lane: Lane, queue: Queue<Pending>, out: Arc<InFlight>) {
    let mut batch: Vec<Pending> = Vec::new();
    while queue.fill(&mut batch, MAX_BATCH, MIN_BATCH, &out).await {
        // Two creates of one id in one statement: the second waits for the
        // next batch, where it meets the first as an existing row.
        let mut seen = HashSet::new();
        let (mut now, repeats): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut batch)
            .into_iter()
            .partition(|p| seen.insert((p.scope.clone(), p.id.clone())));
        batch = repeats;
        // Both workers insert in key order, so two batches that share ids
        // wait for each other instead of deadlocking.
        now.sort_by(|a, b| {
            (&a.scope.account_id, a.scope.live_mode, &a.id).cmp(&(
                &b.scope.account_id,
                b.scope.live_mode,
                &b.id,
            ))
        });

        let etags: Vec<Etag> = now.iter().map(|_| Etag::generate()).collect();
        let sent = out.start();
        let outcome = lane
            .run(async |connection| insert_batch(connection, &now, &etags).await)
            .await;
        drop(sent);
        for (pending, etag) in now.into_iter().zip(etags) {
            let key = (
                pending.scope.account_id.clone(),
                pending.scope.live_mode,
                pending.id.as_str().to_owned(),
            );
            let result = match &outcome {
                Ok(created) => match created.get(&key) {
                    Some(&create_time) => Ok(Customer {
                        id: pending.id,
                        profile: pending.profile,
                        sources: Vec::new(),
                        forgotten: false,
                        live_mode: pending.scope.live_mode,
                        create_time,
                        update_time: create_time,
                        etag,
                    }),
                    None => Err(CustomerError::AlreadyExists.into()),
                },
                Err(error) => Err(error.clone()),
            };
            // The caller may have gone (deadline); its row stands either way.
            let _ = pending.reply.send(result);
        }
    }
}

/// Owner and id of a row, as the statement returns them.
type RowKey = (String, bool, String);

/// Inserts the batch; returns the rows that were inserted (those whose id
/// was free) with their create_time.
///
/// A plain INSERT first: when no id is taken, which is the common case, it
/// costs PostgreSQL less than `ON CONFLICT DO NOTHING` (about 15 % of a
/// batch of 16 measured with pgbench), whose speculative insertion pays for
/// every row. Only a batch in which some id is taken fails and runs again,
/// skipping the taken rows. The failed statement wrote nothing.
async fn insert_batch(
    connection: &mut PgConnection,
    batch: &[Pending],
    etags: &[Etag],
) -> Result<HashMap<RowKey, OffsetDateTime>, StoreError> {
    match insert_rows(connection, batch, etags, "").await {
        Err(StoreError::Internal(error)) if is_unique_violation(&error) => {
            let skip_taken = "ON CONFLICT (account_id, live_mode, id) DO NOTHING";
            insert_rows(connection, batch, etags, skip_taken).await
        }
        outcome => outcome,
    }
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// One INSERT of every row of the batch, `on_conflict` appended.
async fn insert_rows(
    connection: &mut PgConnection,
    batch: &[Pending],
    etags: &[Etag],
    on_conflict: &str,
) -> Result<HashMap<RowKey, OffsetDateTime>, StoreError> {
    // One array per column, in the batch's order.
    fn each<T>(batch: &[Pending], value: impl Fn(&Pending) -> T) -> Vec<T> {
        batch.iter().map(value).collect()
    }
    fn json(value: &impl serde::Serialize) -> serde_json::Value {
        serde_json::to_value(value).expect("profiles always serialise")
    }
    let sql = format!(
        "INSERT INTO customers (account_id, live_mode, id, email, shipping, default_source_id,
             tax_identifiers, locale, customer_type, enabled, metadata, etag, email_folded,
             create_time, update_time)
         SELECT a, l, i, e, s, d, t, lo, ty, en, m, et, ef, at, at
         FROM (SELECT *, clock_timestamp() AS at
               FROM UNNEST($1::text[], $2::bool[], $3::text[], $4::text[], $5::jsonb[], $6::text[],
                           $7::jsonb[], $8::text[], $9::int2[], $10::bool[], $11::jsonb[],
                           $12::text[], $13::text[]) AS x(a, l, i, e, s, d, t, lo, ty, en, m, et, ef)
              ) AS rows
         {on_conflict}
         RETURNING account_id, live_mode, id, create_time"
    );
    let rows: Vec<(String, bool, String, OffsetDateTime)> = sqlx::query_as(&sql)
        .bind(each(batch, |p| p.scope.account_id.clone()))
        .bind(each(batch, |p| p.scope.live_mode))
        .bind(each(batch, |p| p.id.as_str().to_owned()))
        .bind(each(batch, |p| {
            p.profile.email.as_ref().map(|e| e.as_str().to_owned())
        }))
        .bind(each(batch, |p| json(&p.profile.shipping)))
        .bind(each(batch, |p| {
            p.profile
                .default_source_id
                .as_ref()
                .map(|s| s.as_str().to_owned())
        }))
        .bind(each(batch, |p| json(&p.profile.tax_identifiers)))
        .bind(each(batch, |p| {
            p.profile.locale.as_ref().map(|l| l.as_str().to_owned())
        }))
        .bind(each(batch, |p| kind_to_column(p.profile.kind)))
        .bind(each(batch, |p| p.profile.enabled))
        .bind(each(batch, |p| json(&p.profile.metadata)))
        .bind(
            etags
                .iter()
                .map(|e| e.as_str().to_owned())
                .collect::<Vec<_>>(),
        )
        .bind(each(batch, |p| {
            p.profile.email.as_ref().map(|e| e.folded())
        }))
        .fetch_all(connection)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(account, live, id, created)| ((account, live, id), created))
        .collect())
}
