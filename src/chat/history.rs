//! Building the prompt: the system prompt, as much recent history as the model's
//! context budget allows (oldest turns dropped first, by a real token count), and the
//! new question.

use crate::tokens::{PER_MESSAGE_OVERHEAD, PER_PROMPT_OVERHEAD};
use crate::upstream::ChatMessage;

/// One earlier question and its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub question: String,
    pub answer: String,
}

/// The prompt and its estimated size in tokens; `None` when even the system prompt
/// and the question alone exceed `budget`.
pub fn build_prompt(
    system: &str,
    history: &[Turn],
    question: &str,
    budget: u64,
    count: impl Fn(&str) -> u64,
) -> Option<(Vec<ChatMessage>, u64)> {
    let cost = |text: &str| count(text) + PER_MESSAGE_OVERHEAD;
    let mut used = PER_PROMPT_OVERHEAD + cost(question);
    if !system.is_empty() {
        used += cost(system);
    }
    if used > budget {
        return None;
    }
    // Walk back from the newest turn while whole turns still fit.
    let mut kept = 0;
    for turn in history.iter().rev() {
        let turn_cost = cost(&turn.question) + cost(&turn.answer);
        if used + turn_cost > budget {
            break;
        }
        used += turn_cost;
        kept += 1;
    }
    let mut messages = Vec::with_capacity(2 + 2 * kept);
    if !system.is_empty() {
        messages.push(ChatMessage {
            role: "system",
            content: system.to_string(),
        });
    }
    for turn in &history[history.len() - kept..] {
        messages.push(ChatMessage {
            role: "user",
            content: turn.question.clone(),
        });
        messages.push(ChatMessage {
            role: "assistant",
            content: turn.answer.clone(),
        });
    }
    messages.push(ChatMessage {
        role: "user",
        content: question.to_string(),
    });
    Some((messages, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(q: &str, a: &str) -> Turn {
        Turn {
            question: q.into(),
            answer: a.into(),
        }
    }

    #[test]
    fn keeps_everything_that_fits() {
        let history = [turn("q1", "a1"), turn("q2", "a2")];
        let (m, used) = build_prompt("sys", &history, "q3", 1000, crate::tokens::count).unwrap();
        let roles: Vec<_> = m.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            ["system", "user", "assistant", "user", "assistant", "user"]
        );
        assert_eq!(m[5].content, "q3");
        assert!(used > 6 * PER_MESSAGE_OVERHEAD);
    }

    #[test]
    fn drops_the_oldest_turns_first_by_token_count() {
        // One token per word.
        let count = |t: &str| t.split_whitespace().count() as u64;
        let history = [
            turn("old old old old old", "old old old old old"),
            turn("mid", "mid"),
            turn("new", "new"),
        ];
        // Fixed: 3 (prompt) + 5 (question "x" + 4) + 5 (system "s" + 4) = 13.
        // Each small turn costs 10; the old one costs 18.
        let (m, used) = build_prompt("s", &history, "x", 33, count).unwrap();
        assert_eq!(used, 33);
        let contents: Vec<_> = m.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, ["s", "mid", "mid", "new", "new", "x"]);
        // A newer turn never gives way to an older one.
        let (m, _) = build_prompt("s", &history, "x", 32, count).unwrap();
        let contents: Vec<_> = m.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, ["s", "new", "new", "x"]);
        assert!(build_prompt("s", &history, "x", 12, count).is_none());
    }
}
