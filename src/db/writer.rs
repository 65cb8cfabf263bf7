//! SQLite's writer: the scripts of [`super::sqlite_transaction`] go through a queue and
//! are committed in groups.
//!
//! SQLite has one writer, and a commit appends every page the transaction changed to the
//! WAL: one hold rewrites a dozen 4 KB pages (the user's row, the holds table and its
//! indexes, the conversation's…), and the next hold rewrites most of the same pages.
//! Scripts that arrive while another group is being written wait for it and then go
//! together inside one transaction, so a page changed by many of them is written once per
//! group. Alone, a script is its own transaction as before: nothing waits for company.
//!
//! A script in a group behaves as it would alone: when one is declined or fails, the
//! group goes again with each script in its own savepoint, rolled back on its failure or
//! refusal and leaving the others' writes; every reply is sent after the group's COMMIT;
//! anything unexpected (the transaction itself lost) rolls the group back and runs each of
//! its scripts alone. The group runs in a task of its own, so a caller that goes away
//! (a client that hung up during its hold) never leaves a transaction half done.

use std::borrow::Cow;
use std::collections::HashMap;
use std::mem;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};

use sea_orm::sqlx::pool::PoolConnection;
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use sea_orm::sqlx::{self, AssertSqlSafe, Sqlite};
use sea_orm::{DbErr, QueryResult, RuntimeErr};
use tokio::sync::oneshot;

/// At most this many scripts share a transaction: their callers all wait for its COMMIT.
const MAX_GROUP: usize = 64;

/// What a script's caller gets: its rows, `None` when it was declined, or the error.
pub(super) type Outcome = Result<Option<Vec<QueryResult>>, DbErr>;

/// A script's SQL (its statements joined, without BEGIN/COMMIT) and values.
pub(super) struct Script {
    pub sql: String,
    pub values: Vec<sea_orm::Value>,
}

struct Job {
    script: Script,
    reply: oneshot::Sender<Outcome>,
}

/// The queue of one database.
#[derive(Default)]
struct Queue {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    jobs: Vec<Job>,
    /// A task is running the queue: new jobs wait for it.
    running: bool,
    counts: Counts,
}

/// Scripts run and the transactions they went in.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub scripts: u64,
    pub transactions: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One queue per pool, found by the pool's connect options (one `Arc` per pool, kept as
/// long as the pool). Entries of pools that are gone are replaced.
type Registry = HashMap<usize, (Weak<SqliteConnectOptions>, Arc<Queue>)>;
static QUEUES: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);

fn queue_of(pool: &SqlitePool) -> Arc<Queue> {
    let options = pool.connect_options();
    let key = Arc::as_ptr(&options) as usize;
    let mut queues = lock(&QUEUES);
    if let Some((owner, queue)) = queues.get(&key)
        && owner.upgrade().is_some_and(|o| Arc::ptr_eq(&o, &options))
    {
        return queue.clone();
    }
    queues.retain(|_, (owner, _)| owner.strong_count() > 0);
    let queue = Arc::new(Queue::default());
    queues.insert(key, (Arc::downgrade(&options), queue.clone()));
    queue
}

/// The scripts run on `pool` so far, and the transactions they took.
pub fn counts(pool: &SqlitePool) -> Counts {
    lock(&queue_of(pool).state).counts
}

/// Runs `script` in its turn, alone or with others that wait at the same time.
pub(super) async fn run(pool: &SqlitePool, script: Script) -> Outcome {
    let queue = queue_of(pool);
    let (reply, outcome) = oneshot::channel();
    let start = {
        let mut state = lock(&queue.state);
        state.jobs.push(Job { script, reply });
        !mem::replace(&mut state.running, true)
    };
    if start {
        tokio::spawn(drain(pool.clone(), queue));
    }
    outcome.await.unwrap_or_else(|_| {
        Err(conn_error(
            "the SQLite writer stopped before running the script",
        ))
    })
}

/// The queue's task, should it be dropped before it found the queue empty (its runtime
/// shutting down): marks the queue idle and answers what it leaves behind with an error.
/// A task that ends normally marks the queue idle itself, under the same lock in which it
/// found the queue empty — afterwards the queue may already belong to the next task.
struct Running {
    queue: Arc<Queue>,
    ended: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.ended {
            let mut state = lock(&self.queue.state);
            state.running = false;
            state.jobs.clear();
        }
    }
}

/// The queue's task: takes what has arrived, runs it, until nothing is left.
async fn drain(pool: SqlitePool, queue: Arc<Queue>) {
    let mut running = Running {
        queue,
        ended: false,
    };
    let mut conn: Option<PoolConnection<Sqlite>> = None;
    let mut ran = Counts::default();
    loop {
        let jobs = {
            let mut state = lock(&running.queue.state);
            state.counts.scripts += ran.scripts;
            state.counts.transactions += ran.transactions;
            if state.jobs.is_empty() {
                state.running = false;
                running.ended = true;
                return;
            }
            if state.jobs.len() <= MAX_GROUP {
                mem::take(&mut state.jobs)
            } else {
                state.jobs.drain(..MAX_GROUP).collect()
            }
        };
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match pool.acquire().await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    let message = e.to_string();
                    for job in jobs {
                        let _ = job.reply.send(Err(conn_error(&message)));
                    }
                    ran = Counts::default();
                    continue;
                }
            },
        };
        ran = match run_group(c, jobs).await {
            Ok(ran) => ran,
            Err(ran) => {
                // The connection could not be brought back out of a transaction.
                if let Some(mut c) = conn.take() {
                    c.close_on_drop();
                }
                ran
            }
        };
    }
}

fn conn_error(message: &str) -> DbErr {
    DbErr::Conn(RuntimeErr::Internal(message.to_string()))
}

/// What a script that stopped at `error` ends with: `None` when a
/// [`super::sqlite_require`] was false, else the error.
fn stopped_at(error: sqlx::Error) -> Outcome {
    match &error {
        sqlx::Error::Database(e) if e.message() == super::DECLINED => Ok(None),
        _ => Err(DbErr::Query(RuntimeErr::SqlxError(error.into()))),
    }
}

async fn execute(
    conn: &mut PoolConnection<Sqlite>,
    sql: &str,
    values: Vec<sea_orm::Value>,
) -> Result<Vec<QueryResult>, sqlx::Error> {
    let rows = sqlx::query_with(
        AssertSqlSafe(sql),
        sea_query_sqlx::SqlxValues(sea_orm::Values(values)),
    )
    .fetch_all(&mut **conn)
    .await?;
    Ok(rows.into_iter().map(QueryResult::from).collect())
}

async fn statement(
    conn: &mut PoolConnection<Sqlite>,
    sql: &'static str,
) -> Result<(), sqlx::Error> {
    sqlx::query(sql).execute(&mut **conn).await.map(|_| ())
}

/// Ends whatever transaction is open on `conn`; `false` if the connection is unusable.
async fn roll_back(conn: &mut PoolConnection<Sqlite>) -> bool {
    match statement(conn, "ROLLBACK").await {
        Ok(()) => true,
        Err(e) if e.to_string().contains("no transaction is active") => true,
        Err(e) => {
            tracing::error!(error = %e, "rolling back a SQLite transaction failed; closing its connection");
            false
        }
    }
}

/// Runs `jobs` (one transaction, or one each after a group failed) and answers them all.
/// `Err` when the connection is left unusable: every job is answered anyway.
async fn run_group(conn: &mut PoolConnection<Sqlite>, jobs: Vec<Job>) -> Result<Counts, Counts> {
    let mut counts = Counts {
        scripts: jobs.len() as u64,
        transactions: 0,
    };
    let jobs = if jobs.len() == 1 {
        jobs
    } else {
        match together(conn, jobs).await {
            Ok(()) => {
                counts.transactions = 1;
                return Ok(counts);
            }
            Err(jobs) => jobs,
        }
    };
    // Alone: each script its own transaction.
    let mut usable = true;
    for job in jobs {
        if !usable {
            let _ = job
                .reply
                .send(Err(conn_error("the SQLite connection was closed")));
            continue;
        }
        let Script { sql, values } = job.script;
        let sql = format!("BEGIN IMMEDIATE;\n{sql};\nCOMMIT");
        let outcome = match execute(conn, &sql, values).await {
            Ok(rows) => Ok(Some(rows)),
            Err(error) => {
                // The script stopped inside its transaction (or at COMMIT): end it here,
                // on this connection, before anyone else is handed the connection.
                usable = roll_back(conn).await;
                stopped_at(error)
            }
        };
        counts.transactions += 1;
        let _ = job.reply.send(outcome);
    }
    if usable { Ok(counts) } else { Err(counts) }
}

/// Runs `jobs` in one transaction and answers them after COMMIT. First without
/// savepoints (every script in the common case goes through: none of them pays for
/// savepoints, whose first write to each page copies it to the statement journal); when
/// one stops (declined, failed), that attempt is rolled back and the group goes again,
/// each script in a savepoint of its own so that it alone is undone. `Err(jobs)`,
/// unanswered, when the group as a whole failed and has been rolled back.
async fn together(conn: &mut PoolConnection<Sqlite>, jobs: Vec<Job>) -> Result<(), Vec<Job>> {
    let mut outcomes = in_one_transaction(conn, &jobs, false).await;
    if outcomes.is_none() {
        outcomes = in_one_transaction(conn, &jobs, true).await;
    }
    let Some(outcomes) = outcomes else {
        return Err(jobs);
    };
    for (job, outcome) in jobs.into_iter().zip(outcomes) {
        let _ = job.reply.send(outcome);
    }
    Ok(())
}

/// One attempt of [`together`]: the jobs' outcomes once committed, `None` once rolled
/// back (without `savepoints`: as soon as a script stops).
async fn in_one_transaction(
    conn: &mut PoolConnection<Sqlite>,
    jobs: &[Job],
    savepoints: bool,
) -> Option<Vec<Outcome>> {
    if statement(conn, "BEGIN IMMEDIATE").await.is_err() {
        // A transaction left open (or the file locked past the busy timeout): one by
        // one, each script rolls back what it finds.
        roll_back(conn).await;
        return None;
    }
    let mut outcomes = Vec::with_capacity(jobs.len());
    for job in jobs {
        let sql = if savepoints {
            Cow::Owned(format!("SAVEPOINT job;\n{};\nRELEASE job", job.script.sql))
        } else {
            Cow::Borrowed(job.script.sql.as_str())
        };
        // Values are cloned so that the group can run its scripts again.
        match execute(conn, &sql, job.script.values.clone()).await {
            Ok(rows) => outcomes.push(Ok(Some(rows))),
            // Without savepoints, a script that stops ends the whole attempt.
            Err(_) if !savepoints => {
                roll_back(conn).await;
                return None;
            }
            Err(error) => {
                // Undo this script's writes only; the transaction goes on.
                if statement(conn, "ROLLBACK TO job; RELEASE job")
                    .await
                    .is_err()
                {
                    roll_back(conn).await;
                    return None;
                }
                outcomes.push(stopped_at(error));
            }
        }
    }
    if statement(conn, "COMMIT").await.is_ok() {
        return Some(outcomes);
    }
    roll_back(conn).await;
    None
}
