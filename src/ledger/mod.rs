//! Money — the only code that moves it. Integer micros everywhere.
//!
//! - [`holds`]: before an answer, take one free message or hold its worst-case price
//!   with one conditional update; after it, settle exactly once in one transaction.
//! - [`credits`]: recharge codes, admin credits and paid WeChat Pay orders, each applied once.
//! - [`invariant`]: `balance + open holds == sum(ledger)` and `balance >= 0`, per user.
//! - [`sweep`]: holds left open by a crash are settled from what was stored, or released.
//! - [`pricing`]: what tokens cost, rounded up. [`day`]: the local day of free quotas.

pub mod credits;
pub mod day;
pub mod holds;
pub mod invariant;
pub mod pricing;
pub mod sweep;

/// A unique reference for a ledger entry a given cause writes (the unique index on
/// `reference` makes a second write of the same cause fail instead of moving money).
pub fn reference(kind: &str, id: &str) -> String {
    format!("{kind}:{id}")
}
