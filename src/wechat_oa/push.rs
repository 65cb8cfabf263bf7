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

use serde_json::json;

use crate::app::App;
use crate::chat::answer::{Answer, Ending};
use crate::wechat_token::{TokenCall, api_error};

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

/// Sends one text message; a rejected access token is dropped and the send retried once
/// with a fresh one.
pub async fn send_text(app: &App, openid: &str, content: &str) -> Result<(), String> {
    let w = &app.config.wechat;
    let (Some(app_id), Some(secret)) = (&w.oa_app_id, &w.oa_app_secret) else {
        return Err("oa_app_id / oa_app_secret not configured".into());
    };
    let body = json!({"touser": openid, "msgtype": "text", "text": {"content": content}});
    let answer = app
        .wechat_tokens
        .post(TokenCall {
            http: &app.http,
            api_base: &w.api_base,
            app_id,
            secret,
            path: "/cgi-bin/message/custom/send",
            body: &body,
            timeout: Duration::from_secs(10),
        })
        .await?;
    match api_error(&answer) {
        None => Ok(()),
        Some(error) => Err(error),
    }
}
