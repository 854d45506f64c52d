//! SQL for API keys.

use std::time::Duration;

use sqlx::PgPool;
use time::OffsetDateTime;

use super::{BoundedPool, StoreError};
use crate::domain::{AccountScope, PresentedKey};

/// A stored key: everything but the secret, which only its hash stands for.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRecord {
    pub id: String,
    pub account_id: String,
    pub live_mode: bool,
    pub secret_hash: Vec<u8>,
    pub create_time: OffsetDateTime,
    pub revoke_time: Option<OffsetDateTime>,
}

impl ApiKeyRecord {
    /// The owner the key acts for.
    pub fn scope(&self) -> AccountScope {
        AccountScope {
            account_id: self.account_id.clone(),
            live_mode: self.live_mode,
        }
    }
}

/// Creates, finds, lists and revokes API keys.
#[derive(Debug, Clone)]
pub struct KeyStore {
    db: BoundedPool,
}

impl KeyStore {
    /// A store over `pool`, whose connections end statements after
    /// `statement_timeout`.
    pub fn new(pool: PgPool, statement_timeout: Duration) -> Self {
        Self {
            db: BoundedPool::new(pool, statement_timeout),
        }
    }

    /// Creates a key for `account_id` in the given mode; returns the key's
    /// full text, which is shown once and never stored.
    pub async fn create(
        &self,
        account_id: &str,
        live_mode: bool,
    ) -> Result<(String, ApiKeyRecord), StoreError> {
        let (text, key) = PresentedKey::generate(live_mode);
        let record = sqlx::query_as(
            "INSERT INTO api_keys (id, account_id, live_mode, secret_hash, create_time)
             VALUES ($1, $2, $3, $4, now())
             RETURNING id, account_id, live_mode, secret_hash, create_time, revoke_time",
        )
        .bind(&key.id)
        .bind(account_id)
        .bind(live_mode)
        .bind(key.secret_hash());
        let record = self
            .db
            .run(async |connection| Ok(record.fetch_one(connection).await?))
            .await?;
        Ok((text, record))
    }

    /// The key with this id, revoked or not.
    pub async fn find(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let query = sqlx::query_as(
            "SELECT id, account_id, live_mode, secret_hash, create_time, revoke_time
             FROM api_keys WHERE id = $1",
        )
        .bind(id);
        self.db
            .run(async |connection| Ok(query.fetch_optional(connection).await?))
            .await
    }

    /// Every key, oldest first.
    pub async fn list(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let query = sqlx::query_as(
            "SELECT id, account_id, live_mode, secret_hash, create_time, revoke_time
             FROM api_keys ORDER BY create_time, id",
        );
        self.db
            .run(async |connection| Ok(query.fetch_all(connection).await?))
            .await
    }

    /// Revokes a key; false when no unrevoked key has this id.
    pub async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let query = sqlx::query(
            "UPDATE api_keys SET revoke_time = now() WHERE id = $1 AND revoke_time IS NULL",
        )
        .bind(id);
        let result = self
            .db
            .run(async |connection| Ok(query.execute(connection).await?))
            .await?;
        Ok(result.rows_affected() == 1)
    }
}
