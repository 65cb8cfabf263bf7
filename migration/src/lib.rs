//! Database migrations of chatgate, applied automatically at start-up
//! (`Migrator::up(&db, None)`), identical on SQLite, PostgreSQL and MySQL.

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_init;
mod m20261122_000002_ledger;
mod m20261122_000003_wechat;
mod m20261122_000004_api_keys;
mod m20261122_000005_files;
mod m20261122_000006_pay_orders;
mod m20261122_000007_official_account;
mod m20261123_000008_oa_retention;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_init::Migration),
            Box::new(m20261122_000002_ledger::Migration),
            Box::new(m20261122_000003_wechat::Migration),
            Box::new(m20261122_000004_api_keys::Migration),
            Box::new(m20261122_000005_files::Migration),
            Box::new(m20261122_000006_pay_orders::Migration),
            Box::new(m20261122_000007_official_account::Migration),
            Box::new(m20261123_000008_oa_retention::Migration),
        ]
    }
}
