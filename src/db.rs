//! Connecting to the database (SQLite, PostgreSQL or MySQL), applying the migrations,
//! and the generated-once settings kept there.

use std::time::Duration;

pub(crate) mod template;
pub mod trip;
mod writer;
pub use template::Template;
pub use writer::Counts as SqliteWriteCounts;
pub use writer::Row as SqliteRow;

use entity::setting;
use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ActiveValue::Set, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend,
    DbErr, EntityTrait, QueryResult, Statement,
};

/// The pool's connections to a SQLite file (each has its own thread), beside the writer's
/// own ([`sqlite_transaction`]).
const SQLITE_CONNECTIONS: u32 = 1;
/// How long a SQLite connection waits for another's write transaction before failing.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// SQLite's WAL is copied back into the file (a checkpoint) at this many pages.
const SQLITE_CHECKPOINT_PAGES: u32 = 20_000;

/// Opens a pool on `url` and brings the schema up to date.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let sqlite = url.starts_with("sqlite");
    let mut opts = ConnectOptions::new(url);
    opts.max_connections(if sqlite { SQLITE_CONNECTIONS } else { 32 })
        .min_connections(1)
        // A statement on SQLite is a round trip to the connection's own thread; a ping
        // before every use would double the short ones. Servers' connections are pinged
        // only after sitting idle (a firewall may have cut them); a SQLite file cannot go
        // away underneath.
        .test_before_acquire(false);
    if !sqlite {
        opts.test_before_acquire_if_idle_for(Duration::from_secs(30));
    }
    opts.connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30))
        .sqlx_logging(false)
        // SQLite: WAL lets readers run beside the one writer; a writer that finds the
        // file locked waits instead of failing at once. Checkpoints every 20,000 pages
        // (~80 MB of WAL) rather than SQLite's 1,000: a page rewritten by many answers is
        // copied back once per checkpoint — SQLite's thread spent ~20 % less at 500
        // streams (5 paired runs: 6.0–7.0 % of a core against 7.4–9.8 %).
        .map_sqlx_sqlite_opts(|o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .pragma("wal_autocheckpoint", SQLITE_CHECKPOINT_PAGES.to_string())
        });
    let db = Database::connect(opts).await?;
    Migrator::up(&db, None).await?;
    if sqlite {
        // SQLite's writer starts now, not with the first chat: a file it cannot open for
        // writing stops the start-up with the reason.
        sqlite_transaction(
            &db,
            vec![Statement::from_string(DbBackend::Sqlite, "SELECT 1")],
        )
        .await?;
    }
    Ok(db)
}

/// Returns the stored value of `key`, storing `generate()` first when there is none.
/// Safe against replicas starting together: the first insert wins and all read it back.
pub async fn setting_or_insert(
    db: &DatabaseConnection,
    key: &str,
    generate: impl FnOnce() -> String,
) -> Result<(String, bool), DbErr> {
    if let Some(row) = setting::Entity::find_by_id(key.to_string()).one(db).await? {
        return Ok((row.value, false));
    }
    let row = setting::ActiveModel {
        key: Set(key.to_string()),
        value: Set(generate()),
    };
    setting::Entity::insert(row)
        .on_conflict_do_nothing_on([setting::Column::Key])
        .exec(db)
        .await?;
    let row = setting::Entity::find_by_id(key.to_string())
        .one(db)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("setting {key}")))?;
    Ok((row.value, true))
}

/// Runs `statements` in order, then `query`, inside the caller's transaction, and returns
/// the rows of `query`. On SQLite they go to the connection's thread as one script: one
/// round trip (a thread hand-off each way, the largest cost of a short statement there)
/// instead of one per statement. The other databases take them one by one.
pub async fn script<C: ConnectionTrait>(
    db: &C,
    statements: Vec<Statement>,
    query: Option<Statement>,
) -> Result<Vec<QueryResult>, DbErr> {
    if db.get_database_backend() == DbBackend::Sqlite {
        let (sql, values) = joined(statements.into_iter().chain(query));
        if sql.is_empty() {
            return Ok(Vec::new());
        }
        let script = Statement::from_sql_and_values(DbBackend::Sqlite, sql, values);
        return db.query_all_raw(script).await;
    }
    for statement in statements {
        db.execute_raw(statement).await?;
    }
    match query {
        Some(query) => db.query_all_raw(query).await,
        None => Ok(Vec::new()),
    }
}

/// The script of [`sqlite_transaction`] stopped at a [`sqlite_require`] whose condition
/// was false (SQLite's documented `integer overflow` of `abs(-2^63)`).
const DECLINED: &str = "integer overflow";

/// A statement for [`sqlite_transaction`]: it returns no row, and fails — rolling the whole
/// script back — unless `condition` (SQL that is 0 or 1, e.g. `changes() = 1`, with `?`
/// placeholders for `values`) is true. SQLite has no conditional error outside triggers;
/// `abs()` of the smallest 64-bit integer is its documented one.
pub fn sqlite_require(condition: &str, values: Vec<sea_orm::Value>) -> Statement {
    Statement::from_sql_and_values(
        DbBackend::Sqlite,
        format!("SELECT 1 WHERE abs(-9223372036854775807 - 1 + ({condition})) < 0"),
        values,
    )
}

/// On SQLite only: runs `statements` as ONE script inside a transaction of its own, on
/// SQLite's writer (see [`writer`]: a thread with its own connection, where a script is
/// one hand-off each way; a transaction through sea-orm costs one for BEGIN, one per
/// statement and one for COMMIT, and on SQLite those hand-offs, not the statements, are
/// most of the cost) — or, when other scripts wait at the same time, in a transaction they
/// share (a group commit: pages changed by all are written once). Returns the rows of the
/// statements that return rows, in order, or `None` when a [`sqlite_require`] in the
/// script found its condition false: then nothing of the script was written, and the
/// caller takes its general path. On any failure the script's writes are rolled back
/// before anything else runs on the connection. `None` too when `db` is not SQLite.
pub async fn sqlite_transaction(
    db: &DatabaseConnection,
    statements: Vec<Statement>,
) -> Result<Option<Vec<SqliteRow>>, DbErr> {
    if db.get_database_backend() != DbBackend::Sqlite {
        return Ok(None);
    }
    let script = writer::Script {
        statements: statements
            .into_iter()
            .map(|s| (s.sql, s.values.map(|v| v.0).unwrap_or_default()))
            .collect(),
    };
    // This build has only sqlx's drivers: a SQLite `DatabaseConnection` is its pool.
    writer::run(db.get_sqlite_connection_pool(), script).await
}

/// `statements` as one SQLite script: their SQL joined, their values in order
/// (placeholders are plain `?`: SQLite binds them across the script in order).
fn joined(statements: impl IntoIterator<Item = Statement>) -> (String, Vec<sea_orm::Value>) {
    let mut sql = String::new();
    let mut values = Vec::new();
    for statement in statements {
        if !sql.is_empty() {
            sql.push_str(";\n");
        }
        sql.push_str(&statement.sql);
        values.extend(statement.values.into_iter().flat_map(|v| v.0));
    }
    (sql, values)
}

/// How many [`sqlite_transaction`] scripts have run on `db` and in how many transactions
/// (fewer when they were committed in groups); zero when `db` is not SQLite.
pub fn sqlite_write_counts(db: &DatabaseConnection) -> SqliteWriteCounts {
    if db.get_database_backend() != DbBackend::Sqlite {
        return SqliteWriteCounts::default();
    }
    writer::counts(db.get_sqlite_connection_pool())
}
