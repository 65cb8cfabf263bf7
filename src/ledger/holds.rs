//! Holds: before the upstream is called, one free message is taken or the answer's
//! worst-case price leaves the balance — each with one conditional update, never a
//! read-then-write — and a durable hold row records it. After the answer, [`settle`]
//! runs exactly once per hold, in one transaction: the hold closes, the unused part
//! returns, the charge is a ledger entry, the usage is recorded and the answer stored.

use entity::{daily_usage, hold, ledger_entry, usage_record, user};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    QuerySelect, QueryTrait, Statement, TransactionTrait,
};

use super::pricing::cost;
use crate::chat::store::{self, Finished};
use crate::config::ModelConfig;
use crate::error::{AppError, Refusal};
use crate::upstream::chunk::Usage;

/// The fewest output tokens worth answering with; a balance that cannot pay for them
/// is refused with 101.
pub const MIN_ANSWER_TOKENS: u64 = 16;

pub const OPEN: &str = "open";
pub const SETTLED: &str = "settled";
pub const RELEASED: &str = "released";
pub const MONEY: &str = "money";
pub const FREE: &str = "free";

/// A hold as the answer task carries it.
#[derive(Debug, Clone)]
pub struct Hold {
    pub id: String,
    pub user_id: i64,
    pub free: bool,
    pub amount_micros: i64,
    pub day: String,
    pub prompt_tokens: u64,
}

/// A hold and the output budget it pays for.
#[derive(Debug, Clone)]
pub struct Grant {
    pub hold: Hold,
    pub max_tokens: u64,
}

/// What one answer may take.
pub struct Request<'a> {
    pub user_id: i64,
    pub message_id: &'a str,
    pub price: &'a ModelConfig,
    /// Our own count of the prompt.
    pub prompt_tokens: u64,
    pub max_tokens: u64,
    pub free_per_day: u32,
    pub day: &'a str,
    /// Statements to run with the hold's insert, once the hold is granted (the turn's
    /// rows): on SQLite they share its round trip.
    pub with: Vec<Statement>,
}

/// Our prompt count can differ from the upstream's tokenizer: hold a margin over it.
fn prompt_with_margin(prompt_tokens: u64) -> u64 {
    prompt_tokens + prompt_tokens / 10 + 16
}

/// Takes a free message, or holds the worst-case price (lowering the output budget to
/// what the balance affords). Runs inside the caller's transaction, so a refusal or a
/// later failure stores nothing. Its first statement writes: on SQLite a transaction
/// that reads first cannot wait for the write lock and fails at once under contention.
/// The user's row is only read when the worst case cannot be paid (a guest's debit
/// never passes; a user that does not exist is told to log in again).
pub async fn take<C: ConnectionTrait>(db: &C, mut req: Request<'_>) -> Result<Grant, AppError> {
    let user_id = req.user_id;
    if req.free_per_day > 0 && take_free_message(db, user_id, req.day, req.free_per_day).await? {
        let hold = insert(db, &mut req, FREE, 0).await?;
        return Ok(Grant {
            hold,
            max_tokens: req.max_tokens,
        });
    }
    let prompt = prompt_with_margin(req.prompt_tokens);
    let worst = cost(req.price, &usage(prompt, req.max_tokens));
    if debit(db, user_id, worst).await? {
        let hold = insert(db, &mut req, MONEY, worst).await?;
        return Ok(Grant {
            hold,
            max_tokens: req.max_tokens,
        });
    }
    // Not the worst case: perhaps a shorter answer.
    let user = user::Entity::find_by_id(user_id)
        .one(db)
        .await?
        .ok_or(AppError::Unauthorized("账号不存在，请重新登录"))?;
    if user.is_guest {
        return Err(quota_exhausted());
    }
    let balance = user.balance_micros;
    // Never above what was asked for (the balance may have risen meanwhile).
    let affordable = Ord::min(
        affordable_output(req.price, prompt, balance),
        req.max_tokens,
    );
    if affordable >= MIN_ANSWER_TOKENS {
        let amount = cost(req.price, &usage(prompt, affordable));
        if debit(db, user_id, amount).await? {
            let hold = insert(db, &mut req, MONEY, amount).await?;
            return Ok(Grant {
                hold,
                max_tokens: affordable,
            });
        }
    }
    if req.free_per_day > 0 && balance <= 0 {
        Err(quota_exhausted())
    } else {
        Err(AppError::InsufficientBalance)
    }
}

/// [`take`] in a transaction of its own, for answers that store nothing else with the
/// hold (`/v1`, images).
pub async fn take_alone(db: &DatabaseConnection, req: Request<'_>) -> Result<Grant, AppError> {
    let txn = db.begin().await?;
    let grant = take(&txn, req).await?;
    txn.commit().await?;
    Ok(grant)
}

fn quota_exhausted() -> AppError {
    AppError::Refused {
        reason: Refusal::QuotaExhausted,
        msg: "今日免费次数已用完，请充值后继续".into(),
        retry_after_secs: None,
    }
}

fn usage(prompt_tokens: u64, completion_tokens: u64) -> Usage {
    Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens.saturating_add(completion_tokens),
    }
}

/// The most output tokens `balance` pays for after the prompt (`u64::MAX` when output is free).
pub fn affordable_output(price: &ModelConfig, prompt_tokens: u64, balance: i64) -> u64 {
    let base = cost(price, &usage(prompt_tokens, 0));
    if balance < base {
        return 0;
    }
    if price.output_micros_per_million == 0 {
        return u64::MAX;
    }
    // cost = ceil((p·in + n·out) / 1e6) + request ≤ balance
    //   ⟺ n ≤ ((balance − request)·1e6 − p·in) / out
    let budget = (balance as u128 - u128::from(price.request_micros)) * 1_000_000;
    let prompt_part = u128::from(prompt_tokens) * u128::from(price.input_micros_per_million);
    let n = budget.saturating_sub(prompt_part) / u128::from(price.output_micros_per_million);
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// `balance -= amount` only if the balance covers it (and the user is no guest: guests
/// have free messages only). One statement: concurrent requests cannot both pass the check.
async fn debit<C: ConnectionTrait>(db: &C, user_id: i64, amount: i64) -> Result<bool, AppError> {
    let result = user::Entity::update_many()
        .col_expr(
            user::Column::BalanceMicros,
            Expr::col(user::Column::BalanceMicros).sub(amount),
        )
        .filter(user::Column::Id.eq(user_id))
        .filter(user::Column::BalanceMicros.gte(amount))
        .filter(user::Column::IsGuest.eq(false))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// One more free message today, only if today's count is below the limit.
async fn take_free_message<C: ConnectionTrait>(
    db: &C,
    user_id: i64,
    day: &str,
    limit: u32,
) -> Result<bool, AppError> {
    daily_usage::Entity::insert(daily_usage::ActiveModel {
        user_id: Set(user_id),
        day: Set(day.to_string()),
        free_used: Set(0),
    })
    .on_conflict_do_nothing_on([daily_usage::Column::UserId, daily_usage::Column::Day])
    .exec(db)
    .await?;
    let result = daily_usage::Entity::update_many()
        .col_expr(
            daily_usage::Column::FreeUsed,
            Expr::col(daily_usage::Column::FreeUsed).add(1),
        )
        .filter(daily_usage::Column::UserId.eq(user_id))
        .filter(daily_usage::Column::Day.eq(day))
        .filter(daily_usage::Column::FreeUsed.lt(limit as i32))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// Free messages `user_id` has left on `day`.
pub async fn free_left(
    db: &DatabaseConnection,
    user_id: i64,
    day: &str,
    limit: u32,
) -> Result<u32, AppError> {
    let used = daily_usage::Entity::find_by_id((user_id, day.to_string()))
        .one(db)
        .await?
        .map_or(0, |d| Ord::max(d.free_used, 0) as u32);
    Ok(limit.saturating_sub(used))
}

async fn insert<C: ConnectionTrait>(
    db: &C,
    req: &mut Request<'_>,
    kind: &str,
    amount: i64,
) -> Result<Hold, AppError> {
    let id = store::new_id();
    let row = hold::Entity::insert(hold::ActiveModel {
        id: Set(id.clone()),
        user_id: Set(req.user_id),
        message_id: Set(req.message_id.to_string()),
        kind: Set(kind.to_string()),
        amount_micros: Set(amount),
        prompt_tokens: Set(req.prompt_tokens as i64),
        day: Set(req.day.to_string()),
        status: Set(OPEN.to_string()),
        created_at: Set(crate::clock::unix_millis()),
        settled_at: Set(None),
    })
    .build(db.get_database_backend());
    let mut statements = vec![row];
    statements.append(&mut req.with);
    crate::db::script(db, statements, None).await?;
    Ok(Hold {
        id,
        user_id: req.user_id,
        free: kind == FREE,
        amount_micros: amount,
        day: req.day.to_string(),
        prompt_tokens: req.prompt_tokens,
    })
}

impl From<&hold::Model> for Hold {
    fn from(h: &hold::Model) -> Self {
        Hold {
            id: h.id.clone(),
            user_id: h.user_id,
            free: h.kind == FREE,
            amount_micros: h.amount_micros,
            day: h.day.clone(),
            prompt_tokens: Ord::max(h.prompt_tokens, 0) as u64,
        }
    }
}

/// Everything one settlement writes.
pub struct Settlement<'a> {
    pub hold: &'a Hold,
    pub message_id: &'a str,
    pub model: &'a str,
    pub channel: &'a str,
    pub usage: Usage,
    /// The price of `usage`.
    pub cost_micros: i64,
    /// A failed answer: nothing is charged and a free message is given back.
    pub failed: bool,
    pub first_token_ms: Option<i64>,
    pub total_ms: i64,
    /// The answer's final row.
    pub answer: Finished<'a>,
}

/// What a settlement did.
#[derive(Debug, Clone, Copy)]
pub struct Settled {
    /// What left the balance for this answer.
    pub charged_micros: i64,
    pub balance_micros: i64,
    /// False when the hold had already been settled (by the sweep): nothing moved.
    pub applied: bool,
}

/// Settles `s.hold` exactly once and stores the answer, in one transaction.
pub async fn settle(db: &DatabaseConnection, s: &Settlement<'_>) -> Result<Settled, AppError> {
    let txn = db.begin().await?;
    let now = crate::clock::unix_millis();
    let closed = hold::Entity::update_many()
        .col_expr(
            hold::Column::Status,
            Expr::value(if s.failed { RELEASED } else { SETTLED }),
        )
        .col_expr(hold::Column::SettledAt, Expr::value(now))
        .filter(hold::Column::Id.eq(s.hold.id.as_str()))
        .filter(hold::Column::Status.eq(OPEN))
        .exec(&txn)
        .await?;
    let applied = closed.rows_affected == 1;
    let backend = txn.get_database_backend();
    let mut charged = 0;
    // What the settlement writes after closing the hold, run as one script on SQLite.
    let mut writes = Vec::new();
    if applied {
        let user_id = s.hold.user_id;
        if s.hold.free {
            if s.failed {
                writes.push(
                    daily_usage::Entity::update_many()
                        .col_expr(
                            daily_usage::Column::FreeUsed,
                            Expr::col(daily_usage::Column::FreeUsed).sub(1),
                        )
                        .filter(daily_usage::Column::UserId.eq(user_id))
                        .filter(daily_usage::Column::Day.eq(s.hold.day.as_str()))
                        .filter(daily_usage::Column::FreeUsed.gt(0))
                        .build(backend),
                );
            }
        } else {
            // Never more than was held: the hold is the most the user agreed to pay.
            charged = if s.failed {
                0
            } else {
                s.cost_micros.clamp(0, s.hold.amount_micros)
            };
            if s.cost_micros > s.hold.amount_micros && !s.failed {
                tracing::warn!(hold = %s.hold.id, cost = s.cost_micros, held = s.hold.amount_micros, "cost above the hold; charging the hold");
            }
            let refund = s.hold.amount_micros - charged;
            if refund > 0 {
                writes.push(
                    user::Entity::update_many()
                        .col_expr(
                            user::Column::BalanceMicros,
                            Expr::col(user::Column::BalanceMicros).add(refund),
                        )
                        .filter(user::Column::Id.eq(user_id))
                        .build(backend),
                );
            }
            if charged > 0 {
                writes.push(
                    ledger_entry::Entity::insert(ledger_entry::ActiveModel {
                        user_id: Set(user_id),
                        amount_micros: Set(-charged),
                        kind: Set("charge".into()),
                        reference: Set(super::reference("hold", &s.hold.id)),
                        note: Set(format!("{} answer {}", s.model, s.message_id)),
                        created_at: Set(now),
                        ..Default::default()
                    })
                    .build(backend),
                );
            }
        }
        writes.push(
            usage_record::Entity::insert(usage_record::ActiveModel {
                user_id: Set(user_id),
                message_id: Set(s.message_id.to_string()),
                model: Set(s.model.to_string()),
                channel: Set(s.channel.to_string()),
                prompt_tokens: Set(s.usage.prompt_tokens as i64),
                completion_tokens: Set(s.usage.completion_tokens as i64),
                cost_micros: Set(s.cost_micros),
                charged_micros: Set(charged),
                free: Set(s.hold.free),
                first_token_ms: Set(s.first_token_ms),
                total_ms: Set(s.total_ms),
                status: Set(s.answer.status.to_string()),
                created_at: Set(now),
                ..Default::default()
            })
            .build(backend),
        );
        // A hold the sweep already settled also stored the answer: left alone then.
        let answer = Finished {
            cost_micros: charged,
            ..s.answer
        };
        writes.push(store::finish_statement(backend, s.message_id, &answer));
    }
    let balance = user::Entity::find()
        .select_only()
        .column_as(user::Column::BalanceMicros, "balance")
        .filter(user::Column::Id.eq(s.hold.user_id))
        .build(backend);
    let rows = crate::db::script(&txn, writes, Some(balance)).await?;
    let balance_micros = match rows.first() {
        Some(row) => row.try_get::<i64>("", "balance")?,
        None => 0,
    };
    txn.commit().await?;
    Ok(Settled {
        charged_micros: charged,
        balance_micros,
        applied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affordable_output_never_exceeds_the_balance() {
        let price = ModelConfig {
            input_micros_per_million: 150_000,
            output_micros_per_million: 600_000,
            request_micros: 7,
            ..ModelConfig::default()
        };
        for balance in [0i64, 7, 8, 100, 1_000, 123_457, 10_000_000] {
            for prompt in [0u64, 1, 33, 1000] {
                let n = affordable_output(&price, prompt, balance);
                if n > 0 {
                    assert!(
                        cost(&price, &usage(prompt, n)) <= balance,
                        "b={balance} p={prompt} n={n}"
                    );
                    assert!(
                        cost(&price, &usage(prompt, n + 1)) > balance,
                        "b={balance} p={prompt} n={n} is not the most"
                    );
                }
            }
        }
        assert_eq!(affordable_output(&ModelConfig::default(), 10, 0), u64::MAX);
    }
}
