//! `POST /api/auth/register`, `POST /api/auth/login`, `GET /api/me`.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use crate::app::App;
use crate::auth::{password, users};
use crate::error::{AppError, Refusal};
use crate::ledger::{credits, holds};
use crate::response::{self, Body};

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

fn check_username(username: &str) -> Result<(), AppError> {
    let n = username.chars().count();
    if !(2..=32).contains(&n) {
        return Err(AppError::bad_request("用户名长度应为 2 到 32 个字符"));
    }
    if username
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(AppError::bad_request("用户名不能包含空白字符"));
    }
    Ok(())
}

fn check_password(password: &str) -> Result<(), AppError> {
    if !(6..=128).contains(&password.chars().count()) {
        return Err(AppError::bad_request("密码长度应为 6 到 128 个字符"));
    }
    Ok(())
}

pub async fn register(app: &App, req: Request<Incoming>) -> Result<Response<Body>, AppError> {
    let creds: Credentials =
        response::read_json(req.into_body(), app.config.limits.max_body_bytes).await?;
    check_username(&creds.username)?;
    check_password(&creds.password)?;
    let hash = password::hash_blocking(creds.password).await?;
    let user = users::create_password_user(&app.db, &creds.username, hash).await?;
    let (token, expires_at) = app.tokens.issue(user.id)?;
    Ok(response::json(
        StatusCode::CREATED,
        &json!({ "user_id": user.id, "token": token, "expires_at": expires_at }),
    ))
}

pub async fn login(app: &App, req: Request<Incoming>) -> Result<Response<Body>, AppError> {
    let creds: Credentials =
        response::read_json(req.into_body(), app.config.limits.max_body_bytes).await?;
    let user = users::by_username(&app.db, &creds.username).await?;
    let phc = match user.as_ref().and_then(|u| u.password_hash.clone()) {
        Some(phc) => phc,
        None => password::dummy_hash().await.to_string(),
    };
    let ok = password::verify_blocking(creds.password, phc).await;
    let user = match user {
        Some(user) if ok => user,
        _ => return Err(AppError::Unauthorized("用户名或密码错误")),
    };
    let (token, expires_at) = app.tokens.issue(user.id)?;
    Ok(response::ok_json(
        &json!({ "user_id": user.id, "token": token, "expires_at": expires_at }),
    ))
}

pub async fn me(app: &App, req: Request<Incoming>) -> Result<Response<Body>, AppError> {
    let user_id = app.tokens.user_of(req.headers())?;
    let user = users::by_id(&app.db, user_id)
        .await?
        .ok_or(AppError::Unauthorized("账号不存在，请重新登录"))?;
    let free_left = holds::free_left(
        &app.db,
        user.id,
        &app.config.today(),
        app.config.free_messages_per_day,
    )
    .await?;
    Ok(response::ok_json(&json!({
        "id": user.id,
        "username": user.username,
        "is_guest": user.is_guest,
        "balance_micros": user.balance_micros,
        "free_messages_left_today": free_left,
    })))
}

#[derive(Deserialize)]
struct GuestRequest {
    device_id: String,
}

/// `POST /api/auth/guest {device_id}`: a trial account with the free daily quota only.
/// The same device gets the same account back; new accounts are limited per address.
pub async fn guest(app: &App, req: Request<Incoming>) -> Result<Response<Body>, AppError> {
    let ip = client_ip(&req);
    let body: GuestRequest =
        response::read_json(req.into_body(), app.config.limits.max_body_bytes).await?;
    let device_id = body.device_id.trim();
    if !(8..=128).contains(&device_id.len()) || !device_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AppError::bad_request(
            "device_id 应为 8 到 128 个可见 ASCII 字符",
        ));
    }
    let user = match users::guest_by_device(&app.db, device_id).await? {
        Some(user) if user.is_guest => user,
        Some(_) => return Err(AppError::bad_request("该设备已绑定正式账号，请登录")),
        None => {
            let since = crate::clock::unix_millis() - 86_400_000;
            let created = users::guests_created_by(&app.db, &ip, since).await?;
            if created >= u64::from(app.config.guests_per_ip_per_day) {
                return Err(AppError::Refused {
                    reason: Refusal::RateLimited,
                    msg: "试用账号创建过于频繁，请稍后再试或注册账号".into(),
                    retry_after_secs: Some(3600),
                });
            }
            users::create_guest(&app.db, device_id, &ip).await?
        }
    };
    let (token, expires_at) = app.tokens.issue(user.id)?;
    Ok(response::ok_json(&json!({
        "user_id": user.id,
        "token": token,
        "expires_at": expires_at,
        "free_messages_per_day": app.config.free_messages_per_day,
    })))
}

/// The client's address (as the router determined it).
fn client_ip(req: &Request<Incoming>) -> String {
    req.extensions()
        .get::<crate::server::ClientIp>()
        .map_or_else(|| "unknown".to_string(), |a| a.0.to_string())
}

#[derive(Deserialize)]
struct RedeemRequest {
    code: String,
}

/// `POST /api/redeem {code}`: a recharge code, once ever.
pub async fn redeem(app: &App, req: Request<Incoming>) -> Result<Response<Body>, AppError> {
    let user_id = app.tokens.user_of(req.headers())?;
    let body: RedeemRequest =
        response::read_json(req.into_body(), app.config.limits.max_body_bytes).await?;
    let user = users::by_id(&app.db, user_id)
        .await?
        .ok_or(AppError::Unauthorized("账号不存在，请重新登录"))?;
    if user.is_guest {
        return Err(AppError::bad_request("试用账号不能充值，请先注册账号"));
    }
    let (amount, balance) = credits::redeem(&app.db, user_id, &body.code).await?;
    Ok(response::ok_json(
        &json!({ "credited_micros": amount, "balance_micros": balance }),
    ))
}
