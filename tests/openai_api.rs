//! The OpenAI-compatible `/v1` API with users' API keys, end to end against the mock
//! upstream: OpenAI bodies stream and non-stream, usage only when asked, unknown fields
//! passed through, OpenAI-shaped errors, revocation, and billing — including a client
//! that leaves mid-stream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use chatgate::config::ModelConfig;
use chatgate::mock_upstream::{self, Fault, MockConfig, MockUpstream};
use common::{Gateway, RawClient};
use serde_json::{Value, json};

const MODEL: &str = "gpt-4o-mini";

async fn setup(mock_config: MockConfig) -> (Gateway, MockUpstream) {
    let mock = MockUpstream::start(mock_config).await.unwrap();
    let gw = Gateway::start(|c| {
        let price = ModelConfig {
            input_micros_per_million: 1_000_000,
            output_micros_per_million: 2_000_000,
            ..ModelConfig::default()
        };
        common::mock_serves(c, &mock, MODEL, &["upstream-key"], price);
    })
    .await;
    (gw, mock)
}

async fn new_key(gw: &Gateway, token: &str) -> (String, i64) {
    let (status, body) = gw
        .json("POST", "/api/keys", Some(token), &json!({"name": "sdk"}))
        .await;
    assert_eq!(status, 201, "{body}");
    (
        body["key"].as_str().unwrap().to_string(),
        body["id"].as_i64().unwrap(),
    )
}

fn sse_data(body: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(body).unwrap();
    let mut out = Vec::new();
    for block in text.split_terminator("\n\n") {
        let data = block
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("unexpected block {block:?}"));
        if data == "[DONE]" {
            out.push(Value::String("[DONE]".into()));
        } else {
            out.push(serde_json::from_str(data).unwrap());
        }
    }
    out
}

#[tokio::test]
async fn api_keys_models_and_completions() {
    let (gw, mock) = setup(MockConfig::default()).await;
    let (token, user_id) = gw.register_with("api-user", 10_000_000).await;
    let (key, key_id) = new_key(&gw, &token).await;
    assert!(key.starts_with("sk-"));
    let (_, list) = gw
        .json("GET", "/api/keys", Some(&token), &Value::Null)
        .await;
    assert_eq!(list["keys"][0]["id"], key_id);
    assert!(
        !list.to_string().contains(&key),
        "the key is shown once only"
    );

    let (status, models) = gw.json("GET", "/v1/models", Some(&key), &Value::Null).await;
    assert_eq!(status, 200);
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == MODEL)
    );

    let question = "say something 你好";
    let expected = mock_upstream::answer_for(question);
    let request = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0.2,
        "response_format": {"type": "text"},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    });
    let (status, whole) = gw
        .json("POST", "/v1/chat/completions", Some(&key), &request)
        .await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["content"], expected.as_str());
    let sent = mock.last_request().unwrap().body;
    assert_eq!(
        sent["tools"], request["tools"],
        "unknown fields pass through"
    );
    assert_eq!(sent["response_format"], request["response_format"]);
    assert_eq!(sent["temperature"], 0.2);
    assert_eq!(sent["stream"], Value::Null);

    // Streamed without asking for usage: no usage chunk although the gateway asked.
    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let resp = gw
        .raw(
            "POST",
            "/v1/chat/completions",
            Some(&key),
            &[],
            streamed.to_string().as_bytes(),
        )
        .await;
    assert_eq!(
        resp.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    let events = sse_data(&resp.body());
    assert_eq!(
        mock.last_request().unwrap().body["stream_options"]["include_usage"],
        true
    );
    assert_eq!(events.last().unwrap(), "[DONE]");
    let content: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, expected);
    assert!(
        events
            .iter()
            .all(|e| e.get("usage").is_none_or(Value::is_null)),
        "no usage for a client that did not ask"
    );

    // Asked for: exactly one usage chunk, with empty choices.
    streamed["stream_options"] = json!({"include_usage": true});
    let resp = gw
        .raw(
            "POST",
            "/v1/chat/completions",
            Some(&key),
            &[],
            streamed.to_string().as_bytes(),
        )
        .await;
    let events = sse_data(&resp.body());
    let usage: Vec<&Value> = events
        .iter()
        .filter(|e| e.get("usage").is_some_and(|u| !u.is_null()))
        .collect();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0]["choices"], json!([]));
    assert!(usage[0]["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    // Billed like chat: three answers cost something, the ledger holds.
    let (_, admin_view) = gw
        .admin("GET", &format!("/admin/users/{user_id}"), &Value::Null)
        .await;
    assert!(admin_view["balance_micros"].as_i64().unwrap() < 10_000_000);
    assert_eq!(admin_view["usage"].as_array().unwrap().len(), 3);
    gw.assert_ledger_ok().await;

    // Errors in OpenAI's shape.
    let (status, err) = gw
        .json("POST", "/v1/chat/completions", Some("sk-wrong"), &request)
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let mut unknown = request.clone();
    unknown["model"] = json!("no-such-model");
    let (status, err) = gw
        .json("POST", "/v1/chat/completions", Some(&key), &unknown)
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let (status, err) = gw
        .json(
            "POST",
            "/v1/chat/completions",
            Some(&key),
            &json!({"model": MODEL}),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert!(err["error"]["message"].is_string());

    let (poor, _) = gw.register_with("api-poor", 0).await;
    let (poor_key, _) = new_key(&gw, &poor).await;
    let (status, err) = gw
        .json("POST", "/v1/chat/completions", Some(&poor_key), &request)
        .await;
    assert_eq!(
        (status, err["error"]["type"].as_str()),
        (402, Some("insufficient_quota"))
    );

    // Revoked: refused on the very next request.
    let (status, _) = gw
        .json(
            "DELETE",
            &format!("/api/keys/{key_id}"),
            Some(&token),
            &Value::Null,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = gw
        .json("POST", "/v1/chat/completions", Some(&key), &request)
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_client_that_leaves_cancels_the_upstream_and_pays_for_what_it_received() {
    let (gw, mock) = setup(MockConfig {
        answer: Some("字".repeat(200)),
        chunks: 200,
        chunk_delay: Duration::from_millis(20),
        ..MockConfig::default()
    })
    .await;
    let (token, user_id) = gw.register_with("leaver", 10_000_000).await;
    let (key, _) = new_key(&gw, &token).await;
    let body =
        json!({"model": MODEL, "stream": true, "messages": [{"role": "user", "content": "long"}]})
            .to_string();
    let mut client = RawClient::send(
        gw.addr,
        "POST",
        "/v1/chat/completions",
        Some(&key),
        &[],
        body.as_bytes(),
    )
    .await;
    for _ in 0..3 {
        client.next_chunk().await.unwrap();
    }
    drop(client);
    // Settled promptly (long before the 4 s the whole answer would take) for part of it.
    let mut usage = Value::Null;
    for _ in 0..300 {
        let (_, view) = gw
            .admin("GET", &format!("/admin/users/{user_id}"), &Value::Null)
            .await;
        if let Some(u) = view["usage"].as_array().and_then(|u| u.first()) {
            usage = u.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let completion = usage["completion_tokens"]
        .as_i64()
        .expect("settled after the client left");
    assert!(
        completion > 0 && completion < 150,
        "billed for what was received: {usage}"
    );
    assert!(usage["charged_micros"].as_i64().unwrap() > 0);
    assert_eq!(mock.request_count(), 1);
    gw.assert_ledger_ok().await;
}

#[tokio::test]
async fn a_client_that_gives_up_on_a_non_streamed_answer_leaves_no_hold_open() {
    let (gw, mock) = setup(MockConfig {
        first_token_delay: Duration::from_millis(400),
        ..MockConfig::default()
    })
    .await;
    let (token, user_id) = gw.register_with("impatient", 10_000_000).await;
    let (key, _) = new_key(&gw, &token).await;
    let body =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "slow"}]}).to_string();
    // Send the request, and give up (an SDK timeout, a closed laptop) once the upstream
    // has it but before it answers.
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes())
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, body.as_bytes())
        .await
        .unwrap();
    assert!(mock.wait_for_requests(1, Duration::from_secs(10)).await);
    drop(stream);
    let mut settled = Value::Null;
    for _ in 0..500 {
        let (_, view) = gw
            .admin("GET", &format!("/admin/users/{user_id}"), &Value::Null)
            .await;
        if view["held_micros"] == 0 && !view["usage"].as_array().unwrap().is_empty() {
            settled = view;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        settled["held_micros"], 0,
        "the hold was settled although the client left"
    );
    assert!(
        settled["balance_micros"].as_i64().unwrap() < 10_000_000,
        "the answer the upstream produced is billed"
    );
    gw.assert_ledger_ok().await;
}

/// An upstream that refuses the request itself (400: say a parameter it does not take) is
/// the client's bad request on `/v1` — OpenAI's 400 shape, so SDKs raise their usual
/// `BadRequestError` and do not retry — and an upstream failure (11000, 502) on
/// `/api/chat`. Nothing is billed either way.
#[tokio::test]
async fn an_upstream_that_refuses_the_request_is_a_bad_request_on_v1() {
    let (gw, mock) = setup(MockConfig {
        fault: Fault::Status(400),
        ..MockConfig::default()
    })
    .await;
    let (token, user_id) = gw.register_with("api-refused", 10_000_000).await;
    let (key, _) = new_key(&gw, &token).await;
    for stream in [false, true] {
        let request = json!({
            "model": MODEL, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}],
        });
        let (status, err) = gw
            .json("POST", "/v1/chat/completions", Some(&key), &request)
            .await;
        assert_eq!(status, 400, "stream {stream}: {err}");
        assert_eq!(err["error"]["type"], "invalid_request_error", "{err}");
        assert_eq!(err["error"]["code"], "upstream_rejected", "{err}");
    }
    let (status, err) = gw
        .json("POST", "/api/chat", Some(&token), &json!({"message": "hi"}))
        .await;
    assert_eq!((status, err["code"].as_i64()), (502, Some(11000)), "{err}");
    // One upstream call each: a refusal is final, not retried on another key or channel.
    assert_eq!(mock.request_count(), 3);
    let (_, user) = gw
        .admin("GET", &format!("/admin/users/{user_id}"), &Value::Null)
        .await;
    assert_eq!(user["balance_micros"], 10_000_000);
    gw.assert_ledger_ok().await;
}
