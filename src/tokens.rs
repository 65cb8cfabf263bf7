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

/// Text of more bytes than this is counted off the event loop: counting takes time in
/// proportion to the text, and an event loop serves every stream of its thread meanwhile.
pub const OFF_LOOP_BYTES: usize = 16 * 1024;

/// Runs `work` — token counting over `bytes` bytes of text — where it cannot stall the
/// event loop: in place when the text is short, on the blocking pool when it is long.
pub async fn off_loop<T: Send + 'static>(
    bytes: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, crate::error::AppError> {
    if bytes <= OFF_LOOP_BYTES {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| crate::error::AppError::Internal(format!("token counting: {e}")))
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
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn long_texts_are_counted_off_the_event_loop_and_short_ones_in_place() {
        let here = std::thread::current().id();
        let short = "你好，世界".repeat(10);
        let (n, thread) = off_loop(short.len(), {
            let short = short.clone();
            move || (count(&short), std::thread::current().id())
        })
        .await
        .unwrap();
        assert_eq!((n, thread), (count(&short), here));
        let long = "hello world, ".repeat(2_000);
        assert!(long.len() > OFF_LOOP_BYTES);
        let (n, thread) = off_loop(long.len(), {
            let long = long.clone();
            move || (count(&long), std::thread::current().id())
        })
        .await
        .unwrap();
        assert_eq!(n, count(&long));
        assert_ne!(thread, here, "counted on the blocking pool");
    }
    #[test]
    fn counts_tokens_not_characters() {
        assert_eq!(super::count(""), 0);
        assert_eq!(super::count("hello world"), 2);
        let long = " hello".repeat(100);
        assert_eq!(super::count(&long), 100);
        assert!(super::count("你好，世界") >= 3);
    }
}
