//! SQL for customers and their sources.

use std::time::Duration;

use sqlx::postgres::{PgConnection, PgRow};
use sqlx::types::Json;
use sqlx::{
    ConnectOptions, Connection, PgExecutor, PgPool, Postgres, QueryBuilder, Row, Transaction,
};
use time::OffsetDateTime;

use super::batch::InsertBatcher;
use super::reads::{BATCH_SQL, ReadBatcher};
use super::{BoundedPool, StoreError};
use crate::domain::{
    AccountScope, Customer, CustomerError, CustomerId, CustomerKind, CustomerPatch, EmailAddress,
    Etag, IdempotencyKey, ListQuery, Locale, Profile, Source, SourceId,
};

/// The columns every read returns, sources included, so that one round trip
/// yields a whole customer. The two arrays share one order.
pub(super) const SELECT_CUSTOMER: &str = "
    SELECT c.account_id, c.id, c.email, c.shipping, c.default_source_id, c.tax_identifiers, c.locale,
           c.customer_type, c.enabled, c.forgotten, c.metadata, c.live_mode,
           c.create_time, c.update_time, c.etag,
           ARRAY(SELECT s.source_id FROM customer_sources s
                 WHERE s.account_id = c.account_id AND s.live_mode = c.live_mode
                   AND s.customer_id = c.id
                 ORDER BY s.attach_time, s.source_id) AS source_ids,
           ARRAY(SELECT s.attach_time FROM customer_sources s
                 WHERE s.account_id = c.account_id AND s.live_mode = c.live_mode
                   AND s.customer_id = c.id
                 ORDER BY s.attach_time, s.source_id) AS source_times
    FROM customers c";

/// How long an idempotency record answers retries.
const IDEMPOTENCY_WINDOW: &str = "24 hours";

/// Reads and writes customers. Cheap to clone: it is a handle to the pool.
#[derive(Debug, Clone)]
pub struct CustomerStore {
    db: BoundedPool,
    inserts: InsertBatcher,
    reads: ReadBatcher,
}

/// What an idempotent create found: its own insert, or an earlier call's.
enum Claim {
    Inserted(Box<Customer>),
    Replay {
        first_id: String,
        claimed_at: OffsetDateTime,
    },
}

impl CustomerStore {
    /// A store over `pool`, whose connections end statements after
    /// `statement_timeout`. Starts the batch workers for creates and gets
    /// on the current runtime; they hold connections of their own besides
    /// the pool's.
    pub fn new(pool: PgPool, statement_timeout: Duration) -> Self {
        let inserts = InsertBatcher::start(&pool, statement_timeout);
        let reads = ReadBatcher::start(&pool, statement_timeout);
        Self {
            db: BoundedPool::new(pool, statement_timeout),
            inserts,
            reads,
        }
    }

    /// The pool, for health checks.
    pub fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    /// Inserts a new customer. An existing id is refused by the primary key
    /// (not by a prior read, which would race with a concurrent insert).
    ///
    /// With an idempotency key, the key is claimed in the same transaction
    /// as the insert. A key claimed before (and less than 24 hours ago)
    /// makes this a replay instead: the customer the first call created, in
    /// its current state, or REQUEST_ID_REUSED when the fingerprint differs.
    /// Concurrent calls with one key wait on the key's row, so exactly one
    /// inserts.
    #[tracing::instrument(name = "store.insert", skip_all, fields(customer_id = id.as_str()))]
    pub async fn insert(
        &self,
        scope: &AccountScope,
        id: &CustomerId,
        profile: &Profile,
        key: Option<&IdempotencyKey>,
    ) -> Result<Customer, StoreError> {
        let Some(key) = key else {
            return self.inserts.insert(scope, id, profile).await;
        };
        let claim = self
            .db
            .run(async |connection| claim_request(connection, scope, id, profile, key).await)
            .await?;
        let (first_id, claimed_at) = match claim {
            Claim::Inserted(customer) => return Ok(*customer),
            Claim::Replay {
                first_id,
                claimed_at,
            } => (first_id, claimed_at),
        };
        tracing::debug!("replaying an idempotent create");
        let customer = self.get(scope, &CustomerId::from_trusted(first_id)).await?;
        // The record and the customer were written in one transaction, so
        // they share its now(). Another create_time means the first customer
        // was deleted and its id reused since: that is not this request's.
        if customer.create_time != claimed_at {
            return Err(CustomerError::NotFound.into());
        }
        Ok(customer)
    }

    /// Deletes idempotency records older than 24 hours, a batch at a time so
    /// that no statement holds many row locks. Returns how many went.
    pub async fn purge_expired_requests(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let deleted = self
                .db
                .run(async |connection| {
                    let done = sqlx::query(
                        "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
                             SELECT ctid FROM idempotency_keys
                             WHERE create_time < now() - $1::interval LIMIT 1000))",
                    )
                    .bind(IDEMPOTENCY_WINDOW)
                    .execute(connection)
                    .await?;
                    Ok(done.rows_affected())
                })
                .await?;
            total += deleted;
            if deleted < 1000 {
                return Ok(total);
            }
        }
    }

    /// Reads one customer, in a batch with the gets made meanwhile.
    #[tracing::instrument(name = "store.get", skip_all, fields(customer_id = id.as_str()))]
    pub async fn get(&self, scope: &AccountScope, id: &CustomerId) -> Result<Customer, StoreError> {
        self.reads.get(scope, id).await
    }

    /// Applies `patch` to a customer, under a row lock so that the etag
    /// check and the write are one atomic step. A patch that changes nothing
    /// writes nothing: the etag and update_time stay as they were.
    #[tracing::instrument(name = "store.update", skip_all, fields(customer_id = id.as_str()))]
    pub async fn update(
        &self,
        scope: &AccountScope,
        id: &CustomerId,
        expected_etag: Option<&Etag>,
        patch: &CustomerPatch,
    ) -> Result<Customer, StoreError> {
        self.db
            .run(async |connection| {
                let mut tx = connection.begin().await?;
                let mut customer = lock(&mut tx, scope, id).await?;
                if customer.forgotten {
                    return Err(CustomerError::Forgotten.into());
                }
                if expected_etag.is_some_and(|etag| *etag != customer.etag) {
                    return Err(CustomerError::EtagMismatch.into());
                }

                let before = customer.clone();
                if patch.forget {
                    customer.forget();
                } else {
                    customer
                        .profile
                        .apply(&patch.mask, &patch.values)
                        .map_err(CustomerError::Invalid)?;
                    customer.check_default_source()?;
                }
                if customer == before {
                    return Ok(customer);
                }

                save(tx, scope, customer).await
            })
            .await
    }

    /// One page of customers, newest first (create_time, then id, both
    /// descending), plus one more row when there is a next page.
    ///
    /// Keyset pagination: the page starts strictly after the cursor, so page
    /// 1000 costs what page 1 costs, and rows inserted meanwhile (which sort
    /// first) never shift the remaining pages. The SQL contains only the
    /// active filters, so each filter combination gets a plan of its own.
    #[tracing::instrument(name = "store.list", skip_all, fields(page_size = query.page_size))]
    pub async fn list(
        &self,
        scope: &AccountScope,
        query: &ListQuery,
    ) -> Result<Vec<Customer>, StoreError> {
        let rows = self
            .db
            .run(async |connection| {
                Ok(list_query(scope, query)
                    .build()
                    .fetch_all(connection)
                    .await?)
            })
            .await?;
        rows.iter().map(customer_from_row).collect()
    }

    /// The plan PostgreSQL chooses for a list query, as JSON text: for
    /// operators and for the tests that check every filter has an index.
    pub async fn explain_list(
        &self,
        scope: &AccountScope,
        query: &ListQuery,
    ) -> Result<String, StoreError> {
        let mut tx = self.db.pool.begin().await?;
        // Tiny test tables make a sequential scan cheapest; the question
        // here is whether an index can serve the query at all.
        sqlx::query("SET LOCAL enable_seqscan = off")
            .execute(&mut *tx)
            .await?;
        let mut builder = QueryBuilder::new("EXPLAIN (FORMAT JSON) ");
        push_list_sql(&mut builder, scope, query);
        let row = builder.build().fetch_one(&mut *tx).await?;
        let plan: serde_json::Value = row.try_get(0)?;
        Ok(plan.to_string())
    }

    /// The plan PostgreSQL uses for every batch of gets, as JSON text: for
    /// the test that checks the batch reads by primary key. The batch
    /// connections run generic plans (see `lane.rs`), which do not depend
    /// on the keys, so this explains the generic plan, on a connection of
    /// its own that it then closes (a prepared statement outlives
    /// transactions).
    pub async fn explain_get_batch(&self) -> Result<String, StoreError> {
        let mut connection = self.db.pool.connect_options().connect().await?;
        let prepare = format!(
            "PREPARE get_batch(text[], bool[], text[]) AS {}",
            *BATCH_SQL
        );
        for statement in ["SET plan_cache_mode = force_generic_plan", &prepare] {
            sqlx::query(statement).execute(&mut connection).await?;
        }
        let plan: serde_json::Value =
            sqlx::query_scalar("EXPLAIN (FORMAT JSON) EXECUTE get_batch(NULL, NULL, NULL)")
                .fetch_one(&mut connection)
                .await?;
        connection.close().await?;
        Ok(plan.to_string())
    }

    /// Removes a customer and, by cascade, its sources. With an etag, the
    /// row must still carry it; the check and the delete share a row lock.
    #[tracing::instrument(name = "store.delete", skip_all, fields(customer_id = id.as_str()))]
    pub async fn delete(
        &self,
        scope: &AccountScope,
        id: &CustomerId,
        expected_etag: Option<&Etag>,
    ) -> Result<(), StoreError> {
        self.db
            .run(async |connection| {
                let mut tx = connection.begin().await?;
                let etag: Option<String> = sqlx::query_scalar(
                    "SELECT etag FROM customers
                     WHERE account_id = $1 AND live_mode = $2 AND id = $3 FOR UPDATE",
                )
                .bind(&scope.account_id)
                .bind(scope.live_mode)
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                let etag = etag.ok_or(CustomerError::NotFound)?;
                if expected_etag.is_some_and(|expected| expected.as_str() != etag) {
                    return Err(CustomerError::EtagMismatch.into());
                }
                sqlx::query(
                    "DELETE FROM customers WHERE account_id = $1 AND live_mode = $2 AND id = $3",
                )
                .bind(&scope.account_id)
                .bind(scope.live_mode)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            })
            .await
    }

    /// Attaches a source. The customer's row lock serialises concurrent
    /// attaches, so the limit holds however many race.
    #[tracing::instrument(name = "store.attach_source", skip_all, fields(customer_id = id.as_str()))]
    pub async fn attach_source(
        &self,
        scope: &AccountScope,
        id: &CustomerId,
        source: &SourceId,
    ) -> Result<Customer, StoreError> {
        self.db
            .run(async |connection| {
                let mut tx = connection.begin().await?;
                let mut customer = lock(&mut tx, scope, id).await?;
                if !customer.can_attach(source)? {
                    return Ok(customer);
                }
                let attach_time: OffsetDateTime = sqlx::query_scalar(
                    "INSERT INTO customer_sources
                         (account_id, live_mode, customer_id, source_id, attach_time)
                     VALUES ($1, $2, $3, $4, now())
                     RETURNING attach_time",
                )
                .bind(&scope.account_id)
                .bind(scope.live_mode)
                .bind(id.as_str())
                .bind(source.as_str())
                .fetch_one(&mut *tx)
                .await?;
                customer.attach(Source {
                    id: source.clone(),
                    attach_time,
                });
                save(tx, scope, customer).await
            })
            .await
    }

    /// Detaches a source, clearing the default when it was the default.
    #[tracing::instrument(name = "store.detach_source", skip_all, fields(customer_id = id.as_str()))]
    pub async fn detach_source(
        &self,
        scope: &AccountScope,
        id: &CustomerId,
        source: &SourceId,
    ) -> Result<Customer, StoreError> {
        self.db
            .run(async |connection| {
                let mut tx = connection.begin().await?;
                let mut customer = lock(&mut tx, scope, id).await?;
                customer.detach(source)?;
                sqlx::query(
                    "DELETE FROM customer_sources
                     WHERE account_id = $1 AND live_mode = $2 AND customer_id = $3 AND source_id = $4",
                )
                .bind(&scope.account_id)
                .bind(scope.live_mode)
                .bind(id.as_str())
                .bind(source.as_str())
                .execute(&mut *tx)
                .await?;
                save(tx, scope, customer).await
            })
            .await
    }
}

/// The list query of [`CustomerStore::list`], fetching one row more than
/// the page so the caller knows whether another page follows.
fn list_query<'q>(scope: &'q AccountScope, query: &'q ListQuery) -> QueryBuilder<'q, Postgres> {
    let mut builder = QueryBuilder::new("");
    push_list_sql(&mut builder, scope, query);
    builder
}

fn push_list_sql<'q>(
    builder: &mut QueryBuilder<'q, Postgres>,
    scope: &'q AccountScope,
    query: &'q ListQuery,
) {
    let filter = &query.filter;
    builder.push(SELECT_CUSTOMER);
    builder
        .push(" WHERE c.account_id = ")
        .push_bind(scope.account_id.as_str());
    builder
        .push(" AND c.live_mode = ")
        .push_bind(scope.live_mode);
    if let Some(email) = &filter.email_folded {
        builder
            .push(" AND c.email_folded = ")
            .push_bind(email.as_str());
    }
    if let Some(after) = filter.created_after {
        builder.push(" AND c.create_time > ").push_bind(after);
    }
    if let Some(before) = filter.created_before {
        builder.push(" AND c.create_time < ").push_bind(before);
    }
    if let Some(ids) = &filter.ids {
        let ids: Vec<&str> = ids.iter().map(CustomerId::as_str).collect();
        builder.push(" AND c.id = ANY(").push_bind(ids).push(")");
    }
    if let Some(cursor) = &query.after {
        builder
            .push(" AND (c.create_time, c.id) < (")
            .push_bind(cursor.create_time);
        builder.push(", ").push_bind(cursor.id.as_str()).push(")");
    }
    builder.push(" ORDER BY c.create_time DESC, c.id DESC LIMIT ");
    builder.push_bind(query.page_size as i64 + 1);
}

/// The transaction of an idempotent create: claims the request id and
/// inserts the customer, or finds the earlier call that claimed it.
async fn claim_request(
    connection: &mut PgConnection,
    scope: &AccountScope,
    id: &CustomerId,
    profile: &Profile,
    key: &IdempotencyKey,
) -> Result<Claim, StoreError> {
    let mut tx = connection.begin().await?;
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys
             (account_id, live_mode, request_id, fingerprint, customer_id, create_time)
         VALUES ($1, $2, $3, $4, $5, now())
         ON CONFLICT (account_id, live_mode, request_id) DO UPDATE
             SET fingerprint = EXCLUDED.fingerprint, customer_id = EXCLUDED.customer_id,
                 create_time = EXCLUDED.create_time
             WHERE idempotency_keys.create_time < now() - $6::interval
         RETURNING 1",
    )
    .bind(&scope.account_id)
    .bind(scope.live_mode)
    .bind(&key.request_id)
    .bind(&key.fingerprint)
    .bind(id.as_str())
    .bind(IDEMPOTENCY_WINDOW)
    .fetch_optional(&mut *tx)
    .await?
    .is_some();
    if claimed {
        let customer = insert_row(&mut *tx, scope, id, profile).await?;
        tx.commit().await?;
        return Ok(Claim::Inserted(Box::new(customer)));
    }

    let (fingerprint, first_id, claimed_at): (Option<Vec<u8>>, String, OffsetDateTime) =
        sqlx::query_as(
            "SELECT fingerprint, customer_id, create_time FROM idempotency_keys
             WHERE account_id = $1 AND live_mode = $2 AND request_id = $3",
        )
        .bind(&scope.account_id)
        .bind(scope.live_mode)
        .bind(&key.request_id)
        .fetch_one(&mut *tx)
        .await?;
    tx.rollback().await?;
    // Erasure clears the fingerprint; the requested id, which erasure keeps,
    // is then all that can still be compared.
    let reused = match fingerprint {
        Some(fingerprint) => fingerprint != key.fingerprint,
        None => key
            .requested_id
            .as_ref()
            .is_some_and(|id| id.as_str() != first_id),
    };
    if reused {
        return Err(CustomerError::RequestIdReused.into());
    }
    Ok(Claim::Replay {
        first_id,
        claimed_at,
    })
}

/// Inserts the customer row.
async fn insert_row(
    executor: impl PgExecutor<'_>,
    scope: &AccountScope,
    id: &CustomerId,
    profile: &Profile,
) -> Result<Customer, StoreError> {
    let etag = Etag::generate();
    let row = sqlx::query(
        "INSERT INTO customers (account_id, live_mode, id, email, shipping,
             default_source_id, tax_identifiers, locale, customer_type, enabled,
             metadata, etag, email_folded, create_time, update_time)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, now(), now())
         RETURNING create_time",
    )
    .bind(&scope.account_id)
    .bind(scope.live_mode)
    .bind(id.as_str())
    .bind(profile.email.as_ref().map(|e| e.as_str()))
    .bind(Json(&profile.shipping))
    .bind(profile.default_source_id.as_ref().map(SourceId::as_str))
    .bind(Json(&profile.tax_identifiers))
    .bind(profile.locale.as_ref().map(|l| l.as_str()))
    .bind(kind_to_column(profile.kind))
    .bind(profile.enabled)
    .bind(Json(&profile.metadata))
    .bind(etag.as_str())
    .bind(profile.email.as_ref().map(|e| e.folded()))
    .fetch_one(executor)
    .await
    .map_err(|error| match unique_violation(&error) {
        Some("customers_pkey") => CustomerError::AlreadyExists.into(),
        _ => StoreError::from(error),
    })?;

    let created: OffsetDateTime = row.try_get("create_time")?;
    Ok(Customer {
        id: id.clone(),
        profile: profile.clone(),
        sources: Vec::new(),
        forgotten: false,
        live_mode: scope.live_mode,
        create_time: created,
        update_time: created,
        etag,
    })
}

/// Locks a customer's row until the transaction ends, then reads it.
///
/// Two statements on purpose: under READ COMMITTED a statement that waited
/// for the lock sees the newest version of the locked row but an older
/// snapshot of every other table, so reading the sources in the locking
/// statement could miss ones that a concurrent attach just committed.
async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    scope: &AccountScope,
    id: &CustomerId,
) -> Result<Customer, StoreError> {
    sqlx::query(
        "SELECT 1 FROM customers
         WHERE account_id = $1 AND live_mode = $2 AND id = $3 FOR UPDATE",
    )
    .bind(&scope.account_id)
    .bind(scope.live_mode)
    .bind(id.as_str())
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(CustomerError::NotFound)?;
    let sql =
        format!("{SELECT_CUSTOMER} WHERE c.account_id = $1 AND c.live_mode = $2 AND c.id = $3");
    let row = sqlx::query(&sql)
        .bind(&scope.account_id)
        .bind(scope.live_mode)
        .bind(id.as_str())
        .fetch_one(&mut **tx)
        .await?;
    customer_from_row(&row)
}

/// Gives a changed customer a new etag, writes it and commits.
async fn save(
    mut tx: Transaction<'_, Postgres>,
    scope: &AccountScope,
    mut customer: Customer,
) -> Result<Customer, StoreError> {
    customer.etag = Etag::generate();
    customer.update_time = write(&mut tx, scope, &customer).await?;
    tx.commit().await?;
    Ok(customer)
}

/// Writes every mutable column of `customer`. For an erased customer it also
/// drops the sources and the fingerprints of its idempotency records, the
/// other places its data lived. Returns the new update_time.
async fn write(
    tx: &mut Transaction<'_, Postgres>,
    scope: &AccountScope,
    customer: &Customer,
) -> Result<OffsetDateTime, StoreError> {
    let profile = &customer.profile;
    if customer.forgotten {
        for sql in [
            "DELETE FROM customer_sources
             WHERE account_id = $1 AND live_mode = $2 AND customer_id = $3",
            "UPDATE idempotency_keys SET fingerprint = NULL
             WHERE account_id = $1 AND live_mode = $2 AND customer_id = $3",
        ] {
            sqlx::query(sql)
                .bind(&scope.account_id)
                .bind(scope.live_mode)
                .bind(customer.id.as_str())
                .execute(&mut **tx)
                .await?;
        }
    }
    let row = sqlx::query(
        "UPDATE customers SET email = $4, shipping = $5, default_source_id = $6,
             tax_identifiers = $7, locale = $8, customer_type = $9, enabled = $10,
             forgotten = $11, metadata = $12, etag = $13, email_folded = $14,
             update_time = greatest(now(), update_time)
         WHERE account_id = $1 AND live_mode = $2 AND id = $3
         RETURNING update_time",
    )
    .bind(&scope.account_id)
    .bind(scope.live_mode)
    .bind(customer.id.as_str())
    .bind(profile.email.as_ref().map(|e| e.as_str()))
    .bind(Json(&profile.shipping))
    .bind(profile.default_source_id.as_ref().map(SourceId::as_str))
    .bind(Json(&profile.tax_identifiers))
    .bind(profile.locale.as_ref().map(|l| l.as_str()))
    .bind(kind_to_column(profile.kind))
    .bind(profile.enabled)
    .bind(customer.forgotten)
    .bind(Json(&profile.metadata))
    .bind(customer.etag.as_str())
    .bind(profile.email.as_ref().map(|e| e.folded()))
    .fetch_one(&mut **tx)
    .await?;
    Ok(row.try_get("update_time")?)
}

/// The name of the unique constraint `error` violated, if that is what it is
/// (SQLSTATE 23505).
fn unique_violation(error: &sqlx::Error) -> Option<&str> {
    match error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => db.constraint(),
        _ => None,
    }
}

pub(super) fn kind_to_column(kind: CustomerKind) -> i16 {
    match kind {
        CustomerKind::Individual => 1,
        CustomerKind::Business => 2,
    }
}

/// Builds a customer from a row of [`SELECT_CUSTOMER`].
pub(super) fn customer_from_row(row: &PgRow) -> Result<Customer, StoreError> {
    let source_ids: Vec<String> = row.try_get("source_ids")?;
    let source_times: Vec<OffsetDateTime> = row.try_get("source_times")?;
    let sources = source_ids
        .into_iter()
        .zip(source_times)
        .map(|(id, attach_time)| Source {
            id: SourceId::from_trusted(id),
            attach_time,
        })
        .collect();
    let kind = match row.try_get::<i16, _>("customer_type")? {
        2 => CustomerKind::Business,
        _ => CustomerKind::Individual,
    };
    let email: Option<String> = row.try_get("email")?;
    let default_source: Option<String> = row.try_get("default_source_id")?;
    let locale: Option<String> = row.try_get("locale")?;
    let Json(shipping) = row.try_get("shipping")?;
    let Json(tax_identifiers) = row.try_get("tax_identifiers")?;
    let Json(metadata) = row.try_get("metadata")?;
    Ok(Customer {
        id: CustomerId::from_trusted(row.try_get("id")?),
        profile: Profile {
            email: email.map(EmailAddress::from_trusted),
            shipping,
            default_source_id: default_source.map(SourceId::from_trusted),
            tax_identifiers,
            locale: locale.map(Locale::from_trusted),
            kind,
            enabled: row.try_get("enabled")?,
            metadata,
        },
        sources,
        forgotten: row.try_get("forgotten")?,
        live_mode: row.try_get("live_mode")?,
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
        etag: Etag::from_trusted(row.try_get("etag")?),
    })
}
