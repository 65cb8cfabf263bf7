//! Per-chunk cost that does not depend on the machine's speed: heap allocations per relayed
//! chunk, counted by a global allocator, for both framings.
//!
//! ```text
//! cargo run --release --manifest-path bench/alloc/Cargo.toml --target-dir target -- [all|path|gateway]
//! cargo run … -- path-only mp|sse N      # one run of the answer path, for callgrind
//! ```
//!
//! * `path`: the answer path in one thread — SSE bytes as the upstream sends them → the SSE
//!   parser → the chunk reader → the (empty) safety gate → the shared `Answer` → a `Reader`
//!   framing it for the client. One upstream event per read and one chunk read per event
//!   ("live": the reader keeps up), or all events in one read ("batched").
//! * `gateway`: the whole gateway in-process (hyper server, auth, hold, reqwest upstream
//!   client, settlement on SQLite) against the in-process mock upstream, which runs, with
//!   the client, on threads whose allocations are not counted. One request at a time.
//!
//! Fixed costs (a request, an answer, set-up) cancel out: every figure is
//! `(count with 2N chunks − count with N chunks) / N`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chatgate::chat::Framing;
use chatgate::chat::answer::Answer;
use chatgate::safety::WordList;
use chatgate::upstream::chunk::{Chunk, ChunkReader};
use chatgate::upstream::sse::SseParser;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Threads of the mock upstream and the client: not the gateway's work.
    static EXCLUDED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if !EXCLUDED.try_with(Cell::get).unwrap_or(true) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches
// only an atomic and a const-initialised thread-local (neither allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.load(Ordering::Relaxed)
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// One OpenAI chunk event as an upstream sends it (the mock's shape).
fn event(piece: &str) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{piece}\"}},\"finish_reason\":null}}]}}\n\n"
    )
}

/// The upstream bytes of `n` content events, each a slice of one buffer (as reads are
/// slices of the connection's read buffer), or all in one read when `batched`.
fn upstream_reads(n: usize, batched: bool) -> Vec<Bytes> {
    let pieces = ["你好", "ab", "c d", "世界", "xy", "🌍!"];
    let mut all = String::new();
    let mut bounds = vec![0];
    for i in 0..n {
        all.push_str(&event(pieces[i % pieces.len()]));
        bounds.push(all.len());
    }
    let all = Bytes::from(all);
    if batched {
        return vec![all];
    }
    bounds.windows(2).map(|w| all.slice(w[0]..w[1])).collect()
}

/// The answer path for `n` events; returns the allocations it made.
async fn path_run(framing: Framing, n: usize, batched: bool) -> u64 {
    path_run_on(framing, upstream_reads(n, batched)).await
}

/// The answer path over `reads`.
async fn path_run_on(framing: Framing, reads: Vec<Bytes>) -> u64 {
    let batched = reads.len() == 1;
    let words = WordList::empty();
    let before = allocs();
    let answer = Answer::new("m".into(), "c".into(), 1);
    let mut reader = answer.reader(framing, None, Duration::from_secs(60));
    let mut gate = words.gate();
    let mut parser = SseParser::new();
    let mut chunks = ChunkReader::default();
    answer.set_streaming();
    let mut sent = 0usize;
    let mut feed = |bytes: &Bytes, parser: &mut SseParser| {
        parser.push(bytes);
        while let Some(event) = parser.next_event() {
            if let Ok(Chunk::Delta { content, .. }) = chunks.read(&event.data) {
                let text = content.as_deref().unwrap_or_default();
                gate.offer(event.data.clone(), text, |raw, t| answer.push(raw, t));
            }
        }
    };
    if batched {
        for read in &reads {
            feed(read, &mut parser);
        }
        if let Some(chunk) = reader.next_chunk().await {
            sent += chunk.len();
        }
    } else {
        for read in &reads {
            feed(read, &mut parser);
            if let Some(chunk) = reader.next_chunk().await {
                sent += chunk.len();
            }
        }
    }
    std::hint::black_box(sent);
    drop(reader);
    drop(answer);
    allocs() - before
}

fn per_chunk(a_n: u64, a_2n: u64, n: usize) -> f64 {
    (a_2n as f64 - a_n as f64) / n as f64
}

fn path_report(rt: &tokio::runtime::Runtime) {
    const N: usize = 1000;
    println!(
        "answer path (SSE parse → chunk → gate → Answer → Reader), N = {N} vs {}:",
        2 * N
    );
    for (name, framing) in [("mp", Framing::MiniProgram), ("sse", Framing::Sse)] {
        for (mode, batched) in [
            ("live (one event per read)", false),
            ("batched (one read)", true),
        ] {
            let a = rt.block_on(path_run(framing, N, batched));
            let b = rt.block_on(path_run(framing, 2 * N, batched));
            println!(
                "  {name:>3} {mode:<26} {:.2} allocations per chunk",
                per_chunk(a, b, N)
            );
        }
    }
}

/// One chat through the gateway; returns the response bytes.
async fn chat(addr: std::net::SocketAddr, token: &str, mp: bool) -> Result<Vec<u8>, Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = "{\"message\":\"alloc\"}";
    let path = if mp {
        "/api/chat?client=mp"
    } else {
        "/api/chat"
    };
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(out)
}

async fn json_call(
    addr: std::net::SocketAddr,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> Result<String, Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = bearer.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\":");
    let at = text.find(&key)? + key.len();
    let rest = text[at..].trim_start_matches('"');
    let end = rest.find(['"', ',', '}'])?;
    Some(&rest[..end])
}

fn gateway_report() -> Result<(), Error> {
    use chatgate::config::{Channel, Config, Limits, ModelConfig};
    use chatgate::mock_upstream::{MockConfig, MockUpstream};
    const N: usize = 50;
    const REQUESTS: usize = 20;
    EXCLUDED.with(|e| e.set(true));
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .on_thread_start(|| EXCLUDED.with(|e| e.set(true)))
        .build()?;
    let gate_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mock = client_rt.block_on(MockUpstream::start(MockConfig {
        record: false,
        ..MockConfig::default()
    }))?;
    let dir = tempfile::tempdir()?;
    let config = Config {
        database_url: format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display()),
        admin_token: Some("admin".into()),
        jwt_secret: Some("s".into()),
        free_messages_per_day: 0,
        // Flushes are per second, not per chunk: keep them out of the difference.
        answer_flush_secs: 600.0,
        limits: Limits {
            ip_per_second: 0,
            user_chats_per_minute: 0,
            user_concurrent_streams: 0,
            ..Limits::default()
        },
        channels: vec![Channel {
            models: vec!["m".into()],
            ..Channel::new("mock", mock.base_url())
        }],
        models: [(
            "m".to_string(),
            ModelConfig {
                max_output_tokens: 256,
                ..ModelConfig::default()
            },
        )]
        .into(),
        ..Config::default()
    };
    let app = gate_rt.block_on(chatgate::app::App::new(config))?;
    let listener = gate_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = gate_rt.spawn(chatgate::server::run(listener, Arc::clone(&app), async {
        let _ = stop_rx.await;
    }));
    let reg = client_rt.block_on(json_call(
        addr,
        "/api/auth/register",
        None,
        "{\"username\":\"alloc\",\"password\":\"secret123\"}",
    ))?;
    let token = field(&reg, "token").ok_or("no token")?.to_string();
    let id = field(&reg, "user_id").ok_or("no user id")?.to_string();
    client_rt.block_on(json_call(
        addr,
        &format!("/admin/users/{id}/credit"),
        Some("admin"),
        "{\"amount_micros\":1000000000000}",
    ))?;

    println!(
        "whole gateway in-process (server, auth, hold, upstream client, settle on SQLite), \
         {REQUESTS} requests each, N = {N} vs {}:",
        2 * N
    );
    for (name, mp) in [("mp", true), ("sse", false)] {
        for (mode, delay) in [
            ("live (1 ms between chunks)", Duration::from_millis(1)),
            ("batched (no delay)", Duration::ZERO),
        ] {
            let mut counts = Vec::new();
            for n in [N, 2 * N] {
                mock.set_config(MockConfig {
                    chunks: n,
                    chunk_delay: delay,
                    record: false,
                    ..MockConfig::default()
                });
                // One request untimed, to warm pools and caches.
                client_rt.block_on(chat(addr, &token, mp))?;
                let before = allocs();
                for _ in 0..REQUESTS {
                    let out = client_rt.block_on(chat(addr, &token, mp))?;
                    let ok = if mp {
                        out.ends_with(b"5\r\n0\r\n\r\n\r\n0\r\n\r\n")
                    } else {
                        out.windows(12).any(|w| w == b"data: [DONE]")
                    };
                    if !ok {
                        return Err(format!(
                            "chat failed: {}",
                            String::from_utf8_lossy(&out[..out.len().min(400)])
                        )
                        .into());
                    }
                }
                // Let the answer tasks finish removing themselves.
                std::thread::sleep(Duration::from_millis(50));
                counts.push(allocs() - before);
            }
            println!(
                "  {name:>3} {mode:<27} {:.2} allocations per chunk",
                per_chunk(counts[0], counts[1], N * REQUESTS)
            );
        }
    }
    let _ = stop_tx.send(());
    gate_rt.block_on(server)?;
    drop(mock);
    Ok(())
}

/// Events made by `path-only` whatever its `n` (at least the larger of the two runs).
const PATH_ONLY_EVENTS: usize = 4000;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.first().map(String::as_str).unwrap_or("all") {
        "path" => path_report(&rt),
        "gateway" => gateway_report()?,
        "all" => {
            path_report(&rt);
            gateway_report()?;
        }
        "path-only" => {
            let framing = match args.get(1).map(String::as_str) {
                Some("sse") => Framing::Sse,
                _ => Framing::MiniProgram,
            };
            let n: usize = args.get(2).map_or(Ok(1000), |v| v.parse())?;
            // The events are made for the largest run whatever `n` is, so making them is a
            // fixed cost that cancels out between runs.
            let mut reads = upstream_reads(n.max(PATH_ONLY_EVENTS), false);
            reads.truncate(n);
            let a = rt.block_on(path_run_on(framing, reads));
            println!("{a} allocations");
        }
        other => return Err(format!("unknown mode {other}").into()),
    }
    Ok(())
}
