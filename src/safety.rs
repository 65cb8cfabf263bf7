//! Content safety: a word list checked on every question and on every answer as it
//! streams. A word split across upstream pieces is still found, because the last
//! pieces of an answer are held back until they can no longer begin a listed word
//! (at most the events covering the longest word's length less one character); when a
//! word appears, the answer is cut just before it and ends with 102 `content_blocked`.
//!
//! Matching is exact, ASCII-case-insensitive, over the text as the user would read it.

use std::collections::VecDeque;
use std::ops::Range;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use bytes::Bytes;

use crate::error::{AppError, Refusal};

/// The configured words, compiled once.
pub struct WordList {
    matcher: Option<AhoCorasick>,
    /// Characters in the longest word.
    longest: usize,
}

impl WordList {
    pub fn new<S: AsRef<str>>(words: &[S]) -> Result<Self, String> {
        let words: Vec<&str> = words
            .iter()
            .map(|w| w.as_ref().trim())
            .filter(|w| !w.is_empty())
            .collect();
        if words.is_empty() {
            return Ok(Self::empty());
        }
        let matcher = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            .build(&words)
            .map_err(|e| format!("safety word list: {e}"))?;
        Ok(Self {
            matcher: Some(matcher),
            longest: words.iter().map(|w| w.chars().count()).max().unwrap_or(0),
        })
    }

    pub fn empty() -> Self {
        Self {
            matcher: None,
            longest: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// The byte offset where the first listed word in `text` begins.
    pub fn find(&self, text: &str) -> Option<usize> {
        self.matcher.as_ref()?.find(text).map(|m| m.start())
    }

    /// A question containing a listed word is refused.
    pub fn check_input(&self, text: &str) -> Result<(), AppError> {
        match self.find(text) {
            Some(_) => {
                metrics::counter!(crate::metrics::CONTENT_BLOCKED, "by" => "words_input")
                    .increment(1);
                Err(blocked())
            }
            None => Ok(()),
        }
    }

    /// A gate for one answer's output.
    pub fn gate(&self) -> OutputGate<'_> {
        OutputGate {
            words: self,
            held: String::new(),
            pieces: VecDeque::new(),
            blocked: false,
        }
    }
}

/// 102 `content_blocked`.
pub fn blocked() -> AppError {
    AppError::Refused {
        reason: Refusal::ContentBlocked,
        msg: "内容含有不当信息，无法继续".into(),
        retry_after_secs: None,
    }
}

/// Holds back the tail of one answer until it is known not to begin a listed word.
pub struct OutputGate<'a> {
    words: &'a WordList,
    /// The text of the held pieces.
    held: String,
    /// Held upstream events and their text in `held`.
    pieces: VecDeque<(Bytes, Range<usize>)>,
    blocked: bool,
}

/// What the gate decided about the answer so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// A listed word appeared: everything before it has been published; the answer
    /// must end here.
    Blocked,
}

impl OutputGate<'_> {
    /// Takes one upstream event (`raw`) carrying `text`; calls `publish` with every
    /// piece that may now be shown — an upstream event unchanged, or, for the piece a
    /// listed word begins in, an empty event and the text before the word.
    pub fn offer(
        &mut self,
        raw: Bytes,
        text: &str,
        mut publish: impl FnMut(Bytes, &str),
    ) -> Verdict {
        if self.blocked {
            return Verdict::Blocked;
        }
        if self.words.is_empty() || (self.pieces.is_empty() && text.is_empty()) {
            publish(raw, text);
            return Verdict::Pass;
        }
        let start = self.held.len();
        self.held.push_str(text);
        self.pieces.push_back((raw, start..self.held.len()));
        // Held pieces were checked before, and they always cover the longest word
        // less one character: a word that ends in `text` begins inside `held`.
        if let Some(at) = self.words.find(&self.held) {
            while let Some((raw, range)) = self.pieces.pop_front() {
                if range.end <= at {
                    publish(raw, &self.held[range]);
                } else {
                    if range.start < at {
                        publish(Bytes::new(), &self.held[range.start..at]);
                    }
                    break;
                }
            }
            self.pieces.clear();
            self.held.clear();
            self.blocked = true;
            return Verdict::Blocked;
        }
        let keep = self.words.longest.saturating_sub(1);
        let mut released = 0;
        while let Some((_, range)) = self.pieces.front() {
            if self.held[range.end..].chars().count() < keep {
                break;
            }
            if let Some((raw, range)) = self.pieces.pop_front() {
                publish(raw, &self.held[range.clone()]);
                released = range.end;
            }
        }
        if released > 0 {
            self.held.drain(..released);
            for (_, range) in self.pieces.iter_mut() {
                *range = range.start - released..range.end - released;
            }
        }
        Verdict::Pass
    }

    /// The answer ended without a listed word: publishes what is held.
    pub fn flush(&mut self, mut publish: impl FnMut(Bytes, &str)) {
        for (raw, range) in self.pieces.drain(..) {
            publish(raw, &self.held[range]);
        }
        self.held.clear();
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn run(words: &[&str], pieces: &[&str]) -> (String, Verdict, usize) {
        let list = WordList::new(words).unwrap();
        let mut gate = list.gate();
        let mut shown = String::new();
        let mut verdict = Verdict::Pass;
        let mut max_held = 0;
        for p in pieces {
            verdict = gate.offer(Bytes::from_static(b"x"), p, |_, t| shown.push_str(t));
            max_held = max_held.max(gate.held.chars().count());
            if verdict == Verdict::Blocked {
                return (shown, verdict, max_held);
            }
        }
        gate.flush(|_, t| shown.push_str(t));
        (shown, verdict, max_held)
    }

    #[test]
    fn a_word_split_across_pieces_is_found_and_the_answer_cut_before_it() {
        let (shown, verdict, _) = run(&["违禁词"], &["这是", "一个违", "禁", "词语", "后面"]);
        assert_eq!(verdict, Verdict::Blocked);
        assert_eq!(shown, "这是一个");
        let (shown, verdict, _) = run(&["Bad Word"], &["a b", "AD wo", "RD!"]);
        assert_eq!((shown.as_str(), verdict), ("a ", Verdict::Blocked));
    }

    #[test]
    fn clean_text_passes_whole_and_only_the_tail_waits() {
        let (shown, verdict, max_held) = run(&["违禁词"], &["你", "好", "，", "世界", "和平"]);
        assert_eq!((shown.as_str(), verdict), ("你好，世界和平", Verdict::Pass));
        // Held back: pieces covering at most 2 characters plus the newest piece.
        assert!(max_held <= 4, "held {max_held}");
        let (shown, _, max_held) = run(&[], &["a", "b"]);
        assert_eq!((shown.as_str(), max_held), ("ab", 0));
    }

    #[test]
    fn input_with_a_word_is_refused() {
        let list = WordList::new(&["forbidden"]).unwrap();
        assert_eq!(
            list.check_input("a FORBIDDEN thing").unwrap_err().reason(),
            Some("content_blocked")
        );
        assert!(list.check_input("fine").is_ok());
    }

    proptest! {
        /// However the answer is split, what is shown is exactly the text before the
        /// first listed word (or all of it), and nothing held back is lost.
        #[test]
        fn any_split_shows_exactly_the_text_before_the_first_word(
            text in "[ab禁词 ]{0,40}",
            cuts in proptest::collection::vec(0usize..40, 0..10),
        ) {
            let words = ["禁词", "abba", "b b"];
            let list = WordList::new(&words).unwrap();
            let chars: Vec<char> = text.chars().collect();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(chars.len())).collect();
            cuts.push(chars.len());
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut from = 0;
            for c in cuts {
                pieces.push(chars[from..c].iter().collect::<String>());
                from = c;
            }
            let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            let (shown, verdict, _) = run(&words, &refs);
            match list.find(&text) {
                Some(at) => {
                    prop_assert_eq!(verdict, Verdict::Blocked);
                    prop_assert_eq!(shown, &text[..at]);
                }
                None => {
                    prop_assert_eq!(verdict, Verdict::Pass);
                    prop_assert_eq!(shown, text);
                }
            }
        }
    }
}
