//! One-round-trip scripts on PostgreSQL (`chatgate::db::trip`): whole or nothing, the
//! values written into the SQL read back exactly, and a chat's hold and settlement each
//! one script. Skipped without `CHATGATE_TEST_POSTGRES_URL`. One test, its parts in
//! turn: they count the process's scripts, which tests running beside would change.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use chatgate::mock_upstream::{MockConfig, MockUpstream};
use common::{Gateway, RawClient};

const MODEL: &str = "gpt-4o-mini";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_scripts() {
    a_postgres_script_commits_whole_or_not_at_all().await;
    postgres_literals_read_back_as_the_values_they_write().await;
    a_chat_holds_and_settles_in_one_script_each().await;
    without_a_kept_connection_the_pool_serves().await;
}

/// The balance a script's balance query returned (its first row, column `b`).
fn balance_in(rows: &[chatgate::db::SqliteRow]) -> i64 {
    rows[0].get_i64("b").unwrap()
}

/// The PostgreSQL side of one-round-trip scripts: the same guarantees as SQLite's
/// (whole or nothing, a declined requirement writes nothing, rows come back in order),
/// and conditional statements run only after a change.
async fn a_postgres_script_commits_whole_or_not_at_all() {
    use chatgate::db::trip::{self, Script, changed_condition};
    use sea_orm::{ConnectionTrait, DbBackend, Statement};

    let Some(url) = postgres().await else { return };
    let gw = Gateway::start_on(Some(url), |_| {}).await;
    let db = &gw.app.db;
    let (_, user_id) = gw.register_with("script", 1_000).await;
    let pg = |sql: &str, values: Vec<sea_orm::Value>| {
        Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
    };
    let spend = |micros: i64| {
        pg(
            "UPDATE users SET balance_micros = balance_micros - $1 \
             WHERE id = $2 AND balance_micros >= $1",
            vec![micros.into(), user_id.into()],
        )
    };
    let balance_query = || {
        pg(
            "SELECT balance_micros AS b FROM users WHERE id = $1",
            vec![user_id.into()],
        )
    };
    let balance = || async {
        let row = db.query_one_raw(balance_query()).await.unwrap().unwrap();
        row.try_get::<i64>("", "b").unwrap()
    };
    let before = trip::postgres_scripts().0;

    // Declined by a requirement: nothing written.
    let mut script = Script::new(DbBackend::Postgres);
    script.push(spend(100));
    script.require("? = 2", vec![1i64.into()]);
    assert!(trip::run(db, script).await.unwrap().is_none());
    assert_eq!(balance().await, 1_000, "the declined script wrote nothing");

    // Declined because the one statement that had to change a row changed none.
    let mut script = Script::new(DbBackend::Postgres);
    script.push(spend(100));
    script.require_one_changed(spend(5_000));
    assert!(trip::run(db, script).await.unwrap().is_none());
    assert_eq!(balance().await, 1_000);

    // A failing statement: an error, nothing written.
    let mut script = Script::new(DbBackend::Postgres);
    script.push(spend(100));
    script.push(pg("INSERT INTO no_such_table VALUES (1)", vec![]));
    assert!(trip::run(db, script).await.is_err());
    assert_eq!(balance().await, 1_000, "the failed script wrote nothing");

    // Whole: a change, a statement after it that runs only then (it does: a ledger
    // note), one after a statement that changed nothing (it does not), the rows.
    let note = |text: &str| {
        pg(
            &format!(
                "INSERT INTO ledger_entries (user_id, amount_micros, kind, reference, note, \
                 created_at) SELECT $1, 0, 'test', $2, $3, 0 WHERE {}",
                changed_condition(DbBackend::Postgres)
            ),
            vec![user_id.into(), text.into(), text.into()],
        )
    };
    let mut script = Script::new(DbBackend::Postgres);
    script.push_if_changed(spend(100), note("after a change"));
    script.push_if_changed(spend(1_000_000), note("after no change"));
    script.require_one_changed(spend(1));
    script.require(
        "EXISTS (SELECT 1 FROM ledger_entries WHERE reference = ?)",
        vec!["after a change".into()],
    );
    script.push(balance_query());
    let rows = trip::run(db, script).await.unwrap().expect("not declined");
    assert_eq!(rows.len(), 1, "requirements return no row of their own");
    assert_eq!(balance_in(&rows), 899);
    assert_eq!(balance().await, 899);
    let notes = db
        .query_all_raw(pg(
            "SELECT reference FROM ledger_entries WHERE kind = 'test' ORDER BY id",
            vec![],
        ))
        .await
        .unwrap();
    let notes: Vec<String> = notes
        .iter()
        .map(|r| r.try_get("", "reference").unwrap())
        .collect();
    assert_eq!(notes, ["after a change"]);
    // Two declined, one committed (the failed one is not counted).
    assert_eq!(trip::postgres_scripts().0, before + 3);

    // A value that cannot be written as a literal: not run at all, nothing written.
    let mut script = Script::new(DbBackend::Postgres);
    script.push(spend(100));
    script.push(pg("SELECT $1::float8", vec![0.5f64.into()]));
    assert!(trip::run(db, script).await.unwrap().is_none());
    assert_eq!(balance().await, 899);
    assert_eq!(trip::postgres_scripts().0, before + 3, "not sent");
}

/// A chat's hold and settlement are one script each on PostgreSQL, on the connection
/// the event loop keeps, and bill exactly; when that connection is cut between two chats
/// the next chat still goes through (on a new one) and bills once.
async fn a_chat_holds_and_settles_in_one_script_each() {
    use chatgate::db::trip;
    use sea_orm::{ConnectionTrait, DbBackend, Statement};

    let Some(url) = postgres().await else { return };
    let (gw, _mock) = chat_gateway(url).await;
    let (token, _) = gw.register_with("scripted", 1_000).await;
    assert_eq!(
        chat(&gw, &token).await,
        (900, (2, 2)),
        "100 pieces at one micro each; the hold and the settlement each one script, on a \
         kept connection"
    );

    let cut = gw
        .app
        .db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_terminate_backend(pid) AS cut FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = $1",
            [trip::KEPT_NAME.into()],
        ))
        .await
        .unwrap();
    assert_eq!(cut.len(), 1, "the event loop kept one connection");
    assert_eq!(
        chat(&gw, &token).await,
        (800, (2, 2)),
        "the next chat billed once, on a new kept connection"
    );
}

/// When the event loop cannot open a connection of its own (the role's connection limit
/// is reached), the scripts take the shared pool's and the chat goes through.
async fn without_a_kept_connection_the_pool_serves() {
    use sea_orm::ConnectionTrait;

    let Some(url) = postgres().await else { return };
    // A role that is not a superuser (a superuser has no connection limit) owning the
    // database.
    let role = format!("cg_role_{}", uuid::Uuid::new_v4().simple());
    let admin = sea_orm::Database::connect(&url).await.unwrap();
    let database = url.rsplit_once('/').unwrap().1.to_string();
    for sql in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("ALTER DATABASE {database} OWNER TO {role}"),
    ] {
        admin.execute_unprepared(&sql).await.unwrap();
    }
    let role_url = url.replacen("://postgres@", &format!("://{role}@"), 1);
    assert_ne!(role_url, url, "the test URL names the postgres user");
    let (gw, _mock) = chat_gateway(role_url).await;
    let (token, _) = gw.register_with("pooled", 1_000).await;
    // The pool opens a few connections first (four queries at once), so that the chats,
    // the flush of their text and the balance reads find one free under the limit.
    let busy = |_| gw.app.db.execute_unprepared("SELECT pg_sleep(0.2)");
    for done in futures_util::future::join_all((0..4).map(busy)).await {
        done.unwrap();
    }
    // As many connections as the role has now: none more.
    let open: i64 = admin
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!("SELECT count(*) AS n FROM pg_stat_activity WHERE usename = '{role}'"),
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "n")
        .unwrap();
    assert!(open >= 4, "the pool holds four connections: {open}");
    admin
        .execute_unprepared(&format!("ALTER ROLE {role} CONNECTION LIMIT {open}"))
        .await
        .unwrap();
    assert_eq!(
        chat(&gw, &token).await,
        (900, (2, 0)),
        "both scripts ran on the pool's connection"
    );
    assert_eq!(
        chat(&gw, &token).await,
        (800, (2, 0)),
        "and again (no new connection tried for a while)"
    );
}

/// A gateway with one event loop on `url`, one micro per output token, and its mock.
async fn chat_gateway(url: String) -> (Gateway, MockUpstream) {
    let mock = MockUpstream::start(MockConfig {
        answer: Some("答".repeat(100)),
        chunks: 100,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    // One event loop: a chat reuses the connection the one before left.
    let gw = Gateway::start_threads(1, |config| {
        config.database_url = url;
        common::one_micro_per_output_token(config, &mock, MODEL);
    })
    .await;
    (gw, mock)
}

/// One chat; returns the balance after it and how many PostgreSQL scripts ran for it (all,
/// and on kept connections).
async fn chat(gw: &Gateway, token: &str) -> (i64, (u64, u64)) {
    use chatgate::db::trip;

    let before = trip::postgres_scripts();
    let body = serde_json::json!({ "message": "count my money" }).to_string();
    let resp = RawClient::send(
        gw.addr,
        "POST",
        "/api/chat",
        Some(token),
        &[],
        body.as_bytes(),
    )
    .await
    .read_all()
    .await;
    assert_eq!(resp.status, 200);
    // The settlement may land just after the stream ends.
    for _ in 0..200 {
        if trip::postgres_scripts().0 >= before.0 + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = trip::postgres_scripts();
    let (status, me) = gw
        .json("GET", "/api/me", Some(token), &serde_json::Value::Null)
        .await;
    assert_eq!(status, 200, "{me}");
    (
        me["balance_micros"].as_i64().unwrap(),
        (after.0 - before.0, after.1 - before.1),
    )
}

/// Whatever text or integer a script writes into PostgreSQL's SQL reads back exactly as
/// it was: quotes, backslashes, `$1`, `?`, comment and statement syntax, any Unicode.
async fn postgres_literals_read_back_as_the_values_they_write() {
    use chatgate::db::trip::{self, Script};
    use proptest::prelude::*;
    use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};
    use sea_orm::{DbBackend, Statement};

    let Some(url) = postgres().await else { return };
    let db = chatgate::db::connect(&url).await.unwrap();
    let text = prop_oneof![
        any::<String>(),
        proptest::collection::vec(
            prop_oneof![
                Just("'".to_string()),
                Just("\\".to_string()),
                Just("$1".to_string()),
                Just("?".to_string()),
                Just("--".to_string()),
                Just("/*".to_string()),
                Just(";".to_string()),
                Just("E'".to_string()),
                Just("\"".to_string()),
                Just("中".to_string()),
                "[a-z ]{0,3}",
            ],
            0..12,
        )
        .prop_map(|parts| parts.concat()),
    ]
    .prop_filter("PostgreSQL text holds no NUL", |s: &String| {
        !s.contains('\0')
    });
    let case = proptest::collection::vec((text, any::<i64>()), 1..6);
    let mut runner = TestRunner::new_with_rng(
        RunnerConfig {
            cases: 200,
            ..RunnerConfig::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let handle = tokio::runtime::Handle::current();
    let result = tokio::task::block_in_place(|| {
        runner.run(&case, |pairs| {
            let mut script = Script::new(DbBackend::Postgres);
            for (s, i) in &pairs {
                script.push(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT $1 AS s, $2 AS i",
                    vec![s.as_str().into(), (*i).into()],
                ));
            }
            let rows = handle
                .block_on(trip::run(&db, script))
                .unwrap()
                .expect("written and run");
            prop_assert_eq!(rows.len(), pairs.len());
            for (row, (s, i)) in rows.iter().zip(&pairs) {
                prop_assert_eq!(&row.get_string("s").unwrap(), s);
                prop_assert_eq!(row.get_i64("i").unwrap(), *i);
            }
            Ok(())
        })
    });
    result.unwrap();
}

/// A fresh PostgreSQL database when `CHATGATE_TEST_POSTGRES_URL` is set; else says the
/// test is skipped.
async fn postgres() -> Option<String> {
    match std::env::var("CHATGATE_TEST_POSTGRES_URL")
        .ok()
        .filter(|v| !v.is_empty())
    {
        Some(url) => Some(common::fresh_database(&url).await),
        None => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "postgres: skipped (CHATGATE_TEST_POSTGRES_URL is not set)"
            );
            None
        }
    }
}
