//! WeChat identities of users: the mini-program openid and the unionid that links one
//! person's accounts across the mini-program and the Official Account.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in ["mp_openid", "unionid"] {
            manager
                .alter_table(
                    Table::alter()
                        .table("users")
                        .add_column(string_len_null(column, 128))
                        .to_owned(),
                )
                .await?;
            manager
                .create_index(
                    Index::create()
                        .name(format!("idx_users_{column}"))
                        .table("users")
                        .col(column)
                        .unique()
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Ok(())
    }
}
