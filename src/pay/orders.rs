//! Orders in the database, and [`settle_paid`]: the one path by which a payment WeChat
//! Pay reports (by notification, order query or sweep) becomes money, exactly once.

use entity::pay_order;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait,
};

use super::api::{Transaction, WechatPay};
use crate::config::RechargePackage;
use crate::error::AppError;
use crate::ledger::credits;

pub const PENDING: &str = "pending";
pub const PAID: &str = "paid";
pub const CLOSED: &str = "closed";

pub const JSAPI: &str = "jsapi";
pub const NATIVE: &str = "native";

/// A new pending order of `package` for `user_id`: an unguessable `out_trade_no`, the
/// package's price and credit copied onto the row.
pub async fn create(
    db: &DatabaseConnection,
    user_id: i64,
    package: &RechargePackage,
    channel: &str,
    ttl_secs: u64,
) -> Result<pay_order::Model, AppError> {
    let now = crate::clock::unix_millis();
    let row = pay_order::ActiveModel {
        // 122 random bits, 32 hex digits: within WeChat Pay's 6 to 32 characters.
        out_trade_no: Set(uuid::Uuid::new_v4().simple().to_string()),
        user_id: Set(user_id),
        package_id: Set(package.id.clone()),
        description: Set(package.title.clone()),
        channel: Set(channel.to_string()),
        price_fen: Set(package.price_fen),
        credit_micros: Set(package.credit_micros),
        status: Set(PENDING.to_string()),
        created_at: Set(now),
        expires_at: Set(now + i64::try_from(ttl_secs).unwrap_or(i64::MAX / 4) * 1000),
        paid_at: Set(None),
        closed_at: Set(None),
        transaction_id: Set(None),
        note: Set(None),
    };
    Ok(row.insert(db).await?)
}

/// The order `out_trade_no` if `user_id` owns it.
pub async fn of_user(
    db: &DatabaseConnection,
    out_trade_no: &str,
    user_id: i64,
) -> Result<Option<pay_order::Model>, AppError> {
    Ok(pay_order::Entity::find_by_id(out_trade_no.to_string())
        .one(db)
        .await?
        .filter(|o| o.user_id == user_id))
}

pub async fn by_id(
    db: &DatabaseConnection,
    out_trade_no: &str,
) -> Result<Option<pay_order::Model>, AppError> {
    Ok(pay_order::Entity::find_by_id(out_trade_no.to_string())
        .one(db)
        .await?)
}

/// Pending orders created before `created_before`, oldest first, at most `limit`.
pub async fn pending(
    db: &DatabaseConnection,
    created_before: i64,
    limit: u64,
) -> Result<Vec<pay_order::Model>, AppError> {
    Ok(pay_order::Entity::find()
        .filter(pay_order::Column::Status.eq(PENDING))
        .filter(pay_order::Column::CreatedAt.lte(created_before))
        .order_by_asc(pay_order::Column::CreatedAt)
        .limit(limit)
        .all(db)
        .await?)
}

/// `pending → closed`, only if still pending. True when this call closed it.
pub async fn close(
    db: &DatabaseConnection,
    out_trade_no: &str,
    note: &str,
) -> Result<bool, AppError> {
    let result = pay_order::Entity::update_many()
        .col_expr(pay_order::Column::Status, Expr::value(CLOSED))
        .col_expr(
            pay_order::Column::ClosedAt,
            Expr::value(crate::clock::unix_millis()),
        )
        .col_expr(
            pay_order::Column::Note,
            Expr::value(note.chars().take(250).collect::<String>()),
        )
        .filter(pay_order::Column::OutTradeNo.eq(out_trade_no))
        .filter(pay_order::Column::Status.eq(PENDING))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// What became of a payment report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// This call moved the order to paid and credited the balance.
    Credited,
    /// The order was paid before (another notification, replica or query won).
    AlreadyPaid,
    /// The report cannot be credited, ever (unknown order, wrong amount, another
    /// merchant): nothing moved, and the reason was logged.
    Refused(String),
}

/// Credits the order of a transaction WeChat Pay reports as `SUCCESS` (from a verified
/// notification or a verified query answer), exactly once: in one transaction the order
/// moves to paid with a conditional update — of concurrent reports, on any replica,
/// exactly one sees the row change — and only that one writes the ledger credit
/// (`pay:<out_trade_no>`, unique) and raises the balance.
///
/// A `closed` order is credited too: WeChat Pay took the money (the payment raced the
/// close), so the user gets what they paid for.
pub async fn settle_paid(
    db: &DatabaseConnection,
    pay: &WechatPay,
    tx: &Transaction,
) -> Result<Settled, AppError> {
    let no = tx.out_trade_no.as_str();
    if tx.trade_state != "SUCCESS" {
        return Ok(Settled::Refused(format!("trade_state {}", tx.trade_state)));
    }
    if tx.mchid != pay.mch_id || tx.appid != pay.app_id {
        tracing::error!(
            out_trade_no = no,
            mchid = %tx.mchid,
            appid = %tx.appid,
            "WeChat Pay reported a payment for another merchant or app; not credited"
        );
        return Ok(Settled::Refused("another mchid or appid".into()));
    }
    let Some(order) = by_id(db, no).await? else {
        tracing::error!(
            out_trade_no = no,
            "WeChat Pay reported a payment for an unknown order; not credited"
        );
        return Ok(Settled::Refused("unknown order".into()));
    };
    if order.status == PAID {
        return Ok(Settled::AlreadyPaid);
    }
    if tx.amount.total != Some(order.price_fen)
        || tx.amount.currency.as_deref().is_some_and(|c| c != "CNY")
    {
        tracing::error!(
            out_trade_no = no,
            expected_fen = order.price_fen,
            reported_fen = ?tx.amount.total,
            currency = ?tx.amount.currency,
            "WeChat Pay reported another amount than the order's; not credited, order closed for review"
        );
        let note = format!(
            "not credited: WeChat Pay reported {:?} {:?}, the order is {} fen",
            tx.amount.total, tx.amount.currency, order.price_fen
        );
        close(db, no, &note).await?;
        return Ok(Settled::Refused("amount differs".into()));
    }
    // The conditional update is the transaction's first statement: on SQLite a
    // transaction that reads first cannot wait for the write lock (see `holds::take`).
    let txn = db.begin().await?;
    let moved = pay_order::Entity::update_many()
        .col_expr(pay_order::Column::Status, Expr::value(PAID))
        .col_expr(
            pay_order::Column::PaidAt,
            Expr::value(crate::clock::unix_millis()),
        )
        .col_expr(
            pay_order::Column::TransactionId,
            Expr::value(tx.transaction_id.clone()),
        )
        .filter(pay_order::Column::OutTradeNo.eq(no))
        .filter(pay_order::Column::Status.ne(PAID))
        .exec(&txn)
        .await?;
    if moved.rows_affected != 1 {
        return Ok(Settled::AlreadyPaid);
    }
    let note = format!("WeChat Pay {}", order.description);
    if !credits::credit_payment(&txn, order.user_id, order.credit_micros, no, &note).await? {
        // The ledger has this payment but the order was not paid: should not happen;
        // the unique reference kept the money right. Roll back (dropping `txn`).
        tracing::error!(
            out_trade_no = no,
            "ledger already holds this payment while the order was unpaid"
        );
        return Ok(Settled::AlreadyPaid);
    }
    txn.commit().await?;
    tracing::info!(
        out_trade_no = no,
        user_id = order.user_id,
        credit_micros = order.credit_micros,
        "WeChat Pay order paid and credited"
    );
    metrics::counter!(crate::metrics::PAY_CREDITED).increment(1);
    Ok(Settled::Credited)
}
