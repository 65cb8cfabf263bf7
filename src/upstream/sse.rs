//! Incremental parser for the Server-Sent Events stream an OpenAI-compatible upstream sends.
//!
//! It follows the WHATWG EventSource parsing rules but works on bytes, so the network may
//! split the stream anywhere (mid-line, inside a UTF-8 character, between CR and LF) without
//! changing the result. Event data is handed out as raw bytes: the caller parses it as JSON,
//! which validates UTF-8 anyway, so doing it here too would only cost a second pass.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// A UTF-8 byte order mark; the EventSource decoder drops one at the very start of a stream.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, `None` when absent or empty (both mean the default `message`).
    pub event: Option<Bytes>,
    /// The `data:` lines joined with `\n`, not UTF-8 validated.
    pub data: Bytes,
}

/// The data buffer of the event being built.
///
/// Upstream chunks almost always carry exactly one `data:` line, so that case keeps the
/// zero-copy slice of the input buffer; only a second line forces a copy into a fresh buffer.
#[derive(Debug, Default)]
enum DataBuf {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

/// What one parsing step produced.
enum Step {
    /// A blank line completed an event.
    Event(SseEvent),
    /// A line was consumed without completing an event.
    Line,
    /// No complete line is buffered.
    NeedMore,
}

/// Incremental SSE parser: `push` bytes as they arrive, drain with `next_event`, and call
/// `finish` (until it returns `None`) when the stream ends.
#[derive(Debug)]
pub struct SseParser {
    /// Bytes received but not yet consumed as lines.
    buf: BytesMut,
    /// Bytes at the front of `buf` already known to hold no line ending, so a long line that
    /// arrives in many small chunks is not rescanned from its start on every push (O(n²)).
    scanned: usize,
    /// The last consumed line ended with a CR that was the last buffered byte; if the next
    /// byte is LF it belongs to that CR and must not be read as a blank line.
    pending_cr: bool,
    /// Nothing has been consumed yet, so a leading BOM must still be looked for.
    at_start: bool,
    /// The `event:` field of the event being built.
    event: Option<Bytes>,
    /// The `data:` lines of the event being built.
    data: DataBuf,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    /// An empty parser at the start of a stream.
    #[must_use]
    pub fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            scanned: 0,
            pending_cr: false,
            at_start: true,
            event: None,
            data: DataBuf::Empty,
        }
    }

    /// Appends bytes as they arrive from the network.
    pub fn push(&mut self, mut chunk: &[u8]) {
        // Resolving a pending CR here keeps `next_event` free of that state: `pending_cr` is
        // only ever set when the buffer was drained, so `chunk[0]` is the byte after the CR.
        if self.pending_cr && !chunk.is_empty() {
            self.pending_cr = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete event, or `None` until more bytes are pushed.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            match self.step(false) {
                Step::Event(ev) => return Some(ev),
                Step::Line => {}
                Step::NeedMore => return None,
            }
        }
    }

    /// Drains the parser at the end of the stream; call it until it returns `None`.
    ///
    /// Complete events still buffered come first. Then, unlike a browser's EventSource (which
    /// drops an unterminated event), a trailing line without a line ending is taken as a line
    /// and an event whose blank line never came is dispatched: upstreams that close the
    /// connection right after their last `data:` line would otherwise lose the final chunk
    /// (often the one carrying `usage`).
    pub fn finish(&mut self) -> Option<SseEvent> {
        loop {
            match self.step(true) {
                Step::Event(ev) => return Some(ev),
                Step::Line => {}
                Step::NeedMore => return self.dispatch(),
            }
        }
    }

    /// Bytes currently held (unparsed input plus the data of the event being built), so the
    /// caller can cap what a misbehaving upstream makes it buffer.
    pub fn buffered_len(&self) -> usize {
        let data = match &self.data {
            DataBuf::Empty => 0,
            DataBuf::One(b) => b.len(),
            DataBuf::Many(b) => b.len(),
        };
        self.buf.len() + data
    }

    /// Consumes at most one line. At end of stream (`eof`) a trailing partial line counts.
    fn step(&mut self, eof: bool) -> Step {
        if self.at_start {
            // Wait until three bytes decide whether a BOM is there, unless the stream ended.
            if !eof && self.buf.len() < BOM.len() && BOM.starts_with(&self.buf) {
                return Step::NeedMore;
            }
            if self.buf.starts_with(BOM) {
                self.buf.advance(BOM.len());
            }
            self.at_start = false;
        }

        let (len, terminated) = match memchr::memchr2(b'\r', b'\n', &self.buf[self.scanned..]) {
            Some(off) => (self.scanned + off, true),
            None if eof && !self.buf.is_empty() => (self.buf.len(), false),
            None => {
                self.scanned = self.buf.len();
                return Step::NeedMore;
            }
        };
        self.scanned = 0;

        let outcome = self.take_line(len);

        if terminated {
            let cr = self.buf[0] == b'\r';
            self.buf.advance(1);
            if cr {
                match self.buf.first() {
                    Some(b'\n') => self.buf.advance(1),
                    Some(_) => {}
                    None => self.pending_cr = true,
                }
            }
        }
        outcome
    }

    /// Interprets and removes the `len` bytes at the front of the buffer (a line without its
    /// ending).
    fn take_line(&mut self, len: usize) -> Step {
        let line = &self.buf[..len];
        if line.is_empty() {
            return match self.dispatch() {
                Some(ev) => Step::Event(ev),
                None => Step::Line,
            };
        }
        if line[0] == b':' {
            self.buf.advance(len);
            return Step::Line;
        }
        // `field:value`, one optional space after the colon; no colon = field, empty value.
        let (name_end, value_start) = match memchr::memchr(b':', line) {
            Some(colon) if line.get(colon + 1) == Some(&b' ') => (colon, colon + 2),
            Some(colon) => (colon, colon + 1),
            None => (len, len),
        };
        match &line[..name_end] {
            b"data" => {
                let value = self.buf.split_to(len).freeze().slice(value_start..);
                self.push_data(value);
            }
            b"event" => {
                let value = self.buf.split_to(len).freeze().slice(value_start..);
                self.event = (!value.is_empty()).then_some(value);
            }
            // `id` and `retry` only matter to a reconnecting browser; unknown fields are
            // ignored by the spec.
            _ => self.buf.advance(len),
        }
        Step::Line
    }

    fn push_data(&mut self, value: Bytes) {
        self.data = match std::mem::take(&mut self.data) {
            DataBuf::Empty => DataBuf::One(value),
            DataBuf::One(first) => {
                let mut joined = BytesMut::with_capacity(first.len() + 1 + value.len());
                joined.extend_from_slice(&first);
                joined.put_u8(b'\n');
                joined.extend_from_slice(&value);
                DataBuf::Many(joined)
            }
            DataBuf::Many(mut joined) => {
                joined.put_u8(b'\n');
                joined.extend_from_slice(&value);
                DataBuf::Many(joined)
            }
        };
    }

    /// Ends the current event: returns it if it had any `data` line, and resets the state
    /// either way (the event type never leaks into the next event).
    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        let data = match std::mem::take(&mut self.data) {
            DataBuf::Empty => return None,
            DataBuf::One(b) => b,
            DataBuf::Many(b) => b.freeze(),
        };
        Some(SseEvent { event, data })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(|e| Bytes::copy_from_slice(e.as_bytes())),
            data: Bytes::copy_from_slice(data.as_bytes()),
        }
    }

    /// Feeds all pieces, draining after each push, then finishes.
    fn parse_pieces<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for piece in pieces {
            p.push(piece);
            while let Some(e) = p.next_event() {
                out.push(e);
            }
        }
        while let Some(e) = p.finish() {
            out.push(e);
        }
        assert_eq!(p.finish(), None, "finish must stay empty once drained");
        assert_eq!(p.buffered_len(), 0);
        out
    }

    fn parse(input: &[u8]) -> Vec<SseEvent> {
        parse_pieces([input])
    }

    /// Parses without calling `finish`: only what a strict EventSource would dispatch.
    fn parse_no_finish(input: &[u8]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        p.push(input);
        std::iter::from_fn(|| p.next_event()).collect()
    }

    #[test]
    fn lf_line_endings() {
        assert_eq!(
            parse_no_finish(b"data: a\n\ndata: b\n\n"),
            vec![ev(None, "a"), ev(None, "b")]
        );
    }

    #[test]
    fn crlf_line_endings() {
        assert_eq!(
            parse_no_finish(b"data: a\r\n\r\ndata: b\r\n\r\n"),
            vec![ev(None, "a"), ev(None, "b")]
        );
    }

    #[test]
    fn cr_line_endings() {
        assert_eq!(
            parse_no_finish(b"data: a\r\rdata: b\r\r"),
            vec![ev(None, "a"), ev(None, "b")]
        );
    }

    #[test]
    fn mixed_line_endings_in_one_event() {
        assert_eq!(
            parse_no_finish(b"data: a\rdata: b\r\ndata: c\n\r\n"),
            vec![ev(None, "a\nb\nc")]
        );
    }

    #[test]
    fn cr_at_chunk_end_then_lf_is_one_line_ending() {
        // If the LF were read as its own (blank) line the event would dispatch early and
        // the second data line would start a new event.
        let events = parse_pieces([&b"data: a\r"[..], b"\ndata: b\r", b"\n", b"\n"]);
        assert_eq!(events, vec![ev(None, "a\nb")]);
    }

    #[test]
    fn cr_at_chunk_end_then_other_byte() {
        let mut p = SseParser::new();
        p.push(b"data: a\r");
        assert_eq!(p.next_event(), None);
        p.push(b"\r");
        assert_eq!(p.next_event(), Some(ev(None, "a")));
    }

    #[test]
    fn cr_at_chunk_end_survives_empty_push() {
        let events = parse_pieces([&b"data: a\r"[..], b"", b"\n", b"\n"]);
        assert_eq!(events, vec![ev(None, "a")]);
    }

    #[test]
    fn event_not_dispatched_before_blank_line() {
        let mut p = SseParser::new();
        p.push(b"data: a\n");
        assert_eq!(p.next_event(), None);
        p.push(b"\n");
        assert_eq!(p.next_event(), Some(ev(None, "a")));
        assert_eq!(p.next_event(), None);
    }

    #[test]
    fn comments_are_ignored() {
        assert_eq!(
            parse_no_finish(b": keep-alive\n\n:x\ndata: a\n: mid\ndata: b\n\n"),
            vec![ev(None, "a\nb")]
        );
    }

    #[test]
    fn comment_only_stream_yields_nothing() {
        assert_eq!(parse(b": ping\n\n: ping\n\n: ping"), vec![]);
    }

    #[test]
    fn bom_at_start_is_skipped() {
        assert_eq!(
            parse_no_finish(b"\xEF\xBB\xBFdata: a\n\n"),
            vec![ev(None, "a")]
        );
    }

    #[test]
    fn bom_split_across_chunks_is_skipped() {
        let events = parse_pieces([&b"\xEF"[..], b"\xBB", b"\xBFdata: a\n\n"]);
        assert_eq!(events, vec![ev(None, "a")]);
    }

    #[test]
    fn bom_only_at_start() {
        // A second BOM is part of the field name, so the line is an unknown field.
        assert_eq!(
            parse_no_finish(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\ndata: b\n\n"),
            vec![ev(None, "b")]
        );
        // A BOM inside a value is data.
        assert_eq!(
            parse_no_finish(b"data: \xEF\xBB\xBFa\n\n"),
            vec![SseEvent {
                event: None,
                data: Bytes::from_static(b"\xEF\xBB\xBFa")
            }]
        );
    }

    #[test]
    fn bom_prefix_that_is_not_a_bom() {
        // Starts like a BOM but is not one: the bytes are kept.
        assert_eq!(
            parse_pieces([&b"\xEF"[..], b"\xBBx:\n\ndata: a\n\n"]),
            vec![ev(None, "a")]
        );
        assert_eq!(
            parse(b"data:\xEF"),
            vec![SseEvent {
                event: None,
                data: Bytes::from_static(b"\xEF")
            }]
        );
    }

    #[test]
    fn multi_line_data_joined_with_lf() {
        assert_eq!(
            parse_no_finish(b"data: line1\ndata: line2\ndata: line3\n\n"),
            vec![ev(None, "line1\nline2\nline3")]
        );
    }

    #[test]
    fn data_without_space_and_only_one_space_removed() {
        assert_eq!(
            parse_no_finish(b"data:a\n\ndata:  b\n\ndata:\tc\n\n"),
            vec![ev(None, "a"), ev(None, " b"), ev(None, "\tc")]
        );
    }

    #[test]
    fn value_may_contain_colons() {
        assert_eq!(
            parse_no_finish(b"data: {\"a\":\"b: c\"}\n\n"),
            vec![ev(None, "{\"a\":\"b: c\"}")]
        );
    }

    #[test]
    fn event_field_sets_type_and_resets_after_dispatch() {
        assert_eq!(
            parse_no_finish(b"event: error\ndata: {}\n\ndata: x\n\n"),
            vec![ev(Some("error"), "{}"), ev(None, "x")]
        );
    }

    #[test]
    fn event_type_reset_by_blank_line_even_without_data() {
        assert_eq!(
            parse_no_finish(b"event: a\n\ndata: x\n\n"),
            vec![ev(None, "x")]
        );
    }

    #[test]
    fn last_event_field_wins_and_empty_means_default() {
        assert_eq!(
            parse_no_finish(b"event: a\nevent: b\ndata: x\n\nevent:\ndata: y\n\n"),
            vec![ev(Some("b"), "x"), ev(None, "y")]
        );
    }

    #[test]
    fn empty_data_still_dispatches() {
        assert_eq!(
            parse_no_finish(b"data:\n\ndata: \n\ndata\n\n"),
            vec![ev(None, ""), ev(None, ""), ev(None, "")]
        );
        assert_eq!(parse_no_finish(b"data\ndata\n\n"), vec![ev(None, "\n")]);
    }

    #[test]
    fn blank_line_without_data_dispatches_nothing() {
        assert_eq!(parse_no_finish(b"\n\n\r\n\r\rid: 1\nretry: 5\n\n"), vec![]);
    }

    #[test]
    fn id_retry_and_unknown_fields_ignored() {
        assert_eq!(
            parse_no_finish(b"id: 7\nretry: 1000\nfoo: bar\nDATA: no\ndata : no\ndata: yes\n\n"),
            vec![ev(None, "yes")]
        );
    }

    #[test]
    fn finish_dispatches_event_missing_blank_line() {
        assert_eq!(
            parse_no_finish(b"data: a\n\ndata: b\n"),
            vec![ev(None, "a")]
        );
        assert_eq!(
            parse(b"data: a\n\ndata: b\n"),
            vec![ev(None, "a"), ev(None, "b")]
        );
        assert_eq!(parse(b"event: x\ndata: b\r"), vec![ev(Some("x"), "b")]);
    }

    #[test]
    fn finish_takes_trailing_partial_line() {
        assert_eq!(parse(b"data: [DONE]"), vec![ev(None, "[DONE]")]);
        assert_eq!(parse(b"data: a\ndata: b"), vec![ev(None, "a\nb")]);
        assert_eq!(parse(b"data: a\n: trailing comment"), vec![ev(None, "a")]);
    }

    #[test]
    fn finish_returns_buffered_complete_events_first() {
        let mut p = SseParser::new();
        p.push(b"data: 1\n\ndata: 2\n\ndata: 3");
        assert_eq!(p.finish(), Some(ev(None, "1")));
        assert_eq!(p.finish(), Some(ev(None, "2")));
        assert_eq!(p.finish(), Some(ev(None, "3")));
        assert_eq!(p.finish(), None);
        assert_eq!(p.finish(), None);
    }

    #[test]
    fn finish_on_empty_parser() {
        assert_eq!(SseParser::new().finish(), None);
        assert_eq!(SseParser::default().finish(), None);
    }

    #[test]
    fn raw_bytes_not_validated() {
        assert_eq!(
            parse_no_finish(b"data: \xFF\xFE\x00\n\n"),
            vec![SseEvent {
                event: None,
                data: Bytes::from_static(b"\xFF\xFE\x00")
            }]
        );
    }

    #[test]
    fn split_inside_utf8_char() {
        let input = "data: 你好😀\n\n".as_bytes();
        for cut in 0..=input.len() {
            let (a, b) = input.split_at(cut);
            assert_eq!(
                parse_pieces([a, b]),
                vec![ev(None, "你好😀")],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn single_data_line_is_a_slice_of_the_input_buffer() {
        let mut p = SseParser::new();
        p.push(b"data: hello\n\n");
        let start = p.buf.as_ptr() as usize;
        let end = start + p.buf.len();
        let e = p.next_event().unwrap();
        let at = e.data.as_ptr() as usize;
        assert!(
            (start..end).contains(&at),
            "data should point into the parser's buffer, not a copy"
        );
        assert_eq!(at, start + b"data: ".len());
    }

    #[test]
    fn long_line_in_many_pushes() {
        let body = "x".repeat(10_000);
        let input = format!("data: {body}\n\n");
        let events = parse_pieces(input.as_bytes().chunks(7));
        assert_eq!(events, vec![ev(None, &body)]);
    }

    #[test]
    fn buffered_len_counts_partial_input_and_data() {
        let mut p = SseParser::new();
        p.push(b"data: abc\ndata: de");
        assert_eq!(p.next_event(), None);
        assert_eq!(p.buffered_len(), 3 + b"data: de".len());
    }

    #[test]
    fn typical_openai_stream() {
        let input = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n\
                      data: {\"choices\":[],\"usage\":{\"total_tokens\":3}}\n\n\
                      data: [DONE]\n\n";
        let events = parse(input);
        assert_eq!(events.len(), 3);
        assert_eq!(&events[2].data[..], b"[DONE]");
    }

    // ---- property test ----

    /// One generated event: an optional type and its data lines (never containing CR/LF).
    #[derive(Debug, Clone)]
    struct GenEvent {
        event: Option<String>,
        lines: Vec<String>,
    }

    fn fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ -~]{0,4}",
            Just("error".to_owned()),
            Just("success".to_owned()),
            Just("0".to_owned()),
            Just("\"".to_owned()),
            Just("\\".to_owned()),
            Just("你好".to_owned()),
            Just("😀".to_owned()),
            Just(":".to_owned()),
            Just(" ".to_owned()),
            Just("data: ".to_owned()),
            Just("\u{FEFF}".to_owned()),
        ]
    }

    fn line() -> impl Strategy<Value = String> {
        prop::collection::vec(fragment(), 0..5).prop_map(|v| v.concat())
    }

    fn gen_event() -> impl Strategy<Value = GenEvent> {
        (
            prop::option::of("[a-z_]{1,8}"),
            prop::collection::vec(line(), 1..4),
        )
            .prop_map(|(event, lines)| GenEvent { event, lines })
    }

    const ENDINGS: [&str; 3] = ["\n", "\r", "\r\n"];

    /// Serializes with per-line random endings (from `ends`, cycled), comment and `id:` lines
    /// and the optional space chosen by `noise` (cycled), and an optional BOM.
    /// `tail`: 0 = complete, 1 = no final blank line, 2 = also no final line ending.
    fn serialize(events: &[GenEvent], ends: &[u8], noise: &[u8], bom: bool, tail: u8) -> Vec<u8> {
        let mut ends = ends.iter().map(|&e| ENDINGS[usize::from(e) % 3]).cycle();
        let mut noise = noise.iter().copied().cycle();
        let mut roll = |n: u8| noise.next().unwrap() % n == 0;
        let mut lines: Vec<String> = Vec::new();
        for ev in events {
            if roll(3) {
                lines.push(": comment error success 你好".to_owned());
            }
            if let Some(t) = &ev.event {
                let space = if roll(2) { " " } else { "" };
                lines.push(format!("event:{space}{t}"));
            }
            for l in &ev.lines {
                // The optional space is mandatory when the value itself starts with one.
                let space = if l.starts_with(' ') || roll(2) {
                    " "
                } else {
                    ""
                };
                lines.push(format!("data:{space}{l}"));
                if roll(5) {
                    lines.push(":".to_owned());
                }
                if roll(7) {
                    lines.push("id: 42".to_owned());
                }
            }
            lines.push(String::new());
        }
        if !events.is_empty() && tail > 0 {
            lines.pop();
        }

        let mut out = Vec::new();
        if bom {
            out.extend_from_slice(BOM);
        }
        let mut last_ending = "";
        for (j, l) in lines.iter().enumerate() {
            out.extend_from_slice(l.as_bytes());
            if tail == 2 && j + 1 == lines.len() {
                break;
            }
            let mut e = ends.next().unwrap();
            // A blank line's lone LF right after a lone CR would merge into one CRLF.
            if l.is_empty() && last_ending == "\r" && e == "\n" {
                e = "\r\n";
            }
            out.extend_from_slice(e.as_bytes());
            last_ending = e;
        }
        out
    }

    fn expected(events: &[GenEvent]) -> Vec<SseEvent> {
        events
            .iter()
            .map(|e| SseEvent {
                event: e
                    .event
                    .as_ref()
                    .map(|t| Bytes::copy_from_slice(t.as_bytes())),
                data: Bytes::from(e.lines.join("\n")),
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_split_gives_the_same_events(
            events in prop::collection::vec(gen_event(), 0..6),
            ends in prop::collection::vec(0u8..3, 1..16),
            noise in prop::collection::vec(any::<u8>(), 1..16),
            bom in any::<bool>(),
            tail in 0u8..3,
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let bytes = serialize(&events, &ends, &noise, bom, tail);
            let want = expected(&events);

            let whole = parse(&bytes);
            prop_assert_eq!(&whole, &want);

            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut pieces = Vec::new();
            let mut prev = 0;
            for p in points {
                pieces.push(&bytes[prev..p]);
                prev = p;
            }
            pieces.push(&bytes[prev..]);
            prop_assert_eq!(&parse_pieces(pieces), &want);

            // Every possible cut point at once.
            prop_assert_eq!(&parse_pieces(bytes.chunks(1)), &want);
        }
    }
}
