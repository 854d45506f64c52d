//! Batched reads: concurrent GetCustomer calls share one SELECT.
//!
//! A primary-key read costs PostgreSQL little; the round trip around it
//! costs far more (two context switches on each side, the protocol
//! framing). Under load, the gets that are waiting while a batch is out are
//! sent together as one statement that joins the requested keys to the
//! table, and each call gets its own row back, or NOT_FOUND.
//!
//! A batch is sent after every call in it arrived, so a get still sees
//! every write that committed before the call was made. The statement
//! joins on the account as on the id; with customers sharded by account, a
//! batch naming several accounts would reach several shards in one
//! statement, which Citus allows (a batcher per shard would avoid it).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use sqlx::postgres::PgConnection;
use sqlx::{PgPool, Row};
use tokio::sync::oneshot;

use super::StoreError;
use super::customers::{SELECT_CUSTOMER, customer_from_row};
use super::lane::{Batcher, InFlight, Lane, Queue};
use crate::domain::{AccountScope, Customer, CustomerError, CustomerId};

/// Most keys in one statement.
const MAX_BATCH: usize = 128;
/// Batches out at once. With one, the server (on one thread), PostgreSQL
/// and the callers took turns waiting for each other and a third of the
/// CPU stayed idle; a second batch took gets at 32 callers from about 30k
/// to 40k calls/s in the benchmark.
const WORKERS: usize = 2;
/// Fewest gets a batch is sent with while the other is out (else it waits
/// for that one to end), so that the second batch does not merely split
/// the first: 4 and 16 did no better.
const MIN_BATCH: usize = 8;

/// Owner and id of a row.
type RowKey = (String, bool, String);

/// Where a get's outcome goes.
type Reply = oneshot::Sender<Result<Customer, StoreError>>;

/// One get waiting for its batch.
struct Pending {
    key: RowKey,
    reply: Reply,
}

/// Queues gets for the workers.
#[derive(Debug, Clone)]
pub struct ReadBatcher {
    batcher: Batcher<Pending>,
}

impl ReadBatcher {
    /// Starts the workers on the current runtime.
    pub fn start(pool: &PgPool, statement_timeout: Duration) -> Self {
        Self {
            batcher: Batcher::start(pool, statement_timeout, WORKERS, work),
        }
    }

    /// Reads a customer in the next batch.
    pub async fn get(&self, scope: &AccountScope, id: &CustomerId) -> Result<Customer, StoreError> {
        let key = (
            scope.account_id.clone(),
            scope.live_mode,
            id.as_str().to_owned(),
        );
        self.batcher.call(|reply| Pending { key, reply }).await
    }
}

/// Takes whatever is queued (at least one), reads it, answers, repeats.
async fn work(mut lane: Lane, queue: Queue<Pending>, out: Arc<InFlight>) {
    let mut batch = Vec::new();
    while queue.fill(&mut batch, MAX_BATCH, MIN_BATCH, &out).await {
        // The same customer asked for twice goes into the statement once.
        let mut waiting: HashMap<RowKey, Vec<Reply>> = HashMap::new();
        for pending in batch.drain(..) {
            waiting.entry(pending.key).or_default().push(pending.reply);
        }
        let sent = out.start();
        let outcome = lane
            .run(async |connection| select_batch(connection, waiting.keys()).await)
            .await;
        drop(sent);
        // The callers may have gone (deadline); nothing to undo then.
        match outcome {
            Ok(found) => {
                for (key, customer) in found {
                    let mut replies = waiting.remove(&key).unwrap_or_default();
                    let last = replies.pop();
                    for reply in replies {
                        let _ = reply.send(Ok(customer.clone()));
                    }
                    if let Some(reply) = last {
                        let _ = reply.send(Ok(customer));
                    }
                }
                for reply in waiting.into_values().flatten() {
                    let _ = reply.send(Err(CustomerError::NotFound.into()));
                }
            }
            Err(error) => {
                for reply in waiting.into_values().flatten() {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// Reads the customers with these keys; absent ones are simply missing.
async fn select_batch(
    connection: &mut PgConnection,
    keys: impl Iterator<Item = &RowKey>,
) -> Result<Vec<(RowKey, Customer)>, StoreError> {
    let (mut accounts, mut modes, mut ids) = (Vec::new(), Vec::new(), Vec::new());
    for (account, mode, id) in keys {
        accounts.push(account.as_str());
        modes.push(*mode);
        ids.push(id.as_str());
    }
    let rows = sqlx::query(&BATCH_SQL)
        .bind(accounts)
        .bind(modes)
        .bind(ids)
        .fetch_all(connection)
        .await?;
    rows.iter()
        .map(|row| {
            let account: String = row.try_get("account_id")?;
            let customer = customer_from_row(row)?;
            let key = (account, customer.live_mode, customer.id.as_str().to_owned());
            Ok((key, customer))
        })
        .collect()
}

/// The statement of a batch: the customers joined to the requested keys,
/// given as three arrays (accounts, modes, ids) of one length. Built once.
pub(super) static BATCH_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{SELECT_CUSTOMER}
         JOIN UNNEST($1::text[], $2::bool[], $3::text[]) AS k(account_id, live_mode, id)
           ON c.account_id = k.account_id AND c.live_mode = k.live_mode AND c.id = k.id"
    )
});
