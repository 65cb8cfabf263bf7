//! Accounts, conversations, messages and generated settings.

use sea_orm_migration::{prelude::*, schema::*, sea_orm::DatabaseBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// A column for text that may outgrow 64 KiB: MySQL's `TEXT` stops there.
pub(crate) fn long_text(manager: &SchemaManager, name: &'static str) -> ColumnDef {
    let mut col = ColumnDef::new(name);
    match manager.get_database_backend() {
        DatabaseBackend::MySql => col.custom("LONGTEXT"),
        _ => col.text(),
    };
    col.not_null().to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table("users")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(string_len_null("username", 64).unique_key())
                    .col(string_len_null("password_hash", 255))
                    .col(big_integer("balance_micros").default(0))
                    .col(big_integer("created_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("settings")
                    .if_not_exists()
                    .col(string_len("key", 64).primary_key())
                    .col(text("value"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("conversations")
                    .if_not_exists()
                    .col(string_len("id", 32).primary_key())
                    .col(big_integer("user_id"))
                    .col(string_len("title", 200))
                    .col(big_integer("created_at"))
                    .col(big_integer("updated_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_conversations_user")
                    .table("conversations")
                    .col("user_id")
                    .col("updated_at")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("messages")
                    .if_not_exists()
                    .col(string_len("id", 32).primary_key())
                    .col(string_len("conversation_id", 32))
                    .col(big_integer("user_id"))
                    .col(big_integer("seq"))
                    .col(string_len("role", 16))
                    .col(long_text(manager, "content"))
                    .col(string_len("status", 16))
                    .col(string_len("model", 128))
                    .col(big_integer("prompt_tokens").default(0))
                    .col(big_integer("completion_tokens").default(0))
                    .col(big_integer("cost_micros").default(0))
                    .col(integer_null("error_code"))
                    .col(boolean("stop_requested").default(false))
                    .col(big_integer("created_at"))
                    .col(big_integer_null("finished_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_messages_conversation")
                    .table("messages")
                    .col("conversation_id")
                    .col("seq")
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_messages_status")
                    .table("messages")
                    .col("status")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["messages", "conversations", "settings", "users"] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
