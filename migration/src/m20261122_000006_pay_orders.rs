//! WeChat Pay orders: what was bought, for whom, and whether it was paid.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("pay_orders")
                    .if_not_exists()
                    .col(string_len("out_trade_no", 32).primary_key())
                    .col(big_integer("user_id"))
                    .col(string_len("package_id", 64))
                    .col(string_len("description", 128))
                    .col(string_len("channel", 16))
                    .col(big_integer("price_fen"))
                    .col(big_integer("credit_micros"))
                    // `pending`, `paid` or `closed`.
                    .col(string_len("status", 16))
                    .col(big_integer("created_at"))
                    .col(big_integer("expires_at"))
                    .col(big_integer_null("paid_at"))
                    .col(big_integer_null("closed_at"))
                    .col(string_len_null("transaction_id", 64))
                    .col(string_len_null("note", 255))
                    .to_owned(),
            )
            .await?;
        // The sweep looks for pending orders by age.
        manager
            .create_index(
                Index::create()
                    .name("idx_pay_orders_status")
                    .table("pay_orders")
                    .col("status")
                    .col("created_at")
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_pay_orders_user")
                    .table("pay_orders")
                    .col("user_id")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("pay_orders").if_exists().to_owned())
            .await
    }
}
