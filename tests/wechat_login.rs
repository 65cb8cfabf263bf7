//! `POST /api/auth/wechat` against a simulated WeChat API: jscode2session is called
//! with the app's credentials, the same person gets the same account (linked by
//! unionid), the session key never reaches the client, and WeChat's error codes become
//! clear refusals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};

use common::Gateway;
use serde_json::{Value, json};

/// A WeChat API that knows a few codes; records the query strings it was sent.
async fn mock_wechat(seen: Arc<Mutex<Vec<String>>>) -> String {
    common::mock_json_api(move |call| {
        seen.lock()
            .unwrap()
            .push(format!("{}?{}", call.path, call.query));
        match call.param("js_code").unwrap_or_default() {
            "alice-1" | "alice-2" => {
                json!({"openid": "o-alice", "session_key": "SECRET-KEY", "unionid": "u-alice"})
            }
            "bob-1" => json!({"openid": "o-bob", "session_key": "SECRET-KEY"}),
            "busy" => json!({"errcode": 45011, "errmsg": "api minute-quota reach limit"}),
            _ => json!({"errcode": 40029, "errmsg": "invalid code"}),
        }
    })
    .await
}

#[tokio::test]
async fn wechat_login_creates_links_and_refuses_clearly() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let base = mock_wechat(Arc::clone(&seen)).await;
    let gw = Gateway::start(|c| {
        c.wechat.api_base = base.clone();
        c.wechat.mp_app_id = Some("wx-app".into());
        c.wechat.mp_app_secret = Some("wx-secret".into());
    })
    .await;
    let login = |code: &str| {
        let body = json!({ "code": code });
        let gw = &gw;
        async move { gw.json("POST", "/api/auth/wechat", None, &body).await }
    };
    let (status, first) = login("alice-1").await;
    assert_eq!(status, 200, "{first}");
    assert!(
        !first.to_string().contains("SECRET-KEY"),
        "the session key never leaves the server"
    );
    let (_, again) = login("alice-2").await;
    assert_eq!(
        first["user_id"], again["user_id"],
        "the same person, the same account"
    );
    let (_, bob) = login("bob-1").await;
    assert_ne!(bob["user_id"], first["user_id"]);
    let (status, me) = gw
        .json("GET", "/api/me", first["token"].as_str(), &Value::Null)
        .await;
    assert_eq!(status, 200);
    assert_eq!(me["id"], first["user_id"]);

    let query = seen.lock().unwrap()[0].clone();
    assert!(query.starts_with("/sns/jscode2session?"), "{query}");
    for part in [
        "appid=wx-app",
        "secret=wx-secret",
        "js_code=alice-1",
        "grant_type=authorization_code",
    ] {
        assert!(query.contains(part), "{query} lacks {part}");
    }

    let (status, body) = login("forged").await;
    assert_eq!((status, body["code"].as_i64()), (401, Some(-1)));
    let (status, body) = login("busy").await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (429, Some("rate_limited"))
    );
    let (status, body) = login("").await;
    assert_eq!((status, body["code"].as_i64()), (400, Some(10001)));

    // Not configured: a clear refusal, not a call to WeChat.
    let plain = Gateway::start(|_| {}).await;
    let (status, body) = plain
        .json(
            "POST",
            "/api/auth/wechat",
            None,
            &json!({"code": "alice-1"}),
        )
        .await;
    assert_eq!((status, body["code"].as_i64()), (400, Some(10001)));
}
