//! SQL for customers and their sources.

use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Row, Transaction};
use time::OffsetDateTime;

use super::StoreError;
use crate::domain::{
    AccountScope, Customer, CustomerError, CustomerId, CustomerKind, CustomerPatch, EmailAddress,
    Etag, Locale, Profile, Source, SourceId,
};

/// The columns every read returns, sources included, so that one round trip
/// yields a whole customer. The two arrays share one order.
const SELECT_CUSTOMER: &str = "
    SELECT c.id, c.email, c.shipping, c.default_source_id, c.tax_identifiers, c.locale,
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

/// Reads and writes customers. Cheap to clone: it is a handle to the pool.
#[derive(Debug, Clone)]
pub struct CustomerStore {
    pool: PgPool,
}

impl CustomerStore {
    /// A store over `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool, for health checks.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Inserts a new customer. An existing id is refused by the primary key
    /// (not by a prior read, which would race with a concurrent insert).
    #[tracing::instrument(name = "store.insert", skip_all, fields(customer_id = id.as_str()))]
    pub async fn insert(
        &self,
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
        .fetch_one(&self.pool)
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

    /// Reads one customer.
    #[tracing::instrument(name = "store.get", skip_all, fields(customer_id = id.as_str()))]
    pub async fn get(&self, scope: &AccountScope, id: &CustomerId) -> Result<Customer, StoreError> {
        let sql =
            format!("{SELECT_CUSTOMER} WHERE c.account_id = $1 AND c.live_mode = $2 AND c.id = $3");
        let row = sqlx::query(&sql)
            .bind(&scope.account_id)
            .bind(scope.live_mode)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(CustomerError::NotFound)?;
        customer_from_row(&row)
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
        let mut tx = self.pool.begin().await?;
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

        customer.etag = Etag::generate();
        customer.update_time = write(&mut tx, scope, &customer).await?;
        tx.commit().await?;
        Ok(customer)
    }
}

/// Reads a customer and locks its row until the transaction ends.
async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    scope: &AccountScope,
    id: &CustomerId,
) -> Result<Customer, StoreError> {
    let sql = format!(
        "{SELECT_CUSTOMER} WHERE c.account_id = $1 AND c.live_mode = $2 AND c.id = $3 FOR UPDATE OF c"
    );
    let row = sqlx::query(&sql)
        .bind(&scope.account_id)
        .bind(scope.live_mode)
        .bind(id.as_str())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(CustomerError::NotFound)?;
    customer_from_row(&row)
}

/// Writes every mutable column of `customer` and drops sources it no longer
/// has (erasure). Returns the new update_time.
async fn write(
    tx: &mut Transaction<'_, Postgres>,
    scope: &AccountScope,
    customer: &Customer,
) -> Result<OffsetDateTime, StoreError> {
    let profile = &customer.profile;
    if customer.forgotten {
        sqlx::query(
            "DELETE FROM customer_sources
             WHERE account_id = $1 AND live_mode = $2 AND customer_id = $3",
        )
        .bind(&scope.account_id)
        .bind(scope.live_mode)
        .bind(customer.id.as_str())
        .execute(&mut **tx)
        .await?;
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

fn kind_to_column(kind: CustomerKind) -> i16 {
    match kind {
        CustomerKind::Individual => 1,
        CustomerKind::Business => 2,
    }
}

/// Builds a customer from a row of [`SELECT_CUSTOMER`].
fn customer_from_row(row: &PgRow) -> Result<Customer, StoreError> {
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
