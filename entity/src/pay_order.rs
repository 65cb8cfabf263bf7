//! `pay_orders`: one WeChat Pay order. The package's price and credit are copied onto
//! it, so changing the packages never changes what an order pays or credits. It moves
//! `pending → paid` (exactly once, in the transaction of its ledger credit) or
//! `pending → closed`; a closed order that WeChat Pay reports paid is still credited.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "pay_orders")]
pub struct Model {
    /// WeChat Pay's `out_trade_no`, also the order id of the API: 32 random hex digits.
    #[sea_orm(primary_key, auto_increment = false)]
    pub out_trade_no: String,
    pub user_id: i64,
    pub package_id: String,
    /// The package's title, sent as the order's `description`.
    pub description: String,
    /// `jsapi` (mini-program) or `native` (QR code).
    pub channel: String,
    /// What the payer pays, in fen.
    pub price_fen: i64,
    /// What is credited once paid, in micros.
    pub credit_micros: i64,
    /// `pending`, `paid` or `closed`.
    pub status: String,
    pub created_at: i64,
    /// WeChat Pay takes no payment after this; the sweep closes the order then.
    pub expires_at: i64,
    pub paid_at: Option<i64>,
    pub closed_at: Option<i64>,
    /// WeChat Pay's `transaction_id`, once paid.
    pub transaction_id: Option<String>,
    /// Why an order was closed, or what was wrong with a report about it (for operators).
    pub note: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
