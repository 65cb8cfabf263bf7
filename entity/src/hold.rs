//! `holds`: money (or one free message) set aside before an answer is produced, as a
//! durable row, so a crash loses nothing: an expired open hold is settled or released.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "holds")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub user_id: i64,
    /// The answer the hold pays for.
    pub message_id: String,
    /// `money` (the amount left the balance) or `free` (one free message of `day`).
    pub kind: String,
    pub amount_micros: i64,
    /// Our own count of the prompt, for settling without the upstream's usage.
    pub prompt_tokens: i64,
    /// The local day whose free message a `free` hold took (`YYYY-MM-DD`).
    pub day: String,
    /// `open`, `settled` or `released`.
    pub status: String,
    pub created_at: i64,
    pub settled_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
