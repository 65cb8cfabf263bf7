//! A transaction of the per-answer path (the hold, the settlement) as one round trip to
//! the database, on SQLite and PostgreSQL.
//!
//! On SQLite a [`Script`] goes to SQLite's writer ([`super::sqlite_transaction`]). On
//! PostgreSQL it is sent as one simple-protocol query: its statements separated by `;`,
//! which the server runs as one implicit transaction (an error anywhere rolls all of it
//! back). Through sqlx each statement of a transaction is a round trip of its own (sqlx
//! does not pipeline): a hold was seven and a settlement eight, each a write, a wake-up
//! and two reads on the gateway's side; one query per script saved ~0.35 ms of its CPU per
//! answer at 500 open streams (bench/HISTORY.md, session 11). The simple protocol takes no
//! parameters, so the values are written into the SQL as literals here, each cast to the type sqlx would have bound it as; a value this
//! module cannot write exactly (a float, bytes, a string holding NUL…) makes the whole
//! script decline to run, and the caller takes its general path.
//!
//! On an event loop ([`keep_connections_here`]) the scripts go over PostgreSQL connections
//! the loop keeps for itself rather than the shared pool's: sqlx pings every connection
//! it gets back (a second round trip per script), and a pool connection is driven by
//! whichever thread opened it (a wake-up across threads per reply). They show in
//! `pg_stat_activity` as application `chatgate event loop`. A kept connection idle for
//! [`IDLE_PING`] is pinged before use; a reused one found gone (an I/O error, the server's
//! restart or an administrator's terminate) is replaced and the script sent once more: either
//! it went nowhere, or — had it committed — its second run is refused by its own unique
//! ids (a hold's id, its messages' ids) or its requirement (a settlement closes an open
//! hold only). One older than [`MAX_AGE`] is closed when it comes back. When all it may
//! open are busy, or one cannot be opened (the server's connection limit), the script
//! takes the shared pool.
//!
//! Other databases (MySQL) have no script: [`run`] returns `None` and the caller takes its
//! general path.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection, PgRow};
use sea_orm::sqlx::{self, Column as _, ConnectOptions as _, Connection as _, Row as _};
use sea_orm::{DatabaseConnection, DbBackend, DbErr, RuntimeErr, Statement, Value};

use super::writer::Row;

/// PostgreSQL's error code for a division by zero: how a script's requirement declines.
const DECLINED: &str = "22012";

/// How many PostgreSQL scripts ran to their end (declined or committed).
static POSTGRES_SCRIPTS: AtomicU64 = AtomicU64::new(0);
/// How many of them ran on a connection an event loop keeps.
static ON_KEPT: AtomicU64 = AtomicU64::new(0);

/// A kept connection idle this long is pinged before its next script.
const IDLE_PING: Duration = Duration::from_secs(30);
/// A kept connection this old is closed when it comes back (as the pool's are).
const MAX_AGE: Duration = Duration::from_secs(30 * 60);
/// After a kept connection could not be opened, the scripts take the pool's this long.
const OPEN_BACKOFF: Duration = Duration::from_secs(10);
/// The `application_name` of kept connections.
pub const KEPT_NAME: &str = "chatgate event loop";

thread_local! {
    /// This event loop's own PostgreSQL connections ([`keep_connections_here`]).
    static KEPT: RefCell<Option<Kept>> = const { RefCell::new(None) };
}

/// The connections one event loop keeps for its scripts.
struct Kept {
    /// The pool's connect options: which pool these stand beside (a script on another
    /// pool's database never takes them).
    pool: Arc<PgConnectOptions>,
    /// The same, named as the event loop's: how these connect.
    options: Arc<PgConnectOptions>,
    idle: Vec<Idle>,
    /// Connections open now (idle or running a script).
    open: usize,
    max: usize,
    /// After a connection could not be opened, none is tried again before this.
    retry_open_at: Option<Instant>,
}

struct Idle {
    conn: PgConnection,
    since: Instant,
    born: Instant,
}

/// Statements that commit together or not at all, in one round trip where the database
/// allows it. Build it with the statements of the backend it was made for.
pub struct Script {
    kind: Kind,
}

enum Kind {
    Sqlite(Vec<Statement>),
    /// The SQL so far; `None` once a value could not be written as a literal.
    Postgres(Option<String>),
    Other,
}

/// The condition (SQL) a statement pushed with [`Script::push_if_changed`] is built with:
/// true when the statement before it changed a row.
pub fn changed_condition(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Postgres => "EXISTS (SELECT 1 FROM \"changed\")",
        _ => "changes() = 1",
    }
}

/// Whether scripts run in one round trip on `backend` (else [`run`] returns `None`).
pub fn available(backend: DbBackend) -> bool {
    matches!(backend, DbBackend::Sqlite | DbBackend::Postgres)
}

impl Script {
    pub fn new(backend: DbBackend) -> Self {
        let kind = match backend {
            DbBackend::Sqlite => Kind::Sqlite(Vec::new()),
            DbBackend::Postgres => Kind::Postgres(Some(String::new())),
            _ => Kind::Other,
        };
        Self { kind }
    }

    /// Runs `statement`.
    pub fn push(&mut self, statement: Statement) {
        match &mut self.kind {
            Kind::Sqlite(statements) => statements.push(statement),
            Kind::Postgres(sql) => postgres_push(sql, |out| inline(&statement, out)),
            Kind::Other => {}
        }
    }

    /// Runs `first`, then `then` — a statement whose condition is
    /// [`changed_condition`], so that it does something only when `first` changed a row.
    /// On PostgreSQL the two are one statement: `first` as a common table expression.
    pub fn push_if_changed(&mut self, first: Statement, then: Statement) {
        match &mut self.kind {
            Kind::Sqlite(statements) => statements.extend([first, then]),
            Kind::Postgres(sql) => postgres_push(sql, |out| {
                with_changed(&first, out)?;
                inline(&then, out)
            }),
            Kind::Other => {}
        }
    }

    /// Declines the whole script (nothing of it is written) unless `condition` — SQL that
    /// is true or false, with `?` placeholders for `values` — is true at this point.
    pub fn require(&mut self, condition: &str, values: Vec<Value>) {
        match &mut self.kind {
            Kind::Sqlite(statements) => statements.push(super::sqlite_require(condition, values)),
            Kind::Postgres(sql) => postgres_push(sql, |out| {
                let condition =
                    Statement::from_sql_and_values(DbBackend::Postgres, condition, values);
                decline_unless(out, |out| {
                    substitute(&condition, Placeholder::Question, out)
                })
            }),
            Kind::Other => {}
        }
    }

    /// Runs `statement` and declines the whole script unless it changed exactly one row.
    pub fn require_one_changed(&mut self, statement: Statement) {
        match &mut self.kind {
            Kind::Sqlite(statements) => statements.extend([
                statement,
                super::sqlite_require("changes() = 1", Vec::new()),
            ]),
            Kind::Postgres(sql) => postgres_push(sql, |out| {
                with_changed(&statement, out)?;
                decline_unless(out, |out| {
                    out.push_str("(SELECT count(*) FROM \"changed\") = 1");
                    Some(())
                })
            }),
            Kind::Other => {}
        }
    }

    /// Runs each of `statements`.
    pub fn extend(&mut self, statements: impl IntoIterator<Item = Statement>) {
        for statement in statements {
            self.push(statement);
        }
    }
}

/// Runs `script` as one transaction and returns the rows of its statements that return
/// rows, in order; `None` when a requirement declined it (nothing of it was written), when
/// a value could not be written into PostgreSQL's SQL, or on a database without scripts:
/// the caller takes its general path then. On any failure nothing of it was written.
pub async fn run(db: &DatabaseConnection, script: Script) -> Result<Option<Vec<Row>>, DbErr> {
    match script.kind {
        Kind::Sqlite(statements) => super::sqlite_transaction(db, statements).await,
        Kind::Postgres(Some(sql)) if db.get_database_backend() == DbBackend::Postgres => {
            run_postgres(db, sql).await
        }
        Kind::Postgres(_) | Kind::Other => Ok(None),
    }
}

/// How many scripts have run on PostgreSQL (committed or declined) in this process, and
/// how many of those on connections kept by event loops.
pub fn postgres_scripts() -> (u64, u64) {
    (
        POSTGRES_SCRIPTS.load(Ordering::Relaxed),
        ON_KEPT.load(Ordering::Relaxed),
    )
}

/// Makes this thread (an event loop) keep up to `max` connections of its own for the
/// PostgreSQL scripts run on it against `db` (nothing on other databases).
pub fn keep_connections_here(db: &DatabaseConnection, max: usize) {
    if db.get_database_backend() != DbBackend::Postgres || max == 0 {
        return;
    }
    let pool = db.get_postgres_connection_pool().connect_options();
    let options = Arc::new((*pool).clone().application_name(KEPT_NAME));
    KEPT.with(|kept| {
        *kept.borrow_mut() = Some(Kept {
            pool,
            options,
            idle: Vec::new(),
            open: 0,
            max,
            retry_open_at: None,
        });
    });
}

/// Closes the connections this thread keeps (at the end of its event loop).
pub async fn close_kept_connections() {
    let idle = KEPT.with(|kept| kept.borrow_mut().take().map(|k| k.idle).unwrap_or_default());
    for idle in idle {
        let _ = idle.conn.close().await;
    }
}

/// One of this thread's kept connections beside the pool of `pool` (`None`: it keeps
/// none for that pool, all it may open are busy, or it waits out a failure to open one —
/// the shared pool serves the script then).
fn take_kept(pool: &Arc<PgConnectOptions>) -> Option<(Taken, Arc<PgConnectOptions>)> {
    KEPT.with(|kept| {
        let mut kept = kept.borrow_mut();
        let kept = kept.as_mut().filter(|k| Arc::ptr_eq(&k.pool, pool))?;
        let options = Arc::clone(&kept.options);
        if let Some(idle) = kept.idle.pop() {
            return Some((Taken::Idle(idle), options));
        }
        if kept.open < kept.max && kept.retry_open_at.is_none_or(|at| Instant::now() >= at) {
            kept.open += 1;
            return Some((Taken::New, options));
        }
        None
    })
}

enum Taken {
    Idle(Idle),
    /// A slot to open a connection in.
    New,
}

/// A slot of this thread's kept connections while its connection runs a script: its
/// connection goes back to the idle list with [`Lent::give_back`]; dropped without, the
/// slot is freed (the connection is closed by its own drop).
struct Lent {
    options: Arc<PgConnectOptions>,
    born: Instant,
    counted: bool,
}

impl Lent {
    /// `f` on the connections this slot belongs to, if this thread still keeps them
    /// (`try_with`: not at all once the thread's storage is gone, at its end); `None`
    /// when it does not.
    fn with_kept<R>(&self, f: impl FnOnce(&mut Kept) -> R) -> Option<R> {
        KEPT.try_with(|kept| {
            let mut kept = kept.try_borrow_mut().ok()?;
            let kept = kept
                .as_mut()
                .filter(|k| Arc::ptr_eq(&k.options, &self.options))?;
            Some(f(kept))
        })
        .ok()
        .flatten()
    }

    fn give_back(mut self, conn: PgConnection) {
        if self.born.elapsed() >= MAX_AGE {
            return;
        }
        let born = self.born;
        let kept_it = self.with_kept(|kept| {
            kept.idle.push(Idle {
                conn,
                since: Instant::now(),
                born,
            });
        });
        // Still open, now idle: its drop must not count it out.
        self.counted = kept_it.is_none();
    }

    /// A new connection in this slot; `None` (logged) when none can be opened.
    async fn open(&mut self) -> Option<PgConnection> {
        match self.options.connect().await {
            Ok(conn) => {
                self.born = Instant::now();
                Some(conn)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot open a kept PostgreSQL connection; using the pool's");
                self.with_kept(|kept| kept.retry_open_at = Some(Instant::now() + OPEN_BACKOFF));
                None
            }
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if self.counted {
            self.with_kept(|kept| kept.open = kept.open.saturating_sub(1));
        }
    }
}

async fn run_postgres(db: &DatabaseConnection, sql: String) -> Result<Option<Vec<Row>>, DbErr> {
    // Shared, not copied, by each send (a retry sends it again).
    let sql: Arc<str> = sql.into();
    let pool = db.get_postgres_connection_pool();
    let kept = match take_kept(&pool.connect_options()) {
        Some((taken, options)) => on_kept(taken, options, &sql).await,
        None => None,
    };
    // No kept connection free, or none could be opened (the server's connection limit,
    // say): the shared pool's.
    let fetched = match kept {
        Some(fetched) => fetched,
        None => fetch(pool, &sql).await,
    };
    let rows = match fetched {
        Ok(rows) => rows,
        Err(e) if declined(&e) => {
            POSTGRES_SCRIPTS.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        Err(e) => return Err(DbErr::Query(RuntimeErr::SqlxError(e.into()))),
    };
    POSTGRES_SCRIPTS.fetch_add(1, Ordering::Relaxed);
    rows.iter().map(row).collect::<Result<_, _>>().map(Some)
}

/// The connection was gone before the script reached the server: closed under it (an
/// I/O error), or ended by the server (class 57P: an administrator's terminate, a shutdown
/// or crash of the server), whose message was waiting on it.
fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| c.starts_with("57P")),
        _ => false,
    }
}

/// A requirement of the script declined it.
fn declined(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some(DECLINED))
}

/// Runs `sql` on a kept connection (see the module's notes on pings and replacing);
/// `None` when no connection could be opened for it and nothing was sent.
async fn on_kept(
    taken: Taken,
    options: Arc<PgConnectOptions>,
    sql: &Arc<str>,
) -> Option<Result<Vec<PgRow>, sqlx::Error>> {
    let mut lent = Lent {
        options,
        born: Instant::now(),
        counted: true,
    };
    let (mut conn, reused) = match taken {
        Taken::Idle(mut idle) => {
            lent.born = idle.born;
            if idle.since.elapsed() >= IDLE_PING && idle.conn.ping().await.is_err() {
                drop(idle);
                (lent.open().await?, false)
            } else {
                (idle.conn, true)
            }
        }
        Taken::New => (lent.open().await?, false),
    };
    ON_KEPT.fetch_add(1, Ordering::Relaxed);
    let mut fetched = fetch(&mut conn, sql).await;
    if reused && matches!(&fetched, Err(e) if connection_lost(e)) {
        // Cut since its last script: once more, on a new connection (or the pool's).
        drop(conn);
        conn = lent.open().await?;
        fetched = fetch(&mut conn, sql).await;
    }
    // A declined script leaves the connection ready for the next; after any other
    // failure it is not kept.
    match &fetched {
        Ok(_) => lent.give_back(conn),
        Err(e) if declined(e) => lent.give_back(conn),
        Err(_) => {}
    }
    Some(fetched)
}

/// `sql` run on `executor`, all its rows.
async fn fetch<'e, E>(executor: E, sql: &Arc<str>) -> Result<Vec<PgRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Postgres>,
{
    // The values in `sql` are literals written by `literal` below, never text of a
    // statement pasted in: that is what makes it safe to send as it is.
    sqlx::raw_sql(sqlx::AssertSqlSafe(Arc::clone(sql)))
        .fetch_all(executor)
        .await
}

/// A PostgreSQL row as the writer's [`Row`]: integers and text (what the scripts read).
fn row(pg: &PgRow) -> Result<Row, DbErr> {
    use rusqlite::types::Value as V;
    let mut columns = Vec::with_capacity(pg.len());
    let mut values = Vec::with_capacity(pg.len());
    for (i, column) in pg.columns().iter().enumerate() {
        let value = if let Ok(integer) = pg.try_get::<Option<i64>, _>(i) {
            integer.map_or(V::Null, V::Integer)
        } else if let Ok(text) = pg.try_get::<Option<String>, _>(i) {
            text.map_or(V::Null, V::Text)
        } else {
            return Err(DbErr::Type(format!(
                "column {:?} of a script's row is neither an integer nor text",
                column.name()
            )));
        };
        columns.push(column.name().to_string());
        values.push(value);
    }
    Ok(Row::new(columns, values))
}

/// Appends one statement written by `write` (and its `;`), or drops the script's SQL
/// when `write` cannot write it.
fn postgres_push(sql: &mut Option<String>, write: impl FnOnce(&mut String) -> Option<()>) {
    if let Some(out) = sql {
        if write(out).is_some() {
            out.push_str(";\n");
        } else {
            *sql = None;
        }
    }
}

/// A statement that returns no row, and fails with a division by zero ([`DECLINED`]) —
/// rolling the whole script back — unless the condition `write` writes is true.
fn decline_unless(out: &mut String, write: impl FnOnce(&mut String) -> Option<()>) -> Option<()> {
    out.push_str("SELECT 1 WHERE 1 / (CASE WHEN ");
    write(out)?;
    out.push_str(" THEN 1 ELSE 0 END) < 0");
    Some(())
}

/// `WITH "changed" AS (<statement> RETURNING 1) `: the rows `statement` changed, for the
/// statement written after it. `statement` must not return rows of its own.
fn with_changed(statement: &Statement, out: &mut String) -> Option<()> {
    if statement.sql.contains("RETURNING") {
        return None;
    }
    out.push_str("WITH \"changed\" AS (");
    inline(statement, out)?;
    out.push_str(" RETURNING 1) ");
    Some(())
}

/// `statement` (numbered placeholders, as sea-query writes them for PostgreSQL) with its
/// values written in.
fn inline(statement: &Statement, out: &mut String) -> Option<()> {
    substitute(statement, Placeholder::Numbered, out)
}

#[derive(Clone, Copy, PartialEq)]
enum Placeholder {
    /// `$1`, `$2`…
    Numbered,
    /// `?`, each the next value.
    Question,
}

/// Copies the SQL of `statement` to `out`, each placeholder outside quotes replaced by
/// its value as a literal. `None` when a placeholder has no value or a value cannot be
/// written, or when a value is left unused.
fn substitute(statement: &Statement, style: Placeholder, out: &mut String) -> Option<()> {
    let values: &[Value] = statement.values.as_ref().map_or(&[], |v| &v.0);
    let mut used = vec![false; values.len()];
    let sql = statement.sql.as_str();
    let bytes = sql.as_bytes();
    let mut quote: Option<u8> = None;
    let mut next = 0;
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if let Some(q) = quote {
            if b == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        let (index, end) = match b {
            b'\'' | b'"' => {
                quote = Some(b);
                i += 1;
                continue;
            }
            b'$' if style == Placeholder::Numbered => {
                let digits = bytes[i + 1..]
                    .iter()
                    .take_while(|d| d.is_ascii_digit())
                    .count();
                if digits == 0 {
                    return None;
                }
                let n: usize = sql[i + 1..i + 1 + digits].parse().ok()?;
                (n.checked_sub(1)?, i + 1 + digits)
            }
            b'?' if style == Placeholder::Question => {
                next += 1;
                (next - 1, i + 1)
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.push_str(&sql[copied..i]);
        literal(values.get(index)?, out)?;
        *used.get_mut(index)? = true;
        copied = end;
        i = end;
    }
    if quote.is_some() || used.contains(&false) {
        return None;
    }
    out.push_str(&sql[copied..]);
    Some(())
}

/// `value` as a PostgreSQL literal of the type sqlx binds it as (`CAST(… AS int8)`…);
/// `None` for what is not written here.
fn literal(value: &Value, out: &mut String) -> Option<()> {
    use std::fmt::Write;
    let (text, ty): (Option<String>, &str) = match value {
        Value::Bool(b) => (b.map(|b| b.to_string()), "bool"),
        Value::SmallInt(i) => (i.map(|i| i.to_string()), "int2"),
        Value::Int(i) => (i.map(|i| i.to_string()), "int4"),
        Value::BigInt(i) => (i.map(|i| i.to_string()), "int8"),
        Value::TinyUnsigned(i) => (i.map(|i| i.to_string()), "int2"),
        Value::SmallUnsigned(i) => (i.map(|i| i.to_string()), "int4"),
        Value::Unsigned(i) => (i.map(|i| i.to_string()), "int8"),
        Value::BigUnsigned(i) => match i {
            Some(i) => (Some(i64::try_from(*i).ok()?.to_string()), "int8"),
            None => (None, "int8"),
        },
        Value::String(s) => (nullable(s.as_deref(), string)?, "text"),
        Value::Char(c) => (
            nullable(c.map(|c| c.to_string()).as_deref(), string)?,
            "text",
        ),
        _ => return None,
    };
    let _ = write!(out, "CAST({} AS {ty})", text.as_deref().unwrap_or("NULL"));
    Some(())
}

/// `write` of a value that may be NULL (`Some(None)`); `None` when it cannot be written.
fn nullable(value: Option<&str>, write: fn(&str) -> Option<String>) -> Option<Option<String>> {
    match value {
        Some(value) => write(value).map(Some),
        None => Some(None),
    }
}

/// `s` as an escape string constant (`E'…'`): backslashes and quotes doubled, the one
/// form whose reading does not depend on `standard_conforming_strings`. `None` when `s`
/// holds NUL, which PostgreSQL's text cannot (and which would end the query's text).
fn string(s: &str) -> Option<String> {
    if s.contains('\0') {
        return None;
    }
    let mut out = String::with_capacity(s.len() + 4);
    out.push_str("E'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out.push('\'');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inlined(sql: &str, values: Vec<Value>) -> Option<String> {
        let mut out = String::new();
        inline(
            &Statement::from_sql_and_values(DbBackend::Postgres, sql, values),
            &mut out,
        )?;
        Some(out)
    }

    #[test]
    fn values_are_written_as_typed_literals() {
        assert_eq!(
            inlined(
                "UPDATE \"users\" SET \"b\" = \"b\" - $1 WHERE \"id\" = $2 AND \"g\" = $3",
                vec![(-5i64).into(), 7i32.into(), false.into()],
            )
            .as_deref(),
            Some(
                "UPDATE \"users\" SET \"b\" = \"b\" - CAST(-5 AS int8) WHERE \"id\" = \
                 CAST(7 AS int4) AND \"g\" = CAST(false AS bool)"
            )
        );
        assert_eq!(
            inlined(
                "SELECT $1, $2",
                vec![Option::<String>::None.into(), 3u32.into()]
            )
            .as_deref(),
            Some("SELECT CAST(NULL AS text), CAST(3 AS int8)")
        );
    }

    #[test]
    fn strings_double_their_quotes_and_backslashes() {
        assert_eq!(
            inlined(
                "SELECT $1",
                vec!["it's a \\' trap'; DROP TABLE x; --".into()]
            )
            .as_deref(),
            Some("SELECT CAST(E'it''s a \\\\'' trap''; DROP TABLE x; --' AS text)")
        );
        assert_eq!(
            inlined("SELECT $1", vec!["中文 ✓".into()]).as_deref(),
            Some("SELECT CAST(E'中文 ✓' AS text)")
        );
    }

    #[test]
    fn placeholders_count_past_nine_and_quoted_text_is_left_alone() {
        let values: Vec<Value> = (1..=11i64).map(Value::from).collect();
        let sql = (1..=11)
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(",");
        let out = inlined(&format!("SELECT {sql}, '$1 ?', \"a$2\""), values).unwrap();
        assert!(out.contains("CAST(10 AS int8),CAST(11 AS int8)"), "{out}");
        assert!(out.ends_with(", '$1 ?', \"a$2\""), "{out}");
    }

    #[test]
    fn what_cannot_be_written_exactly_declines() {
        assert_eq!(inlined("SELECT $1", vec!["a\0b".into()]), None, "NUL");
        assert_eq!(inlined("SELECT $1", vec![1.5f64.into()]), None, "float");
        assert_eq!(
            inlined("SELECT $1", vec![u64::MAX.into()]),
            None,
            "above i64"
        );
        assert_eq!(
            inlined("SELECT $2", vec![1i64.into()]),
            None,
            "no such value"
        );
        assert_eq!(
            inlined("SELECT $1", vec![1i64.into(), 2i64.into()]),
            None,
            "a value left over"
        );
        assert_eq!(inlined("SELECT 'open", vec![]), None, "unclosed quote");
        assert_eq!(
            inlined("SELECT $x", vec![]),
            None,
            "a dollar that is no placeholder"
        );
    }

    #[test]
    fn a_script_that_cannot_be_written_is_not_run() {
        let mut script = Script::new(DbBackend::Postgres);
        script.push(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT $1",
            [1i64.into()],
        ));
        assert!(matches!(&script.kind, Kind::Postgres(Some(_))));
        script.push(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT $1",
            [2.5f64.into()],
        ));
        assert!(matches!(&script.kind, Kind::Postgres(None)));
        script.require("1 = ?", vec![1i64.into()]);
        assert!(
            matches!(&script.kind, Kind::Postgres(None)),
            "stays dropped"
        );
    }

    #[test]
    fn requirements_and_changes_read_as_postgresql() {
        let mut script = Script::new(DbBackend::Postgres);
        let update = |v: i64| {
            Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE \"t\" SET \"a\" = $1",
                [v.into()],
            )
        };
        script.push_if_changed(
            update(1),
            Statement::from_sql_and_values(
                DbBackend::Postgres,
                format!(
                    "INSERT INTO \"h\" SELECT $1 WHERE {}",
                    changed_condition(DbBackend::Postgres)
                ),
                [2i64.into()],
            ),
        );
        script.require(
            "EXISTS (SELECT 1 FROM \"h\" WHERE \"x\" = ?)",
            vec!["k".into()],
        );
        script.require_one_changed(update(3));
        let Kind::Postgres(Some(sql)) = script.kind else {
            panic!("written")
        };
        assert_eq!(
            sql,
            "WITH \"changed\" AS (UPDATE \"t\" SET \"a\" = CAST(1 AS int8) RETURNING 1) \
             INSERT INTO \"h\" SELECT CAST(2 AS int8) WHERE EXISTS (SELECT 1 FROM \"changed\");\n\
             SELECT 1 WHERE 1 / (CASE WHEN EXISTS (SELECT 1 FROM \"h\" WHERE \"x\" = \
             CAST(E'k' AS text)) THEN 1 ELSE 0 END) < 0;\n\
             WITH \"changed\" AS (UPDATE \"t\" SET \"a\" = CAST(3 AS int8) RETURNING 1) \
             SELECT 1 WHERE 1 / (CASE WHEN (SELECT count(*) FROM \"changed\") = 1 \
             THEN 1 ELSE 0 END) < 0;\n"
        );
    }
}
