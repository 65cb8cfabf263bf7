//! Method + path → handler, in one table; and what every response gets on its way
//! out (request id, CORS).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, HeaderValue,
};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tracing::Instrument;

use crate::admin;
use crate::app::App;
use crate::auth::handlers as auth;
use crate::chat::handlers as chat;
use crate::error::AppError;
use crate::limits;
use crate::response::{self, Body};
use crate::server::{ClientAddr, ClientIp};

/// A route's future, on the heap.
type Routed<'a> = Pin<Box<dyn Future<Output = Result<Response<Body>, AppError>> + Send + 'a>>;

/// Handles one request: routes it and decorates the response.
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let request_id = request_id(&req);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = tracing::info_span!("request", id = %request_id, %method, %path);
    let mut resp = route(&app, req, &method, &path)
        .instrument(span.clone())
        .await;
    tracing::debug!(parent: &span, status = resp.status().as_u16(), "response");
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("x-request-id", v);
    }
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(
        ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("X-Conversation-Id, X-Message-Id, X-Request-Id, Retry-After"),
    );
    resp
}

async fn route(
    app: &Arc<App>,
    mut req: Request<Incoming>,
    method: &Method,
    path: &str,
) -> Response<Body> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ip = match req.extensions().get::<ClientAddr>() {
        Some(peer) => limits::client_ip(
            peer.0.ip(),
            req.headers(),
            &app.config.limits.trusted_proxies,
        ),
        None => std::net::IpAddr::from([0, 0, 0, 0]),
    };
    req.extensions_mut().insert(ClientIp(ip));
    // Every API request counts against the client's address; the health check and the
    // page's static files (no database, no upstream) do not, so loading the page is free.
    let counted = *method != Method::OPTIONS
        && matches!(
            segments.first(),
            Some(&("api" | "v1" | "admin" | "files" | "a"))
        );
    if counted && let Err(err) = app.limiter.check_ip(ip).await {
        return refuse(&req, &segments, &err);
    }
    // Each route's future is boxed on its own: the request's future is then the size of
    // its own route's, not of the largest of all (they differ by kilobytes, and a chat
    // waiting for its hold keeps its future through the wait).
    let routed: Routed<'_> = match (method, segments.as_slice()) {
        (&Method::OPTIONS, _) => Box::pin(async move { Ok(preflight()) }),
        (&Method::GET, ["healthz"]) => Box::pin(async move {
            Ok(response::with_content_type(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                response::full("ok"),
            ))
        }),
        (&Method::POST, ["api", "auth", "register"]) => {
            Box::pin(async move { auth::register(app, req).await })
        }
        (&Method::POST, ["api", "auth", "login"]) => {
            Box::pin(async move { auth::login(app, req).await })
        }
        (&Method::POST, ["api", "auth", "guest"]) => {
            Box::pin(async move { auth::guest(app, req).await })
        }
        (&Method::POST, ["api", "auth", "wechat"]) => {
            Box::pin(async move { crate::auth::wechat::login(app, req).await })
        }
        (&Method::GET, ["api", "me"]) => Box::pin(async move { auth::me(app, req).await }),
        (&Method::POST, ["api", "redeem"]) => Box::pin(async move { auth::redeem(app, req).await }),
        (&Method::POST, ["api", "chat"]) => Box::pin(async move { Ok(chat::chat(app, req).await) }),
        (&Method::GET, ["api", "messages", id]) => {
            Box::pin(async move { chat::get_message(app, req, id).await })
        }
        (&Method::GET, ["api", "messages", id, "stream"]) => {
            Box::pin(async move { Ok(chat::stream_message(app, req, id).await) })
        }
        (&Method::POST, ["api", "messages", id, "stop"]) => {
            Box::pin(async move { chat::stop_message(app, req, id).await })
        }
        (&Method::GET, ["api", "conversations"]) => {
            Box::pin(async move { chat::list_conversations(app, req).await })
        }
        (&Method::GET, ["api", "conversations", id]) => {
            Box::pin(async move { chat::get_conversation(app, req, id).await })
        }
        (&Method::DELETE, ["api", "conversations", id]) => {
            Box::pin(async move { chat::delete_conversation(app, req, id).await })
        }
        (&Method::GET, ["api", "pay", "packages"]) => {
            Box::pin(async move { crate::pay::handlers::packages(app).await })
        }
        (&Method::POST, ["api", "pay", "orders"]) => {
            Box::pin(async move { crate::pay::handlers::create_order(app, req).await })
        }
        (&Method::GET, ["api", "pay", "orders", id]) => {
            Box::pin(async move { crate::pay::handlers::get_order(app, req, id).await })
        }
        (&Method::POST, ["pay", "wechat", "notify"]) => {
            Box::pin(async move { Ok(crate::pay::handlers::notify(app, req).await) })
        }
        (&Method::POST, ["api", "images"]) => {
            Box::pin(async move { crate::images::generate(app, req).await })
        }
        (&Method::GET, ["files", name]) => {
            Box::pin(async move { crate::images::serve(app, name).await })
        }
        (&Method::POST, ["api", "keys"]) => {
            Box::pin(async move { crate::auth::api_keys::create(app, req).await })
        }
        (&Method::GET, ["api", "keys"]) => {
            Box::pin(async move { crate::auth::api_keys::list(app, req).await })
        }
        (&Method::DELETE, ["api", "keys", id]) => {
            Box::pin(async move { crate::auth::api_keys::revoke(app, req, id).await })
        }
        (&Method::GET, ["v1", "models"]) => {
            Box::pin(async move { Ok(crate::openai_api::models(app, req).await) })
        }
        (&Method::POST, ["v1", "chat", "completions"]) => {
            Box::pin(async move { Ok(crate::openai_api::chat_completions(app, req).await) })
        }
        (&Method::POST, ["admin", "users", id, "credit"]) => {
            Box::pin(async move { admin::credit(app, req, id).await })
        }
        (&Method::GET, ["admin", "users", id]) => {
            Box::pin(async move { admin::user(app, req, id).await })
        }
        (&Method::POST, ["admin", "redeem-codes"]) => {
            Box::pin(async move { admin::mint_codes(app, req).await })
        }
        (&Method::GET, ["admin", "check"]) => Box::pin(async move { admin::check(app, req).await }),
        (&Method::GET, ["admin", "channels"]) => {
            Box::pin(async move { admin::channels(app, req).await })
        }
        (&Method::GET, ["wechat", "oa"]) => {
            Box::pin(async move { crate::wechat_oa::verify(app, req).await })
        }
        (&Method::POST, ["wechat", "oa"]) => {
            Box::pin(async move { crate::wechat_oa::receive(app, req).await })
        }
        (&Method::GET, ["a", "h", token]) => {
            Box::pin(async move { crate::wechat_oa::page::history(app, token).await })
        }
        (&Method::GET, ["a", token]) => {
            Box::pin(async move { crate::wechat_oa::page::answer(app, token).await })
        }
        (&Method::GET, ["metrics"]) => {
            Box::pin(async move { crate::metrics::render(app, req).await })
        }
        (&Method::GET | &Method::HEAD, _) => {
            Box::pin(async move { crate::web::serve(path).ok_or(AppError::NotFound("接口不存在")) })
        }
        _ => Box::pin(async move { Err(AppError::NotFound("接口不存在")) }),
    };
    let result = routed.await;
    let resp = result.unwrap_or_else(|err| response::error(&err));
    metrics::counter!(
        crate::metrics::REQUESTS,
        "route" => crate::metrics::route_label(method, &segments),
        "status" => resp.status().as_str().to_owned(),
    )
    .increment(1);
    resp
}

/// A refusal before routing, in the shape the endpoint's clients read.
fn refuse(req: &Request<Incoming>, segments: &[&str], err: &AppError) -> Response<Body> {
    match segments {
        ["v1", ..] => crate::openai_api::error(err),
        ["api", "chat"] | ["api", "messages", _, "stream"] => {
            crate::chat::Framing::of(req.uri(), req.headers()).error_response(err)
        }
        _ => response::error(err),
    }
}

/// The answer to a CORS preflight: any origin may call the API with a bearer token.
fn preflight() -> Response<Body> {
    let mut resp = Response::new(response::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
    );
    h.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, X-Client, X-Request-Id"),
    );
    h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    resp
}

/// The caller's `X-Request-Id` when it is short and printable, else a new one.
fn request_id(req: &Request<Incoming>) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(String::from)
        .unwrap_or_else(crate::chat::store::random_id)
}
