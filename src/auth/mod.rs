//! Accounts and authentication: password hashing, login tokens (HS256 JWT), WeChat
//! mini-program login, and the `/api/auth/*` and `/api/me` handlers.

pub mod api_keys;
pub mod handlers;
pub mod password;
pub mod token;
pub mod users;
pub mod wechat;

pub use token::{Claims, TokenKeys};
