//! Money that is never wrong, on every supported database: concurrent overdraft
//! attempts, drops and upstream faults, free quota then money, recharge codes redeemed
//! concurrently, idempotent admin credits, and the ledger invariant after all of it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use chatgate::config::ModelConfig;
use chatgate::mock_upstream::{Fault, MockConfig, MockUpstream};
use common::{Gateway, RawClient, databases, parse_mp, parse_sse};
use serde_json::{Value, json};

const MODEL: &str = "gpt-4o-mini";

/// An answer of exactly 100 pieces, so the mock reports 100 completion tokens.
fn hundred_pieces() -> MockConfig {
    MockConfig {
        answer: Some("答".repeat(100)),
        chunks: 100,
        ..MockConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balance_for_one_answer_serves_exactly_one_of_200_concurrent_chats() {
    for (db, url) in databases().await {
        let mock = MockUpstream::start(hundred_pieces()).await.unwrap();
        let gw =
            Gateway::start_on(url, |c| common::one_micro_per_output_token(c, &mock, MODEL)).await;
        let (token, user_id) = gw.register_with("rich-for-one", 100).await;
        let body = json!({"message": "hi"}).to_string();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let (addr, token, body) = (gw.addr, token.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let path = if i % 2 == 0 {
                    "/api/chat"
                } else {
                    "/api/chat?client=mp"
                };
                RawClient::send(addr, "POST", path, Some(&token), &[], body.as_bytes())
                    .await
                    .read_all()
                    .await
            }));
        }
        let (mut served, mut refused) = (0, 0);
        for (i, task) in tasks.into_iter().enumerate() {
            let resp = task.await.unwrap();
            let code = if i % 2 == 0 {
                if resp.status == 200 {
                    assert!(parse_sse(&resp.body()).done.is_some());
                    None
                } else {
                    assert_eq!(resp.status, 402, "{db}");
                    Some(serde_json::from_slice::<Value>(&resp.body()).unwrap()["code"].clone())
                }
            } else {
                let parsed = parse_mp(&resp.chunks);
                parsed.error.map(|e| e["code"].clone())
            };
            match code {
                None => served += 1,
                Some(code) => {
                    assert_eq!(code, 101, "{db}");
                    refused += 1;
                }
            }
        }
        assert_eq!((served, refused), (1, 199), "{db}");
        let (_, user) = gw
            .admin("GET", &format!("/admin/users/{user_id}"), &Value::Null)
            .await;
        assert_eq!(user["balance_micros"], 0, "{db}: {user}");
        assert_eq!(user["held_micros"], 0, "{db}");
        assert_eq!(user["ledger_sum_micros"], 0, "{db}");
        gw.assert_ledger_ok().await;
        assert_eq!(
            gw.message_count().await,
            2,
            "{db}: refused chats store nothing"
        );
    }
}

/// One client's chat: its message id, the cost its done frame reported (if it read to
/// the end), and whether it hung up early.
async fn one_chat(addr: std::net::SocketAddr, token: String, mp: bool, drop_early: bool) -> String {
    let body = json!({"message": "count my money"}).to_string();
    let path = if mp {
        "/api/chat?client=mp"
    } else {
        "/api/chat"
    };
    let mut client = RawClient::send(addr, "POST", path, Some(&token), &[], body.as_bytes()).await;
    let id = client.header("x-message-id").unwrap_or_default();
    if drop_early {
        let _ = client.next_chunk().await;
        return id;
    }
    let resp = client.read_all().await;
    if resp.status == 200 && mp {
        let _ = parse_mp(&resp.chunks);
    }
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balances_equal_credits_minus_costs_after_drops_and_faults() {
    for (db, url) in databases().await {
        let mock = MockUpstream::start(MockConfig {
            chunks: 12,
            chunk_delay: Duration::from_millis(2),
            ..MockConfig::default()
        })
        .await
        .unwrap();
        let gw = Gateway::start_on(url, |c| {
            common::one_micro_per_output_token(c, &mock, MODEL);
            let m = c.models.get_mut(MODEL).unwrap();
            m.input_micros_per_million = 333_333;
            m.output_micros_per_million = 777_777;
            m.request_micros = 3;
        })
        .await;
        let mut users = Vec::new();
        for u in 0..6 {
            users.push(
                gw.register_with(&format!("spender-{u}"), 50_000 + u * 7)
                    .await,
            );
        }
        let faults = [
            Fault::None,
            Fault::InBandErrorAfter(2),
            Fault::DropAfter(3),
            Fault::None,
        ];
        let mut ids: Vec<(i64, String)> = Vec::new();
        for (phase, fault) in faults.iter().enumerate() {
            mock.set_config(MockConfig {
                chunks: 12,
                chunk_delay: Duration::from_millis(2),
                fault: fault.clone(),
                ..MockConfig::default()
            });
            let mut tasks = Vec::new();
            for (n, (token, user_id)) in users.iter().enumerate() {
                for k in 0..4 {
                    let mp = (n + k) % 2 == 0;
                    let drop_early = (n + k + phase) % 3 == 0;
                    let (addr, token, user_id) = (gw.addr, token.clone(), *user_id);
                    tasks.push(tokio::spawn(async move {
                        (user_id, one_chat(addr, token, mp, drop_early).await)
                    }));
                }
            }
            for t in tasks {
                ids.push(t.await.unwrap());
            }
        }
        // Every answer ends (dropped ones too), then every hold is settled.
        for (user_id, id) in &ids {
            if id.is_empty() {
                continue;
            }
            let token = &users.iter().find(|(_, u)| u == user_id).unwrap().0;
            gw.wait_answer(token, id).await;
        }
        gw.assert_ledger_ok().await;
        for (n, (token, user_id)) in users.iter().enumerate() {
            let (_, admin_view) = gw
                .admin("GET", &format!("/admin/users/{user_id}"), &Value::Null)
                .await;
            assert_eq!(admin_view["held_micros"], 0, "{db}: all holds settled");
            let mut charged = 0;
            for (owner, id) in ids
                .iter()
                .filter(|(owner, id)| owner == user_id && !id.is_empty())
            {
                let _ = owner;
                let (_, m) = gw
                    .json(
                        "GET",
                        &format!("/api/messages/{id}"),
                        Some(token),
                        &Value::Null,
                    )
                    .await;
                if m["status"] == "failed" {
                    assert_eq!(m["cost_micros"], 0, "{db}: a failed answer is never billed");
                }
                charged += m["cost_micros"].as_i64().unwrap();
            }
            let credits = 50_000 + n as i64 * 7;
            assert!(charged > 0, "{db}");
            assert_eq!(
                admin_view["balance_micros"].as_i64().unwrap(),
                credits - charged,
                "{db}: user {user_id}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recharge_code_redeemed_50_times_at_once_credits_once() {
    for (db, url) in databases().await {
        let gw = Gateway::start_on(url, |_| {}).await;
        let (token, user_id) = gw.register_with("redeemer", 0).await;
        let (status, minted) = gw
            .admin(
                "POST",
                "/admin/redeem-codes",
                &json!({"count": 3, "amount_micros": 5_000_000}),
            )
            .await;
        assert_eq!(status, 200, "{minted}");
        let code = minted["codes"][0].as_str().unwrap().to_string();
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (addr, token, code) = (gw.addr, token.clone(), code.clone());
            tasks.push(tokio::spawn(async move {
                let body = json!({"code": code}).to_string();
                RawClient::send(
                    addr,
                    "POST",
                    "/api/redeem",
                    Some(&token),
                    &[],
                    body.as_bytes(),
                )
                .await
                .read_all()
                .await
                .status
            }));
        }
        let mut ok = 0;
        for t in tasks {
            if t.await.unwrap() == 200 {
                ok += 1;
            }
        }
        assert_eq!(ok, 1, "{db}");
        let (_, me) = gw.json("GET", "/api/me", Some(&token), &Value::Null).await;
        assert_eq!(me["balance_micros"], 5_000_000, "{db}");
        // Another user cannot reuse it; an unknown code is 404.
        let (other, _) = gw.register_with("latecomer", 0).await;
        let (status, body) = gw
            .json("POST", "/api/redeem", Some(&other), &json!({"code": code}))
            .await;
        assert_eq!((status, body["code"].as_i64()), (400, Some(10001)), "{db}");
        let (status, _) = gw
            .json(
                "POST",
                "/api/redeem",
                Some(&other),
                &json!({"code": "NOPE-NOPE"}),
            )
            .await;
        assert_eq!(status, 404, "{db}");
        let (_, user) = gw
            .admin("GET", &format!("/admin/users/{user_id}"), &Value::Null)
            .await;
        assert_eq!(user["ledger"].as_array().unwrap().len(), 1, "{db}");
        gw.assert_ledger_ok().await;
    }
}

#[tokio::test]
async fn admin_credits_are_idempotent_and_never_overdraw() {
    for (db, url) in databases().await {
        let gw = Gateway::start_on(url, |_| {}).await;
        let (_, user_id) = gw.register_with("credited", 0).await;
        let path = format!("/admin/users/{user_id}/credit");
        let once = json!({"amount_micros": 700, "note": "gift", "idempotency_key": "gift-1"});
        for _ in 0..3 {
            let (status, body) = gw.admin("POST", &path, &once).await;
            assert_eq!(
                (status, body["balance_micros"].as_i64()),
                (200, Some(700)),
                "{db}"
            );
        }
        let (status, body) = gw
            .admin(
                "POST",
                &path,
                &json!({"amount_micros": -701, "note": "too much"}),
            )
            .await;
        assert_eq!((status, body["code"].as_i64()), (400, Some(10001)), "{db}");
        let (status, body) = gw
            .admin(
                "POST",
                &path,
                &json!({"amount_micros": -700, "note": "all"}),
            )
            .await;
        assert_eq!(
            (status, body["balance_micros"].as_i64()),
            (200, Some(0)),
            "{db}"
        );
        let (status, _) = gw
            .json(
                "POST",
                &path,
                Some("not-the-admin"),
                &json!({"amount_micros": 1}),
            )
            .await;
        assert_eq!(status, 401, "{db}");
        gw.assert_ledger_ok().await;
    }
}

#[tokio::test]
async fn free_quota_first_then_codes_then_money_and_guests_get_the_quota_only() {
    for (db, url) in databases().await {
        let mock = MockUpstream::start(hundred_pieces()).await.unwrap();
        let gw = Gateway::start_on(url, |c| {
            common::one_micro_per_output_token(c, &mock, MODEL);
            c.free_messages_per_day = 2;
        })
        .await;
        let (token, _) = gw.register_with("freebie", 0).await;
        for left in [1, 0] {
            let resp = gw.chat(&token, &json!({"message": "free?"}), true).await;
            let done = parse_mp(&resp.chunks).done.expect("served free");
            assert_eq!(done["cost_micros"], 0, "{db}");
            let (_, me) = gw.json("GET", "/api/me", Some(&token), &Value::Null).await;
            assert_eq!(me["free_messages_left_today"], left, "{db}");
        }
        let refused = gw.chat(&token, &json!({"message": "more"}), false).await;
        assert_eq!(refused.status, 429, "{db}");
        let body: Value = serde_json::from_slice(&refused.body()).unwrap();
        assert_eq!(
            (body["code"].as_i64(), body["reason"].as_str()),
            (Some(102), Some("quota_exhausted"))
        );

        let (_, minted) = gw
            .admin(
                "POST",
                "/admin/redeem-codes",
                &json!({"count": 1, "amount_micros": 250}),
            )
            .await;
        let (status, _) = gw
            .json(
                "POST",
                "/api/redeem",
                Some(&token),
                &json!({"code": minted["codes"][0]}),
            )
            .await;
        assert_eq!(status, 200);
        let resp = gw.chat(&token, &json!({"message": "paid"}), false).await;
        let done = parse_sse(&resp.body()).done.expect("served on money");
        assert_eq!(done["cost_micros"], 100, "{db}");
        assert_eq!(done["balance_micros"], 150, "{db}");
        // 150 left pays another full answer; the 50 left then pay only a shorter one.
        let resp = gw.chat(&token, &json!({"message": "again"}), false).await;
        assert_eq!(
            parse_sse(&resp.body()).done.unwrap()["balance_micros"],
            50,
            "{db}"
        );
        let resp = gw
            .chat(&token, &json!({"message": "once more"}), false)
            .await;
        let sent = mock.last_request().unwrap().body;
        assert_eq!(resp.status, 200, "{db}");
        assert_eq!(
            sent["max_tokens"], 50,
            "{db}: the output budget was lowered to what 50 micros pay"
        );
        let (_, me) = gw.json("GET", "/api/me", Some(&token), &Value::Null).await;
        assert_eq!(me["balance_micros"], 0, "{db}");
        let resp = gw.chat(&token, &json!({"message": "broke"}), false).await;
        assert_eq!(resp.status, 429, "{db}: quota used and no money left");

        // Guests: the same device gets the same account; quota only; no recharge.
        let (status, g1) = gw
            .json(
                "POST",
                "/api/auth/guest",
                None,
                &json!({"device_id": "device-0001"}),
            )
            .await;
        assert_eq!(status, 200, "{g1}");
        let (_, g2) = gw
            .json(
                "POST",
                "/api/auth/guest",
                None,
                &json!({"device_id": "device-0001"}),
            )
            .await;
        assert_eq!(g1["user_id"], g2["user_id"]);
        let guest = g1["token"].as_str().unwrap();
        for _ in 0..2 {
            let resp = gw.chat(guest, &json!({"message": "trial"}), true).await;
            assert!(parse_mp(&resp.chunks).done.is_some(), "{db}");
        }
        let resp = gw.chat(guest, &json!({"message": "trial"}), true).await;
        assert_eq!(
            parse_mp(&resp.chunks).error.unwrap()["reason"],
            "quota_exhausted"
        );
        let (_, minted) = gw
            .admin(
                "POST",
                "/admin/redeem-codes",
                &json!({"count": 1, "amount_micros": 250}),
            )
            .await;
        let (status, _) = gw
            .json(
                "POST",
                "/api/redeem",
                Some(guest),
                &json!({"code": minted["codes"][0]}),
            )
            .await;
        assert_eq!(status, 400, "{db}: guests cannot recharge");
        // Guest creation is limited per address.
        for n in 2..=3 {
            let (status, _) = gw
                .json(
                    "POST",
                    "/api/auth/guest",
                    None,
                    &json!({"device_id": format!("device-000{n}")}),
                )
                .await;
            assert_eq!(status, 200);
        }
        let (status, body) = gw
            .json(
                "POST",
                "/api/auth/guest",
                None,
                &json!({"device_id": "device-0009"}),
            )
            .await;
        assert_eq!(
            (status, body["reason"].as_str()),
            (429, Some("rate_limited")),
            "{db}"
        );
        gw.assert_ledger_ok().await;
    }
}

#[tokio::test]
async fn stop_bills_what_was_produced_and_failures_bill_nothing() {
    for (db, url) in databases().await {
        let mock = MockUpstream::start(MockConfig {
            answer: Some("慢".repeat(100)),
            chunks: 100,
            chunk_delay: Duration::from_millis(20),
            ..MockConfig::default()
        })
        .await
        .unwrap();
        let gw =
            Gateway::start_on(url, |c| common::one_micro_per_output_token(c, &mock, MODEL)).await;
        let (token, _) = gw.register_with("stopper", 1_000).await;
        let body = json!({"message": "go"}).to_string();
        let mut client = gw.open_chat(&token, &body, true).await;
        let id = client.header("x-message-id").unwrap();
        client.next_chunk().await.unwrap();
        let (_, stopped) = gw
            .json(
                "POST",
                &format!("/api/messages/{id}/stop"),
                Some(&token),
                &Value::Null,
            )
            .await;
        assert_eq!(stopped["status"], "stopped", "{db}");
        let chars = stopped["content"].as_str().unwrap().chars().count() as i64;
        let cost = stopped["cost_micros"].as_i64().unwrap();
        // Billed by our own count of what was produced: between 1 and 100 tokens.
        assert!(
            cost >= 1 && cost <= chars.max(1) * 3 && cost < 100,
            "{db}: cost {cost} for {chars} chars"
        );
        let (_, me) = gw.json("GET", "/api/me", Some(&token), &Value::Null).await;
        assert_eq!(me["balance_micros"], 1_000 - cost, "{db}");

        mock.set_config(MockConfig {
            fault: Fault::InBandErrorAfter(5),
            ..hundred_pieces()
        });
        let resp = gw.chat(&token, &json!({"message": "fail"}), false).await;
        assert!(parse_sse(&resp.body()).error.is_some());
        let (_, me) = gw.json("GET", "/api/me", Some(&token), &Value::Null).await;
        assert_eq!(
            me["balance_micros"],
            1_000 - cost,
            "{db}: the failed answer cost nothing"
        );
        gw.assert_ledger_ok().await;
    }
}

/// The ledger's own calls, on every database (SQLite takes its one-script path, the
/// others their transactions): a hold is settled exactly once — a second settlement of
/// the same hold (as when the sweep got there first) moves nothing; a balance short of
/// the worst case gets a shorter answer, an empty one a refusal that writes nothing; a
/// free message comes first, then money.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_settle_exactly_once_and_refusals_write_nothing() {
    use chatgate::chat::store::Finished;
    use chatgate::error::AppError;
    use chatgate::ledger::holds::{self, Request, Settlement};
    use chatgate::upstream::chunk::Usage;
    use sea_orm::{ConnectionTrait, Statement};

    let price = ModelConfig {
        input_micros_per_million: 0,
        output_micros_per_million: 1_000_000,
        max_output_tokens: 100,
        ..ModelConfig::default()
    };
    for (db_name, url) in databases().await {
        eprintln!("database: {db_name}");
        let gw = Gateway::start_on(url, |_| {}).await;
        let db = &gw.app.db;
        let request = |user_id: i64, free_per_day: u32| Request {
            user_id,
            message_id: "no-such-message",
            price: &price,
            prompt_tokens: 10,
            max_tokens: 100,
            free_per_day,
            day: "2026-11-23",
            with: Vec::new(),
        };
        let holds_of = |user_id: i64| {
            let sql = format!("SELECT COUNT(*) AS n FROM holds WHERE user_id = {user_id}");
            async move {
                let row = db
                    .query_one_raw(Statement::from_string(db.get_database_backend(), sql))
                    .await
                    .unwrap()
                    .unwrap();
                row.try_get::<i64>("", "n").unwrap()
            }
        };

        let (_, rich) = gw.register_with("once", 1_000).await;
        let grant = holds::take(db, request(rich, 0)).await.unwrap();
        assert!(!grant.hold.free);
        assert_eq!((grant.hold.amount_micros, grant.max_tokens), (100, 100));
        let settlement = Settlement {
            hold: &grant.hold,
            message_id: "no-such-message",
            model: MODEL,
            channel: "mock",
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: 30,
                total_tokens: 40,
            },
            cost_micros: 30,
            failed: false,
            first_token_ms: None,
            total_ms: 1,
            answer: Finished {
                status: "done",
                content: "",
                prompt_tokens: 10,
                completion_tokens: 30,
                cost_micros: 30,
                error_code: None,
            },
        };
        let first = holds::settle(db, &settlement).await.unwrap();
        assert!(first.applied, "{db_name}");
        assert_eq!((first.charged_micros, first.balance_micros), (30, 970));
        let again = holds::settle(db, &settlement).await.unwrap();
        assert!(!again.applied, "{db_name}: a settled hold is settled once");
        assert_eq!((again.charged_micros, again.balance_micros), (0, 970));

        // 50 micros pay for 50 output tokens, not the worst case of 100; the turn's rows
        // are stored with that hold.
        let (_, short) = gw.register_with("short", 50).await;
        let turn = chatgate::chat::store::turn_statements(
            db.get_database_backend(),
            chatgate::chat::store::NewTurn {
                user_id: short,
                conversation_id: "short-conversation",
                new_conversation_title: Some("t".into()),
                seq: 0,
                question: "q",
                answer_id: "short-answer",
                model: MODEL,
            },
        );
        let grant = holds::take(
            db,
            Request {
                with: turn,
                ..request(short, 0)
            },
        )
        .await
        .unwrap();
        assert_eq!((grant.hold.amount_micros, grant.max_tokens), (50, 50));
        let stored = chatgate::chat::store::answer_of(db, "short-answer", short)
            .await
            .unwrap();
        assert!(
            stored.is_some(),
            "{db_name}: the turn's rows came with the hold"
        );

        let (_, empty) = gw.register_with("empty", 0).await;
        let refused = holds::take(db, request(empty, 0)).await;
        assert!(
            matches!(refused, Err(AppError::InsufficientBalance)),
            "{db_name}"
        );
        assert_eq!(
            holds_of(empty).await,
            0,
            "{db_name}: a refusal stores no hold"
        );

        // One free message a day, then the balance.
        let (_, freebie) = gw.register_with("freebie", 1_000).await;
        let first = holds::take(db, request(freebie, 1)).await.unwrap();
        assert!(
            first.hold.free && first.hold.amount_micros == 0,
            "{db_name}"
        );
        let second = holds::take(db, request(freebie, 1)).await.unwrap();
        assert!(
            !second.hold.free,
            "{db_name}: the day's free message is used"
        );
        assert_eq!(second.hold.amount_micros, 100);
        assert_eq!(holds_of(freebie).await, 2);
        gw.assert_ledger_ok().await;
    }
}

/// SQLite's one-round-trip transaction: a failed requirement rolls back everything the
/// script wrote before it, a failing statement does too (and is reported), and the
/// connection is left outside any transaction for whoever uses it next.
#[tokio::test]
async fn a_sqlite_script_commits_whole_or_not_at_all() {
    use chatgate::db::{sqlite_require, sqlite_transaction};
    use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};

    let gw = Gateway::start(|_| {}).await;
    let db = &gw.app.db;
    let (_, user_id) = gw.register_with("script", 1_000).await;
    let balance = || async {
        let row = db
            .query_one_raw(balance_query(user_id))
            .await
            .unwrap()
            .unwrap();
        row.try_get::<i64>("", "b").unwrap()
    };
    let spend = |micros: i64| debit(user_id, micros);

    let declined = sqlite_transaction(
        db,
        vec![spend(100), sqlite_require("changes() = 2", Vec::new())],
    )
    .await
    .unwrap();
    assert!(declined.is_none());
    assert_eq!(balance().await, 1_000, "the declined script wrote nothing");

    let failed = sqlite_transaction(
        db,
        vec![
            spend(100),
            Statement::from_string(DbBackend::Sqlite, "INSERT INTO no_such_table VALUES (1)"),
        ],
    )
    .await;
    assert!(failed.is_err(), "a failing statement is an error");
    assert_eq!(balance().await, 1_000, "the failed script wrote nothing");

    let rows = sqlite_transaction(
        db,
        vec![
            spend(100),
            sqlite_require("changes() = 1", Vec::new()),
            balance_query(user_id),
        ],
    )
    .await
    .unwrap()
    .expect("the requirement held");
    assert_eq!(rows.len(), 1, "the requirement returns no row of its own");
    assert_eq!(balance_in(&rows), 900);

    // No transaction was left open: one can begin and commit as usual.
    let txn = db.begin().await.unwrap();
    txn.execute_raw(spend(1)).await.unwrap();
    txn.commit().await.unwrap();
    assert_eq!(balance().await, 899);
}

/// Takes `micros` from `user_id`'s balance (a statement for SQLite's writer tests).
fn debit(user_id: i64, micros: i64) -> sea_orm::Statement {
    sea_orm::Statement::from_sql_and_values(
        sea_orm::DbBackend::Sqlite,
        "UPDATE users SET balance_micros = balance_micros - ? WHERE id = ?",
        [micros.into(), user_id.into()],
    )
}

/// Reads `user_id`'s balance as column `b` (see [`balance_in`]).
fn balance_query(user_id: i64) -> sea_orm::Statement {
    sea_orm::Statement::from_string(
        sea_orm::DbBackend::Sqlite,
        format!("SELECT balance_micros AS b FROM users WHERE id = {user_id}"),
    )
}

/// The balance a script's [`balance_query`] returned (its first row).
fn balance_in(rows: &[chatgate::db::SqliteRow]) -> i64 {
    rows[0].get_i64("b").unwrap()
}

/// SQLite's write lock, taken by the pool's connection and held until the transaction is
/// committed or dropped: SQLite's writer waits for it (its busy timeout).
async fn sqlite_write_lock(db: &sea_orm::DatabaseConnection) -> sea_orm::DatabaseTransaction {
    use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
    let lock = db.begin().await.unwrap();
    lock.execute_raw(Statement::from_string(
        DbBackend::Sqlite,
        "UPDATE settings SET value = value WHERE key = ''",
    ))
    .await
    .unwrap();
    lock
}

/// SQLite's group commit: scripts that wait at the same time share one transaction, and
/// each ends as it would alone — in order, seeing the writes of those before it; a
/// declined or failing one leaves the others' writes in place. They are made to wait
/// together: the pool's connection holds SQLite's write lock while they are queued.
#[tokio::test]
async fn sqlite_scripts_waiting_together_share_a_transaction_and_end_as_alone() {
    use chatgate::db::{sqlite_require, sqlite_transaction, sqlite_write_counts};
    use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};

    let gw = Gateway::start(|_| {}).await;
    let db = &gw.app.db;
    let (_, user_id) = gw.register_with("group", 1_000).await;
    // Spends `micros` if the balance has them, else declines; returns the balance.
    let spend = |micros: i64| {
        vec![
            Statement::from_sql_and_values(
                DbBackend::Sqlite,
                "UPDATE users SET balance_micros = balance_micros - ? \
                 WHERE id = ? AND balance_micros >= ?",
                [micros.into(), user_id.into(), micros.into()],
            ),
            sqlite_require("changes() = 1", Vec::new()),
            balance_query(user_id),
        ]
    };
    let mut failing = spend(100);
    failing.insert(
        1,
        Statement::from_string(DbBackend::Sqlite, "INSERT INTO no_such_table VALUES (1)"),
    );

    let before = sqlite_write_counts(db);
    // The write lock, taken by the pool's connection: the writer waits for it.
    let lock = sqlite_write_lock(db).await;
    let mut all = Box::pin(futures_util::future::join_all([
        sqlite_transaction(db, spend(400)),
        sqlite_transaction(db, spend(400)),
        sqlite_transaction(db, spend(400)),
        sqlite_transaction(db, failing),
        sqlite_transaction(db, spend(200)),
    ]));
    // One poll queues all five (the writer may have taken the first alone by then).
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(std::future::Future::poll(all.as_mut(), &mut cx).is_pending());
    lock.commit().await.unwrap();
    let outcomes = all.await;
    let after = sqlite_write_counts(db);
    assert_eq!(after.scripts - before.scripts, 5);
    assert!(
        after.transactions - before.transactions <= 2,
        "the scripts waited together and went in at most two transactions: {before:?} {after:?}"
    );

    let mut outcomes = outcomes.into_iter();
    let first = outcomes.next().unwrap().unwrap().expect("600 left");
    assert_eq!(balance_in(&first), 600);
    let second = outcomes.next().unwrap().unwrap().expect("200 left");
    assert_eq!(balance_in(&second), 200);
    assert!(
        outcomes.next().unwrap().unwrap().is_none(),
        "400 more than the balance: declined"
    );
    assert!(
        outcomes.next().unwrap().is_err(),
        "a failing statement is an error"
    );
    let last = outcomes.next().unwrap().unwrap().expect("the last 200");
    assert_eq!(
        balance_in(&last),
        0,
        "the declined and the failed spent nothing"
    );

    // No transaction was left open: one can begin and commit as usual.
    let txn = db.begin().await.unwrap();
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Sqlite,
        "UPDATE users SET balance_micros = 7 WHERE id = ?",
        [user_id.into()],
    ))
    .await
    .unwrap();
    txn.commit().await.unwrap();
    let rows = sqlite_transaction(db, vec![balance_query(user_id)])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(balance_in(&rows), 7);
}

/// A caller that goes away while its script waits or runs (a client hanging up during its
/// hold) leaves no transaction half done: the script still ends whole, and the next
/// scripts run.
#[tokio::test]
async fn a_sqlite_script_whose_caller_left_still_ends_whole() {
    use chatgate::db::sqlite_transaction;

    let gw = Gateway::start(|_| {}).await;
    let db = &gw.app.db;
    let (_, user_id) = gw.register_with("left", 1_000).await;
    let spend = |micros: i64| vec![debit(user_id, micros), debit(user_id, micros)];
    // The write lock: the writer cannot finish a script before its caller leaves.
    let lock = sqlite_write_lock(db).await;
    for _ in 0..3 {
        // Polled once (queued, handed to the writer), then dropped.
        let mut abandoned = Box::pin(sqlite_transaction(db, spend(50)));
        let waiting = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(abandoned.as_mut().poll(cx).is_pending())
        })
        .await;
        assert!(waiting, "the script had not run before its caller left");
        drop(abandoned);
    }
    lock.commit().await.unwrap();
    let rows = sqlite_transaction(db, vec![balance_query(user_id)])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        balance_in(&rows),
        700,
        "each abandoned script ran whole (2 × 50 each), none half"
    );
}

/// Scripts from many threads at once, each caller waiting for its own before the next:
/// the writer's thread goes to wait and is woken again thousands of times, and no script
/// is lost between its finding the queue empty and a new one arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_scripts_from_many_threads_all_run() {
    use chatgate::db::sqlite_transaction;
    use sea_orm::{DbBackend, Statement};

    let gw = Gateway::start(|_| {}).await;
    let mut tasks = Vec::new();
    for t in 0..8i64 {
        let db = gw.app.db.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..3000i64 {
                let rows = sqlite_transaction(
                    &db,
                    vec![Statement::from_sql_and_values(
                        DbBackend::Sqlite,
                        "SELECT ? AS n",
                        [(t * 1000 + i).into()],
                    )],
                )
                .await
                .unwrap_or_else(|e| panic!("script {t}/{i}: {e}"))
                .expect("nothing declines it");
                assert_eq!(rows[0].get_i64("n").unwrap(), t * 1000 + i);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// A script that finds SQLite's writer idle runs at once on its caller's thread — but
/// never waits there for SQLite's lock: when the pool's connection holds it, the script
/// goes to the writer's thread, which waits, and the caller's thread stays free.
#[tokio::test]
async fn an_idle_sqlite_writer_runs_a_script_inline_but_never_waits_for_the_lock_there() {
    use chatgate::db::{sqlite_transaction, sqlite_write_counts};

    let gw = Gateway::start(|_| {}).await;
    let db = &gw.app.db;
    let (_, user_id) = gw.register_with("inline", 1_000).await;
    let spend = |micros: i64| vec![debit(user_id, micros), balance_query(user_id)];
    let balance = |rows: Option<Vec<chatgate::db::SqliteRow>>| balance_in(&rows.unwrap());

    // Idle: run inline.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let before = sqlite_write_counts(db);
    assert_eq!(
        balance(sqlite_transaction(db, spend(100)).await.unwrap()),
        900
    );
    let after = sqlite_write_counts(db);
    assert_eq!(after.inline - before.inline, 1, "{before:?} {after:?}");
    assert_eq!(after.scripts - before.scripts, 1);

    // Idle, but the pool's connection holds the lock: the first poll returns at once
    // (were it waiting inline, it would block this thread for the busy timeout).
    let lock = sqlite_write_lock(db).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let before = sqlite_write_counts(db);
    let mut waiting = Box::pin(sqlite_transaction(db, spend(100)));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(std::future::Future::poll(waiting.as_mut(), &mut cx).is_pending());
    lock.commit().await.unwrap();
    assert_eq!(balance(waiting.await.unwrap()), 800);
    let after = sqlite_write_counts(db);
    assert_eq!(
        after.inline, before.inline,
        "went to the thread: {before:?} {after:?}"
    );
    assert_eq!(after.scripts - before.scripts, 1);
}

/// Scripts that run inline never checkpoint on their caller's thread; when their commits
/// make the WAL long, SQLite's writer thread checkpoints.
#[tokio::test]
async fn inline_sqlite_commits_leave_the_checkpoint_to_the_writer_thread() {
    use chatgate::db::{sqlite_transaction, sqlite_write_counts};
    use sea_orm::{DbBackend, Statement};

    let gw = Gateway::start(|_| {}).await;
    let db = &gw.app.db;
    let sql = |s: &str| Statement::from_string(DbBackend::Sqlite, s.to_string());
    sqlite_transaction(db, vec![sql("CREATE TABLE big (b BLOB)")])
        .await
        .unwrap()
        .unwrap();
    let before = sqlite_write_counts(db);
    // 24 × 4 MB: more than the 20,000 pages (80 MB) after which the WAL is copied back.
    for _ in 0..24 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        sqlite_transaction(db, vec![sql("INSERT INTO big VALUES (zeroblob(4194304))")])
            .await
            .unwrap()
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        let now = sqlite_write_counts(db);
        if now.checkpoints > before.checkpoints || std::time::Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        after.inline - before.inline >= 20,
        "the writes ran inline: {before:?} {after:?}"
    );
    assert!(
        after.checkpoints > before.checkpoints,
        "the writer's thread checkpointed: {before:?} {after:?}"
    );
}
