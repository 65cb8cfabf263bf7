//! Queries of the Official Account bot: its users (by openid, linked by unionid), the
//! per-message claim rows (`oa_messages`) and the per-user sessions (`oa_sessions`).

use entity::{message, oa_message, oa_session, user};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, SqlErr,
};

use crate::error::AppError;

/// An unguessable token for a link: 128 random bits in hex.
pub fn new_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn is_unique_violation(e: &sea_orm::DbErr) -> bool {
    matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

/// The account of an Official Account user: by openid; else, when WeChat told us the
/// unionid, the account with that unionid (a mini-program user), which is then linked;
/// else a new account.
pub async fn user_for(
    db: &DatabaseConnection,
    openid: &str,
    unionid: Option<&str>,
) -> Result<user::Model, AppError> {
    if let Some(found) = user::Entity::find()
        .filter(user::Column::OaOpenid.eq(openid))
        .one(db)
        .await?
    {
        if let (Some(unionid), None) = (unionid, &found.unionid) {
            // Best effort: another account may hold this unionid already.
            let _ = user::Entity::update_many()
                .col_expr(user::Column::Unionid, Expr::value(unionid))
                .filter(user::Column::Id.eq(found.id))
                .exec(db)
                .await;
        }
        return Ok(found);
    }
    if let Some(unionid) = unionid
        && let Some(found) = user::Entity::find()
            .filter(user::Column::Unionid.eq(unionid))
            .one(db)
            .await?
    {
        let linked = user::Entity::update_many()
            .col_expr(user::Column::OaOpenid, Expr::value(openid))
            .filter(user::Column::Id.eq(found.id))
            .filter(user::Column::OaOpenid.is_null())
            .exec(db)
            .await;
        match linked {
            Ok(r) if r.rows_affected > 0 => return Ok(found),
            // Linked meanwhile by a concurrent delivery: read it back below.
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let row = user::ActiveModel {
        balance_micros: Set(0),
        created_at: Set(crate::clock::unix_millis()),
        is_guest: Set(false),
        oa_openid: Set(Some(openid.to_string())),
        ..Default::default()
    };
    match row.insert(db).await {
        Ok(created) => Ok(created),
        // Two deliveries at once: the other created the account.
        Err(e) if is_unique_violation(&e) => user::Entity::find()
            .filter(user::Column::OaOpenid.eq(openid))
            .one(db)
            .await?
            .ok_or_else(|| AppError::internal("official account user vanished")),
        Err(e) => Err(e.into()),
    }
}

/// Either this delivery claimed the message, or it is a later delivery of a claimed one.
pub enum Claim {
    /// This delivery is the first: it must start the answer.
    First(oa_message::Model),
    /// Delivery number `n` (from 2) of a message another delivery claimed.
    Again(oa_message::Model),
}

/// Claims message `msg_id` of `openid` for this delivery, or counts one more delivery
/// of it. The insert is the claim: the unique index lets exactly one delivery win, on
/// any replica.
pub async fn claim(
    db: &DatabaseConnection,
    openid: &str,
    msg_id: &str,
    user_id: i64,
) -> Result<Claim, AppError> {
    let row = oa_message::ActiveModel {
        openid: Set(openid.to_string()),
        msg_id: Set(msg_id.to_string()),
        user_id: Set(user_id),
        answer_id: Set(None),
        reply: Set(None),
        token: Set(new_token()),
        deliveries: Set(1),
        created_at: Set(crate::clock::unix_millis()),
        ..Default::default()
    };
    match row.insert(db).await {
        Ok(claimed) => return Ok(Claim::First(claimed)),
        Err(e) if is_unique_violation(&e) => {}
        Err(e) => return Err(e.into()),
    }
    oa_message::Entity::update_many()
        .col_expr(
            oa_message::Column::Deliveries,
            Expr::col(oa_message::Column::Deliveries).add(1),
        )
        .filter(oa_message::Column::Openid.eq(openid))
        .filter(oa_message::Column::MsgId.eq(msg_id))
        .exec(db)
        .await?;
    let row = message_row(db, openid, msg_id)
        .await?
        .ok_or_else(|| AppError::internal("claimed official account message vanished"))?;
    Ok(Claim::Again(row))
}

pub async fn message_row(
    db: &DatabaseConnection,
    openid: &str,
    msg_id: &str,
) -> Result<Option<oa_message::Model>, AppError> {
    Ok(oa_message::Entity::find()
        .filter(oa_message::Column::Openid.eq(openid))
        .filter(oa_message::Column::MsgId.eq(msg_id))
        .one(db)
        .await?)
}

/// Records the answer the claiming delivery started.
pub async fn set_answer(db: &DatabaseConnection, id: i64, answer_id: &str) -> Result<(), AppError> {
    oa_message::Entity::update_many()
        .col_expr(oa_message::Column::AnswerId, Expr::value(answer_id))
        .filter(oa_message::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

/// Records the fixed reply (a refusal) every delivery of the message gives.
pub async fn set_reply(db: &DatabaseConnection, id: i64, reply: &str) -> Result<(), AppError> {
    oa_message::Entity::update_many()
        .col_expr(oa_message::Column::Reply, Expr::value(reply))
        .filter(oa_message::Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(())
}

pub async fn by_token(
    db: &DatabaseConnection,
    token: &str,
) -> Result<Option<oa_message::Model>, AppError> {
    Ok(oa_message::Entity::find()
        .filter(oa_message::Column::Token.eq(token))
        .one(db)
        .await?)
}

/// The user's latest messages that started an answer, newest first.
pub async fn recent(
    db: &DatabaseConnection,
    user_id: i64,
    limit: u64,
) -> Result<Vec<oa_message::Model>, AppError> {
    Ok(oa_message::Entity::find()
        .filter(oa_message::Column::UserId.eq(user_id))
        .filter(oa_message::Column::AnswerId.is_not_null())
        .order_by_desc(oa_message::Column::CreatedAt)
        .order_by_desc(oa_message::Column::Id)
        .limit(limit)
        .all(db)
        .await?)
}

/// The answer row (any status).
pub async fn answer(
    db: &DatabaseConnection,
    answer_id: &str,
) -> Result<Option<message::Model>, AppError> {
    Ok(message::Entity::find_by_id(answer_id.to_string())
        .one(db)
        .await?)
}

/// The question an answer answers (the row just before it in its conversation).
pub async fn question_of(
    db: &DatabaseConnection,
    answer: &message::Model,
) -> Result<Option<String>, AppError> {
    Ok(message::Entity::find()
        .filter(message::Column::ConversationId.eq(answer.conversation_id.as_str()))
        .filter(message::Column::Seq.eq(answer.seq - 1))
        .one(db)
        .await?
        .map(|m| m.content))
}

/// The user's session, created on first use.
pub async fn session(db: &DatabaseConnection, user_id: i64) -> Result<oa_session::Model, AppError> {
    if let Some(s) = oa_session::Entity::find_by_id(user_id).one(db).await? {
        return Ok(s);
    }
    let row = oa_session::ActiveModel {
        user_id: Set(user_id),
        conversation_id: Set(None),
        active_at: Set(0),
        history_token: Set(new_token()),
    };
    // Two messages at once may both create it: keep the first.
    match row.insert(db).await {
        Ok(created) => return Ok(created),
        Err(e) if is_unique_violation(&e) => {}
        Err(e) => return Err(e.into()),
    }
    oa_session::Entity::find_by_id(user_id)
        .one(db)
        .await?
        .ok_or_else(|| AppError::internal("official account session vanished"))
}

/// The conversation the user's next question continues (`None` = start a new one).
pub fn current_conversation(session: &oa_session::Model, idle_secs: u64) -> Option<&str> {
    let idle_millis = i64::try_from(idle_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let fresh = crate::clock::unix_millis().saturating_sub(session.active_at) <= idle_millis;
    session.conversation_id.as_deref().filter(|_| fresh)
}

/// Makes `conversation_id` the user's current conversation (`None`: `/new`).
pub async fn set_conversation(
    db: &DatabaseConnection,
    user_id: i64,
    conversation_id: Option<&str>,
) -> Result<(), AppError> {
    oa_session::Entity::update_many()
        .col_expr(
            oa_session::Column::ConversationId,
            Expr::value(conversation_id.map(String::from)),
        )
        .col_expr(
            oa_session::Column::ActiveAt,
            Expr::value(crate::clock::unix_millis()),
        )
        .filter(oa_session::Column::UserId.eq(user_id))
        .exec(db)
        .await?;
    Ok(())
}

pub async fn session_by_history_token(
    db: &DatabaseConnection,
    token: &str,
) -> Result<Option<oa_session::Model>, AppError> {
    Ok(oa_session::Entity::find()
        .filter(oa_session::Column::HistoryToken.eq(token))
        .one(db)
        .await?)
}

/// Deletes message rows (claims and their `/a/{token}` links) created before
/// `before_ms`; the answers themselves stay in the user's conversations.
pub async fn delete_older_than(db: &DatabaseConnection, before_ms: i64) -> Result<u64, AppError> {
    let deleted = oa_message::Entity::delete_many()
        .filter(oa_message::Column::CreatedAt.lt(before_ms))
        .exec(db)
        .await?;
    Ok(deleted.rows_affected)
}
