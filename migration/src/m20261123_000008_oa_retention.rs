//! Official Account message rows are deleted after `wechat.oa_keep_days`: an index on
//! their age so the sweep's delete does not scan the table.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("idx_oa_messages_created")
                    .table("oa_messages")
                    .col("created_at")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_oa_messages_created")
                    .table("oa_messages")
                    .to_owned(),
            )
            .await
    }
}
