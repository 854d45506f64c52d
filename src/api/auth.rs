//! Who is calling: the API key in `authorization: Bearer <key>` decides the
//! account and mode every call acts for.
//!
//! Keys are looked up by their public id and kept for a short while, so that
//! a busy caller does not cost a query per call; a revoked key therefore
//! stops working within `API_KEY_CACHE_MS`.
//!
//! Keys that are not cached, which is every key a stranger makes up, are
//! looked up at most [`MAX_KEY_LOOKUPS`] at a time: a flood of made-up keys
//! then occupies that many database connections, not the pool. A lookup
//! that cannot start within [`LOOKUP_WAIT`] is refused as OVERLOADED.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use super::error::{overloaded, status};
use crate::domain::{AccountScope, PresentedKey};
use crate::store::{ApiKeyRecord, KeyStore};

/// Longest authorization value considered; longer ones are malformed.
const MAX_AUTHORIZATION_LEN: usize = 200;
/// Most cached keys; the cache is emptied when it grows past this.
const MAX_CACHED_KEYS: usize = 10_000;
/// Most key lookups in the database at once.
const MAX_KEY_LOOKUPS: usize = 4;
/// Longest wait for a turn to look a key up.
const LOOKUP_WAIT: Duration = Duration::from_secs(1);

/// Turns request metadata into the owner a call acts for.
#[derive(Debug)]
pub struct Authenticator {
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    Keys {
        store: KeyStore,
        ttl: Duration,
        cache: Mutex<HashMap<String, (ApiKeyRecord, Instant)>>,
        lookups: Semaphore,
    },
    /// Every call acts for the default test-mode account.
    Disabled,
}

impl Authenticator {
    /// Checks API keys against `store`, caching records for `ttl`.
    pub fn with_keys(store: KeyStore, ttl: Duration) -> Self {
        Self {
            mode: Mode::Keys {
                store,
                ttl,
                cache: Mutex::new(HashMap::new()),
                lookups: Semaphore::new(MAX_KEY_LOOKUPS),
            },
        }
    }

    /// Accepts every call as the default test-mode account. Local use only.
    pub fn disabled() -> Self {
        Self {
            mode: Mode::Disabled,
        }
    }

    /// The owner the call acts for, or UNAUTHENTICATED. A key that is
    /// unknown, revoked, or whose secret is wrong gets one and the same
    /// answer.
    pub async fn scope(&self, metadata: &MetadataMap) -> Result<AccountScope, Status> {
        let Mode::Keys {
            store,
            ttl,
            cache,
            lookups,
        } = &self.mode
        else {
            return Ok(AccountScope::default_account());
        };
        let key = presented_key(metadata).ok_or_else(|| {
            status(
                Code::Unauthenticated,
                "send an API key as `authorization: Bearer sk_test_…` or `sk_live_…`",
                "API_KEY_MISSING",
            )
        })?;
        let record = match cached(cache, &key.id, *ttl) {
            Some(record) => Some(record),
            None => {
                let _turn = tokio::time::timeout(LOOKUP_WAIT, lookups.acquire())
                    .await
                    .map_err(|_| overloaded())?
                    .expect("the semaphore is never closed");
                let found = store.find(&key.id).await?;
                if let Some(record) = &found
                    && !ttl.is_zero()
                {
                    let mut cache = cache.lock().expect("key cache lock");
                    if cache.len() >= MAX_CACHED_KEYS {
                        cache.clear();
                    }
                    cache.insert(key.id.clone(), (record.clone(), Instant::now()));
                }
                found
            }
        };
        match record {
            Some(record)
                if record.revoke_time.is_none()
                    && record.live_mode == key.live_mode
                    && key.matches(&record.secret_hash) =>
            {
                Ok(record.scope())
            }
            _ => Err(status(
                Code::Unauthenticated,
                "the API key is not valid",
                "API_KEY_INVALID",
            )),
        }
    }
}

fn cached(
    cache: &Mutex<HashMap<String, (ApiKeyRecord, Instant)>>,
    id: &str,
    ttl: Duration,
) -> Option<ApiKeyRecord> {
    let cache = cache.lock().expect("key cache lock");
    cache
        .get(id)
        .filter(|(_, at)| at.elapsed() < ttl)
        .map(|(record, _)| record.clone())
}

/// The key in `authorization: Bearer <key>`, if the header has that shape.
/// Two authorization headers are ambiguous, so they count as none.
fn presented_key(metadata: &MetadataMap) -> Option<PresentedKey> {
    if metadata.get_all("authorization").iter().count() != 1 {
        return None;
    }
    let value = metadata.get("authorization")?;
    if value.len() > MAX_AUTHORIZATION_LEN {
        return None;
    }
    let text = value.to_str().ok()?;
    let (scheme, key) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    PresentedKey::parse(key.trim())
}
