//! `ledger_entries`: every movement of money, one row each. For every user,
//! `balance + open holds == sum(amount_micros)`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "ledger_entries")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: i64,
    /// Positive = credit, negative = charge.
    pub amount_micros: i64,
    /// `charge`, `redeem`, `admin`, `pay`.
    pub kind: String,
    /// What caused it, unique, so the same cause can never move money twice.
    #[sea_orm(unique)]
    pub reference: String,
    pub note: String,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
