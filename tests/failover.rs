//! The upstream pool: a dead channel fails over to the next; keys rotate round-robin;
//! a key answering 401 is taken out of rotation for good (and shown to the admin); 429
//! moves on to the next key; a hang before the first byte and a stall mid-stream hit
//! their timeouts as 11000.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use chatgate::mock_upstream::{self, Fault, MockConfig, MockUpstream};
use common::{Gateway, parse_mp, parse_sse};
use serde_json::{Value, json};

#[tokio::test]
async fn dead_channels_and_bad_keys_are_skipped_and_healthy_keys_share_the_load() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mock = MockUpstream::start(MockConfig {
        key_faults: HashMap::from([
            ("k-revoked".to_string(), Fault::Status(401)),
            ("k-busy".to_string(), Fault::Status(429)),
        ]),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let gw = Gateway::start(|c| {
        c.channels = vec![
            common::pool_channel("dead", format!("http://{closed}/v1"), &["k-dead"], 0),
            common::pool_channel(
                "live",
                mock.base_url(),
                &["k-revoked", "k1", "k-busy", "k2"],
                1,
            ),
        ];
    })
    .await;
    let token = gw.register("pool").await;
    for n in 0..30 {
        let message = format!("q{n}");
        let resp = gw
            .chat(&token, &json!({ "message": message }), n % 2 == 0)
            .await;
        let content = if n % 2 == 0 {
            parse_mp(&resp.chunks).content
        } else {
            parse_sse(&resp.body()).content
        };
        assert_eq!(
            content,
            mock_upstream::answer_for(&message),
            "chat {n} served by the live channel"
        );
    }
    let mut used: HashMap<String, usize> = HashMap::new();
    for r in mock.requests() {
        *used
            .entry(r.bearer().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        used.get("k-revoked"),
        Some(&1),
        "a 401 key is never used again: {used:?}"
    );
    let (k1, k2) = (used["k1"], used["k2"]);
    assert_eq!(k1 + k2, 30);
    assert!(k1.abs_diff(k2) <= 1, "round-robin within ±1: {used:?}");
    assert!(used["k-busy"] >= 2, "a 429 key stays in rotation: {used:?}");

    let (status, view) = gw.admin("GET", "/admin/channels", &Value::Null).await;
    assert_eq!(status, 200);
    let revoked: Vec<&Value> = view["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["revoked"] == true)
        .collect();
    assert_eq!(revoked.len(), 1, "{view}");
    assert_eq!(revoked[0]["channel"], "live");
    assert!(
        !view.to_string().contains("k-revoked"),
        "keys are shown only by their start"
    );

    // The operator sees the failovers and the eviction in /metrics.
    let admin_token = gw.app.admin_token.clone();
    let metrics = gw
        .raw("GET", "/metrics", Some(&admin_token), &[], b"")
        .await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    };
    assert!(value("chatgate_upstream_keys_revoked_total{channel=\"live\"}") >= 1.0);
    assert!(value("chatgate_upstream_failovers_total{channel=\"dead\"}") >= 30.0);
    assert!(value("chatgate_requests_total{route=\"POST /api/chat\",status=\"200\"}") >= 30.0);
    assert!(text.contains("chatgate_open_holds 0"));
    assert!(text.contains("chatgate_answer_seconds_bucket"));
    let anonymous = gw.raw("GET", "/metrics", None, &[], b"").await;
    assert_eq!(anonymous.status, 401);
}

#[tokio::test]
async fn a_hang_before_the_first_byte_and_a_stall_mid_stream_hit_their_timeouts() {
    let mock = MockUpstream::start(MockConfig {
        fault: Fault::HangBeforeHeaders,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let gw = Gateway::start(|c| {
        c.channels = vec![common::pool_channel("slow", mock.base_url(), &[], 0)];
        c.upstream.first_byte_timeout_secs = 0.3;
        c.upstream.idle_timeout_secs = 0.3;
    })
    .await;
    let token = gw.register("patient").await;
    let resp = gw.chat(&token, &json!({"message": "hi"}), false).await;
    assert_eq!(resp.status, 504);
    let body: Value = serde_json::from_slice(&resp.body()).unwrap();
    assert_eq!(body["code"], 11000);

    mock.set_config(MockConfig {
        fault: Fault::StallAfter(2),
        ..MockConfig::default()
    });
    let mp = parse_mp(
        &gw.chat(&token, &json!({"message": "hi"}), true)
            .await
            .chunks,
    );
    assert_eq!(mp.error.unwrap()["code"], 11000);
    assert!(
        !mp.content.is_empty(),
        "what was sent before the stall is kept"
    );

    // The idle timeout counts silence, not the answer's length: pieces every 0.15 s for
    // ~0.9 s in all pass a 0.3 s idle timeout.
    mock.set_config(MockConfig {
        chunks: 6,
        chunk_delay: std::time::Duration::from_millis(150),
        ..MockConfig::default()
    });
    let mp = parse_mp(
        &gw.chat(&token, &json!({"message": "hi"}), true)
            .await
            .chunks,
    );
    assert!(mp.error.is_none(), "{:?}", mp.error);
    assert!(mp.done.is_some(), "the slow answer completes");
    gw.assert_ledger_ok().await;
}

/// A minimal SOCKS5 proxy (no auth, CONNECT only) that sends every connection to
/// `target` and records the host names it was asked for.
async fn socks5_proxy(
    target: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = asked.clone();
    tokio::spawn(async move {
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 2];
                client.read_exact(&mut head).await.unwrap();
                let mut methods = vec![0u8; head[1] as usize];
                client.read_exact(&mut methods).await.unwrap();
                client.write_all(&[5, 0]).await.unwrap();
                let mut req = [0u8; 4];
                client.read_exact(&mut req).await.unwrap();
                assert_eq!(&req[..3], &[5, 1, 0], "a CONNECT request");
                let host = match req[3] {
                    3 => {
                        let len = client.read_u8().await.unwrap();
                        let mut name = vec![0u8; len as usize];
                        client.read_exact(&mut name).await.unwrap();
                        String::from_utf8(name).unwrap()
                    }
                    1 => {
                        let mut ip = [0u8; 4];
                        client.read_exact(&mut ip).await.unwrap();
                        std::net::Ipv4Addr::from(ip).to_string()
                    }
                    other => panic!("address type {other}"),
                };
                let _port = client.read_u16().await.unwrap();
                seen.lock().unwrap().push(host);
                client
                    .write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0])
                    .await
                    .unwrap();
                let mut upstream = tokio::net::TcpStream::connect(target).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, asked)
}

#[tokio::test]
async fn a_channel_reaches_its_upstream_through_its_http_or_socks5_proxy() {
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let (socks, asked) = socks5_proxy(mock.addr()).await;
    // `.invalid` never resolves: an answer proves the request went through the proxy.
    let mut via_http =
        common::pool_channel("via-http", "http://upstream.invalid/v1".into(), &["k"], 0);
    via_http.proxy = Some(format!("http://{}", mock.addr()));
    let mut via_socks =
        common::pool_channel("via-socks", "http://socks.invalid/v1".into(), &["k"], 1);
    via_socks.proxy = Some(format!("socks5h://{socks}"));
    for (name, ch) in [("http", via_http), ("socks5", via_socks)] {
        let gw = Gateway::start(|c| c.channels = vec![ch]).await;
        let token = gw.register("proxied").await;
        let resp = gw.chat(&token, &json!({"message": name}), true).await;
        assert_eq!(
            parse_mp(&resp.chunks).content,
            mock_upstream::answer_for(name),
            "served through the {name} proxy"
        );
    }
    assert_eq!(mock.requests().len(), 2);
    assert_eq!(*asked.lock().unwrap(), vec!["socks.invalid".to_string()]);
}
