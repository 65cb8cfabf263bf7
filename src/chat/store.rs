//! Queries on conversations and messages. Handlers and the answer task call these;
//! nothing else touches the two tables.

use entity::{conversation, message};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait, Statement, TransactionTrait, Value,
};

use super::history::Turn;
use crate::db::Template;
use crate::error::AppError;

pub const STREAMING: &str = "streaming";
pub const DONE: &str = "done";
pub const STOPPED: &str = "stopped";
pub const FAILED: &str = "failed";

/// A new id: 32 lowercase hex digits (never spells `error` or `success`), ordered by
/// time of creation (UUID version 7: 48 bits of milliseconds, then 74 random bits).
///
/// Ordered because every id is a key in a B-tree index (holds, messages,
/// conversations, the ledger's references): ids that grow land on the index's last
/// leaf, so the holds and settlements committed together in one SQLite transaction
/// change a few pages, not one page of each index per answer at random (each page
/// changed is 4 KB appended to the WAL and later copied into the database).
///
/// The random bits come from the thread's generator (seeded from the system's), not
/// from a system call per id: a chat makes four ids.
pub fn new_id() -> String {
    let millis = u64::try_from(crate::clock::unix_millis()).unwrap_or_default();
    uuid::Builder::from_unix_timestamp_millis(millis, &rand::random())
        .into_uuid()
        .simple()
        .to_string()
}

/// A new id with nothing of when it was made: 122 random bits (UUID version 4), for a
/// name that is the only key to what it names (a public file's) and for request ids.
/// From the thread's generator, a cryptographic one seeded from the system's.
pub fn random_id() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .simple()
        .to_string()
}

/// The conversation `id` if `user_id` owns it.
pub async fn conversation_of(
    db: &DatabaseConnection,
    id: &str,
    user_id: i64,
) -> Result<Option<conversation::Model>, AppError> {
    Ok(conversation::Entity::find_by_id(id.to_string())
        .filter(conversation::Column::UserId.eq(user_id))
        .one(db)
        .await?)
}

/// The earlier turns of a conversation that make sense to send again: questions whose
/// answer was completed or stopped with some text. Also the next free `seq`.
pub async fn history(
    db: &DatabaseConnection,
    conversation_id: &str,
) -> Result<(Vec<Turn>, i64), AppError> {
    let rows = message::Entity::find()
        .filter(message::Column::ConversationId.eq(conversation_id))
        .order_by_asc(message::Column::Seq)
        .all(db)
        .await?;
    let next_seq = rows.last().map_or(0, |m| (m.seq / 2 + 1) * 2);
    let mut turns = Vec::new();
    let mut question: Option<String> = None;
    for row in rows {
        match row.role.as_str() {
            "user" => question = Some(row.content),
            _ => {
                if let Some(q) = question.take()
                    && (row.status == DONE || row.status == STOPPED)
                    && !row.content.is_empty()
                {
                    turns.push(Turn {
                        question: q,
                        answer: row.content,
                    });
                }
            }
        }
    }
    Ok((turns, next_seq))
}

/// What a new turn writes before the upstream is called.
pub struct NewTurn<'a> {
    pub user_id: i64,
    pub conversation_id: &'a str,
    /// Create the conversation with this title (a new conversation).
    pub new_conversation_title: Option<String>,
    pub seq: i64,
    pub question: &'a str,
    pub answer_id: &'a str,
    pub model: &'a str,
}

/// The statements that write a turn: the conversation (new, or touched) and the
/// question and (empty, streaming) answer rows. The hold's transaction runs them
/// together with its own insert.
pub fn turn_statements(backend: DbBackend, turn: NewTurn<'_>) -> Vec<Statement> {
    turn_statements_at(backend, &turn, crate::clock::unix_millis(), &new_id())
}

/// [`turn_statements`] at `now`, the question's row with id `question_id`.
fn turn_statements_at(
    backend: DbBackend,
    turn: &NewTurn<'_>,
    now: i64,
    question_id: &str,
) -> Vec<Statement> {
    static NEW_CONVERSATION: Template = Template::new();
    static TOUCH_CONVERSATION: Template = Template::new();
    static MESSAGES: Template = Template::new();
    let conversation = match &turn.new_conversation_title {
        Some(title) => NEW_CONVERSATION.bind(
            backend,
            || build_turn_statements(backend, turn, now, question_id).swap_remove(0),
            vec![
                turn.conversation_id.into(),
                turn.user_id.into(),
                title.as_str().into(),
                now.into(),
                now.into(),
            ],
        ),
        None => TOUCH_CONVERSATION.bind(
            backend,
            || build_turn_statements(backend, turn, now, question_id).swap_remove(0),
            vec![now.into(), turn.conversation_id.into()],
        ),
    };
    let row = |id: &str, seq: i64, role: &str, content: &str, status: &str| -> [Value; 15] {
        [
            id.into(),
            turn.conversation_id.into(),
            turn.user_id.into(),
            seq.into(),
            role.into(),
            content.into(),
            status.into(),
            turn.model.into(),
            0i64.into(),
            0i64.into(),
            0i64.into(),
            Option::<i32>::None.into(),
            false.into(),
            now.into(),
            Option::<i64>::None.into(),
        ]
    };
    let mut values = Vec::with_capacity(30);
    values.extend(row(question_id, turn.seq, "user", turn.question, DONE));
    values.extend(row(
        turn.answer_id,
        turn.seq + 1,
        "assistant",
        "",
        STREAMING,
    ));
    let messages = MESSAGES.bind(
        backend,
        || build_turn_statements(backend, turn, now, question_id).swap_remove(1),
        values,
    );
    vec![conversation, messages]
}

/// [`turn_statements_at`] as sea-query builds them.
fn build_turn_statements(
    backend: DbBackend,
    turn: &NewTurn<'_>,
    now: i64,
    question_id: &str,
) -> Vec<Statement> {
    let conversation = match &turn.new_conversation_title {
        Some(title) => conversation::Entity::insert(conversation::ActiveModel {
            id: Set(turn.conversation_id.to_string()),
            user_id: Set(turn.user_id),
            title: Set(title.clone()),
            created_at: Set(now),
            updated_at: Set(now),
        })
        .build(backend),
        None => conversation::Entity::update_many()
            .col_expr(conversation::Column::UpdatedAt, Expr::value(now))
            .filter(conversation::Column::Id.eq(turn.conversation_id))
            .build(backend),
    };
    let row =
        |id: String, seq: i64, role: &str, content: &str, status: &str| message::ActiveModel {
            id: Set(id),
            conversation_id: Set(turn.conversation_id.to_string()),
            user_id: Set(turn.user_id),
            seq: Set(seq),
            role: Set(role.to_string()),
            content: Set(content.to_string()),
            status: Set(status.to_string()),
            model: Set(turn.model.to_string()),
            prompt_tokens: Set(0),
            completion_tokens: Set(0),
            cost_micros: Set(0),
            error_code: Set(None),
            stop_requested: Set(false),
            created_at: Set(now),
            finished_at: Set(None),
        };
    let messages = message::Entity::insert_many([
        row(
            question_id.to_string(),
            turn.seq,
            "user",
            turn.question,
            DONE,
        ),
        row(
            turn.answer_id.to_string(),
            turn.seq + 1,
            "assistant",
            "",
            STREAMING,
        ),
    ])
    .build(backend);
    vec![conversation, messages]
}

/// Stores the text so far of several streaming answers in one statement (`(id, text)`
/// pairs). Only rows still streaming and not asked to stop change: a flush that lands
/// late (after its answer was stored finished) never overwrites the final text.
/// Returns how many rows changed.
///
/// On SQLite it goes through SQLite's writer ([`crate::db::sqlite_transaction`]), in
/// turn with the holds and settlements (often in their group's transaction) instead of
/// polling for the lock from the pool's connection while the writer holds it.
pub async fn flush_contents(
    db: &DatabaseConnection,
    answers: &[(&str, &str)],
) -> Result<u64, AppError> {
    let mut pairs = answers.iter();
    let Some(&(id, content)) = pairs.next() else {
        return Ok(0);
    };
    let mut text = Expr::case(message::Column::Id.eq(id), content);
    for &(id, content) in pairs {
        text = text.case(message::Column::Id.eq(id), content);
    }
    let update = message::Entity::update_many()
        .col_expr(
            message::Column::Content,
            text.finally(Expr::col(message::Column::Content)).into(),
        )
        .filter(message::Column::Id.is_in(answers.iter().map(|&(id, _)| id)))
        .filter(message::Column::StopRequested.eq(false))
        .filter(message::Column::Status.eq(STREAMING));
    let backend = db.get_database_backend();
    if backend == DbBackend::Sqlite {
        let script = vec![
            update.build(backend),
            Statement::from_string(backend, "SELECT changes() AS changed"),
        ];
        if let Some(rows) = crate::db::sqlite_transaction(db, script).await? {
            let changed = match rows.first() {
                Some(row) => row.get_i64("changed")?,
                None => 0,
            };
            return Ok(u64::try_from(changed).unwrap_or_default());
        }
    }
    Ok(update.exec(db).await?.rows_affected)
}

/// Of the answers `ids`, those a stop was requested for (from any replica).
pub async fn stops_requested(
    db: &DatabaseConnection,
    ids: &[&str],
) -> Result<Vec<String>, AppError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(message::Entity::find()
        .select_only()
        .column(message::Column::Id)
        .filter(message::Column::Id.is_in(ids.iter().copied()))
        .filter(message::Column::StopRequested.eq(true))
        .into_tuple()
        .all(db)
        .await?)
}

/// The final state of an answer.
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    pub status: &'a str,
    pub content: &'a str,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_micros: i64,
    pub error_code: Option<i32>,
}

/// The statement that stores an answer's final state (run in its settlement).
pub fn finish_statement(backend: DbBackend, id: &str, f: &Finished<'_>) -> Statement {
    finish_statement_at(backend, id, f, crate::clock::unix_millis())
}

fn finish_statement_at(backend: DbBackend, id: &str, f: &Finished<'_>, now: i64) -> Statement {
    static FINISH: Template = Template::new();
    FINISH.bind(
        backend,
        || build_finish_statement(backend, id, f, now),
        vec![
            f.status.into(),
            f.content.into(),
            (f.prompt_tokens as i64).into(),
            (f.completion_tokens as i64).into(),
            f.cost_micros.into(),
            f.error_code.into(),
            now.into(),
            id.into(),
        ],
    )
}

fn build_finish_statement(backend: DbBackend, id: &str, f: &Finished<'_>, now: i64) -> Statement {
    message::Entity::update_many()
        .col_expr(message::Column::Status, Expr::value(f.status))
        .col_expr(message::Column::Content, Expr::value(f.content))
        .col_expr(
            message::Column::PromptTokens,
            Expr::value(f.prompt_tokens as i64),
        )
        .col_expr(
            message::Column::CompletionTokens,
            Expr::value(f.completion_tokens as i64),
        )
        .col_expr(message::Column::CostMicros, Expr::value(f.cost_micros))
        .col_expr(message::Column::ErrorCode, Expr::value(f.error_code))
        .col_expr(message::Column::FinishedAt, Expr::value(now))
        .filter(message::Column::Id.eq(id))
        .build(backend)
}

/// Asks the replica that owns a streaming answer to stop it. `false` when the answer
/// is not the user's or is no longer streaming.
pub async fn request_stop(
    db: &DatabaseConnection,
    id: &str,
    user_id: i64,
) -> Result<bool, AppError> {
    let result = message::Entity::update_many()
        .col_expr(message::Column::StopRequested, Expr::value(true))
        .filter(message::Column::Id.eq(id))
        .filter(message::Column::UserId.eq(user_id))
        .filter(message::Column::Status.eq(STREAMING))
        .exec(db)
        .await?;
    Ok(result.rows_affected > 0)
}

/// An answer of `user_id` (questions are not addressable).
pub async fn answer_of(
    db: &DatabaseConnection,
    id: &str,
    user_id: i64,
) -> Result<Option<message::Model>, AppError> {
    Ok(message::Entity::find_by_id(id.to_string())
        .filter(message::Column::UserId.eq(user_id))
        .filter(message::Column::Role.eq("assistant"))
        .one(db)
        .await?)
}

pub async fn conversations_of(
    db: &DatabaseConnection,
    user_id: i64,
) -> Result<Vec<conversation::Model>, AppError> {
    Ok(conversation::Entity::find()
        .filter(conversation::Column::UserId.eq(user_id))
        .order_by_desc(conversation::Column::UpdatedAt)
        .limit(200)
        .all(db)
        .await?)
}

pub async fn messages_of(
    db: &DatabaseConnection,
    conversation_id: &str,
) -> Result<Vec<message::Model>, AppError> {
    Ok(message::Entity::find()
        .filter(message::Column::ConversationId.eq(conversation_id))
        .order_by_asc(message::Column::Seq)
        .all(db)
        .await?)
}

pub async fn delete_conversation(
    db: &DatabaseConnection,
    id: &str,
    user_id: i64,
) -> Result<bool, AppError> {
    let txn = db.begin().await?;
    let deleted = conversation::Entity::delete_many()
        .filter(conversation::Column::Id.eq(id))
        .filter(conversation::Column::UserId.eq(user_id))
        .exec(&txn)
        .await?;
    if deleted.rows_affected > 0 {
        message::Entity::delete_many()
            .filter(message::Column::ConversationId.eq(id))
            .exec(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok(deleted.rows_affected > 0)
}

/// Answers left `streaming` by a process that died: after the longest an answer may
/// take (plus a margin) nobody is producing them any more, whichever replica it was.
pub async fn close_abandoned(
    db: &DatabaseConnection,
    older_than_millis: i64,
) -> Result<u64, AppError> {
    let result = message::Entity::update_many()
        .col_expr(message::Column::Status, Expr::value(STOPPED))
        .col_expr(
            message::Column::FinishedAt,
            Expr::value(crate::clock::unix_millis()),
        )
        .filter(message::Column::Status.eq(STREAMING))
        .filter(message::Column::CreatedAt.lt(older_than_millis))
        .exec(db)
        .await?;
    Ok(result.rows_affected)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A turn's statements and an answer's final row, on every backend, for a new and a
    /// continued conversation: in debug builds a template checks itself against its
    /// builder.
    #[test]
    fn the_turn_statements_bind_what_their_builders_build() {
        for backend in crate::db::template::BACKENDS {
            for (n, title) in [(1i64, Some("title".to_string())), (2, None)] {
                let turn = NewTurn {
                    user_id: n,
                    conversation_id: "conversation",
                    new_conversation_title: title,
                    seq: 2 * n,
                    question: "question?",
                    answer_id: "answer",
                    model: "m",
                };
                let built = build_turn_statements(backend, &turn, 1000 + n, "q");
                assert_eq!(turn_statements_at(backend, &turn, 1000 + n, "q"), built);
                let finished = Finished {
                    status: DONE,
                    content: "text",
                    prompt_tokens: 3,
                    completion_tokens: 4 * n as u64,
                    cost_micros: 5,
                    error_code: (n == 2).then_some(500),
                };
                assert_eq!(
                    finish_statement_at(backend, "answer", &finished, 1000 + n),
                    build_finish_statement(backend, "answer", &finished, 1000 + n)
                );
            }
        }
    }

    #[test]
    fn ids_are_hex_distinct_and_grow_with_time() {
        let first = new_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later: Vec<String> = (0..1000).map(|_| new_id()).collect();
        for id in &later {
            assert_eq!(id.len(), 32);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert!(*id > first, "{id} was made after {first}");
            assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
        }
        let distinct: std::collections::HashSet<&String> = later.iter().collect();
        assert_eq!(distinct.len(), later.len());
        let name = random_id();
        assert_eq!(uuid::Uuid::parse_str(&name).unwrap().get_version_num(), 4);
    }
}
