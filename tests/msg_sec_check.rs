//! WeChat's `msg_sec_check` v2 on mini-program users' questions, against a simulated
//! WeChat API: risky → 102 `content_blocked` and nothing stored; pass → served; the
//! API unavailable → served or refused by `safety.fail_open`; the (stable) access token
//! is fetched once and a new one forced when WeChat says it expired; users without an openid are
//! not sent to WeChat.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};

use common::{Gateway, parse_mp};
use serde_json::{Value, json};

#[derive(Default)]
struct Seen {
    token: common::StableToken,
    checks: Vec<Value>,
    /// The next check answers "token expired" once.
    expire_next: bool,
}

/// A WeChat API: jscode2session, cgi-bin/stable_token and wxa/msg_sec_check.
async fn mock_wechat(seen: Arc<Mutex<Seen>>) -> String {
    common::mock_json_api(move |call| {
        let mut s = seen.lock().unwrap();
        match call.path.as_str() {
            "/sns/jscode2session" => json!({"openid": "o-user", "session_key": "k"}),
            "/cgi-bin/stable_token" => s.token.answer(call.json()),
            "/wxa/msg_sec_check" => {
                let sent = call.json();
                s.checks.push(sent.clone());
                let content = sent["content"].as_str().unwrap_or_default();
                if s.expire_next {
                    s.expire_next = false;
                    json!({"errcode": 42001, "errmsg": "access_token expired"})
                } else if call.param("access_token") != Some(s.token.current().as_str()) {
                    json!({"errcode": 40001, "errmsg": "invalid credential"})
                } else if content.contains("down") {
                    json!({"errcode": -1, "errmsg": "system error"})
                } else if content.contains("risky") {
                    json!({"errcode": 0, "errmsg": "ok", "result": {"suggest": "risky", "label": 20001}})
                } else {
                    json!({"errcode": 0, "errmsg": "ok", "result": {"suggest": "pass", "label": 100}})
                }
            }
            _ => json!({"errcode": 404}),
        }
    })
    .await
}

async fn gateway(api_base: String, fail_open: bool) -> Gateway {
    Gateway::start(move |c| {
        c.wechat.api_base = api_base;
        c.wechat.mp_app_id = Some("wx-mini".into());
        c.wechat.mp_app_secret = Some("mini-secret".into());
        c.safety.msg_sec_check = true;
        c.safety.fail_open = fail_open;
        c.free_messages_per_day = 100;
    })
    .await
}

async fn wechat_user(gw: &Gateway) -> String {
    let (status, body) = gw
        .json("POST", "/api/auth/wechat", None, &json!({"code": "c1"}))
        .await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn risky_questions_are_refused_and_others_served() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let gw = gateway(mock_wechat(Arc::clone(&seen)).await, true).await;
    let token = wechat_user(&gw).await;

    let risky = gw
        .chat(&token, &json!({"message": "something risky"}), true)
        .await;
    let err = parse_mp(&risky.chunks).error.unwrap();
    assert_eq!(
        (err["code"].as_i64(), err["reason"].as_str()),
        (Some(102), Some("content_blocked"))
    );
    let sse = gw
        .chat(&token, &json!({"message": "also risky"}), false)
        .await;
    assert_eq!(sse.status, 403);
    assert_eq!(
        gw.message_count().await,
        0,
        "a refused question stores nothing"
    );

    let fine = gw.chat(&token, &json!({"message": "hello"}), true).await;
    let fine = parse_mp(&fine.chunks);
    assert!(fine.done.is_some() && !fine.content.is_empty());

    {
        let s = seen.lock().unwrap();
        assert_eq!(s.checks.len(), 3);
        assert_eq!(s.checks[2]["openid"], "o-user");
        assert_eq!(s.checks[2]["version"], 2);
        assert_eq!(s.checks[2]["content"], "hello");
        assert_eq!(s.token.requests.len(), 1, "the access token is cached");
    }

    // WeChat says the token expired: the stable token comes back the same, so a new one
    // is forced (once), and the question is checked again with it.
    seen.lock().unwrap().expire_next = true;
    let again = gw
        .chat(&token, &json!({"message": "hello again"}), true)
        .await;
    assert!(parse_mp(&again.chunks).done.is_some());
    {
        let s = seen.lock().unwrap();
        assert_eq!((s.token.requests.len(), s.token.number), (3, 2));
    }

    // A password user has no openid: nothing is sent to WeChat.
    let before = seen.lock().unwrap().checks.len();
    let plain = gw.register("no-openid").await;
    let served = gw
        .chat(&plain, &json!({"message": "risky words"}), true)
        .await;
    assert!(parse_mp(&served.chunks).done.is_some());
    assert_eq!(seen.lock().unwrap().checks.len(), before);
    gw.assert_ledger_ok().await;
}

#[tokio::test]
async fn when_the_check_is_unavailable_fail_open_decides() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let api = mock_wechat(Arc::clone(&seen)).await;

    let open = gateway(api.clone(), true).await;
    let token = wechat_user(&open).await;
    let served = open
        .chat(&token, &json!({"message": "api down"}), true)
        .await;
    assert!(parse_mp(&served.chunks).done.is_some(), "fail-open serves");

    let closed = gateway(api, false).await;
    let token = wechat_user(&closed).await;
    let refused = closed
        .chat(&token, &json!({"message": "api down"}), true)
        .await;
    assert!(
        parse_mp(&refused.chunks).error.is_some(),
        "fail-closed refuses"
    );
    assert_eq!(closed.message_count().await, 0);
}
