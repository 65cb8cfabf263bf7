//! Mock OpenAI-compatible upstream for benchmarks and manual runs:
//!
//! ```text
//! cargo run --release --example mock_upstream -- --listen 127.0.0.1:9000 --chunks 64 \
//!     --chunk-delay-ms 0 --first-token-delay-ms 0 [--answer TEXT] [--split-seed 7]
//! ```
//!
//! Prints `listening on http://ADDR` and serves until Ctrl-C (or killed); point a channel's
//! base URL at `http://ADDR/v1`. Any bearer key is accepted. The answer to a question is
//! `chatgate::mock_upstream::answer_for(question)` (what `examples/loadgen.rs` checks).
//! Delays cost one timer per stream, no task, so 10,000 slow streams are cheap.

use std::net::SocketAddr;
use std::time::Duration;

use chatgate::mock_upstream::{MockConfig, MockUpstream};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Mock OpenAI-compatible upstream")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Content pieces per answer (capped at the answer's char count).
    #[arg(long, default_value_t = 16)]
    chunks: usize,
    /// Delay between content pieces.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Delay before the first content piece.
    #[arg(long, default_value_t = 0)]
    first_token_delay_ms: u64,
    /// Fixed answer (default: an echo of the last user message plus filler).
    #[arg(long)]
    answer: Option<String>,
    /// Cut the SSE bytes at random offsets seeded by this, one body frame per cut.
    #[arg(long)]
    split_seed: Option<u64>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let config = MockConfig {
        chunks: args.chunks,
        chunk_delay: Duration::from_millis(args.chunk_delay_ms),
        first_token_delay: Duration::from_millis(args.first_token_delay_ms),
        answer: args.answer,
        split_seed: args.split_seed,
        // Nobody reads the requests back; a long benchmark would only pile them up.
        record: false,
        ..MockConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let mock = MockUpstream::start_on(listener, config).await?;
    println!("listening on http://{}", mock.addr());
    tokio::signal::ctrl_c().await?;
    mock.shutdown().await;
    Ok(())
}
