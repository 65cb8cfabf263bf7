//! `POST /api/auth/wechat {code}`: mini-program login. The code from `uni.login` is
//! exchanged through `jscode2session` (at `CHATGATE_WECHAT_API_BASE`) for the user's
//! openid (and unionid, when the app is bound to an open platform account). The
//! session key stays on the server — it is never sent to the client.

use entity::user;
use http::{Request, Response};
use hyper::body::Incoming;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, SqlErr};
use serde::Deserialize;
use serde_json::json;

use crate::app::App;
use crate::error::{AppError, Refusal};
use crate::response::{self, Body};

#[derive(Deserialize)]
struct LoginRequest {
    code: String,
}

/// What `jscode2session` answers.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Session {
    openid: Option<String>,
    unionid: Option<String>,
    errcode: i64,
    errmsg: String,
}

pub async fn login(app: &App, req: Request<Incoming>) -> Result<Response<Body>, AppError> {
    let body: LoginRequest =
        response::read_json(req.into_body(), app.config.limits.max_body_bytes).await?;
    let code = body.code.trim();
    if code.is_empty() || code.len() > 256 {
        return Err(AppError::bad_request("code 无效"));
    }
    let wechat = &app.config.wechat;
    let (Some(app_id), Some(secret)) = (&wechat.mp_app_id, &wechat.mp_app_secret) else {
        return Err(AppError::bad_request(
            "服务器未配置小程序登录（[wechat] mp_app_id / mp_app_secret）",
        ));
    };
    let url = format!(
        "{}/sns/jscode2session",
        wechat.api_base.trim_end_matches('/')
    );
    let sent = app
        .http
        .get(&url)
        .query(&[
            ("appid", app_id.as_str()),
            ("secret", secret.as_str()),
            ("js_code", code),
            ("grant_type", "authorization_code"),
        ])
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await;
    let session: Session = match sent {
        Ok(resp) => resp.json().await.map_err(|e| wechat_down(&e.to_string()))?,
        Err(e) => return Err(wechat_down(&e.to_string())),
    };
    if session.errcode != 0 {
        return Err(map_error(session.errcode, &session.errmsg));
    }
    let openid = session
        .openid
        .filter(|o| !o.is_empty())
        .ok_or_else(|| wechat_down("jscode2session answered without an openid"))?;
    let unionid = session.unionid.filter(|u| !u.is_empty());
    let user = find_or_create(app, &openid, unionid.as_deref()).await?;
    let (token, expires_at) = app.tokens.issue(user.id)?;
    Ok(response::ok_json(
        &json!({ "user_id": user.id, "token": token, "expires_at": expires_at }),
    ))
}

fn wechat_down(detail: &str) -> AppError {
    tracing::warn!(%detail, "jscode2session failed");
    AppError::Upstream {
        timeout: false,
        msg: "微信登录服务暂时不可用，请稍后再试".into(),
    }
}

/// WeChat's error codes as the user should hear them.
fn map_error(errcode: i64, errmsg: &str) -> AppError {
    tracing::info!(errcode, %errmsg, "jscode2session refused");
    match errcode {
        40029 | 40163 => AppError::Unauthorized("微信登录凭证无效或已使用，请重新登录"),
        45011 => AppError::Refused {
            reason: Refusal::RateLimited,
            msg: "登录过于频繁，请稍后再试".into(),
            retry_after_secs: Some(60),
        },
        40226 => AppError::Refused {
            reason: Refusal::ContentBlocked,
            msg: "该微信账号存在风险，暂时无法登录".into(),
            retry_after_secs: None,
        },
        -1 => wechat_down("system busy"),
        _ => wechat_down(&format!("errcode {errcode}: {errmsg}")),
    }
}

/// The account of this WeChat user: by unionid first (it links the Official Account
/// and the mini-program), then by openid; created on first login.
async fn find_or_create(
    app: &App,
    openid: &str,
    unionid: Option<&str>,
) -> Result<user::Model, AppError> {
    if let Some(unionid) = unionid
        && let Some(user) = user::Entity::find()
            .filter(user::Column::Unionid.eq(unionid))
            .one(&app.db)
            .await?
    {
        if user.mp_openid.is_none() {
            user::Entity::update_many()
                .col_expr(user::Column::MpOpenid, Expr::value(openid))
                .filter(user::Column::Id.eq(user.id))
                .exec(&app.db)
                .await?;
        }
        return Ok(user);
    }
    if let Some(user) = user::Entity::find()
        .filter(user::Column::MpOpenid.eq(openid))
        .one(&app.db)
        .await?
    {
        if let (Some(unionid), None) = (unionid, &user.unionid) {
            user::Entity::update_many()
                .col_expr(user::Column::Unionid, Expr::value(unionid))
                .filter(user::Column::Id.eq(user.id))
                .exec(&app.db)
                .await?;
        }
        return Ok(user);
    }
    let row = user::ActiveModel {
        balance_micros: Set(0),
        created_at: Set(crate::clock::unix_millis()),
        is_guest: Set(false),
        mp_openid: Set(Some(openid.to_string())),
        unionid: Set(unionid.map(String::from)),
        ..Default::default()
    };
    match row.insert(&app.db).await {
        Ok(user) => Ok(user),
        // Two logins of one person at once: the other created the account.
        Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            user::Entity::find()
                .filter(user::Column::MpOpenid.eq(openid))
                .one(&app.db)
                .await?
                .ok_or_else(|| AppError::internal("wechat user vanished"))
        }
        Err(e) => Err(e.into()),
    }
}
