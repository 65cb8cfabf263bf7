//! Behind a real nginx (Debian's package) running the shipped site config
//! (`examples/deploy/nginx.conf`, with the TLS lines and the redirect taken out and the
//! replicas' addresses put in): answers still arrive frame by frame, before they are
//! complete; and, as an operator would run it, two replicas behind nginx against one
//! database (+ Redis when configured), an upstream pool with a dead channel and a
//! revoked key — users are served, the per-user limit holds across replicas, and
//! `/metrics` shows the failovers and the eviction.
//!
//! Skipped (with a message) when nginx is not installed; CI installs `nginx-light`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use chatgate::config::Config;
use chatgate::mock_upstream::{self, Fault, MockConfig, MockUpstream};
use common::{Gateway, RawClient, parse_mp, parse_sse};
use serde_json::{Value, json};

const NGINX: &str = "/usr/sbin/nginx";

/// nginx running the shipped site in front of `replicas`; stopped when dropped.
struct Nginx {
    child: std::process::Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // `-s stop` through the master, which takes its workers with it (a killed
        // master would leave them running).
        let p = self.dir.path().display().to_string();
        let _ = std::process::Command::new(NGINX)
            .args(["-p", &p, "-c", &format!("{p}/nginx.conf"), "-s", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_present() -> bool {
    if Path::new(NGINX).exists() {
        return true;
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "nginx: skipped ({NGINX} not installed; apt-get install nginx-light)"
    );
    false
}

/// The shipped site for a test: plain HTTP on `port`, the replicas as upstream servers.
fn site_for_test(port: u16, replicas: &[SocketAddr]) -> String {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/deploy/nginx.conf"),
    )
    .unwrap();
    // The HTTP→HTTPS redirect server is the last block; TLS needs certificates.
    let (main, _redirect) = shipped.rsplit_once("server {").unwrap();
    let mut out = String::new();
    for line in main.lines() {
        let t = line.trim_start();
        if t.starts_with("ssl_") {
            continue;
        } else if t.starts_with("listen 443") {
            out.push_str(&format!("    listen 127.0.0.1:{port};\n"));
        } else if t.starts_with("server 127.0.0.1:8080") {
            for r in replicas {
                out.push_str(&format!("    server {r};\n"));
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(
        out.contains("proxy_buffering off"),
        "the shipped site streams"
    );
    out
}

async fn start_nginx(replicas: &[SocketAddr]) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = dir.path().display();
    std::fs::write(dir.path().join("site.conf"), site_for_test(port, replicas)).unwrap();
    std::fs::write(
        dir.path().join("nginx.conf"),
        format!(
            "worker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n\
             fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
             include {p}/site.conf;\n}}\n"
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(NGINX)
        .args([
            "-p",
            &p.to_string(),
            "-c",
            &format!("{p}/nginx.conf"),
            "-g",
            "daemon off;",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Nginx { child, addr, dir };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "nginx did not start: {}",
        std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
    );
}

fn behind_nginx(c: &mut Config) {
    c.limits.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    c.default_model = Some("gpt-4o-mini".into());
}

async fn register(nginx: SocketAddr, name: &str) -> String {
    let (status, body) = common::call_json(
        nginx,
        "POST",
        "/api/auth/register",
        None,
        &json!({"username": name, "password": "secret123"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_string()
}

/// A mock upstream sending `chunks` pieces `delay_ms` apart, one gateway on it, and
/// nginx in front of the gateway.
async fn one_gateway_behind_nginx(chunks: usize, delay_ms: u64) -> (MockUpstream, Gateway, Nginx) {
    let mock = MockUpstream::start(MockConfig {
        chunks,
        chunk_delay: Duration::from_millis(delay_ms),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let gw = Gateway::start(|c| {
        behind_nginx(c);
        c.channels = vec![common::pool_channel("mock", mock.base_url(), &[], 0)];
    })
    .await;
    let nginx = start_nginx(&[gw.addr]).await;
    (mock, gw, nginx)
}

#[tokio::test]
async fn frames_arrive_through_nginx_before_the_answer_is_complete() {
    if !nginx_present() {
        return;
    }
    // 20 pieces, 100 ms apart: about 2 s from the first piece to the last.
    let (_mock, _gw, nginx) = one_gateway_behind_nginx(20, 100).await;
    let token = register(nginx.addr, "via-nginx").await;
    for (path, mp) in [("/api/chat?client=mp", true), ("/api/chat", false)] {
        let body = json!({"message": "stream me"}).to_string();
        let mut client =
            RawClient::send(nginx.addr, "POST", path, Some(&token), &[], body.as_bytes()).await;
        let started = Instant::now();
        let mut chunks = Vec::new();
        let mut arrivals = Vec::new();
        while let Some(chunk) = client.next_chunk().await {
            arrivals.push(started.elapsed());
            chunks.push(chunk);
        }
        let content = if mp {
            let parsed = parse_mp(&chunks);
            assert!(parsed.done.is_some() && parsed.terminal, "{path}");
            parsed.content
        } else {
            let all: Vec<u8> = chunks.concat();
            let parsed = parse_sse(&all);
            assert!(parsed.done.is_some(), "{path}");
            parsed.content
        };
        assert_eq!(content, mock_upstream::answer_for("stream me"), "{path}");
        // Unbuffered: many separate reads, spread over the answer's ~2 s, the first
        // long before the last.
        assert!(chunks.len() >= 10, "{path}: {} reads", chunks.len());
        let spread = *arrivals.last().unwrap() - arrivals[0];
        assert!(
            spread >= Duration::from_millis(1000),
            "{path}: all frames within {spread:?} — buffered?"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_behind_nginx_with_a_dead_channel_and_a_revoked_key() {
    if !nginx_present() {
        return;
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mock = MockUpstream::start(MockConfig {
        key_faults: HashMap::from([("k-revoked".to_string(), Fault::Status(401))]),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = match std::env::var("CHATGATE_TEST_POSTGRES_URL")
        .ok()
        .filter(|v| !v.is_empty())
    {
        Some(url) => common::fresh_database(&url).await,
        None => format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("shared.db").display()
        ),
    };
    let redis = std::env::var("CHATGATE_TEST_REDIS_URL")
        .ok()
        .filter(|v| !v.is_empty());
    let prefix = format!("cgtest:{}:", uuid::Uuid::new_v4().simple());
    let setup = |c: &mut Config| {
        behind_nginx(c);
        c.channels = vec![
            common::pool_channel("dead", format!("http://{closed}/v1"), &["k-dead"], 0),
            common::pool_channel("live", mock.base_url(), &["k-revoked", "k1", "k2"], 1),
        ];
        c.limits.user_chats_per_minute = 6;
        c.redis_url = redis.clone();
        c.redis_prefix = prefix.clone();
    };
    let a = Gateway::start_on(Some(db.clone()), setup).await;
    let b = Gateway::start_on(Some(db), setup).await;
    let nginx = start_nginx(&[a.addr, b.addr]).await;
    let token = register(nginx.addr, "operator-user").await;
    let started = Instant::now();
    let (mut served, mut limited) = (0, 0);
    for n in 0..10 {
        let message = format!("question {n}");
        let body = json!({ "message": message }).to_string();
        let resp = RawClient::send(
            nginx.addr,
            "POST",
            "/api/chat?client=mp",
            Some(&token),
            &[],
            body.as_bytes(),
        )
        .await
        .read_all()
        .await;
        let parsed = parse_mp(&resp.chunks);
        match parsed.error {
            None => {
                assert_eq!(parsed.content, mock_upstream::answer_for(&message));
                served += 1;
            }
            Some(err) => {
                assert_eq!(err["reason"], "rate_limited", "{err}");
                limited += 1;
            }
        }
    }
    let mut metrics = Vec::new();
    for gw in [&a, &b] {
        let token = gw.app.admin_token.clone();
        metrics.push(
            gw.raw("GET", "/metrics", Some(&token), &[], b"")
                .await
                .text(),
        );
    }
    let value = |text: &str, prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let failovers: f64 = metrics
        .iter()
        .map(|m| value(m, "chatgate_upstream_failovers_total{channel=\"dead\"}"))
        .sum();
    let evicted: f64 = metrics
        .iter()
        .map(|m| value(m, "chatgate_upstream_keys_revoked_total{channel=\"live\"}"))
        .sum();
    assert!(
        failovers >= served as f64,
        "{failovers} failovers for {served} answers"
    );
    assert!(evicted >= 1.0, "the revoked key shows in /metrics");
    // Each replica learns of the bad key once.
    let revoked_uses = mock
        .requests()
        .iter()
        .filter(|r| r.bearer() == Some("k-revoked"))
        .count();
    assert!(
        (1..=2).contains(&revoked_uses),
        "{revoked_uses} uses of the revoked key"
    );
    if redis.is_some() {
        // 6 a minute across both replicas (one more for each 10 s the loop took).
        let bound = 6 + (started.elapsed().as_secs() / 10) as usize;
        assert!(
            (6..=bound).contains(&served),
            "{served} served, {limited} limited: the limit holds across replicas"
        );
    } else {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "redis: skipped the shared-limit check (CHATGATE_TEST_REDIS_URL is not set)"
        );
        assert!(served >= 6);
    }
    a.assert_ledger_ok().await;
    let (_, check) = b.admin("GET", "/admin/check", &Value::Null).await;
    assert_eq!(check["ok"], true, "{check}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_client_works_through_nginx() {
    if !nginx_present() {
        return;
    }
    let node_ok = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_ok {
        eprintln!("skipped: node is not installed");
        return;
    }
    let (_mock, _gw, nginx) = one_gateway_behind_nginx(12, 20).await;
    let token = register(nginx.addr, "legacy-via-nginx").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/js/legacy_client.mjs");
    for n in 0..3 {
        let message = format!("legacy {n}");
        let port = nginx.addr.port().to_string();
        let args = [
            script,
            "127.0.0.1",
            &port,
            &token,
            &message,
            "per-chunk",
            "1",
        ]
        .map(String::from);
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("node")
                .args(args)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let state: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            state["text"],
            mock_upstream::answer_for(&message),
            "{state}"
        );
        assert_eq!(
            state["done"], true,
            "the terminal 0 reached the client alone: {state}"
        );
        assert!(state["error"].is_null(), "{state}");
    }
}
