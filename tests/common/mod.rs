//! Shared test harness: a real gateway on `127.0.0.1:0` (in-process, own SQLite file),
//! a raw HTTP/1.1 client that sees the exact HTTP chunks the server wrote, and parsers
//! for both framings written independently of the gateway's own code.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use chatgate::app::App;
use chatgate::config::{Channel, Config, ModelConfig};
use chatgate::mock_upstream::MockUpstream;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// `mock` as the one channel (with `api_keys`), serving `model` at `price`.
pub fn mock_serves(
    config: &mut Config,
    mock: &MockUpstream,
    model: &str,
    api_keys: &[&str],
    price: ModelConfig,
) {
    config.channels = vec![Channel {
        api_keys: api_keys.iter().map(|k| k.to_string()).collect(),
        models: vec![model.into()],
        ..Channel::new("mock", mock.base_url())
    }];
    config.models.insert(model.into(), price);
}

/// `mock` as the one channel, serving `model` at one micro per output token, prompts free,
/// at most 100 output tokens: the worst case of one answer is exactly 100 micros.
pub fn one_micro_per_output_token(config: &mut Config, mock: &MockUpstream, model: &str) {
    let price = ModelConfig {
        input_micros_per_million: 0,
        output_micros_per_million: 1_000_000,
        max_output_tokens: 100,
        ..ModelConfig::default()
    };
    mock_serves(config, mock, model, &[], price);
}

pub struct Gateway {
    pub addr: std::net::SocketAddr,
    pub app: Arc<App>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// A channel of the pool serving `gpt-4o-mini` with `keys`, tried at `priority`.
pub fn pool_channel(
    name: &str,
    base_url: String,
    keys: &[&str],
    priority: i32,
) -> chatgate::config::Channel {
    chatgate::config::Channel {
        api_keys: keys.iter().map(|k| k.to_string()).collect(),
        models: vec!["gpt-4o-mini".into()],
        priority,
        ..chatgate::config::Channel::new(name, base_url)
    }
}

/// A config for tests: its own SQLite file, fast heartbeats and flushes.
pub fn test_config(dir: &tempfile::TempDir) -> Config {
    Config {
        listen: "127.0.0.1:0".into(),
        database_url: format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display()),
        jwt_secret: Some("test-secret".into()),
        admin_token: Some("test-admin".into()),
        heartbeat_secs: 5.0,
        answer_flush_secs: 0.05,
        demo_chunk_delay_ms: 1,
        shutdown_grace_secs: 10,
        free_messages_per_day: 0,
        // Limits are off unless a test is about them.
        limits: chatgate::config::Limits {
            ip_per_second: 0,
            user_chats_per_minute: 0,
            user_concurrent_streams: 0,
            upstream_concurrent_streams: 0,
            ..chatgate::config::Limits::default()
        },
        ..Config::default()
    }
}

/// The databases the money suite runs on: SQLite always; PostgreSQL and MySQL when
/// `CHATGATE_TEST_POSTGRES_URL` / `CHATGATE_TEST_MYSQL_URL` are set (each call creates
/// a fresh database there, so tests never share state).
pub async fn databases() -> Vec<(&'static str, Option<String>)> {
    let mut out = vec![("sqlite", None)];
    for (name, var) in [
        ("postgres", "CHATGATE_TEST_POSTGRES_URL"),
        ("mysql", "CHATGATE_TEST_MYSQL_URL"),
    ] {
        match std::env::var(var).ok().filter(|v| !v.is_empty()) {
            Some(url) => out.push((name, Some(fresh_database(&url).await))),
            // Straight to stderr, past the test harness's capture, so the skip is seen.
            None => {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "{name}: skipped ({var} is not set)");
            }
        }
    }
    out
}

/// Creates an empty database on the server of `admin_url`; returns its URL.
pub async fn fresh_database(admin_url: &str) -> String {
    use sea_orm::ConnectionTrait;
    let name = format!("cg_{}", uuid::Uuid::new_v4().simple());
    let db = sea_orm::Database::connect(admin_url)
        .await
        .expect("database server reachable");
    db.execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    db.close().await.unwrap();
    let (base, _) = admin_url.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

impl Gateway {
    /// Starts a gateway with the test config changed by `change`.
    pub async fn start(change: impl FnOnce(&mut Config)) -> Gateway {
        Self::start_on(None, change).await
    }

    /// Starts a gateway on `database_url` (a fresh SQLite file when `None`).
    pub async fn start_on(
        database_url: Option<String>,
        change: impl FnOnce(&mut Config),
    ) -> Gateway {
        Self::serve(
            |config| {
                if let Some(url) = database_url {
                    config.database_url = url;
                }
                change(config);
            },
            |app, stop| async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                (
                    addr,
                    tokio::spawn(chatgate::server::run(listener, app, stop)),
                )
            },
        )
        .await
    }

    /// Starts a gateway served as the binary serves it: `threads` event-loop threads,
    /// each with its own runtime and listening socket.
    pub async fn start_threads(threads: usize, change: impl FnOnce(&mut Config)) -> Gateway {
        Self::serve(
            |config| {
                config.threads = threads;
                change(config);
            },
            |app, stop| async move {
                let listeners =
                    chatgate::server::bind_per_thread("127.0.0.1:0".parse().unwrap(), threads)
                        .unwrap();
                assert_eq!(listeners.len(), threads);
                let addr = listeners[0].local_addr().unwrap();
                for l in &listeners {
                    assert_eq!(
                        l.local_addr().unwrap(),
                        addr,
                        "all threads listen on one port"
                    );
                }
                let server = chatgate::server::run_per_thread(listeners, app, stop);
                (addr, tokio::spawn(server))
            },
        )
        .await
    }

    /// The test config changed by `change`, an app on it, and the server `start` starts
    /// (its address and task) until [`Gateway::shutdown`].
    async fn serve<F>(
        change: impl FnOnce(&mut Config),
        start: impl FnOnce(Arc<App>, BoxFuture<'static, ()>) -> F,
    ) -> Gateway
    where
        F: std::future::Future<Output = (std::net::SocketAddr, tokio::task::JoinHandle<()>)>,
    {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(&dir);
        change(&mut config);
        let app = App::new(config).await.expect("gateway starts");
        let (tx, rx) = oneshot::channel::<()>();
        let stop = Box::pin(async {
            let _ = rx.await;
        });
        let (addr, server) = start(Arc::clone(&app), stop).await;
        Gateway {
            addr,
            app,
            stop: Some(tx),
            server: Some(server),
            _dir: dir,
        }
    }

    /// Asks the server to shut down gracefully and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A new user with 100 units of balance; returns the login token.
    pub async fn register(&self, username: &str) -> String {
        self.register_with(username, 100_000_000).await.0
    }

    /// A new user credited `micros` by the admin; returns the token and the user id.
    pub async fn register_with(&self, username: &str, micros: i64) -> (String, i64) {
        let (status, body) = self
            .json(
                "POST",
                "/api/auth/register",
                None,
                &json!({"username": username, "password": "secret123"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let id = body["user_id"].as_i64().unwrap();
        if micros != 0 {
            self.credit(id, micros).await;
        }
        (body["token"].as_str().unwrap().to_string(), id)
    }

    /// Credits (or debits) a user through the admin API.
    pub async fn credit(&self, user_id: i64, micros: i64) -> Value {
        let (status, body) = self
            .admin(
                "POST",
                &format!("/admin/users/{user_id}/credit"),
                &json!({"amount_micros": micros, "note": "test"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// An admin API call.
    pub async fn admin(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        let token = self.app.admin_token.clone();
        self.json(method, path, Some(&token), body).await
    }

    /// The ledger invariant, checked through `GET /admin/check`.
    pub async fn assert_ledger_ok(&self) {
        let (status, report) = self.admin("GET", "/admin/check", &Value::Null).await;
        assert_eq!(status, 200);
        assert_eq!(report["ok"], true, "ledger invariant violated: {report}");
    }

    /// A JSON request; returns the status and the parsed body (Null when not JSON).
    pub async fn json(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> (u16, Value) {
        call_json(self.addr, method, path, token, body).await
    }

    /// A request through the raw client: every HTTP chunk as the server wrote it.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> RawResponse {
        let mut conn = RawClient::send(self.addr, method, path, token, headers, body).await;
        conn.read_all().await
    }

    pub async fn chat(&self, token: &str, body: &Value, mp: bool) -> RawResponse {
        self.open_chat(token, &body.to_string(), mp)
            .await
            .read_all()
            .await
    }

    /// Starts a chat (`body`: the request's JSON) and returns the client with the
    /// response head read and the stream left to read.
    pub async fn open_chat(&self, token: &str, body: &str, mp: bool) -> RawClient {
        let path = if mp {
            "/api/chat?client=mp"
        } else {
            "/api/chat"
        };
        RawClient::send(self.addr, "POST", path, Some(token), &[], body.as_bytes()).await
    }

    /// Rows in the messages table (to check that refused requests store nothing).
    pub async fn message_count(&self) -> u64 {
        use sea_orm::{EntityTrait, PaginatorTrait};
        entity::message::Entity::find()
            .count(&self.app.db)
            .await
            .unwrap()
    }

    /// Polls `GET /api/messages/{id}` until its status is not `streaming`.
    pub async fn wait_answer(&self, token: &str, id: &str) -> Value {
        for _ in 0..2000 {
            let (status, body) = self
                .json(
                    "GET",
                    &format!("/api/messages/{id}"),
                    Some(token),
                    &Value::Null,
                )
                .await;
            assert_eq!(status, 200, "{body}");
            if body["status"] != "streaming" {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("answer {id} never ended");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A JSON request to any gateway (`Null` body = none); the status and the parsed body
/// (`Null` when not JSON).
pub async fn call_json(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let resp = RawClient::send(addr, method, path, token, &[], &body)
        .await
        .read_all()
        .await;
    (
        resp.status,
        serde_json::from_slice(&resp.body()).unwrap_or(Value::Null),
    )
}

pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub chunks: Vec<Vec<u8>>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body(&self) -> Vec<u8> {
        self.chunks.concat()
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body()).expect("body is UTF-8")
    }
}

/// An HTTP/1.1 client over a plain socket that reports each chunk of a chunked body
/// exactly as framed by the server (hyper's client would be free to split them).
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    chunked: bool,
    content_length: Option<usize>,
    finished: bool,
}

impl RawClient {
    pub async fn send(
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> RawClient {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        // On a failed write, whatever the gateway answered goes in the panic: a reset
        // after the headers means it answered (and closed) before reading the body.
        for (part, bytes) in [("head", req.as_bytes()), ("body", body)] {
            if let Err(e) = stream.write_all(bytes).await {
                let mut answered = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut answered))
                        .await;
                panic!(
                    "{method} {path}: writing the request's {part} failed: {e}; the gateway had answered: {:?}",
                    String::from_utf8_lossy(&answered)
                );
            }
        }
        let mut client = RawClient {
            stream,
            buf: Vec::new(),
            status: 0,
            headers: Vec::new(),
            chunked: false,
            content_length: None,
            finished: false,
        };
        client.read_head().await;
        client
    }

    async fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 16384];
        let n = tokio::time::timeout(Duration::from_secs(60), self.stream.read(&mut tmp))
            .await
            .expect("server answers within 60 s")
            .unwrap_or(0);
        self.buf.extend_from_slice(&tmp[..n]);
        n > 0
    }

    async fn read_head(&mut self) {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8(self.buf[..end].to_vec()).unwrap();
                self.buf.drain(..end + 4);
                let mut lines = head.split("\r\n");
                let status_line = lines.next().unwrap();
                self.status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
                for line in lines {
                    let (k, v) = line.split_once(':').unwrap();
                    self.headers
                        .push((k.trim().to_lowercase(), v.trim().to_string()));
                }
                let get = |n: &str| {
                    self.headers
                        .iter()
                        .find(|(k, _)| k == n)
                        .map(|(_, v)| v.clone())
                };
                self.chunked = get("transfer-encoding").is_some_and(|v| v.contains("chunked"));
                self.content_length = get("content-length").and_then(|v| v.parse().ok());
                return;
            }
            assert!(
                self.fill().await,
                "connection closed before the response head"
            );
        }
    }

    /// The next chunk of the body, exactly as framed; `None` at the end.
    pub async fn next_chunk(&mut self) -> Option<Vec<u8>> {
        if self.finished {
            return None;
        }
        if !self.chunked {
            let want = self.content_length.unwrap_or(usize::MAX);
            while self.buf.len() < want && self.fill().await {}
            self.finished = true;
            let body: Vec<u8> = self.buf.drain(..want.min(self.buf.len())).collect();
            return if body.is_empty() { None } else { Some(body) };
        }
        loop {
            if let Some(line_end) = find(&self.buf, b"\r\n") {
                let size_text = std::str::from_utf8(&self.buf[..line_end]).unwrap();
                let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                    .expect("chunk size");
                if size == 0 {
                    self.finished = true;
                    return None;
                }
                if self.buf.len() >= line_end + 2 + size + 2 {
                    let data = self.buf[line_end + 2..line_end + 2 + size].to_vec();
                    assert_eq!(&self.buf[line_end + 2 + size..line_end + 4 + size], b"\r\n");
                    self.buf.drain(..line_end + 4 + size);
                    return Some(data);
                }
            }
            if !self.fill().await {
                panic!("connection closed inside a chunked body");
            }
        }
    }

    pub async fn read_all(&mut self) -> RawResponse {
        let mut chunks = Vec::new();
        while let Some(c) = self.next_chunk().await {
            chunks.push(c);
        }
        RawResponse {
            status: self.status,
            headers: self.headers.clone(),
            chunks,
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What a mini-program client reads from a response, parsed by splitting on `\r\n`
/// as the contract says; also checks the contract's structural rules.
#[derive(Debug, Default)]
pub struct MpStream {
    pub content: String,
    pub heartbeats: usize,
    pub done: Option<Value>,
    pub error: Option<Value>,
    pub terminal: bool,
}

pub fn parse_mp(chunks: &[Vec<u8>]) -> MpStream {
    let mut out = MpStream::default();
    assert!(!chunks.is_empty(), "no chunks");
    assert_eq!(
        chunks.last().unwrap(),
        b"0\r\n\r\n",
        "the terminal is the last chunk, alone"
    );
    out.terminal = true;
    for chunk in &chunks[..chunks.len() - 1] {
        let text = std::str::from_utf8(chunk).expect("each chunk is whole UTF-8 frames");
        assert!(
            text.ends_with("\r\n"),
            "each chunk holds whole frames: {text:?}"
        );
        if let Some(json) = text.strip_prefix("event: error\ndata: ") {
            out.error = Some(serde_json::from_str(json.trim_end()).unwrap());
            continue;
        }
        for frame in text.split_terminator("\r\n") {
            let json = frame
                .strip_prefix("success: ")
                .unwrap_or_else(|| panic!("unexpected frame {frame:?}"));
            assert!(
                !json.contains("error") && !json.contains("success"),
                "frame leaks a keyword: {json}"
            );
            let v: Value = serde_json::from_str(json).unwrap();
            let piece = v["content"].as_str().unwrap();
            if v["done"] == true {
                out.done = Some(v.clone());
            } else if piece.is_empty() {
                out.heartbeats += 1;
            }
            out.content.push_str(piece);
        }
    }
    out
}

/// What an H5 client reads from an SSE response.
#[derive(Debug, Default)]
pub struct SseStream {
    /// `data` of every unnamed event, in order (without `[DONE]`).
    pub data: Vec<String>,
    pub content: String,
    pub keepalives: usize,
    pub done: Option<Value>,
    pub error: Option<Value>,
    pub saw_done_marker: bool,
}

pub fn parse_sse(body: &[u8]) -> SseStream {
    let text = std::str::from_utf8(body).unwrap();
    let mut out = SseStream::default();
    for block in text.split_terminator("\n\n") {
        if block.starts_with(": keep-alive") {
            out.keepalives += 1;
            continue;
        }
        let mut event = None;
        let mut data = Vec::new();
        for line in block.split('\n') {
            if let Some(e) = line.strip_prefix("event: ") {
                event = Some(e);
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push(d);
            } else {
                panic!("unexpected SSE line {line:?}");
            }
        }
        let data = data.join("\n");
        match event {
            Some("done") => out.done = Some(serde_json::from_str(&data).unwrap()),
            Some("error") => out.error = Some(serde_json::from_str(&data).unwrap()),
            Some(other) => panic!("unexpected event {other}"),
            None if data == "[DONE]" => out.saw_done_marker = true,
            None => {
                let v: Value = serde_json::from_str(&data).unwrap();
                if let Some(c) = v["choices"][0]["delta"]["content"].as_str() {
                    out.content.push_str(c);
                }
                out.data.push(data);
            }
        }
    }
    out
}

/// The real `chatgate` binary, killed when dropped (a failing test leaves nothing running).
pub struct Binary {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    /// Every line the binary has logged so far.
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary in `dir` with a clean environment, `CHATGATE_LISTEN=127.0.0.1:0`
/// and `env`, and waits for its `listening on http://ADDR` line.
pub fn spawn_binary(dir: &std::path::Path, env: &[(&str, &str)]) -> Binary {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatgate"));
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CHATGATE_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let lines = Arc::clone(&log);
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            lines.lock().unwrap().push(line.clone());
            if !sent && let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap().parse().unwrap());
                sent = true;
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the binary logs its address");
    Binary { child, addr, log }
}

/// One request to a [`mock_json_api`].
pub struct ApiCall {
    pub path: String,
    pub query: String,
    pub body: bytes::Bytes,
}

impl ApiCall {
    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// A query parameter's raw value.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    }
}

/// A mock HTTP API (WeChat's, in the tests) on `127.0.0.1:0` answering every request
/// with `answer`'s JSON; returns its base URL.
pub async fn mock_json_api(answer: impl Fn(ApiCall) -> Value + Send + Sync + 'static) -> String {
    use http_body_util::BodyExt;
    let answer = Arc::new(answer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let answer = Arc::clone(&answer);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let answer = Arc::clone(&answer);
                        async move {
                            let path = req.uri().path().to_string();
                            let query = req.uri().query().unwrap_or_default().to_string();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let json = answer(ApiCall { path, query, body });
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(json.to_string())),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// WeChat's `POST cgi-bin/stable_token`, simulated: the same token (`T1`, `T2`, …) for
/// every caller until one forces a refresh.
#[derive(Default)]
pub struct StableToken {
    /// The current token's number (0: none handed out yet).
    pub number: usize,
    /// Every request body, in order.
    pub requests: Vec<Value>,
}

impl StableToken {
    pub fn answer(&mut self, asked: Value) -> Value {
        if self.number == 0 || asked["force_refresh"] == true {
            self.number += 1;
        }
        self.requests.push(asked);
        json!({"access_token": self.current(), "expires_in": 7200})
    }

    pub fn current(&self) -> String {
        format!("T{}", self.number)
    }
}
