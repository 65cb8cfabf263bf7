//! The WeChat Official Account bot: `GET /wechat/oa` (the server check) and
//! `POST /wechat/oa` (messages, plain or safe mode), answered inside WeChat's five
//! seconds, and the pages `GET /a/{token}` / `GET /a/h/{token}` its replies link to.
//!
//! # One answer per message, across replicas
//! WeChat delivers each message (`MsgId`) up to `oa_deliveries` times, `oa_wechat_timeout_ms`
//! apart, to whichever replica the load balancer picks. The first delivery inserts the
//! message's row in `oa_messages` (unique per openid + MsgId): the insert is the claim,
//! and only its winner calls [`start_turn`] (one upstream call, one hold). It writes the
//! answer id (or, for a refusal, the reply text) into the row. Every other delivery
//! counts itself in the row (`deliveries`, so every replica knows which delivery is the
//! last), waits for the answer id if the claimer is still starting, and follows the
//! answer: in memory when this replica produces it, else by reading the `messages` row,
//! which the producing replica flushes as the answer grows.
//!
//! # Riding the retries
//! A delivery waits up to `oa_reply_deadline_ms` for the answer. Done → it replies with
//! the answer (cut at `oa_reply_max_bytes` with a link when longer). Not done and not the
//! last delivery → it holds the request past WeChat's timeout, so WeChat gives up on it
//! and delivers again (answering anything, even empty, would stop the retries). Not
//! done on the last delivery → it replies with what is there and the link `/a/{token}`.
//!
//! # Push mode (`oa_push`)
//! The first delivery replies `success` at once (after a refusal: the refusal text) and
//! a task sends the answer through `message/custom/send` when it is done ([`push`]).

pub mod crypto;
pub mod page;
pub mod push;
pub mod store;
pub mod text;
pub mod xml;

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::app::App;
use crate::chat::answer::{Ending, Phase};
use crate::chat::handlers::{Turn, start_turn};
use crate::chat::store::STREAMING;
use crate::error::AppError;
use crate::response::{self, Body};
use crypto::SafeMode;
use store::Claim;
use xml::Fields;

/// What a delivery answers WeChat.
#[derive(Debug)]
enum Reply {
    /// A text message to the user.
    Text(String),
    /// `success`: received, nothing to say, do not retry.
    Success,
    /// Nothing, after holding the request past WeChat's timeout (WeChat retries).
    Retry,
}

/// The query of a webhook call.
struct Query {
    signature: String,
    timestamp: String,
    nonce: String,
    echostr: String,
    msg_signature: String,
}

impl Query {
    fn parse(query: Option<&str>) -> Self {
        let get = |name: &str| {
            query
                .unwrap_or_default()
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| {
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8_lossy()
                        .into_owned()
                })
                .unwrap_or_default()
        };
        Query {
            signature: get("signature"),
            timestamp: get("timestamp"),
            nonce: get("nonce"),
            echostr: get("echostr"),
            msg_signature: get("msg_signature"),
        }
    }

    /// `signature` = sha1(sort(token, timestamp, nonce)).
    fn signed_by(&self, token: &str) -> bool {
        !self.timestamp.is_empty()
            && !self.nonce.is_empty()
            && crypto::verify(&self.signature, &[token, &self.timestamp, &self.nonce])
    }
}

fn oa_token(app: &App) -> Result<&str, AppError> {
    app.config
        .wechat
        .oa_token
        .as_deref()
        .filter(|t| !t.is_empty())
        .ok_or(AppError::NotFound("未配置公众号（[wechat] oa_token）"))
}

fn bad_signature() -> AppError {
    AppError::Unauthorized("签名无效")
}

/// `GET /wechat/oa`: WeChat checks the server; echo `echostr` when the signature holds.
pub async fn verify(app: &App, req: Request<Incoming>) -> Result<Response<Body>, AppError> {
    let token = oa_token(app)?;
    let query = Query::parse(req.uri().query());
    if !query.signed_by(token) {
        return Err(bad_signature());
    }
    Ok(response::with_content_type(
        StatusCode::OK,
        "text/plain; charset=utf-8",
        response::full(query.echostr),
    ))
}

/// One incoming message, opened (decrypted in safe mode) and checked.
struct Message {
    fields: Fields,
    /// The user (`FromUserName`).
    openid: String,
    /// The account (`ToUserName`).
    account: String,
    /// Set in safe mode: the reply is encrypted too.
    safe: Option<SafeMode>,
}

/// `POST /wechat/oa`: a message from a user. The signature is checked before the
/// body is read; a body that is too large or not the XML WeChat sends is a 400.
pub async fn receive(app: &Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, AppError> {
    let arrival = Instant::now();
    let token = oa_token(app)?;
    let query = Query::parse(req.uri().query());
    if !query.signed_by(token) {
        return Err(bad_signature());
    }
    let base = public_base(app, req.headers());
    let body = response::read_body(req.into_body(), app.config.wechat.oa_max_body_bytes).await?;
    let message = open(app, token, &query, &body)?;
    // From here on the message is WeChat's: whatever goes wrong, the user gets a text
    // (a body that is not a reply shows them "该公众号暂时无法提供服务").
    let reply = match dispatch(app, &message, &base, arrival).await {
        Ok(reply) => reply,
        Err(error) => {
            error.log();
            Reply::Text(text::refusal(&error))
        }
    };
    Ok(render(token, &query, &message, reply))
}

fn open(app: &App, token: &str, query: &Query, body: &[u8]) -> Result<Message, AppError> {
    let text =
        std::str::from_utf8(body).map_err(|_| AppError::bad_request("请求体不是有效的 UTF-8"))?;
    let bad_xml = |e: xml::XmlError| AppError::BadRequest(format!("XML 无效: {e}"));
    let outer = xml::parse(text).map_err(bad_xml)?;
    let (fields, safe) = match outer.non_empty("Encrypt") {
        Some(encrypted) => {
            let w = &app.config.wechat;
            let (Some(key), Some(app_id)) = (&w.oa_encoding_aes_key, &w.oa_app_id) else {
                return Err(AppError::bad_request(
                    "收到加密消息，但未配置 oa_encoding_aes_key",
                ));
            };
            let mode = SafeMode::new(key, app_id).map_err(AppError::internal)?;
            if !crypto::verify(
                &query.msg_signature,
                &[token, &query.timestamp, &query.nonce, encrypted],
            ) {
                return Err(bad_signature());
            }
            let inner = mode
                .decrypt(encrypted)
                .map_err(|e| AppError::BadRequest(format!("解密失败: {e}")))?;
            (xml::parse(&inner).map_err(bad_xml)?, Some(mode))
        }
        None => (outer, None),
    };
    let openid = fields
        .non_empty("FromUserName")
        .ok_or_else(|| AppError::bad_request("缺少 FromUserName"))?
        .trim()
        .to_string();
    if fields.non_empty("MsgType").is_none() {
        return Err(AppError::bad_request("缺少 MsgType"));
    }
    let account = fields.get("ToUserName").unwrap_or_default().to_string();
    if openid.len() > 128 {
        return Err(AppError::bad_request("FromUserName 过长"));
    }
    Ok(Message {
        fields,
        openid,
        account,
        safe,
    })
}

/// The reply as WeChat reads it: the text message XML (encrypted in safe mode),
/// `success`, or nothing.
fn render(token: &str, query: &Query, message: &Message, reply: Reply) -> Response<Body> {
    let text = match reply {
        Reply::Text(text) => text,
        Reply::Success => return plain("success"),
        Reply::Retry => return plain(""),
    };
    let now = crate::clock::unix_millis() / 1000;
    let xml = xml::text_reply(&message.openid, &message.account, now, &text);
    let body = match &message.safe {
        None => xml,
        Some(mode) => {
            let encrypted = mode.encrypt(&xml);
            let timestamp = now.to_string();
            let nonce = if query.nonce.is_empty() {
                store::new_token()
            } else {
                query.nonce.clone()
            };
            let signature = crypto::signature(&[token, &timestamp, &nonce, &encrypted]);
            xml::encrypted_reply(&encrypted, &signature, &timestamp, &nonce)
        }
    };
    response::with_content_type(
        StatusCode::OK,
        "application/xml; charset=utf-8",
        response::full(body),
    )
}

fn plain(body: &'static str) -> Response<Body> {
    response::with_content_type(
        StatusCode::OK,
        "text/plain; charset=utf-8",
        response::full(body),
    )
}

/// The base of links sent to users: `public_url`, else the request's `Host` with the
/// scheme from `X-Forwarded-Proto` (`http` without it).
fn public_base(app: &App, headers: &HeaderMap) -> String {
    if let Some(url) = &app.config.public_url {
        return url.trim_end_matches('/').to_string();
    }
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let host = header("host")
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let scheme = match header("x-forwarded-proto") {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}")
}

async fn dispatch(
    app: &Arc<App>,
    message: &Message,
    base: &str,
    arrival: Instant,
) -> Result<Reply, AppError> {
    let f = &message.fields;
    let msg_type = f.get("MsgType").unwrap_or_default().trim();
    match msg_type {
        "text" => {
            on_text(
                app,
                message,
                f.get("Content").unwrap_or_default(),
                base,
                arrival,
            )
            .await
        }
        // With speech recognition on, WeChat sends the words along: a question too.
        "voice" if f.non_empty("Recognition").is_some() => {
            let words = f.get("Recognition").unwrap_or_default();
            on_text(app, message, words, base, arrival).await
        }
        "event" => {
            let event = f.get("Event").unwrap_or_default().trim();
            if event.eq_ignore_ascii_case("subscribe") {
                Ok(Reply::Text(app.config.wechat.oa_welcome.clone()))
            } else {
                Ok(Reply::Success)
            }
        }
        "image" | "voice" | "video" | "shortvideo" | "location" | "link" | "file" => {
            Ok(Reply::Text(text::ONLY_TEXT.into()))
        }
        _ => Ok(Reply::Success),
    }
}

async fn on_text(
    app: &Arc<App>,
    message: &Message,
    content: &str,
    base: &str,
    arrival: Instant,
) -> Result<Reply, AppError> {
    let w = &app.config.wechat;
    match text::command(content, w.oa_command_only) {
        text::Command::Help | text::Command::NotACommand => {
            Ok(Reply::Text(text::help(w.oa_command_only)))
        }
        text::Command::Chat("") => Ok(Reply::Text(text::EMPTY_QUESTION.into())),
        text::Command::New => {
            let user = user_of(app, message).await?;
            store::session(&app.db, user.id).await?;
            store::set_conversation(&app.db, user.id, None).await?;
            Ok(Reply::Text(text::NEW_CONVERSATION.into()))
        }
        text::Command::History => {
            let user = user_of(app, message).await?;
            let session = store::session(&app.db, user.id).await?;
            Ok(Reply::Text(text::history(&format!(
                "{base}/a/h/{}",
                session.history_token
            ))))
        }
        text::Command::Chat(question) => ask(app, message, question, base, arrival).await,
    }
}

async fn user_of(app: &App, message: &Message) -> Result<entity::user::Model, AppError> {
    let unionid = message
        .fields
        .non_empty("UnionId")
        .or_else(|| message.fields.non_empty("unionid"));
    store::user_for(&app.db, &message.openid, unionid).await
}

/// A question: claim its message, start (or follow) its one answer, and reply as the
/// delivery's place among WeChat's retries allows.
async fn ask(
    app: &Arc<App>,
    message: &Message,
    question: &str,
    base: &str,
    arrival: Instant,
) -> Result<Reply, AppError> {
    let w = &app.config.wechat;
    // Text messages carry a MsgId; without one, WeChat's advice is sender + CreateTime.
    let msg_id = match message.fields.non_empty("MsgId") {
        Some(id) => id.trim().chars().take(64).collect::<String>(),
        None => format!(
            "t{}",
            message.fields.get("CreateTime").unwrap_or_default().trim()
        ),
    };
    let user = user_of(app, message).await?;
    // Claiming and starting run as their own task: WeChat hanging up on this delivery
    // must not leave a claim without its answer.
    let claimed = {
        let (app, openid, msg_id, question) = (
            Arc::clone(app),
            message.openid.clone(),
            msg_id.clone(),
            question.to_string(),
        );
        app.tasks.clone().spawn(async move {
            match store::claim(&app.db, &openid, &msg_id, user.id).await? {
                Claim::First(row) => {
                    let started = begin(&app, &row, user.id, &question).await;
                    Ok::<_, AppError>((row, Some(started)))
                }
                Claim::Again(row) => Ok((row, None)),
            }
        })
    };
    let (row, started) = claimed
        .await
        .map_err(|e| AppError::internal(format!("claim task: {e}")))??;
    let delivery = match started {
        Some(Ok(answer)) if w.oa_push => {
            push::spawn(
                app,
                message.openid.clone(),
                answer,
                format!("{base}/a/{}", row.token),
            );
            return Ok(Reply::Success);
        }
        Some(Ok(_)) => 1,
        Some(Err(refusal)) => return Ok(Reply::Text(refusal)),
        None => u32::try_from(row.deliveries).unwrap_or(u32::MAX),
    };
    let link = format!("{base}/a/{}", row.token);
    let deadline = arrival + Duration::from_millis(w.oa_reply_deadline_ms);
    let last = delivery >= w.oa_deliveries;
    let cap = w.oa_reply_max_bytes;

    // A later delivery may find the claimer still starting the answer.
    let mut row = row;
    let answer_id = loop {
        if let Some(reply) = row.reply.clone() {
            return Ok(Reply::Text(reply));
        }
        if let Some(id) = row.answer_id.clone() {
            break Some(id);
        }
        if w.oa_push {
            // The claimer replies and pushes; a repeat delivery only acknowledges.
            return Ok(Reply::Success);
        }
        if Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        row = store::message_row(&app.db, &message.openid, &msg_id)
            .await?
            .ok_or_else(|| AppError::internal("claimed official account message vanished"))?;
    };
    if w.oa_push {
        return Ok(Reply::Success);
    }
    let state = match &answer_id {
        Some(id) => follow(app, id, deadline).await?,
        None => State::Running(String::new()),
    };
    match state {
        State::Done(content) => Ok(Reply::Text(text::finished(&content, &link, cap))),
        State::Failed(content) => Ok(Reply::Text(text::failed(&content, &link, cap))),
        State::Running(so_far) if last => Ok(Reply::Text(text::unfinished(&so_far, &link, cap))),
        State::Running(_) => {
            // Not the last delivery: say nothing until WeChat has given up on this one.
            let held = Duration::from_millis(w.oa_wechat_timeout_ms.saturating_mul(2));
            tokio::time::sleep_until(arrival + held).await;
            Ok(Reply::Retry)
        }
    }
}

/// Starts the answer of a claimed message in the user's current conversation and
/// records it in the claim row; a refusal is recorded instead (and returned as the
/// text to reply), so every delivery gives the same.
async fn begin(
    app: &Arc<App>,
    row: &entity::oa_message::Model,
    user_id: i64,
    question: &str,
) -> Result<Arc<crate::chat::answer::Answer>, String> {
    let started = async {
        let session = store::session(&app.db, user_id).await?;
        let current = store::current_conversation(&session, app.config.wechat.oa_session_idle_secs);
        let turn = |conversation_id| Turn {
            user_id,
            conversation_id,
            question,
            model: None,
        };
        let answer = match start_turn(app, turn(current)).await {
            // The conversation was deleted (through the API): start a new one.
            Err(AppError::NotFound(_)) if current.is_some() => start_turn(app, turn(None)).await,
            other => other,
        }?;
        store::set_answer(&app.db, row.id, &answer.message_id).await?;
        store::set_conversation(&app.db, user_id, Some(&answer.conversation_id)).await?;
        Ok::<_, AppError>(answer)
    };
    match started.await {
        Ok(answer) => Ok(answer),
        Err(error) => {
            error.log();
            let reply = text::refusal(&error);
            if let Err(e) = store::set_reply(&app.db, row.id, &reply).await {
                tracing::warn!(error = %e.msg(), "storing an official account refusal failed");
            }
            Err(reply)
        }
    }
}

/// Where an answer is.
enum State {
    Done(String),
    Failed(String),
    Running(String),
}

/// Follows answer `answer_id` until it ends or `deadline` passes: in memory when this
/// replica produces it, else through its row in the database.
async fn follow(app: &App, answer_id: &str, deadline: Instant) -> Result<State, AppError> {
    let poll = Duration::from_secs_f64(app.config.answer_flush_secs.clamp(0.02, 0.25));
    loop {
        if let Some(live) = app.answers.get(answer_id) {
            return Ok(
                match tokio::time::timeout_at(deadline, live.ended()).await {
                    Ok(Ending::Done(_)) => State::Done(live.content()),
                    Ok(Ending::Failed { .. }) => State::Failed(live.content()),
                    Err(_) => match live.phase() {
                        Phase::Ended(Ending::Done(_)) => State::Done(live.content()),
                        Phase::Ended(Ending::Failed { .. }) => State::Failed(live.content()),
                        _ => State::Running(live.content()),
                    },
                },
            );
        }
        let row = store::answer(&app.db, answer_id)
            .await?
            .ok_or_else(|| AppError::internal("official account answer vanished"))?;
        if row.status != STREAMING {
            return Ok(if row.status == crate::chat::store::FAILED {
                State::Failed(row.content)
            } else {
                State::Done(row.content)
            });
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(State::Running(row.content));
        }
        tokio::time::sleep(poll.min(deadline - now)).await;
    }
}
