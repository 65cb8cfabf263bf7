//! The accept loop: one hyper HTTP/1.1 connection task per client, a cap on open
//! connections, a header read timeout against slow clients, and graceful shutdown —
//! stop accepting, let open answers finish and be stored within a grace period, then
//! stop what is left (which is stored and billed as stopped).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::app::App;

/// The TCP peer of a request, put in its extensions by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// The client's address (through trusted proxies), put in a request's extensions by
/// the router.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub std::net::IpAddr);

/// Serves `listener` until `shutdown` completes, then shuts down gracefully.
pub async fn run(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let limits = &app.config.limits;
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_read_timeout_secs))
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let sweeper = tokio::spawn(crate::sweep::run(Arc::clone(&app)));
    let flusher = tokio::spawn(crate::chat::flush::run(Arc::clone(&app)));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::warn!(%peer, "too many open connections; refusing one");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(&app);
        let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ClientAddr(peer));
            let app = Arc::clone(&app);
            // hyper keeps the room for this future as long as the connection lives, also
            // while a streamed answer is being written long after the handler returned:
            // the handler itself (several KB: the largest of all routes) lives on the heap
            // only while it runs.
            async move {
                let handler = Box::pin(crate::router::handle(app, req));
                Ok::<_, std::convert::Infallible>(handler.await)
            }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    // Open connections finish the response in flight and take no new request.
    let connections_closed = tokio::spawn(graceful.shutdown());
    let grace = Duration::from_secs(app.config.shutdown_grace_secs);
    tracing::info!(
        answers = app.answers.len(),
        grace_secs = grace.as_secs(),
        "shutting down: letting open answers finish"
    );
    app.tasks.close();
    if tokio::time::timeout(grace, app.tasks.wait()).await.is_err() {
        tracing::warn!(
            answers = app.answers.len(),
            "grace period over: stopping the answers left"
        );
        app.answers.stop_all();
        let _ = tokio::time::timeout(Duration::from_secs(10), app.tasks.wait()).await;
    }
    // Answers are stored; connections still streaming them end by themselves now.
    let _ = tokio::time::timeout(Duration::from_secs(5), connections_closed).await;
    app.shutdown.cancel();
    sweeper.abort();
    flusher.abort();
    tracing::info!("stopped");
}
