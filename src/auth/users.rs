//! Queries on `users`.

use entity::user;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter,
    SqlErr,
};

use crate::error::AppError;

pub async fn create_password_user(
    db: &DatabaseConnection,
    username: &str,
    password_hash: String,
) -> Result<user::Model, AppError> {
    let row = user::ActiveModel {
        username: Set(Some(username.to_string())),
        password_hash: Set(Some(password_hash)),
        balance_micros: Set(0),
        created_at: Set(crate::clock::unix_millis()),
        ..Default::default()
    };
    row.insert(db).await.map_err(|e| match e.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => AppError::Conflict("用户名已被占用"),
        _ => AppError::from(e),
    })
}

pub async fn by_username(
    db: &DatabaseConnection,
    username: &str,
) -> Result<Option<user::Model>, AppError> {
    Ok(user::Entity::find()
        .filter(user::Column::Username.eq(username))
        .one(db)
        .await?)
}

pub async fn by_id(db: &DatabaseConnection, id: i64) -> Result<Option<user::Model>, AppError> {
    Ok(user::Entity::find_by_id(id).one(db).await?)
}
