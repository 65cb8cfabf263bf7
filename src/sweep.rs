//! Periodic housekeeping, at start-up and then every `sweep_interval_secs`: holds and
//! answers abandoned by a process that died are settled or closed, whichever replica
//! produced them; expired files are deleted; pending WeChat Pay orders are checked with
//! WeChat Pay (credited if paid, closed if expired); Official Account messages older than
//! `wechat.oa_keep_days` are deleted.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::chat::store;

pub async fn run(app: Arc<App>) {
    let mut every = tokio::time::interval(Duration::from_secs_f64(app.config.sweep_interval_secs));
    loop {
        every.tick().await;
        app.limiter.retain_recent();
        match crate::ledger::sweep::run_once(&app).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(holds = n, "settled holds abandoned by a stopped process"),
            Err(e) => tracing::warn!(error = %e.msg(), "hold sweep failed"),
        }
        match crate::images::sweep(&app).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(files = n, "deleted expired files"),
            Err(e) => tracing::warn!(error = %e.msg(), "file sweep failed"),
        }
        match crate::pay::reconcile::run_once(&app).await {
            Ok(s) if s == Default::default() => {}
            Ok(s) => tracing::info!(
                paid = s.paid,
                closed = s.closed,
                "reconciled WeChat Pay orders"
            ),
            Err(e) => tracing::warn!(error = %e.msg(), "pay order sweep failed"),
        }
        let keep_days = app.config.wechat.oa_keep_days;
        if keep_days > 0 {
            let before = crate::clock::unix_millis() - (keep_days * 86_400_000) as i64;
            match crate::wechat_oa::store::delete_older_than(&app.db, before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(messages = n, "deleted old Official Account messages"),
                Err(e) => tracing::warn!(error = %e.msg(), "Official Account message sweep failed"),
            }
        }
        let abandoned_ms = crate::ledger::sweep::abandon_after(&app).as_millis() as i64;
        match store::close_abandoned(&app.db, crate::clock::unix_millis() - abandoned_ms).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(answers = n, "closed answers abandoned by a stopped process"),
            Err(e) => tracing::warn!(error = %e.msg(), "sweep failed"),
        }
    }
}
