//! Holds: before the upstream is called, one free message is taken or the answer's
//! worst-case price leaves the balance — each with one conditional update, never a
//! read-then-write — and a durable hold row records it. After the answer, [`settle`]
//! runs exactly once per hold, in one transaction: the hold closes, the unused part
//! returns, the charge is a ledger entry, the usage is recorded and the answer stored.

use entity::{daily_usage, hold, ledger_entry, usage_record, user};
use sea_orm::sea_query::{Expr, ExprTrait, Query};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait,
    QueryFilter, QueryResult, QuerySelect, QueryTrait, Statement, TransactionTrait, Value,
};

use super::pricing::cost;
use crate::chat::store::{self, Finished};
use crate::config::ModelConfig;
use crate::db::Template;
use crate::db::trip::{self, Script};
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
/// what the balance affords), and stores the hold with `req.with` in one transaction: a
/// refusal stores nothing, and no answer exists without its hold.
///
/// On SQLite and PostgreSQL the common case — a free message left, or a balance that pays
/// the worst case — is one script, one round trip ([`crate::db::trip`]); anything else (a
/// shorter answer, a refusal) falls to the general path, a transaction of its own.
pub async fn take(db: &DatabaseConnection, req: Request<'_>) -> Result<Grant, AppError> {
    if let Some(grant) = take_in_one_script(db, &req).await? {
        return Ok(grant);
    }
    // Boxed: a transaction's future is kilobytes, and a chat waiting in SQLite's queue
    // would carry that room for nothing.
    Box::pin(async {
        let txn = db.begin().await?;
        let grant = take_in(&txn, req).await?;
        txn.commit().await?;
        Ok(grant)
    })
    .await
}

/// The one-script [`take`]: the free message if one is left, else the worst case from
/// the balance, the hold row of whichever passed (an insert conditional on the change
/// before it), then the turn's rows — all rolled back unless a hold was stored. `None`:
/// neither passed and nothing was written, or the database has no scripts.
async fn take_in_one_script(
    db: &DatabaseConnection,
    req: &Request<'_>,
) -> Result<Option<Grant>, AppError> {
    let backend = db.get_database_backend();
    if !trip::available(backend) {
        return Ok(None);
    }
    let id = store::new_id();
    let now = crate::clock::unix_millis();
    let mut script = Script::new(backend);
    if req.free_per_day > 0 {
        let [ensure_row, take_one] =
            free_message_statements(backend, req.user_id, req.day, req.free_per_day);
        script.push(ensure_row);
        script.push_if_changed(
            take_one,
            hold_statement(backend, &id, req, FREE, 0, now, true)?,
        );
    }
    let worst = cost(
        req.price,
        &usage(prompt_with_margin(req.prompt_tokens), req.max_tokens),
    );
    // Skipped when the free message was taken.
    script.push_if_changed(
        debit_unless_held(backend, req.user_id, worst, &id),
        hold_statement(backend, &id, req, MONEY, worst, now, true)?,
    );
    script.require(
        "EXISTS (SELECT 1 FROM \"holds\" WHERE \"id\" = ?)",
        vec![id.as_str().into()],
    );
    // Copied: a declined script leaves them to the general path.
    script.extend(req.with.iter().cloned());
    script.push(kind_query(backend, &id));
    let Some(rows) = trip::run(db, script).await? else {
        return Ok(None);
    };
    let free = match rows.first() {
        Some(row) => row.get_string("kind")? == FREE,
        None => {
            return Err(AppError::Internal(
                "a committed hold was not read back".into(),
            ));
        }
    };
    Ok(Some(Grant {
        hold: Hold {
            id,
            user_id: req.user_id,
            free,
            amount_micros: if free { 0 } else { worst },
            day: req.day.to_string(),
            prompt_tokens: req.prompt_tokens,
        },
        max_tokens: req.max_tokens,
    }))
}

/// [`take`]'s general path, inside the caller's transaction. Its first statement
/// writes: on SQLite a transaction that reads first cannot wait for the write lock and
/// fails at once under contention. The user's row is only read when the worst case
/// cannot be paid (a guest's debit never passes; a user that does not exist is told to
/// log in again).
async fn take_in<C: ConnectionTrait>(db: &C, mut req: Request<'_>) -> Result<Grant, AppError> {
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
    let statement = debit_statement(db.get_database_backend(), user_id, amount, None);
    Ok(db.execute_raw(statement).await?.rows_affected() == 1)
}

/// [`debit_statement`] skipped when the hold `hold_id` is stored already (the free
/// message of the same script went in first).
fn debit_unless_held(backend: DbBackend, user_id: i64, amount: i64, hold_id: &str) -> Statement {
    static DEBIT_UNLESS_HELD: Template = Template::new();
    DEBIT_UNLESS_HELD.bind(
        backend,
        || debit_statement(backend, user_id, amount, Some(no_hold(hold_id))),
        vec![
            amount.into(),
            user_id.into(),
            amount.into(),
            false.into(),
            1i32.into(),
            hold_id.into(),
        ],
    )
}

/// True while no hold `id` is stored.
fn no_hold(id: &str) -> sea_orm::sea_query::SimpleExpr {
    Expr::exists(
        Query::select()
            .expr(Expr::val(1))
            .from(hold::Entity)
            .and_where(hold::Column::Id.eq(id))
            .to_owned(),
    )
    .not()
}

/// The kind of the hold `id` (`kind`).
fn kind_query(backend: DbBackend, id: &str) -> Statement {
    static KIND: Template = Template::new();
    KIND.bind(
        backend,
        || {
            hold::Entity::find_by_id(id)
                .select_only()
                .column_as(hold::Column::Kind, "kind")
                .build(backend)
        },
        vec![id.into()],
    )
}

fn debit_statement(
    backend: DbBackend,
    user_id: i64,
    amount: i64,
    and: Option<sea_orm::sea_query::SimpleExpr>,
) -> Statement {
    let mut update = user::Entity::update_many()
        .col_expr(
            user::Column::BalanceMicros,
            Expr::col(user::Column::BalanceMicros).sub(amount),
        )
        .filter(user::Column::Id.eq(user_id))
        .filter(user::Column::BalanceMicros.gte(amount))
        .filter(user::Column::IsGuest.eq(false));
    if let Some(and) = and {
        update = update.filter(and);
    }
    update.build(backend)
}

/// One more free message today, only if today's count is below the limit.
async fn take_free_message<C: ConnectionTrait>(
    db: &C,
    user_id: i64,
    day: &str,
    limit: u32,
) -> Result<bool, AppError> {
    let [ensure_row, take_one] =
        free_message_statements(db.get_database_backend(), user_id, day, limit);
    db.execute_raw(ensure_row).await?;
    Ok(db.execute_raw(take_one).await?.rows_affected() == 1)
}

/// Today's usage row (made if missing), then one more free message on it only if the
/// count is below `limit`: the second statement changes one row exactly when one was taken.
fn free_message_statements(
    backend: DbBackend,
    user_id: i64,
    day: &str,
    limit: u32,
) -> [Statement; 2] {
    static ENSURE_ROW: Template = Template::new();
    static TAKE_ONE: Template = Template::new();
    let build = |i: usize| {
        let [ensure_row, take_one] = build_free_message_statements(backend, user_id, day, limit);
        if i == 0 { ensure_row } else { take_one }
    };
    [
        ENSURE_ROW.bind(
            backend,
            || build(0),
            vec![user_id.into(), day.into(), 0i32.into()],
        ),
        TAKE_ONE.bind(
            backend,
            || build(1),
            vec![
                1i32.into(),
                user_id.into(),
                day.into(),
                (limit as i32).into(),
            ],
        ),
    ]
}

fn build_free_message_statements(
    backend: DbBackend,
    user_id: i64,
    day: &str,
    limit: u32,
) -> [Statement; 2] {
    let ensure_row = daily_usage::Entity::insert(daily_usage::ActiveModel {
        user_id: Set(user_id),
        day: Set(day.to_string()),
        free_used: Set(0),
    })
    .on_conflict_do_nothing_on([daily_usage::Column::UserId, daily_usage::Column::Day])
    .build(backend);
    let take_one = daily_usage::Entity::update_many()
        .col_expr(
            daily_usage::Column::FreeUsed,
            Expr::col(daily_usage::Column::FreeUsed).add(1),
        )
        .filter(daily_usage::Column::UserId.eq(user_id))
        .filter(daily_usage::Column::Day.eq(day))
        .filter(daily_usage::Column::FreeUsed.lt(limit as i32))
        .build(backend);
    [ensure_row, take_one]
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
    let now = crate::clock::unix_millis();
    let row = hold_statement(
        db.get_database_backend(),
        &id,
        req,
        kind,
        amount,
        now,
        false,
    )?;
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

/// The hold's row; with `only_after_a_change`, inserted only when the statement before
/// it changed one row.
fn hold_statement(
    backend: DbBackend,
    id: &str,
    req: &Request<'_>,
    kind: &str,
    amount: i64,
    now: i64,
    only_after_a_change: bool,
) -> Result<Statement, AppError> {
    static PLAIN: Template = Template::new();
    static AFTER_A_CHANGE: Template = Template::new();
    let template = if only_after_a_change {
        &AFTER_A_CHANGE
    } else {
        &PLAIN
    };
    let only_if = only_after_a_change.then(|| trip::changed_condition(backend));
    // In column order; the builder takes the same values, so only the SQL is its own.
    let values: [Value; 9] = [
        id.into(),
        req.user_id.into(),
        req.message_id.into(),
        kind.into(),
        amount.into(),
        (req.prompt_tokens as i64).into(),
        req.day.into(),
        OPEN.into(),
        now.into(),
    ];
    template.try_bind(
        backend,
        |values| build_hold_statement(backend, values, only_if),
        values.into(),
    )
}

/// [`hold_statement`] as sea-query builds it, `values` in column order; with `only_if`
/// (SQL), inserted only when that is true then.
fn build_hold_statement(
    backend: DbBackend,
    values: &[Value],
    only_if: Option<&'static str>,
) -> Result<Statement, AppError> {
    use hold::Column as C;
    let values: Vec<_> = values.iter().cloned().map(Expr::val).collect();
    let mut insert = Query::insert();
    insert.into_table(hold::Entity).columns([
        C::Id,
        C::UserId,
        C::MessageId,
        C::Kind,
        C::AmountMicros,
        C::PromptTokens,
        C::Day,
        C::Status,
        C::CreatedAt,
    ]);
    let built = match only_if {
        None => insert.values(values),
        Some(condition) => insert.select_from(
            Query::select()
                .exprs(values)
                .and_where(Expr::cust(condition))
                .to_owned(),
        ),
    };
    built.map_err(|e| AppError::Internal(format!("hold insert: {e}")))?;
    Ok(backend.build(&insert))
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
///
/// On SQLite and PostgreSQL that transaction is one script ([`crate::db::trip`]) that goes
/// through only when it closes the hold itself; a hold found closed already (by the
/// sweep) takes the general path, which then writes nothing and reads the balance.
pub async fn settle(db: &DatabaseConnection, s: &Settlement<'_>) -> Result<Settled, AppError> {
    let now = crate::clock::unix_millis();
    let backend = db.get_database_backend();
    if trip::available(backend) {
        let (charged, writes) = settlement_writes(backend, s, now);
        let mut script = Script::new(backend);
        script.require_one_changed(close_statement(backend, s, now));
        script.extend(writes);
        script.push(balance_query(backend, s.hold.user_id));
        if let Some(rows) = trip::run(db, script).await? {
            return Ok(Settled {
                charged_micros: charged,
                balance_micros: match rows.first() {
                    Some(row) => row.get_i64("balance")?,
                    None => 0,
                },
                applied: true,
            });
        }
    }
    // Boxed: see `take`; here it keeps every open answer's task smaller.
    Box::pin(settle_in_transaction(db, s, now)).await
}

/// [`settle`]'s general path: its own transaction.
async fn settle_in_transaction(
    db: &DatabaseConnection,
    s: &Settlement<'_>,
    now: i64,
) -> Result<Settled, AppError> {
    let backend = db.get_database_backend();
    let txn = db.begin().await?;
    let closed = txn.execute_raw(close_statement(backend, s, now)).await?;
    let applied = closed.rows_affected() == 1;
    // A hold the sweep already settled also stored the answer: left alone then.
    let (charged, writes) = if applied {
        settlement_writes(backend, s, now)
    } else {
        (0, Vec::new())
    };
    // What the settlement writes after closing the hold, run as one script on SQLite.
    let rows =
        crate::db::script(&txn, writes, Some(balance_query(backend, s.hold.user_id))).await?;
    let balance_micros = balance_of(&rows)?;
    txn.commit().await?;
    Ok(Settled {
        charged_micros: charged,
        balance_micros,
        applied,
    })
}

/// Closes the hold, only if it is still open.
fn close_statement(backend: DbBackend, s: &Settlement<'_>, now: i64) -> Statement {
    static CLOSE: Template = Template::new();
    let status = if s.failed { RELEASED } else { SETTLED };
    CLOSE.bind(
        backend,
        || build_close_statement(backend, s, now),
        vec![
            status.into(),
            now.into(),
            s.hold.id.as_str().into(),
            OPEN.into(),
        ],
    )
}

fn build_close_statement(backend: DbBackend, s: &Settlement<'_>, now: i64) -> Statement {
    hold::Entity::update_many()
        .col_expr(
            hold::Column::Status,
            Expr::value(if s.failed { RELEASED } else { SETTLED }),
        )
        .col_expr(hold::Column::SettledAt, Expr::value(now))
        .filter(hold::Column::Id.eq(s.hold.id.as_str()))
        .filter(hold::Column::Status.eq(OPEN))
        .build(backend)
}

/// What a settlement writes once it has closed the hold, and what it charges.
fn settlement_writes(backend: DbBackend, s: &Settlement<'_>, now: i64) -> (i64, Vec<Statement>) {
    let user_id = s.hold.user_id;
    let mut charged = 0;
    let mut writes = Vec::new();
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
            writes.push(refund_statement(backend, user_id, refund));
        }
        if charged > 0 {
            writes.push(charge_statement(backend, s, charged, now));
        }
    }
    writes.push(usage_statement(backend, s, charged, now));
    let answer = Finished {
        cost_micros: charged,
        ..s.answer
    };
    writes.push(store::finish_statement(backend, s.message_id, &answer));
    (charged, writes)
}

/// `refund` back to the balance of `user_id`.
fn refund_statement(backend: DbBackend, user_id: i64, refund: i64) -> Statement {
    static REFUND: Template = Template::new();
    REFUND.bind(
        backend,
        || {
            user::Entity::update_many()
                .col_expr(
                    user::Column::BalanceMicros,
                    Expr::col(user::Column::BalanceMicros).add(refund),
                )
                .filter(user::Column::Id.eq(user_id))
                .build(backend)
        },
        vec![refund.into(), user_id.into()],
    )
}

/// The ledger entry of the answer's charge.
fn charge_statement(backend: DbBackend, s: &Settlement<'_>, charged: i64, now: i64) -> Statement {
    static CHARGE: Template = Template::new();
    let reference = super::reference("hold", &s.hold.id);
    let note = format!("{} answer {}", s.model, s.message_id);
    CHARGE.bind(
        backend,
        || {
            ledger_entry::Entity::insert(ledger_entry::ActiveModel {
                user_id: Set(s.hold.user_id),
                amount_micros: Set(-charged),
                kind: Set("charge".into()),
                reference: Set(reference.clone()),
                note: Set(note.clone()),
                created_at: Set(now),
                ..Default::default()
            })
            .build(backend)
        },
        vec![
            s.hold.user_id.into(),
            (-charged).into(),
            "charge".into(),
            reference.as_str().into(),
            note.as_str().into(),
            now.into(),
        ],
    )
}

/// The answer's usage record.
fn usage_statement(backend: DbBackend, s: &Settlement<'_>, charged: i64, now: i64) -> Statement {
    static USAGE: Template = Template::new();
    USAGE.bind(
        backend,
        || build_usage_statement(backend, s, charged, now),
        vec![
            s.hold.user_id.into(),
            s.message_id.into(),
            s.model.into(),
            s.channel.into(),
            (s.usage.prompt_tokens as i64).into(),
            (s.usage.completion_tokens as i64).into(),
            s.cost_micros.into(),
            charged.into(),
            s.hold.free.into(),
            s.first_token_ms.into(),
            s.total_ms.into(),
            s.answer.status.into(),
            now.into(),
        ],
    )
}

fn build_usage_statement(
    backend: DbBackend,
    s: &Settlement<'_>,
    charged: i64,
    now: i64,
) -> Statement {
    let user_id = s.hold.user_id;
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
    .build(backend)
}

fn balance_query(backend: DbBackend, user_id: i64) -> Statement {
    static BALANCE: Template = Template::new();
    BALANCE.bind(
        backend,
        || {
            user::Entity::find()
                .select_only()
                .column_as(user::Column::BalanceMicros, "balance")
                .filter(user::Column::Id.eq(user_id))
                .build(backend)
        },
        vec![user_id.into()],
    )
}

fn balance_of(rows: &[QueryResult]) -> Result<i64, AppError> {
    Ok(match rows.first() {
        Some(row) => row.try_get::<i64>("", "balance")?,
        None => 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every statement of a hold and a settlement, on every backend, with two sets of
    /// values each: in debug builds a template checks itself against its builder.
    #[test]
    fn the_hold_and_settlement_statements_bind_what_their_builders_build() {
        let price = ModelConfig::default();
        for backend in crate::db::template::BACKENDS {
            for (n, failed, free) in [(1, false, false), (2, true, true)] {
                let id = format!("hold-{n}");
                let req = Request {
                    user_id: n,
                    message_id: "answer",
                    price: &price,
                    prompt_tokens: 10 * n as u64,
                    max_tokens: 100,
                    free_per_day: n as u32,
                    day: "2026-11-23",
                    with: Vec::new(),
                };
                debit_unless_held(backend, n, 50 * n, &id);
                kind_query(backend, &id);
                for after_a_change in [false, true] {
                    hold_statement(backend, &id, &req, MONEY, 5 * n, 1000 + n, after_a_change)
                        .unwrap();
                }
                free_message_statements(backend, n, req.day, 20 + n as u32);
                let hold = Hold {
                    id,
                    user_id: n,
                    free,
                    amount_micros: 100 * n,
                    day: req.day.into(),
                    prompt_tokens: 10,
                };
                let s = Settlement {
                    hold: &hold,
                    message_id: "answer",
                    model: "m",
                    channel: "c",
                    usage: usage(3, 4 * n as u64),
                    cost_micros: 7 * n,
                    failed,
                    first_token_ms: (n == 1).then_some(12),
                    total_ms: 34 * n,
                    answer: Finished {
                        status: "done",
                        content: "text",
                        prompt_tokens: 3,
                        completion_tokens: 4,
                        cost_micros: 7,
                        error_code: (n == 2).then_some(500),
                    },
                };
                close_statement(backend, &s, 1000 + n);
                refund_statement(backend, n, 9 * n);
                charge_statement(backend, &s, 6 * n, 1000 + n);
                usage_statement(backend, &s, 6 * n, 1000 + n);
                balance_query(backend, n);
                let (_, writes) = settlement_writes(backend, &s, 1000 + n);
                assert!(!writes.is_empty());
            }
        }
    }

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
