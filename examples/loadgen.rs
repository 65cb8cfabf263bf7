//! Load generator for streaming chat: C concurrent streams against chatgate or any
//! OpenAI-compatible upstream, every answer checked against what the mock upstream sends.
//!
//! ```text
//! cargo run --release --example loadgen -- --target mp --url http://127.0.0.1:8080 \
//!     --admin-token TOKEN -c 500 --duration 10 [--model m] [--users 50] \
//!     [--watch chatgate=PID] [--watch nginx=PID,PID] [--json]
//! ```
//!
//! Targets: `mp` and `sse` (chatgate `POST /api/chat` in mini-program or SSE framing; users
//! are registered and credited through the admin API, so every answer takes a real hold and
//! is settled), `v1` (chatgate `POST /v1/chat/completions` with an API key per user) and
//! `openai` (an OpenAI-compatible base URL directly: the mock, or the mock behind nginx).
//!
//! Each worker keeps one HTTP/1.1 keep-alive connection and sends one question after another
//! (`q<worker>-<n>`, so every answer is different). The mock's answer to a question is known
//! ([`chatgate::mock_upstream::answer_for`]): an answer whose content differs is counted as
//! wrong. The client is hand-written on `TcpStream` and reads body bytes as they arrive, so
//! time to first content is the time until the first non-empty content piece was read.
//!
//! The run: connections open over `--ramp-ms`, then `--warmup` seconds, then the measured
//! window of `--duration` seconds; rates count only pieces read inside the window, and the
//! CPU (utime+stime) and RSS of every `--watch`ed process are read from `/proc` at its edges
//! (RSS also sampled during it; "idle" RSS is read before any connection opens). Requests in
//! flight when the window closes are finished and checked. `--json` prints one JSON line.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chatgate::mock_upstream::answer_for;
use clap::{Parser, ValueEnum};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Target {
    /// chatgate `POST /api/chat?client=mp` (mini-program framing).
    Mp,
    /// chatgate `POST /api/chat` (SSE framing).
    Sse,
    /// chatgate `POST /v1/chat/completions` with an API key.
    V1,
    /// An OpenAI-compatible base URL (e.g. `http://127.0.0.1:9000/v1`) directly.
    Openai,
}

#[derive(Parser, Debug)]
#[command(about = "Concurrent streaming chats, every answer verified")]
struct Args {
    #[arg(long, value_enum)]
    target: Target,
    /// chatgate's base URL (`http://HOST:PORT`), or the OpenAI base URL for `openai`.
    #[arg(long)]
    url: String,
    /// Concurrent streams.
    #[arg(short = 'c', long, default_value_t = 50)]
    concurrency: usize,
    /// Length of the measured window, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before the window opens.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Stop after this many requests in all (0 = no bound but the duration).
    #[arg(long, default_value_t = 0)]
    requests: u64,
    /// Spread the first requests over this many milliseconds (default: C/4 ms).
    #[arg(long)]
    ramp_ms: Option<u64>,
    /// Model to ask for (chatgate targets: omit for the default model).
    #[arg(long)]
    model: Option<String>,
    /// chatgate targets: users to register (at most C); requests are spread over them.
    #[arg(long, default_value_t = 50)]
    users: usize,
    /// chatgate targets: the admin token, to credit the users.
    #[arg(long, env = "CHATGATE_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// Balance credited to each user, in micros.
    #[arg(long, default_value_t = 1_000_000_000_000)]
    credit_micros: i64,
    /// A process to measure: `NAME=PID[,PID…]` (several PIDs are summed, e.g. nginx workers).
    #[arg(long)]
    watch: Vec<String>,
    /// A label for the JSON line.
    #[arg(long, default_value = "")]
    label: String,
    /// Print one JSON line with the results (after the readable summary).
    #[arg(long)]
    json: bool,
    /// Latencies of every request, not only of those started inside the window (for runs
    /// whose requests all start during the ramp, like the open-streams test).
    #[arg(long)]
    all_latencies: bool,
    /// Give up on a request after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    request_timeout: f64,
    /// Milliseconds each worker waits after an answer before its next request (a
    /// person's pause; the mini-program framing makes one of 50 ms before its last
    /// frame, so `--pause-ms 50` gives other targets the same idle gap).
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
}

/// Phases of the run, read by every worker before counting a piece.
const WARMUP: u8 = 0;
const MEASURING: u8 = 1;
const DRAINING: u8 = 2;

struct Shared {
    target: Target,
    addr: SocketAddr,
    host: String,
    path: String,
    model: Option<String>,
    phase: AtomicU8,
    /// Set when no new request may start.
    stop: AtomicBool,
    started: AtomicU64,
    limit: u64,
    timeout: Duration,
    pause: Duration,
    all_latencies: bool,
}

/// What one worker saw.
#[derive(Default)]
struct Tally {
    /// Content pieces read inside the window.
    chunks: u64,
    /// Requests completed (verified or not) that ended inside the window.
    completed_in_window: u64,
    ok: u64,
    errors: u64,
    wrong: u64,
    /// Microseconds, for requests started inside the window.
    ttfc: Vec<u64>,
    total: Vec<u64>,
    first_error: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let (addr, host, base_path) = parse_url(&args.url)?;
    let path = match args.target {
        Target::Mp => "/api/chat?client=mp".to_string(),
        Target::Sse => "/api/chat".to_string(),
        Target::V1 => "/v1/chat/completions".to_string(),
        Target::Openai => format!("{}/chat/completions", base_path.trim_end_matches('/')),
    };
    let credentials = match args.target {
        Target::Openai => vec!["bench-key".to_string()],
        _ => setup_users(&args, addr, &host).await?,
    };
    let watched: Vec<(String, Vec<u32>)> = args
        .watch
        .iter()
        .map(|w| parse_watch(w))
        .collect::<Result<_, _>>()?;
    let idle_rss: Vec<u64> = watched.iter().map(|(_, pids)| rss(pids)).collect();

    let shared = Arc::new(Shared {
        target: args.target,
        addr,
        host,
        path,
        model: args.model.clone(),
        phase: AtomicU8::new(WARMUP),
        stop: AtomicBool::new(false),
        started: AtomicU64::new(0),
        limit: args.requests,
        timeout: Duration::from_secs_f64(args.request_timeout),
        pause: Duration::from_millis(args.pause_ms),
        all_latencies: args.all_latencies,
    });
    let c = args.concurrency.max(1);
    let ramp = Duration::from_millis(args.ramp_ms.unwrap_or(c as u64 / 4));
    let run_start = Instant::now();
    let mut workers = Vec::with_capacity(c);
    for i in 0..c {
        let shared = Arc::clone(&shared);
        let credential = credentials[i % credentials.len()].clone();
        let delay = ramp.mul_f64(i as f64 / c as f64);
        workers.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            worker(i, &shared, &credential).await
        }));
    }

    // Warm-up, then the window: CPU at its edges, RSS sampled inside it.
    tokio::time::sleep_until((run_start + ramp + Duration::from_secs_f64(args.warmup)).into())
        .await;
    let cpu_start: Vec<u64> = watched.iter().map(|(_, pids)| cpu_ticks(pids)).collect();
    let window_start = Instant::now();
    shared.phase.store(MEASURING, Ordering::Relaxed);
    let window = Duration::from_secs_f64(args.duration);
    let mut rss_samples: Vec<Vec<u64>> = vec![Vec::new(); watched.len()];
    let sample_every = Duration::from_millis(250);
    let mut early_end = false;
    while window_start.elapsed() < window {
        let left = window.saturating_sub(window_start.elapsed());
        tokio::time::sleep(left.min(sample_every)).await;
        for (samples, (_, pids)) in rss_samples.iter_mut().zip(&watched) {
            samples.push(rss(pids));
        }
        if workers.iter().all(|w| w.is_finished()) {
            early_end = true;
            break;
        }
    }
    shared.phase.store(DRAINING, Ordering::Relaxed);
    let elapsed = window_start.elapsed().as_secs_f64();
    let cpu_end: Vec<u64> = watched.iter().map(|(_, pids)| cpu_ticks(pids)).collect();
    shared.stop.store(true, Ordering::Relaxed);

    let mut all = Tally::default();
    for w in workers {
        let t = w.await?;
        all.chunks += t.chunks;
        all.completed_in_window += t.completed_in_window;
        all.ok += t.ok;
        all.errors += t.errors;
        all.wrong += t.wrong;
        all.ttfc.extend(t.ttfc);
        all.total.extend(t.total);
        if all.first_error.is_none() {
            all.first_error = t.first_error;
        }
    }
    all.ttfc.sort_unstable();
    all.total.sort_unstable();

    let chunks_per_sec = all.chunks as f64 / elapsed;
    let mut procs = Vec::new();
    for (i, (name, _)) in watched.iter().enumerate() {
        let ticks = cpu_end[i].saturating_sub(cpu_start[i]);
        // USER_HZ is 100 on Linux: one tick is 10 ms.
        let cpu_us = ticks as f64 * 10_000.0;
        let mut samples = rss_samples[i].clone();
        samples.sort_unstable();
        let rss_during = samples.get(samples.len() / 2).copied().unwrap_or(0);
        let rss_peak = samples.last().copied().unwrap_or(0);
        procs.push(json!({
            "name": name,
            "cpu_s": cpu_us / 1e6,
            "cpu_us_per_chunk": if all.chunks > 0 { cpu_us / all.chunks as f64 } else { 0.0 },
            "cpu_share": cpu_us / 1e6 / elapsed,
            "rss_idle_kb": idle_rss[i] / 1024,
            "rss_during_kb": rss_during / 1024,
            "rss_peak_kb": rss_peak / 1024,
            "rss_per_stream_kb": rss_during.saturating_sub(idle_rss[i]) as f64 / 1024.0 / c as f64,
        }));
    }
    let result = json!({
        "label": args.label,
        "target": format!("{:?}", args.target).to_lowercase(),
        "concurrency": c,
        "window_s": elapsed,
        "early_end": early_end,
        "requests_ok": all.ok,
        "requests_per_sec": all.completed_in_window as f64 / elapsed,
        "chunks_per_sec": chunks_per_sec,
        "chunks": all.chunks,
        "ttfc_p50_ms": pct(&all.ttfc, 0.50),
        "ttfc_p99_ms": pct(&all.ttfc, 0.99),
        "total_p50_ms": pct(&all.total, 0.50),
        "total_p99_ms": pct(&all.total, 0.99),
        "errors": all.errors,
        "wrong": all.wrong,
        "first_error": all.first_error,
        "procs": procs,
    });
    print_summary(&result);
    if args.json {
        println!("{result}");
    }
    Ok(())
}

fn pct(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() - 1) as f64 * p).round() as usize;
    sorted_us[i] as f64 / 1000.0
}

fn print_summary(r: &Value) {
    println!(
        "{} c={} window {:.1}s: {:.0} req/s, {:.0} content chunks/s; TTFC p50 {:.2} ms p99 {:.2} ms; total p50 {:.1} ms p99 {:.1} ms; ok {} errors {} wrong {}",
        r["target"].as_str().unwrap_or(""),
        r["concurrency"],
        r["window_s"].as_f64().unwrap_or(0.0),
        r["requests_per_sec"].as_f64().unwrap_or(0.0),
        r["chunks_per_sec"].as_f64().unwrap_or(0.0),
        r["ttfc_p50_ms"].as_f64().unwrap_or(0.0),
        r["ttfc_p99_ms"].as_f64().unwrap_or(0.0),
        r["total_p50_ms"].as_f64().unwrap_or(0.0),
        r["total_p99_ms"].as_f64().unwrap_or(0.0),
        r["requests_ok"],
        r["errors"],
        r["wrong"],
    );
    if let Some(e) = r["first_error"].as_str() {
        println!("  first error: {e}");
    }
    for p in r["procs"].as_array().into_iter().flatten() {
        println!(
            "  {:<10} CPU {:.2} s ({:.0}% of a core), {:.2} µs/chunk; RSS idle {} KB, during {} KB ({:.1} KB/stream)",
            p["name"].as_str().unwrap_or(""),
            p["cpu_s"].as_f64().unwrap_or(0.0),
            p["cpu_share"].as_f64().unwrap_or(0.0) * 100.0,
            p["cpu_us_per_chunk"].as_f64().unwrap_or(0.0),
            p["rss_idle_kb"],
            p["rss_during_kb"],
            p["rss_per_stream_kb"].as_f64().unwrap_or(0.0),
        );
    }
}

fn parse_url(url: &str) -> Result<(SocketAddr, String, String), Error> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host)?
        .next()
        .ok_or("cannot resolve the URL's host")?;
    Ok((addr, host.to_string(), path.to_string()))
}

fn parse_watch(spec: &str) -> Result<(String, Vec<u32>), Error> {
    let (name, pids) = spec.split_once('=').ok_or("--watch NAME=PID[,PID]")?;
    let pids = pids
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.trim().parse::<u32>())
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name.to_string(), pids))
}

/// utime + stime of the processes, in clock ticks.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            // Fields after the command (which may hold spaces) in parentheses.
            let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let fields: Vec<&str> = after.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ')'.
            let get = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
            get(11).unwrap_or(0) + get(12).unwrap_or(0)
        })
        .sum()
}

/// Resident set size of the processes, in bytes.
fn rss(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/statm")).ok())
        .filter_map(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096)
        .sum()
}

// ---------------------------------------------------------------------------------------
// Set-up: users, credits, API keys.

async fn setup_users(args: &Args, addr: SocketAddr, host: &str) -> Result<Vec<String>, Error> {
    let admin = args
        .admin_token
        .clone()
        .ok_or("chatgate targets need --admin-token (or CHATGATE_ADMIN_TOKEN)")?;
    let n = args.users.clamp(1, args.concurrency.max(1));
    let run = uuid::Uuid::new_v4().simple().to_string();
    // Registration hashes a password (deliberately slow): a few at a time.
    let mut out = Vec::with_capacity(n);
    for batch in (0..n).collect::<Vec<_>>().chunks(8) {
        let mut tasks = Vec::new();
        for &u in batch {
            let (admin, host, run) = (admin.clone(), host.to_string(), run.clone());
            let (target, credit) = (args.target, args.credit_micros);
            tasks.push(tokio::spawn(async move {
                setup_user(addr, &host, &admin, &run[..12], u, target, credit).await
            }));
        }
        for t in tasks {
            out.push(t.await??);
        }
    }
    Ok(out)
}

async fn setup_user(
    addr: SocketAddr,
    host: &str,
    admin: &str,
    run: &str,
    u: usize,
    target: Target,
    credit: i64,
) -> Result<String, Error> {
    let creds = json!({"username": format!("lg{run}u{u}"), "password": "loadgen-secret"});
    let (status, body) = call_json(addr, host, "POST", "/api/auth/register", None, &creds).await?;
    if status != 201 && status != 200 {
        return Err(format!("register: {status} {body}").into());
    }
    let id = body["user_id"].as_i64().ok_or("register: no user_id")?;
    let token = body["token"]
        .as_str()
        .ok_or("register: no token")?
        .to_string();
    let credit = json!({"amount_micros": credit, "note": "loadgen"});
    let path = format!("/admin/users/{id}/credit");
    let (status, body) = call_json(addr, host, "POST", &path, Some(admin), &credit).await?;
    if status != 200 {
        return Err(format!("credit: {status} {body}").into());
    }
    if target != Target::V1 {
        return Ok(token);
    }
    let key = json!({"name": "loadgen"});
    let (status, body) = call_json(addr, host, "POST", "/api/keys", Some(&token), &key).await?;
    if status != 200 && status != 201 {
        return Err(format!("api key: {status} {body}").into());
    }
    Ok(body["key"].as_str().ok_or("api key: no key")?.to_string())
}

/// One JSON request on a fresh connection (`connection: close`).
async fn call_json(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &Value,
) -> Result<(u16, Value), Error> {
    let body = body.to_string();
    let auth = bearer.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let split = find(&raw, b"\r\n\r\n").ok_or("no response head")? + 4;
    let head = std::str::from_utf8(&raw[..split])?;
    let status: u16 = head.get(9..12).ok_or("bad status line")?.parse()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = Vec::new();
        let mut rest = &raw[split..];
        while let Some(eol) = find(rest, b"\r\n") {
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol])?.trim(), 16)?;
            rest = &rest[eol + 2..];
            if size == 0 || rest.len() < size {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[(size + 2).min(rest.len())..];
        }
        out
    } else {
        raw[split..].to_vec()
    };
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

// ---------------------------------------------------------------------------------------
// The workers.

async fn worker(index: usize, shared: &Shared, credential: &str) -> Tally {
    let mut tally = Tally::default();
    let mut conn: Option<Conn> = None;
    let mut n = 0u64;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        if shared.limit > 0 && shared.started.fetch_add(1, Ordering::Relaxed) >= shared.limit {
            break;
        }
        let question = format!("q{index}-{n}");
        n += 1;
        let in_window = shared.all_latencies || shared.phase.load(Ordering::Relaxed) == MEASURING;
        let started = Instant::now();
        let mut c = match conn.take() {
            Some(c) => c,
            None => match TcpStream::connect(shared.addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    Conn::new(s)
                }
                Err(e) => {
                    tally.error(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let outcome = tokio::time::timeout(
            shared.timeout,
            one_request(shared, &mut c, credential, &question, &mut tally),
        )
        .await;
        let ended_in_window = shared.phase.load(Ordering::Relaxed) == MEASURING;
        match outcome {
            Ok(Ok(done)) => {
                let expected = answer_for(&question);
                if done.content == expected {
                    tally.ok += 1;
                } else {
                    tally.wrong += 1;
                    if tally.first_error.is_none() {
                        tally.first_error = Some(format!(
                            "wrong answer to {question:?}: got {:?}",
                            done.content
                        ));
                    }
                }
                if in_window {
                    if let Some(t) = done.first_content {
                        tally.ttfc.push((t - started).as_micros() as u64);
                    }
                    tally.total.push(started.elapsed().as_micros() as u64);
                }
                if ended_in_window {
                    tally.completed_in_window += 1;
                }
                if done.keep_alive {
                    conn = Some(c);
                }
            }
            Ok(Err(e)) => tally.error(e.to_string()),
            Err(_) => tally.error("request timed out".into()),
        }
        if !shared.pause.is_zero() {
            tokio::time::sleep(shared.pause).await;
        }
    }
    tally
}

impl Tally {
    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }
}

/// A keep-alive connection and the bytes read past the last response.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf`.
    at: usize,
}

impl Conn {
    fn new(stream: TcpStream) -> Self {
        Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
            at: 0,
        }
    }

    fn unread(&self) -> &[u8] {
        &self.buf[self.at..]
    }

    /// Reads more bytes; an error at EOF.
    async fn fill(&mut self) -> Result<(), Error> {
        if self.at > 0 && self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        } else if self.at > 8 * 1024 {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        let len = self.buf.len();
        if self.buf.capacity() - len < 4096 {
            self.buf.reserve(16 * 1024);
        }
        self.buf.resize(self.buf.capacity(), 0);
        let n = self.stream.read(&mut self.buf[len..]).await;
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                self.buf.truncate(len);
                return Err(e.into());
            }
        };
        self.buf.truncate(len + n);
        if n == 0 {
            return Err("connection closed mid-response".into());
        }
        Ok(())
    }
}

struct Done {
    content: String,
    first_content: Option<Instant>,
    keep_alive: bool,
}

async fn one_request(
    shared: &Shared,
    c: &mut Conn,
    credential: &str,
    question: &str,
    tally: &mut Tally,
) -> Result<Done, Error> {
    let body = match shared.target {
        Target::Mp | Target::Sse => match &shared.model {
            Some(m) => json!({"message": question, "model": m}),
            None => json!({"message": question}),
        },
        Target::V1 | Target::Openai => json!({
            "model": shared.model.as_deref().unwrap_or("mock-model"),
            "stream": true,
            "messages": [{"role": "user", "content": question}],
        }),
    }
    .to_string();
    let req = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {credential}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        shared.path,
        shared.host,
        body.len()
    );
    c.stream.write_all(req.as_bytes()).await?;

    // The head.
    let head_end = loop {
        if let Some(i) = find(c.unread(), b"\r\n\r\n") {
            break i;
        }
        c.fill().await?;
    };
    let head = std::str::from_utf8(&c.unread()[..head_end])?.to_ascii_lowercase();
    c.at += head_end + 4;
    let status: u16 = head.get(9..12).ok_or("bad status line")?.parse()?;
    let chunked = head.contains("\r\ntransfer-encoding: chunked");
    let keep_alive = !head.contains("\r\nconnection: close");
    let length = head
        .split("\r\n")
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());

    let mut framing = Framing::new(shared.target);
    let mut content = String::new();
    let mut first_content = None;
    let phase = &shared.phase;
    if !chunked {
        let len = length.unwrap_or(0);
        while c.unread().len() < len {
            c.fill().await?;
        }
        let text = String::from_utf8_lossy(&c.unread()[..len]).into_owned();
        c.at += len;
        return Err(format!("HTTP {status}: {text}").into());
    }
    // Chunked body: decode sizes, hand data to the framing parser as it arrives.
    let mut left_in_chunk = 0usize;
    loop {
        if left_in_chunk == 0 {
            let eol = loop {
                if let Some(i) = find(c.unread(), b"\r\n") {
                    break i;
                }
                c.fill().await?;
            };
            let size = std::str::from_utf8(&c.unread()[..eol])?;
            let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
            c.at += eol + 2;
            if size == 0 {
                while c.unread().len() < 2 {
                    c.fill().await?;
                }
                c.at += 2;
                break;
            }
            left_in_chunk = size;
        }
        if c.unread().is_empty() {
            c.fill().await?;
        }
        let take = left_in_chunk.min(c.unread().len());
        let data = &c.buf[c.at..c.at + take];
        framing.feed(data, |piece| {
            if !piece.is_empty() {
                if first_content.is_none() {
                    first_content = Some(Instant::now());
                }
                if phase.load(Ordering::Relaxed) == MEASURING {
                    tally.chunks += 1;
                }
                content.push_str(piece);
            }
        })?;
        c.at += take;
        left_in_chunk -= take;
        if left_in_chunk == 0 {
            while c.unread().len() < 2 {
                c.fill().await?;
            }
            c.at += 2;
        }
    }
    if status != 200 {
        return Err(format!("HTTP {status}").into());
    }
    if !framing.complete() {
        return Err("response ended without its last frame".into());
    }
    Ok(Done {
        content,
        first_content,
        keep_alive,
    })
}

// ---------------------------------------------------------------------------------------
// Framings, read incrementally.

struct Framing {
    target: Target,
    /// Bytes of an unfinished line/frame.
    pending: Vec<u8>,
    /// SSE: the `event:` of the event being read.
    event: Option<String>,
    /// Saw `[DONE]` (SSE) / the done frame and the terminal (mp).
    done: bool,
    terminal: bool,
}

#[derive(Deserialize)]
struct SseChunk<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<SseChoice<'a>>>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct SseChoice<'a> {
    #[serde(borrow, default)]
    delta: Option<SseDelta<'a>>,
}

#[derive(Deserialize)]
struct SseDelta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct MpFrame<'a> {
    #[serde(borrow)]
    content: Cow<'a, str>,
    #[serde(default)]
    done: bool,
}

impl Framing {
    fn new(target: Target) -> Self {
        Framing {
            target,
            pending: Vec::new(),
            event: None,
            done: false,
            terminal: false,
        }
    }

    fn complete(&self) -> bool {
        match self.target {
            Target::Mp => self.done && self.terminal,
            _ => self.done,
        }
    }

    /// Feeds body bytes; calls `piece` with every content piece.
    fn feed(&mut self, data: &[u8], mut piece: impl FnMut(&str)) -> Result<(), Error> {
        let sep: &[u8] = if self.target == Target::Mp {
            b"\r\n"
        } else {
            b"\n"
        };
        let mut rest = data;
        if !self.pending.is_empty() {
            self.pending.extend_from_slice(rest);
            let pending = std::mem::take(&mut self.pending);
            let mut from = 0;
            while let Some(i) = find(&pending[from..], sep) {
                self.line(&pending[from..from + i], &mut piece)?;
                from += i + sep.len();
            }
            self.pending = pending[from..].to_vec();
            return Ok(());
        }
        while let Some(i) = find(rest, sep) {
            self.line(&rest[..i], &mut piece)?;
            rest = &rest[i + sep.len()..];
        }
        self.pending.extend_from_slice(rest);
        Ok(())
    }

    fn line(&mut self, line: &[u8], piece: &mut impl FnMut(&str)) -> Result<(), Error> {
        if self.target == Target::Mp {
            if let Some(json) = line.strip_prefix(b"success: ") {
                let f: MpFrame = serde_json::from_slice(json)?;
                if f.done {
                    self.done = true;
                } else {
                    piece(&f.content);
                }
            } else if line.starts_with(b"event: error") {
                return Err(format!("error frame: {}", String::from_utf8_lossy(line)).into());
            } else if line == b"0" {
                self.terminal = true;
            } else if !line.is_empty() {
                return Err(
                    format!("unexpected mp line {:?}", String::from_utf8_lossy(line)).into(),
                );
            }
            return Ok(());
        }
        if line.is_empty() {
            self.event = None;
        } else if let Some(ev) = line.strip_prefix(b"event: ") {
            self.event = Some(String::from_utf8_lossy(ev).into_owned());
        } else if let Some(data) = line.strip_prefix(b"data: ") {
            match self.event.as_deref() {
                Some("error") => {
                    return Err(format!("error event: {}", String::from_utf8_lossy(data)).into());
                }
                Some(_) => {}
                None if data == b"[DONE]" => self.done = true,
                None => {
                    let chunk: SseChunk = serde_json::from_slice(data)?;
                    if let Some(e) = chunk.error {
                        return Err(format!("in-band error: {e}").into());
                    }
                    let first = chunk.choices.as_ref().and_then(|c| c.first());
                    if let Some(text) = first.and_then(|c| c.delta.as_ref()?.content.as_deref()) {
                        piece(text);
                    }
                }
            }
        }
        Ok(())
    }
}
