//! Money in: recharge codes (each works once, ever), admin credits or debits (an
//! idempotency key applies once) and paid WeChat Pay orders (each credits once). Every credit is a ledger entry with a unique
//! reference, in the same transaction as the balance change.

use entity::{ledger_entry, redeem_code, user};
use rand::Rng;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, SqlErr, TransactionTrait,
};

use crate::error::AppError;

/// Letters and digits that cannot be mistaken for each other when typed from a card.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
const CODE_LEN: usize = 16;

/// A new recharge code: 16 symbols of 5 bits from the OS's random source (80 bits).
pub fn new_code() -> String {
    let mut rng = rand::rng();
    (0..CODE_LEN)
        .map(|_| CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())] as char)
        .collect()
}

/// Mints `count` codes worth `amount_micros` each.
pub async fn mint_codes(
    db: &DatabaseConnection,
    count: usize,
    amount_micros: i64,
) -> Result<Vec<String>, AppError> {
    let now = crate::clock::unix_millis();
    let codes: Vec<String> = (0..count).map(|_| new_code()).collect();
    let rows = codes.iter().map(|code| redeem_code::ActiveModel {
        code: Set(code.clone()),
        amount_micros: Set(amount_micros),
        created_at: Set(now),
        redeemed_by: Set(None),
        redeemed_at: Set(None),
    });
    redeem_code::Entity::insert_many(rows).exec(db).await?;
    Ok(codes)
}

/// Normalises what a person typed: case and separators do not matter.
pub fn normalise_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Applies `code` to `user_id`'s balance, once ever. Returns the amount and the new balance.
pub async fn redeem(
    db: &DatabaseConnection,
    user_id: i64,
    code: &str,
) -> Result<(i64, i64), AppError> {
    let code = normalise_code(code);
    let txn = db.begin().await?;
    let now = crate::clock::unix_millis();
    // Claiming the code is the conditional update: of concurrent redemptions exactly
    // one sees a row change.
    let claimed = redeem_code::Entity::update_many()
        .col_expr(redeem_code::Column::RedeemedBy, Expr::value(user_id))
        .col_expr(redeem_code::Column::RedeemedAt, Expr::value(now))
        .filter(redeem_code::Column::Code.eq(code.as_str()))
        .filter(redeem_code::Column::RedeemedBy.is_null())
        .exec(&txn)
        .await?;
    if claimed.rows_affected != 1 {
        let exists = redeem_code::Entity::find_by_id(code.clone())
            .one(&txn)
            .await?
            .is_some();
        return Err(if exists {
            AppError::bad_request("兑换码已被使用")
        } else {
            AppError::NotFound("兑换码不存在")
        });
    }
    let amount = redeem_code::Entity::find_by_id(code.clone())
        .one(&txn)
        .await?
        .map_or(0, |c| c.amount_micros);
    credit_in(
        &txn,
        user_id,
        amount,
        "redeem",
        &super::reference("code", &code),
        "recharge code",
    )
    .await?;
    let balance = balance_of(&txn, user_id).await?;
    txn.commit().await?;
    Ok((amount, balance))
}

/// The outcome of an admin credit.
pub struct Credited {
    pub balance_micros: i64,
    /// False when the idempotency key had been used: nothing moved this time.
    pub applied: bool,
}

/// Credits (or, negative, debits — never below zero) `user_id`'s balance.
pub async fn admin_credit(
    db: &DatabaseConnection,
    user_id: i64,
    amount_micros: i64,
    note: &str,
    idempotency_key: Option<&str>,
) -> Result<Credited, AppError> {
    let reference = match idempotency_key {
        Some(key) => super::reference("admin", key),
        None => super::reference("admin", &crate::chat::store::new_id()),
    };
    if user::Entity::find_by_id(user_id).one(db).await?.is_none() {
        return Err(AppError::NotFound("用户不存在"));
    }
    // Writes first: see `holds::take` on SQLite transactions.
    let txn = db.begin().await?;
    match credit_in(&txn, user_id, amount_micros, "admin", &reference, note).await {
        Ok(()) => {
            let balance_micros = balance_of(&txn, user_id).await?;
            txn.commit().await?;
            Ok(Credited {
                balance_micros,
                applied: true,
            })
        }
        Err(CreditError::Duplicate) => {
            drop(txn);
            Ok(Credited {
                balance_micros: balance_of(db, user_id).await?,
                applied: false,
            })
        }
        Err(CreditError::Insufficient) => Err(AppError::bad_request("余额不足以扣减")),
        Err(CreditError::Db(e)) => Err(e.into()),
    }
}

/// Credits a paid WeChat Pay order inside the caller's transaction (which has just moved
/// the order to paid): a `pay` ledger entry with reference `pay:<out_trade_no>` and the
/// balance. False when the reference was used — nothing moved, and on PostgreSQL the
/// transaction is spoiled: the caller must roll it back.
pub async fn credit_payment<C: sea_orm::ConnectionTrait>(
    txn: &C,
    user_id: i64,
    amount_micros: i64,
    out_trade_no: &str,
    note: &str,
) -> Result<bool, AppError> {
    let reference = super::reference("pay", out_trade_no);
    match credit_in(txn, user_id, amount_micros, "pay", &reference, note).await {
        Ok(()) => Ok(true),
        Err(CreditError::Duplicate) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

enum CreditError {
    /// The reference was already used: this credit was applied before.
    Duplicate,
    /// A debit larger than the balance.
    Insufficient,
    Db(DbErr),
}

impl From<DbErr> for CreditError {
    fn from(e: DbErr) -> Self {
        CreditError::Db(e)
    }
}

impl From<CreditError> for AppError {
    fn from(e: CreditError) -> Self {
        match e {
            CreditError::Duplicate => AppError::bad_request("重复的操作"),
            CreditError::Insufficient => AppError::InsufficientBalance,
            CreditError::Db(e) => e.into(),
        }
    }
}

/// The ledger entry first (its unique reference refuses a repeat), then the balance.
async fn credit_in<C: sea_orm::ConnectionTrait>(
    db: &C,
    user_id: i64,
    amount: i64,
    kind: &str,
    reference: &str,
    note: &str,
) -> Result<(), CreditError> {
    let inserted = ledger_entry::ActiveModel {
        user_id: Set(user_id),
        amount_micros: Set(amount),
        kind: Set(kind.to_string()),
        reference: Set(reference.to_string()),
        note: Set(note.chars().take(250).collect()),
        created_at: Set(crate::clock::unix_millis()),
        ..Default::default()
    }
    .insert(db)
    .await;
    if let Err(e) = inserted {
        return Err(match e.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(_)) => CreditError::Duplicate,
            _ => CreditError::Db(e),
        });
    }
    let mut update = user::Entity::update_many()
        .col_expr(
            user::Column::BalanceMicros,
            Expr::col(user::Column::BalanceMicros).add(amount),
        )
        .filter(user::Column::Id.eq(user_id));
    if amount < 0 {
        update = update.filter(user::Column::BalanceMicros.gte(-amount));
    }
    if update.exec(db).await?.rows_affected != 1 {
        return Err(CreditError::Insufficient);
    }
    Ok(())
}

async fn balance_of<C: sea_orm::ConnectionTrait>(db: &C, user_id: i64) -> Result<i64, AppError> {
    Ok(user::Entity::find_by_id(user_id)
        .one(db)
        .await?
        .map_or(0, |u| u.balance_micros))
}

#[cfg(test)]
mod tests {
    #[test]
    fn codes_are_long_unambiguous_and_normalised() {
        let a = super::new_code();
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|b| super::CODE_ALPHABET.contains(&b)));
        assert_ne!(a, super::new_code());
        assert_eq!(super::normalise_code("abcd-efgh 2345"), "ABCDEFGH2345");
    }
}
