//! End to end through the real server on `127.0.0.1:0` against the in-process mock
//! upstream: both framings, arbitrary upstream byte splits, dropped clients and
//! resumption, stop, failures, conversations and bad input.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use chatgate::config::{Channel, Config, ModelConfig};
use chatgate::mock_upstream::{self, Fault, LineEnding, MockConfig, MockUpstream};
use chatgate::upstream::sse::SseParser;
use common::{Gateway, RawClient, parse_mp, parse_sse};
use serde_json::{Value, json};

const MODEL: &str = "gpt-4o-mini";

fn use_mock(config: &mut Config, mock: &MockUpstream) {
    let price = ModelConfig {
        input_micros_per_million: 150_000,
        output_micros_per_million: 600_000,
        ..ModelConfig::default()
    };
    common::mock_serves(config, mock, MODEL, &["key-1"], price);
}

async fn gateway_with(
    mock_config: MockConfig,
    change: impl FnOnce(&mut Config),
) -> (Gateway, MockUpstream) {
    let mock = MockUpstream::start(mock_config).await.unwrap();
    let gw = Gateway::start(|c| {
        use_mock(c, &mock);
        change(c);
    })
    .await;
    (gw, mock)
}

/// The data payloads the mock sends for `message` (everything but `[DONE]`), read
/// straight from it with the same request the gateway makes.
async fn upstream_events(mock: &MockUpstream, system: &str, message: &str) -> Vec<String> {
    let body = json!({
        "model": MODEL, "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": message}],
    });
    let bytes = reqwest::Client::new()
        .post(format!("{}/chat/completions", mock.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut parser = SseParser::new();
    parser.push(&bytes);
    let mut out = Vec::new();
    while let Some(e) = parser.next_event().or_else(|| parser.finish()) {
        let data = String::from_utf8(e.data.to_vec()).unwrap();
        if data != "[DONE]" {
            out.push(data);
        }
    }
    out
}

#[tokio::test]
async fn both_framings_deliver_the_upstream_text_whatever_its_byte_splits() {
    let (gw, mock) = gateway_with(MockConfig::default(), |_| {}).await;
    let token = gw.register("alice").await;
    let endings = [LineEnding::Lf, LineEnding::CrLf, LineEnding::Cr];
    for seed in 0..12u64 {
        let message = format!("问题 {seed}: error success 0 \"quoted\" \\ 😀\r\n end");
        mock.set_config(MockConfig {
            split_seed: Some(seed),
            line_ending: endings[seed as usize % 3],
            comments: seed % 2 == 0,
            chunks: 10 + seed as usize * 7,
            ..MockConfig::default()
        });
        let expected = mock_upstream::answer_for(&message);

        let mp = gw.chat(&token, &json!({"message": message}), true).await;
        assert_eq!(mp.status, 200);
        assert_eq!(mp.header("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(mp.header("x-accel-buffering"), Some("no"));
        assert!(mp.header("x-message-id").is_some() && mp.header("x-request-id").is_some());
        let parsed = parse_mp(&mp.chunks);
        assert_eq!(parsed.content, expected, "seed {seed}");
        let done = parsed.done.expect("done frame");
        assert_eq!(done["message_id"], mp.header("x-message-id").unwrap());
        assert_eq!(
            done["conversation_id"],
            mp.header("x-conversation-id").unwrap()
        );
        assert!(done["usage"]["completion_tokens"].as_u64().unwrap() > 0);
        assert!(done["cost_micros"].as_i64().unwrap() > 0);
        assert!(parsed.error.is_none());

        let sse = gw.chat(&token, &json!({"message": message}), false).await;
        assert_eq!(sse.status, 200);
        assert_eq!(
            sse.header("content-type"),
            Some("text/event-stream; charset=utf-8")
        );
        let parsed = parse_sse(&sse.body());
        assert_eq!(parsed.content, expected, "seed {seed}");
        // The upstream's events are relayed untouched, in order.
        assert_eq!(
            parsed.data,
            upstream_events(&mock, &gw.app.config.system_prompt, &message).await,
            "seed {seed}"
        );
        assert!(parsed.saw_done_marker);
        let done = parsed.done.expect("event: done");
        assert_eq!(done["message_id"], sse.header("x-message-id").unwrap());

        let stored = gw
            .wait_answer(&token, sse.header("x-message-id").unwrap())
            .await;
        assert_eq!(stored["status"], "done");
        assert_eq!(stored["content"], expected);
    }
}

#[tokio::test]
async fn heartbeats_flow_while_the_first_token_is_awaited() {
    let (gw, _mock) = gateway_with(
        MockConfig {
            first_token_delay: Duration::from_millis(400),
            ..MockConfig::default()
        },
        |c| c.heartbeat_secs = 0.05,
    )
    .await;
    let token = gw.register("hb").await;
    let mp = parse_mp(
        &gw.chat(&token, &json!({"message": "hi"}), true)
            .await
            .chunks,
    );
    assert!(mp.heartbeats >= 2, "{mp:?}");
    assert_eq!(mp.content, mock_upstream::answer_for("hi"));
    let sse = parse_sse(
        &gw.chat(&token, &json!({"message": "hi"}), false)
            .await
            .body(),
    );
    assert!(sse.keepalives >= 2, "{sse:?}");
    assert_eq!(sse.content, mock_upstream::answer_for("hi"));
}

/// Reads mini-program chunks until at least `chars` code points of content arrived.
async fn read_mp_until(client: &mut RawClient, chars: usize) -> String {
    let mut content = String::new();
    while content.chars().count() < chars {
        let chunk = client.next_chunk().await.expect("more chunks");
        for frame in std::str::from_utf8(&chunk)
            .unwrap()
            .split_terminator("\r\n")
        {
            let v: Value = serde_json::from_str(frame.strip_prefix("success: ").unwrap()).unwrap();
            content.push_str(v["content"].as_str().unwrap());
        }
    }
    content
}

#[tokio::test]
async fn a_dropped_client_does_not_stop_the_answer_and_can_resume_exactly() {
    let (gw, _mock) = gateway_with(
        MockConfig {
            chunks: 40,
            chunk_delay: Duration::from_millis(15),
            ..MockConfig::default()
        },
        |_| {},
    )
    .await;
    let token = gw.register("bob").await;
    let message = "tell me 一个故事 😀";
    let expected = mock_upstream::answer_for(message);
    let body = json!({"message": message}).to_string();

    // Mini-program: read a few frames, hang up mid-answer.
    let mut client = gw.open_chat(&token, &body, true).await;
    let id = client.header("x-message-id").unwrap();
    let got = read_mp_until(&mut client, 5).await;
    drop(client);
    assert!(expected.starts_with(&got));

    // Re-attach while it is still streaming: exactly the remainder, live until done.
    let offset = got.chars().count();
    let resumed = gw
        .raw(
            "GET",
            &format!("/api/messages/{id}/stream?offset={offset}&client=mp"),
            Some(&token),
            &[],
            b"",
        )
        .await;
    let resumed = parse_mp(&resumed.chunks);
    assert_eq!(format!("{got}{}", resumed.content), expected);
    assert!(resumed.done.is_some());

    // The answer was completed and stored although its first client left.
    let stored = gw.wait_answer(&token, &id).await;
    assert_eq!(stored["status"], "done");
    assert_eq!(stored["content"], expected);
    assert!(stored["cost_micros"].as_i64().unwrap() > 0);

    // After the end, from the database, in both framings and at any offset.
    for offset in [
        0usize,
        1,
        7,
        expected.chars().count() - 1,
        expected.chars().count(),
    ] {
        let rest: String = expected.chars().skip(offset).collect();
        let mp = gw
            .raw(
                "GET",
                &format!("/api/messages/{id}/stream?offset={offset}"),
                Some(&token),
                &[("X-Client", "mp")],
                b"",
            )
            .await;
        assert_eq!(parse_mp(&mp.chunks).content, rest, "offset {offset}");
        let sse = gw
            .raw(
                "GET",
                &format!("/api/messages/{id}/stream?offset={offset}"),
                Some(&token),
                &[],
                b"",
            )
            .await;
        let sse = parse_sse(&sse.body());
        assert_eq!(sse.content, rest, "offset {offset}");
        assert!(sse.done.is_some() && sse.saw_done_marker);
    }

    // SSE: drop after the first bytes too.
    let mut client = gw.open_chat(&token, &body, false).await;
    let id = client.header("x-message-id").unwrap();
    client.next_chunk().await.unwrap();
    drop(client);
    let stored = gw.wait_answer(&token, &id).await;
    assert_eq!(stored["status"], "done");
    assert_eq!(stored["content"], expected);

    // Another user cannot read or resume it.
    let eve = gw.register("eve").await;
    let (status, body) = gw
        .json(
            "GET",
            &format!("/api/messages/{id}"),
            Some(&eve),
            &Value::Null,
        )
        .await;
    assert_eq!((status, body["code"].as_i64()), (404, Some(404)));
}

/// A gateway whose upstream sends 400 characters one every 20 ms, and a mini-program
/// chat of `user`'s on it, read until `chars` characters arrived: the client, the
/// message id (and the user's token).
async fn slow_chat_read_until(
    user: &str,
    chars: usize,
) -> (Gateway, MockUpstream, String, RawClient, String) {
    let (gw, mock) = gateway_with(
        MockConfig {
            chunks: 200,
            chunk_delay: Duration::from_millis(20),
            answer: Some("慢".repeat(400)),
            ..MockConfig::default()
        },
        |_| {},
    )
    .await;
    let token = gw.register(user).await;
    let body = json!({"message": "go"}).to_string();
    let mut client = gw.open_chat(&token, &body, true).await;
    let id = client.header("x-message-id").unwrap();
    read_mp_until(&mut client, chars).await;
    (gw, mock, token, client, id)
}

#[tokio::test]
async fn stop_ends_the_answer_and_keeps_what_was_produced() {
    let (gw, _mock, token, mut client, id) = slow_chat_read_until("carol", 4).await;
    let (status, stopped) = gw
        .json(
            "POST",
            &format!("/api/messages/{id}/stop"),
            Some(&token),
            &Value::Null,
        )
        .await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["status"], "stopped");
    let kept = stopped["content"].as_str().unwrap().chars().count();
    assert!((4..400).contains(&kept), "kept {kept}");
    // The open stream ends with a done frame and the terminal.
    let rest = client.read_all().await;
    assert_eq!(rest.chunks.last().unwrap(), b"0\r\n\r\n");
    assert!(
        String::from_utf8(rest.body())
            .unwrap()
            .contains("\"done\":true")
    );
}

/// A client that hangs up mid-stream is let go (its reader dropped), and the answer goes on.
#[tokio::test]
async fn a_client_that_hangs_up_mid_stream_is_let_go_and_the_answer_goes_on() {
    let (gw, _mock, _, client, id) = slow_chat_read_until("erin", 2).await;
    let answer = gw.app.answers.get(&id).expect("the answer is open");
    assert_eq!(answer.readers(), 1);
    drop(client);
    let mut let_go = false;
    for _ in 0..500 {
        if answer.readers() == 0 {
            let_go = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(let_go, "the reader of a closed connection was dropped");
    assert!(
        gw.app.answers.get(&id).is_some(),
        "the answer goes on without its client"
    );
}

#[tokio::test]
async fn upstream_failures_are_code_11000_in_both_framings() {
    // Nothing listens on the upstream's port: fails before the stream.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = Gateway::start(|c| {
        c.channels = vec![Channel {
            models: vec![MODEL.into()],
            ..Channel::new("dead", format!("http://{closed}/v1"))
        }];
    })
    .await;
    let token = gw.register("dave").await;
    let sse = gw.chat(&token, &json!({"message": "hi"}), false).await;
    assert_eq!(sse.status, 502);
    let body: Value = serde_json::from_slice(&sse.body()).unwrap();
    assert_eq!(body["code"], 11000);
    let mp = gw.chat(&token, &json!({"message": "hi"}), true).await;
    assert_eq!(mp.status, 200);
    assert_eq!(parse_mp(&mp.chunks).error.unwrap()["code"], 11000);

    // The stream breaks off mid-answer: in-band 11000, the text so far kept, nothing billed.
    for fault in [Fault::DropAfter(3), Fault::InBandErrorAfter(3)] {
        let (gw, _mock) = gateway_with(
            MockConfig {
                fault: fault.clone(),
                ..MockConfig::default()
            },
            |_| {},
        )
        .await;
        let token = gw.register("erin").await;
        let mp = gw.chat(&token, &json!({"message": "hi"}), true).await;
        let parsed = parse_mp(&mp.chunks);
        assert_eq!(parsed.error.as_ref().unwrap()["code"], 11000, "{fault:?}");
        assert!(!parsed.content.is_empty());
        let sse = gw.chat(&token, &json!({"message": "hi"}), false).await;
        assert_eq!(sse.status, 200);
        let parsed = parse_sse(&sse.body());
        assert_eq!(parsed.error.unwrap()["code"], 11000, "{fault:?}");
        assert!(parsed.saw_done_marker);
        let stored = gw
            .wait_answer(&token, sse.header("x-message-id").unwrap())
            .await;
        assert_eq!(stored["status"], "failed");
        assert_eq!(stored["cost_micros"], 0);
        assert!(!stored["content"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_missing_done_marker_still_completes_the_answer() {
    let (gw, _mock) = gateway_with(
        MockConfig {
            fault: Fault::NoDone,
            split_seed: Some(7),
            ..MockConfig::default()
        },
        |_| {},
    )
    .await;
    let token = gw.register("fay").await;
    let parsed = parse_mp(&gw.chat(&token, &json!({"message": "x"}), true).await.chunks);
    assert_eq!(parsed.content, mock_upstream::answer_for("x"));
    assert!(parsed.done.is_some());
}

#[tokio::test]
async fn conversations_carry_history_and_belong_to_their_user() {
    let (gw, mock) = gateway_with(MockConfig::default(), |c| {
        c.system_prompt = "be brief".into()
    })
    .await;
    let token = gw.register("gina").await;
    let first = gw
        .chat(&token, &json!({"message": "first question"}), false)
        .await;
    let conversation = first.header("x-conversation-id").unwrap().to_string();
    let second = gw
        .chat(
            &token,
            &json!({"message": "second question", "conversation_id": conversation}),
            true,
        )
        .await;
    assert_eq!(
        second.header("x-conversation-id"),
        Some(conversation.as_str())
    );
    parse_mp(&second.chunks).done.unwrap();

    let sent = mock.last_request().unwrap().body;
    let messages: Vec<(String, String)> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().into(),
                m["content"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        messages,
        vec![
            ("system".into(), "be brief".into()),
            ("user".into(), "first question".into()),
            (
                "assistant".into(),
                mock_upstream::answer_for("first question")
            ),
            ("user".into(), "second question".into()),
        ]
    );
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true);

    let (status, list) = gw
        .json("GET", "/api/conversations", Some(&token), &Value::Null)
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["conversations"][0]["id"], conversation.as_str());
    let (status, conv) = gw
        .json(
            "GET",
            &format!("/api/conversations/{conversation}"),
            Some(&token),
            &Value::Null,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(conv["messages"].as_array().unwrap().len(), 4);

    // Someone else's conversation does not exist for you.
    let other = gw.register("hank").await;
    for (method, path) in [
        ("GET", format!("/api/conversations/{conversation}")),
        ("DELETE", format!("/api/conversations/{conversation}")),
    ] {
        let (status, body) = gw.json(method, &path, Some(&other), &Value::Null).await;
        assert_eq!((status, body["code"].as_i64()), (404, Some(404)));
    }
    let refused = gw
        .chat(
            &other,
            &json!({"message": "x", "conversation_id": conversation}),
            false,
        )
        .await;
    assert_eq!(refused.status, 404);
    let (status, list) = gw
        .json("GET", "/api/conversations", Some(&other), &Value::Null)
        .await;
    assert_eq!(
        (status, list["conversations"].as_array().unwrap().len()),
        (200, 0)
    );

    let (status, _) = gw
        .json(
            "DELETE",
            &format!("/api/conversations/{conversation}"),
            Some(&token),
            &Value::Null,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = gw
        .json(
            "GET",
            &format!("/api/conversations/{conversation}"),
            Some(&token),
            &Value::Null,
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn old_turns_are_trimmed_to_the_context_budget() {
    let (gw, mock) = gateway_with(MockConfig::default(), |c| {
        let m = c.models.get_mut(MODEL).unwrap();
        m.context_tokens = 700;
        m.max_output_tokens = 300;
    })
    .await;
    let token = gw.register("ivan").await;
    let mut conversation = Value::Null;
    for i in 0..8 {
        let resp = gw
            .chat(&token, &json!({"message": format!("question number {i}"), "conversation_id": conversation}), false)
            .await;
        conversation = json!(resp.header("x-conversation-id").unwrap());
        parse_sse(&resp.body()).done.unwrap();
    }
    let sent = mock.last_request().unwrap().body;
    let messages = sent["messages"].as_array().unwrap();
    let total: u64 = messages
        .iter()
        .map(|m| chatgate::tokens::count(m["content"].as_str().unwrap()) + 4)
        .sum::<u64>()
        + 3;
    assert!(total <= 400, "prompt of {total} tokens exceeds the budget");
    assert!(messages.len() < 1 + 2 * 7 + 1, "old turns were dropped");
    assert!(messages.len() >= 3, "the newest turn that fits is kept");
    assert_eq!(messages.last().unwrap()["content"], "question number 7");
    assert_eq!(
        messages[messages.len() - 2]["content"],
        mock_upstream::answer_for("question number 6")
    );
}

#[tokio::test]
async fn bad_input_gets_its_code_in_both_framings_and_stores_nothing() {
    let (gw, _mock) = gateway_with(MockConfig::default(), |c| {
        c.limits.max_body_bytes = 4096;
        c.limits.max_message_chars = 100;
    })
    .await;
    let token = gw.register("judy").await;
    let expired = {
        use jsonwebtoken::{EncodingKey, Header, encode};
        let claims = json!({"sub": "1", "iat": 1, "exp": 2});
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(b"test-secret"),
        )
        .unwrap()
    };
    let forged = {
        use jsonwebtoken::{EncodingKey, Header, encode};
        let claims = json!({"sub": "1", "iat": 1, "exp": 4_000_000_000u64});
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(b"wrong"),
        )
        .unwrap()
    };
    let big = json!({"message": "x".repeat(5000)}).to_string();
    let cases: Vec<(&str, Option<&str>, Vec<u8>, i64, u16)> = vec![
        (
            "invalid JSON",
            Some(&token),
            b"{not json".to_vec(),
            10001,
            400,
        ),
        (
            "missing message",
            Some(&token),
            br#"{"conversation_id":null}"#.to_vec(),
            10001,
            400,
        ),
        (
            "empty message",
            Some(&token),
            br#"{"message":"  "}"#.to_vec(),
            10001,
            400,
        ),
        (
            "non-UTF-8",
            Some(&token),
            b"{\"message\":\"\xff\xfe\"}".to_vec(),
            10001,
            400,
        ),
        (
            "body over the cap",
            Some(&token),
            big.into_bytes(),
            10001,
            400,
        ),
        (
            "message too long",
            Some(&token),
            json!({"message": "长".repeat(101)})
                .to_string()
                .into_bytes(),
            102,
            413,
        ),
        ("no token", None, br#"{"message":"hi"}"#.to_vec(), -1, 401),
        (
            "forged token",
            Some(&forged),
            br#"{"message":"hi"}"#.to_vec(),
            -1,
            401,
        ),
        (
            "expired token",
            Some(&expired),
            br#"{"message":"hi"}"#.to_vec(),
            -1,
            401,
        ),
        (
            "unknown conversation",
            Some(&token),
            br#"{"message":"hi","conversation_id":"0123456789abcdef0123456789abcdef"}"#.to_vec(),
            404,
            404,
        ),
        (
            "unknown model",
            Some(&token),
            br#"{"message":"hi","model":"nope"}"#.to_vec(),
            404,
            404,
        ),
    ];
    for (what, tok, body, code, status) in cases {
        let sse = gw.raw("POST", "/api/chat", tok, &[], &body).await;
        assert_eq!(sse.status, status, "{what} (SSE)");
        let json: Value = serde_json::from_slice(&sse.body()).unwrap();
        assert_eq!(json["code"], code, "{what} (SSE)");
        assert!(json["msg"].as_str().is_some_and(|m| !m.is_empty()));
        if code == 102 {
            assert_eq!(json["reason"], "input_too_long");
        }

        let mp = gw.raw("POST", "/api/chat?client=mp", tok, &[], &body).await;
        assert_eq!(mp.status, 200, "{what} (mp)");
        assert_eq!(mp.chunks.len(), 2, "{what}: error frame, then the terminal");
        let parsed = parse_mp(&mp.chunks);
        assert_eq!(parsed.error.unwrap()["code"], code, "{what} (mp)");
    }
    assert_eq!(
        gw.message_count().await,
        0,
        "refused requests store nothing"
    );

    let (status, body) = gw.json("GET", "/api/nope", None, &Value::Null).await;
    assert_eq!((status, body["code"].as_i64()), (404, Some(404)));
}

#[tokio::test]
async fn accounts_register_login_and_me() {
    let gw = Gateway::start(|_| {}).await;
    let token = gw.register("kate").await;
    let (status, body) = gw
        .json(
            "POST",
            "/api/auth/register",
            None,
            &json!({"username": "kate", "password": "secret123"}),
        )
        .await;
    assert_eq!((status, body["code"].as_i64()), (409, Some(10001)));
    let (status, body) = gw
        .json(
            "POST",
            "/api/auth/login",
            None,
            &json!({"username": "kate", "password": "wrong-pass"}),
        )
        .await;
    assert_eq!((status, body["code"].as_i64()), (401, Some(-1)));
    // A name nobody has is refused the same way (after verifying the dummy hash).
    let (status, unknown) = gw
        .json(
            "POST",
            "/api/auth/login",
            None,
            &json!({"username": "nobody-here", "password": "secret123"}),
        )
        .await;
    assert_eq!((status, &unknown), (401, &body));
    let (status, body) = gw
        .json(
            "POST",
            "/api/auth/login",
            None,
            &json!({"username": "kate", "password": "secret123"}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(body["expires_at"].as_u64().unwrap() > chatgate::clock::unix_secs());
    let login_token = body["token"].as_str().unwrap();
    for t in [token.as_str(), login_token] {
        let (status, me) = gw.json("GET", "/api/me", Some(t), &Value::Null).await;
        assert_eq!(status, 200);
        assert_eq!(me["username"], "kate");
        assert_eq!(me["balance_micros"], 100_000_000);
    }
    let (status, _) = gw.json("GET", "/api/me", None, &Value::Null).await;
    assert_eq!(status, 401);

    let options = gw
        .raw(
            "OPTIONS",
            "/api/chat",
            None,
            &[
                ("Origin", "http://x"),
                ("Access-Control-Request-Method", "POST"),
            ],
            b"",
        )
        .await;
    assert_eq!(options.status, 204);
    assert!(
        options
            .header("access-control-allow-headers")
            .unwrap()
            .contains("Authorization")
    );
    assert_eq!(options.header("access-control-allow-origin"), Some("*"));
    let health = gw.raw("GET", "/healthz", None, &[], b"").await;
    assert_eq!((health.status, health.text()), (200, "ok".to_string()));
    assert!(health.header("x-request-id").is_some());
}

#[tokio::test]
async fn the_demo_model_answers_without_any_upstream() {
    let gw = Gateway::start(|_| {}).await;
    let token = gw.register("demo-user").await;
    let expected = chatgate::upstream::demo::answer_for("你好");
    let mp = parse_mp(
        &gw.chat(&token, &json!({"message": "你好"}), true)
            .await
            .chunks,
    );
    assert_eq!(mp.content, expected);
    assert!(mp.content.contains("演示模型"));
    let sse = parse_sse(
        &gw.chat(&token, &json!({"message": "你好"}), false)
            .await
            .body(),
    );
    assert_eq!(sse.content, expected);
    // The demo model costs a token amount per answer, so the money path can be tried.
    assert_eq!(sse.done.unwrap()["cost_micros"], 10_000);
    gw.assert_ledger_ok().await;
}

#[tokio::test]
async fn shutdown_lets_open_answers_finish_and_be_stored() {
    let (gw, _mock) = gateway_with(
        MockConfig {
            chunks: 30,
            chunk_delay: Duration::from_millis(20),
            ..MockConfig::default()
        },
        |_| {},
    )
    .await;
    let token = gw.register("liam").await;
    let body = json!({"message": "long"}).to_string();
    let mut client = gw.open_chat(&token, &body, true).await;
    let id = client.header("x-message-id").unwrap();
    read_mp_until(&mut client, 2).await;
    let app = std::sync::Arc::clone(&gw.app);
    let reader = tokio::spawn(async move { client.read_all().await });
    gw.shutdown().await;
    // The client got the whole answer, and the database has it.
    let rest = reader.await.unwrap();
    assert_eq!(rest.chunks.last().unwrap(), b"0\r\n\r\n");
    use sea_orm::EntityTrait;
    let row = entity::message::Entity::find_by_id(id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.status, "done");
    assert_eq!(row.content, mock_upstream::answer_for("long"));
}

#[tokio::test]
async fn a_stop_sent_to_another_replica_ends_a_silent_answer() {
    let mock = MockUpstream::start(MockConfig {
        first_token_delay: Duration::from_secs(30),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let a = Gateway::start(|c| use_mock(c, &mock)).await;
    let url = a.app.config.database_url.clone();
    let b = Gateway::start_on(Some(url), |c| use_mock(c, &mock)).await;
    let token = a.register("two-replicas").await;
    let body = json!({"message": "think hard"}).to_string();
    // The answer runs on replica A; the upstream says nothing for 30 s.
    let client = a.open_chat(&token, &body, false).await;
    let id = client.header("x-message-id").unwrap();
    let (status, _) = b
        .json(
            "POST",
            &format!("/api/messages/{id}/stop"),
            Some(&token),
            &Value::Null,
        )
        .await;
    assert_eq!(status, 200);
    let stopped = a.wait_answer(&token, &id).await;
    assert_eq!(stopped["status"], "stopped", "{stopped}");
    assert_eq!(
        stopped["content"], "",
        "nothing was produced (the prompt, sent upstream, is billed)"
    );
    drop(client);
}

#[tokio::test]
async fn a_late_flush_never_overwrites_a_finished_answer() {
    let (gw, _mock) = gateway_with(MockConfig::default(), |_| {}).await;
    let token = gw.register("late-flush").await;
    let resp = gw.chat(&token, &json!({"message": "flush"}), true).await;
    let id = resp.header("x-message-id").unwrap().to_string();
    let stored = gw.wait_answer(&token, &id).await;
    assert_eq!(stored["status"], "done");
    // A flush whose task was cut while its statement was on its way lands now.
    let applied = chatgate::chat::store::flush_contents(&gw.app.db, &[(&id, "stale")])
        .await
        .unwrap();
    assert_eq!(applied, 0);
    let (_, again) = gw
        .json(
            "GET",
            &format!("/api/messages/{id}"),
            Some(&token),
            &Value::Null,
        )
        .await;
    assert_eq!(again["content"], stored["content"]);
    assert_eq!(again["content"], mock_upstream::answer_for("flush"));
}

#[tokio::test]
async fn one_flush_stores_many_answers_and_never_a_finished_or_stopped_one() {
    for (name, url) in common::databases().await {
        eprintln!("database: {name}");
        let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
        let gw = Gateway::start_on(url, |c| use_mock(c, &mock)).await;
        flush_many(&gw).await;
    }
}

async fn flush_many(gw: &Gateway) {
    use chatgate::chat::store::{self, NewTurn};
    let (token, user_id) = gw.register_with("batch-flush", 100_000_000).await;
    let resp = gw.chat(&token, &json!({"message": "flush"}), true).await;
    let finished = resp.header("x-message-id").unwrap().to_string();
    let stored = gw.wait_answer(&token, &finished).await;
    assert_eq!(stored["status"], "done");
    // Three answers streaming (rows as a new turn writes them); one is asked to stop.
    let streaming: Vec<String> = (0..3).map(|_| store::new_id()).collect();
    for (i, id) in streaming.iter().enumerate() {
        let turn = store::turn_statements(
            gw.app.db.get_database_backend(),
            NewTurn {
                user_id,
                conversation_id: &format!("batch-flush-{i}"),
                new_conversation_title: Some("t".into()),
                seq: 0,
                question: "q",
                answer_id: id,
                model: "m",
            },
        );
        chatgate::db::script(&gw.app.db, turn, None).await.unwrap();
    }
    assert!(
        store::request_stop(&gw.app.db, &streaming[2], user_id)
            .await
            .unwrap()
    );

    let texts = ["第一个 'quoted'", "second\nline", "stopped"];
    let mut pairs: Vec<(&str, &str)> = streaming.iter().map(String::as_str).zip(texts).collect();
    pairs.push((&finished, "stale"));
    let before = chatgate::db::sqlite_write_counts(&gw.app.db);
    let changed = store::flush_contents(&gw.app.db, &pairs).await.unwrap();
    assert_eq!(changed, 2, "the two streaming answers not asked to stop");
    if gw.app.db.get_database_backend() == sea_orm::DbBackend::Sqlite {
        let after = chatgate::db::sqlite_write_counts(&gw.app.db);
        // (The background flush goes the same way: at least this one.)
        assert!(
            after.scripts > before.scripts,
            "on SQLite the flush goes through SQLite's writer: {before:?} {after:?}"
        );
    }
    for (id, expected) in streaming
        .iter()
        .zip(["第一个 'quoted'", "second\nline", ""])
    {
        let row = store::answer_of(&gw.app.db, id, user_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.content, expected);
    }
    let row = store::answer_of(&gw.app.db, &finished, user_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.content, mock_upstream::answer_for("flush"));
    assert_eq!(
        store::stops_requested(&gw.app.db, &[&streaming[0], &streaming[2], &finished])
            .await
            .unwrap(),
        vec![streaming[2].clone()]
    );
}

/// Open answers over an `http2` channel share one upstream connection (h2c), and each
/// arrives whole: 12 at once, where HTTP/1.1 needs a connection per open answer.
#[tokio::test]
async fn answers_over_an_http2_channel_share_one_upstream_connection() {
    let mock = MockUpstream::start(MockConfig {
        chunk_delay: Duration::from_millis(20),
        chunks: 10,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let gw = Gateway::start(|c| {
        use_mock(c, &mock);
        c.channels[0].http2 = true;
        c.limits.user_concurrent_streams = 0;
        c.limits.user_chats_per_minute = 0;
        c.limits.ip_per_second = 0;
    })
    .await;
    let token = gw.register("h2").await;
    let asks = (0..12).map(|i| {
        let (gw, token) = (&gw, &token);
        async move {
            let question = format!("h2 question {i}");
            let resp = gw.chat(token, &json!({ "message": question }), true).await;
            let stream = parse_mp(&resp.chunks);
            assert_eq!(stream.content, mock_upstream::answer_for(&question), "{i}");
            assert!(stream.done.is_some(), "{i}");
        }
    });
    futures_util::future::join_all(asks).await;
    let requests = mock.requests();
    assert_eq!(requests.len(), 12);
    assert!(
        requests.iter().all(|r| r.version == "HTTP/2.0"),
        "{requests:?}"
    );
    assert_eq!(mock.connection_count(), 1);
    gw.assert_ledger_ok().await;
}

/// Served as the binary serves it — several event-loop threads, each with its own
/// listening socket and its own upstream client: connections spread over the threads,
/// each thread's answers share that thread's one HTTP/2 upstream connection, every
/// answer is right, and a shutdown lets an answer in flight finish and be stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_loop_threads_each_serve_their_connections_and_drain_on_shutdown() {
    let mock = MockUpstream::start(MockConfig {
        chunk_delay: Duration::from_millis(20),
        chunks: 10,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let gw = Gateway::start_threads(3, |c| {
        use_mock(c, &mock);
        c.channels[0].http2 = true;
        c.limits.user_concurrent_streams = 0;
        c.limits.user_chats_per_minute = 0;
        c.limits.ip_per_second = 0;
    })
    .await;
    let (token, user_id) = gw.register_with("threads", 100_000_000).await;
    let asks = (0..24).map(|i| {
        let (gw, token) = (&gw, &token);
        async move {
            let question = format!("thread question {i}");
            let mp = i % 2 == 0;
            let resp = gw.chat(token, &json!({ "message": question }), mp).await;
            let (content, done) = if mp {
                let s = parse_mp(&resp.chunks);
                (s.content, s.done)
            } else {
                let s = parse_sse(&resp.body());
                (s.content, s.done)
            };
            assert_eq!(content, mock_upstream::answer_for(&question), "{i}");
            assert!(done.is_some(), "{i}");
        }
    });
    futures_util::future::join_all(asks).await;
    assert_eq!(mock.requests().len(), 24);
    // 24 connections over 3 sockets all landing on one has a chance of 3^-23.
    let upstream_connections = mock.connection_count();
    assert!(
        (2..=3).contains(&upstream_connections),
        "one upstream connection per thread that served answers: {upstream_connections}"
    );
    gw.assert_ledger_ok().await;

    // Shutdown while an answer streams: it finishes, complete, and is stored.
    let question = "finish me";
    let body = json!({ "message": question }).to_string();
    let mut client = gw.open_chat(&token, &body, true).await;
    let id = client.header("x-message-id").unwrap().to_string();
    let first = client.next_chunk().await.unwrap();
    let app = Arc::clone(&gw.app);
    let shutdown = tokio::spawn(gw.shutdown());
    let mut rest = client.read_all().await;
    rest.chunks.insert(0, first);
    assert_eq!(
        parse_mp(&rest.chunks).content,
        mock_upstream::answer_for(question)
    );
    assert_eq!(rest.chunks.last().unwrap(), b"0\r\n\r\n");
    tokio::time::timeout(Duration::from_secs(30), shutdown)
        .await
        .expect("the server stops")
        .unwrap();
    let stored = chatgate::chat::store::answer_of(&app.db, &id, user_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, "done");
    assert_eq!(stored.content, mock_upstream::answer_for(question));
}
