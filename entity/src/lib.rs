//! SeaORM entities of chatgate: one module per table, shaped like generated code.
//!
//! Times are stored as Unix milliseconds (`i64`) so the three supported databases
//! (SQLite, PostgreSQL, MySQL) agree byte for byte and no timezone ever leaks in.
//! Money is always an integer number of micros (`i64`).

pub mod api_key;
pub mod conversation;
pub mod daily_usage;
pub mod file;
pub mod hold;
pub mod ledger_entry;
pub mod message;
pub mod oa_message;
pub mod oa_session;
pub mod pay_order;
pub mod prelude;
pub mod redeem_code;
pub mod setting;
pub mod usage_record;
pub mod user;
