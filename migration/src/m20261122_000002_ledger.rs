//! Money: holds, ledger entries, usage records, recharge codes, daily free-message
//! counters; guest accounts.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("users")
                    .add_column(boolean("is_guest").default(false))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table("users")
                    .add_column(string_len_null("device_id", 128))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table("users")
                    .add_column(string_len_null("created_ip", 64))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_users_device")
                    .table("users")
                    .col("device_id")
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("holds")
                    .if_not_exists()
                    .col(string_len("id", 32).primary_key())
                    .col(big_integer("user_id"))
                    .col(string_len("message_id", 32))
                    // `money`: `amount_micros` left the balance; `free`: one free message.
                    .col(string_len("kind", 16))
                    .col(big_integer("amount_micros"))
                    .col(big_integer("prompt_tokens"))
                    .col(string_len("day", 10))
                    .col(string_len("status", 16))
                    .col(big_integer("created_at"))
                    .col(big_integer_null("settled_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_holds_open")
                    .table("holds")
                    .col("status")
                    .col("created_at")
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_holds_user")
                    .table("holds")
                    .col("user_id")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("ledger_entries")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(big_integer("user_id"))
                    .col(big_integer("amount_micros"))
                    .col(string_len("kind", 16))
                    // What caused the entry, unique: a hold, a code, an idempotency key.
                    .col(string_len("reference", 128).unique_key())
                    .col(string_len("note", 255))
                    .col(big_integer("created_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_ledger_user")
                    .table("ledger_entries")
                    .col("user_id")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("usage_records")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(big_integer("user_id"))
                    .col(string_len("message_id", 32))
                    .col(string_len("model", 128))
                    .col(string_len("channel", 128))
                    .col(big_integer("prompt_tokens"))
                    .col(big_integer("completion_tokens"))
                    .col(big_integer("cost_micros"))
                    .col(big_integer("charged_micros"))
                    .col(boolean("free"))
                    .col(big_integer_null("first_token_ms"))
                    .col(big_integer("total_ms"))
                    .col(string_len("status", 16))
                    .col(big_integer("created_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_usage_user")
                    .table("usage_records")
                    .col("user_id")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("redeem_codes")
                    .if_not_exists()
                    .col(string_len("code", 32).primary_key())
                    .col(big_integer("amount_micros"))
                    .col(big_integer("created_at"))
                    .col(big_integer_null("redeemed_by"))
                    .col(big_integer_null("redeemed_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("daily_usage")
                    .if_not_exists()
                    .col(big_integer("user_id"))
                    .col(string_len("day", 10))
                    .col(integer("free_used").default(0))
                    .primary_key(Index::create().col("user_id").col("day"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            "daily_usage",
            "redeem_codes",
            "usage_records",
            "ledger_entries",
            "holds",
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
