//! The built-in demo model: when no upstream is configured it streams a canned,
//! clearly labelled answer in the OpenAI chunk format, so the whole product (framing,
//! storage, billing, clients) can be tried without any key.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::ChatMessage;
use super::sse::SseEvent;

/// The demo model's answer to `question`: a fixed, labelled text quoting the question.
pub fn answer_for(question: &str) -> String {
    let quoted: String = question.chars().take(60).collect();
    let ellipsis = if question.chars().count() > 60 {
        "…"
    } else {
        ""
    };
    format!(
        "【演示模型】你好！这是 chatgate 内置的演示模型（demo），它没有连接真正的大模型，\
         回答是预先写好的。\n\n你刚才说：「{quoted}{ellipsis}」\n\n要接入真实模型，请设置环境变量 \
         CHATGATE_UPSTREAM_BASE_URL 和 CHATGATE_UPSTREAM_API_KEYS，或在配置文件里添加 [[channels]]。\n\n\
         This is chatgate's built-in demo model: no real model is connected, so this answer is canned. 😀"
    )
}

/// Characters per streamed piece of the demo answer.
const PIECE_CHARS: usize = 4;

pub struct DemoEvents {
    events: std::vec::IntoIter<Bytes>,
    delay: Duration,
    next_at: Instant,
}

impl DemoEvents {
    pub fn new(model: &str, messages: &[ChatMessage], delay: Duration) -> Self {
        let question = messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| m.content.as_str())
            .unwrap_or_default();
        let answer = answer_for(question);
        let chars: Vec<char> = answer.chars().collect();
        let pieces: Vec<String> = chars
            .chunks(PIECE_CHARS)
            .map(|c| c.iter().collect())
            .collect();
        let prompt_tokens: u64 = messages
            .iter()
            .map(|m| crate::tokens::count(&m.content) + crate::tokens::PER_MESSAGE_OVERHEAD)
            .sum::<u64>()
            + crate::tokens::PER_PROMPT_OVERHEAD;
        let completion_tokens = crate::tokens::count(&answer);
        let chunk = |delta: serde_json::Value, finish: Option<&str>| {
            let v = serde_json::json!({
                "id": "chatcmpl-demo",
                "object": "chat.completion.chunk",
                "created": crate::clock::unix_secs(),
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            });
            Bytes::from(v.to_string())
        };
        let mut events = vec![chunk(
            serde_json::json!({"role": "assistant", "content": ""}),
            None,
        )];
        events.extend(
            pieces
                .iter()
                .map(|p| chunk(serde_json::json!({ "content": p }), None)),
        );
        events.push(chunk(serde_json::json!({}), Some("stop")));
        events.push(Bytes::from(
            serde_json::json!({
                "id": "chatcmpl-demo",
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            })
            .to_string(),
        ));
        events.push(Bytes::from_static(b"[DONE]"));
        Self {
            events: events.into_iter(),
            delay,
            next_at: Instant::now() + delay,
        }
    }

    /// The next event, paced by the configured delay. Cancel-safe: the pace is kept
    /// in `next_at`, not in the future.
    pub async fn next(&mut self) -> Option<SseEvent> {
        tokio::time::sleep_until(self.next_at).await;
        self.next_at = Instant::now() + self.delay;
        self.events
            .next()
            .map(|data| SseEvent { event: None, data })
    }
}
