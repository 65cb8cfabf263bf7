//! Limits through the HTTP surface: per address on every API endpoint (not the page or
//! the health check), chats per user per minute, concurrent answers per user — each
//! refused with 102 `rate_limited` and `Retry-After` in the endpoint's own shape.
//! (The limiters' arithmetic is tested with a fake clock in `src/limits.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use chatgate::config::Channel;
use chatgate::mock_upstream::{MockConfig, MockUpstream};
use common::{Gateway, parse_mp};
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
        c.channels = vec![Channel::new("mock", mock.base_url())];
        c.default_model = Some("gpt-4o-mini".into());
        c.limits.user_concurrent_streams = 2;
        c.limits.user_chats_per_minute = 3;
    })
    .await;
    let token = gw.register("busy").await;
    let body = json!({"message": "hi"}).to_string();
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut c = gw.open_chat(&token, &body, true).await;
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

/// A fresh key prefix, so tests sharing one Redis never share counts.
fn redis_for_test() -> Option<(String, String)> {
    match std::env::var("CHATGATE_TEST_REDIS_URL")
        .ok()
        .filter(|v| !v.is_empty())
    {
        Some(url) => Some((url, format!("cgtest:{}:", uuid::Uuid::new_v4().simple()))),
        None => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "redis: skipped (CHATGATE_TEST_REDIS_URL is not set)"
            );
            None
        }
    }
}

/// Two replicas on one database: PostgreSQL when configured, else one SQLite file.
async fn two_replicas(
    redis: Option<(String, String)>,
    chats_per_minute: u32,
    ip_burst: u32,
) -> (Gateway, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let db = match std::env::var("CHATGATE_TEST_POSTGRES_URL")
        .ok()
        .filter(|v| !v.is_empty())
    {
        Some(url) => common::fresh_database(&url).await,
        None => format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("shared.db").display()
        ),
    };
    let setup = |c: &mut chatgate::config::Config| {
        c.limits.user_chats_per_minute = chats_per_minute;
        c.limits.ip_per_second = 1;
        c.limits.ip_burst = ip_burst;
        if let Some((url, prefix)) = &redis {
            c.redis_url = Some(url.clone());
            c.redis_prefix = prefix.clone();
        }
    };
    let a = Gateway::start_on(Some(db.clone()), setup).await;
    let b = Gateway::start_on(Some(db), setup).await;
    std::mem::forget(dir);
    (a, b)
}

/// Chats alternately on both replicas; how many were admitted.
async fn admitted_chats(a: &Gateway, b: &Gateway, token: &str, tries: usize) -> usize {
    let mut admitted = 0;
    for i in 0..tries {
        let gw = if i % 2 == 0 { a } else { b };
        let resp = gw.chat(token, &json!({"message": "hi"}), false).await;
        match resp.status {
            200 => admitted += 1,
            429 => assert!(resp.header("retry-after").is_some()),
            other => panic!("unexpected status {other}: {}", resp.text()),
        }
    }
    admitted
}

#[tokio::test]
async fn with_redis_a_per_user_rate_holds_across_replicas() {
    let Some(redis) = redis_for_test() else {
        return;
    };
    let (a, b) = two_replicas(Some(redis), 4, 1000).await;
    assert!(a.app.limiter.shared_ok() && b.app.limiter.shared_ok());
    let token = a.register("shared").await;
    let started = std::time::Instant::now();
    let admitted = admitted_chats(&a, &b, &token, 10).await;
    // 4 a minute: one more for every 15 s the loop took.
    let bound = 4 + (started.elapsed().as_secs() / 15) as usize;
    assert!(
        (4..=bound).contains(&admitted),
        "{admitted} admitted: 4 a minute across both replicas, not 4 on each"
    );
    assert!(a.app.limiter.shared_ok(), "redis answered every check");

    // Control: the same two replicas without Redis count separately.
    let (c, d) = two_replicas(None, 4, 1000).await;
    let token = c.register("apart").await;
    assert_eq!(admitted_chats(&c, &d, &token, 10).await, 8);
}

#[tokio::test]
async fn with_redis_a_per_address_rate_holds_across_replicas() {
    let Some(redis) = redis_for_test() else {
        return;
    };
    let (a, b) = two_replicas(Some(redis), 0, 4).await;
    let started = std::time::Instant::now();
    let served = served_by_address(&a, &b, 12).await;
    // 1 a second after a burst of 4: at most one more per second the loop took.
    let bound = 4 + started.elapsed().as_secs() as usize;
    assert!(
        (4..=bound).contains(&served),
        "{served} served across both replicas (burst 4, bound {bound})"
    );

    // Control: without Redis each replica has its own burst.
    let (c, d) = two_replicas(None, 0, 4).await;
    assert!(served_by_address(&c, &d, 12).await >= 8);
}

/// Requests alternately on both replicas from one address; how many were served.
async fn served_by_address(a: &Gateway, b: &Gateway, tries: usize) -> usize {
    let mut served = 0;
    for i in 0..tries {
        let gw = if i % 2 == 0 { a } else { b };
        match gw.raw("GET", "/api/me", None, &[], b"").await.status {
            401 => served += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    served
}

#[tokio::test]
async fn when_redis_is_down_limits_fall_back_to_each_replica_and_it_keeps_serving() {
    // Nothing listens on port 1.
    let gw = Gateway::start(|c| {
        c.limits.user_chats_per_minute = 3;
        c.redis_url = Some("redis://127.0.0.1:1".into());
    })
    .await;
    let token = gw.register("fallback").await;
    assert_eq!(admitted_chats(&gw, &gw, &token, 6).await, 3);
    assert!(!gw.app.limiter.shared_ok(), "the fallback is visible");
}
