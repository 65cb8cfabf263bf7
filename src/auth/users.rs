//! Queries on `users`.

use entity::user;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection,
    EntityTrait, QueryFilter, QuerySelect, SqlErr,
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
        is_guest: Set(false),
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

pub async fn by_id<C: ConnectionTrait>(db: &C, id: i64) -> Result<Option<user::Model>, AppError> {
    Ok(user::Entity::find_by_id(id).one(db).await?)
}

/// The guest account of `device_id`, if there is one.
pub async fn guest_by_device(
    db: &DatabaseConnection,
    device_id: &str,
) -> Result<Option<user::Model>, AppError> {
    Ok(user::Entity::find()
        .filter(user::Column::DeviceId.eq(device_id))
        .one(db)
        .await?)
}

/// Guest accounts `ip` created since `since_millis`.
pub async fn guests_created_by(
    db: &DatabaseConnection,
    ip: &str,
    since_millis: i64,
) -> Result<u64, AppError> {
    let ids: Vec<i64> = user::Entity::find()
        .select_only()
        .column(user::Column::Id)
        .filter(user::Column::IsGuest.eq(true))
        .filter(user::Column::CreatedIp.eq(ip))
        .filter(user::Column::CreatedAt.gte(since_millis))
        .into_tuple()
        .all(db)
        .await?;
    Ok(ids.len() as u64)
}

pub async fn create_guest(
    db: &DatabaseConnection,
    device_id: &str,
    ip: &str,
) -> Result<user::Model, AppError> {
    let row = user::ActiveModel {
        username: Set(None),
        password_hash: Set(None),
        balance_micros: Set(0),
        created_at: Set(crate::clock::unix_millis()),
        is_guest: Set(true),
        device_id: Set(Some(device_id.to_string())),
        created_ip: Set(Some(ip.to_string())),
        ..Default::default()
    };
    match row.insert(db).await {
        Ok(user) => Ok(user),
        // Two requests of one device at once: the other created it.
        Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            guest_by_device(db, device_id)
                .await?
                .ok_or_else(|| AppError::internal("guest vanished"))
        }
        Err(e) => Err(e.into()),
    }
}
