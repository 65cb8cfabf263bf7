//! The Official Account bot: the user's openid in the Official Account, one row per
//! message (`MsgId`) that claims its answer across replicas, and each user's session.

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
                    .add_column(string_len_null("oa_openid", 128))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_users_oa_openid")
                    .table("users")
                    .col("oa_openid")
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("oa_messages")
                    .if_not_exists()
                    .col(big_pk_auto("id"))
                    .col(string_len("openid", 128))
                    .col(string_len("msg_id", 64))
                    .col(big_integer("user_id"))
                    .col(string_len_null("answer_id", 32))
                    .col(text_null("reply"))
                    .col(string_len("token", 64).unique_key())
                    .col(integer("deliveries").default(1))
                    .col(big_integer("created_at"))
                    .to_owned(),
            )
            .await?;
        // The claim: one row, so one answer, per message of a user.
        manager
            .create_index(
                Index::create()
                    .name("idx_oa_messages_msg")
                    .table("oa_messages")
                    .col("openid")
                    .col("msg_id")
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_oa_messages_user")
                    .table("oa_messages")
                    .col("user_id")
                    .col("created_at")
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table("oa_sessions")
                    .if_not_exists()
                    .col(big_integer("user_id").primary_key())
                    .col(string_len_null("conversation_id", 32))
                    .col(big_integer("active_at"))
                    .col(string_len("history_token", 64).unique_key())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["oa_sessions", "oa_messages"] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
