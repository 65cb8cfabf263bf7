//! WeChat's `msg_sec_check` (v2) on the questions of mini-program users: `POST
//! {api_base}/wxa/msg_sec_check?access_token=…` with the user's openid. `risky` is
//! refused with 102 `content_blocked`; `pass` and `review` are served. When WeChat
//! cannot answer (unreachable, slow, an error code), `safety.fail_open` decides:
//! serve (and log) or refuse.

use std::time::Duration;

use serde_json::json;

use crate::app::App;
use crate::error::AppError;
use crate::wechat_token::{TokenCall, api_error};

/// What WeChat said, or why it said nothing.
enum Checked {
    Pass,
    Risky { label: i64 },
    Unavailable(String),
}

/// The mini-program's app id and secret when questions are checked at all.
fn credentials(app: &App) -> Option<(&str, &str)> {
    let w = &app.config.wechat;
    if !app.config.safety.msg_sec_check {
        return None;
    }
    Some((w.mp_app_id.as_deref()?, w.mp_app_secret.as_deref()?))
}

/// Whether questions are checked at all (switched on, with the mini-program's credentials).
pub fn enabled(app: &App) -> bool {
    credentials(app).is_some()
}

/// Checks `text` of the user with mini-program `openid` when the check is configured;
/// `Ok` to serve it.
pub async fn check(app: &App, openid: Option<&str>, text: &str) -> Result<(), AppError> {
    let (Some(openid), Some((app_id, secret))) = (openid, credentials(app)) else {
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
        Checked::Unavailable(why) if app.config.safety.fail_open => {
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
    let body = json!({"content": text, "version": 2, "scene": 2, "openid": openid});
    let answer = app
        .wechat_tokens
        .post(TokenCall {
            http: &app.http,
            api_base: &app.config.wechat.api_base,
            app_id,
            secret,
            path: "/wxa/msg_sec_check",
            body: &body,
            timeout: Duration::from_secs(3),
        })
        .await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(why) => return Checked::Unavailable(why),
    };
    if let Some(error) = api_error(&answer) {
        return Checked::Unavailable(error);
    }
    match answer["result"]["suggest"].as_str() {
        Some("risky") => Checked::Risky {
            label: answer["result"]["label"].as_i64().unwrap_or(0),
        },
        Some(_) => Checked::Pass,
        None => Checked::Unavailable("an answer without a result".into()),
    }
}
