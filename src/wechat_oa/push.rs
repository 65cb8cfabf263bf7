//! Push mode: the answer is sent through the customer-service API
//! (`POST {api_base}/cgi-bin/message/custom/send?access_token=…`) once it is done, the
//! delivery having been answered `success` at once.
//!
//! If sending the answer fails, a short message with the link to the answer page is
//! sent instead (it fits where the answer did not, and needs nothing from the answer);
//! if that fails too, the failure is logged — the user already got `success`, and the
//! answer stays on its page and in `/history`.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::app::App;
use crate::chat::answer::{Answer, Ending};
use crate::wechat_token::is_token_error;

use super::text;

/// Sends `answer` to `openid` when it is done (a task on the server's tracker).
pub fn spawn(app: &Arc<App>, openid: String, answer: Arc<Answer>, link: String) {
    let app = Arc::clone(app);
    let tasks = app.tasks.clone();
    tasks.spawn(async move {
        let ending = answer.ended().await;
        let cap = app.config.wechat.oa_reply_max_bytes;
        let content = answer.content();
        let message = match ending {
            Ending::Done(_) => text::finished(&content, &link, cap),
            Ending::Failed { .. } => text::failed(&content, &link, cap),
        };
        if let Err(first) = send_text(&app, &openid, &message).await {
            tracing::warn!(error = %first, message_id = %answer.message_id, "pushing an answer failed; pushing its link");
            let fallback = format!("回答已生成，请打开查看：{link}");
            if let Err(second) = send_text(&app, &openid, &fallback).await {
                tracing::error!(error = %second, message_id = %answer.message_id, "pushing the link failed too; the answer is on its page");
            }
        }
    });
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ApiAnswer {
    errcode: i64,
    errmsg: String,
}

/// Sends one text message; a rejected access token is dropped and the send retried once
/// with a fresh one.
pub async fn send_text(app: &App, openid: &str, content: &str) -> Result<(), String> {
    let w = &app.config.wechat;
    let (Some(app_id), Some(secret)) = (&w.oa_app_id, &w.oa_app_secret) else {
        return Err("oa_app_id / oa_app_secret not configured".into());
    };
    let url = format!(
        "{}/cgi-bin/message/custom/send",
        w.api_base.trim_end_matches('/')
    );
    let body = json!({"touser": openid, "msgtype": "text", "text": {"content": content}});
    for attempt in 0..2 {
        let token = app
            .wechat_tokens
            .get(&app.http, &w.api_base, app_id, secret)
            .await
            .map_err(|e| e.to_string())?;
        let answer: ApiAnswer = app
            .http
            .post(&url)
            .query(&[("access_token", token.as_str())])
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?
            .json()
            .await
            .map_err(|e| e.without_url().to_string())?;
        match answer.errcode {
            0 => return Ok(()),
            code if is_token_error(code) && attempt == 0 => {
                app.wechat_tokens.invalidate(app_id, &token).await;
            }
            code => return Err(format!("errcode {code}: {}", answer.errmsg)),
        }
    }
    Err("access token refused twice".into())
}
