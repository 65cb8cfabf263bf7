//! SSE framing of `/api/chat` answers towards H5 pages (DESIGN "SSE framing"), plus the
//! JSON-writing helpers the mini-program framing shares.
//!
//! Frames are written straight into a caller-supplied `BytesMut`; JSON is written by hand
//! because every frame has a fixed shape, which avoids serde's machinery and any
//! intermediate `String` on the per-chunk path. Tests check the output against serde_json.

use bytes::{BufMut, BytesMut};
use serde::Serialize;

use crate::upstream::chunk::Usage;

/// The final summary of an answer, sent as the `done` event (and the mini-program done frame).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Done {
    pub message_id: String,
    pub conversation_id: String,
    pub usage: Usage,
    pub cost_micros: i64,
    pub balance_micros: i64,
}

const DONE_SENTINEL: &[u8] = b"data: [DONE]\n\n";

/// Relays an upstream event's data untouched, one `data:` line per line of data.
///
/// Data coming from the SSE parser only contains `\n` (joining its lines); a CR is treated as
/// a line break too, because written raw it would end the line early on the client side.
pub fn write_event(out: &mut BytesMut, data: &[u8]) {
    out.reserve(data.len() + 8);
    let mut rest = data;
    loop {
        out.put_slice(b"data: ");
        match memchr::memchr2(b'\n', b'\r', rest) {
            Some(i) => {
                out.put_slice(&rest[..i]);
                out.put_u8(b'\n');
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
            }
            None => {
                out.put_slice(rest);
                out.put_slice(b"\n\n");
                return;
            }
        }
    }
}

/// A comment line that keeps proxies (nginx: 60 s read timeout) from closing an idle stream.
pub fn write_keepalive(out: &mut BytesMut) {
    out.put_slice(b": keep-alive\n\n");
}

/// A synthesized OpenAI chunk carrying `content`, for a client re-attaching mid-answer (the
/// stored text is replayed in the same shape as the live upstream chunks).
pub fn write_content(out: &mut BytesMut, content: &str) {
    const HEAD: &[u8] =
        br#"data: {"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"#;
    const TAIL: &[u8] = b"},\"finish_reason\":null}]}\n\n";
    out.reserve(HEAD.len() + content.len() + 2 + TAIL.len());
    out.put_slice(HEAD);
    write_json_string(out, content, false);
    out.put_slice(TAIL);
}

/// The `done` event with the answer's ids, usage and money, then `data: [DONE]`.
pub fn write_done(out: &mut BytesMut, done: &Done) {
    out.put_slice(b"event: done\ndata: {");
    write_done_fields(out, done, false);
    out.put_slice(b"}\n\n");
    out.put_slice(DONE_SENTINEL);
}

/// An error during the stream, then `data: [DONE]` so OpenAI-style clients stop reading.
pub fn write_error(out: &mut BytesMut, code: i32, msg: &str, reason: Option<&str>) {
    out.put_slice(b"event: error\ndata: ");
    write_error_json(out, code, msg, reason);
    out.put_slice(b"\n\n");
    out.put_slice(DONE_SENTINEL);
}

/// `{"code":N,"msg":"…"[,"reason":"…"]}` (shared with the mini-program framing).
pub(crate) fn write_error_json(out: &mut BytesMut, code: i32, msg: &str, reason: Option<&str>) {
    out.put_slice(b"{\"code\":");
    write_i64(out, i64::from(code));
    out.put_slice(b",\"msg\":");
    write_json_string(out, msg, false);
    if let Some(reason) = reason {
        out.put_slice(b",\"reason\":");
        write_json_string(out, reason, false);
    }
    out.put_u8(b'}');
}

/// The members of `Done` as JSON, without the braces, in `Done`'s field order (shared with the
/// mini-program framing, which puts more members in front). `guard_words` as in
/// [`write_json_string`].
pub(crate) fn write_done_fields(out: &mut BytesMut, done: &Done, guard_words: bool) {
    out.put_slice(b"\"message_id\":");
    write_json_string(out, &done.message_id, guard_words);
    out.put_slice(b",\"conversation_id\":");
    write_json_string(out, &done.conversation_id, guard_words);
    out.put_slice(b",\"usage\":{\"prompt_tokens\":");
    write_u64(out, done.usage.prompt_tokens);
    out.put_slice(b",\"completion_tokens\":");
    write_u64(out, done.usage.completion_tokens);
    out.put_slice(b",\"total_tokens\":");
    write_u64(out, done.usage.total_tokens);
    out.put_slice(b"},\"cost_micros\":");
    write_i64(out, done.cost_micros);
    out.put_slice(b",\"balance_micros\":");
    write_i64(out, done.balance_micros);
}

/// What a byte needs inside a JSON string: 0 = copy as is; `b'u'` = `\u00XX`; `b'w'` = may
/// start a guarded word; anything else = the letter of a two-character escape.
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0A] = b'n';
    t[0x0C] = b'f';
    t[0x0D] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t[b'e' as usize] = b'w';
    t[b's' as usize] = b'w';
    t
};

/// Writes `s` as a quoted JSON string in one pass, copying unescaped runs in bulk.
///
/// Non-ASCII stays raw UTF-8. `\u` escapes use upper-case hex so they can never contribute
/// letters to a word. With `guard_words`, the first letter of every `error` / `success` in `s`
/// is written as `\u0065` / `\u0073` (same JSON value): the mini-program legacy client
/// classifies a callback by searching its raw text for those words. Since escapes only add
/// `\`, digits, upper-case hex and letters right after a `\` (`\n`, `\r`, …), a word in the
/// output can only come from the same word in `s`, so breaking each occurrence of it there
/// is enough; overlapping occurrences (`successuccess`) each get their own first letter.
pub(crate) fn write_json_string(out: &mut BytesMut, s: &str, guard_words: bool) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.put_u8(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc = ESCAPE[usize::from(b)];
        if esc == 0 {
            continue;
        }
        if esc == b'w' {
            let word: &[u8] = if b == b'e' { b"error" } else { b"success" };
            if !guard_words || !bytes[i..].starts_with(word) {
                continue;
            }
        }
        out.put_slice(&bytes[start..i]);
        start = i + 1;
        match esc {
            b'u' | b'w' => {
                out.put_slice(b"\\u00");
                out.put_u8(HEX[usize::from(b >> 4)]);
                out.put_u8(HEX[usize::from(b & 0xF)]);
            }
            letter => {
                out.put_u8(b'\\');
                out.put_u8(letter);
            }
        }
    }
    out.put_slice(&bytes[start..]);
    out.put_u8(b'"');
}

/// Decimal digits of `n` without going through `fmt` (whose `Result` is noise here).
pub(crate) fn write_u64(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        // `n % 10 < 10`, so the narrowing is lossless.
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[at..]);
}

pub(crate) fn write_i64(out: &mut BytesMut, n: i64) {
    if n < 0 {
        out.put_u8(b'-');
    }
    write_u64(out, n.unsigned_abs());
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::upstream::chunk::{Chunk, parse_chunk};
    use crate::upstream::sse::{SseEvent, SseParser};
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn events(bytes: &[u8]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        p.push(bytes);
        // No `finish`: every frame must be complete on its own.
        std::iter::from_fn(|| p.next_event()).collect()
    }

    fn json_str(s: &str, guard: bool) -> String {
        let mut out = BytesMut::new();
        write_json_string(&mut out, s, guard);
        String::from_utf8(out.to_vec()).unwrap()
    }

    fn sample_done() -> Done {
        Done {
            message_id: "0f3a9c".to_owned(),
            conversation_id: "c0ffee".to_owned(),
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: 20,
                total_tokens: 30,
            },
            cost_micros: 1234,
            balance_micros: -5,
        }
    }

    #[test]
    fn event_single_line() {
        let mut out = BytesMut::new();
        write_event(&mut out, br#"{"choices":[]}"#);
        assert_eq!(&out[..], b"data: {\"choices\":[]}\n\n");
    }

    #[test]
    fn event_multi_line_and_empty() {
        let mut out = BytesMut::new();
        write_event(&mut out, b"a\nb\n\nc");
        assert_eq!(&out[..], b"data: a\ndata: b\ndata: \ndata: c\n\n");
        out.clear();
        write_event(&mut out, b"");
        assert_eq!(&out[..], b"data: \n\n");
    }

    #[test]
    fn event_normalises_cr_and_crlf() {
        let mut out = BytesMut::new();
        write_event(&mut out, b"a\r\nb\rc");
        assert_eq!(&out[..], b"data: a\ndata: b\ndata: c\n\n");
    }

    #[test]
    fn keepalive_is_a_comment() {
        let mut out = BytesMut::new();
        write_keepalive(&mut out);
        assert_eq!(&out[..], b": keep-alive\n\n");
        assert_eq!(events(&out), vec![]);
    }

    #[test]
    fn content_exact_bytes() {
        let mut out = BytesMut::new();
        write_content(&mut out, "hi");
        assert_eq!(
            &out[..],
            &b"data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\n"[..]
        );
    }

    #[test]
    fn content_is_an_openai_chunk() {
        let mut out = BytesMut::new();
        let text = "引号\"反斜杠\\换行\n\r\t\u{0}\u{1f}😀 error success";
        write_content(&mut out, text);
        let evs = events(&out);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].event, None);
        let v: Value = serde_json::from_slice(&evs[0].data).unwrap();
        assert_eq!(
            v,
            json!({"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":text},"finish_reason":null}]})
        );
        match parse_chunk(&evs[0].data).unwrap() {
            Chunk::Delta {
                content: Some(c), ..
            } => assert_eq!(c, text),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn done_event_matches_serde_and_ends_with_sentinel() {
        let done = sample_done();
        let mut out = BytesMut::new();
        write_done(&mut out, &done);
        let evs = events(&out);
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].event.as_deref(), Some(&b"done"[..]));
        let v: Value = serde_json::from_slice(&evs[0].data).unwrap();
        assert_eq!(v, serde_json::to_value(&done).unwrap());
        assert_eq!(
            v,
            json!({"message_id":"0f3a9c","conversation_id":"c0ffee","usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30},"cost_micros":1234,"balance_micros":-5})
        );
        // Byte-identical to serde's own output, so the field order matches the struct.
        assert_eq!(
            &evs[0].data[..],
            serde_json::to_vec(&done).unwrap().as_slice()
        );
        assert_eq!(
            evs[1],
            SseEvent {
                event: None,
                data: bytes::Bytes::from_static(b"[DONE]")
            }
        );
        assert!(out.ends_with(b"\n\ndata: [DONE]\n\n"));
        assert!(matches!(parse_chunk(&evs[1].data), Ok(Chunk::Done)));
    }

    #[test]
    fn done_extreme_numbers() {
        let done = Done {
            usage: Usage {
                prompt_tokens: u64::MAX,
                completion_tokens: 0,
                total_tokens: 9,
            },
            cost_micros: i64::MIN,
            balance_micros: i64::MAX,
            ..sample_done()
        };
        let mut out = BytesMut::new();
        write_done(&mut out, &done);
        let v: Value = serde_json::from_slice(&events(&out)[0].data).unwrap();
        assert_eq!(v, serde_json::to_value(&done).unwrap());
    }

    #[test]
    fn error_event_with_and_without_reason() {
        let mut out = BytesMut::new();
        write_error(&mut out, 102, "请求过于频繁", Some("rate_limited"));
        let evs = events(&out);
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0].event.as_deref(), Some(&b"error"[..]));
        let v: Value = serde_json::from_slice(&evs[0].data).unwrap();
        assert_eq!(
            v,
            json!({"code":102,"msg":"请求过于频繁","reason":"rate_limited"})
        );
        assert_eq!(&evs[1].data[..], b"[DONE]");

        out.clear();
        write_error(&mut out, -1, "未登录\n\"x\"", None);
        assert!(out.starts_with(b"event: error\ndata: {\"code\":-1,"));
        let evs = events(&out);
        let v: Value = serde_json::from_slice(&evs[0].data).unwrap();
        assert_eq!(v, json!({"code":-1,"msg":"未登录\n\"x\""}));
        assert_eq!(&evs[1].data[..], b"[DONE]");
    }

    #[test]
    fn json_string_escapes() {
        assert_eq!(json_str("", false), r#""""#);
        assert_eq!(json_str("a\"b\\c", false), r#""a\"b\\c""#);
        assert_eq!(json_str("\n\r\t\u{8}\u{c}", false), r#""\n\r\t\b\f""#);
        assert_eq!(
            json_str("\u{0}\u{1e}\u{7f}", false),
            "\"\\u0000\\u001E\u{7f}\""
        );
        assert_eq!(json_str("你好😀", false), "\"你好😀\"");
        assert_eq!(json_str("error success", false), "\"error success\"");
    }

    #[test]
    fn json_string_guards_words() {
        assert_eq!(json_str("error", true), r#""\u0065rror""#);
        assert_eq!(json_str("success", true), r#""\u0073uccess""#);
        assert_eq!(
            json_str("successuccess", true),
            r#""\u0073ucces\u0073uccess""#
        );
        assert_eq!(json_str("errorerror", true), r#""\u0065rror\u0065rror""#);
        // Letters not starting a word stay readable.
        assert_eq!(json_str("errors less", true), r#""\u0065rrors less""#);
        assert_eq!(json_str("err or", true), r#""err or""#);
        // A \u escape ending in a hex letter must not join raw text into a word.
        assert_eq!(json_str("\u{e}rror", true), r#""\u000Error""#);
    }

    #[test]
    fn numbers() {
        for n in [0u64, 1, 9, 10, 99, 100, 12345, u64::MAX] {
            let mut out = BytesMut::new();
            write_u64(&mut out, n);
            assert_eq!(&out[..], n.to_string().as_bytes());
        }
        for n in [0i64, -1, 7, -10, i64::MIN, i64::MAX] {
            let mut out = BytesMut::new();
            write_i64(&mut out, n);
            assert_eq!(&out[..], n.to_string().as_bytes());
        }
    }

    /// serde_json writes `\u001e`, this module `\u001E` (see `write_json_string`).
    fn upper_hex_escapes(json: &str) -> String {
        let mut out = String::new();
        let mut chars = json.chars();
        while let Some(c) = chars.next() {
            out.push(c);
            if c == '\\' {
                let e = chars.next().unwrap();
                out.push(e);
                if e == 'u' {
                    out.extend(chars.by_ref().take(4).map(|h| h.to_ascii_uppercase()));
                }
            }
        }
        out
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            prop::collection::vec(
                prop_oneof![
                    "[ -~]{0,4}",
                    Just("error".to_owned()),
                    Just("success".to_owned()),
                    Just("\"".to_owned()),
                    Just("\\".to_owned()),
                    Just("你好".to_owned()),
                    Just("😀".to_owned()),
                    Just("\n".to_owned()),
                    Just("\r\n".to_owned()),
                    Just("\u{e}".to_owned()),
                ],
                0..8
            )
            .prop_map(|v| v.concat()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn event_round_trips_through_parser(lines in prop::collection::vec("[^\r\n]{0,12}", 1..5)) {
            let data = lines.join("\n");
            let mut out = BytesMut::new();
            write_event(&mut out, data.as_bytes());
            let evs = events(&out);
            prop_assert_eq!(evs.len(), 1);
            prop_assert_eq!(&evs[0].data[..], data.as_bytes());
            prop_assert_eq!(&evs[0].event, &None);
        }

        #[test]
        fn content_round_trips(s in text()) {
            let mut out = BytesMut::new();
            write_content(&mut out, &s);
            let evs = events(&out);
            prop_assert_eq!(evs.len(), 1);
            let v: Value = serde_json::from_slice(&evs[0].data).unwrap();
            prop_assert_eq!(&v["choices"][0]["delta"]["content"], &Value::String(s.clone()));
        }

        #[test]
        fn json_string_matches_serde_value(s in text(), guard in any::<bool>()) {
            let written = json_str(&s, guard);
            let v: Value = serde_json::from_str(&written).unwrap();
            prop_assert_eq!(v, Value::String(s.clone()));
            if guard {
                prop_assert!(!written.contains("error") && !written.contains("success"), "{}", written);
            } else {
                prop_assert_eq!(written, upper_hex_escapes(&serde_json::to_string(&s).unwrap()));
            }
        }

        #[test]
        fn done_and_error_parse_exactly(
            message_id in text(), conversation_id in text(),
            p in any::<u64>(), c in any::<u64>(), t in any::<u64>(),
            cost in any::<i64>(), balance in any::<i64>(),
            code in any::<i32>(), msg in text(), reason in prop::option::of(text()),
        ) {
            let done = Done {
                message_id, conversation_id,
                usage: Usage { prompt_tokens: p, completion_tokens: c, total_tokens: t },
                cost_micros: cost, balance_micros: balance,
            };
            let mut out = BytesMut::new();
            write_done(&mut out, &done);
            write_error(&mut out, code, &msg, reason.as_deref());
            let evs = events(&out);
            prop_assert_eq!(evs.len(), 4);
            let v: Value = serde_json::from_slice(&evs[0].data).unwrap();
            prop_assert_eq!(v, serde_json::to_value(&done).unwrap());
            let v: Value = serde_json::from_slice(&evs[2].data).unwrap();
            let mut want = json!({"code": code, "msg": msg});
            if let Some(r) = reason {
                want["reason"] = Value::String(r);
            }
            prop_assert_eq!(v, want);
            prop_assert_eq!(&evs[3].data[..], b"[DONE]");
        }
    }
}
