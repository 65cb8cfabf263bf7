//! The legacy mini-program client (seed 003), run with `node` against the live gateway:
//! with one callback per HTTP chunk and with callbacks that merge several chunks, it
//! must assemble exactly the upstream's text and reach done.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chatgate::config::Channel;
use chatgate::mock_upstream::{self, Fault, MockConfig, MockUpstream};
use common::Gateway;
use serde_json::Value;

fn node_available() -> bool {
    std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run_legacy(gw: &Gateway, token: &str, message: &str, mode: &str, seed: u64) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/legacy_client.mjs");
    let out = std::process::Command::new("node")
        .args([
            script,
            "127.0.0.1",
            &gw.addr.port().to_string(),
            token,
            message,
            mode,
            &seed.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_client_assembles_the_exact_answer() {
    if !node_available() {
        eprintln!("skipped: node is not installed");
        return;
    }
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let gw = Gateway::start(|c| {
        c.channels = vec![Channel::new("mock", mock.base_url())];
        c.default_model = Some("gpt-4o-mini".into());
    })
    .await;
    let token = gw.register("legacy").await;
    for seed in 1..=6u64 {
        mock.set_config(MockConfig {
            split_seed: Some(seed),
            chunks: 20 + seed as usize * 10,
            ..MockConfig::default()
        });
        let message = format!("legacy {seed}: error success 0 \\ \"x\" 你好 😀");
        let expected = mock_upstream::answer_for(&message);
        for mode in ["per-chunk", "merged"] {
            let gw_ref = &gw;
            let (token, message) = (token.clone(), message.clone());
            let state =
                tokio::task::block_in_place(|| run_legacy(gw_ref, &token, &message, mode, seed));
            assert_eq!(state["text"], expected.as_str(), "{mode} seed {seed}");
            assert_eq!(state["done"], true, "{mode} seed {seed}");
            assert!(state["error"].is_null(), "{mode} seed {seed}: {state}");
        }
    }

    // An error mid-answer reaches the legacy client as an error it can read.
    mock.set_config(MockConfig {
        fault: Fault::InBandErrorAfter(3),
        ..MockConfig::default()
    });
    let gw_ref = &gw;
    let state = tokio::task::block_in_place(|| run_legacy(gw_ref, &token, "boom", "per-chunk", 1));
    assert_eq!(state["error"]["code"], 11000, "{state}");
    assert_eq!(state["done"], true);
}
