//! The response body type and small builders shared by every handler: JSON, errors,
//! empty responses, streaming bodies, and reading a request body under a cap.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::Stream;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use serde::Serialize;

use crate::error::AppError;

/// Every response body: whole or streamed, never failing once started.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().boxed_unsync()
}

/// A body that sends each item of `stream` as one HTTP chunk.
pub fn stream<S>(stream: S) -> Body
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    use futures_util::StreamExt;
    StreamBody::new(stream.map(|b| Ok::<_, Infallible>(Frame::data(b)))).boxed_unsync()
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => with_content_type(status, "application/json", full(bytes)),
        Err(e) => error(&AppError::internal(e)),
    }
}

pub fn ok_json<T: Serialize>(value: &T) -> Response<Body> {
    json(StatusCode::OK, value)
}

pub fn with_content_type(
    status: StatusCode,
    content_type: &'static str,
    body: Body,
) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A JSON error response `{code,msg,reason?}` with the error's HTTP status.
pub fn error(err: &AppError) -> Response<Body> {
    err.log();
    let mut resp = json(err.status(), &err.to_json());
    if let Some(secs) = err.retry_after_secs() {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// Reads the whole request body, refusing more than `max` bytes.
/// How long a request body may take to arrive (a client trickling its body is cut
/// off like one trickling its headers). Set once at start-up from
/// `limits.body_read_timeout_secs`; process-wide, as the body readers have no config.
static BODY_READ_TIMEOUT_MS: AtomicU64 = AtomicU64::new(30_000);

pub fn set_body_read_timeout(timeout: std::time::Duration) {
    BODY_READ_TIMEOUT_MS.store(timeout.as_millis() as u64, Ordering::Relaxed);
}

pub async fn read_body(body: Incoming, max: usize) -> Result<Bytes, AppError> {
    let timeout = std::time::Duration::from_millis(BODY_READ_TIMEOUT_MS.load(Ordering::Relaxed));
    let Ok(collected) = tokio::time::timeout(timeout, Limited::new(body, max).collect()).await
    else {
        return Err(AppError::bad_request("请求体发送超时"));
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(AppError::bad_request(
            format!("请求体过大（上限 {max} 字节）"),
        )),
        Err(_) => Err(AppError::bad_request("请求体读取失败")),
    }
}

/// Reads a JSON body into `T`: invalid UTF-8, invalid JSON and missing fields are 10001.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    body: Incoming,
    max: usize,
) -> Result<T, AppError> {
    let bytes = read_body(body, max).await?;
    parse_json(&bytes)
}

pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    if std::str::from_utf8(bytes).is_err() {
        return Err(AppError::bad_request("请求体不是有效的 UTF-8"));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let what = if e.is_data() {
            "字段缺失或类型错误"
        } else {
            "JSON 格式错误"
        };
        AppError::BadRequest(format!("{what}: {e}"))
    })
}
