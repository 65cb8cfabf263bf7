//! Periodic housekeeping: answers left `streaming` by a process that died are closed
//! (at start-up and then every minute), whichever replica produced them.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::chat::store;

pub async fn run(app: Arc<App>) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        every.tick().await;
        let max_answer_ms = (app.config.limits.max_answer_secs as i64 + 120) * 1000;
        match store::close_abandoned(&app.db, crate::clock::unix_millis() - max_answer_ms).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(answers = n, "closed answers abandoned by a stopped process"),
            Err(e) => tracing::warn!(error = %e.msg(), "sweep failed"),
        }
    }
}
