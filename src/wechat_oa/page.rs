//! The pages the bot's replies link to: `GET /a/{token}` (one answer, refreshing
//! every 3 s while it is being written) and `GET /a/h/{token}` (the user's recent
//! answers). Plain UTF-8 HTML, every text escaped, readable on a phone; the token in
//! the path is the only key (128 random bits), so the pages are not indexed and send
//! no referrer.

use http::header::{CACHE_CONTROL, HeaderValue};
use http::{Response, StatusCode};
use quick_xml::escape::escape;

use crate::app::App;
use crate::chat::store::{DONE, FAILED, STOPPED, STREAMING};
use crate::error::AppError;
use crate::response::{self, Body};

use super::store;

/// How many answers the history page lists.
const HISTORY_LEN: u64 = 20;

fn looks_like_token(token: &str) -> bool {
    !token.is_empty() && token.len() <= 64 && token.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// `GET /a/{token}`.
pub async fn answer(app: &App, token: &str) -> Result<Response<Body>, AppError> {
    if !looks_like_token(token) {
        return Ok(not_found());
    }
    let Some(row) = store::by_token(&app.db, token).await? else {
        return Ok(not_found());
    };
    let mut body = String::new();
    let refresh = match (&row.reply, &row.answer_id) {
        (Some(reply), _) => {
            paragraph(&mut body, "a", reply);
            false
        }
        (None, None) => {
            // The claiming delivery is starting the answer; if it never did (its
            // replica died meanwhile), stop refreshing after the longest answer time.
            let age_ms = crate::clock::unix_millis().saturating_sub(row.created_at);
            let given_up = age_ms / 1000 > app.config.limits.max_answer_secs as i64 + 60;
            let status = if given_up {
                "这个问题没能开始回答，请重新发送。"
            } else {
                "正在准备回答……"
            };
            paragraph(&mut body, "s", status);
            !given_up
        }
        (None, Some(answer_id)) => {
            let Some(answer) = store::answer(&app.db, answer_id).await? else {
                return Ok(not_found());
            };
            if let Some(question) = store::question_of(&app.db, &answer).await? {
                paragraph(&mut body, "q", &question);
            }
            let streaming = answer.status == STREAMING;
            // This replica may be producing it: its memory is fresher than the row.
            let content = match app.answers.get(answer_id) {
                Some(live) if streaming => live.content(),
                _ => answer.content,
            };
            paragraph(&mut body, "a", &content);
            let status = match answer.status.as_str() {
                STREAMING => "回答生成中，页面每 3 秒自动刷新……",
                DONE => "回答完毕。",
                STOPPED => "回答已停止。",
                FAILED => "回答中途出错，以上是已生成的部分。",
                _ => "",
            };
            paragraph(&mut body, "s", status);
            streaming
        }
    };
    Ok(html(StatusCode::OK, "回答", &body, refresh))
}

/// `GET /a/h/{token}`: the user's recent answers, newest first, each linking to its page.
pub async fn history(app: &App, token: &str) -> Result<Response<Body>, AppError> {
    if !looks_like_token(token) {
        return Ok(not_found());
    }
    let Some(session) = store::session_by_history_token(&app.db, token).await? else {
        return Ok(not_found());
    };
    let rows = store::recent(&app.db, session.user_id, HISTORY_LEN).await?;
    let mut body = String::from("<h1>最近的回答</h1>");
    if rows.is_empty() {
        paragraph(&mut body, "s", "还没有回答。");
    }
    body.push_str("<ol>");
    for row in rows {
        let Some(answer_id) = &row.answer_id else {
            continue;
        };
        let Some(answer) = store::answer(&app.db, answer_id).await? else {
            continue;
        };
        let question = store::question_of(&app.db, &answer)
            .await?
            .unwrap_or_default();
        let preview: String = answer.content.chars().take(80).collect();
        let more = if answer.content.chars().count() > 80 {
            "……"
        } else {
            ""
        };
        body.push_str(&format!(
            "<li><a href=\"/a/{}\">{}</a><div class=\"s\">{}{}</div></li>",
            escape(row.token.as_str()),
            escape(question.chars().take(60).collect::<String>().as_str()),
            escape(preview.as_str()),
            more
        ));
    }
    body.push_str("</ol>");
    Ok(html(StatusCode::OK, "最近的回答", &body, false))
}

fn paragraph(out: &mut String, class: &str, text: &str) {
    out.push_str(&format!(
        "<div class=\"{class}\">{}</div>",
        escape(text.trim())
    ));
}

fn not_found() -> Response<Body> {
    html(
        StatusCode::NOT_FOUND,
        "找不到",
        "<div class=\"s\">链接无效或已过期。</div>",
        false,
    )
}

const STYLE: &str = "body{font:16px/1.6 -apple-system,BlinkMacSystemFont,'PingFang SC','Microsoft YaHei',sans-serif;\
max-width:720px;margin:0 auto;padding:16px;color:#222;background:#f6f6f6}\
h1{font-size:18px}.q{color:#555;border-left:3px solid #07c160;padding-left:8px;margin-bottom:12px;white-space:pre-wrap}\
.a{white-space:pre-wrap;overflow-wrap:anywhere;background:#fff;padding:12px;border-radius:8px}\
.s{color:#888;font-size:14px;margin-top:8px;overflow-wrap:anywhere}li{margin-bottom:12px}a{color:#576b95}";

fn html(status: StatusCode, title: &str, body: &str, refresh: bool) -> Response<Body> {
    let refresh = if refresh {
        "<meta http-equiv=\"refresh\" content=\"3\">"
    } else {
        ""
    };
    let page = format!(
        "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{refresh}\
         <meta name=\"robots\" content=\"noindex\"><title>{}</title><style>{STYLE}</style></head>\
         <body>{body}</body></html>",
        escape(title)
    );
    let mut resp =
        response::with_content_type(status, "text/html; charset=utf-8", response::full(page));
    let h = resp.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-robots-tag", HeaderValue::from_static("noindex"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    resp
}
