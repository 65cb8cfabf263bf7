//! `oa_messages`: one Official Account message (one `MsgId` of one user) and the
//! answer it started. The row is the claim: WeChat delivers a message up to three
//! times, possibly to different replicas, and only the delivery whose insert wins
//! starts an answer; the others find the row and follow that answer.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "oa_messages")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The sender's openid in the Official Account. Unique together with `msg_id`.
    pub openid: String,
    /// WeChat's `MsgId`, the same in every delivery of one message.
    pub msg_id: String,
    pub user_id: i64,
    /// The answer (`messages.id`) once the claiming delivery started it; `None` while
    /// it is starting, and for messages answered with a fixed `reply`.
    pub answer_id: Option<String>,
    /// A fixed reply every delivery gives (a refusal such as 余额不足).
    pub reply: Option<String>,
    /// Unguessable: the link `/a/{token}` to the whole answer.
    #[sea_orm(unique)]
    pub token: String,
    /// Deliveries of this message seen so far, on every replica.
    pub deliveries: i32,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
