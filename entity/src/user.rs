//! `users`: one account, whatever way it logs in (password, guest, WeChat).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Login name for password accounts; `None` for guest and WeChat accounts.
    #[sea_orm(unique)]
    pub username: Option<String>,
    /// Argon2id PHC string; `None` when the account has no password.
    pub password_hash: Option<String>,
    /// Spendable balance in micros. Never negative.
    pub balance_micros: i64,
    pub created_at: i64,
    /// A trial account: the free daily quota only.
    pub is_guest: bool,
    /// The device a guest account belongs to.
    pub device_id: Option<String>,
    /// The client address that created the account (limits guest creation per IP).
    pub created_ip: Option<String>,
    /// The user's openid in the mini-program (WeChat login).
    pub mp_openid: Option<String>,
    /// WeChat's unionid: the same person across the mini-program and the Official Account.
    pub unionid: Option<String>,
    /// The user's openid in the Official Account (the bot at `/wechat/oa`).
    pub oa_openid: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
