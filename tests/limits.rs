//! Limits through the HTTP surface: per address on every API endpoint (not the page or
//! the health check), chats per user per minute, concurrent answers per user — each
//! refused with 102 `rate_limited` and `Retry-After` in the endpoint's own shape.
//! (The limiters' arithmetic is tested with a fake clock in `src/limits.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use chatgate::config::Channel;
use chatgate::mock_upstream::{MockConfig, MockUpstream};
use common::{Gateway, RawClient, parse_mp};
use serde_json::{Value, json};

#[tokio::test]
async fn requests_per_address_are_limited_on_the_api_only() {
    let gw = Gateway::start(|c| {
        c.limits.ip_per_second = 1;
        c.limits.ip_burst = 3;
    })
    .await;
    for _ in 0..20 {
        assert_eq!(gw.raw("GET", "/healthz", None, &[], b"").await.status, 200);
        assert_eq!(gw.raw("GET", "/", None, &[], b"").await.status, 200);
    }
    let mut refused = None;
    for _ in 0..20 {
        let resp = gw.raw("GET", "/api/me", None, &[], b"").await;
        if resp.status == 429 {
            refused = Some(resp);
            break;
        }
        assert_eq!(resp.status, 401);
    }
    let refused = refused.expect("the address limit was reached");
    assert!(
        refused
            .header("retry-after")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let body: Value = serde_json::from_slice(&refused.body()).unwrap();
    assert_eq!(
        (body["code"].as_i64(), body["reason"].as_str()),
        (Some(102), Some("rate_limited"))
    );
    // The same refusal in mini-program framing and in OpenAI's shape.
    let mp = gw
        .raw("POST", "/api/chat?client=mp", None, &[], b"{}")
        .await;
    assert_eq!(mp.status, 200);
    assert_eq!(
        parse_mp(&mp.chunks).error.unwrap()["reason"],
        "rate_limited"
    );
    let v1 = gw
        .raw("POST", "/v1/chat/completions", None, &[], b"{}")
        .await;
    assert_eq!(v1.status, 429);
    assert!(v1.header("retry-after").is_some());
    let body: Value = serde_json::from_slice(&v1.body()).unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
}

#[tokio::test]
async fn chats_per_minute_and_open_answers_are_limited_per_user() {
    let mock = MockUpstream::start(MockConfig {
        chunks: 30,
        chunk_delay: Duration::from_millis(30),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let gw = Gateway::start(|c| {
        c.channels = vec![Channel {
            name: "mock".into(),
            base_url: mock.base_url(),
            api_keys: vec![],
            models: vec![],
            priority: 0,
            weight: 1,
            include_usage: true,
        }];
        c.default_model = Some("gpt-4o-mini".into());
        c.limits.user_concurrent_streams = 2;
        c.limits.user_chats_per_minute = 3;
    })
    .await;
    let token = gw.register("busy").await;
    let body = json!({"message": "hi"}).to_string();
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut c = RawClient::send(
            gw.addr,
            "POST",
            "/api/chat?client=mp",
            Some(&token),
            &[],
            body.as_bytes(),
        )
        .await;
        c.next_chunk().await.unwrap();
        open.push(c.header("x-message-id").unwrap());
    }
    // A third answer while two are open: refused, whatever the connection does.
    let third = gw.chat(&token, &json!({"message": "hi"}), false).await;
    assert_eq!(third.status, 429);
    assert!(third.header("retry-after").is_some());
    // Another user is not affected.
    let other = gw.register("calm").await;
    assert_eq!(
        gw.chat(&other, &json!({"message": "hi"}), false)
            .await
            .status,
        200
    );
    // Once the open answers end (their clients left long ago), one more is allowed;
    // that is the third chat this minute, and the fourth is refused by the rate.
    for id in &open {
        gw.wait_answer(&token, id).await;
    }
    assert_eq!(
        gw.chat(&token, &json!({"message": "hi"}), false)
            .await
            .status,
        200
    );
    let fourth = gw.chat(&token, &json!({"message": "hi"}), true).await;
    let err = parse_mp(&fourth.chunks).error.unwrap();
    assert_eq!(
        (err["code"].as_i64(), err["reason"].as_str()),
        (Some(102), Some("rate_limited"))
    );
}
