//! WeChat's `msg_sec_check` (v2) on the questions of mini-program users: `POST
//! {api_base}/wxa/msg_sec_check?access_token=…` with the user's openid. `risky` is
//! refused with 102 `content_blocked`; `pass` and `review` are served. When WeChat
//! cannot answer (unreachable, slow, an error code), `safety.fail_open` decides:
//! serve (and log) or refuse.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::app::App;
use crate::error::AppError;
use crate::wechat_token::is_token_error;

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    errcode: i64,
    #[serde(default)]
    errmsg: String,
    #[serde(default)]
    result: Option<Verdict>,
}

#[derive(Deserialize)]
struct Verdict {
    #[serde(default)]
    suggest: String,
    #[serde(default)]
    label: i64,
}

/// What WeChat said, or why it said nothing.
enum Checked {
    Pass,
    Risky { label: i64 },
    Unavailable(String),
}

/// Checks `text` of the user with mini-program `openid` when the check is configured;
/// `Ok` to serve it.
pub async fn check(app: &App, openid: Option<&str>, text: &str) -> Result<(), AppError> {
    let safety = &app.config.safety;
    let w = &app.config.wechat;
    let (true, Some(openid), Some(app_id), Some(secret)) = (
        safety.msg_sec_check,
        openid,
        w.mp_app_id.as_deref(),
        w.mp_app_secret.as_deref(),
    ) else {
        return Ok(());
    };
    match ask(app, app_id, secret, openid, text).await {
        Checked::Pass => Ok(()),
        Checked::Risky { label } => {
            tracing::info!(label, "msg_sec_check: question refused as risky");
            metrics::counter!(crate::metrics::CONTENT_BLOCKED, "by" => "msg_sec_check")
                .increment(1);
            Err(crate::safety::blocked())
        }
        Checked::Unavailable(why) if safety.fail_open => {
            tracing::warn!(%why, "msg_sec_check unavailable: serving the question (fail_open)");
            Ok(())
        }
        Checked::Unavailable(why) => {
            tracing::warn!(%why, "msg_sec_check unavailable: refusing the question (fail_open = false)");
            Err(AppError::Upstream {
                timeout: false,
                msg: "内容安全检查暂时不可用，请稍后再试".into(),
            })
        }
    }
}

async fn ask(app: &App, app_id: &str, secret: &str, openid: &str, text: &str) -> Checked {
    let w = &app.config.wechat;
    let url = format!("{}/wxa/msg_sec_check", w.api_base.trim_end_matches('/'));
    let body = json!({"content": text, "version": 2, "scene": 2, "openid": openid});
    for attempt in 0..2 {
        let token = match app
            .wechat_tokens
            .get(&app.http, &w.api_base, app_id, secret)
            .await
        {
            Ok(token) => token,
            Err(e) => return Checked::Unavailable(e.to_string()),
        };
        let sent = app
            .http
            .post(&url)
            .query(&[("access_token", token.as_str())])
            .json(&body)
            .timeout(Duration::from_secs(3))
            .send()
            .await;
        let answer: Answer = match sent {
            Ok(resp) => match resp.json().await {
                Ok(answer) => answer,
                Err(e) => return Checked::Unavailable(e.without_url().to_string()),
            },
            Err(e) => return Checked::Unavailable(e.without_url().to_string()),
        };
        match answer.errcode {
            0 => {
                return match answer.result {
                    Some(v) if v.suggest == "risky" => Checked::Risky { label: v.label },
                    Some(_) => Checked::Pass,
                    None => Checked::Unavailable("an answer without a result".into()),
                };
            }
            code if is_token_error(code) && attempt == 0 => {
                app.wechat_tokens.invalidate(app_id, &token).await;
            }
            code => return Checked::Unavailable(format!("errcode {code}: {}", answer.errmsg)),
        }
    }
    Checked::Unavailable("access token refused twice".into())
}
