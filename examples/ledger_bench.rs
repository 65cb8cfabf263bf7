//! Chats per second with real holds and settlements, through the whole HTTP path.
//!
//! ```sh
//! cargo run --release --example ledger_bench -- [--postgres postgres://postgres@127.0.0.1:5432/test]
//!     [--mysql mysql://root@127.0.0.1:3306/test] [--concurrency 32] [--chats 1000] [--rounds 5]
//! ```
//!
//! Starts an in-process mock upstream (4 pieces, no delay) and the gateway on a fresh
//! SQLite file (and on a fresh database of each server given), registers funded users,
//! and runs rounds of `--chats` SSE chats with `--concurrency` clients. Every chat takes
//! a money hold, is settled (usage record, ledger entry, refund) and stored. Prints the
//! chats/s of each round and their median; the invariant is checked at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use chatgate::app::App;
use chatgate::config::{Channel, Config, ModelConfig};
use chatgate::mock_upstream::{MockConfig, MockUpstream};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser)]
struct Args {
    /// A PostgreSQL server to measure too (a fresh database is created on it).
    #[arg(long)]
    postgres: Option<String>,
    /// A MySQL/MariaDB server to measure too.
    #[arg(long)]
    mysql: Option<String>,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[arg(long, default_value_t = 1000)]
    chats: usize,
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let mock = MockUpstream::start(MockConfig {
        chunks: 4,
        ..MockConfig::default()
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let mut targets = vec![(
        "sqlite".to_string(),
        format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("bench.db").display()
        ),
    )];
    if let Some(url) = &args.postgres {
        targets.push(("postgres".into(), fresh_database(url).await?));
    }
    if let Some(url) = &args.mysql {
        targets.push(("mysql".into(), fresh_database(url).await?));
    }
    println!(
        "chats/s with hold + settlement, {} clients, {} chats per round, {} rounds",
        args.concurrency, args.chats, args.rounds
    );
    for (name, url) in targets {
        let rates = run(&args, &mock, &url).await?;
        let mut sorted = rates.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let rounds: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "{name:>9}: median {median:.0} chats/s (rounds: {})",
            rounds.join(", ")
        );
    }
    Ok(())
}

async fn run(args: &Args, mock: &MockUpstream, url: &str) -> Result<Vec<f64>, Error> {
    let config = Config {
        database_url: url.into(),
        admin_token: Some("bench-admin".into()),
        jwt_secret: Some("bench".into()),
        free_messages_per_day: 0,
        channels: vec![Channel {
            models: vec!["m".into()],
            ..Channel::new("mock", mock.base_url())
        }],
        models: [(
            "m".to_string(),
            ModelConfig {
                input_micros_per_million: 150_000,
                output_micros_per_million: 600_000,
                max_output_tokens: 256,
                ..ModelConfig::default()
            },
        )]
        .into(),
        ..Config::default()
    };
    let app = App::new(config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(chatgate::server::run(listener, Arc::clone(&app), async {
        let _ = stop_rx.await;
    }));
    let client = reqwest::Client::new();
    let mut tokens = Vec::new();
    for u in 0..args.concurrency {
        let body: Value = client
            .post(format!("{base}/api/auth/register"))
            .json(&json!({"username": format!("bench{u}"), "password": "secret123"}))
            .send()
            .await?
            .json()
            .await?;
        let id = body["user_id"].as_i64().ok_or("no user id")?;
        client
            .post(format!("{base}/admin/users/{id}/credit"))
            .bearer_auth("bench-admin")
            .json(&json!({"amount_micros": 1_000_000_000}))
            .send()
            .await?;
        tokens.push(body["token"].as_str().ok_or("no token")?.to_string());
    }
    let mut rates = Vec::new();
    for _ in 0..args.rounds {
        let left = Arc::new(AtomicUsize::new(args.chats));
        let started = Instant::now();
        let mut workers = Vec::new();
        for token in &tokens {
            let (client, base, token, left) = (
                client.clone(),
                base.clone(),
                token.clone(),
                Arc::clone(&left),
            );
            workers.push(tokio::spawn(async move {
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let resp = client
                        .post(format!("{base}/api/chat"))
                        .bearer_auth(&token)
                        .json(&json!({"message": "benchmark"}))
                        .send()
                        .await?;
                    let status = resp.status();
                    let body = resp.bytes().await?;
                    if !status.is_success() || !body.ends_with(b"data: [DONE]\n\n") {
                        return Err::<(), Error>(format!("chat failed: {status}").into());
                    }
                }
                Ok(())
            }));
        }
        for w in workers {
            w.await??;
        }
        rates.push(args.chats as f64 / started.elapsed().as_secs_f64());
    }
    let report: Value = client
        .get(format!("{base}/admin/check"))
        .bearer_auth("bench-admin")
        .send()
        .await?
        .json()
        .await?;
    if report["ok"] != true {
        return Err(format!("ledger invariant violated: {report}").into());
    }
    let _ = stop_tx.send(());
    server.await?;
    Ok(rates)
}

async fn fresh_database(admin_url: &str) -> Result<String, Error> {
    use sea_orm::ConnectionTrait;
    let name = format!("cg_bench_{}", uuid::Uuid::new_v4().simple());
    let db = sea_orm::Database::connect(admin_url).await?;
    db.execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await?;
    db.close().await?;
    let (base, _) = admin_url
        .rsplit_once('/')
        .ok_or("database URL without a name")?;
    Ok(format!("{base}/{name}"))
}
