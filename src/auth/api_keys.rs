//! API keys for the `/v1` API: `POST /api/keys {name}` (the key is shown once),
//! `GET /api/keys`, `DELETE /api/keys/{id}` (revoked at once). Keys carry 192 random
//! bits, so a fast hash (SHA-256) is enough to store them.

use entity::api_key;
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::Incoming;
use rand::RngCore;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder,
};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::app::App;
use crate::error::AppError;
use crate::response::{self, Body};

const KEY_PREFIX: &str = "sk-cg-";

fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new key: `sk-cg-` and 48 hex digits from the OS's random source.
fn new_key() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", hex::encode(bytes))
}

#[derive(Deserialize)]
struct NewKey {
    #[serde(default)]
    name: String,
}

pub async fn create(app: &App, req: Request<Incoming>) -> Result<Response<Body>, AppError> {
    let user_id = app.tokens.user_of(req.headers())?;
    let body: NewKey =
        response::read_json(req.into_body(), app.config.limits.max_body_bytes).await?;
    let name: String = body.name.trim().chars().take(64).collect();
    let key = new_key();
    let prefix: String = key.chars().take(KEY_PREFIX.len() + 6).collect();
    let now = crate::clock::unix_millis();
    let row = api_key::ActiveModel {
        user_id: Set(user_id),
        name: Set(if name.is_empty() {
            "default".into()
        } else {
            name
        }),
        prefix: Set(prefix),
        key_hash: Set(hash(&key)),
        created_at: Set(now),
        last_used_at: Set(None),
        revoked_at: Set(None),
        ..Default::default()
    }
    .insert(&app.db)
    .await?;
    Ok(response::json(
        StatusCode::CREATED,
        &json!({"id": row.id, "name": row.name, "key": key, "prefix": row.prefix, "created_at": row.created_at}),
    ))
}

pub async fn list(app: &App, req: Request<Incoming>) -> Result<Response<Body>, AppError> {
    let user_id = app.tokens.user_of(req.headers())?;
    let keys: Vec<_> = api_key::Entity::find()
        .filter(api_key::Column::UserId.eq(user_id))
        .filter(api_key::Column::RevokedAt.is_null())
        .order_by_desc(api_key::Column::Id)
        .all(&app.db)
        .await?
        .into_iter()
        .map(|k| json!({"id": k.id, "name": k.name, "prefix": k.prefix, "created_at": k.created_at, "last_used_at": k.last_used_at}))
        .collect();
    Ok(response::ok_json(&json!({ "keys": keys })))
}

pub async fn revoke(
    app: &App,
    req: Request<Incoming>,
    id: &str,
) -> Result<Response<Body>, AppError> {
    let user_id = app.tokens.user_of(req.headers())?;
    let id: i64 = id.parse().map_err(|_| AppError::NotFound("密钥不存在"))?;
    let result = api_key::Entity::update_many()
        .col_expr(
            api_key::Column::RevokedAt,
            Expr::value(crate::clock::unix_millis()),
        )
        .filter(api_key::Column::Id.eq(id))
        .filter(api_key::Column::UserId.eq(user_id))
        .filter(api_key::Column::RevokedAt.is_null())
        .exec(&app.db)
        .await?;
    if result.rows_affected == 0 {
        return Err(AppError::NotFound("密钥不存在"));
    }
    Ok(response::ok_json(&json!({ "revoked": true })))
}

/// The user of the request's `Authorization: Bearer sk-…`; a missing, unknown or
/// revoked key is refused. Marks the key used (at most once a minute).
pub async fn user_of(db: &DatabaseConnection, headers: &HeaderMap) -> Result<i64, AppError> {
    let key = super::token::bearer(headers).ok_or(AppError::Unauthorized("缺少 API 密钥"))?;
    let row = api_key::Entity::find()
        .filter(api_key::Column::KeyHash.eq(hash(key)))
        .one(db)
        .await?
        .filter(|k| k.revoked_at.is_none())
        .ok_or(AppError::Unauthorized("API 密钥无效或已撤销"))?;
    let now = crate::clock::unix_millis();
    if row.last_used_at.is_none_or(|t| now - t > 60_000) {
        api_key::Entity::update_many()
            .col_expr(api_key::Column::LastUsedAt, Expr::value(now))
            .filter(api_key::Column::Id.eq(row.id))
            .exec(db)
            .await?;
    }
    Ok(row.user_id)
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_random_and_hashed() {
        let (a, b) = (super::new_key(), super::new_key());
        assert_ne!(a, b);
        assert!(a.starts_with("sk-cg-") && a.len() == 6 + 48);
        assert_eq!(super::hash(&a).len(), 64);
        assert_ne!(super::hash(&a), super::hash(&b));
    }
}
