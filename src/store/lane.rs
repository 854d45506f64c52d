//! Plumbing shared by the batch workers: a queue that hands out whatever
//! is waiting, and a connection that each worker owns.
//!
//! Workers keep their own connection rather than borrowing one from the
//! pool per batch: the pool checks a connection with a round trip to the
//! server when it hands it out and again when it takes it back, which
//! would triple the round trips of a batch. A lane checks its connection
//! only after it sat idle (when the server may have restarted meanwhile)
//! and drops it after a connection-level failure or a batch that got no
//! answer in time, so the next batch connects afresh.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, PgPool};
use tokio::sync::{Mutex, Notify, mpsc, oneshot};

use super::{StoreError, answer_limit, within};

/// Idle longer than this, a connection is checked before its next batch.
const IDLE_CHECK: Duration = Duration::from_millis(100);

/// The sending side of a set of batch workers, each with its own
/// connection; they stop once every clone of it is gone.
pub(super) struct Batcher<J> {
    queue: mpsc::UnboundedSender<J>,
}

impl<J> Clone for Batcher<J> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<J> std::fmt::Debug for Batcher<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl<J: Send + 'static> Batcher<J> {
    /// Starts `workers` tasks running `work` on the current runtime, all
    /// taking jobs from one queue.
    pub(super) fn start<W, F>(
        pool: &PgPool,
        statement_timeout: Duration,
        workers: usize,
        work: W,
    ) -> Self
    where
        W: Fn(Lane, Queue<J>, Arc<InFlight>) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let (queue, receiver) = Queue::new();
        let out = Arc::new(InFlight::default());
        for _ in 0..workers {
            let lane = Lane::new(pool, statement_timeout);
            tokio::spawn(work(lane, receiver.clone(), out.clone()));
        }
        Self { queue }
    }

    /// Queues the job that `job` makes around a reply channel, and waits
    /// for the reply.
    pub(super) async fn call<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> J,
    ) -> Result<T, StoreError> {
        let closed = || StoreError::Unavailable(Arc::new(sqlx::Error::PoolClosed));
        let (reply, outcome) = oneshot::channel();
        self.queue.send(job(reply)).map_err(|_| closed())?;
        outcome.await.unwrap_or_else(|_| Err(closed()))
    }
}

/// The receiving end of a batch queue, shared by a set of workers.
pub(super) struct Queue<J> {
    receiver: Arc<Mutex<mpsc::UnboundedReceiver<J>>>,
}

impl<J> Clone for Queue<J> {
    fn clone(&self) -> Self {
        Self {
            receiver: self.receiver.clone(),
        }
    }
}

impl<J> Queue<J> {
    /// A queue and its sending side. The queue is unbounded on purpose: the
    /// server's concurrency limit already bounds how many calls can wait.
    fn new() -> (mpsc::UnboundedSender<J>, Self) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let receiver = Arc::new(Mutex::new(receiver));
        (sender, Self { receiver })
    }

    /// Fills `batch` with queued jobs, up to `max`, and says whether to
    /// send it; false once every sender is gone and nothing is left.
    ///
    /// An empty batch waits for its first job, and then, while another
    /// worker's batch is out at the database, for `min` jobs or the end of
    /// that batch: sending a handful of rows at once would make every batch
    /// small and pay the per-statement cost over and over. A batch that
    /// already holds jobs never waits (the worker holding the queue may be
    /// waiting for calls that wait for these).
    pub(super) async fn fill(
        &self,
        batch: &mut Vec<J>,
        max: usize,
        min: usize,
        out: &InFlight,
    ) -> bool {
        if !batch.is_empty() {
            if let Ok(mut receiver) = self.receiver.try_lock() {
                drain(&mut receiver, batch, max);
            }
            return true;
        }
        let mut receiver = self.receiver.lock().await;
        loop {
            drain(&mut receiver, batch, max);
            if batch.len() >= min || (!batch.is_empty() && out.none()) {
                return true;
            }
            // Registered before the check, so no end of a batch is missed.
            let ended = out.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if !batch.is_empty() && out.none() {
                return true;
            }
            tokio::select! {
                job = receiver.recv() => match job {
                    Some(job) => batch.push(job),
                    None => return !batch.is_empty(),
                },
                () = &mut ended => {}
            }
        }
    }
}

/// How many batches are out at the database, for [`Queue::fill`].
#[derive(Default)]
pub(super) struct InFlight {
    count: AtomicUsize,
    ended: Notify,
}

impl InFlight {
    fn none(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    /// Marks a batch as sent until the guard drops.
    pub(super) fn start(&self) -> Sent<'_> {
        self.count.fetch_add(1, Ordering::AcqRel);
        Sent(self)
    }
}

/// A batch out at the database; see [`InFlight::start`].
pub(super) struct Sent<'a>(&'a InFlight);

impl Drop for Sent<'_> {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.ended.notify_waiters();
    }
}

fn drain<J>(receiver: &mut mpsc::UnboundedReceiver<J>, batch: &mut Vec<J>, max: usize) {
    while batch.len() < max {
        match receiver.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

/// One worker's own connection to PostgreSQL, opened on first use.
pub(super) struct Lane {
    options: Arc<PgConnectOptions>,
    /// Bounds connecting and the idle check.
    connect_timeout: Duration,
    /// Bounds a batch: PostgreSQL ends a statement at its statement
    /// timeout, so no answer by this time means it stopped answering (a
    /// hung server or a dead network path) rather than that it is busy.
    batch_timeout: Duration,
    open: Option<(PgConnection, Instant)>,
}

impl Lane {
    /// A lane to the pool's server, with the pool's connect options (the
    /// statement timeout included) and its acquire timeout as the connect
    /// timeout.
    ///
    /// The lane's statements always run PostgreSQL's generic plan. A batch
    /// statement has the same text for one row or a hundred, and PostgreSQL
    /// keeps planning a prepared statement anew on every execution for as
    /// long as those custom plans look cheaper on average than the generic
    /// one, which is what happens when the first batches, at low load, hold
    /// a row or two: measured, gets at 8 callers lost a third of their
    /// throughput to planning, and kept losing it at higher load. The
    /// generic plan joins the keys to the primary key for any batch size
    /// (a test checks it).
    pub(super) fn new(pool: &PgPool, statement_timeout: Duration) -> Self {
        let connect_timeout = pool.options().get_acquire_timeout();
        Self {
            options: Arc::new(
                (*pool.connect_options())
                    .clone()
                    .options([("plan_cache_mode", "force_generic_plan")]),
            ),
            connect_timeout,
            batch_timeout: answer_limit(pool, statement_timeout),
            open: None,
        }
    }

    /// Runs `batch` on the connection, within the batch timeout. After a
    /// connection-level failure or a timeout the connection is dropped (its
    /// state is unknown) and the next batch opens a new one.
    pub(super) async fn run<T>(
        &mut self,
        batch: impl AsyncFnOnce(&mut PgConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let limit = self.batch_timeout;
        let outcome = match self.connection().await {
            Ok(connection) => within(limit, batch(connection)).await,
            Err(error) => Err(error),
        };
        match &outcome {
            Err(StoreError::Unavailable(_)) => self.open = None,
            _ => {
                if let Some((_, last_used)) = &mut self.open {
                    *last_used = Instant::now();
                }
            }
        }
        outcome
    }

    /// The connection, checked if it sat idle and opened if there is none.
    /// Nothing of the batch has been sent yet, so a connection that fails
    /// its check is simply replaced.
    async fn connection(&mut self) -> Result<&mut PgConnection, StoreError> {
        let limit = self.connect_timeout;
        if let Some((connection, last_used)) = &mut self.open
            && last_used.elapsed() > IDLE_CHECK
            && within(limit, async { Ok(connection.ping().await?) })
                .await
                .is_err()
        {
            self.open = None;
        }
        if self.open.is_none() {
            let connection = within(limit, async { Ok(self.options.connect().await?) }).await?;
            self.open = Some((connection, Instant::now()));
        }
        let (connection, _) = self.open.as_mut().expect("opened above");
        Ok(connection)
    }
}
