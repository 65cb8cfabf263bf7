//! Reconciliation: a pending order is checked with WeChat Pay's order query — by
//! `GET /api/pay/orders/{id}` at once, by the periodic sweep once it is
//! `query_after_secs` old — so a lost notification still credits, once (through
//! [`orders::settle_paid`]). An order still unpaid past its expiry is closed at WeChat
//! Pay, then here.

use entity::pay_order;

use super::api::{PayError, WechatPay};
use super::orders::{self, Settled};
use crate::app::App;
use crate::error::AppError;

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    Paid,
    Closed,
    StillPending,
}

/// Asks WeChat Pay about one pending order and acts on the answer. A WeChat Pay that
/// cannot be reached leaves the order pending (the next check tries again).
pub async fn check(
    app: &App,
    pay: &WechatPay,
    order: &pay_order::Model,
) -> Result<Checked, AppError> {
    let no = order.out_trade_no.as_str();
    let expired = crate::clock::unix_millis() >= order.expires_at;
    let found = match pay.query(&app.http, no).await {
        Ok(found) => found,
        Err(e) => {
            log_failure("order query", no, &e);
            return Ok(Checked::StillPending);
        }
    };
    match found {
        Some(tx) if tx.out_trade_no != no => {
            tracing::error!(
                out_trade_no = no,
                answered = %tx.out_trade_no,
                "WeChat Pay answered the query about another order"
            );
            Ok(Checked::StillPending)
        }
        Some(tx) if tx.trade_state == "SUCCESS" => {
            match orders::settle_paid(&app.db, pay, &tx).await? {
                Settled::Credited | Settled::AlreadyPaid => Ok(Checked::Paid),
                Settled::Refused(_) => Ok(after(app, no).await?),
            }
        }
        // Final states without money for us.
        Some(tx) if matches!(tx.trade_state.as_str(), "CLOSED" | "REVOKED" | "PAYERROR") => {
            orders::close(&app.db, no, &format!("WeChat Pay: {}", tx.trade_state)).await?;
            Ok(after(app, no).await?)
        }
        // NOTPAY, USERPAYING (and anything new): close only once expired.
        Some(_) if expired => close_expired(app, pay, no).await,
        // Never placed at WeChat Pay (the call failed, or the process died first).
        None if expired => {
            orders::close(&app.db, no, "expired; unknown to WeChat Pay").await?;
            Ok(after(app, no).await?)
        }
        Some(_) | None => Ok(Checked::StillPending),
    }
}

/// Closes an expired unpaid order at WeChat Pay, then here. If the close fails the
/// order stays pending: the payment may have just gone through, the next check sees.
async fn close_expired(app: &App, pay: &WechatPay, no: &str) -> Result<Checked, AppError> {
    match pay.close(&app.http, no).await {
        Ok(()) => {
            orders::close(&app.db, no, "expired unpaid").await?;
            tracing::info!(out_trade_no = no, "closed an expired unpaid order");
            Ok(after(app, no).await?)
        }
        Err(e) => {
            log_failure("order close", no, &e);
            Ok(Checked::StillPending)
        }
    }
}

/// The order's status as stored now.
async fn after(app: &App, no: &str) -> Result<Checked, AppError> {
    Ok(match orders::by_id(&app.db, no).await?.map(|o| o.status) {
        Some(s) if s == orders::PAID => Checked::Paid,
        Some(s) if s == orders::CLOSED => Checked::Closed,
        _ => Checked::StillPending,
    })
}

fn log_failure(what: &str, no: &str, e: &PayError) {
    match e {
        PayError::BadSignature => {
            tracing::error!(
                out_trade_no = no,
                "{what}: {e}; check wechat_pay.platform_public_key_path"
            )
        }
        _ => tracing::warn!(out_trade_no = no, "{what}: {e}"),
    }
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub paid: usize,
    pub closed: usize,
}

/// How many pending orders one sweep checks at most (the rest wait for the next).
const BATCH: u64 = 200;

/// Checks every pending order at least `query_after_secs` old (oldest first, up to a
/// batch per run). Every replica may run it at once: settling and closing are
/// conditional updates.
pub async fn run_once(app: &App) -> Result<Swept, AppError> {
    let Some(pay) = app.pay.as_ref() else {
        return Ok(Swept::default());
    };
    let query_after_ms = i64::try_from(pay.query_after_secs)
        .unwrap_or(i64::MAX / 4)
        .saturating_mul(1000);
    let cutoff = crate::clock::unix_millis() - query_after_ms;
    let mut swept = Swept::default();
    for order in orders::pending(&app.db, cutoff, BATCH).await? {
        match check(app, pay, &order).await? {
            Checked::Paid => swept.paid += 1,
            Checked::Closed => swept.closed += 1,
            Checked::StillPending => {}
        }
    }
    Ok(swept)
}
