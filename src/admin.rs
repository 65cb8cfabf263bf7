//! The admin API (`Authorization: Bearer <admin token>`): credit or debit a balance,
//! look at a user's money, mint recharge codes, check the ledger invariant.

use entity::{ledger_entry, usage_record};
use http::{Request, Response};
use hyper::body::Incoming;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::Deserialize;
use serde_json::json;

use crate::app::App;
use crate::auth::{token::bearer, users};
use crate::error::AppError;
use crate::ledger::{credits, invariant};
use crate::response::{self, Body};

/// Refuses requests without the admin token. The comparison takes the same time
/// wherever the first difference is.
pub fn authorize(app: &App, req: &Request<Incoming>) -> Result<(), AppError> {
    let given = bearer(req.headers()).unwrap_or_default().as_bytes();
    let want = app.admin_token.as_bytes();
    let differs = given.len() != want.len()
        || given
            .iter()
            .zip(want)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            != 0;
    if differs {
        return Err(AppError::Unauthorized("需要管理员令牌"));
    }
    Ok(())
}

fn user_id(segment: &str) -> Result<i64, AppError> {
    segment
        .parse()
        .map_err(|_| AppError::NotFound("用户不存在"))
}

#[derive(Deserialize)]
struct CreditRequest {
    amount_micros: i64,
    #[serde(default)]
    note: String,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// `POST /admin/users/{id}/credit {amount_micros, note, idempotency_key?}`.
pub async fn credit(
    app: &App,
    req: Request<Incoming>,
    id: &str,
) -> Result<Response<Body>, AppError> {
    authorize(app, &req)?;
    let user_id = user_id(id)?;
    let body: CreditRequest =
        response::read_json(req.into_body(), app.config.limits.max_body_bytes).await?;
    if body.amount_micros == 0 {
        return Err(AppError::bad_request("amount_micros 不能为 0"));
    }
    if body
        .idempotency_key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > 100)
    {
        return Err(AppError::bad_request(
            "idempotency_key 应为 1 到 100 个字符",
        ));
    }
    let done = credits::admin_credit(
        &app.db,
        user_id,
        body.amount_micros,
        &body.note,
        body.idempotency_key.as_deref(),
    )
    .await?;
    Ok(response::ok_json(&json!({
        "user_id": user_id,
        "applied": done.applied,
        "balance_micros": done.balance_micros,
    })))
}

/// `GET /admin/users/{id}`: balance, holds, ledger sum, recent ledger and usage.
pub async fn user(app: &App, req: Request<Incoming>, id: &str) -> Result<Response<Body>, AppError> {
    authorize(app, &req)?;
    let user = users::by_id(&app.db, user_id(id)?)
        .await?
        .ok_or(AppError::NotFound("用户不存在"))?;
    let (held, ledger_sum) = invariant::user_sums(&app.db, user.id).await?;
    let ledger: Vec<_> = ledger_entry::Entity::find()
        .filter(ledger_entry::Column::UserId.eq(user.id))
        .order_by_desc(ledger_entry::Column::Id)
        .limit(50)
        .all(&app.db)
        .await?
        .into_iter()
        .map(|e| {
            json!({"id": e.id, "amount_micros": e.amount_micros, "kind": e.kind,
                   "reference": e.reference, "note": e.note, "created_at": e.created_at})
        })
        .collect();
    let usage: Vec<_> = usage_record::Entity::find()
        .filter(usage_record::Column::UserId.eq(user.id))
        .order_by_desc(usage_record::Column::Id)
        .limit(50)
        .all(&app.db)
        .await?
        .into_iter()
        .map(|u| {
            json!({"message_id": u.message_id, "model": u.model, "channel": u.channel,
                   "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                   "cost_micros": u.cost_micros, "charged_micros": u.charged_micros, "free": u.free,
                   "first_token_ms": u.first_token_ms, "total_ms": u.total_ms, "status": u.status,
                   "created_at": u.created_at})
        })
        .collect();
    Ok(response::ok_json(&json!({
        "id": user.id,
        "username": user.username,
        "is_guest": user.is_guest,
        "balance_micros": user.balance_micros,
        "held_micros": held,
        "ledger_sum_micros": ledger_sum,
        "ledger": ledger,
        "usage": usage,
    })))
}

#[derive(Deserialize)]
struct MintRequest {
    count: usize,
    amount_micros: i64,
}

/// `POST /admin/redeem-codes {count, amount_micros}` → `{codes}`.
pub async fn mint_codes(app: &App, req: Request<Incoming>) -> Result<Response<Body>, AppError> {
    authorize(app, &req)?;
    let body: MintRequest =
        response::read_json(req.into_body(), app.config.limits.max_body_bytes).await?;
    if !(1..=1000).contains(&body.count) {
        return Err(AppError::bad_request("count 应为 1 到 1000"));
    }
    if body.amount_micros <= 0 {
        return Err(AppError::bad_request("amount_micros 必须大于 0"));
    }
    let codes = credits::mint_codes(&app.db, body.count, body.amount_micros).await?;
    Ok(response::ok_json(
        &json!({ "codes": codes, "amount_micros": body.amount_micros }),
    ))
}

/// `GET /admin/check`: the ledger invariant for every user.
pub async fn check(app: &App, req: Request<Incoming>) -> Result<Response<Body>, AppError> {
    authorize(app, &req)?;
    Ok(response::ok_json(&invariant::check(&app.db).await?))
}

/// `GET /admin/channels`: every upstream key and whether it is still in rotation.
pub async fn channels(app: &App, req: Request<Incoming>) -> Result<Response<Body>, AppError> {
    authorize(app, &req)?;
    Ok(response::ok_json(
        &json!({ "keys": app.upstream.key_status() }),
    ))
}
