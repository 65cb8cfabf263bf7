//! The real `chatgate` binary, as a new user runs it: no configuration, port 0, the
//! demo model in both framings, a restart that keeps logins and answers, SIGTERM that
//! lets an open answer finish, and a bad configuration refused in one line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command};

use common::{Binary, RawClient, call_json, parse_mp, parse_sse, spawn_binary};
use serde_json::{Value, json};

fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> Binary {
    spawn_binary(dir, env)
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_user_runs_the_gateway_with_no_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = start(dir.path(), &[]);
    assert!(
        dir.path().join("chatgate.db").exists(),
        "SQLite file in the working directory"
    );
    let (status, body) = call_json(
        gw.addr,
        "POST",
        "/api/auth/register",
        None,
        &json!({"username": "new", "password": "secret123"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().unwrap().to_string();

    let expected = chatgate::upstream::demo::answer_for("你好");
    let body = json!({"message": "你好"}).to_string();
    let mp = RawClient::send(
        gw.addr,
        "POST",
        "/api/chat?client=mp",
        Some(&token),
        &[],
        body.as_bytes(),
    )
    .await
    .read_all()
    .await;
    assert_eq!(parse_mp(&mp.chunks).content, expected);
    let sse = RawClient::send(
        gw.addr,
        "POST",
        "/api/chat",
        Some(&token),
        &[("x-request-id", "trace-me-42")],
        body.as_bytes(),
    )
    .await
    .read_all()
    .await;
    assert_eq!(parse_sse(&sse.body()).content, expected);
    assert_eq!(sse.header("x-request-id"), Some("trace-me-42"));
    // The answer's own log line (written by its task, after the response began)
    // carries the id of the request that started it.
    let finished = || {
        gw.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("answer finished") && l.contains("trace-me-42"))
    };
    for _ in 0..100 {
        if finished() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(finished(), "{:#?}", gw.log.lock().unwrap());

    // SIGTERM while an answer streams: the answer finishes, then the process exits 0.
    let mut client = RawClient::send(
        gw.addr,
        "POST",
        "/api/chat?client=mp",
        Some(&token),
        &[],
        body.as_bytes(),
    )
    .await;
    let id = client.header("x-message-id").unwrap();
    client.next_chunk().await.unwrap();
    let child = &mut gw.child;
    let status = tokio::task::block_in_place(|| terminate(child));
    assert!(status.success(), "{status:?}");
    let rest = client.read_all().await;
    assert_eq!(rest.chunks.last().unwrap(), b"0\r\n\r\n");

    // Restarted on the same database: the login still works (the JWT secret was
    // stored) and the answer interrupted by the shutdown is complete.
    let mut gw = start(dir.path(), &[]);
    let (status, stored) = call_json(
        gw.addr,
        "GET",
        &format!("/api/messages/{id}"),
        Some(&token),
        &Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["status"], "done");
    assert_eq!(stored["content"], expected.as_str());
    let status = tokio::task::block_in_place(|| terminate(&mut gw.child));
    assert!(status.success());
}

#[test]
fn a_bad_configuration_is_one_line_and_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[limits]\nmax_body_bytes = \"lots\"\n").unwrap();
    for env in [
        vec![("CHATGATE_CONFIG", path.to_str().unwrap())],
        vec![("CHATGATE_DATABASE_URL", "oracle://nope")],
        vec![("CHATGATE_LISTEN", "not an address")],
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatgate"));
        cmd.current_dir(dir.path())
            .env_clear()
            .env("CHATGATE_LISTEN", "127.0.0.1:0");
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{env:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.trim_end().lines().count(), 1, "{env:?}: {stderr}");
        assert!(
            stderr.starts_with("chatgate: bad configuration"),
            "{stderr}"
        );
    }
}
