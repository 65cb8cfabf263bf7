//! The task that produces one answer: opens the upstream, feeds every event to the
//! shared [`Answer`] (whose growing text the process-wide flush stores now and then), and at
//! the end stores the answer and its cost exactly once. It belongs to the server, not
//! to a connection: a client that goes away does not stop it; only a stop request or
//! the maximum answer time does.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::answer::{Answer, Ending};
use super::frame_sse::Done;
use super::store::{self, Finished};
use crate::app::App;
use crate::config::ModelConfig;
use crate::error::AppError;
use crate::ledger::holds::{self, Hold, Settlement};
use crate::ledger::pricing;
use crate::limits::StreamPermit;
use crate::safety::{OutputGate, Verdict};
use crate::upstream::UpstreamRequest;
use crate::upstream::chunk::{self, Chunk, Usage};

/// Everything the task needs to produce and bill one answer.
pub struct AnswerJob {
    pub answer: Arc<Answer>,
    pub request: UpstreamRequest,
    pub model: String,
    /// What the answer may spend; settled exactly once at the end.
    pub hold: Hold,
    pub price: ModelConfig,
}

enum Outcome {
    Completed,
    Stopped,
    Failed {
        error: AppError,
        before_open: bool,
    },
    /// Cut before a listed word: billed for what was shown, ends with 102.
    Blocked,
}

/// What the upstream told us along the way.
struct Progress<'a> {
    usage: Option<Usage>,
    channel: String,
    first_content: Option<Instant>,
    /// Holds the answer's tail back until it cannot begin a listed word.
    gate: OutputGate<'a>,
}

/// Registers the answer and starts its task on the server's tracker.
/// `permit` (the answer's place among the user's and the upstream's open streams) is
/// given back as soon as the upstream is done, before the answer is stored.
pub fn spawn(app: &Arc<App>, job: AnswerJob, permit: StreamPermit) {
    app.answers.insert(Arc::clone(&job.answer));
    let app = Arc::clone(app);
    app.clone().spawn(run(app, job, permit));
}

async fn run(app: Arc<App>, job: AnswerJob, permit: StreamPermit) {
    let started = Instant::now();
    let answer = Arc::clone(&job.answer);
    metrics::gauge!(crate::metrics::OPEN_ANSWERS).increment(1.0);
    let max = Duration::from_secs(app.config.limits.max_answer_secs);
    let mut progress = Progress {
        usage: None,
        channel: String::new(),
        first_content: None,
        gate: app.words.gate(),
    };
    let outcome = tokio::select! {
        biased;
        _ = answer.stopped() => Outcome::Stopped,
        _ = tokio::time::sleep(max) => {
            tracing::info!(message_id = %answer.message_id, "answer cut at the maximum answer time");
            Outcome::Stopped
        }
        outcome = drive(&app, &job, &mut progress) => outcome,
    };
    // However it ended, what the gate holds was checked: it belongs to the answer.
    progress.gate.flush(|raw, text| answer.push(raw, text));
    drop(permit);
    if let Outcome::Failed {
        before_open: false, ..
    } = outcome
    {
        metrics::counter!(crate::metrics::UPSTREAM_ERRORS, "channel" => progress.channel.clone())
            .increment(1);
    }
    metrics::gauge!(crate::metrics::OPEN_ANSWERS).decrement(1.0);
    if let Some(t) = progress.first_content {
        metrics::histogram!(crate::metrics::FIRST_TOKEN).record((t - started).as_secs_f64());
    }
    metrics::histogram!(crate::metrics::ANSWER_TIME).record(started.elapsed().as_secs_f64());
    Box::pin(finish(&app, &job, outcome, &progress, started)).await;
    tracing::info!(
        message_id = %answer.message_id,
        channel = %progress.channel,
        first_content_ms = progress.first_content.map(|t| (t - started).as_millis() as u64),
        total_ms = started.elapsed().as_millis() as u64,
        "answer finished"
    );
    app.answers.remove(&answer.message_id);
}

async fn drive(app: &App, job: &AnswerJob, progress: &mut Progress<'_>) -> Outcome {
    let answer = &job.answer;
    // Boxed, as `finish`: only the streaming loop's state stays in the task for the
    // whole answer (opening a request, with its failover, takes kilobytes).
    let mut source = match Box::pin(app.upstream.open(&job.request)).await {
        Ok(source) => source,
        Err(error) => {
            return Outcome::Failed {
                error,
                before_open: true,
            };
        }
    };
    progress.channel = source.channel().to_string();
    answer.set_streaming();
    let mut chunks = chunk::ChunkReader::default();
    // The text is flushed to the database by the process-wide flush (`super::flush`),
    // which also carries out stops requested on other replicas.
    loop {
        let event = match source.next().await {
            Ok(Some(event)) => event,
            Ok(None) => return Outcome::Completed,
            Err(error) => {
                return Outcome::Failed {
                    error,
                    before_open: false,
                };
            }
        };
        match chunks.read(&event.data) {
            Ok(Chunk::Done) => return Outcome::Completed,
            Ok(Chunk::Delta { content, usage, .. }) => {
                if usage.is_some() {
                    progress.usage = usage;
                }
                let text = content.as_deref().unwrap_or_default();
                let first = !text.is_empty() && progress.first_content.is_none();
                if first {
                    progress.first_content = Some(Instant::now());
                }
                let shown = progress
                    .gate
                    .offer(event.data.clone(), text, |raw, text| answer.push(raw, text));
                if first {
                    // The first piece goes out now: the reader's connection (on this
                    // thread) writes it before the rest of what arrived with it is
                    // parsed — when the upstream sends a whole answer at once, the time
                    // to first content is otherwise the time to parse all of it.
                    tokio::task::yield_now().await;
                }
                if shown == Verdict::Blocked {
                    tracing::info!(message_id = %answer.message_id, "answer cut at a listed word");
                    metrics::counter!(crate::metrics::CONTENT_BLOCKED, "by" => "words_output")
                        .increment(1);
                    return Outcome::Blocked;
                }
            }
            Ok(Chunk::Error { message }) => {
                tracing::warn!(channel = %progress.channel, %message, "upstream sent an error mid-answer");
                return Outcome::Failed {
                    error: AppError::Upstream {
                        timeout: false,
                        msg: "上游服务出错，回答不完整".into(),
                    },
                    before_open: false,
                };
            }
            Err(e) => {
                tracing::warn!(channel = %progress.channel, error = %e, "skipping an unreadable upstream event");
            }
        }
    }
}

async fn finish(
    app: &App,
    job: &AnswerJob,
    outcome: Outcome,
    progress: &Progress<'_>,
    started: Instant,
) {
    let answer = &job.answer;
    let content = answer.content();
    let blocked = matches!(outcome, Outcome::Blocked);
    let (status, failure) = match outcome {
        Outcome::Completed => (store::DONE, None),
        Outcome::Stopped => (store::STOPPED, None),
        Outcome::Failed { error, before_open } => (store::FAILED, Some((error, before_open))),
        Outcome::Blocked => (store::STOPPED, Some((crate::safety::blocked(), false))),
    };
    // Cost from the upstream's usage numbers, else from our own count of what was
    // received. A failed answer costs nothing; a cut one costs what was shown.
    let prompt_tokens = job.hold.prompt_tokens;
    let usage = match progress.usage {
        Some(usage) if !blocked => usage,
        _ => {
            let text = content.clone();
            let completion_tokens =
                crate::tokens::off_loop(text.len(), move || crate::tokens::count(&text))
                    .await
                    // Counted again in place rather than billed as nothing.
                    .unwrap_or_else(|_| crate::tokens::count(&content));
            Usage {
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens + completion_tokens,
            }
        }
    };
    // Stopped before any upstream answered: nothing was produced, nothing is billed.
    let failed = (failure.is_some() && !blocked) || progress.channel.is_empty();
    let cost_micros = if failed {
        0
    } else {
        pricing::cost(&job.price, &usage)
    };
    let settlement = Settlement {
        hold: &job.hold,
        message_id: &answer.message_id,
        model: &job.model,
        channel: &progress.channel,
        usage,
        cost_micros,
        failed,
        first_token_ms: progress
            .first_content
            .map(|t| (t - started).as_millis() as i64),
        total_ms: started.elapsed().as_millis() as i64,
        answer: Finished {
            status,
            content: &content,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cost_micros,
            error_code: failure.as_ref().map(|(e, _)| e.code()),
        },
    };
    let mut attempt = 0;
    let settled = loop {
        match holds::settle(&app.db, &settlement).await {
            Ok(settled) => break Some(settled),
            Err(e) => {
                attempt += 1;
                tracing::error!(error = %e.msg(), attempt, message_id = %answer.message_id, "settling an answer failed");
                if attempt >= 5 {
                    // The hold stays open: the sweep settles it from the stored answer.
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
        }
    };
    let ending = match failure {
        Some((error, before_open)) => Ending::Failed { error, before_open },
        None => Ending::Done(Arc::new(Done {
            message_id: answer.message_id.clone(),
            conversation_id: answer.conversation_id.clone(),
            usage,
            cost_micros: settled.map_or(cost_micros, |s| s.charged_micros),
            balance_micros: settled.map_or(0, |s| s.balance_micros),
        })),
    };
    answer.end(ending);
}
