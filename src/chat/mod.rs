//! `POST /api/chat` and everything an answer needs: the conversation, the prompt
//! trimmed to the model's budget, the server-owned answer task, its readers, and the
//! two wire framings (mini-program frames and SSE).

pub mod answer;
pub mod flush;
pub mod frame_mp;
pub mod frame_sse;
pub mod handlers;
pub mod history;
pub mod store;
pub mod task;

use futures_util::StreamExt;
use http::header::{CACHE_CONTROL, HeaderValue};
use http::{HeaderMap, Response, StatusCode, Uri};

use crate::error::AppError;
use crate::response::{self, Body};

/// How a streamed answer is framed for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `success: {json}\r\n` frames and a terminal `0`, always HTTP 200 (mini-programs).
    MiniProgram,
    /// Server-Sent Events relaying the upstream's OpenAI chunks (H5, the default).
    Sse,
}

impl Framing {
    /// `?client=mp` or `X-Client: mp` selects mini-program framing.
    pub fn of(uri: &Uri, headers: &HeaderMap) -> Self {
        let by_query = uri
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "client=mp"));
        let by_header = headers
            .get("x-client")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"mp"));
        if by_query || by_header {
            Framing::MiniProgram
        } else {
            Framing::Sse
        }
    }

    /// A streaming response: the framing's headers around `body`.
    pub fn response(self, body: Body) -> Response<Body> {
        let content_type = match self {
            Framing::MiniProgram => "text/plain; charset=utf-8",
            Framing::Sse => "text/event-stream; charset=utf-8",
        };
        let mut resp = response::with_content_type(StatusCode::OK, content_type, body);
        let h = resp.headers_mut();
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        resp
    }

    /// An error before the stream: an in-band error frame then the terminal, with
    /// HTTP 200 (mini-program), or a real HTTP status with `{code,msg}` (SSE).
    pub fn error_response(self, err: &AppError) -> Response<Body> {
        match self {
            Framing::MiniProgram => {
                err.log();
                let mut frame = bytes::BytesMut::new();
                err.write_mp_frame(&mut frame);
                // The terminal after a pause, so it reaches the client alone.
                let frame = frame.freeze();
                let chunks = futures_util::stream::once(async move { frame }).chain(
                    futures_util::stream::once(async {
                        tokio::time::sleep(answer::FRAME_GAP).await;
                        bytes::Bytes::from_static(frame_mp::TERMINAL)
                    }),
                );
                self.response(response::stream(chunks))
            }
            Framing::Sse => response::error(err),
        }
    }
}
