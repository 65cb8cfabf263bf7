//! The periodic flush: one task per process stores the growing text of every open
//! answer every `answer_flush_secs` — a few statements for all of them, not one per
//! answer — so a crash loses at most that much text, and readers on other replicas
//! (which follow the stored row) see it. The same round asks which open answers a stop
//! was requested for (from any replica) and stops them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::MissedTickBehavior;

use super::answer::Answer;
use super::store;
use crate::app::App;
use crate::error::AppError;

/// Answers per statement: the `CASE` picking each row's text is tried branch by branch
/// for every row (n² comparisons), so a few short statements beat one long one; also
/// well under every database's limit on bound values (three per answer) …
const MAX_ANSWERS: usize = 100;
/// … and on the size of one statement (MySQL's `max_allowed_packet`).
const MAX_BYTES: usize = 1 << 20;

pub async fn run(app: Arc<App>) {
    let mut every = tokio::time::interval(Duration::from_secs_f64(app.config.answer_flush_secs));
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Err(e) = flush_once(&app).await {
            tracing::warn!(error = %e.msg(), "flushing answers failed; will retry");
        }
    }
}

/// One round: the new text of every open answer stored, requested stops carried out.
pub async fn flush_once(app: &App) -> Result<(), AppError> {
    let answers = app.answers.all();
    for batch in answers.chunks(MAX_ANSWERS) {
        store_new_text(app, batch).await?;
        let ids: Vec<&str> = batch.iter().map(|a| a.message_id.as_str()).collect();
        for id in store::stops_requested(&app.db, &ids).await? {
            if let Some(answer) = batch.iter().find(|a| a.message_id == id) {
                answer.request_stop();
            }
        }
    }
    Ok(())
}

/// Stores the text of those of `answers` that grew since their last flush.
async fn store_new_text(app: &App, answers: &[Arc<Answer>]) -> Result<(), AppError> {
    let mut grown: Vec<(&Answer, String)> = Vec::new();
    let mut bytes = 0;
    for answer in answers {
        if answer.content_len() == answer.flushed_len.load(Ordering::Relaxed) {
            continue;
        }
        let content = answer.content();
        bytes += content.len();
        grown.push((answer, content));
        if bytes >= MAX_BYTES {
            write(app, &grown).await?;
            grown.clear();
            bytes = 0;
        }
    }
    write(app, &grown).await
}

async fn write(app: &App, grown: &[(&Answer, String)]) -> Result<(), AppError> {
    if grown.is_empty() {
        return Ok(());
    }
    let pairs: Vec<(&str, &str)> = grown
        .iter()
        .map(|(a, content)| (a.message_id.as_str(), content.as_str()))
        .collect();
    store::flush_contents(&app.db, &pairs).await?;
    for (answer, content) in grown {
        answer.flushed_len.store(content.len(), Ordering::Relaxed);
    }
    Ok(())
}
