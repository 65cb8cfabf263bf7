//! `api_keys`: a user's keys for the `/v1` API. Only a SHA-256 of the key is kept; the
//! key itself is shown once, when created.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    /// The first characters of the key, to tell keys apart in a list.
    pub prefix: String,
    /// Lowercase hex SHA-256 of the whole key.
    #[sea_orm(unique)]
    pub key_hash: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
