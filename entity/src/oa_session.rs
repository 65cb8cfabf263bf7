//! `oa_sessions`: an Official Account user's current conversation, when it was last
//! used (an idle conversation is not continued), and the token of the page listing the
//! user's recent answers (`/a/h/{token}`).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "oa_sessions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: i64,
    /// The conversation the next question continues; `None` after `/new`.
    pub conversation_id: Option<String>,
    /// Unix milliseconds of the last question.
    pub active_at: i64,
    /// Unguessable: the link `/a/h/{token}` to the user's recent answers.
    #[sea_orm(unique)]
    pub history_token: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
