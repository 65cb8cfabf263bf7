//! `files`: images the gateway keeps for a while and serves at `/files/{name}`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "files")]
pub struct Model {
    /// Unguessable: 32 hex digits and an extension.
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    pub user_id: i64,
    pub content_type: String,
    pub data: Vec<u8>,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
