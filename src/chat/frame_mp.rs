//! Mini-program framing of `/api/chat` answers (DESIGN "Mini-program framing"): the
//! `success: {json}\r\n` frames, error frame and terminal that `wx.request` /
//! `uni.request` with `enableChunked` consume, including the widely deployed legacy client.
//!
//! The legacy client classifies each callback by searching its raw text: a callback
//! containing `error` (past index 0) is parsed as an error frame, one containing `success` is
//! split on `success: `. So the bytes of a success frame after its `success: ` prefix must
//! never contain either word; every string is written with those words broken by a JSON
//! escape (`\u0065rror`, `\u0073uccess`), which leaves the parsed value unchanged. Each
//! function writes exactly one frame, and the caller must send each frame (or several whole
//! frames) as one HTTP chunk and the terminal as its own chunk, last.

use bytes::{BufMut, BytesMut};

use crate::chat::frame_sse::{Done, write_done_fields, write_error_json, write_json_string};

/// The terminal frame: always last, always its own chunk.
pub const TERMINAL: &[u8] = b"0\r\n\r\n";

const PREFIX: &[u8] = b"success: {\"content\":";
const END: &[u8] = b"}\r\n";

/// One piece of the answer: `success: {"content":"…"}\r\n`.
pub fn write_content(out: &mut BytesMut, content: &str) {
    out.reserve(PREFIX.len() + content.len() + 2 + END.len());
    out.put_slice(PREFIX);
    write_json_string(out, content, true);
    out.put_slice(END);
}

/// Keeps the connection (and nginx's 60 s read timeout) alive before the first token; the
/// client appends an empty string.
pub fn write_heartbeat(out: &mut BytesMut) {
    out.put_slice(b"success: {\"content\":\"\"}\r\n");
}

/// The last success frame: ids, usage and money, with an empty `content` so clients that
/// append `.content` of every frame need no special case.
pub fn write_done(out: &mut BytesMut, done: &Done) {
    out.put_slice(b"success: {\"content\":\"\",\"done\":true,");
    // Ids are hex today, but nothing here relies on it: they get the same word guard.
    write_done_fields(out, done, true);
    out.put_slice(END);
}

/// An error frame: `event: error\ndata: {"code":N,"msg":"…"[,"reason":"…"]}\r\n`.
///
/// The legacy client strips the first `event: error\ndata: ` and the first `\r\n` and parses
/// the rest, so the JSON holds no raw CR/LF (JSON escaping guarantees it). The words need no
/// guard here: the `error` in the header is what marks the frame.
pub fn write_error(out: &mut BytesMut, code: i32, msg: &str, reason: Option<&str>) {
    out.put_slice(b"event: error\ndata: ");
    write_error_json(out, code, msg, reason);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::upstream::chunk::Usage;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn frame(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
        let mut out = BytesMut::new();
        f(&mut out);
        out.to_vec()
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    /// Asserts the hard rule on one success frame.
    fn assert_success_frame_safe(f: &[u8]) {
        let body = f.strip_prefix(b"success: ").expect("a success frame");
        assert!(
            !contains(body, b"error") && !contains(body, b"success"),
            "unsafe frame: {}",
            String::from_utf8_lossy(f)
        );
        assert!(body.ends_with(b"\r\n"));
        assert!(!contains(&body[..body.len() - 2], b"\r\n"));
    }

    fn sample_done(id: &str) -> Done {
        Done {
            message_id: id.to_owned(),
            conversation_id: "9c1e5f0a".to_owned(),
            usage: Usage {
                prompt_tokens: 11,
                completion_tokens: 22,
                total_tokens: 33,
            },
            cost_micros: 4200,
            balance_micros: 995_800,
        }
    }

    /// What the legacy client (seed 003) ends up with.
    #[derive(Debug, Default, PartialEq)]
    struct Legacy {
        text: String,
        done: bool,
        errors: Vec<Value>,
        /// Every parsed success frame, to check the done frame.
        frames: Vec<Value>,
    }

    /// A transcription of the legacy client's per-callback logic. `JSON.parse` failing
    /// throws in the original; here it panics, which fails the test.
    fn legacy_callback(state: &mut Legacy, text: &str) {
        if text.find("error").is_some_and(|i| i > 0) {
            let json = text
                .replacen("event: error\ndata: ", "", 1)
                .replacen("\r\n", "", 1);
            let v: Value = serde_json::from_str(&json)
                .unwrap_or_else(|e| panic!("legacy JSON.parse({json:?}) throws: {e}"));
            state.errors.push(v);
        } else if text.contains("success") {
            for piece in text.split("success: ").filter(|p| !p.is_empty()) {
                let v: Value = serde_json::from_str(piece)
                    .unwrap_or_else(|e| panic!("legacy JSON.parse({piece:?}) throws: {e}"));
                // `x.content` of a missing key is `undefined`, appended as "undefined".
                match &v["content"] {
                    Value::String(s) => state.text.push_str(s),
                    other => panic!("content is {other:?}"),
                }
                state.frames.push(v);
            }
        } else if js_loose_eq_zero(&text.replacen("\r\n", "", 1)) {
            state.done = true;
        }
    }

    /// JavaScript's `string == 0`: the string, trimmed, is empty or a number equal to 0.
    fn js_loose_eq_zero(s: &str) -> bool {
        let t = s.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
        t.is_empty() || t.parse::<f64>().is_ok_and(|n| n == 0.0)
    }

    /// A client that buffers bytes and splits on `\r\n` (what the new uni-app client does).
    #[derive(Debug, Default)]
    struct Modern {
        buf: Vec<u8>,
        text: String,
        done_frame: Option<Value>,
        errors: Vec<Value>,
        terminated: bool,
    }

    impl Modern {
        fn feed(&mut self, bytes: &[u8]) {
            self.buf.extend_from_slice(bytes);
            while let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).take(i).collect();
                // Lines end at ASCII bytes, so a complete line is complete UTF-8.
                let line = String::from_utf8(line).unwrap();
                assert!(!self.terminated, "bytes after the terminal: {line:?}");
                if let Some(json) = line.strip_prefix("success: ") {
                    let v: Value = serde_json::from_str(json).unwrap();
                    self.text.push_str(v["content"].as_str().unwrap());
                    if v.get("done") == Some(&Value::Bool(true)) {
                        self.done_frame = Some(v);
                    }
                } else if let Some(json) = line.strip_prefix("event: error\ndata: ") {
                    self.errors.push(serde_json::from_str(json).unwrap());
                } else if line == "0" {
                    // Followed by the empty line of `0\r\n\r\n`.
                } else if line.is_empty() {
                    self.terminated = true;
                } else {
                    panic!("unexpected line {line:?}");
                }
            }
        }
    }

    #[test]
    fn content_exact_bytes() {
        assert_eq!(
            frame(|o| write_content(o, "你")),
            "success: {\"content\":\"你\"}\r\n".as_bytes()
        );
        assert_eq!(
            frame(|o| write_content(o, "a\"b\\c\r\nd")),
            b"success: {\"content\":\"a\\\"b\\\\c\\r\\nd\"}\r\n"
        );
    }

    #[test]
    fn content_breaks_forbidden_words() {
        let f = frame(|o| write_content(o, "an error; success! Errors? success: "));
        assert_eq!(
            f,
            br#"success: {"content":"an \u0065rror; \u0073uccess! Errors? \u0073uccess: "}"#
                .iter()
                .chain(b"\r\n")
                .copied()
                .collect::<Vec<u8>>()
        );
        assert_success_frame_safe(&f);
        let v: Value = serde_json::from_slice(&f[b"success: ".len()..]).unwrap();
        assert_eq!(v["content"], "an error; success! Errors? success: ");
    }

    #[test]
    fn content_control_chars_cannot_form_words() {
        // U+000E is written `\u000E`, so the escape cannot end in `e` before `rror`.
        for s in [
            "\u{e}rror",
            "\u{1e}rror",
            "e\rror",
            "\u{c}",
            "s\u{0}uccess",
            "succe\u{1c}ss",
        ] {
            let f = frame(|o| write_content(o, s));
            assert_success_frame_safe(&f);
            let v: Value = serde_json::from_slice(&f[b"success: ".len()..]).unwrap();
            assert_eq!(v["content"], s);
        }
    }

    #[test]
    fn heartbeat_exact_bytes() {
        let f = frame(write_heartbeat);
        assert_eq!(f, b"success: {\"content\":\"\"}\r\n");
        assert_success_frame_safe(&f);
    }

    #[test]
    fn done_frame_exact_json() {
        let done = sample_done("ab12cd");
        let f = frame(|o| write_done(o, &done));
        assert!(
            f.starts_with(b"success: {\"content\":\"\",\"done\":true,\"message_id\":\"ab12cd\",")
        );
        assert_success_frame_safe(&f);
        let v: Value = serde_json::from_slice(&f[b"success: ".len()..]).unwrap();
        assert_eq!(
            v,
            json!({"content":"","done":true,"message_id":"ab12cd","conversation_id":"9c1e5f0a",
                   "usage":{"prompt_tokens":11,"completion_tokens":22,"total_tokens":33},
                   "cost_micros":4200,"balance_micros":995800})
        );
    }

    #[test]
    fn done_frame_guards_ids_and_negative_numbers() {
        let mut done = sample_done("success-error");
        done.conversation_id = "errorsuccess".to_owned();
        done.balance_micros = -3;
        let f = frame(|o| write_done(o, &done));
        assert_success_frame_safe(&f);
        let v: Value = serde_json::from_slice(&f[b"success: ".len()..]).unwrap();
        assert_eq!(v["message_id"], "success-error");
        assert_eq!(v["conversation_id"], "errorsuccess");
        assert_eq!(v["balance_micros"], -3);
    }

    #[test]
    fn error_frame_exact_bytes() {
        assert_eq!(
            frame(|o| write_error(o, 101, "余额不足", None)),
            "event: error\ndata: {\"code\":101,\"msg\":\"余额不足\"}\r\n".as_bytes()
        );
        assert_eq!(
            frame(|o| write_error(o, 102, "请求过于频繁", Some("rate_limited"))),
            "event: error\ndata: {\"code\":102,\"msg\":\"请求过于频繁\",\"reason\":\"rate_limited\"}\r\n"
                .as_bytes()
        );
    }

    #[test]
    fn legacy_client_reads_error_frame() {
        let mut st = Legacy::default();
        let f = frame(|o| {
            write_error(
                o,
                102,
                "内容\r\n不合规 \"x\" success",
                Some("content_blocked"),
            )
        });
        legacy_callback(&mut st, std::str::from_utf8(&f).unwrap());
        legacy_callback(&mut st, std::str::from_utf8(TERMINAL).unwrap());
        assert_eq!(
            st.errors,
            vec![
                json!({"code":102,"msg":"内容\r\n不合规 \"x\" success","reason":"content_blocked"})
            ]
        );
        assert!(st.done);
        assert_eq!(st.text, "");
    }

    #[test]
    fn legacy_client_full_answer() {
        let mut st = Legacy::default();
        for cb in [
            frame(write_heartbeat),
            [
                frame(|o| write_content(o, "我是")),
                frame(|o| write_content(o, "error 0")),
            ]
            .concat(),
            frame(|o| write_done(o, &sample_done("1f"))),
            TERMINAL.to_vec(),
        ] {
            legacy_callback(&mut st, std::str::from_utf8(&cb).unwrap());
        }
        assert_eq!(st.text, "我是error 0");
        assert!(st.done);
        assert!(st.errors.is_empty());
        assert_eq!(st.frames.last().unwrap()["done"], true);
    }

    #[test]
    fn legacy_client_cannot_take_done_merged_with_terminal() {
        // Documents why the terminal must be its own chunk: JSON.parse("{…}\r\n0\r\n\r\n")
        // throws in the legacy client.
        let merged = [
            frame(|o| write_done(o, &sample_done("1f"))),
            TERMINAL.to_vec(),
        ]
        .concat();
        let text = String::from_utf8(merged).unwrap();
        let result = std::panic::catch_unwind(|| legacy_callback(&mut Legacy::default(), &text));
        assert!(result.is_err());
    }

    #[test]
    fn terminal_is_legacy_done() {
        assert_eq!(TERMINAL, b"0\r\n\r\n");
        let mut st = Legacy::default();
        legacy_callback(&mut st, "0\r\n\r\n");
        assert!(st.done);
        assert!(js_loose_eq_zero(""));
        assert!(!js_loose_eq_zero("1"));
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            prop::collection::vec(
                prop_oneof![
                    "[ -~]{0,4}",
                    Just("error".to_owned()),
                    Just("success".to_owned()),
                    Just("success: ".to_owned()),
                    Just("event: error\ndata: ".to_owned()),
                    Just("0".to_owned()),
                    Just("\"".to_owned()),
                    Just("\\".to_owned()),
                    Just("\r\n".to_owned()),
                    Just("你好".to_owned()),
                    Just("😀".to_owned()),
                    Just("\u{e}".to_owned()),
                ],
                0..8
            )
            .prop_map(|v| v.concat()),
        ]
    }

    /// Groups `frames` into callbacks: a cut after frame `i` when `cut[i]` is set; the done
    /// frame (second to last) and the terminal are always separated.
    fn group(frames: &[Vec<u8>], cuts: &[bool]) -> Vec<Vec<u8>> {
        let mut callbacks = vec![Vec::new()];
        for (i, f) in frames.iter().enumerate() {
            callbacks.last_mut().unwrap().extend_from_slice(f);
            let before_terminal = i + 2 == frames.len();
            if i + 1 < frames.len() && (before_terminal || cuts[i % cuts.len()]) {
                callbacks.push(Vec::new());
            }
        }
        callbacks
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_answer_reaches_both_clients_exactly(
            contents in prop::collection::vec(text(), 0..8),
            heartbeats in 0usize..3,
            message_id in text(),
            cuts in prop::collection::vec(any::<bool>(), 1..10),
            byte_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let done = Done { message_id, ..sample_done("x") };
            let mut frames = Vec::new();
            for _ in 0..heartbeats {
                frames.push(frame(write_heartbeat));
            }
            for c in &contents {
                frames.push(frame(|o| write_content(o, c)));
            }
            frames.push(frame(|o| write_done(o, &done)));
            for f in &frames {
                assert_success_frame_safe(f);
            }
            frames.push(TERMINAL.to_vec());
            let want: String = contents.concat();

            // Legacy client, callbacks at frame boundaries.
            let mut legacy = Legacy::default();
            for cb in group(&frames, &cuts) {
                legacy_callback(&mut legacy, std::str::from_utf8(&cb).unwrap());
            }
            prop_assert_eq!(&legacy.text, &want);
            prop_assert!(legacy.done);
            prop_assert!(legacy.errors.is_empty());
            let last = legacy.frames.last().unwrap();
            prop_assert_eq!(&last["message_id"], &Value::String(done.message_id.clone()));

            // Modern client, callbacks at arbitrary byte positions.
            let bytes = frames.concat();
            let mut points: Vec<usize> = byte_cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut modern = Modern::default();
            let mut prev = 0;
            for p in points {
                modern.feed(&bytes[prev..p]);
                prev = p;
            }
            modern.feed(&bytes[prev..]);
            prop_assert_eq!(&modern.text, &want);
            prop_assert!(modern.terminated);
            prop_assert!(modern.buf.is_empty());
            let df = modern.done_frame.unwrap();
            prop_assert_eq!(&df["message_id"], &Value::String(done.message_id.clone()));
            prop_assert_eq!(&df["usage"]["total_tokens"], &json!(33));
        }

        #[test]
        fn error_frames_reach_both_clients(
            code in any::<i32>(), msg in text(), reason in prop::option::of(text()),
            cut in any::<prop::sample::Index>(),
        ) {
            let f = frame(|o| write_error(o, code, &msg, reason.as_deref()));
            let mut want = json!({"code": code, "msg": msg});
            if let Some(r) = &reason {
                want["reason"] = Value::String(r.clone());
            }

            let mut legacy = Legacy::default();
            legacy_callback(&mut legacy, std::str::from_utf8(&f).unwrap());
            legacy_callback(&mut legacy, std::str::from_utf8(TERMINAL).unwrap());
            prop_assert_eq!(&legacy.errors, &vec![want.clone()]);
            prop_assert!(legacy.done);

            let bytes = [f, TERMINAL.to_vec()].concat();
            let at = cut.index(bytes.len() + 1);
            let mut modern = Modern::default();
            modern.feed(&bytes[..at]);
            modern.feed(&bytes[at..]);
            prop_assert_eq!(&modern.errors, &vec![want]);
            prop_assert!(modern.terminated);
        }
    }
}
