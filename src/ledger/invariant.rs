//! The ledger invariant, checkable at any time: for every user
//! `balance + open holds == sum(ledger)` and `balance >= 0`.

use std::collections::HashMap;

use entity::{hold, ledger_entry, user};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseConnection, EntityTrait, IsolationLevel,
    QueryFilter, QuerySelect, TransactionTrait,
};
use serde::Serialize;

use crate::error::AppError;

#[derive(Debug, Serialize)]
pub struct Violation {
    pub user_id: i64,
    pub balance_micros: i64,
    pub held_micros: i64,
    pub ledger_sum_micros: i64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub ok: bool,
    pub users_checked: usize,
    pub violations: Vec<Violation>,
}

/// Sums per user, computed in Rust from plain columns (portable across the three
/// databases, whose `SUM` types differ).
async fn sums<C: ConnectionTrait>(
    db: &C,
) -> Result<(HashMap<i64, i64>, HashMap<i64, i64>), AppError> {
    let mut held = HashMap::new();
    let holds: Vec<(i64, i64)> = hold::Entity::find()
        .select_only()
        .column(hold::Column::UserId)
        .column(hold::Column::AmountMicros)
        .filter(hold::Column::Status.eq(super::holds::OPEN))
        .into_tuple()
        .all(db)
        .await?;
    for (user, amount) in holds {
        *held.entry(user).or_insert(0i64) += amount;
    }
    let mut ledger = HashMap::new();
    let entries: Vec<(i64, i64)> = ledger_entry::Entity::find()
        .select_only()
        .column(ledger_entry::Column::UserId)
        .column(ledger_entry::Column::AmountMicros)
        .into_tuple()
        .all(db)
        .await?;
    for (user, amount) in entries {
        *ledger.entry(user).or_insert(0i64) += amount;
    }
    Ok((held, ledger))
}

/// Checks every user. The three reads share one snapshot (a repeatable-read transaction;
/// on SQLite any read transaction is one), so a settlement committing meanwhile is seen
/// entirely or not at all.
pub async fn check(db: &DatabaseConnection) -> Result<Report, AppError> {
    let isolation = match db.get_database_backend() {
        DatabaseBackend::Sqlite => None,
        _ => Some(IsolationLevel::RepeatableRead),
    };
    let txn = db.begin_with_config(isolation, None).await?;
    let (held, ledger) = sums(&txn).await?;
    let users: Vec<(i64, i64)> = user::Entity::find()
        .select_only()
        .column(user::Column::Id)
        .column(user::Column::BalanceMicros)
        .into_tuple()
        .all(&txn)
        .await?;
    txn.commit().await?;
    let violations: Vec<Violation> = users
        .iter()
        .filter_map(|&(user_id, balance)| {
            let held = held.get(&user_id).copied().unwrap_or(0);
            let sum = ledger.get(&user_id).copied().unwrap_or(0);
            (balance < 0 || balance + held != sum).then_some(Violation {
                user_id,
                balance_micros: balance,
                held_micros: held,
                ledger_sum_micros: sum,
            })
        })
        .collect();
    Ok(Report {
        ok: violations.is_empty(),
        users_checked: users.len(),
        violations,
    })
}

/// `(held, ledger sum)` of one user.
pub async fn user_sums(db: &DatabaseConnection, user_id: i64) -> Result<(i64, i64), AppError> {
    let held: Vec<i64> = hold::Entity::find()
        .select_only()
        .column(hold::Column::AmountMicros)
        .filter(hold::Column::UserId.eq(user_id))
        .filter(hold::Column::Status.eq(super::holds::OPEN))
        .into_tuple()
        .all(db)
        .await?;
    let ledger: Vec<i64> = ledger_entry::Entity::find()
        .select_only()
        .column(ledger_entry::Column::AmountMicros)
        .filter(ledger_entry::Column::UserId.eq(user_id))
        .into_tuple()
        .all(db)
        .await?;
    Ok((held.iter().sum(), ledger.iter().sum()))
}
