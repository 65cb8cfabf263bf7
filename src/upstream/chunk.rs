//! Interprets the data of one upstream SSE event: an OpenAI `chat.completion.chunk`, the
//! `[DONE]` sentinel, or an in-band error.
//!
//! Only what the gateway needs is extracted (first choice's content and finish reason, and
//! usage), borrowing from the input where the JSON has no escapes, so a typical chunk is
//! parsed without any heap allocation. The common shape is read by a hand-written scanner
//! ([`scan`]); whatever it is not sure of goes to serde, which decides.

mod scan;

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;

use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// Token counts as reported by the upstream (the basis for billing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    #[serde(deserialize_with = "null_as_zero")]
    pub prompt_tokens: u64,
    #[serde(deserialize_with = "null_as_zero")]
    pub completion_tokens: u64,
    #[serde(deserialize_with = "null_as_zero")]
    pub total_tokens: u64,
}

/// What one upstream event means.
#[derive(Debug, PartialEq)]
pub enum Chunk<'a> {
    /// The `[DONE]` sentinel.
    Done,
    /// A regular chunk. All parts are optional: usage-only chunks have no choice, the first
    /// chunk often has only a role, the last one only a finish reason.
    Delta {
        content: Option<Cow<'a, str>>,
        finish_reason: Option<Cow<'a, str>>,
        usage: Option<Usage>,
    },
    /// An in-band error (`{"error": {...}}` or `{"error": "..."}`). The message is the
    /// upstream's own wording and may name upstream details: log it, don't show it to users.
    Error { message: String },
}

/// Why an event's data could not be interpreted.
#[derive(Debug)]
pub enum ChunkError {
    /// The data is not valid UTF-8.
    NotUtf8(std::str::Utf8Error),
    /// The data is not JSON of the expected shape.
    InvalidJson(serde_json::Error),
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkError::NotUtf8(e) => write!(f, "upstream chunk is not valid UTF-8: {e}"),
            ChunkError::InvalidJson(e) => {
                write!(f, "upstream chunk is not a valid JSON chunk: {e}")
            }
        }
    }
}

impl std::error::Error for ChunkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ChunkError::NotUtf8(e) => Some(e),
            ChunkError::InvalidJson(e) => Some(e),
        }
    }
}

/// Parses the data of one upstream SSE event.
///
/// # Errors
/// [`ChunkError`] when the data is not UTF-8 or not a JSON object of the chunk shape (the
/// caller decides whether to skip such an event or fail the answer).
pub fn parse_chunk(data: &[u8]) -> Result<Chunk<'_>, ChunkError> {
    parse(data).map(|(chunk, _)| chunk)
}

/// [`parse_chunk`], with where the content's string token lies when the chunk is a plain
/// content piece that [`scan`] read.
fn parse(data: &[u8]) -> Result<(Chunk<'_>, Option<Range<usize>>), ChunkError> {
    if data.trim_ascii() == b"[DONE]" {
        return Ok((Chunk::Done, None));
    }
    // Validating up front lets serde_json skip per-string validation (`from_str` trusts its
    // input), so this costs no extra pass overall and gives a precise error.
    let text = std::str::from_utf8(data).map_err(ChunkError::NotUtf8)?;
    match scan::chunk(text) {
        Some(read) => Ok(read),
        None => with_serde(text).map(|chunk| (chunk, None)),
    }
}

/// Reads the chunks of one stream.
///
/// An upstream wraps every piece of an answer in the same envelope — for OpenAI
/// `{"id":"chatcmpl-…","object":"chat.completion.chunk","created":…,"model":"…",
/// "choices":[{"index":0,"delta":{"content":` before the piece and `},"finish_reason":null}]}`
/// after it — and reading it again is most of what a chunk costs. The reader keeps the
/// envelope of the last plain content piece (one short copy per answer, not per chunk); a
/// chunk that starts and ends with the same bytes and has exactly one JSON string between
/// them is that string's piece: the envelope was read (and found to be a content piece
/// with no finish reason, usage or error) when it was first seen, and a string token does
/// not change how the bytes around it read. Any other chunk is read whole, as by
/// [`parse_chunk`].
#[derive(Debug, Default)]
pub struct ChunkReader {
    /// The last plain content piece without its content token.
    envelope: Vec<u8>,
    /// Where the content token stood in it.
    split: usize,
}

impl ChunkReader {
    /// Reads the data of one event, as [`parse_chunk`] does.
    ///
    /// # Errors
    /// As [`parse_chunk`].
    pub fn read<'a>(&mut self, data: &'a [u8]) -> Result<Chunk<'a>, ChunkError> {
        if let Some(content) = self.piece(data) {
            return Ok(Chunk::Delta {
                content: Some(content),
                finish_reason: None,
                usage: None,
            });
        }
        let (chunk, piece) = parse(data)?;
        if let Some(at) = piece {
            self.envelope.clear();
            self.envelope
                .extend_from_slice(data.get(..at.start).unwrap_or_default());
            self.envelope
                .extend_from_slice(data.get(at.end..).unwrap_or_default());
            self.split = at.start;
        }
        Ok(chunk)
    }

    /// The content of `data` when it is the envelope around one string token.
    fn piece<'a>(&self, data: &'a [u8]) -> Option<Cow<'a, str>> {
        let (head, tail) = self.envelope.split_at_checked(self.split)?;
        // An empty envelope is no envelope: nothing was kept yet.
        if head.is_empty() {
            return None;
        }
        let token = data.strip_prefix(head)?.strip_suffix(tail)?;
        scan::string_token(std::str::from_utf8(token).ok()?)
    }
}

/// Reads a chunk with serde: what [`scan`] leaves undecided (and the reference it is tested
/// against).
fn with_serde(text: &str) -> Result<Chunk<'_>, ChunkError> {
    let raw: RawChunk<'_> = serde_json::from_str(text).map_err(ChunkError::InvalidJson)?;
    if let Some(message) = raw.error.and_then(error_message) {
        return Ok(Chunk::Error { message });
    }
    let (content, finish_reason) = match raw.choices.0 {
        Some(choice) => (
            choice.delta.and_then(|d| d.content).map(|c| c.0),
            choice.finish_reason.map(|c| c.0),
        ),
        None => (None, None),
    };
    Ok(Chunk::Delta {
        content,
        finish_reason,
        usage: raw.usage,
    })
}

/// Turns the value of an `error` key into a readable message; `None` when it means "no
/// error" (some upstreams send `"error": null` on every chunk).
fn error_message(value: serde_json::Value) -> Option<String> {
    use serde_json::Value;
    let non_empty = |v: Option<&Value>| -> Option<String> {
        match v {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            _ => None,
        }
    };
    match value {
        Value::Null | Value::Bool(false) => None,
        Value::String(s) if !s.trim().is_empty() => Some(s),
        Value::Object(ref map) => Some(
            non_empty(map.get("message"))
                .or_else(|| non_empty(map.get("msg")))
                .unwrap_or_else(|| format!("upstream error: {value}")),
        ),
        other => Some(format!("upstream error: {other}")),
    }
}

/// The parts of a chunk the gateway reads; serde skips every other key without allocating.
#[derive(Deserialize)]
struct RawChunk<'a> {
    #[serde(default, borrow)]
    choices: FirstChoice<'a>,
    /// `null` deserializes to `None` through `Option`.
    #[serde(default)]
    usage: Option<Usage>,
    /// Errors are rare, so a generic value (allocating) is fine and copes with any shape.
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawChoice<'a> {
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    delta: Option<RawDelta<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<CowStr<'a>>,
}

#[derive(Deserialize)]
struct RawDelta<'a> {
    #[serde(default, borrow)]
    content: Option<CowStr<'a>>,
}

/// A string that borrows from the input when it has no escapes.
///
/// Needed because serde's own `Cow<str>` impl always allocates, and `#[serde(borrow)]`
/// only makes a bare `Cow` field borrow, not one inside an `Option`.
struct CowStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        deserializer.deserialize_str(V).map(CowStr)
    }
}

/// The choice with index 0 out of `choices`, without collecting the array into a `Vec`.
///
/// Missing, `null` and `[]` all mean "no choice" (usage-only chunks). The gateway always asks
/// for one choice, but an upstream streaming several (`n > 1`) sends one choice per chunk
/// with its own index, so a choice is picked by index, not by position; a missing index
/// counts as 0. Elements after the wanted one are skipped with `IgnoredAny`.
#[derive(Default)]
struct FirstChoice<'a>(Option<RawChoice<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for FirstChoice<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = FirstChoice<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of choices or null")
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(FirstChoice(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(FirstChoice(None))
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
                d.deserialize_seq(self)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut found = None;
                while found.is_none() {
                    match seq.next_element::<RawChoice<'a>>()? {
                        Some(c) if c.index.unwrap_or(0) == 0 => found = Some(c),
                        Some(_) => {}
                        None => return Ok(FirstChoice(None)),
                    }
                }
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FirstChoice(found))
            }
        }
        deserializer.deserialize_option(V(PhantomData))
    }
}

/// Some upstreams send `null` for a count they don't know; that is 0, not a bad chunk.
fn null_as_zero<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    Ok(Option::<u64>::deserialize(deserializer)?.unwrap_or(0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn delta<'a>(
        content: Option<&'a str>,
        finish_reason: Option<&'a str>,
        usage: Option<Usage>,
    ) -> Chunk<'a> {
        Chunk::Delta {
            content: content.map(Cow::Borrowed),
            finish_reason: finish_reason.map(Cow::Borrowed),
            usage,
        }
    }

    fn content_of<'a>(c: &'a Chunk<'_>) -> &'a Cow<'a, str> {
        match c {
            Chunk::Delta {
                content: Some(c), ..
            } => c,
            other => panic!("expected content, got {other:?}"),
        }
    }

    #[test]
    fn done_sentinel() {
        assert_eq!(parse_chunk(b"[DONE]").unwrap(), Chunk::Done);
        assert_eq!(parse_chunk(b"  [DONE]\r\n\t").unwrap(), Chunk::Done);
        assert!(parse_chunk(b"[DONE]x").is_err());
        assert!(parse_chunk(b"[done]").is_err());
    }

    #[test]
    fn real_openai_chunk() {
        let data = br#"{"id":"chatcmpl-9x","object":"chat.completion.chunk","created":1718000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":null}"#;
        assert_eq!(parse_chunk(data).unwrap(), delta(Some("Hello"), None, None));
    }

    #[test]
    fn openai_first_chunk_role_only() {
        let data = br#"{"choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"finish_reason":null}]}"#;
        assert_eq!(parse_chunk(data).unwrap(), delta(Some(""), None, None));
        let data =
            br#"{"choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]}"#;
        assert_eq!(parse_chunk(data).unwrap(), delta(None, None, None));
    }

    #[test]
    fn finish_reason_chunk() {
        let data = br#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
        assert_eq!(parse_chunk(data).unwrap(), delta(None, Some("stop"), None));
    }

    #[test]
    fn content_null_or_missing_delta() {
        let data =
            br#"{"choices":[{"index":0,"delta":{"content":null},"finish_reason":"length"}]}"#;
        assert_eq!(
            parse_chunk(data).unwrap(),
            delta(None, Some("length"), None)
        );
        let data = br#"{"choices":[{"index":0,"finish_reason":"stop"}]}"#;
        assert_eq!(parse_chunk(data).unwrap(), delta(None, Some("stop"), None));
        let data = br#"{"choices":[{"index":0,"delta":null}]}"#;
        assert_eq!(parse_chunk(data).unwrap(), delta(None, None, None));
    }

    #[test]
    fn deepseek_usage_chunk_with_empty_choices() {
        let data = br#"{"id":"x","object":"chat.completion.chunk","created":1,"model":"deepseek-chat","system_fingerprint":"fp","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46,"prompt_tokens_details":{"cached_tokens":0},"prompt_cache_hit_tokens":0,"prompt_cache_miss_tokens":12}}"#;
        assert_eq!(
            parse_chunk(data).unwrap(),
            delta(
                None,
                None,
                Some(Usage {
                    prompt_tokens: 12,
                    completion_tokens: 34,
                    total_tokens: 46
                })
            )
        );
    }

    #[test]
    fn choices_null_or_missing() {
        let data = br#"{"choices":null,"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
        let usage = Some(Usage {
            prompt_tokens: 1,
            completion_tokens: 2,
            total_tokens: 3,
        });
        assert_eq!(parse_chunk(data).unwrap(), delta(None, None, usage));
        let data = br#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
        assert_eq!(parse_chunk(data).unwrap(), delta(None, None, usage));
        assert_eq!(parse_chunk(b"{}").unwrap(), delta(None, None, None));
    }

    #[test]
    fn usage_missing_fields_and_nulls_default_to_zero() {
        let data = br#"{"choices":[],"usage":{"prompt_tokens":5,"total_tokens":null}}"#;
        assert_eq!(
            parse_chunk(data).unwrap(),
            delta(
                None,
                None,
                Some(Usage {
                    prompt_tokens: 5,
                    completion_tokens: 0,
                    total_tokens: 0
                })
            )
        );
        let data = br#"{"choices":[],"usage":null}"#;
        assert_eq!(parse_chunk(data).unwrap(), delta(None, None, None));
    }

    #[test]
    fn usage_alongside_content() {
        let data = br#"{"choices":[{"index":0,"delta":{"content":"!"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
        assert_eq!(
            parse_chunk(data).unwrap(),
            delta(
                Some("!"),
                Some("stop"),
                Some(Usage {
                    prompt_tokens: 1,
                    completion_tokens: 1,
                    total_tokens: 2
                })
            )
        );
    }

    #[test]
    fn unknown_fields_everywhere_ignored() {
        let data = br#"{"x":[1,{"y":null}],"choices":[{"z":{"a":[]},"index":0,"delta":{"tool_calls":[{"id":"t"}],"reasoning_content":"hmm","content":"ok","w":1},"logprobs":{"content":[]},"finish_reason":null,"q":true}],"usage":null,"obfuscation":"abc"}"#;
        assert_eq!(parse_chunk(data).unwrap(), delta(Some("ok"), None, None));
    }

    #[test]
    fn only_choice_index_zero_counts() {
        let data = br#"{"choices":[{"index":0,"delta":{"content":"a"}},{"index":1,"delta":{"content":"b"}}]}"#;
        assert_eq!(parse_chunk(data).unwrap(), delta(Some("a"), None, None));
        // n > 1 streams: a chunk may carry only another choice.
        let data = br#"{"choices":[{"index":1,"delta":{"content":"b"}}]}"#;
        assert_eq!(parse_chunk(data).unwrap(), delta(None, None, None));
        let data = br#"{"choices":[{"index":1,"delta":{"content":"b"}},{"index":0,"delta":{"content":"a"}},{"index":2}]}"#;
        assert_eq!(parse_chunk(data).unwrap(), delta(Some("a"), None, None));
        // No index at all: the first element.
        let data = br#"{"choices":[{"delta":{"content":"a"}},{"delta":{"content":"b"}}]}"#;
        assert_eq!(parse_chunk(data).unwrap(), delta(Some("a"), None, None));
    }

    #[test]
    fn skipped_choices_must_still_be_valid_json() {
        assert!(parse_chunk(br#"{"choices":[{"index":0},{"index":1,"delta":]}"#).is_err());
    }

    #[test]
    fn content_without_escapes_is_borrowed() {
        let data =
            r#"{"choices":[{"index":0,"delta":{"content":"你好 world"},"finish_reason":"stop"}]}"#;
        let chunk = parse_chunk(data.as_bytes()).unwrap();
        assert!(matches!(content_of(&chunk), Cow::Borrowed("你好 world")));
        match &chunk {
            Chunk::Delta {
                finish_reason: Some(r),
                ..
            } => assert!(matches!(r, Cow::Borrowed("stop"))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn content_with_escapes_is_owned_and_unescaped() {
        let data =
            br#"{"choices":[{"index":0,"delta":{"content":"a\"b\\c\nd\u4f60\ud83d\ude00"}}]}"#;
        let chunk = parse_chunk(data).unwrap();
        let c = content_of(&chunk);
        assert!(matches!(c, Cow::Owned(_)));
        assert_eq!(c, "a\"b\\c\nd你😀");
    }

    #[test]
    fn in_band_error_object() {
        let data = br#"{"error":{"message":"Rate limit reached for gpt-4o","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        assert_eq!(
            parse_chunk(data).unwrap(),
            Chunk::Error {
                message: "Rate limit reached for gpt-4o".to_owned()
            }
        );
    }

    #[test]
    fn in_band_error_string() {
        assert_eq!(
            parse_chunk(br#"{"error":"upstream overloaded"}"#).unwrap(),
            Chunk::Error {
                message: "upstream overloaded".to_owned()
            }
        );
    }

    #[test]
    fn in_band_error_without_message_is_still_readable() {
        let Chunk::Error { message } =
            parse_chunk(br#"{"error":{"code":500,"type":"server_error"}}"#).unwrap()
        else {
            panic!("expected an error");
        };
        assert!(message.contains("server_error"), "{message}");
        let Chunk::Error { message } = parse_chunk(br#"{"error":{"msg":"bad"}}"#).unwrap() else {
            panic!("expected an error");
        };
        assert_eq!(message, "bad");
        let Chunk::Error { message } = parse_chunk(br#"{"error":""}"#).unwrap() else {
            panic!("expected an error");
        };
        assert!(!message.is_empty());
    }

    #[test]
    fn error_wins_over_choices() {
        let data =
            br#"{"choices":[{"index":0,"delta":{"content":"x"}}],"error":{"message":"boom"}}"#;
        assert_eq!(
            parse_chunk(data).unwrap(),
            Chunk::Error {
                message: "boom".to_owned()
            }
        );
    }

    #[test]
    fn null_error_is_no_error() {
        let data = br#"{"choices":[{"index":0,"delta":{"content":"x"}}],"error":null}"#;
        assert_eq!(parse_chunk(data).unwrap(), delta(Some("x"), None, None));
    }

    #[test]
    fn invalid_json_and_utf8() {
        let e = parse_chunk(b"{\"choices\":").unwrap_err();
        assert!(matches!(e, ChunkError::InvalidJson(_)));
        assert!(e.to_string().contains("JSON"), "{e}");
        let e = parse_chunk(b"{\"a\":\"\xFF\"}").unwrap_err();
        assert!(matches!(e, ChunkError::NotUtf8(_)));
        assert!(e.to_string().contains("UTF-8"), "{e}");
        assert!(parse_chunk(b"").is_err());
        assert!(parse_chunk(b"42").is_err());
        assert!(parse_chunk(br#"{"choices":{}}"#).is_err());
        assert!(parse_chunk(br#"{"choices":[{"delta":{"content":5}}]}"#).is_err());
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn usage_serializes_with_all_fields() {
        let u = Usage {
            prompt_tokens: 1,
            completion_tokens: 2,
            total_tokens: 3,
        };
        assert_eq!(
            serde_json::to_string(&u).unwrap(),
            r#"{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}"#
        );
        assert_eq!(
            serde_json::from_str::<Usage>("{}").unwrap(),
            Usage::default()
        );
    }

    /// The mock upstream's stream, as a provider sends it.
    fn stream(pieces: &[&str]) -> Vec<String> {
        let envelope = |delta: &str, reason: &str| {
            format!(
                r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"m","choices":[{{"index":0,"delta":{delta},"finish_reason":{reason}}}]}}"#
            )
        };
        let mut chunks = vec![envelope(r#"{"role":"assistant","content":""}"#, "null")];
        for piece in pieces {
            let content = serde_json::to_string(piece).unwrap();
            chunks.push(envelope(&format!(r#"{{"content":{content}}}"#), "null"));
        }
        chunks.push(envelope("{}", r#""stop""#));
        chunks.push(r#"{"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":2,"completion_tokens":5,"total_tokens":7}}"#.to_owned());
        chunks.push("[DONE]".to_owned());
        chunks
    }

    #[test]
    fn a_stream_s_pieces_are_read_through_their_envelope() {
        let chunks = stream(&["你好", "", "a\"b\\c\n", "😀 end", "\u{1}"]);
        let mut reader = ChunkReader::default();
        let mut through_envelope = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            if reader.piece(chunk.as_bytes()).is_some() {
                through_envelope.push(i);
            }
            let got = reader.read(chunk.as_bytes()).unwrap();
            assert_eq!(got, parse_chunk(chunk.as_bytes()).unwrap(), "{chunk}");
        }
        // The first content piece differs from the role chunk's envelope; the next three
        // share its envelope; a control character (`\u0001`) is read whole (by serde);
        // the stop and usage chunks are not pieces.
        assert_eq!(through_envelope, vec![2, 3, 4]);
        match reader.read(chunks[3].as_bytes()).unwrap() {
            Chunk::Delta {
                content: Some(Cow::Owned(c)),
                ..
            } => assert_eq!(c, "a\"b\\c\n"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn what_is_not_one_string_in_the_envelope_is_read_whole() {
        let chunks = stream(&["a"]);
        let mut reader = ChunkReader::default();
        reader.read(chunks[1].as_bytes()).unwrap();
        let around = |token: &str| chunks[1].replace(r#""a""#, token);
        // Two strings, a string and more members, an unterminated string, a number, a
        // control character, invalid UTF-8: never taken as one piece; each reads as
        // parse_chunk reads it.
        for token in [
            r#""a""b""#,
            r#""a"},"finish_reason":"stop","x":{"y":"z""#,
            r#""a"},{"index":0,"delta":{"content":"b""#,
            r#""a"#,
            "5",
            "\"\u{1}\"",
            r#""\u00e9""#,
        ] {
            let text = around(token);
            assert!(reader.piece(text.as_bytes()).is_none(), "{text}");
            let (got, want) = (reader.read(text.as_bytes()), parse_chunk(text.as_bytes()));
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
                (Err(_), Err(_)) => {}
                (got, want) => panic!("{text}: {got:?} vs {want:?}"),
            }
        }
        let mut bytes = around(r#""ab""#).into_bytes();
        let at = bytes.iter().position(|&b| b == b'b').unwrap();
        bytes[at] = 0xFF;
        assert!(matches!(reader.read(&bytes), Err(ChunkError::NotUtf8(_))));
    }

    proptest! {
        /// Through a stream of pieces, some of them not valid strings and some of their
        /// chunks cut or changed: the reader reads every chunk as `parse_chunk` does.
        #[test]
        fn a_reader_reads_every_chunk_as_parse_chunk_does(
            pieces in prop::collection::vec(
                prop_oneof![
                    4 => any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
                    1 => r#"[a-z"\\{}\[\],:]{0,12}"#,
                ],
                1..12,
            ),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        ) {
            let template = stream(&["x"])[1].clone();
            let mut chunks: Vec<Vec<u8>> = pieces
                .iter()
                .map(|token| template.replace(r#""x""#, token).into_bytes())
                .collect();
            for (at, byte) in edits {
                let chunk = at.get_mut(&mut chunks);
                let i = at.index(chunk.len());
                chunk[i] = byte;
            }
            let mut reader = ChunkReader::default();
            for chunk in &chunks {
                match (reader.read(chunk), parse_chunk(chunk)) {
                    (Ok(got), Ok(want)) => prop_assert_eq!(got, want),
                    (Err(_), Err(_)) => {}
                    (got, want) => prop_assert!(false, "{:?}: {:?} vs {:?}", String::from_utf8_lossy(chunk), got, want),
                }
            }
        }

        #[test]
        fn any_content_round_trips(content in any::<String>(), reason in prop::option::of("[a-z_]{1,12}")) {
            let v = serde_json::json!({
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": reason}],
            });
            let bytes = serde_json::to_vec(&v).unwrap();
            let chunk = parse_chunk(&bytes).unwrap();
            let want = Chunk::Delta {
                content: Some(Cow::Borrowed(content.as_str())),
                finish_reason: reason.as_deref().map(Cow::Borrowed),
                usage: None,
            };
            prop_assert_eq!(chunk, want);
        }
    }
}
