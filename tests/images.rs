//! Image generation: stored by the gateway under an unguessable name, served with the
//! right bytes and type, billed once through hold and settle, gone after expiry; an
//! upstream failure bills nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chatgate::config::{Channel, Config, ModelConfig};
use chatgate::mock_upstream::{Fault, MOCK_PNG, MockConfig, MockUpstream};
use common::Gateway;
use serde_json::{Value, json};

/// A gateway whose mock channel serves chat and `dall-e-3` at 40,000 micros an image.
async fn painting_gateway(mock: &MockUpstream, change: impl FnOnce(&mut Config)) -> Gateway {
    Gateway::start(|c| {
        c.channels = vec![Channel {
            models: vec!["gpt-4o-mini".into(), "dall-e-3".into()],
            ..Channel::new("mock", mock.base_url())
        }];
        c.models.insert(
            "dall-e-3".into(),
            ModelConfig {
                image_micros: 40_000,
                ..ModelConfig::default()
            },
        );
        change(c);
    })
    .await
}

#[tokio::test]
async fn images_are_kept_served_billed_once_and_expire() {
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let gw = painting_gateway(&mock, |c| c.images.ttl_secs = 1).await;
    let (token, user_id) = gw.register_with("painter", 200_000).await;
    let (status, made) = gw
        .json(
            "POST",
            "/api/images",
            Some(&token),
            &json!({"prompt": "a cat", "size": "512x512"}),
        )
        .await;
    assert_eq!(status, 200, "{made}");
    assert_eq!(made["cost_micros"], 40_000);
    assert_eq!(made["balance_micros"], 160_000);
    let sent = mock.last_request().unwrap();
    assert_eq!(sent.path, "/v1/images/generations");
    assert_eq!(
        (sent.body["prompt"].as_str(), sent.body["size"].as_str()),
        (Some("a cat"), Some("512x512"))
    );

    let url = made["images"][0]["url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with("/files/") && url.len() > "/files/".len() + 32,
        "unguessable: {url}"
    );
    let file = gw.raw("GET", &url, None, &[], b"").await;
    assert_eq!(file.status, 200);
    assert_eq!(file.header("content-type"), Some("image/png"));
    assert!(
        file.header("cache-control")
            .unwrap()
            .starts_with("public, max-age=")
    );
    assert_eq!(file.body(), MOCK_PNG);

    // An upstream that answers with a link: the gateway fetches and keeps the bytes.
    mock.set_config(MockConfig {
        image_as_url: true,
        ..MockConfig::default()
    });
    let (status, linked) = gw
        .json(
            "POST",
            "/api/images",
            Some(&token),
            &json!({"prompt": "a bird"}),
        )
        .await;
    assert_eq!(status, 200, "{linked}");
    let kept = gw
        .raw(
            "GET",
            linked["images"][0]["url"].as_str().unwrap(),
            None,
            &[],
            b"",
        )
        .await;
    assert_eq!(kept.body(), MOCK_PNG);
    assert_eq!(linked["balance_micros"], 120_000);

    // An upstream failure costs nothing.
    mock.set_config(MockConfig {
        fault: Fault::Status(500),
        ..MockConfig::default()
    });
    let (status, body) = gw
        .json(
            "POST",
            "/api/images",
            Some(&token),
            &json!({"prompt": "a dog"}),
        )
        .await;
    assert_eq!((status, body["code"].as_i64()), (502, Some(11000)));
    let (_, view) = gw
        .admin("GET", &format!("/admin/users/{user_id}"), &Value::Null)
        .await;
    assert_eq!(
        view["balance_micros"], 120_000,
        "billed once each, the failure not at all"
    );
    gw.assert_ledger_ok().await;

    // Not enough for another image: 101.
    mock.set_config(MockConfig::default());
    let (poor, _) = gw.register_with("poor-painter", 39_999).await;
    let (status, body) = gw
        .json("POST", "/api/images", Some(&poor), &json!({"prompt": "x"}))
        .await;
    assert_eq!((status, body["code"].as_i64()), (402, Some(101)));

    // Expired (ttl 1 s) and swept: gone.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(gw.raw("GET", &url, None, &[], b"").await.status, 404);
    assert!(chatgate::images::sweep(&gw.app).await.unwrap() >= 1);
    assert_eq!(
        gw.raw(
            "GET",
            "/files/0123456789abcdef0123456789abcdef.png",
            None,
            &[],
            b""
        )
        .await
        .status,
        404
    );
}

#[tokio::test]
async fn the_demo_model_draws_a_labelled_picture() {
    let gw = Gateway::start(|_| {}).await;
    let token = gw.register("demo-painter").await;
    let (status, made) = gw
        .json(
            "POST",
            "/api/images",
            Some(&token),
            &json!({"prompt": "<b>猫</b>"}),
        )
        .await;
    assert_eq!(status, 200, "{made}");
    let file = gw
        .raw(
            "GET",
            made["images"][0]["url"].as_str().unwrap(),
            None,
            &[],
            b"",
        )
        .await;
    assert_eq!(file.header("content-type"), Some("image/svg+xml"));
    let svg = file.text();
    assert!(svg.contains("演示模型") && svg.contains("&lt;b&gt;猫"));
}

#[tokio::test]
async fn an_image_takes_a_place_among_the_open_upstream_streams() {
    // A slow answer holds the only upstream stream.
    let mock = MockUpstream::start(MockConfig {
        chunks: 20,
        chunk_delay: std::time::Duration::from_millis(100),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let gw = painting_gateway(&mock, |c| c.limits.upstream_concurrent_streams = 1).await;
    let (token, _) = gw.register_with("busy-painter", 200_000).await;
    let body = json!({"message": "long"}).to_string();
    let mut answer = gw.open_chat(&token, &body, true).await;
    answer.next_chunk().await.unwrap();
    let (status, refused) = gw
        .json(
            "POST",
            "/api/images",
            Some(&token),
            &json!({"prompt": "a cat"}),
        )
        .await;
    assert_eq!(status, 429, "{refused}");
    assert_eq!(refused["reason"], "rate_limited");
    // Once the answer is over the place is free again.
    answer.read_all().await;
    let id = answer.header("x-message-id").unwrap();
    gw.wait_answer(&token, &id).await;
    let (status, made) = gw
        .json(
            "POST",
            "/api/images",
            Some(&token),
            &json!({"prompt": "a cat"}),
        )
        .await;
    assert_eq!(status, 200, "{made}");
    gw.assert_ledger_ok().await;
}
