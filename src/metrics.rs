//! Prometheus metrics (`GET /metrics`, admin only): requests by route and code, open
//! answers, time to first token and total time, upstream errors, failovers and revoked
//! keys by channel, WeChat Pay orders credited and notifications by outcome, and open
//! holds (read from the database at scrape time).
//!
//! The recorder is process-wide: every gateway in one process (tests) shares it.

use std::sync::OnceLock;

use entity::hold;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};

use crate::app::App;
use crate::error::AppError;
use crate::response::{self, Body};

pub const REQUESTS: &str = "chatgate_requests_total";
pub const OPEN_ANSWERS: &str = "chatgate_open_answers";
pub const FIRST_TOKEN: &str = "chatgate_first_token_seconds";
pub const ANSWER_TIME: &str = "chatgate_answer_seconds";
pub const UPSTREAM_ERRORS: &str = "chatgate_upstream_errors_total";
pub const FAILOVERS: &str = "chatgate_upstream_failovers_total";
pub const REVOKED_KEYS: &str = "chatgate_upstream_keys_revoked_total";
pub const PAY_CREDITED: &str = "chatgate_pay_orders_credited_total";
pub const PAY_NOTIFICATIONS: &str = "chatgate_pay_notifications_total";
/// Questions refused and answers cut by content safety, by what caught them.
pub const CONTENT_BLOCKED: &str = "chatgate_content_blocked_total";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder once per process.
pub fn install() {
    HANDLE.get_or_init(|| {
        let buckets = [
            0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
        ];
        match PrometheusBuilder::new()
            .set_buckets(&buckets)
            .and_then(PrometheusBuilder::install_recorder)
        {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        }
    });
}

/// `GET /metrics`.
pub async fn render(app: &App, req: Request<Incoming>) -> Result<Response<Body>, AppError> {
    crate::admin::authorize(app, &req)?;
    let mut text = HANDLE
        .get()
        .and_then(Option::as_ref)
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    let open_holds = hold::Entity::find()
        .filter(hold::Column::Status.eq(crate::ledger::holds::OPEN))
        .count(&app.db)
        .await?;
    text.push_str(&format!(
        "# TYPE chatgate_open_holds gauge\nchatgate_open_holds {open_holds}\n"
    ));
    Ok(response::with_content_type(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        response::full(text),
    ))
}

/// A route's name for labels: the pattern, never an id.
pub fn route_label(method: &http::Method, segments: &[&str]) -> &'static str {
    match (method.as_str(), segments) {
        ("POST", ["api", "chat"]) => "POST /api/chat",
        ("GET", ["api", "messages", _]) => "GET /api/messages/:id",
        ("GET", ["api", "messages", _, "stream"]) => "GET /api/messages/:id/stream",
        ("POST", ["api", "messages", _, "stop"]) => "POST /api/messages/:id/stop",
        ("POST", ["v1", "chat", "completions"]) => "POST /v1/chat/completions",
        ("GET", ["v1", "models"]) => "GET /v1/models",
        ("POST", ["api", "auth", _]) => "POST /api/auth/*",
        ("POST", ["api", "images"]) => "POST /api/images",
        ("POST", ["api", "pay", "orders"]) => "POST /api/pay/orders",
        ("GET", ["api", "pay", "orders", _]) => "GET /api/pay/orders/:id",
        (_, ["api", "pay", ..]) => "/api/pay",
        ("POST", ["pay", "wechat", "notify"]) => "POST /pay/wechat/notify",
        (_, ["api", "conversations", ..]) => "/api/conversations",
        (_, ["api", "keys", ..]) => "/api/keys",
        (_, ["api", ..]) => "/api/other",
        (_, ["admin", ..]) => "/admin",
        (_, ["files", _]) => "GET /files/:name",
        ("GET", ["healthz"]) => "GET /healthz",
        (_, ["wechat", "oa"]) => "/wechat/oa",
        ("GET", ["a", ..]) => "GET /a/:token",
        _ => "other",
    }
}
