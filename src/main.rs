//! The `chatgate` binary: config → tracing → database → bind → serve until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use chatgate::app::App;
use chatgate::config::{Config, ProcessEnv};
use clap::Parser;

/// A gateway that sells ChatGPT-style chat inside WeChat mini-programs, H5 pages and
/// API clients.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The TOML configuration file (also CHATGATE_CONFIG). Without one, defaults apply.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// The main thread's runtime keeps the background work (sweep, flush, shutdown); the
/// connections are served by the event-loop threads of `server::run_per_thread`.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = match Config::load(args.config.as_deref(), &ProcessEnv) {
        Ok(config) => config,
        Err(e) => return fail(&format!("bad configuration: {e}")),
    };
    let addr = match config.listen_addr() {
        Ok(addr) => addr,
        Err(e) => return fail(&format!("bad configuration: {e}")),
    };
    let app = match App::new(config).await {
        Ok(app) => app,
        Err(e) => return fail(&format!("cannot start: {e}")),
    };
    let threads = app.config.event_loop_threads();
    let listeners = match chatgate::server::bind_per_thread(addr, threads) {
        Ok(listeners) => listeners,
        Err(e) => return fail(&format!("cannot listen on {addr}: {e}")),
    };
    let bound = listeners
        .first()
        .and_then(|l| l.local_addr().ok())
        .unwrap_or(addr);
    tracing::info!(threads, "listening on http://{bound}");
    banner(&app, bound);
    chatgate::server::run_per_thread(listeners, app, shutdown_signal()).await;
    ExitCode::SUCCESS
}

/// One clear line on stderr and a non-zero exit.
fn fail(message: &str) -> ExitCode {
    eprintln!("chatgate: {message}");
    ExitCode::FAILURE
}

fn banner(app: &App, addr: std::net::SocketAddr) {
    let url = format!("http://{addr}");
    let model = app.config.default_model();
    let upstream = if app.config.demo_mode() {
        "none configured: the built-in demo model answers (set CHATGATE_UPSTREAM_BASE_URL and CHATGATE_UPSTREAM_API_KEYS for a real one)".to_string()
    } else {
        let names: Vec<&str> = app
            .config
            .channels
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        format!("channels {}", names.join(", "))
    };
    let admin = if app.admin_token_generated {
        format!(
            "{} (generated and stored in the database; set CHATGATE_ADMIN_TOKEN to choose one)",
            app.admin_token
        )
    } else {
        "from the configuration".to_string()
    };
    tracing::info!(
        "\n  chatgate is running at {url}\n  \
         open {url}/ in a browser, or register with:\n    \
         curl -s {url}/api/auth/register -H 'Content-Type: application/json' -d '{{\"username\":\"alice\",\"password\":\"secret123\"}}'\n  \
         default model: {model}; upstream: {upstream}\n  \
         admin token: {admin}"
    );
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown requested");
}
