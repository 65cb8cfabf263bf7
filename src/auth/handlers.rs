//! `POST /api/auth/register`, `POST /api/auth/login`, `GET /api/me`.

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use crate::app::App;
use crate::auth::{password, users};
use crate::error::AppError;
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
    let phc = user
        .as_ref()
        .and_then(|u| u.password_hash.clone())
        .unwrap_or_else(|| password::dummy_hash().to_string());
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
    Ok(response::ok_json(&json!({
        "id": user.id,
        "username": user.username,
        "balance_micros": user.balance_micros,
        "free_messages_left_today": app.config.free_messages_per_day,
    })))
}
