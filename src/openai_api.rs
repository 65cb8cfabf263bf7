//! The OpenAI-compatible API for third-party clients with a user's API key:
//! `GET /v1/models` and `POST /v1/chat/completions`, stream and non-stream, with
//! OpenAI's own request and response bodies (unknown fields pass through to the
//! channel) and OpenAI's error shape, so the official SDKs behave as usual.
//!
//! Billing is the same as `/api/chat` (hold before, settle once after, never bill an
//! upstream error). Unlike `/api/chat` an API client cannot re-attach, so the answer
//! belongs to the connection: when the client goes away the upstream is cancelled at
//! once and the prompt plus what was received is billed.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CACHE_CONTROL, HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::app::App;
use crate::auth::{api_keys, users};
use crate::chat::store::{self, Finished};
use crate::error::{AppError, Refusal};
use crate::ledger::holds::{self, Hold, Settlement};
use crate::ledger::pricing;
use crate::response::{self, Body};
use crate::tokens;
use crate::upstream::chunk::{self, Chunk, Usage};
use crate::upstream::demo::{self, DemoEvents};
use crate::upstream::{ChatMessage, EventSource};

/// An error in OpenAI's shape `{"error":{"message","type","code"}}`.
pub fn error(err: &AppError) -> Response<Body> {
    err.log();
    let (status, kind, code) = match err {
        AppError::Unauthorized(_) => (
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
        ),
        AppError::InsufficientBalance => (
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_quota",
            "insufficient_balance",
        ),
        AppError::Refused { reason, .. } => match reason {
            Refusal::RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "rate_limit_exceeded",
            ),
            Refusal::QuotaExhausted => (
                StatusCode::TOO_MANY_REQUESTS,
                "insufficient_quota",
                "insufficient_quota",
            ),
            Refusal::ContentBlocked => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "content_blocked",
            ),
            Refusal::InputTooLong => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "context_length_exceeded",
            ),
        },
        AppError::NotFound(_) => (
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
        ),
        AppError::BadRequest(_) | AppError::Conflict(_) => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
        ),
        AppError::Upstream { timeout, .. } => (
            if *timeout {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::BAD_GATEWAY
            },
            "api_error",
            "upstream_error",
        ),
        // The upstream refused what the client sent (its parameters travel as given).
        AppError::UpstreamRejected(_) => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "upstream_rejected",
        ),
        AppError::Internal(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "internal_error",
        ),
    };
    let mut resp = response::json(
        status,
        &json!({"error": {"message": err.msg(), "type": kind, "code": code, "param": null}}),
    );
    if let Some(secs) = err.retry_after_secs() {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// `GET /v1/models`: the models this gateway serves.
pub async fn models(app: &App, req: Request<Incoming>) -> Response<Body> {
    if let Err(e) = api_keys::user_of(&app.db, req.headers()).await {
        return error(&e);
    }
    let mut names: Vec<String> = if app.config.demo_mode() {
        vec![crate::config::DEMO_MODEL.to_string()]
    } else {
        app.config
            .channels
            .iter()
            .flat_map(|c| c.models.iter().cloned())
            .chain(app.config.models.keys().cloned())
            .chain(std::iter::once(app.config.default_model()))
            .filter(|m| app.config.has_model(m))
            .collect()
    };
    names.sort();
    names.dedup();
    let data: Vec<Value> = names
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "chatgate"}))
        .collect();
    response::ok_json(&json!({"object": "list", "data": data}))
}

/// What a settlement needs besides the outcome.
struct Billing {
    hold: Hold,
    /// Held until the answer is settled.
    _permit: crate::limits::StreamPermit,
    message_id: String,
    model: String,
    price: crate::config::ModelConfig,
    started: Instant,
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(app: &Arc<App>, req: Request<Incoming>) -> Response<Body> {
    match start(app, req).await {
        Ok(resp) => resp,
        Err(e) => error(&e),
    }
}

async fn start(app: &Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, AppError> {
    let user_id = api_keys::user_of(&app.db, req.headers()).await?;
    let mut body: Value =
        response::read_json(req.into_body(), app.config.limits.max_body_bytes).await?;
    if !body.is_object() {
        return Err(AppError::bad_request("request body must be a JSON object"));
    }
    let model = body["model"]
        .as_str()
        .ok_or_else(|| AppError::bad_request("`model` is required"))?
        .to_string();
    let messages = prompt_messages(&body["messages"])?;
    for m in messages.iter().filter(|m| m.role == "user") {
        app.words.check_input(&m.content)?;
    }
    if !app.config.has_model(&model) {
        return Err(AppError::NotFound(
            "The model does not exist or you do not have access to it.",
        ));
    }
    let price = app.config.model(&model);
    let permit = app.limiter.open_stream(user_id)?;
    app.limiter.check_chat(user_id).await?;
    if body["n"].as_u64().is_some_and(|n| n > 1) {
        return Err(AppError::bad_request("`n` greater than 1 is not supported"));
    }
    let stream = body["stream"].as_bool() == Some(true);
    let client_wants_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
    let bytes = messages.iter().map(|m| m.content.len()).sum();
    let prompt_tokens = if bytes <= tokens::OFF_LOOP_BYTES {
        prompt_cost(messages.iter().map(|m| m.content.as_str()))
    } else {
        let texts: Vec<String> = messages.iter().map(|m| m.content.clone()).collect();
        tokens::off_loop(bytes, move || prompt_cost(texts.iter().map(String::as_str))).await?
    };
    let budget = price.context_tokens.saturating_sub(price.max_output_tokens);
    if prompt_tokens > budget {
        return Err(AppError::Refused {
            reason: Refusal::InputTooLong,
            msg: format!(
                "This model's context budget is {budget} prompt tokens; the messages hold {prompt_tokens}."
            ),
            retry_after_secs: None,
        });
    }
    let max_key = if body.get("max_completion_tokens").is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let requested = body[max_key].as_u64().unwrap_or(price.max_output_tokens);
    let max_tokens = requested.min(price.max_output_tokens).max(1);

    // The hold is written alone (API answers keep no conversation); its first statement writes.
    let user = users::by_id(&app.db, user_id)
        .await?
        .ok_or(AppError::Unauthorized("API 密钥无效或已撤销"))?;
    let day = app.config.today();
    let message_id = store::new_id();
    let grant = holds::take(
        &app.db,
        holds::Request {
            user_id: user.id,
            message_id: &message_id,
            price: &price,
            prompt_tokens,
            max_tokens,
            free_per_day: app.config.free_messages_per_day,
            day: &day,
            with: Vec::new(),
        },
    )
    .await?;
    let billing = Billing {
        hold: grant.hold,
        _permit: permit,
        message_id: message_id.clone(),
        model: model.clone(),
        price: price.clone(),
        started: Instant::now(),
    };

    body[max_key] = json!(grant.max_tokens);
    if body.get("temperature").is_none()
        && let Some(t) = price.temperature
    {
        body["temperature"] = json!(t);
    }
    if let Some(obj) = body.as_object_mut() {
        obj.remove("stream_options");
    }

    // Everything after the hold runs on a server task: a client that leaves at any
    // moment stops the upstream, but can never leave the hold unsettled.
    let (reply_tx, reply_rx) = oneshot::channel();
    let task_app = Arc::clone(app);
    app.spawn(async move {
        let job = Job {
            body,
            messages,
            billing,
            stream,
            client_wants_usage,
        };
        answer(task_app, job, reply_tx).await;
    });
    reply_rx
        .await
        .unwrap_or_else(|_| Err(AppError::internal("the answer task ended without a reply")))
}

/// One `/v1` answer after its hold was taken.
struct Job {
    body: Value,
    messages: Vec<ChatMessage>,
    billing: Billing,
    stream: bool,
    client_wants_usage: bool,
}

/// Produces the answer, replies with the response (or the error) and always settles.
async fn answer(app: Arc<App>, job: Job, reply: oneshot::Sender<Result<Response<Body>, AppError>>) {
    let Job {
        body,
        messages,
        billing,
        stream,
        client_wants_usage,
    } = job;
    if !stream {
        let _ = reply.send(complete_whole(&app, body, &messages, billing).await);
        return;
    }
    let source = if app.upstream.is_demo() {
        EventSource::Demo(DemoEvents::new(
            &billing.model,
            &messages,
            Duration::from_millis(app.config.demo_chunk_delay_ms),
        ))
    } else {
        match app.upstream.send(&billing.model, body, true).await {
            Ok((response, channel)) => {
                EventSource::Http(Box::new(app.upstream.events(response, channel)))
            }
            Err(e) => {
                settle(&app, &billing, "", Usage::default(), true, "").await;
                let _ = reply.send(Err(e));
                return;
            }
        }
    };
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    let chunks =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
    let mut resp = response::with_content_type(
        StatusCode::OK,
        "text/event-stream; charset=utf-8",
        response::stream(chunks),
    );
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    // If the client already left, the response (and its receiver) is dropped here and
    // the relay stops at its first event.
    let _ = reply.send(Ok(resp));
    relay(&app, source, tx, client_wants_usage, billing).await;
}

/// The prompt's messages as text (string contents, or the text parts of an array).
fn prompt_messages(messages: &Value) -> Result<Vec<ChatMessage>, AppError> {
    let list = messages
        .as_array()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| AppError::bad_request("`messages` must be a non-empty array"))?;
    list.iter()
        .map(|m| {
            let role = match m["role"].as_str() {
                Some("system") | Some("developer") => "system",
                Some("assistant") => "assistant",
                Some("tool") => "tool",
                Some("user") => "user",
                _ => return Err(AppError::bad_request("each message needs a `role`")),
            };
            let content = match &m["content"] {
                Value::String(s) => s.clone(),
                Value::Array(parts) => parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
                _ => String::new(),
            };
            Ok(ChatMessage { role, content })
        })
        .collect()
}

/// A non-streamed completion: the upstream's own JSON, relayed as it is.
async fn complete_whole(
    app: &App,
    body: Value,
    messages: &[ChatMessage],
    billing: Billing,
) -> Result<Response<Body>, AppError> {
    let (bytes, text, usage) = if app.upstream.is_demo() {
        let question = messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map_or("", |m| m.content.as_str());
        let answer = demo::answer_for(question);
        let usage = Usage {
            prompt_tokens: billing.hold.prompt_tokens,
            completion_tokens: tokens::count(&answer),
            total_tokens: billing.hold.prompt_tokens + tokens::count(&answer),
        };
        let v = json!({
            "id": "chatcmpl-demo", "object": "chat.completion", "created": crate::clock::unix_secs(),
            "model": billing.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": usage,
        });
        (Bytes::from(v.to_string()), answer, Some(usage))
    } else {
        let model = billing.model.clone();
        let fetched = async {
            let (response, _) = app.upstream.send(&model, body, false).await?;
            let timeout = Duration::from_secs(app.config.limits.max_answer_secs);
            match tokio::time::timeout(timeout, response.bytes()).await {
                Ok(Ok(bytes)) => Ok(bytes),
                Ok(Err(_)) => Err(AppError::Upstream {
                    timeout: false,
                    msg: "上游服务连接中断".into(),
                }),
                Err(_) => Err(AppError::Upstream {
                    timeout: true,
                    msg: "上游服务响应超时".into(),
                }),
            }
        }
        .await;
        let bytes = match fetched {
            Ok(bytes) => bytes,
            Err(e) => {
                settle(app, &billing, "", Usage::default(), true, "").await;
                return Err(e);
            }
        };
        let parsed: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let text = parsed["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let usage = serde_json::from_value::<Usage>(parsed["usage"].clone()).ok();
        (bytes, text, usage)
    };
    let usage = usage.unwrap_or_else(|| counted(&billing, &text));
    settle(app, &billing, &text, usage, false, "").await;
    Ok(response::with_content_type(
        StatusCode::OK,
        "application/json",
        response::full(bytes),
    ))
}

/// Our count of a prompt made of `contents`.
fn prompt_cost<'a>(contents: impl Iterator<Item = &'a str>) -> u64 {
    contents
        .map(|c| tokens::count(c) + tokens::PER_MESSAGE_OVERHEAD)
        .sum::<u64>()
        + tokens::PER_PROMPT_OVERHEAD
}

/// Usage by our own count when the upstream reports none.
fn counted(billing: &Billing, text: &str) -> Usage {
    let completion_tokens = tokens::count(text);
    Usage {
        prompt_tokens: billing.hold.prompt_tokens,
        completion_tokens,
        total_tokens: billing.hold.prompt_tokens + completion_tokens,
    }
}

/// Reads the upstream and forwards its events to the client until the end, an
/// upstream failure, or the client leaving (then the upstream is dropped at once).
async fn relay(
    app: &App,
    mut source: EventSource,
    tx: mpsc::Sender<Bytes>,
    client_wants_usage: bool,
    billing: Billing,
) {
    // What the client was shown (the word list may hold the tail back or cut it).
    let mut text = String::new();
    let mut usage = None;
    let mut failed = false;
    let mut blocked = false;
    let mut gate = app.words.gate();
    let mut ready: Vec<Bytes> = Vec::new();
    let channel = source.channel().to_string();
    // Bounded like every answer; a client that stops reading is treated as gone.
    let deadline = Instant::now() + Duration::from_secs(app.config.limits.max_answer_secs);
    let send_timeout = Duration::from_secs_f64(app.config.upstream.idle_timeout_secs);
    let send = |data: Bytes| {
        let tx = &tx;
        async move {
            let mut out = BytesMut::with_capacity(data.len() + 8);
            crate::chat::frame_sse::write_event(&mut out, &data);
            matches!(
                tokio::time::timeout(send_timeout, tx.send(out.freeze())).await,
                Ok(Ok(()))
            )
        }
    };
    let mut chunks = chunk::ChunkReader::default();
    'events: loop {
        // A client that leaves while the upstream is silent is noticed at once too.
        let next = tokio::select! {
            next = source.next() => next,
            _ = tx.closed() => break,
            _ = tokio::time::sleep_until(deadline) => break,
        };
        let event = match next {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(e) => {
                failed = true;
                let body = json!({"error": {"message": e.msg(), "type": "api_error", "code": "upstream_error"}});
                send(Bytes::from(body.to_string())).await;
                break;
            }
        };
        let mut forward: Option<Bytes> = Some(event.data.clone());
        let mut content = None;
        match chunks.read(&event.data) {
            Ok(Chunk::Done) => break,
            Ok(Chunk::Delta {
                content: c,
                usage: u,
                ..
            }) => {
                content = c;
                if u.is_some() {
                    usage = u;
                    if !client_wants_usage {
                        forward = without_usage(&event.data);
                    }
                }
            }
            Ok(Chunk::Error { message }) => {
                tracing::warn!(%channel, %message, "upstream sent an error mid-answer");
                failed = true;
            }
            Err(_) => {}
        }
        if let Some(data) = forward {
            let piece = content.as_deref().unwrap_or_default();
            let verdict = gate.offer(data, piece, |raw, shown| {
                text.push_str(shown);
                ready.push(if raw.is_empty() {
                    cut_chunk(&billing, shown)
                } else {
                    raw
                });
            });
            for data in ready.drain(..) {
                if !send(data).await {
                    // The client left: stop reading (dropping the source cancels the
                    // upstream request) and bill the prompt plus what was received.
                    break 'events;
                }
            }
            if verdict == crate::safety::Verdict::Blocked {
                blocked = true;
                let err = crate::safety::blocked();
                let body = json!({"error": {"message": err.msg(), "type": "invalid_request_error", "code": "content_blocked"}});
                send(Bytes::from(body.to_string())).await;
                break;
            }
        }
        if failed {
            break;
        }
    }
    drop(source);
    gate.flush(|raw, shown| {
        text.push_str(shown);
        ready.push(raw);
    });
    for data in ready.drain(..) {
        if !send(data).await {
            break;
        }
    }
    let _ = tokio::time::timeout(
        send_timeout,
        tx.send(Bytes::from_static(b"data: [DONE]\n\n")),
    )
    .await;
    // A cut answer is billed for what was shown, whatever the upstream counted.
    let usage = match usage {
        Some(usage) if !blocked => usage,
        _ => counted(&billing, &text),
    };
    settle(app, &billing, &text, usage, failed, &channel).await;
}

/// A chunk carrying `text`: the part of an upstream event shown before a listed word.
fn cut_chunk(billing: &Billing, text: &str) -> Bytes {
    let chunk = json!({
        "id": format!("chatcmpl-{}", billing.message_id),
        "object": "chat.completion.chunk",
        "created": 0,
        "model": billing.model,
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}],
    });
    Bytes::from(chunk.to_string())
}

/// A usage chunk the client did not ask for: dropped when it carries nothing else,
/// else forwarded without its `usage`.
fn without_usage(data: &[u8]) -> Option<Bytes> {
    let mut v: Value = serde_json::from_slice(data).ok()?;
    let has_choices = v["choices"].as_array().is_some_and(|c| !c.is_empty());
    if !has_choices {
        return None;
    }
    v.as_object_mut()?.remove("usage");
    Some(Bytes::from(v.to_string()))
}

async fn settle(
    app: &App,
    billing: &Billing,
    text: &str,
    usage: Usage,
    failed: bool,
    channel: &str,
) {
    let cost_micros = if failed {
        0
    } else {
        pricing::cost(&billing.price, &usage)
    };
    let status = if failed { store::FAILED } else { store::DONE };
    let settlement = Settlement {
        hold: &billing.hold,
        message_id: &billing.message_id,
        model: &billing.model,
        channel,
        usage,
        cost_micros,
        failed,
        first_token_ms: None,
        total_ms: billing.started.elapsed().as_millis() as i64,
        answer: Finished {
            status,
            content: text,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cost_micros,
            error_code: failed.then_some(11000),
        },
    };
    for attempt in 1..=5u64 {
        match holds::settle(&app.db, &settlement).await {
            Ok(_) => return,
            Err(e) => {
                tracing::error!(error = %e.msg(), attempt, "settling an API answer failed");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn usage_is_removed_only_where_it_was() {
        assert_eq!(
            super::without_usage(br#"{"choices":[],"usage":{"total_tokens":3}}"#),
            None
        );
        let kept = super::without_usage(
            br#"{"choices":[{"delta":{"content":"x"}}],"usage":{"total_tokens":3}}"#,
        )
        .unwrap();
        assert!(!String::from_utf8_lossy(&kept).contains("usage"));
        assert!(String::from_utf8_lossy(&kept).contains("\"x\""));
    }
}
