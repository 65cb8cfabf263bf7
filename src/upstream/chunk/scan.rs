//! A hand-written reader for the common shape of a chunk, in one pass over the bytes.
//!
//! serde_json spends most of the answer path's instructions on a chunk: it reads every key
//! through the derived field matchers and every skipped value through `IgnoredAny`. This
//! reader walks the same JSON grammar directly and picks out what the gateway needs. It
//! decides nothing on its own: whenever it meets something it does not handle exactly as
//! serde would — a key with an escape, a `\u` escape in the content, a number that is not a
//! plain unsigned integer where one is read, a non-null `error`, a repeated field, deep
//! nesting, anything invalid — it answers `None` and [`super::parse_chunk`] asks serde.
//! So it may only ever return what serde returns for the same input; the tests check that
//! on generated and mutated chunks.

use std::borrow::Cow;
use std::ops::Range;

use super::{Chunk, Usage};

/// Deeper values than this are left to serde (whose own limit is higher).
const MAX_DEPTH: u32 = 32;

/// The bytes that end a run of plain bytes inside a string: the closing quote, a backslash,
/// a control character (which JSON does not allow unescaped).
static STRING_STOP: [bool; 256] = {
    let mut stop = [false; 256];
    let mut byte = 0;
    while byte < 0x20 {
        stop[byte] = true;
        byte += 1;
    }
    stop[b'"' as usize] = true;
    stop[b'\\' as usize] = true;
    stop
};

/// Reads `text` as a chunk, or `None` when serde must decide. With the chunk comes where
/// its content's string token lies when the chunk is a plain content piece (content a
/// string, no finish reason, no usage): the rest of it is the envelope that a stream's
/// next pieces repeat (see [`super::ChunkReader`]).
pub(super) fn chunk(text: &str) -> Option<(Chunk<'_>, Option<Range<usize>>)> {
    let mut s = Scan::new(text);
    let mut choice = None;
    let mut usage = None;
    let (mut seen_choices, mut seen_usage, mut seen_error) = (false, false, false);
    s.ws();
    s.eat(b'{')?;
    s.members(|s, key| match key {
        b"choices" => {
            first(&mut seen_choices)?;
            choice = s.choices()?;
            Some(())
        }
        b"usage" => {
            first(&mut seen_usage)?;
            usage = s.usage()?;
            Some(())
        }
        // `"error": null` means no error (some upstreams send it on every chunk); any
        // other value is an error serde reads.
        b"error" => {
            first(&mut seen_error)?;
            s.literal(b"null")
        }
        _ => s.skip_value(1),
    })?;
    s.ws();
    if s.at != text.len() {
        return None;
    }
    let (content, finish_reason, content_at) = match choice {
        Some(c) => (c.content, c.finish_reason, c.content_at),
        None => (None, None, None),
    };
    let piece = content_at.filter(|_| finish_reason.is_none() && usage.is_none());
    let chunk = Chunk::Delta {
        content,
        finish_reason,
        usage,
    };
    Some((chunk, piece))
}

/// Reads all of `text` as one JSON string token (quotes included), as [`chunk`] reads a
/// content string; `None` when it is not exactly one such token.
pub(super) fn string_token(text: &str) -> Option<Cow<'_, str>> {
    let mut s = Scan::new(text);
    let value = s.string()?;
    (s.at == text.len()).then_some(value)
}

/// A field read a second time: serde refuses the chunk, so serde must say so.
fn first(seen: &mut bool) -> Option<()> {
    if std::mem::replace(seen, true) {
        None
    } else {
        Some(())
    }
}

#[derive(Default)]
struct Choice<'a> {
    index: Option<u64>,
    content: Option<Cow<'a, str>>,
    /// Where the content's string token lies, when the content is a string.
    content_at: Option<Range<usize>>,
    finish_reason: Option<Cow<'a, str>>,
}

/// A cursor in a chunk's text (`at` is always on a character boundary between tokens).
struct Scan<'a> {
    text: &'a str,
    at: usize,
}

/// What a short escape (`\n`, `\"`, …: a backslash and this byte) stands for; `None` for
/// `\u` and for anything that is not an escape.
fn short_escape(byte: u8) -> Option<char> {
    Some(match byte {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        _ => return None,
    })
}

/// A content string and where its token lies in the chunk.
type Content<'a> = (Option<Cow<'a, str>>, Option<Range<usize>>);

impl<'a> Scan<'a> {
    fn new(text: &'a str) -> Self {
        Scan { text, at: 0 }
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.at).copied()
    }

    /// JSON's whitespace: space, tab, line feed, carriage return.
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// Moves over plain string bytes, to the next quote, backslash or control character.
    fn plain_run(&mut self) {
        let rest = self.bytes().get(self.at..).unwrap_or_default();
        self.at += rest
            .iter()
            .position(|&b| STRING_STOP[usize::from(b)])
            .unwrap_or(rest.len());
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes().get(self.at..end)? == word).then(|| self.at = end)
    }

    /// The items of an object or array whose opening bracket was read, separated by commas,
    /// up to and including `close`; `each` reads one item.
    fn sequence(&mut self, close: u8, mut each: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.ws();
        if self.eat(close).is_some() {
            return Some(());
        }
        loop {
            each(self)?;
            self.ws();
            if self.eat(close).is_some() {
                return Some(());
            }
            self.eat(b',')?;
            self.ws();
        }
    }

    /// The members of an object whose `{` was read, up to and including its `}`; `each`
    /// reads the value of every key (the cursor on the value's first byte).
    fn members(&mut self, mut each: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.sequence(b'}', |s| {
            s.eat(b'"')?;
            let key = s.key()?;
            s.ws();
            s.eat(b':')?;
            s.ws();
            each(s, key)
        })
    }

    /// The elements of an array whose `[` was read, up to and including its `]`.
    fn elements(&mut self, each: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.sequence(b']', each)
    }

    /// A key after its opening quote, as raw bytes; a key with an escape (which serde
    /// unescapes before comparing) or a control character is left to serde.
    fn key(&mut self) -> Option<&'a [u8]> {
        let start = self.at;
        self.plain_run();
        if self.peek()? != b'"' {
            return None;
        }
        let key = self.bytes().get(start..self.at)?;
        self.at += 1;
        Some(key)
    }

    /// `null` as `None`, else what `read` reads.
    fn nullable<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            Some(None)
        } else {
            read(self).map(Some)
        }
    }

    /// A string value, borrowed from the input unless it has escapes. Only the short
    /// escapes are decoded here; `\u` escapes (surrogate pairs, serde's errors for lone
    /// ones) are left to serde.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.eat(b'"')?;
        let mut run = self.at;
        let mut owned: Option<String> = None;
        loop {
            self.plain_run();
            match self.peek()? {
                b'"' => {
                    let tail = self.text.get(run..self.at)?;
                    self.at += 1;
                    return Some(match owned {
                        None => Cow::Borrowed(tail),
                        Some(mut s) => {
                            s.push_str(tail);
                            Cow::Owned(s)
                        }
                    });
                }
                b'\\' => {
                    let unescaped = short_escape(*self.bytes().get(self.at + 1)?)?;
                    let s = owned.get_or_insert_with(String::new);
                    s.push_str(self.text.get(run..self.at)?);
                    s.push(unescaped);
                    self.at += 2;
                    run = self.at;
                }
                _ => return None,
            }
        }
    }

    /// A string value that is not read: checked as serde checks a skipped one (every
    /// escape well formed, no control character).
    fn skip_string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            self.plain_run();
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Some(());
                }
                b'\\' => match *self.bytes().get(self.at + 1)? {
                    b'u' => {
                        let hex = self.bytes().get(self.at + 2..self.at + 6)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        self.at += 6;
                    }
                    other => {
                        short_escape(other)?;
                        self.at += 2;
                    }
                },
                _ => return None,
            }
        }
    }

    /// A plain unsigned integer (what serde reads into a `u64`); a sign, a fraction, an
    /// exponent or an overflow is left to serde.
    fn unsigned(&mut self) -> Option<u64> {
        let start = self.at;
        let mut value: u64 = 0;
        while let Some(digit @ b'0'..=b'9') = self.peek() {
            value = value
                .checked_mul(10)?
                .checked_add(u64::from(digit - b'0'))?;
            self.at += 1;
        }
        let digits = self.at - start;
        let leading_zero = digits > 1 && self.bytes().get(start) == Some(&b'0');
        if digits == 0 || leading_zero || matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        Some(value)
    }

    fn digits(&mut self) -> Option<()> {
        if !self.peek()?.is_ascii_digit() {
            return None;
        }
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        Some(())
    }

    /// A number that is not read, checked against JSON's grammar.
    fn skip_number(&mut self) -> Option<()> {
        if self.peek()? == b'-' {
            self.at += 1;
        }
        if self.peek()? == b'0' {
            self.at += 1;
        } else {
            self.digits()?;
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.digits()?;
        }
        Some(())
    }

    /// Any value that is not read, checked as serde checks a skipped one.
    fn skip_value(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => self.skip_string(),
            b'{' | b'[' if depth >= MAX_DEPTH => None,
            b'{' => {
                self.at += 1;
                self.members(|s, _| s.skip_value(depth + 1))
            }
            b'[' => {
                self.at += 1;
                self.elements(|s| s.skip_value(depth + 1))
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.skip_number(),
            _ => None,
        }
    }

    /// `choices`: the element with index 0 (a missing index counts as 0), as serde's
    /// `FirstChoice` picks it; the elements after it are only checked.
    fn choices(&mut self) -> Option<Option<Choice<'a>>> {
        self.nullable(|s| {
            s.eat(b'[')?;
            let mut found: Option<Choice<'a>> = None;
            s.elements(|s| {
                if found.is_some() {
                    return s.skip_value(1);
                }
                let choice = s.choice()?;
                if choice.index.unwrap_or(0) == 0 {
                    found = Some(choice);
                }
                Some(())
            })?;
            Some(found)
        })
        .map(Option::flatten)
    }

    fn choice(&mut self) -> Option<Choice<'a>> {
        self.eat(b'{')?;
        let mut choice = Choice::default();
        let (mut seen_index, mut seen_delta, mut seen_reason) = (false, false, false);
        self.members(|s, key| match key {
            b"index" => {
                first(&mut seen_index)?;
                choice.index = s.nullable(Self::unsigned)?;
                Some(())
            }
            b"delta" => {
                first(&mut seen_delta)?;
                (choice.content, choice.content_at) = s.nullable(Self::delta)?.unwrap_or_default();
                Some(())
            }
            b"finish_reason" => {
                first(&mut seen_reason)?;
                choice.finish_reason = s.nullable(Self::string)?;
                Some(())
            }
            _ => s.skip_value(2),
        })?;
        Some(choice)
    }

    /// A `delta` object: its content, if any, and where its string token lies.
    fn delta(&mut self) -> Option<Content<'a>> {
        self.eat(b'{')?;
        let mut content = (None, None);
        let mut seen = false;
        self.members(|s, key| match key {
            b"content" => {
                first(&mut seen)?;
                let start = s.at;
                content = match s.nullable(Self::string)? {
                    Some(text) => (Some(text), Some(start..s.at)),
                    None => (None, None),
                };
                Some(())
            }
            _ => s.skip_value(3),
        })?;
        Some(content)
    }

    /// `usage`: missing and `null` counts are 0, as in [`Usage`]'s own reading.
    fn usage(&mut self) -> Option<Option<Usage>> {
        self.nullable(|s| {
            s.eat(b'{')?;
            let mut usage = Usage::default();
            let mut seen = [false; 3];
            s.members(|s, key| {
                let (slot, i) = match key {
                    b"prompt_tokens" => (&mut usage.prompt_tokens, 0),
                    b"completion_tokens" => (&mut usage.completion_tokens, 1),
                    b"total_tokens" => (&mut usage.total_tokens, 2),
                    _ => return s.skip_value(2),
                };
                first(&mut seen[i])?;
                *slot = s.nullable(Self::unsigned)?.unwrap_or(0);
                Some(())
            })?;
            Some(usage)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::with_serde;
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    fn fast(text: &str) -> Option<Chunk<'_>> {
        chunk(text).map(|(chunk, _)| chunk)
    }

    /// What serde makes of `text`, for comparison (`None` when serde refuses it).
    fn serde(text: &str) -> Option<Chunk<'_>> {
        with_serde(text).ok()
    }

    #[test]
    fn common_shapes_are_read_here_as_serde_reads_them() {
        let shapes = [
            // The mock upstream's (and many providers') shapes.
            r#"{"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":[{"index":0,"delta":{"content":"echo: hi | 你好，世界 🌍 error success 0 \"q\" \\ "},"finish_reason":null}]}"#,
            r#"{"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":[],"usage":{"prompt_tokens":2,"completion_tokens":5,"total_tokens":7}}"#,
            // OpenAI's, with logprobs, usage null and a fingerprint.
            r#"{"id":"chatcmpl-9x","object":"chat.completion.chunk","created":1718000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            // DeepSeek's usage chunk with nested details.
            r#"{"id":"x","object":"chat.completion.chunk","created":1,"model":"deepseek-chat","system_fingerprint":"fp","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46,"prompt_tokens_details":{"cached_tokens":0},"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":12}}"#,
            // Markdown with short escapes, an `error: null`, spaced-out JSON, floats and
            // negative numbers in skipped fields, several choices.
            r##"{"choices":[{"index":0,"delta":{"content":"# 标题\n\n- a\t\"b\"\r\n/\/"}}],"error":null}"##,
            "{ \"choices\" : [ { \"index\" : 0 , \"delta\" : { \"content\" : \"x\" } } ] }\n",
            r#"{"t":-1.5e-3,"u":[0,1.0,true,false,null,{"v":"\u00e9\ud83d"}],"choices":[{"index":1,"delta":{"content":"b"}},{"index":0,"delta":{"content":"a"}},{"index":2}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":null},"finish_reason":"length"}],"usage":{"prompt_tokens":null}}"#,
            "{}",
        ];
        for text in shapes {
            let here = fast(text);
            assert!(here.is_some(), "not read here: {text}");
            assert_eq!(here, serde(text), "{text}");
        }
        // Borrowed where there is no escape, decoded where there is.
        match fast(shapes[4]) {
            Some(Chunk::Delta {
                content: Some(Cow::Borrowed("Hello")),
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        match fast(shapes[6]) {
            Some(Chunk::Delta {
                content: Some(Cow::Owned(c)),
                ..
            }) => assert_eq!(c, "# 标题\n\n- a\t\"b\"\r\n//"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn what_serde_must_decide_is_left_to_it() {
        let left = [
            // Decided differently or refused by serde, or just rare.
            r#"{"choices":[{"index":0,"delta":{"content":"\u4f60"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"cont\u0065nt":"x"}}]}"#,
            r#"{"error":{"message":"boom"}}"#,
            r#"{"error":false}"#,
            r#"{"choices":[],"choices":[]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"a","content":"b"}}]}"#,
            r#"{"choices":[{"index":0,"index":0}]}"#,
            r#"{"usage":{"total_tokens":1,"total_tokens":2}}"#,
            r#"{"choices":[{"index":0.0}]}"#,
            r#"{"choices":[{"index":-0}]}"#,
            r#"{"choices":[{"index":18446744073709551616}]}"#,
            r#"{"choices":[{"delta":["x"]}]}"#,
            r#"["x"]"#,
            r#"{"choices":{}}"#,
            // Invalid JSON.
            r#"{"choices":[]} x"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":-}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12g4"}"#,
            "{\"a\":\"\t\"}",
            r#"{"a":[1,]}"#,
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"x}}]}"#,
            r#"{"a":nul}"#,
            "",
        ];
        for text in left {
            assert_eq!(fast(text), None, "read here: {text}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(40), "]".repeat(40));
        assert_eq!(fast(&deep), None);
        assert!(serde(&deep).is_some(), "serde reads 40 levels");
    }

    fn key() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "choices",
            "delta",
            "content",
            "index",
            "usage",
            "error",
            "finish_reason",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "role",
            "x",
            r"cont\u0065nt",
        ])
        .prop_map(|k| format!("\"{k}\""))
    }

    fn string_literal() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => r#""([a-z 你好🌍]|\\[nrt"\\/bf])*""#,
            1 => r#""([a-z 你好🌍]|\\[nrt"\\/bf]|\\u00[0-9a-fA-F]{2}|\\ud83d|\\x|	)*""#,
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            "-?(0|[1-9][0-9]{0,21})(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,3})?",
            string_literal(),
        ]
        .prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                members(key(), inner, 0..4),
            ]
        })
    }

    /// An object of the given members (in generated order, so keys may repeat).
    fn members(
        key: impl Strategy<Value = String>,
        value: impl Strategy<Value = String>,
        count: std::ops::Range<usize>,
    ) -> impl Strategy<Value = String> {
        prop::collection::vec((key, value), count).prop_map(|m| {
            let m: Vec<String> = m.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!("{{{}}}", m.join(","))
        })
    }

    /// Members of a chunk-like object: the known ones mostly well formed, sometimes
    /// anything, in any order, with unknown ones between.
    fn object(known: Vec<(&'static str, BoxedStrategy<String>)>) -> impl Strategy<Value = String> {
        let known: Vec<_> = known
            .into_iter()
            .map(|(k, v)| prop::option::weighted(0.8, v.prop_map(move |v| format!("\"{k}\":{v}"))))
            .collect();
        // Mostly keys no reader knows; now and then one that repeats a known field.
        let other = prop_oneof![
            6 => prop::sample::select(vec!["\"id\"", "\"logprobs\"", "\"x\""]).prop_map(str::to_owned),
            1 => key(),
        ];
        let unknown =
            prop::collection::vec((other, value()).prop_map(|(k, v)| format!("{k}:{v}")), 0..2);
        (
            known,
            unknown,
            prop::sample::select(vec![",", " , ", ",\n"]),
        )
            .prop_flat_map(|(known, unknown, sep)| {
                let all: Vec<String> = known.into_iter().flatten().chain(unknown).collect();
                Just(all)
                    .prop_shuffle()
                    .prop_map(move |m| format!("{{{}}}", m.join(sep)))
            })
    }

    fn chunk_text() -> impl Strategy<Value = String> {
        let count = || prop_oneof![4 => "[0-9]{1,5}", 1 => Just("null".to_owned()), 1 => value()];
        let content =
            prop_oneof![6 => string_literal(), 1 => Just("null".to_owned()), 1 => value()];
        let delta = prop_oneof![
            6 => object(vec![("content", content.boxed()), ("role", Just("\"assistant\"".to_owned()).boxed())]),
            1 => value(),
        ];
        let index = prop_oneof![6 => Just("0".to_owned()), 2 => Just("1".to_owned()), 1 => Just("null".to_owned()), 1 => value()];
        let reason = prop_oneof![
            Just("null".to_owned()),
            Just("\"stop\"".to_owned()),
            value()
        ];
        let choice = object(vec![
            ("index", index.boxed()),
            ("delta", delta.boxed()),
            ("finish_reason", reason.boxed()),
        ]);
        let choices = prop_oneof![
            6 => prop::collection::vec(choice, 0..3).prop_map(|c| format!("[{}]", c.join(","))),
            1 => Just("null".to_owned()),
            1 => value(),
        ];
        let usage = prop_oneof![
            4 => object(vec![
                ("prompt_tokens", count().boxed()),
                ("completion_tokens", count().boxed()),
                ("total_tokens", count().boxed()),
            ]),
            1 => Just("null".to_owned()),
        ];
        let error = prop_oneof![4 => Just("null".to_owned()), 1 => value()];
        object(vec![
            ("choices", choices.boxed()),
            ("usage", usage.boxed()),
            ("error", error.boxed()),
        ])
    }

    /// A byte inserted, removed or replaced (or none), to reach invalid and odd inputs.
    fn mutated() -> impl Strategy<Value = String> {
        let edit = prop::option::weighted(
            0.3,
            (
                any::<prop::sample::Index>(),
                0..3u8,
                prop::sample::select(b"{}[]\":,\\ 0-.en\t".to_vec()),
            ),
        );
        (chunk_text(), edit).prop_map(|(text, edit)| {
            let Some((at, op, byte)) = edit else {
                return text;
            };
            let mut bytes = text.into_bytes();
            let at = at.index(bytes.len() + 1);
            match op {
                0 => bytes.insert(at, byte),
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ if at < bytes.len() => bytes[at] = byte,
                _ => bytes.push(byte),
            }
            // A cut through a multi-byte character is not text: parse_chunk refuses it
            // before either reader sees it.
            String::from_utf8(bytes).unwrap_or_default()
        })
    }

    #[test]
    fn generated_and_mutated_chunks_read_here_only_as_serde_reads_them() {
        let mut runner = TestRunner::deterministic();
        let strategy = mutated();
        let (mut read_here, mut refused_by_serde) = (0, 0);
        let cases = 5_000;
        for _ in 0..cases {
            let text = strategy.new_tree(&mut runner).unwrap().current();
            let want = serde(&text);
            refused_by_serde += usize::from(want.is_none());
            if let Some(here) = fast(&text) {
                read_here += 1;
                assert_eq!(Some(here), want, "{text}");
            }
        }
        // The comparison means something only if both kinds of input are common.
        assert!(
            read_here > cases / 5,
            "only {read_here} of {cases} read here"
        );
        assert!(
            refused_by_serde > cases / 10,
            "only {refused_by_serde} of {cases} refused by serde"
        );
    }

    proptest! {
        #[test]
        fn any_content_is_read_here_unless_it_needs_a_u_escape(
            content in any::<String>(),
            reason in prop::option::of("[a-z_]{1,12}"),
        ) {
            let text = serde_json::json!({
                "id": "c", "object": "chat.completion.chunk", "created": 1,
                "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": reason}],
            })
            .to_string();
            let here = fast(&text);
            // serde_json writes control characters other than these five as `\u00XX`.
            let short = |c: char| matches!(c, '\n' | '\r' | '\t' | '\u{8}' | '\u{c}');
            if content.chars().all(|c| c >= ' ' || short(c)) {
                prop_assert!(here.is_some(), "{}", text);
            }
            if here.is_some() {
                prop_assert_eq!(here, serde(&text));
            }
        }
    }
}
