//! Content safety through the HTTP surface: a listed word in a question is refused with
//! 102 `content_blocked` and stores nothing; a listed word in an answer — split across
//! upstream pieces — cuts the answer just before it, in both framings, and the answer is
//! billed for what was shown only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chatgate::config::Config;
use chatgate::mock_upstream::{MockConfig, MockUpstream};
use common::{Gateway, parse_mp, parse_sse};
use serde_json::json;

const MODEL: &str = "gpt-4o-mini";
const BEFORE: &str = "这是一段正常的回答，接下来";
const AFTER: &str = "以及后面不该出现的内容。";

/// One micro per output token, prompts free, at most 100 output tokens.
fn priced(config: &mut Config, mock: &MockUpstream) {
    common::one_micro_per_output_token(config, mock, MODEL);
    config.safety.words = vec!["违禁词".into(), "Forbidden Thing".into()];
}

/// An answer with the listed word in the middle, one character per upstream piece
/// (so the word spans three pieces).
async fn mock_with_word() -> MockUpstream {
    let answer = format!("{BEFORE}违禁词{AFTER}");
    MockUpstream::start(MockConfig {
        chunks: answer.chars().count(),
        answer: Some(answer),
        ..MockConfig::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_question_with_a_listed_word_is_refused_and_stores_nothing() {
    let mock = mock_with_word().await;
    let gw = Gateway::start(|c| priced(c, &mock)).await;
    let (token, user_id) = gw.register_with("asker", 1000).await;
    for mp in [false, true] {
        let resp = gw
            .chat(
                &token,
                &json!({"message": "please say a FORBIDDEN thing"}),
                mp,
            )
            .await;
        let err = if mp {
            assert_eq!(resp.status, 200);
            parse_mp(&resp.chunks).error.unwrap()
        } else {
            assert_ne!(resp.status, 200);
            serde_json::from_slice(&resp.body()).unwrap()
        };
        assert_eq!(
            (err["code"].as_i64(), err["reason"].as_str()),
            (Some(102), Some("content_blocked"))
        );
    }
    assert_eq!(gw.message_count().await, 0);
    let (_, user) = gw
        .admin("GET", &format!("/admin/users/{user_id}"), &json!({}))
        .await;
    assert_eq!(user["balance_micros"], 1000);
    gw.assert_ledger_ok().await;
}

#[tokio::test]
async fn an_answer_is_cut_before_a_listed_word_split_across_pieces_and_billed_for_what_was_shown() {
    let mock = mock_with_word().await;
    let gw = Gateway::start(|c| priced(c, &mock)).await;
    let (token, user_id) = gw.register_with("reader", 1000).await;
    let shown_tokens = chatgate::tokens::count(BEFORE) as i64;
    let full_tokens = chatgate::tokens::count(&format!("{BEFORE}违禁词{AFTER}")) as i64;
    assert!(shown_tokens < full_tokens);

    let mp = gw.chat(&token, &json!({"message": "hi"}), true).await;
    let parsed = parse_mp(&mp.chunks);
    assert_eq!(parsed.content, BEFORE);
    let err = parsed.error.expect("the cut is told in-band");
    assert_eq!(err["reason"], "content_blocked");
    assert!(parsed.terminal);

    let sse = gw.chat(&token, &json!({"message": "hi"}), false).await;
    assert_eq!(sse.status, 200);
    let parsed = parse_sse(&sse.body());
    assert_eq!(parsed.content, BEFORE);
    assert!(!parsed.data.iter().any(|d| d.contains('违')));
    assert_eq!(parsed.error.unwrap()["reason"], "content_blocked");

    // Stored as shown, billed for what was shown (1 micro per token; prompts free).
    let id = mp.header("x-message-id").unwrap().to_string();
    let stored = gw.wait_answer(&token, &id).await;
    assert_eq!(stored["content"], BEFORE);
    assert_eq!(stored["status"], "stopped");
    assert_eq!(stored["cost_micros"], shown_tokens);
    let (_, user) = gw
        .admin("GET", &format!("/admin/users/{user_id}"), &json!({}))
        .await;
    assert_eq!(user["balance_micros"], 1000 - 2 * shown_tokens);
    gw.assert_ledger_ok().await;
}

#[tokio::test]
async fn a_clean_answer_arrives_whole_with_a_word_list_configured() {
    let answer =
        "你好，这是一个完全正常的回答。Forbidden stuff aside, a thing is fine.".to_string();
    let mock = MockUpstream::start(MockConfig {
        chunks: answer.chars().count(),
        answer: Some(answer.clone()),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let gw = Gateway::start(|c| priced(c, &mock)).await;
    let (token, _) = gw.register_with("clean", 1000).await;
    let mp = parse_mp(
        &gw.chat(&token, &json!({"message": "hi"}), true)
            .await
            .chunks,
    );
    assert_eq!(mp.content, answer);
    assert!(mp.done.is_some() && mp.error.is_none());
    let sse = parse_sse(
        &gw.chat(&token, &json!({"message": "hi"}), false)
            .await
            .body(),
    );
    assert_eq!(sse.content, answer);
    assert!(sse.done.is_some());
    gw.assert_ledger_ok().await;
}

#[tokio::test]
async fn the_openai_api_stream_is_cut_before_a_listed_word_too() {
    let mock = mock_with_word().await;
    let gw = Gateway::start(|c| priced(c, &mock)).await;
    let (token, user_id) = gw.register_with("api-user", 1000).await;
    let (status, created) = gw
        .json("POST", "/api/keys", Some(&token), &json!({"name": "t"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    let request = json!({
        "model": MODEL,
        "stream": true,
        "messages": [{"role": "user", "content": "hi"}],
    })
    .to_string();
    let resp = gw
        .raw(
            "POST",
            "/v1/chat/completions",
            Some(&key),
            &[],
            request.as_bytes(),
        )
        .await;
    assert_eq!(resp.status, 200);
    let parsed = parse_sse(&resp.body());
    assert_eq!(parsed.content, BEFORE);
    assert!(!parsed.data.iter().any(|d| d.contains('违')));
    assert!(
        parsed.data.iter().any(|d| d.contains("content_blocked")),
        "{:?}",
        parsed.data
    );
    // The question side: refused in OpenAI's shape.
    let refused = json!({"model": MODEL, "messages": [{"role": "user", "content": "违禁词?"}]});
    let (status, body) = gw
        .json("POST", "/v1/chat/completions", Some(&key), &refused)
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "content_blocked");
    // Billed for what was shown: 1 micro per output token.
    let shown_tokens = chatgate::tokens::count(BEFORE) as i64;
    // (Settled by the server task right after the stream ends.)
    for _ in 0..50 {
        let (_, user) = gw
            .admin("GET", &format!("/admin/users/{user_id}"), &json!({}))
            .await;
        if user["balance_micros"] == 1000 - shown_tokens {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, after) = gw
        .admin("GET", &format!("/admin/users/{user_id}"), &json!({}))
        .await;
    assert_eq!(after["balance_micros"], 1000 - shown_tokens, "{after}");
    gw.assert_ledger_ok().await;
}
