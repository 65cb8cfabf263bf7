//! Crash recovery: a hold still open after the longest an answer may take belongs to a
//! process that died. It is settled from the answer that was stored (billed for the
//! text the user received, counted by our tokenizer) or, when nothing was stored,
//! released. The conditional close in [`settle`] makes a race with a live settlement
//! harmless.

use std::time::Duration;

use entity::{hold, message};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::holds::{self, Hold, Settlement};
use super::pricing;
use crate::app::App;
use crate::chat::store::{self, Finished};
use crate::error::AppError;
use crate::upstream::chunk::Usage;

/// The age after which an open hold is abandoned: its TTL, but never before the
/// longest an answer may take plus a margin to settle it (a live answer is not swept).
pub fn abandon_after(app: &App) -> Duration {
    let max_answer = app.config.limits.max_answer_secs;
    Duration::from_secs(
        app.config
            .hold_ttl_secs
            .max(max_answer + max_answer.min(30)),
    )
}

/// Settles or releases every abandoned hold; returns how many.
pub async fn run_once(app: &App) -> Result<usize, AppError> {
    let cutoff = crate::clock::unix_millis() - abandon_after(app).as_millis() as i64;
    let mut done = 0;
    loop {
        let batch = hold::Entity::find()
            .filter(hold::Column::Status.eq(holds::OPEN))
            .filter(hold::Column::CreatedAt.lt(cutoff))
            .order_by_asc(hold::Column::CreatedAt)
            .limit(100)
            .all(&app.db)
            .await?;
        if batch.is_empty() {
            return Ok(done);
        }
        for row in &batch {
            recover(app, row).await?;
            done += 1;
        }
    }
}

async fn recover(app: &App, row: &hold::Model) -> Result<(), AppError> {
    let hold = Hold::from(row);
    let answer = message::Entity::find_by_id(row.message_id.clone())
        .one(&app.db)
        .await?;
    let (content, model, status) = match &answer {
        Some(m) => (m.content.as_str(), m.model.as_str(), m.status.as_str()),
        None => ("", "", store::FAILED),
    };
    let produced = !content.is_empty();
    let completion_tokens = if produced {
        crate::tokens::count(content)
    } else {
        0
    };
    let usage = Usage {
        prompt_tokens: hold.prompt_tokens,
        completion_tokens,
        total_tokens: hold.prompt_tokens + completion_tokens,
    };
    let cost_micros = if produced {
        pricing::cost(&app.config.model(model), &usage)
    } else {
        0
    };
    // An answer the crash interrupted keeps what was stored, as if stopped.
    let final_status = match status {
        store::STREAMING if produced => store::STOPPED,
        store::STREAMING => store::FAILED,
        other => other,
    };
    let failed = !produced || final_status == store::FAILED;
    holds::settle(
        &app.db,
        &Settlement {
            hold: &hold,
            message_id: &row.message_id,
            model,
            channel: "",
            usage,
            cost_micros,
            failed,
            first_token_ms: None,
            total_ms: 0,
            answer: Finished {
                status: final_status,
                content,
                prompt_tokens: usage.prompt_tokens,
                completion_tokens,
                cost_micros,
                error_code: failed.then_some(11000),
            },
        },
    )
    .await?;
    tracing::info!(hold = %row.id, message_id = %row.message_id, produced, "settled a hold abandoned by a stopped process");
    Ok(())
}
