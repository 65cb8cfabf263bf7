//! Mock OpenAI-compatible upstream, run in-process by integration tests and as the
//! `mock_upstream` example by benchmarks.
//!
//! Serves `POST /v1/chat/completions` (SSE when `stream: true`, one JSON otherwise; also
//! without the `/v1` prefix) and `GET /v1/models` on a local port, records every request, and
//! misbehaves on demand: error statuses, hangs, stalls, dropped connections, in-band errors, a
//! missing `[DONE]` ([`Fault`], config-wide or per API key), SSE bytes cut at random offsets
//! ([`MockConfig::split_seed`]), CR / LF / CRLF line endings and `: ping` comments.
//!
//! Answers are deterministic: [`MockConfig::answer_text`] (the configured `answer`, else
//! [`answer_for`] of the last user message) split by [`split_answer`] into `chunks` pieces.
//! Usage: `prompt_tokens` = [`prompt_tokens`] of the messages, `completion_tokens` = pieces.
//! The SSE bytes of a request are rendered once, without building JSON values per chunk.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const CREATED: u64 = 1_700_000_000;
const JSON: &str = "application/json";
const ROLE: &[u8] =
    br#""choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#;
const STOP: &[u8] = br#""choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
const IN_BAND_ERROR: &str =
    r#"{"error":{"message":"mock upstream failure","type":"server_error"}}"#;

/// Line terminator of the SSE lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LineEnding {
    #[default]
    Lf,
    CrLf,
    Cr,
}

impl LineEnding {
    fn bytes(self) -> &'static [u8] {
        match self {
            LineEnding::Lf => b"\n",
            LineEnding::CrLf => b"\r\n",
            LineEnding::Cr => b"\r",
        }
    }
}

/// A way to misbehave. `n` counts content pieces (the role chunk always comes first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    /// Answer this HTTP status with an OpenAI-shaped error JSON (every route).
    Status(u16),
    /// Read the request, never answer (until shutdown).
    HangBeforeHeaders,
    /// Send 200 and the headers, never a byte of body.
    HangAfterHeaders,
    /// Send `n` pieces, then keep the connection open silently.
    StallAfter(usize),
    /// Send `n` pieces, then close the connection without ending the chunked body.
    DropAfter(usize),
    /// Send `n` pieces, then `data: {"error":{…}}`, then end the body (no `[DONE]`).
    InBandErrorAfter(usize),
    /// A complete stream without the final `data: [DONE]`.
    NoDone,
}

/// What the mock answers; change it at run time with [`MockUpstream::set_config`].
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Number of content pieces (capped at the answer's char count).
    pub chunks: usize,
    /// Delay before the first content piece (the role chunk is sent right away).
    pub first_token_delay: Duration,
    /// Delay between content pieces; zero writes everything in as few frames as possible.
    pub chunk_delay: Duration,
    /// Fixed answer instead of [`answer_for`].
    pub answer: Option<String>,
    /// Cut the SSE bytes at seeded random offsets, one body frame per cut.
    pub split_seed: Option<u64>,
    pub line_ending: LineEnding,
    /// Put a `: ping` comment line before every event.
    pub comments: bool,
    pub fault: Fault,
    /// Faults per bearer token, overriding `fault`.
    pub key_faults: HashMap<String, Fault>,
    /// Ids listed by `GET /v1/models`.
    pub models: Vec<String>,
    /// Answer `images/generations` with a URL on this mock instead of `b64_json`,
    /// whatever the request asked.
    pub image_as_url: bool,
    /// Keep every request for [`MockUpstream::requests`] (off for long benchmark runs,
    /// where the list would only grow; `request_count` still counts).
    pub record: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            chunks: 16,
            first_token_delay: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            answer: None,
            split_seed: None,
            line_ending: LineEnding::Lf,
            comments: false,
            fault: Fault::None,
            key_faults: HashMap::new(),
            models: vec!["gpt-4o-mini".to_owned(), "mock-model".to_owned()],
            image_as_url: false,
            record: true,
        }
    }
}

impl MockConfig {
    /// The whole answer to a request whose last user message is `last_user_message`.
    pub fn answer_text(&self, last_user_message: &str) -> String {
        self.answer
            .clone()
            .unwrap_or_else(|| answer_for(last_user_message))
    }

    /// The fault for a request with this bearer token.
    pub fn fault_for(&self, bearer: Option<&str>) -> &Fault {
        bearer
            .and_then(|key| self.key_faults.get(key))
            .unwrap_or(&self.fault)
    }
}

/// The default answer: echoes the message, with CJK, a 4-byte emoji, `error`, `success`, a `0`,
/// quotes and a backslash (to exercise escaping), and filler so there is plenty to split.
pub fn answer_for(last_user_message: &str) -> String {
    format!(
        "echo: {last_user_message} | 你好，世界 🌍 error success 0 \"q\" \\ end. \
         The mock upstream keeps talking so that a stream has enough characters to be cut into \
         many pieces: one, two, three, four, five, six, seven, eight, nine, ten; 再见！"
    )
}

/// Splits `answer` on char boundaries into `min(chunks, chars)` pieces of near-equal length.
pub fn split_answer(answer: &str, chunks: usize) -> Vec<&str> {
    let bounds: Vec<usize> = answer
        .char_indices()
        .map(|(i, _)| i)
        .chain([answer.len()])
        .collect();
    let chars = bounds.len() - 1;
    let n = chunks.max(1).min(chars);
    (0..n)
        .map(|i| &answer[bounds[i * chars / n]..bounds[(i + 1) * chars / n]])
        .collect()
}

/// Mock prompt tokens: chars of all message contents / 4, rounded up, + 1.
pub fn prompt_tokens(messages: &Value) -> u64 {
    let chars: usize = messages.as_array().map_or(0, |all| {
        all.iter()
            .map(|m| content_text(&m["content"]).chars().count())
            .sum()
    });
    chars.div_ceil(4) as u64 + 1
}

fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        _ => String::new(),
    }
}

fn last_user_message(messages: &Value) -> String {
    messages
        .as_array()
        .and_then(|all| all.iter().rev().find(|m| m["role"] == "user"))
        .map(|m| content_text(&m["content"]))
        .unwrap_or_default()
}

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    pub path: String,
    pub authorization: Option<String>,
    /// The parsed JSON body (`Null` when absent or not JSON).
    pub body: Value,
}

impl RecordedRequest {
    /// The token of `Authorization: Bearer …`.
    pub fn bearer(&self) -> Option<&str> {
        self.authorization
            .as_deref()?
            .strip_prefix("Bearer ")
            .map(str::trim)
    }
}

struct Shared {
    config: Mutex<Arc<MockConfig>>,
    requests: Mutex<Vec<RecordedRequest>>,
    count: watch::Sender<usize>,
    stop: watch::Sender<bool>,
    /// Connections accepted so far.
    connections: std::sync::atomic::AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// A running mock; shuts down (closing every connection) on [`shutdown`](Self::shutdown) or drop.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl MockUpstream {
    /// Starts on `127.0.0.1:0`.
    pub async fn start(config: MockConfig) -> io::Result<MockUpstream> {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await?, config).await
    }

    pub async fn start_on(listener: TcpListener, config: MockConfig) -> io::Result<MockUpstream> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config: Mutex::new(Arc::new(config)),
            requests: Mutex::default(),
            count: watch::Sender::new(0),
            stop: watch::Sender::new(false),
            connections: Default::default(),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(MockUpstream {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn config(&self) -> MockConfig {
        MockConfig::clone(&lock(&self.shared.config))
    }

    /// Applies to requests that arrive later.
    pub fn set_config(&self, config: MockConfig) {
        *lock(&self.shared.config) = Arc::new(config);
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Connections accepted so far.
    pub fn connection_count(&self) -> usize {
        self.shared
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn request_count(&self) -> usize {
        *self.shared.count.borrow()
    }

    pub fn last_request(&self) -> Option<RecordedRequest> {
        lock(&self.shared.requests).last().cloned()
    }

    /// Waits until at least `n` requests were recorded; false on timeout.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.shared.count.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|count| *count >= n)).await;
        waited.is_ok_and(|r| r.is_ok())
    }

    /// Stops accepting (the port is closed when this returns) and closes every connection.
    pub async fn shutdown(mut self) {
        self.shared.stop.send_replace(true);
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.shared.stop.send_replace(true);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let stop = stopped(shared.stop.subscribe());
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!("mock upstream: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        shared
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(serve_connection(stream, shared.clone()));
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let stop = stopped(shared.stop.subscribe());
    let service = service_fn(move |req| handle(shared.clone(), req));
    // HTTP/1.1, or HTTP/2 without TLS (h2c, by prior knowledge) like providers that
    // speak HTTP/2: told apart by the connection's first bytes.
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(None);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        res = conn => if let Err(e) = res {
            tracing::debug!("mock upstream: connection ended: {e}");
        },
        () = stop => {}
    }
}

type MockBody = BoxBody<Bytes, io::Error>;

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let raw = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let request = RecordedRequest {
        method: parts.method.to_string(),
        version: format!("{:?}", parts.version),
        path: parts.uri.path().to_owned(),
        authorization: parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
    };
    let config = Arc::clone(&lock(&shared.config));
    let fault = config.fault_for(request.bearer()).clone();
    if config.record {
        lock(&shared.requests).push(request.clone());
    }
    shared.count.send_modify(|count| *count += 1);

    let response = match fault {
        Fault::Status(code) => error_response(code, &format!("mock upstream status {code}")),
        Fault::HangBeforeHeaders => std::future::pending().await,
        _ => match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/v1/models" | "/models") => models(&config),
            ("POST", "/v1/images/generations" | "/images/generations") => {
                let host = parts
                    .headers
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("127.0.0.1");
                images(&request.body, host, config.image_as_url)
            }
            ("GET", "/files/mock.png") => respond(
                StatusCode::OK,
                "image/png",
                full(Bytes::from_static(MOCK_PNG)),
            ),
            ("POST", "/v1/chat/completions" | "/chat/completions") if request.body.is_object() => {
                chat(&request.body, &config, &fault).await
            }
            ("POST", "/v1/chat/completions" | "/chat/completions") => {
                error_response(400, "request body is not a JSON object")
            }
            (method, path) => error_response(404, &format!("unknown route {method} {path}")),
        },
    };
    Ok(response)
}

fn respond(status: StatusCode, kind: &'static str, body: MockBody) -> Response<MockBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn full(body: impl Into<Bytes>) -> MockBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

fn error_response(code: u16, message: &str) -> Response<MockBody> {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (kind, err_code) = match status.as_u16() {
        401 => ("invalid_request_error", "invalid_api_key"),
        429 => ("requests", "rate_limit_exceeded"),
        400..=499 => ("invalid_request_error", "invalid_request"),
        _ => ("server_error", "server_error"),
    };
    let body = serde_json::json!({
        "error": {"message": message, "type": kind, "param": null, "code": err_code}
    });
    respond(status, JSON, full(body.to_string()))
}

/// The image every `images/generations` request gets: a 1×1 PNG.
pub const MOCK_PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4,
    0x89, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x44, 0x41, 0x54, 0x78, 0xDA, 0x63, 0xF8, 0xFF, 0xFF, 0x3F,
    0x00, 0x05, 0xFE, 0x02, 0xFE, 0xA7, 0xD6, 0xA9, 0xA3, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4E,
    0x44, 0xAE, 0x42, 0x60, 0x82,
];

/// `images/generations`: the PNG inline (`b64_json`, the default) or as a URL on this
/// mock (`response_format: "url"`).
fn images(body: &Value, host: &str, as_url: bool) -> Response<MockBody> {
    use base64::Engine;
    let item = if as_url || body["response_format"] == "url" {
        serde_json::json!({ "url": format!("http://{host}/files/mock.png") })
    } else {
        serde_json::json!({ "b64_json": base64::engine::general_purpose::STANDARD.encode(MOCK_PNG) })
    };
    let out = serde_json::json!({ "created": 1_700_000_000, "data": [item] });
    respond(StatusCode::OK, "application/json", full(out.to_string()))
}

fn models(config: &MockConfig) -> Response<MockBody> {
    let data: Vec<Value> = config
        .models
        .iter()
        .map(|id| serde_json::json!({"id": id, "object": "model", "created": CREATED, "owned_by": "mock"}))
        .collect();
    let body = serde_json::json!({"object": "list", "data": data});
    respond(StatusCode::OK, JSON, full(body.to_string()))
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escaped.is_empty() {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            out.extend_from_slice(escaped);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

async fn chat(body: &Value, config: &MockConfig, fault: &Fault) -> Response<MockBody> {
    let messages = &body["messages"];
    let model = body["model"].as_str().unwrap_or("mock-model");
    let answer = config.answer_text(&last_user_message(messages));
    let pieces = split_answer(&answer, config.chunks);
    let (prompt, completion) = (prompt_tokens(messages), pieces.len() as u64);
    let usage = format!(
        r#""usage":{{"prompt_tokens":{prompt},"completion_tokens":{completion},"total_tokens":{}}}"#,
        prompt + completion
    );
    let head = |object: &str| {
        let mut head =
            format!(r#"{{"id":"chatcmpl-mock","object":"{object}","created":{CREATED},"model":"#)
                .into_bytes();
        push_json_str(&mut head, model);
        head.push(b',');
        head
    };

    if body["stream"] != true {
        let mut json = head("chat.completion");
        json.extend_from_slice(
            br#""choices":[{"index":0,"message":{"role":"assistant","content":"#,
        );
        push_json_str(&mut json, &answer);
        json.extend_from_slice(br#"},"finish_reason":"stop"}],"#);
        json.extend_from_slice(usage.as_bytes());
        json.push(b'}');
        let body = match fault {
            Fault::HangAfterHeaders | Fault::StallAfter(_) => streamed(Vec::new(), Ending::Stall),
            Fault::DropAfter(_) => {
                let half = json.len() / 2;
                streamed(
                    vec![(Duration::ZERO, Bytes::from(json).slice(..half))],
                    Ending::Abort,
                )
            }
            Fault::InBandErrorAfter(_) => full(IN_BAND_ERROR),
            _ => {
                tokio::time::sleep(config.first_token_delay).await;
                full(json)
            }
        };
        return respond(StatusCode::OK, JSON, body);
    }

    let head = head("chat.completion.chunk");
    let mut sse = Sse::new(config, pieces.len());
    let ending = if *fault == Fault::HangAfterHeaders {
        Ending::Stall
    } else {
        sse.event(Duration::ZERO, &[&head, ROLE]);
        let limit = match *fault {
            Fault::StallAfter(n) | Fault::DropAfter(n) | Fault::InBandErrorAfter(n) => n,
            _ => pieces.len(),
        };
        for (i, piece) in pieces.iter().take(limit).enumerate() {
            let delay = if i == 0 {
                config.first_token_delay
            } else {
                config.chunk_delay
            };
            let buf = sse.begin(delay);
            buf.extend_from_slice(&head);
            buf.extend_from_slice(br#""choices":[{"index":0,"delta":{"content":"#);
            push_json_str(buf, piece);
            buf.extend_from_slice(br#"},"finish_reason":null}]}"#);
            sse.end();
        }
        match *fault {
            Fault::StallAfter(_) => Ending::Stall,
            Fault::DropAfter(_) => Ending::Abort,
            Fault::InBandErrorAfter(_) => {
                sse.event(Duration::ZERO, &[IN_BAND_ERROR.as_bytes()]);
                Ending::Close
            }
            _ => {
                sse.event(Duration::ZERO, &[&head, STOP]);
                if body["stream_options"]["include_usage"] == true {
                    sse.event(
                        Duration::ZERO,
                        &[&head, br#""choices":[],"#, usage.as_bytes(), b"}"],
                    );
                }
                if *fault != Fault::NoDone {
                    sse.event(Duration::ZERO, &[b"[DONE]"]);
                }
                Ending::Close
            }
        }
    };
    let body = streamed(sse.frames(config.split_seed), ending);
    respond(StatusCode::OK, "text/event-stream", body)
}

/// The rendered SSE bytes, with the offsets where a delay must come before the next byte.
struct Sse {
    buf: Vec<u8>,
    delays: BTreeMap<usize, Duration>,
    nl: &'static [u8],
    comments: bool,
}

impl Sse {
    fn new(config: &MockConfig, pieces: usize) -> Sse {
        Sse {
            buf: Vec::with_capacity(256 * (pieces + 4)),
            delays: BTreeMap::new(),
            nl: config.line_ending.bytes(),
            comments: config.comments,
        }
    }

    fn begin(&mut self, delay: Duration) -> &mut Vec<u8> {
        if !delay.is_zero() {
            self.delays.insert(self.buf.len(), delay);
        }
        if self.comments {
            self.buf.extend_from_slice(b": ping");
            self.buf.extend_from_slice(self.nl);
        }
        self.buf.extend_from_slice(b"data: ");
        &mut self.buf
    }

    fn end(&mut self) {
        self.buf.extend_from_slice(self.nl);
        self.buf.extend_from_slice(self.nl);
    }

    fn event(&mut self, delay: Duration, parts: &[&[u8]]) {
        let buf = self.begin(delay);
        parts.iter().for_each(|part| buf.extend_from_slice(part));
        self.end();
    }

    /// Body frames: cut before every delay and, with a seed, at random offsets too.
    fn frames(mut self, split_seed: Option<u64>) -> Vec<(Duration, Bytes)> {
        self.delays.entry(0).or_insert(Duration::ZERO);
        if let Some(seed) = split_seed {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut at = 0;
            loop {
                at += rng.random_range(1..=12);
                if at >= self.buf.len() {
                    break;
                }
                self.delays.entry(at).or_insert(Duration::ZERO);
            }
        }
        let all = Bytes::from(self.buf);
        let cuts: Vec<(usize, Duration)> = self.delays.into_iter().collect();
        let ends = cuts.iter().skip(1).map(|c| c.0).chain([all.len()]);
        cuts.iter()
            .zip(ends)
            .filter(|((start, _), end)| start < end)
            .map(|(&(start, delay), end)| (delay, all.slice(start..end)))
            .collect()
    }
}

enum Ending {
    Close,
    Stall,
    Abort,
}

/// A body that hands out its pre-rendered frames, honouring delays and the ending.
///
/// It is polled by the connection task itself: no task or channel per response, and one
/// timer per stream (re-armed for each delayed frame), so thousands of slow streams cost
/// nothing between their frames.
fn streamed(frames: Vec<(Duration, Bytes)>, ending: Ending) -> MockBody {
    BoxBody::new(FramesBody {
        frames: frames.into(),
        sent: 0,
        timer: None,
        armed: false,
        yielded: false,
        ending,
    })
}

struct FramesBody {
    frames: std::collections::VecDeque<(Duration, Bytes)>,
    sent: usize,
    /// The stream's timer, made at its first delay and reset for every later one.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// `timer` is counting down the current delay.
    armed: bool,
    /// A zero-delay frame after the first waits one poll, so hyper flushes the previous
    /// one and each frame reaches the peer on its own.
    yielded: bool,
    ending: Ending,
}

impl FramesBody {
    /// Waits `delay` (from the first call) on the stream's one timer; `Ready` once it has
    /// passed.
    fn wait(&mut self, delay: Duration, cx: &mut Context<'_>) -> Poll<()> {
        use std::future::Future;
        if !self.armed {
            let deadline = tokio::time::Instant::now() + delay;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        let Some(timer) = &mut self.timer else {
            return Poll::Ready(());
        };
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.armed = false;
        Poll::Ready(())
    }
}

impl Body for FramesBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = &mut *self;
        if let Some(&(delay, _)) = this.frames.front() {
            if !delay.is_zero() {
                if this.wait(delay, cx).is_pending() {
                    return Poll::Pending;
                }
            } else if this.sent > 0 && !this.yielded {
                this.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let Some((_, bytes)) = this.frames.pop_front() else {
                return Poll::Ready(None);
            };
            this.sent += 1;
            this.yielded = false;
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        match this.ending {
            Ending::Close => Poll::Ready(None),
            // Silent until the connection is closed (the body is dropped with it).
            Ending::Stall => Poll::Pending,
            Ending::Abort => {
                // Give hyper time to flush what was sent before the error kills the connection.
                if this.wait(Duration::from_millis(20), cx).is_pending() {
                    return Poll::Pending;
                }
                this.ending = Ending::Close;
                let err = io::Error::new(io::ErrorKind::ConnectionAborted, "mock upstream drop");
                Poll::Ready(Some(Err(err)))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    const WAIT: Duration = Duration::from_secs(5);
    const SHORT: Duration = Duration::from_millis(300);
    const CHAT: &str = "/v1/chat/completions";

    /// Sends one request (GET when `body` is empty) with `connection: close`.
    async fn open(addr: SocketAddr, path: &str, key: &str, body: &str) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let method = if body.is_empty() { "GET" } else { "POST" };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: mock\r\nauthorization: Bearer {key}\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        stream
    }

    /// Reads until EOF (or a reset) or until `wait` passes; true when it timed out.
    async fn read_for(stream: &mut TcpStream, wait: Duration) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + wait;
        let (mut all, mut buf) = (Vec::new(), [0u8; 8192]);
        loop {
            match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
                Err(_) => return (all, true),
                Ok(Ok(0) | Err(_)) => return (all, false),
                Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// A response: status, lowercased head, body frames (chunks), whether `0\r\n\r\n` came.
    struct Resp(u16, String, Vec<Vec<u8>>, bool);

    impl Resp {
        fn parse(raw: &[u8]) -> Resp {
            let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
            let (status, mut rest) = (head[9..12].parse().unwrap(), &raw[split..]);
            if !head.contains("transfer-encoding: chunked") {
                return Resp(status, head, vec![rest.to_vec()], true);
            }
            let mut frames = Vec::new();
            while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
                let size = std::str::from_utf8(&rest[..eol]).unwrap();
                let size = usize::from_str_radix(size, 16).unwrap();
                rest = &rest[eol + 2..];
                if size == 0 || rest.len() < size + 2 {
                    return Resp(status, head, frames, size == 0 && rest == b"\r\n");
                }
                frames.push(rest[..size].to_vec());
                rest = &rest[size + 2..];
            }
            Resp(status, head, frames, false)
        }

        fn json(&self) -> Value {
            serde_json::from_slice(&self.2.concat()).unwrap()
        }

        /// `data:` payloads, whatever the line endings.
        fn events(&self) -> Vec<String> {
            let text = String::from_utf8(self.2.concat()).unwrap();
            let text = text.replace("\r\n", "\n").replace('\r', "\n");
            let data = text.lines().filter_map(|l| l.strip_prefix("data: "));
            data.map(str::to_owned).collect()
        }

        fn content(&self) -> String {
            let events = self.events().into_iter().filter(|e| e != "[DONE]");
            let chunks = events.map(|e| serde_json::from_str::<Value>(&e).unwrap());
            let delta = |c: Value| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            };
            chunks.filter_map(delta).collect()
        }
    }

    async fn call(addr: SocketAddr, path: &str, key: &str, body: &str) -> Resp {
        let (raw, timed_out) = read_for(&mut open(addr, path, key, body).await, WAIT).await;
        assert!(!timed_out, "response did not end");
        Resp::parse(&raw)
    }

    fn chat_body(msg: &str, stream: bool, usage: bool) -> String {
        let system = json!({"role": "system", "content": "be nice"});
        let messages = [system, json!({"role": "user", "content": msg})];
        let mut body = json!({"model": "m1", "messages": messages, "max_tokens": 9});
        body["stream"] = stream.into();
        body["stream_options"] = json!({ "include_usage": usage });
        body.to_string()
    }

    /// The first `n` of the 16 pieces of `answer_for("x")`.
    fn first_pieces(n: usize) -> String {
        split_answer(&answer_for("x"), 16)[..n].concat()
    }

    /// A streamed chat with usage on, key `k`, message `x`.
    async fn ask(addr: SocketAddr) -> Resp {
        call(addr, CHAT, "k", &chat_body("x", true, true)).await
    }

    async fn mock(config: MockConfig) -> MockUpstream {
        MockUpstream::start(config).await.unwrap()
    }

    fn faulty(fault: Fault) -> MockConfig {
        MockConfig {
            fault,
            ..MockConfig::default()
        }
    }

    #[tokio::test]
    async fn stream_reassembles_answer_with_usage() {
        let mock = mock(MockConfig::default()).await;
        let resp = call(mock.addr(), CHAT, "k1", &chat_body("hi 你好", true, true)).await;
        assert_eq!(resp.0, 200);
        assert!(resp.1.contains("content-type: text/event-stream"));
        assert!(resp.3 && resp.2.len() == 1, "complete, in one frame");
        assert_eq!(resp.content(), answer_for("hi 你好"));
        let events = resp.events();
        assert_eq!(events.len(), 1 + 16 + 3);
        let chunk = |i: usize| serde_json::from_str::<Value>(&events[i]).unwrap();
        let (role, stop) = (chunk(0), chunk(17)["choices"][0].clone());
        assert!(role["object"] == "chat.completion.chunk" && role["model"] == "m1");
        assert_eq!(
            role["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(
            stop,
            json!({"index": 0, "delta": {}, "finish_reason": "stop"})
        );
        assert_eq!(chunk(18)["choices"], json!([]));
        // "be nice" (7) + "hi 你好" (5) = 12 chars -> 3 + 1.
        let usage = json!({"prompt_tokens": 4, "completion_tokens": 16, "total_tokens": 20});
        assert!(chunk(18)["usage"] == usage && events[19] == "[DONE]");
        let recorded = mock.last_request().unwrap();
        assert!(recorded.path == CHAT && recorded.bearer() == Some("k1"));
        assert_eq!(recorded.body["max_tokens"], 9);
    }

    #[tokio::test]
    async fn stream_without_usage_and_fixed_answer() {
        let answer = "a\"b\\c\n\u{1}😀".to_owned();
        let mut config = MockConfig::default();
        (config.answer, config.chunks) = (Some(answer.clone()), 100);
        let mock = mock(config).await;
        let resp = call(mock.addr(), CHAT, "k", &chat_body("x", true, false)).await;
        assert_eq!(resp.content(), answer);
        let events = resp.events();
        assert_eq!(events.len(), 1 + 8 + 2, "one piece per char, no usage");
        assert!(events.iter().all(|e| !e.contains("\"usage\"")));
    }

    #[tokio::test]
    async fn non_stream_models_and_routes() {
        let mock = mock(MockConfig::default()).await;
        let body = chat_body("q", false, false);
        let resp = call(mock.addr(), "/chat/completions", "k", &body).await;
        assert!(resp.0 == 200 && resp.1.contains("content-type: application/json"));
        let body = resp.json();
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["choices"][0]["message"]["content"], answer_for("q"));
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        // "be nice" + "q" = 8 chars -> 2 + 1.
        let usage = json!({"prompt_tokens": 3, "completion_tokens": 16, "total_tokens": 19});
        assert_eq!(body["usage"], usage);
        let models = call(mock.addr(), "/v1/models", "k", "").await.json();
        assert_eq!(models["data"][0]["id"], "gpt-4o-mini");
        assert_eq!(call(mock.addr(), "/v1/nope", "k", "").await.0, 404);
        assert_eq!(call(mock.addr(), CHAT, "k", "not json").await.0, 400);
        assert!(mock.wait_for_requests(4, WAIT).await);
        assert!(!mock.wait_for_requests(5, Duration::from_millis(50)).await);
        let paths: Vec<String> = mock.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["/chat/completions", "/v1/models", "/v1/nope", CHAT]);
        assert_eq!(mock.request_count(), 4);
    }

    #[tokio::test]
    async fn status_faults_and_key_overrides() {
        let mut config = faulty(Fault::NoDone);
        config.key_faults.insert("ok".into(), Fault::None);
        let codes = [401, 429, 500, 503];
        for code in codes {
            config
                .key_faults
                .insert(code.to_string(), Fault::Status(code));
        }
        let mock = mock(config).await;
        let body = chat_body("x", true, false);
        for code in codes {
            let resp = call(mock.addr(), CHAT, &code.to_string(), &body).await;
            let error = &resp.json()["error"];
            assert_eq!(resp.0, code);
            assert!(error["message"].is_string() && error["type"].is_string());
        }
        let ok = call(mock.addr(), CHAT, "ok", &body).await.events();
        assert_eq!(ok.last().unwrap(), "[DONE]");
        let other = call(mock.addr(), CHAT, "other", &body).await;
        assert_eq!(other.content(), answer_for("x"));
        assert_ne!(other.events().last().unwrap(), "[DONE]");
    }

    #[tokio::test]
    async fn tail_faults() {
        let error = r#"{"error":{"message":"mock upstream failure","type":"server_error"}}"#;
        for (fault, events, complete, content) in [
            (Fault::InBandErrorAfter(3), 5, true, first_pieces(3)),
            (Fault::DropAfter(2), 3, false, first_pieces(2)),
            (Fault::NoDone, 19, true, first_pieces(16)),
        ] {
            let mock = mock(faulty(fault.clone())).await;
            let resp = ask(mock.addr()).await;
            let got = resp.events();
            let summary = (resp.0, got.len(), resp.3);
            assert_eq!(summary, (200, events, complete), "{fault:?}");
            assert_eq!(resp.content(), content, "{fault:?}");
            let last = got.last().unwrap();
            match fault {
                Fault::InBandErrorAfter(_) => assert_eq!(last, error),
                Fault::NoDone => assert!(last.contains("\"usage\"")),
                _ => assert!(!last.contains("\"finish_reason\":\"stop\"")),
            }
        }
        let mock = mock(faulty(Fault::DropAfter(0))).await;
        let resp = call(mock.addr(), CHAT, "k", &chat_body("x", false, false)).await;
        assert!(!resp.3 && !resp.2.is_empty(), "part of the JSON");
    }

    #[tokio::test]
    async fn stall_after_keeps_connection_silent_until_drop() {
        let mock = mock(faulty(Fault::StallAfter(2))).await;
        let mut stream = open(mock.addr(), CHAT, "k", &chat_body("x", true, true)).await;
        let (raw, timed_out) = read_for(&mut stream, SHORT).await;
        let resp = Resp::parse(&raw);
        assert!(timed_out && !resp.3 && resp.content() == first_pieces(2));
        drop(mock);
        let (rest, timed_out) = read_for(&mut stream, WAIT).await;
        assert!(!timed_out && rest.is_empty(), "drop closes connections");
    }

    #[tokio::test]
    async fn hang_after_headers_sends_no_body() {
        let mock = mock(faulty(Fault::HangAfterHeaders)).await;
        let mut stream = open(mock.addr(), CHAT, "k", &chat_body("x", true, true)).await;
        let (raw, timed_out) = read_for(&mut stream, SHORT).await;
        assert!(timed_out && Resp::parse(&raw).0 == 200);
        assert!(raw.ends_with(b"\r\n\r\n"), "nothing after the headers");
    }

    #[tokio::test]
    async fn hang_before_headers_until_shutdown() {
        let mock = mock(faulty(Fault::HangBeforeHeaders)).await;
        let addr = mock.addr();
        let mut stream = open(addr, CHAT, "k", &chat_body("x", true, true)).await;
        assert!(mock.wait_for_requests(1, WAIT).await);
        let (raw, timed_out) = read_for(&mut stream, SHORT).await;
        assert!(timed_out && raw.is_empty());
        mock.shutdown().await;
        let (raw, timed_out) = read_for(&mut stream, WAIT).await;
        assert!(!timed_out && raw.is_empty());
        assert!(TcpStream::connect(addr).await.is_err(), "port closed");
    }

    #[tokio::test]
    async fn split_seed_cuts_same_bytes_into_many_frames() {
        let line_ending = LineEnding::CrLf;
        let mut config = MockConfig {
            line_ending,
            ..MockConfig::default()
        };
        let mock = mock(config.clone()).await;
        let whole = ask(mock.addr()).await;
        config.split_seed = Some(7);
        mock.set_config(config);
        let split = ask(mock.addr()).await;
        assert!(
            split.3 && split.2.concat() == whole.2.concat(),
            "same bytes"
        );
        assert!(split.2.len() > 100, "{} frames", split.2.len());
        assert!(
            split.2.iter().any(|f| std::str::from_utf8(f).is_err()),
            "cut in a char"
        );
        assert!(split.2.iter().any(|f| f.ends_with(b"\r")), "cut in CRLF");
        assert_eq!(split.content(), answer_for("x"));
    }

    #[tokio::test]
    async fn line_endings_and_comments() {
        let endings = [
            (LineEnding::CrLf, "\r\n"),
            (LineEnding::Cr, "\r"),
            (LineEnding::Lf, "\n"),
        ];
        for (ending, nl) in endings {
            let mut config = MockConfig::default();
            (config.line_ending, config.comments) = (ending, true);
            let mock = mock(config).await;
            let resp = call(mock.addr(), CHAT, "k", &chat_body("x", true, false)).await;
            let text = String::from_utf8(resp.2.concat()).unwrap();
            assert!(text.starts_with(&format!(": ping{nl}data: ")), "{text:?}");
            assert!(text.ends_with(&format!("data: [DONE]{nl}{nl}")), "{text:?}");
            let breaks = text.matches('\n').count() + text.matches('\r').count();
            assert_eq!(breaks, 19 * 3 * nl.len(), "3 line ends per event");
            assert_eq!(resp.content(), answer_for("x"));
        }
    }

    #[tokio::test]
    async fn delays_space_out_frames() {
        let config = MockConfig {
            answer: Some("abcd".into()),
            first_token_delay: Duration::from_millis(50),
            chunk_delay: Duration::from_millis(20),
            ..MockConfig::default()
        };
        let start = Instant::now();
        let mock = mock(config).await;
        let resp = ask(mock.addr()).await;
        assert!(start.elapsed() >= Duration::from_millis(110));
        assert_eq!(resp.2.len(), 5, "role, then one frame per delayed piece");
        assert_eq!(resp.content(), "abcd");
    }

    #[test]
    fn escaper_matches_serde_and_split_is_exact() {
        let tricky = "\"\\/\n\r\t\u{0}\u{1f}\u{7f}é你🌍 error";
        let mut out = Vec::new();
        push_json_str(&mut out, tricky);
        assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), tricky);
        let answer = answer_for("m");
        for chunks in [0, 1, 5, 16, 1000] {
            let pieces = split_answer(&answer, chunks);
            assert_eq!(pieces.concat(), answer);
            assert_eq!(pieces.len(), chunks.clamp(1, answer.chars().count()));
        }
        assert!(split_answer("", 4).is_empty());
        for needle in ["error", "success", "0", "\"", "\\", "🌍", "你好"] {
            assert!(answer.contains(needle), "{needle}");
        }
    }
}
