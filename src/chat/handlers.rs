//! `POST /api/chat`, the answer endpoints (`/api/messages/{id}`, `…/stream`, `…/stop`)
//! and the conversation history endpoints.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::Framing;
use super::answer::{Answer, Ending, Phase, Reader};
use super::frame_sse::Done;
use super::history::build_prompt;
use super::store::{self, NewTurn};
use super::task::{self, AnswerJob};
use crate::app::App;
use crate::auth::users;
use crate::error::{AppError, Refusal};
use crate::ledger::holds;
use crate::response::{self, Body};
use crate::upstream::UpstreamRequest;
use crate::upstream::chunk::Usage;

#[derive(Deserialize)]
struct ChatRequest {
    message: String,
    #[serde(default)]
    conversation_id: Option<String>,
    #[serde(default)]
    model: Option<String>,
}

/// `POST /api/chat`: errors before the stream are framed as the client asked.
pub async fn chat(app: &Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let framing = Framing::of(req.uri(), req.headers());
    match start_chat(app, req, framing).await {
        Ok(resp) => resp,
        Err(err) => framing.error_response(&err),
    }
}

async fn start_chat(
    app: &Arc<App>,
    req: Request<Incoming>,
    framing: Framing,
) -> Result<Response<Body>, AppError> {
    // Boxed: reading the body, the checks and the hold take ~4 KB of future, which is
    // freed once the answer has started, while an SSE request still waits here for the
    // upstream to open (at 2,000 streams opening at once, ~8 MB).
    let answer = Box::pin(accept_question(app, req)).await?;

    // SSE clients learn of an upstream that never answered through a real HTTP
    // status, so wait for the upstream to open before sending headers. Mini-program
    // clients always get 200 and heartbeats meanwhile.
    if framing == Framing::Sse
        && let Phase::Ended(Ending::Failed {
            error,
            before_open: true,
        }) = answer.opened().await
    {
        return Err(error);
    }
    let reader = answer.reader(framing, None, app.heartbeat());
    Ok(stream_response(framing, &answer, reader))
}

/// The question of a `POST /api/chat`, asked: its answer has started.
async fn accept_question(app: &Arc<App>, req: Request<Incoming>) -> Result<Arc<Answer>, AppError> {
    let user_id = app.tokens.user_of(req.headers())?;
    let body: ChatRequest =
        response::read_json(req.into_body(), app.config.limits.max_body_bytes).await?;
    start_turn(
        app,
        Turn {
            user_id,
            conversation_id: body.conversation_id.as_deref(),
            question: &body.message,
            model: body.model,
        },
    )
    .await
}

/// One question from a user, from whichever door it came in (`/api/chat`, the
/// Official Account bot).
pub struct Turn<'a> {
    pub user_id: i64,
    /// Continue this conversation (the user's own); `None` or empty starts a new one.
    pub conversation_id: Option<&'a str>,
    pub question: &'a str,
    /// `None`: the default model.
    pub model: Option<String>,
}

/// Checks the question and the limits, takes the hold (or a free message) with the
/// turn's rows in one transaction, and starts the answer task. The answer then lives on
/// without whoever asked; a refusal stores nothing.
pub async fn start_turn(app: &Arc<App>, turn: Turn<'_>) -> Result<Arc<Answer>, AppError> {
    let user_id = turn.user_id;
    let question = turn.question.trim();
    if question.is_empty() {
        return Err(AppError::bad_request("message 不能为空"));
    }
    let max_chars = app.config.limits.max_message_chars;
    if question.chars().count() > max_chars {
        return Err(too_long(max_chars));
    }
    app.words.check_input(question)?;
    let model = turn.model.unwrap_or_else(|| app.config.default_model());
    if !app.config.has_model(&model) {
        return Err(AppError::NotFound("模型不存在"));
    }
    let price = app.config.model(&model);
    // A place among open answers first: a chat refused for that does not use up the rate.
    let permit = app.limiter.open_stream(user_id)?;
    app.limiter.check_chat(user_id).await?;

    let (conversation_id, title, history, seq) =
        match turn.conversation_id.filter(|c| !c.is_empty()) {
            // Boxed, as every database call before the hold here: this future waits
            // through the hold (SQLite's queue) and would keep their room meanwhile.
            Some(id) => {
                Box::pin(async {
                    let conversation = store::conversation_of(&app.db, id, user_id)
                        .await?
                        .ok_or(AppError::NotFound("会话不存在"))?;
                    let (history, seq) = store::history(&app.db, &conversation.id).await?;
                    Ok::<_, AppError>((conversation.id, None, history, seq))
                })
                .await?
            }
            None => {
                let title: String = question.chars().take(40).collect();
                (store::new_id(), Some(title), Vec::new(), 0)
            }
        };

    let budget = price.context_tokens.saturating_sub(price.max_output_tokens);
    let bytes = question.len()
        + history
            .iter()
            .map(|t| t.question.len() + t.answer.len())
            .sum::<usize>();
    let (system, asked) = (app.config.system_prompt.clone(), question.to_string());
    let (messages, prompt_tokens) = crate::tokens::off_loop(bytes, move || {
        build_prompt(&system, &history, &asked, budget, crate::tokens::count)
    })
    .await?
    .ok_or_else(|| too_long(max_chars))?;

    // The hold (or free message) and the turn's rows commit together: a refusal
    // stores nothing, and no answer exists without its hold.
    // (The transaction's first statement must write: a SQLite transaction that reads
    // first fails at once, without waiting, when another writer got in between.)
    let answer_id = store::new_id();
    if crate::msg_sec_check::enabled(app) {
        Box::pin(async {
            let user = users::by_id(&app.db, user_id)
                .await?
                .ok_or(AppError::Unauthorized("账号不存在，请重新登录"))?;
            crate::msg_sec_check::check(app, user.mp_openid.as_deref(), question).await
        })
        .await?;
    }
    let day = app.config.today();
    let turn_rows = store::turn_statements(
        app.db.get_database_backend(),
        NewTurn {
            user_id,
            conversation_id: &conversation_id,
            new_conversation_title: title,
            seq,
            question,
            answer_id: &answer_id,
            model: &model,
        },
    );
    let grant = holds::take(
        &app.db,
        holds::Request {
            user_id,
            message_id: &answer_id,
            price: &price,
            prompt_tokens,
            max_tokens: price.max_output_tokens,
            free_per_day: app.config.free_messages_per_day,
            day: &day,
            with: turn_rows,
        },
    )
    .await?;

    let answer = Answer::new(answer_id, conversation_id, user_id);
    task::spawn(
        app,
        AnswerJob {
            answer: Arc::clone(&answer),
            request: UpstreamRequest {
                model: model.clone(),
                messages,
                max_tokens: grant.max_tokens,
                temperature: price.temperature,
            },
            model,
            hold: grant.hold,
            price,
        },
        permit,
    );
    Ok(answer)
}

fn too_long(max_chars: usize) -> AppError {
    AppError::Refused {
        reason: Refusal::InputTooLong,
        msg: format!("输入过长（上限 {max_chars} 字）"),
        retry_after_secs: None,
    }
}

fn stream_response(framing: Framing, answer: &Answer, reader: Reader) -> Response<Body> {
    let chunks = stream::unfold(reader, |mut reader| async move {
        reader.next_chunk().await.map(|chunk| (chunk, reader))
    });
    let mut resp = framing.response(response::stream(chunks));
    set_ids(&mut resp, &answer.conversation_id, &answer.message_id);
    resp
}

fn set_ids(resp: &mut Response<Body>, conversation_id: &str, message_id: &str) {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(conversation_id) {
        h.insert("x-conversation-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(message_id) {
        h.insert("x-message-id", v);
    }
}

/// `GET /api/messages/{id}`: one answer, as fresh as this replica knows it.
pub async fn get_message(
    app: &App,
    req: Request<Incoming>,
    id: &str,
) -> Result<Response<Body>, AppError> {
    let user_id = app.tokens.user_of(req.headers())?;
    let row = store::answer_of(&app.db, id, user_id)
        .await?
        .ok_or(AppError::NotFound("消息不存在"))?;
    let content = match app.answers.get(id) {
        Some(live) if row.status == store::STREAMING => live.content(),
        _ => row.content,
    };
    Ok(response::ok_json(&json!({
        "id": row.id,
        "conversation_id": row.conversation_id,
        "status": row.status,
        "content": content,
        "cost_micros": row.cost_micros,
    })))
}

/// `GET /api/messages/{id}/stream?offset=N`: the answer from code point N on, live
/// until done, in the framing the client asks for.
pub async fn stream_message(app: &Arc<App>, req: Request<Incoming>, id: &str) -> Response<Body> {
    let framing = Framing::of(req.uri(), req.headers());
    match resume(app, &req, id, framing).await {
        Ok(resp) => resp,
        Err(err) => framing.error_response(&err),
    }
}

async fn resume(
    app: &Arc<App>,
    req: &Request<Incoming>,
    id: &str,
    framing: Framing,
) -> Result<Response<Body>, AppError> {
    let user_id = app.tokens.user_of(req.headers())?;
    let offset = match query_param(req.uri().query(), "offset") {
        None => 0,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| AppError::bad_request("offset 必须是非负整数"))?,
    };
    // This replica is producing it: attach to the live answer.
    if let Some(answer) = app.answers.get(id).filter(|a| a.user_id == user_id) {
        let reader = answer.reader(framing, Some(offset), app.heartbeat());
        return Ok(stream_response(framing, &answer, reader));
    }
    let row = store::answer_of(&app.db, id, user_id)
        .await?
        .ok_or(AppError::NotFound("消息不存在"))?;
    // Ended, or produced by another replica: serve it from the database, following
    // its periodic flushes until it ends.
    let answer = Answer::new(row.id.clone(), row.conversation_id.clone(), user_id);
    answer.push(bytes::Bytes::new(), &row.content);
    let reader = answer.reader(framing, Some(offset), app.heartbeat());
    if row.status == store::STREAMING {
        let app = Arc::clone(app);
        let follower = Arc::clone(&answer);
        app.clone()
            .spawn(async move { follow_stored(&app, &follower).await });
    } else {
        answer.end(stored_ending(app, &row).await);
    }
    Ok(stream_response(framing, &answer, reader))
}

/// Mirrors a stored answer into `answer` until its row says it ended.
async fn follow_stored(app: &App, answer: &Answer) {
    let poll = Duration::from_secs_f64(app.config.answer_flush_secs);
    let give_up =
        tokio::time::Instant::now() + Duration::from_secs(app.config.limits.max_answer_secs + 60);
    loop {
        tokio::time::sleep(poll).await;
        if answer.readers() == 0 {
            // Everyone who wanted it left: stop polling the database.
            return;
        }
        let row = match store::answer_of(&app.db, &answer.message_id, answer.user_id).await {
            Ok(Some(row)) => row,
            Ok(None) => {
                answer.end(Ending::Failed {
                    error: AppError::NotFound("消息不存在"),
                    before_open: false,
                });
                return;
            }
            Err(error) => {
                answer.end(Ending::Failed {
                    error,
                    before_open: false,
                });
                return;
            }
        };
        let known = answer.content_len();
        if row.content.len() > known && row.content.is_char_boundary(known) {
            answer.push(bytes::Bytes::new(), &row.content[known..]);
        }
        if row.status != store::STREAMING || tokio::time::Instant::now() > give_up {
            answer.end(stored_ending(app, &row).await);
            return;
        }
    }
}

/// How a stored answer ended, as its readers are told.
async fn stored_ending(app: &App, row: &entity::message::Model) -> Ending {
    if row.status == store::FAILED {
        return Ending::Failed {
            error: AppError::Upstream {
                timeout: false,
                msg: "上游服务出错，回答不完整".into(),
            },
            before_open: false,
        };
    }
    let balance_micros = crate::auth::users::by_id(&app.db, row.user_id)
        .await
        .ok()
        .flatten()
        .map_or(0, |u| u.balance_micros);
    let prompt_tokens = row.prompt_tokens.max(0) as u64;
    let completion_tokens = row.completion_tokens.max(0) as u64;
    Ending::Done(Arc::new(Done {
        message_id: row.id.clone(),
        conversation_id: row.conversation_id.clone(),
        usage: Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        },
        cost_micros: row.cost_micros,
        balance_micros,
    }))
}

/// `POST /api/messages/{id}/stop`: stops generating; what was produced is kept and billed.
pub async fn stop_message(
    app: &App,
    req: Request<Incoming>,
    id: &str,
) -> Result<Response<Body>, AppError> {
    let user_id = app.tokens.user_of(req.headers())?;
    let row = store::answer_of(&app.db, id, user_id)
        .await?
        .ok_or(AppError::NotFound("消息不存在"))?;
    if row.status == store::STREAMING {
        store::request_stop(&app.db, id, user_id).await?;
        if let Some(answer) = app.answers.get(id) {
            answer.request_stop();
            // Answer with the stored result when this replica owns the answer.
            let _ = tokio::time::timeout(Duration::from_secs(10), answer.ended()).await;
        }
    }
    get_message(app, req, id).await
}

/// `GET /api/conversations`.
pub async fn list_conversations(
    app: &App,
    req: Request<Incoming>,
) -> Result<Response<Body>, AppError> {
    let user_id = app.tokens.user_of(req.headers())?;
    let rows = store::conversations_of(&app.db, user_id).await?;
    let list: Vec<_> = rows
        .into_iter()
        .map(|c| json!({"id": c.id, "title": c.title, "created_at": c.created_at, "updated_at": c.updated_at}))
        .collect();
    Ok(response::ok_json(&json!({ "conversations": list })))
}

/// `GET /api/conversations/{id}`: the conversation and its messages.
pub async fn get_conversation(
    app: &App,
    req: Request<Incoming>,
    id: &str,
) -> Result<Response<Body>, AppError> {
    let user_id = app.tokens.user_of(req.headers())?;
    let c = store::conversation_of(&app.db, id, user_id)
        .await?
        .ok_or(AppError::NotFound("会话不存在"))?;
    let messages: Vec<_> = store::messages_of(&app.db, &c.id)
        .await?
        .into_iter()
        .map(|m| {
            let content = match app.answers.get(&m.id) {
                Some(live) if m.status == store::STREAMING => live.content(),
                _ => m.content,
            };
            json!({
                "id": m.id, "role": m.role, "content": content, "status": m.status,
                "model": m.model, "cost_micros": m.cost_micros, "created_at": m.created_at,
            })
        })
        .collect();
    Ok(response::ok_json(&json!({
        "id": c.id, "title": c.title, "created_at": c.created_at, "updated_at": c.updated_at,
        "messages": messages,
    })))
}

/// `DELETE /api/conversations/{id}`.
pub async fn delete_conversation(
    app: &App,
    req: Request<Incoming>,
    id: &str,
) -> Result<Response<Body>, AppError> {
    let user_id = app.tokens.user_of(req.headers())?;
    if !store::delete_conversation(&app.db, id, user_id).await? {
        return Err(AppError::NotFound("会话不存在"));
    }
    Ok(response::json(StatusCode::OK, &json!({ "deleted": true })))
}

/// The value of `name` in a query string (no percent-decoding: values here are ASCII).
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns (a type's size: nothing is called).
    fn future_size<'a, F: std::future::Future>(
        _f: impl FnOnce(&'a Arc<App>, Request<Incoming>) -> F,
    ) -> usize {
        std::mem::size_of::<F>()
    }

    /// An SSE request keeps its future until the upstream opens — with thousands of
    /// streams opening at once, all of them together: the turn's work (kilobytes) is
    /// boxed and freed before that wait.
    #[test]
    fn a_chat_request_waiting_for_its_upstream_keeps_a_small_future() {
        let size = future_size(chat);
        assert!(size <= 1536, "the chat request's future is {size} bytes");
    }
}
