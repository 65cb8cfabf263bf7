//! `messages`: one turn of a conversation, the user's question or the assistant's answer.
//!
//! An answer row is created before the upstream is called (`status = streaming`), grows
//! while the answer streams (flushed periodically, never per chunk) and ends as `done`,
//! `stopped` or `failed`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "messages")]
pub struct Model {
    /// 32 lowercase hex digits.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub conversation_id: String,
    pub user_id: i64,
    /// Order within the conversation: a question is `2k`, its answer `2k + 1`.
    pub seq: i64,
    /// `user` or `assistant`.
    pub role: String,
    pub content: String,
    /// `done` for questions; `streaming`, `done`, `stopped` or `failed` for answers.
    pub status: String,
    pub model: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_micros: i64,
    /// The error code of a failed answer (the code table of the API).
    pub error_code: Option<i32>,
    /// Set by `POST /api/messages/{id}/stop` on any replica; the replica that owns the
    /// answer sees it at its next periodic flush.
    pub stop_requested: bool,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
