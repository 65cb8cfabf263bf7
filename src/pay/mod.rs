//! Online recharge with WeChat Pay API v3.
//!
//! - [`crypto`] — the signed messages, RSA-SHA256 and AEAD_AES_256_GCM (pure, RustCrypto).
//! - [`api`] — calls to WeChat Pay: place, query and close orders; signed requests,
//!   verified answers; `pay_params` for `uni.requestPayment`.
//! - [`orders`] — order rows and [`orders::settle_paid`], the one exactly-once path from
//!   a reported payment to the ledger.
//! - [`reconcile`] — the order query and the periodic sweep (lost notifications,
//!   expired orders).
//! - [`handlers`] — `/api/pay/*` and `POST /pay/wechat/notify`.
//! - [`mock`] — a mock WeChat Pay API v3 (its own keys, signed answers, notifications) for
//!   the tests and the `mock_wechat_pay` example.

pub mod api;
pub mod crypto;
pub mod handlers;
pub mod mock;
pub mod orders;
pub mod reconcile;

pub use api::WechatPay;
