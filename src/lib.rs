//! # chatgate
//!
//! A gateway that sells ChatGPT-style chat inside WeChat mini-programs, H5 pages and
//! API clients: accounts, server-owned streaming answers in two framings, billing, and
//! an upstream pool of OpenAI-compatible providers. The wire contract is DESIGN.md.
//!
//! # Layout
//! - [`config`] — typed TOML + `CHATGATE_*` environment, validated once at start-up.
//! - [`app`] — the shared state built from the config (database, keys, upstream pool).
//! - [`server`] — accept loop, hyper connections, connection cap, graceful shutdown.
//! - [`router`] — method + path → handler, in one table; request ids and CORS.
//! - [`error`] — the one error type → HTTP status, `{code,msg,reason}`, in-band frames.
//! - [`response`] — the body type and JSON/streaming response builders.
//! - [`auth`] — passwords (argon2), login tokens (JWT), `/api/auth/*`, `/api/me`.
//! - [`chat`] — `POST /api/chat`: conversation → prompt → server-owned answer → readers;
//!   `chat::frame_mp` and `chat::frame_sse` are the two framings (pure).
//! - [`upstream`] — channels with failover, the incremental SSE parser (pure), the
//!   OpenAI chunk reader, and the built-in demo model.
//! - [`images`] — image generation and the files kept and served at `/files/{name}`.
//! - [`openai_api`] — the OpenAI-compatible `/v1` API for API-key clients.
//! - [`ledger`] — money: holds, settlement, credits, codes, the invariant, crash sweep.
//! - [`pay`] — WeChat Pay API v3: recharge packages, JSAPI and Native orders, signed
//!   calls and verified answers, notifications credited exactly once, reconciliation.
//! - [`admin`] — the admin API (credits, user money, recharge codes, invariant check).
//! - [`limits`] — rate limits per address and user (governor; shared through Redis when
//!   configured), caps on open answers.
//! - [`safety`] — the word list on questions and on streamed answers (held-back tail);
//!   [`msg_sec_check`] — WeChat's content check on mini-program users' questions.
//! - [`wechat_token`] — WeChat access tokens cached per app id.
//! - [`tokens`] — token counting with a real BPE tokenizer.
//! - [`db`] — connection, migrations, generated-once settings.
//! - [`sweep`] — periodic housekeeping (answers abandoned by a dead process).
//! - [`web`] — the built H5 page, embedded, served at `/`.
//! - [`metrics`] — Prometheus metrics at `/metrics`.
//! - [`wechat_oa`] — the Official Account bot: `/wechat/oa` (signatures, safe mode, one
//!   answer per MsgId across replicas, retries ridden, push), the `/a/{token}` pages.
//! - [`wechat_token`] — WeChat `access_token`s, cached per app id.
//! - [`mock_upstream`] — an OpenAI-compatible mock upstream for tests and benchmarks.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod chat;
pub mod clock;
pub mod config;
pub mod db;
pub mod error;
pub mod images;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod mock_upstream;
pub mod msg_sec_check;
pub mod openai_api;
pub mod pay;
pub mod response;
pub mod router;
pub mod safety;
pub mod server;
pub mod sweep;
pub mod tokens;
pub mod upstream;
pub mod web;
pub mod wechat_oa;
pub mod wechat_token;
