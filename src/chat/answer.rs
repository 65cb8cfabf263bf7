//! The server-owned answer: a task reads the upstream, keeps the growing answer in
//! memory for every attached reader, flushes it to the database now and then, and
//! stores and bills it once at the end — whether or not any client is still there.
//!
//! Readers (the original request, and any number of re-attached `…/stream?offset=N`
//! requests) share one [`Answer`]. Each reader keeps its own position and frames only
//! what is new to it (the text is never copied per reader). A reader that finds nothing
//! new leaves its waker under the answer's own lock, and the next change wakes it under
//! that same lock: the per-chunk path takes only this one short, per-answer lock (never
//! one shared across streams), allocates nothing, and makes no database call.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::frame_sse::Done;
use super::{Framing, frame_mp, frame_sse};
use crate::error::AppError;

/// Where an answer is in its life.
#[derive(Debug, Clone)]
pub enum Phase {
    /// The upstream has not answered yet.
    Opening,
    /// Pieces are arriving.
    Streaming,
    /// Over: stored and billed.
    Ended(Ending),
}

#[derive(Debug, Clone)]
pub enum Ending {
    /// Completed, stopped by the user or cut by the time bound: what was produced is
    /// kept and billed.
    Done(Arc<Done>),
    /// The upstream failed; `before_open` when it never answered (then an SSE client
    /// still gets a real HTTP status).
    Failed { error: AppError, before_open: bool },
}

/// The answer so far. A piece is what one upstream event added: its text, and the event
/// as it was received while a reader may still relay it. Per piece only its length (4
/// bytes) is kept beyond the text itself: an open stream's memory grows by little more
/// than its text.
struct Live {
    content: String,
    /// The length of each piece's text in `content`, in order (readers go through them
    /// in order and keep their own byte position).
    lens: Vec<u32>,
    /// The upstream events of pieces `raw_from..` while `keep_raw` (an empty one for a
    /// piece mirrored from the database); let go once the only raw reader relayed them.
    raws: Vec<Bytes>,
    raw_from: usize,
    phase: Phase,
    /// Readers relaying the upstream's own events (SSE from the start of the answer).
    raw_readers: usize,
    /// Whether pieces keep their upstream event: until the first reader attaches, then
    /// only while a raw reader follows. Mini-program and resuming readers frame the text,
    /// so an answer nobody relays raw keeps only its text (memory per open stream).
    keep_raw: bool,
    /// Readers attached now.
    readers: usize,
    /// Tasks waiting for the next change (readers, `opened`, `ended`); every change
    /// wakes and forgets them.
    waiting: Vec<Waker>,
}

impl Live {
    /// Wakes `cx`'s task at the next change.
    fn wait(&mut self, cx: &Context<'_>) {
        if !self.waiting.iter().any(|w| w.will_wake(cx.waker())) {
            self.waiting.push(cx.waker().clone());
        }
    }

    fn wake_all(&mut self) {
        for waker in self.waiting.drain(..) {
            waker.wake();
        }
    }

    /// No reader relays upstream events any more: keep only the text.
    fn forget_raw(&mut self) {
        self.keep_raw = false;
        self.raws = Vec::new();
        self.raw_from = self.lens.len();
    }

    /// Keeps upstream events from the next piece on.
    fn start_keeping_raw(&mut self) {
        if !self.keep_raw {
            self.keep_raw = true;
            self.raws.clear();
            self.raw_from = self.lens.len();
        }
    }

    /// Appends one piece (its text and, while kept, its upstream event).
    fn push_piece(&mut self, raw: Bytes, text: &str) {
        self.content.push_str(text);
        // Cannot truncate: [`Answer::push`] splits a longer text.
        self.lens.push(text.len() as u32);
        if self.keep_raw {
            self.raws.push(raw);
        }
    }

    /// The upstream event of piece `i`, if it is still kept.
    fn raw(&self, i: usize) -> Option<&Bytes> {
        let kept = self.raws.get(i.checked_sub(self.raw_from)?)?;
        (!kept.is_empty()).then_some(kept)
    }
}

/// The longest text one piece keeps (its length is a `u32`).
const MAX_PIECE: usize = u32::MAX as usize;

/// `text` cut at the last character boundary at or before `max` bytes (the whole of it
/// when it is not longer): what fits in one piece, and the rest.
fn split_piece(text: &str, max: usize) -> (&str, &str) {
    if text.len() <= max {
        return (text, "");
    }
    // A character is at most 4 bytes: a boundary is among the last 4 positions.
    let cut = (max.saturating_sub(3)..=max)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    text.split_at(cut)
}

/// See [`Answer::stopped`].
pub struct Stopped<'a> {
    answer: &'a Answer,
    /// The token's wait future, polled once per waker: the token wakes that waker when
    /// cancelled.
    registered: Option<(Pin<Box<WaitForCancellationFuture<'a>>>, Waker)>,
}

impl Future for Stopped<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.answer.stop_requested.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        match &mut this.registered {
            Some((_, waker)) if waker.will_wake(cx.waker()) => Poll::Pending,
            registered => {
                let mut wait = Box::pin(this.answer.stop.cancelled());
                let poll = wait.as_mut().poll(cx);
                *registered = Some((wait, cx.waker().clone()));
                poll
            }
        }
    }
}

pub struct Answer {
    pub message_id: String,
    pub conversation_id: String,
    pub user_id: i64,
    live: Mutex<Live>,
    /// Cancelled by [`Answer::request_stop`] (`POST /api/messages/{id}/stop`, a stop
    /// seen by the flush, the end of a shutdown's grace period).
    stop: CancellationToken,
    /// Set before `stop` is cancelled: what [`Stopped`] looks at after its first poll.
    stop_requested: AtomicBool,
    /// How much of the text (bytes) the periodic flush has stored.
    pub flushed_len: AtomicUsize,
}

impl Answer {
    pub fn new(message_id: String, conversation_id: String, user_id: i64) -> Arc<Self> {
        Arc::new(Self {
            message_id,
            conversation_id,
            user_id,
            live: Mutex::new(Live {
                content: String::new(),
                lens: Vec::new(),
                raws: Vec::new(),
                raw_from: 0,
                phase: Phase::Opening,
                raw_readers: 0,
                keep_raw: true,
                readers: 0,
                waiting: Vec::new(),
            }),
            stop: CancellationToken::new(),
            stop_requested: AtomicBool::new(false),
            flushed_len: AtomicUsize::new(0),
        })
    }

    /// Asks the answer's task to stop (what was produced is stored and billed).
    pub fn request_stop(&self) {
        self.stop_requested.store(true, Ordering::Release);
        self.stop.cancel();
    }

    /// Resolves once a stop is requested. Meant to be polled beside the upstream on every
    /// wake of the answer's task: after its first poll registers the task with the token,
    /// a poll is one atomic load (looking at a `CancellationToken` takes its lock).
    pub fn stopped(&self) -> Stopped<'_> {
        Stopped {
            answer: self,
            registered: None,
        }
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        // A panic while holding this lock leaves plain data behind; keep serving it.
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn set_streaming(&self) {
        let mut live = self.live();
        live.phase = Phase::Streaming;
        live.wake_all();
    }

    /// Appends one upstream event and the text it carries, and wakes the readers.
    pub fn push(&self, raw: Bytes, text: &str) {
        let mut live = self.live();
        // Only a text of 4 GiB or more in one event (which nothing sends) takes more than
        // one piece: the rest goes on as pieces of text (no event of their own).
        let (mut raw, mut rest) = (raw, text);
        loop {
            let (piece, after) = split_piece(rest, MAX_PIECE);
            live.push_piece(std::mem::take(&mut raw), piece);
            rest = after;
            if rest.is_empty() {
                break;
            }
        }
        live.wake_all();
    }

    pub fn end(&self, ending: Ending) {
        let mut live = self.live();
        live.phase = Phase::Ended(ending);
        live.wake_all();
    }

    pub fn content(&self) -> String {
        self.live().content.clone()
    }

    pub fn content_len(&self) -> usize {
        self.live().content.len()
    }

    pub fn phase(&self) -> Phase {
        self.live().phase.clone()
    }

    /// How many readers follow this answer.
    pub fn readers(&self) -> usize {
        self.live().readers
    }

    /// Waits until the upstream answered (or the answer ended); returns the phase.
    pub async fn opened(&self) -> Phase {
        poll_fn(|cx| {
            let mut live = self.live();
            if matches!(live.phase, Phase::Opening) {
                live.wait(cx);
                return Poll::Pending;
            }
            Poll::Ready(live.phase.clone())
        })
        .await
    }

    /// Waits until the answer is over.
    pub async fn ended(&self) -> Ending {
        poll_fn(|cx| {
            let mut live = self.live();
            if let Phase::Ended(ending) = &live.phase {
                return Poll::Ready(ending.clone());
            }
            live.wait(cx);
            Poll::Pending
        })
        .await
    }

    /// A reader that sends the answer from code point `offset` on (`None` = from the
    /// start, relaying the upstream's own events in SSE framing).
    pub fn reader(
        self: &Arc<Self>,
        framing: Framing,
        offset: Option<usize>,
        heartbeat: Duration,
    ) -> Reader {
        let relays_raw = framing == Framing::Sse && offset.is_none();
        {
            let mut live = self.live();
            live.readers += 1;
            if relays_raw {
                live.raw_readers += 1;
                live.start_keeping_raw();
            } else if live.raw_readers == 0 {
                live.forget_raw();
            }
        }
        Reader {
            relays_raw,
            answer: Arc::clone(self),
            next_piece: 0,
            next_byte: 0,
            resume_from: offset,
            framing,
            heartbeat,
            state: ReaderState::Streaming,
            gap_next: false,
            buf: BytesMut::new(),
            timer: None,
            last_sent: Instant::now(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ReaderState {
    Streaming,
    /// Only the mini-program terminal frame is left to send, as its own chunk.
    Terminal,
    Finished,
}

/// What a reader's output buffer starts with: a typical piece's frame (tens of bytes)
/// fits, and it grows when more is pending. Small, as it lives as long as the stream.
const READER_BUFFER: usize = 256;
/// Framing bytes per piece, for reserving room for a batch: `data: …\n\n` around an SSE
/// event, `success: {"content":"…"}\r\n` and escapes around a mini-program piece.
const FRAMING_ROOM: usize = 48;

/// One client's view of an answer: yields the HTTP chunks to send.
pub struct Reader {
    answer: Arc<Answer>,
    /// Relays the upstream's events (SSE from the start), not the text.
    relays_raw: bool,
    next_piece: usize,
    /// Where piece `next_piece` starts in the text.
    next_byte: usize,
    resume_from: Option<usize>,
    framing: Framing,
    heartbeat: Duration,
    state: ReaderState,
    /// Wait [`FRAME_GAP`] before the next chunk: it must reach the client alone (a
    /// mini-program error frame after content, the terminal `0`).
    gap_next: bool,
    /// Frames are written here and each chunk is split off it: once the connection has
    /// written and dropped a chunk, the next one reuses the same allocation, so a reader
    /// that keeps up allocates nothing per chunk.
    buf: BytesMut,
    /// The heartbeat timer, made on the first wait; moved only when it fires early.
    timer: Option<Pin<Box<Sleep>>>,
    /// When the last chunk was handed out: silence is measured from here.
    last_sent: Instant,
}

/// The pause before a mini-program frame that must arrive in its own `onChunkReceived`
/// callback (an error frame after content, the terminal `0` after the done frame). The
/// legacy client cannot parse those merged with the frame before; written back to back,
/// a proxy (nginx reads both in one go) or the phone's network stack would merge them.
pub const FRAME_GAP: Duration = Duration::from_millis(50);

impl Reader {
    /// The next chunk to send: whole frames only; `None` when the response is complete.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.gap_next {
            self.gap_next = false;
            tokio::time::sleep(FRAME_GAP).await;
        }
        match self.state {
            ReaderState::Finished => None,
            ReaderState::Terminal => {
                self.state = ReaderState::Finished;
                Some(Bytes::from_static(frame_mp::TERMINAL))
            }
            ReaderState::Streaming => poll_fn(|cx| self.poll_chunk(cx)).await,
        }
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.buf.capacity() == 0 {
            self.buf.reserve(READER_BUFFER);
        }
        self.collect(cx);
        if !self.buf.is_empty() {
            return Poll::Ready(Some(self.send()));
        }
        let deadline = self.last_sent + self.heartbeat;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if crate::clock::poll_until(timer, cx, deadline).is_pending() {
            return Poll::Pending;
        }
        match self.framing {
            Framing::MiniProgram => frame_mp::write_heartbeat(&mut self.buf),
            Framing::Sse => frame_sse::write_keepalive(&mut self.buf),
        }
        Poll::Ready(Some(self.send()))
    }

    /// Splits what was written off the buffer, as one chunk.
    fn send(&mut self) -> Bytes {
        self.last_sent = Instant::now();
        self.buf.split().freeze()
    }

    /// Frames everything new since the last call into the reader's buffer; with nothing
    /// new, leaves `cx`'s waker for the next change (under the same lock, so no change
    /// can slip in between).
    fn collect(&mut self, cx: &Context<'_>) {
        let out = &mut self.buf;
        let mut guard = self.answer.live();
        let live = &mut *guard;
        // The only raw reader takes each event as it relays it: nobody needs it after.
        let take_raw = self.relays_raw && live.raw_readers == 1;
        if let Some(offset) = self.resume_from {
            // A client may hold more than this replica has seen yet (a mirror of another
            // replica's flushes lags behind): wait until the text reaches its offset.
            let known = live.content.chars().count();
            let ended = matches!(live.phase, Phase::Ended(_));
            if offset > known && !ended {
                live.wait(cx);
                return;
            }
            self.resume_from = None;
            let start = byte_offset(&live.content, offset);
            let rest = &live.content[start..];
            if !rest.is_empty() {
                match self.framing {
                    Framing::MiniProgram => frame_mp::write_content(out, rest),
                    Framing::Sse => frame_sse::write_content(out, rest),
                }
            }
            self.next_piece = live.lens.len();
            self.next_byte = live.content.len();
        }
        // Room for all the new pieces at once (when an upstream sends a batch, a hundred
        // of them) instead of growing the buffer piece by piece: each framed piece is its
        // event or text and a few dozen bytes of framing.
        let new_pieces = self.next_piece..live.lens.len();
        if new_pieces.len() > 1 {
            let bytes: usize = new_pieces
                .clone()
                .map(|i| match live.raw(i) {
                    Some(raw) if self.framing == Framing::Sse => raw.len(),
                    _ => live.lens[i] as usize,
                })
                .sum();
            out.reserve(bytes + FRAMING_ROOM * new_pieces.len());
        }
        for i in new_pieces {
            let start = self.next_byte;
            self.next_byte += live.lens[i] as usize;
            if self.framing == Framing::Sse
                && let Some(raw) = live.raw(i)
            {
                frame_sse::write_event(out, raw);
                continue;
            }
            // Mini-program framing, and pieces that carry no upstream event (mirrored from
            // the database, or from before this reader asked for them).
            let text = &live.content[start..self.next_byte];
            if !text.is_empty() {
                match self.framing {
                    Framing::MiniProgram => frame_mp::write_content(out, text),
                    Framing::Sse => frame_sse::write_content(out, text),
                }
            }
        }
        self.next_piece = live.lens.len();
        if take_raw {
            live.raws.clear();
            live.raw_from = live.lens.len();
        }
        let Phase::Ended(ending) = &live.phase else {
            if out.is_empty() {
                live.wait(cx);
            }
            return;
        };
        // A mini-program error frame travels alone: the legacy client treats a whole
        // callback holding `error` as one error frame.
        let error_waits = matches!(ending, Ending::Failed { .. }) && !out.is_empty();
        if self.framing == Framing::MiniProgram && error_waits {
            self.gap_next = true;
            return;
        }
        match (self.framing, ending) {
            (Framing::MiniProgram, Ending::Done(done)) => frame_mp::write_done(out, done),
            (Framing::Sse, Ending::Done(done)) => frame_sse::write_done(out, done),
            (Framing::MiniProgram, Ending::Failed { error, .. }) => error.write_mp_frame(out),
            (Framing::Sse, Ending::Failed { error, .. }) => error.write_sse_frame(out),
        }
        self.state = match self.framing {
            // The terminal `0` follows alone, after the gap.
            Framing::MiniProgram => {
                self.gap_next = true;
                ReaderState::Terminal
            }
            Framing::Sse => ReaderState::Finished,
        };
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut live = self.answer.live();
        live.readers -= 1;
        if self.relays_raw {
            live.raw_readers -= 1;
            if live.raw_readers == 0 {
                live.forget_raw();
            }
        }
    }
}

/// The byte offset of code point `chars` in `text` (its length when `chars` is past the end).
pub fn byte_offset(text: &str, chars: usize) -> usize {
    text.char_indices()
        .nth(chars)
        .map_or(text.len(), |(i, _)| i)
}

/// The answers streaming in this process, by message id. Locked only to add, find or
/// remove an answer — never per chunk.
#[derive(Default)]
pub struct AnswerRegistry {
    answers: Mutex<HashMap<String, Arc<Answer>>>,
}

impl AnswerRegistry {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Answer>>> {
        self.answers.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, answer: Arc<Answer>) {
        self.map().insert(answer.message_id.clone(), answer);
    }

    pub fn get(&self, message_id: &str) -> Option<Arc<Answer>> {
        self.map().get(message_id).cloned()
    }

    pub fn remove(&self, message_id: &str) {
        self.map().remove(message_id);
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every answer open now.
    pub fn all(&self) -> Vec<Arc<Answer>> {
        self.map().values().cloned().collect()
    }

    /// Stops every answer (the end of a shutdown grace period).
    pub fn stop_all(&self) {
        for answer in self.map().values() {
            answer.request_stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_piece_too_long_is_cut_at_a_character_boundary_and_nothing_is_lost() {
        assert_eq!(split_piece("abc", 3), ("abc", ""));
        assert_eq!(split_piece("abcd", 3), ("abc", "d"));
        // '好' is 3 bytes: a cut inside it moves back to its start.
        assert_eq!(split_piece("a好b", 2), ("a", "好b"));
        assert_eq!(split_piece("a好b", 4), ("a好", "b"));
        let text = "x好好😀y";
        for max in 4..text.len() + 1 {
            let mut rest = text;
            let mut joined = String::new();
            while !rest.is_empty() {
                let (piece, after) = split_piece(rest, max);
                assert!(!piece.is_empty() && piece.len() <= max, "{max}: {piece:?}");
                joined.push_str(piece);
                rest = after;
            }
            assert_eq!(joined, text);
        }
    }

    #[tokio::test]
    async fn stopped_sees_a_stop_requested_before_or_while_it_waits() {
        let early = Answer::new("m".into(), "c".into(), 1);
        early.request_stop();
        tokio::time::timeout(Duration::from_secs(5), early.stopped())
            .await
            .expect("a stop requested before the first poll");

        let answer = Answer::new("m".into(), "c".into(), 1);
        let waiting = Arc::clone(&answer);
        let waiter = tokio::spawn(async move { waiting.stopped().await });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished(), "no stop was requested yet");
        answer.request_stop();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the stop")
            .unwrap();
    }

    #[test]
    fn byte_offsets_count_code_points() {
        assert_eq!(byte_offset("a你😀b", 0), 0);
        assert_eq!(byte_offset("a你😀b", 1), 1);
        assert_eq!(byte_offset("a你😀b", 2), 4);
        assert_eq!(byte_offset("a你😀b", 3), 8);
        assert_eq!(byte_offset("a你😀b", 4), 9);
        assert_eq!(byte_offset("a你😀b", 99), 9);
    }

    fn done() -> Arc<Done> {
        Arc::new(Done {
            message_id: "m".into(),
            conversation_id: "c".into(),
            usage: Default::default(),
            cost_micros: 0,
            balance_micros: 0,
        })
    }

    #[tokio::test]
    async fn late_readers_resume_from_their_offset_and_all_see_the_end() {
        let answer = Answer::new("m".into(), "c".into(), 1);
        let mut first = answer.reader(Framing::Sse, None, Duration::from_secs(60));
        answer.set_streaming();
        answer.push(Bytes::from_static(b"{\"a\":1}"), "你好");
        answer.push(Bytes::from_static(b"{\"a\":2}"), "😀!");
        let mut late = answer.reader(Framing::MiniProgram, Some(1), Duration::from_secs(60));
        let chunk = late.next_chunk().await.unwrap();
        assert_eq!(
            &chunk[..],
            "success: {\"content\":\"好😀!\"}\r\n".as_bytes()
        );
        let chunk = first.next_chunk().await.unwrap();
        assert_eq!(&chunk[..], b"data: {\"a\":1}\n\ndata: {\"a\":2}\n\n");

        answer.push(Bytes::from_static(b"{\"a\":3}"), "end");
        answer.end(Ending::Done(done()));
        let chunk = late.next_chunk().await.unwrap();
        let text = std::str::from_utf8(&chunk).unwrap();
        assert!(text.starts_with(
            "success: {\"content\":\"end\"}\r\nsuccess: {\"content\":\"\",\"done\":true"
        ));
        assert_eq!(
            late.next_chunk().await.unwrap(),
            Bytes::from_static(b"0\r\n\r\n")
        );
        assert!(late.next_chunk().await.is_none());
        let chunk = first.next_chunk().await.unwrap();
        let text = std::str::from_utf8(&chunk).unwrap();
        assert!(
            text.starts_with("data: {\"a\":3}\n\nevent: done\ndata: {"),
            "{text}"
        );
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert!(first.next_chunk().await.is_none());
    }

    /// Upstream events are kept only while a reader may relay them: an SSE reader from
    /// the start gets them as received, frames as text what was let go, and with a second
    /// raw reader both get every event until one leaves.
    #[tokio::test]
    async fn raw_events_are_kept_only_while_a_reader_can_relay_them() {
        let answer = Answer::new("m".into(), "c".into(), 1);
        let heartbeat = Duration::from_secs(60);
        answer.set_streaming();
        answer.push(Bytes::from_static(b"{\"a\":1}"), "a");
        let mut mp = answer.reader(Framing::MiniProgram, None, heartbeat);
        assert!(
            answer.live().raws.is_empty(),
            "no raw reader: events let go"
        );
        answer.push(Bytes::from_static(b"{\"a\":2}"), "b");
        assert!(answer.live().raws.is_empty(), "nor kept from then on");

        let mut sse = answer.reader(Framing::Sse, None, heartbeat);
        answer.push(Bytes::from_static(b"{\"a\":3}"), "c");
        let chunk = sse.next_chunk().await.unwrap();
        let mut expected = BytesMut::new();
        frame_sse::write_content(&mut expected, "a");
        frame_sse::write_content(&mut expected, "b");
        expected.extend_from_slice(b"data: {\"a\":3}\n\n");
        assert_eq!(
            chunk, expected,
            "pieces from before it asked are framed from their text"
        );
        assert!(
            answer.live().raws.is_empty(),
            "the only raw reader lets go of what it relayed"
        );

        let mut second = answer.reader(Framing::Sse, None, heartbeat);
        answer.push(Bytes::from_static(b"{\"a\":4}"), "d");
        let chunk = sse.next_chunk().await.unwrap();
        assert_eq!(&chunk[..], b"data: {\"a\":4}\n\n");
        let chunk = second.next_chunk().await.unwrap();
        assert!(
            chunk.ends_with(b"data: {\"a\":4}\n\n"),
            "a second raw reader still gets the event the first relayed"
        );
        let chunk = mp.next_chunk().await.unwrap();
        assert_eq!(
            &chunk[..],
            "success: {\"content\":\"a\"}\r\nsuccess: {\"content\":\"b\"}\r\n\
             success: {\"content\":\"c\"}\r\nsuccess: {\"content\":\"d\"}\r\n"
                .as_bytes()
        );
    }

    #[tokio::test]
    async fn a_reader_ahead_of_the_known_text_waits_for_it() {
        let answer = Answer::new("m".into(), "c".into(), 1);
        answer.push(Bytes::new(), "abc");
        let mut r = answer.reader(Framing::MiniProgram, Some(5), Duration::from_secs(60));
        let pending = tokio::spawn(async move { r.next_chunk().await });
        tokio::task::yield_now().await;
        answer.push(Bytes::new(), "de");
        answer.push(Bytes::new(), "fg");
        let chunk = pending.await.unwrap().unwrap();
        assert_eq!(&chunk[..], "success: {\"content\":\"fg\"}\r\n".as_bytes());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_reader_gets_heartbeats() {
        let answer = Answer::new("m".into(), "c".into(), 1);
        let mut r = answer.reader(Framing::MiniProgram, None, Duration::from_secs(5));
        assert_eq!(
            &r.next_chunk().await.unwrap()[..],
            b"success: {\"content\":\"\"}\r\n"
        );
        let mut s = answer.reader(Framing::Sse, None, Duration::from_secs(5));
        assert_eq!(&s.next_chunk().await.unwrap()[..], b": keep-alive\n\n");
    }
}
