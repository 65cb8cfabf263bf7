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

/// Serves `listener` on the current runtime until `shutdown` completes, then shuts down
/// gracefully (tests, and `threads = 1`).
pub async fn run(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let connections = Arc::new(Semaphore::new(app.config.limits.max_connections));
    let graceful = GracefulShutdown::new();
    let background = Background::start(&app);
    accept_loop(listener, &app, &connections, &graceful, shutdown).await;
    // Open connections finish the response in flight and take no new request.
    let connections_closed = tokio::spawn(graceful.shutdown());
    drain(&app, async {
        let _ = connections_closed.await;
    })
    .await;
    background.stop();
}

/// PostgreSQL connections the event loops keep for their scripts, all loops together
/// (between 2 and 16 each; see [`crate::db::trip`]), beside the shared pool's 32.
const KEPT_DB_CONNECTIONS: usize = 32;

/// Serves on one event loop per listener, each a single-threaded runtime on a thread of
/// its own accepting on its own socket (`SO_REUSEPORT`: the kernel spreads connections).
/// A connection, its handler and the answers it starts stay on their thread: nothing is
/// handed between threads per chunk, and no idle worker is woken to steal work, which is
/// what a work-stealing runtime spends much of its time on when streams trickle. The
/// calling runtime keeps the background work and the shutdown.
pub async fn run_per_thread(
    listeners: Vec<std::net::TcpListener>,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) {
    let connections = Arc::new(Semaphore::new(app.config.limits.max_connections));
    let background = Background::start(&app);
    let stop_accepting = tokio_util::sync::CancellationToken::new();
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::channel::<()>(listeners.len().max(1));
    let mut threads = Vec::new();
    let loops = listeners.len();
    for (index, listener) in listeners.into_iter().enumerate() {
        let app = Arc::clone(&app);
        let connections = Arc::clone(&connections);
        let stop_accepting = stop_accepting.clone();
        let closed = closed_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("chatgate-{index}"))
            .spawn(move || {
                event_loop(
                    index,
                    loops,
                    listener,
                    app,
                    connections,
                    stop_accepting,
                    closed,
                )
            });
        match thread {
            Ok(thread) => threads.push(thread),
            Err(e) => tracing::error!(error = %e, "cannot start an event loop thread"),
        }
    }
    drop(closed_tx);
    shutdown.await;
    stop_accepting.cancel();
    drain(&app, async { while closed_rx.recv().await.is_some() {} }).await;
    background.stop();
    let _ = tokio::task::spawn_blocking(move || {
        for thread in threads {
            let _ = thread.join();
        }
    })
    .await;
}

/// One thread of [`run_per_thread`]: its own single-threaded runtime accepts on
/// `listener` until `stop_accepting`, reports on `closed` once its connections are done,
/// and keeps running its answers and connections until the gateway stops.
fn event_loop(
    index: usize,
    loops: usize,
    listener: std::net::TcpListener,
    app: Arc<App>,
    connections: Arc<Semaphore>,
    stop_accepting: tokio_util::sync::CancellationToken,
    closed: tokio::sync::mpsc::Sender<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start an event loop");
            return;
        }
    };
    crate::upstream::set_thread_slot(index);
    crate::db::trip::keep_connections_here(
        &app.db,
        (KEPT_DB_CONNECTIONS / loops.max(1)).clamp(2, 16),
    );
    runtime.block_on(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(error = %e, "cannot use a listening socket");
                return;
            }
        };
        let graceful = GracefulShutdown::new();
        let stop = stop_accepting.cancelled();
        accept_loop(listener, &app, &connections, &graceful, stop).await;
        tokio::spawn(async move {
            graceful.shutdown().await;
            let _ = closed.send(()).await;
        });
        // The answers and connections of this thread run until the gateway has stored
        // every answer.
        app.shutdown.cancelled().await;
        crate::db::trip::close_kept_connections().await;
    });
}

/// Listening sockets for [`run_per_thread`]: `count` sockets on `addr` (the first one
/// picks the port when `addr` has port 0), each with `SO_REUSEPORT`.
pub fn bind_per_thread(
    addr: std::net::SocketAddr,
    count: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Socket, Type};
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        #[cfg(unix)]
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// The loops that run beside the server: the sweep and the answer flush.
struct Background {
    sweeper: tokio::task::JoinHandle<()>,
    flusher: tokio::task::JoinHandle<()>,
}

impl Background {
    fn start(app: &Arc<App>) -> Self {
        Self {
            sweeper: tokio::spawn(crate::sweep::run(Arc::clone(app))),
            flusher: tokio::spawn(crate::chat::flush::run(Arc::clone(app))),
        }
    }

    fn stop(self) {
        self.sweeper.abort();
        self.flusher.abort();
        tracing::info!("stopped");
    }
}

/// Accepts connections on `listener` and serves each on a task of its own until `stop`.
async fn accept_loop(
    listener: TcpListener,
    app: &Arc<App>,
    connections: &Arc<Semaphore>,
    graceful: &GracefulShutdown,
    stop: impl Future<Output = ()>,
) {
    let limits = &app.config.limits;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_read_timeout_secs))
        .keep_alive(true);
    tokio::pin!(stop);
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
            _ = &mut stop => break,
        };
        let Ok(permit) = Arc::clone(connections).try_acquire_owned() else {
            tracing::warn!(%peer, "too many open connections; refusing one");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(app);
        let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ClientAddr(peer));
            let app = Arc::clone(&app);
            // hyper keeps the room for this future as long as the connection lives, also
            // while a streamed answer is being written long after the handler returned:
            // the handler itself (~1.5 KB, with its route's future boxed inside it) lives on
            // the heap only while it runs.
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
}

/// After accepting stopped: lets open answers finish and be stored within the grace
/// period, stops what is left, waits (a bounded time) for `connections_closed`, then
/// tells every loop to end.
async fn drain(app: &App, connections_closed: impl Future<Output = ()>) {
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
}
