//! The upstream side: channels of OpenAI-compatible providers (or the built-in demo
//! model), opened with failover, read as a stream of Server-Sent Events.

pub mod chunk;
pub mod client;
pub mod demo;
pub mod sse;

use std::time::Duration;

use serde::Serialize;

pub use client::{Upstream, set_thread_slot};

use crate::error::AppError;
use sse::SseEvent;

/// One message of an OpenAI chat prompt.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: &'static str,
    pub content: String,
}

/// What the gateway asks of an upstream for one answer.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: u64,
    pub temperature: Option<f64>,
}

/// The events of one streaming answer, whatever produces them.
pub enum EventSource {
    Http(Box<client::HttpEvents>),
    Demo(demo::DemoEvents),
}

impl EventSource {
    /// The next event; `Ok(None)` at the end of the stream; `Err` when the upstream
    /// broke off (dropped connection, idle timeout).
    ///
    /// Cancel-safe: dropping the future loses no event and does not restart timers, so
    /// callers may `select!` it against other work.
    pub async fn next(&mut self) -> Result<Option<SseEvent>, AppError> {
        match self {
            EventSource::Http(s) => s.next().await,
            EventSource::Demo(s) => Ok(s.next().await),
        }
    }

    /// The name of the channel that answers (for the usage record and logs).
    pub fn channel(&self) -> &str {
        match self {
            EventSource::Http(s) => s.channel(),
            EventSource::Demo(_) => crate::config::DEMO_MODEL,
        }
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}
