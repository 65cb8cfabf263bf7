//! SQLite's writer: the scripts of [`super::sqlite_transaction`] run on a thread of their
//! own, with a connection of their own, and are committed in groups.
//!
//! Why a connection apart from the pool's: sqlx's SQLite connection lives on its own
//! thread too, but answers every statement, and every row, as a message across threads
//! — a hold of a dozen statements was a dozen hand-offs each way, each a wake-up of one
//! thread by another. Here a group of scripts costs one wake-up of this thread, and one
//! reply per script. Its statements are prepared once and kept (a cache of their SQL).
//!
//! SQLite has one writer, and a commit appends every page the transaction changed to the
//! WAL: one hold rewrites a dozen 4 KB pages (the user's row, the holds table and its
//! indexes, the conversation's…), and the next hold rewrites most of the same pages.
//! Scripts that arrive while another group is being written wait for it and then go
//! together inside one transaction, so a page changed by many of them is written once per
//! group. Alone, a script is its own transaction: nothing waits for company.
//!
//! A script in a group behaves as it would alone: when one is declined or fails, the
//! group goes again with each script in its own savepoint, rolled back on its failure or
//! refusal and leaving the others' writes; every reply is sent after the group's COMMIT;
//! anything unexpected (the transaction itself lost) rolls the group back and runs each of
//! its scripts alone. A caller that goes away (a client that hung up during its hold)
//! never leaves a transaction half done: the thread finishes what it took.
//!
//! When the writer has been idle for a while (no script queued or running for
//! [`INLINE_AFTER`]), a script runs on its caller's thread instead, on the same
//! connection: a lone chat on a quiet gateway then does not wait for two threads to wake
//! (the writer's, then its own event loop's for the reply), which on an idle machine
//! costs more than the transaction. It is bounded: it never waits for SQLite's lock
//! (busy timeout 0: when the pool's connection holds the lock, the script goes to the
//! thread instead) and never checkpoints (the thread copies the WAL back, told by the
//! commit). Under load the writer is never idle that long and nothing runs inline.
//!
//! The pool's connection still writes too (the general paths, the admin's work); both wait
//! for each other's transactions (SQLite's busy timeout), and every general transaction
//! writes first, so none of them has to give up (see [`super::connect`]).

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::c_int;
use std::mem;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use rusqlite::hooks::Wal;
use rusqlite::types::{ToSql, ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{Connection, OpenFlags};
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use sea_orm::{DbErr, RuntimeErr};
use tokio::sync::oneshot;

/// At most this many scripts share a transaction: their callers all wait for its COMMIT.
const MAX_GROUP: usize = 64;
/// Statements kept prepared: the scripts are built from a few dozen distinct ones.
const PREPARED: usize = 128;
/// How often an idle writer looks whether its pool is gone (then it ends).
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// A script runs on its caller's thread when the writer has been idle this long.
const INLINE_AFTER: Duration = Duration::from_millis(2);

/// What a script's caller gets: its rows, `None` when it was declined, or the error.
pub(super) type Outcome = Result<Option<Vec<Row>>, DbErr>;

/// A script's statements, each with its values (`?` placeholders).
pub(super) struct Script {
    pub statements: Vec<(String, Vec<sea_orm::Value>)>,
}

/// A row returned by a statement of a script.
#[derive(Debug, Clone)]
pub struct Row {
    columns: Vec<String>,
    values: Vec<SqlValue>,
}

impl Row {
    pub(super) fn new(columns: Vec<String>, values: Vec<SqlValue>) -> Self {
        Self { columns, values }
    }

    fn value(&self, column: &str) -> Result<&SqlValue, DbErr> {
        self.columns
            .iter()
            .position(|c| c == column)
            .map(|i| &self.values[i])
            .ok_or_else(|| DbErr::Type(format!("no column {column:?} in the row")))
    }

    /// The integer in `column`.
    pub fn get_i64(&self, column: &str) -> Result<i64, DbErr> {
        match self.value(column)? {
            SqlValue::Integer(i) => Ok(*i),
            other => Err(DbErr::Type(format!(
                "column {column:?} holds {other:?}, not an integer"
            ))),
        }
    }

    /// The text in `column`.
    pub fn get_string(&self, column: &str) -> Result<String, DbErr> {
        match self.value(column)? {
            SqlValue::Text(s) => Ok(s.clone()),
            other => Err(DbErr::Type(format!(
                "column {column:?} holds {other:?}, not text"
            ))),
        }
    }
}

struct Job {
    script: Script,
    /// The outcome, and the script back: its caller's thread frees it (freeing on this
    /// thread what another allocated takes the other thread's allocator lock).
    reply: oneshot::Sender<(Outcome, Script)>,
}

impl Job {
    fn answer(self, outcome: Outcome) {
        let Job { script, reply } = self;
        let _ = reply.send((outcome, script));
    }
}

/// The writer of one database.
#[derive(Default)]
struct Writer {
    state: Mutex<State>,
    /// The thread waits here for jobs.
    wake: Condvar,
}

#[derive(Default)]
struct State {
    jobs: Vec<Job>,
    /// The connection, when nobody is using it.
    conn: Slot,
    /// When the connection was last given back (`None`: never used yet).
    idle_since: Option<Instant>,
    /// A commit found the WAL long: the thread checkpoints before anything else.
    checkpoint_due: bool,
    /// The writer's thread is running.
    thread: bool,
    /// … and waits on `wake` (a new job must wake it).
    waiting: bool,
    counts: Counts,
}

/// Where the writer's connection is.
#[derive(Default)]
enum Slot {
    /// Not opened yet (or closed after a failure): the thread opens it.
    #[default]
    Closed,
    Idle(Connection),
    /// In use by the thread or by an inline caller.
    Lent,
}

impl Slot {
    fn is_lent(&self) -> bool {
        matches!(self, Slot::Lent)
    }
}

/// The connection while someone uses it: given back when dropped (also when its user
/// panics), rolled back first if a transaction was left open, closed if that fails.
struct Borrowed<'a> {
    writer: &'a Writer,
    conn: Option<Connection>,
}

impl Drop for Borrowed<'_> {
    fn drop(&mut self) {
        let conn = self.conn.take().filter(roll_back);
        let checkpoint_due = CHECKPOINT_DUE.take();
        let mut state = lock(&self.writer.state);
        state.conn = conn.map_or(Slot::Closed, Slot::Idle);
        state.idle_since = Some(Instant::now());
        state.checkpoint_due |= checkpoint_due;
        if state.waiting && (!state.jobs.is_empty() || state.checkpoint_due) {
            state.waiting = false;
            self.writer.wake.notify_one();
        }
    }
}

thread_local! {
    /// This thread is a writer's: its commits checkpoint when the WAL is long.
    static ON_WRITER_THREAD: Cell<bool> = const { Cell::new(false) };
    /// A commit on this (non-writer) thread found the WAL long.
    static CHECKPOINT_DUE: Cell<bool> = const { Cell::new(false) };
}

/// Called by SQLite after every commit of the writer's connection with the WAL's length
/// in pages (it replaces `wal_autocheckpoint`, which does the same on every thread).
fn after_commit(wal: &Wal, pages: c_int) -> rusqlite::Result<()> {
    if pages >= c_int::try_from(super::SQLITE_CHECKPOINT_PAGES).unwrap_or(c_int::MAX) {
        if ON_WRITER_THREAD.get() {
            // As the automatic checkpoint does: passive, its failure (readers in the
            // way) is no failure of the commit, which has happened.
            let _ = wal.checkpoint();
        } else {
            CHECKPOINT_DUE.set(true);
        }
    }
    Ok(())
}

/// Scripts run and the transactions they went in.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub scripts: u64,
    pub transactions: u64,
    /// Of the scripts, those run on their caller's thread.
    pub inline: u64,
    /// Checkpoints the thread ran because a commit elsewhere found the WAL long.
    pub checkpoints: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One writer per pool, found by the pool's connect options (one `Arc` per pool, kept as
/// long as the pool). Entries of pools that are gone are replaced.
type Registry = HashMap<usize, (Weak<SqliteConnectOptions>, Arc<Writer>)>;
static WRITERS: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);

fn writer_of(options: &Arc<SqliteConnectOptions>) -> Arc<Writer> {
    let key = Arc::as_ptr(options) as usize;
    let mut writers = lock(&WRITERS);
    if let Some((owner, writer)) = writers.get(&key)
        && owner.upgrade().is_some_and(|o| Arc::ptr_eq(&o, options))
    {
        return writer.clone();
    }
    writers.retain(|_, (owner, _)| owner.strong_count() > 0);
    let writer = Arc::new(Writer::default());
    writers.insert(key, (Arc::downgrade(options), writer.clone()));
    writer
}

/// The scripts run on `pool` so far, and the transactions they took.
pub fn counts(pool: &SqlitePool) -> Counts {
    lock(&writer_of(&pool.connect_options()).state).counts
}

/// Runs `script` in its turn, alone or with others that wait at the same time — or at
/// once on this thread when the writer has been idle (see the module's notes).
pub(super) async fn run(pool: &SqlitePool, script: Script) -> Outcome {
    let options = pool.connect_options();
    let writer = writer_of(&options);
    if let Some(mut borrowed) = writer.lend_if_idle()
        && let Some(outcome) = inline(&mut borrowed, &script)
    {
        drop(borrowed);
        let mut state = lock(&writer.state);
        state.counts.inline += 1;
        state.counts.scripts += 1;
        state.counts.transactions += 1;
        return outcome;
    }
    let (reply, outcome) = oneshot::channel();
    submit(&options, Job { script, reply });
    match outcome.await {
        Ok((outcome, script)) => {
            drop(script);
            outcome
        }
        Err(_) => Err(conn_error(
            "the SQLite writer stopped before running the script",
        )),
    }
}

/// Queues `job` and wakes the writer's thread, starting it if it is not running.
fn submit(options: &Arc<SqliteConnectOptions>, job: Job) {
    let writer = writer_of(options);
    let mut state = lock(&writer.state);
    state.jobs.push(job);
    if state.waiting {
        state.waiting = false;
        writer.wake.notify_one();
    } else if !state.thread {
        let (w, owner, path) = (
            writer.clone(),
            Arc::downgrade(options),
            options.get_filename().to_owned(),
        );
        let started = std::thread::Builder::new()
            .name("chatgate-sqlite-writer".into())
            .spawn(move || work(&w, &owner, &path));
        match started {
            Ok(_) => state.thread = true,
            Err(e) => {
                let message = format!("starting SQLite's writer failed: {e}");
                for job in state.jobs.drain(..) {
                    job.answer(Err(conn_error(&message)));
                }
            }
        }
    }
}

/// The writer's thread, should it end before it found the queue empty (a panic): marks
/// the writer stopped and answers what it leaves behind with an error. A thread that ends
/// normally marks it stopped itself, under the same lock in which it found the queue
/// empty — afterwards the writer may already have the next thread.
struct Running<'a> {
    writer: &'a Writer,
    ended: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if !self.ended {
            let mut state = lock(&self.writer.state);
            state.thread = false;
            state.waiting = false;
            for job in state.jobs.drain(..) {
                job.answer(Err(conn_error("SQLite's writer stopped unexpectedly")));
            }
        }
    }
}

/// The writer's thread: takes what has arrived, runs it, waits for more; ends when its
/// pool is gone.
fn work(writer: &Writer, owner: &Weak<SqliteConnectOptions>, path: &Path) {
    ON_WRITER_THREAD.set(true);
    let mut running = Running {
        writer,
        ended: false,
    };
    loop {
        let Some((jobs, conn, checkpoint)) = next_jobs(writer, owner) else {
            running.ended = true;
            return;
        };
        let mut borrowed = Borrowed { writer, conn };
        let conn = match borrowed.conn.as_mut() {
            Some(c) => c,
            None => match open(path) {
                Ok(c) => borrowed.conn.insert(c),
                Err(e) => {
                    let message = format!("opening SQLite's writer connection failed: {e}");
                    for job in jobs {
                        job.answer(Err(conn_error(&message)));
                    }
                    continue;
                }
            },
        };
        if checkpoint {
            // Passive, as after any long commit; a failure leaves it to the next one.
            let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            lock(&writer.state).counts.checkpoints += 1;
        }
        if !jobs.is_empty() && !run_group(writer, conn, jobs) {
            // The connection could not be brought back out of a transaction.
            borrowed.conn = None;
        }
    }
}

impl Writer {
    /// The connection, if nothing is queued or running, the thread is there to take over
    /// afterwards, and it has been idle for [`INLINE_AFTER`].
    fn lend_if_idle(&self) -> Option<Borrowed<'_>> {
        let mut state = lock(&self.state);
        if !state.jobs.is_empty()
            || !state.thread
            || state.checkpoint_due
            || state
                .idle_since
                .is_none_or(|since| since.elapsed() < INLINE_AFTER)
        {
            return None;
        }
        match mem::replace(&mut state.conn, Slot::Lent) {
            Slot::Idle(conn) => Some(Borrowed {
                writer: self,
                conn: Some(conn),
            }),
            // Closed (the thread opens it) or lent: left as it was.
            other => {
                state.conn = other;
                None
            }
        }
    }

    /// Counts `scripts` run in `transactions`, before their callers are answered.
    fn record(&self, scripts: usize, transactions: u64) {
        let mut state = lock(&self.state);
        state.counts.scripts += scripts as u64;
        state.counts.transactions += transactions;
    }
}

/// What the thread does next: jobs (perhaps none), the connection (`None`: to be
/// opened), whether to checkpoint first. Waits for work and for the connection to be
/// given back; `None` (the writer marked stopped) when the pool is gone.
type Next = (Vec<Job>, Option<Connection>, bool);

fn next_jobs(writer: &Writer, owner: &Weak<SqliteConnectOptions>) -> Option<Next> {
    let mut state = lock(&writer.state);
    loop {
        if (!state.jobs.is_empty() || state.checkpoint_due) && !state.conn.is_lent() {
            let jobs = if state.jobs.len() <= MAX_GROUP {
                mem::take(&mut state.jobs)
            } else {
                state.jobs.drain(..MAX_GROUP).collect()
            };
            let conn = match mem::replace(&mut state.conn, Slot::Lent) {
                Slot::Idle(conn) => Some(conn),
                Slot::Closed | Slot::Lent => None,
            };
            return Some((jobs, conn, mem::take(&mut state.checkpoint_due)));
        }
        if owner.strong_count() == 0 {
            state.thread = false;
            return None;
        }
        state.waiting = true;
        state = match writer.wake.wait_timeout(state, IDLE_CHECK) {
            Ok((state, _)) => state,
            Err(poisoned) => poisoned.into_inner().0,
        };
        state.waiting = false;
    }
}

/// The writer's connection, set as the pool's are (see [`super::connect`]).
fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        PathBuf::from(path),
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(super::SQLITE_BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Checkpoints as `wal_autocheckpoint` would, but only on the writer's thread.
    conn.wal_hook(Some(after_commit));
    conn.set_prepared_statement_cache_capacity(PREPARED);
    Ok(conn)
}

fn conn_error(message: &str) -> DbErr {
    DbErr::Conn(RuntimeErr::Internal(message.to_string()))
}

/// What a script that stopped at `error` ends with: `None` when a
/// [`super::sqlite_require`] was false, else the error.
fn stopped_at(error: rusqlite::Error) -> Outcome {
    match &error {
        rusqlite::Error::SqliteFailure(_, Some(message)) if message == super::DECLINED => Ok(None),
        _ => Err(DbErr::Query(RuntimeErr::Internal(format!(
            "SQLite: {error}"
        )))),
    }
}

/// A sea-query value bound to a SQLite parameter, as sqlx binds it.
struct Bind<'a>(&'a sea_orm::Value);

impl ToSql for Bind<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        use sea_orm::Value as V;
        fn int(v: Option<i64>) -> ToSqlOutput<'static> {
            ToSqlOutput::Owned(v.map_or(SqlValue::Null, SqlValue::Integer))
        }
        fn real(v: Option<f64>) -> ToSqlOutput<'static> {
            ToSqlOutput::Owned(v.map_or(SqlValue::Null, SqlValue::Real))
        }
        Ok(match self.0 {
            V::Bool(v) => int(v.map(i64::from)),
            V::TinyInt(v) => int(v.map(i64::from)),
            V::SmallInt(v) => int(v.map(i64::from)),
            V::Int(v) => int(v.map(i64::from)),
            V::BigInt(v) => int(*v),
            V::TinyUnsigned(v) => int(v.map(i64::from)),
            V::SmallUnsigned(v) => int(v.map(i64::from)),
            V::Unsigned(v) => int(v.map(i64::from)),
            V::BigUnsigned(v) => int(v
                .map(i64::try_from)
                .transpose()
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?),
            V::Float(v) => real(v.map(f64::from)),
            V::Double(v) => real(*v),
            V::String(v) => match v {
                Some(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
                None => ToSqlOutput::Owned(SqlValue::Null),
            },
            V::Char(v) => {
                ToSqlOutput::Owned(v.map_or(SqlValue::Null, |c| SqlValue::Text(c.to_string())))
            }
            V::Bytes(v) => match v {
                Some(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
                None => ToSqlOutput::Owned(SqlValue::Null),
            },
            V::Json(v) => ToSqlOutput::Owned(
                v.as_ref()
                    .map_or(SqlValue::Null, |j| SqlValue::Text(j.to_string())),
            ),
            other => {
                return Err(rusqlite::Error::ToSqlConversionFailure(
                    format!("SQLite's writer does not bind {other:?}").into(),
                ));
            }
        })
    }
}

/// Runs the statements of `script`, inside the caller's transaction; the rows of those
/// that return rows, in order.
fn execute(conn: &Connection, script: &Script) -> rusqlite::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (sql, values) in &script.statements {
        let mut statement = conn.prepare_cached(sql)?;
        let columns: Vec<String> = statement
            .column_names()
            .into_iter()
            .map(String::from)
            .collect();
        let mut results = statement.query(rusqlite::params_from_iter(values.iter().map(Bind)))?;
        while let Some(row) = results.next()? {
            let values = (0..columns.len())
                .map(|i| row.get::<_, SqlValue>(i))
                .collect::<rusqlite::Result<_>>()?;
            rows.push(Row {
                columns: columns.clone(),
                values,
            });
        }
    }
    Ok(rows)
}

/// Runs one statement that returns nothing (BEGIN, COMMIT, savepoints).
fn statement(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Ends whatever transaction is open on `conn`; `false` if the connection is unusable.
fn roll_back(conn: &Connection) -> bool {
    if conn.is_autocommit() {
        return true;
    }
    match statement(conn, "ROLLBACK") {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "rolling back a SQLite transaction failed; closing the writer's connection");
            false
        }
    }
}

/// Runs `jobs` (one transaction, or one each after a group failed) and answers them all.
/// `false` when the connection is left unusable: every job is answered anyway.
fn run_group(writer: &Writer, conn: &Connection, jobs: Vec<Job>) -> bool {
    let jobs = if jobs.len() == 1 {
        jobs
    } else {
        match together(writer, conn, jobs) {
            Ok(()) => return true,
            Err(jobs) => jobs,
        }
    };
    // Alone: each script its own transaction.
    let mut usable = true;
    for job in jobs {
        if !usable {
            writer.record(1, 0);
            job.answer(Err(conn_error("the SQLite connection was closed")));
            continue;
        }
        let outcome = match alone(conn, &job.script) {
            Ok(rows) => Ok(Some(rows)),
            Err(error) => {
                // The script stopped inside its transaction (or at COMMIT): end it here,
                // before anything else runs on the connection.
                usable = roll_back(conn);
                stopped_at(error)
            }
        };
        writer.record(1, 1);
        job.answer(outcome);
    }
    usable
}

/// `script` on its caller's thread, without waiting for SQLite's lock: `None` (nothing
/// done) when the lock is taken, else its outcome.
fn inline(borrowed: &mut Borrowed<'_>, script: &Script) -> Option<Outcome> {
    let conn = borrowed.conn.as_ref()?;
    let _ = conn.busy_timeout(Duration::ZERO);
    let result = alone(conn, script);
    let _ = conn.busy_timeout(super::SQLITE_BUSY_TIMEOUT);
    match result {
        Ok(rows) => Some(Ok(Some(rows))),
        Err(error) => {
            if !roll_back(conn) {
                borrowed.conn = None;
            }
            let busy = matches!(
                error.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            );
            (!busy).then(|| stopped_at(error))
        }
    }
}

/// `script` in a transaction of its own; left open when it stops.
fn alone(conn: &Connection, script: &Script) -> rusqlite::Result<Vec<Row>> {
    statement(conn, "BEGIN IMMEDIATE")?;
    let rows = execute(conn, script)?;
    statement(conn, "COMMIT")?;
    Ok(rows)
}

/// Runs `jobs` in one transaction and answers them after COMMIT. First without
/// savepoints (every script in the common case goes through: none of them pays for
/// savepoints, whose first write to each page copies it to the statement journal); when
/// one stops (declined, failed), that attempt is rolled back and the group goes again,
/// each script in a savepoint of its own so that it alone is undone. `Err(jobs)`,
/// unanswered, when the group as a whole failed and has been rolled back.
fn together(writer: &Writer, conn: &Connection, jobs: Vec<Job>) -> Result<(), Vec<Job>> {
    let mut outcomes = in_one_transaction(conn, &jobs, false);
    if outcomes.is_none() {
        outcomes = in_one_transaction(conn, &jobs, true);
    }
    let Some(outcomes) = outcomes else {
        return Err(jobs);
    };
    writer.record(jobs.len(), 1);
    for (job, outcome) in jobs.into_iter().zip(outcomes) {
        job.answer(outcome);
    }
    Ok(())
}

/// One attempt of [`together`]: the jobs' outcomes once committed, `None` once rolled
/// back (without `savepoints`: as soon as a script stops).
fn in_one_transaction(conn: &Connection, jobs: &[Job], savepoints: bool) -> Option<Vec<Outcome>> {
    let attempt = || -> rusqlite::Result<Option<Vec<Outcome>>> {
        statement(conn, "BEGIN IMMEDIATE")?;
        let mut outcomes = Vec::with_capacity(jobs.len());
        for job in jobs {
            if !savepoints {
                match execute(conn, &job.script) {
                    Ok(rows) => outcomes.push(Ok(Some(rows))),
                    // Without savepoints, a script that stops ends the whole attempt.
                    Err(_) => return Ok(None),
                }
                continue;
            }
            statement(conn, "SAVEPOINT job")?;
            match execute(conn, &job.script) {
                Ok(rows) => outcomes.push(Ok(Some(rows))),
                Err(error) => {
                    // Undo this script's writes only; the transaction goes on.
                    statement(conn, "ROLLBACK TO job")?;
                    outcomes.push(stopped_at(error));
                }
            }
            statement(conn, "RELEASE job")?;
        }
        statement(conn, "COMMIT")?;
        Ok(Some(outcomes))
    };
    match attempt() {
        Ok(Some(outcomes)) => Some(outcomes),
        Ok(None) | Err(_) => {
            // A transaction left open (or the file locked past the busy timeout): one by
            // one, each script rolls back what it finds.
            roll_back(conn);
            None
        }
    }
}
