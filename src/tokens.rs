//! Token counting with a real BPE tokenizer (`cl100k_base`), loaded once per process.
//!
//! Used to trim history to a model's context budget, to estimate a prompt before the
//! upstream is called, and to count an answer when the upstream reports no usage.

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

static BPE: OnceLock<Option<CoreBPE>> = OnceLock::new();

fn bpe() -> Option<&'static CoreBPE> {
    BPE.get_or_init(|| match tiktoken_rs::cl100k_base() {
        Ok(bpe) => Some(bpe),
        Err(e) => {
            tracing::error!(error = %e, "tokenizer failed to load; counting ~1 token per 3 bytes");
            None
        }
    })
    .as_ref()
}

/// Loads the tokenizer now (it takes a moment), so the first request does not wait.
pub fn warm_up() {
    let _ = bpe();
}

/// The number of tokens of `text`.
pub fn count(text: &str) -> u64 {
    match bpe() {
        Some(bpe) => bpe.encode_ordinary(text).len() as u64,
        None => text.len().div_ceil(3) as u64,
    }
}

/// Tokens one chat message costs beyond its content (role and separators), as the
/// OpenAI chat format counts them.
pub const PER_MESSAGE_OVERHEAD: u64 = 4;

/// Tokens a whole chat prompt costs beyond its messages (the assistant's priming).
pub const PER_PROMPT_OVERHEAD: u64 = 3;

#[cfg(test)]
mod tests {
    #[test]
    fn counts_tokens_not_characters() {
        assert_eq!(super::count(""), 0);
        assert_eq!(super::count("hello world"), 2);
        let long = " hello".repeat(100);
        assert_eq!(super::count(&long), 100);
        assert!(super::count("你好，世界") >= 3);
    }
}
