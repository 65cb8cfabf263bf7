//! `usage_records`: what one answer used and cost.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "usage_records")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: i64,
    pub message_id: String,
    pub model: String,
    pub channel: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// The price of the tokens.
    pub cost_micros: i64,
    /// What left the balance (0 for a free message or a failed answer).
    pub charged_micros: i64,
    pub free: bool,
    pub first_token_ms: Option<i64>,
    pub total_ms: i64,
    /// The answer's final status.
    pub status: String,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
