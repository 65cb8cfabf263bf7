//! A crash loses nothing: the real binary is killed with SIGKILL while answers stream,
//! then restarted; the holds it left open are settled from the stored answers (or
//! released), the ledger invariant holds, and nothing is billed twice — on every
//! supported database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use std::time::Duration;

use chatgate::mock_upstream::{MockConfig, MockUpstream};
use common::{Binary, RawClient, call_json, databases, spawn_binary};
use serde_json::{Value, json};

const ADMIN: &str = "crash-admin";

fn start(dir: &std::path::Path, database_url: &str) -> Binary {
    let config = dir.join("chatgate.toml");
    spawn_binary(
        dir,
        &[
            ("CHATGATE_CONFIG", config.to_str().unwrap()),
            ("CHATGATE_DATABASE_URL", database_url),
            ("CHATGATE_ADMIN_TOKEN", ADMIN),
            ("CHATGATE_JWT_SECRET", "crash-secret"),
        ],
    )
}

/// `call_json` with a bearer token (`""` = none).
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: &Value,
) -> (u16, Value) {
    call_json(
        addr,
        method,
        path,
        Some(token).filter(|t| !t.is_empty()),
        body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_answer_loses_nothing_and_bills_nothing_twice() {
    for (db, url) in databases().await {
        let dir = tempfile::tempdir().unwrap();
        let url = url.unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("crash.db").display()
            )
        });
        let mock = MockUpstream::start(MockConfig {
            answer: Some("长".repeat(300)),
            chunks: 300,
            chunk_delay: Duration::from_millis(20),
            ..MockConfig::default()
        })
        .await
        .unwrap();
        std::fs::write(
            dir.path().join("chatgate.toml"),
            format!(
                "free_messages_per_day = 0\nhold_ttl_secs = 1\nsweep_interval_secs = 0.2\nanswer_flush_secs = 0.05\n\
                 [limits]\nmax_answer_secs = 2\nip_per_second = 0\n\
                 [[channels]]\nname = \"mock\"\nbase_url = \"{}\"\nmodels = [\"m\"]\n\
                 [models.m]\ninput_micros_per_million = 1000000\noutput_micros_per_million = 1000000\nmax_output_tokens = 1000\n",
                mock.base_url()
            ),
        )
        .unwrap();
        let mut gw = start(dir.path(), &url);
        let mut users = Vec::new();
        for u in 0..3 {
            let (status, body) = call(
                gw.addr,
                "POST",
                "/api/auth/register",
                "",
                &json!({"username": format!("u{u}"), "password": "secret123"}),
            )
            .await;
            assert_eq!(status, 201, "{db}: {body}");
            let id = body["user_id"].as_i64().unwrap();
            let (status, _) = call(
                gw.addr,
                "POST",
                &format!("/admin/users/{id}/credit"),
                ADMIN,
                &json!({"amount_micros": 1_000_000}),
            )
            .await;
            assert_eq!(status, 200);
            users.push((body["token"].as_str().unwrap().to_string(), id));
        }
        // Six answers streaming; every client has seen content before the crash.
        let mut clients = Vec::new();
        let mut ids = Vec::new();
        for (n, (token, _)) in users.iter().cycle().take(6).enumerate() {
            let path = if n % 2 == 0 {
                "/api/chat?client=mp"
            } else {
                "/api/chat"
            };
            let body = json!({"message": format!("question {n}")}).to_string();
            let mut client =
                RawClient::send(gw.addr, "POST", path, Some(token), &[], body.as_bytes()).await;
            ids.push((token.clone(), client.header("x-message-id").unwrap()));
            client.next_chunk().await.unwrap();
            clients.push(client);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        gw.child.kill().unwrap(); // SIGKILL
        gw.child.wait().unwrap();
        drop(clients);

        // Restarted: the sweep settles the abandoned holds from what was stored.
        let gw = start(dir.path(), &url);
        let mut settled = false;
        for _ in 0..300 {
            let mut held = 0;
            for (_, id) in &users {
                let (_, u) = call(
                    gw.addr,
                    "GET",
                    &format!("/admin/users/{id}"),
                    ADMIN,
                    &Value::Null,
                )
                .await;
                held += u["held_micros"].as_i64().unwrap();
            }
            if held == 0 {
                settled = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            settled,
            "{db}: open holds were settled or released after the restart"
        );
        let check = |gw_addr| async move {
            let (_, report) = call(gw_addr, "GET", "/admin/check", ADMIN, &Value::Null).await;
            assert_eq!(report["ok"], true, "{report}");
        };
        check(gw.addr).await;
        let mut snapshot = Vec::new();
        for (token, user_id) in &users {
            let mut charged = 0;
            for (_, id) in ids.iter().filter(|(t, _)| t == token) {
                let (_, m) = call(
                    gw.addr,
                    "GET",
                    &format!("/api/messages/{id}"),
                    token,
                    &Value::Null,
                )
                .await;
                assert!(
                    m["status"] == "stopped" || m["status"] == "failed",
                    "{db}: {m}"
                );
                if m["status"] == "stopped" {
                    assert!(!m["content"].as_str().unwrap().is_empty());
                    assert!(
                        m["cost_micros"].as_i64().unwrap() > 0,
                        "{db}: what was stored is billed"
                    );
                }
                charged += m["cost_micros"].as_i64().unwrap();
            }
            let (_, u) = call(
                gw.addr,
                "GET",
                &format!("/admin/users/{user_id}"),
                ADMIN,
                &Value::Null,
            )
            .await;
            assert_eq!(
                u["balance_micros"].as_i64().unwrap(),
                1_000_000 - charged,
                "{db}: user {user_id}"
            );
            let charges = u["ledger"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["kind"] == "charge")
                .count();
            assert!(charges <= 2, "{db}: at most one charge per answer");
            snapshot.push(u["balance_micros"].clone());
        }
        // Another restart changes nothing: nothing is billed twice.
        drop(gw);
        let gw = start(dir.path(), &url);
        tokio::time::sleep(Duration::from_millis(600)).await;
        for ((_, user_id), before) in users.iter().zip(&snapshot) {
            let (_, u) = call(
                gw.addr,
                "GET",
                &format!("/admin/users/{user_id}"),
                ADMIN,
                &Value::Null,
            )
            .await;
            assert_eq!(&u["balance_micros"], before, "{db}");
        }
        check(gw.addr).await;
    }
}
