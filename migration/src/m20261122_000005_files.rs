//! Files the gateway keeps for a while (generated images), stored in the database so
//! every replica can serve them.

use sea_orm_migration::{prelude::*, schema::*, sea_orm::DatabaseBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut data = ColumnDef::new("data");
        match manager.get_database_backend() {
            // MySQL's plain BLOB stops at 64 KiB.
            DatabaseBackend::MySql => data.custom("LONGBLOB"),
            _ => data.blob(),
        };
        manager
            .create_table(
                Table::create()
                    .table("files")
                    .if_not_exists()
                    .col(string_len("name", 64).primary_key())
                    .col(big_integer("user_id"))
                    .col(string_len("content_type", 64))
                    .col(data.not_null())
                    .col(big_integer("created_at"))
                    .col(big_integer("expires_at"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_files_expiry")
                    .table("files")
                    .col("expires_at")
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table("files").if_exists().to_owned())
            .await
    }
}
