//! The one application error type and its only mapping to the wire: the code table of
//! the API (`{code, msg, reason?}`), the HTTP status, and the in-band frames of both
//! streaming framings all come from here.

use bytes::BytesMut;
use http::StatusCode;
use sea_orm::DbErr;

use crate::chat::{frame_mp, frame_sse};

/// Why a request was refused with code 102.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    RateLimited,
    QuotaExhausted,
    ContentBlocked,
    InputTooLong,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::RateLimited => "rate_limited",
            Refusal::QuotaExhausted => "quota_exhausted",
            Refusal::ContentBlocked => "content_blocked",
            Refusal::InputTooLong => "input_too_long",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AppError {
    /// Not logged in, token invalid or expired (code -1).
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The balance cannot pay for a minimal answer (code 101).
    #[error("余额不足")]
    InsufficientBalance,
    /// Refused with a message (code 102).
    #[error("{msg}")]
    Refused {
        reason: Refusal,
        msg: String,
        retry_after_secs: Option<u64>,
    },
    /// Unknown model, message, conversation or route (code 404).
    #[error("{0}")]
    NotFound(&'static str),
    /// Invalid JSON, a missing field, a body too large, invalid UTF-8 (code 10001).
    #[error("{0}")]
    BadRequest(String),
    /// A username that is already taken (code 10001, HTTP 409).
    #[error("{0}")]
    Conflict(&'static str),
    /// Every upstream channel failed or timed out (code 11000).
    #[error("{msg}")]
    Upstream { timeout: bool, msg: String },
    /// The upstream refused the request itself (a 4xx other than a bad key, a timeout or
    /// a rate limit): the same request fails on every channel. Code 11000 like any
    /// upstream failure; `/v1` answers it as the client's bad request (400).
    #[error("{0}")]
    UpstreamRejected(String),
    /// Anything else (code 500). The detail is logged, never shown.
    #[error("服务器内部错误")]
    Internal(String),
}

impl AppError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        AppError::BadRequest(msg.into())
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        AppError::Internal(detail.to_string())
    }

    pub fn code(&self) -> i32 {
        match self {
            AppError::Unauthorized(_) => -1,
            AppError::InsufficientBalance => 101,
            AppError::Refused { .. } => 102,
            AppError::NotFound(_) => 404,
            AppError::BadRequest(_) | AppError::Conflict(_) => 10001,
            AppError::Upstream { .. } | AppError::UpstreamRejected(_) => 11000,
            AppError::Internal(_) => 500,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::InsufficientBalance => StatusCode::PAYMENT_REQUIRED,
            AppError::Refused { reason, .. } => match reason {
                Refusal::RateLimited | Refusal::QuotaExhausted => StatusCode::TOO_MANY_REQUESTS,
                Refusal::ContentBlocked => StatusCode::FORBIDDEN,
                Refusal::InputTooLong => StatusCode::PAYLOAD_TOO_LARGE,
            },
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Upstream { timeout: true, .. } => StatusCode::GATEWAY_TIMEOUT,
            AppError::Upstream { timeout: false, .. } | AppError::UpstreamRejected(_) => {
                StatusCode::BAD_GATEWAY
            }
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn reason(&self) -> Option<&'static str> {
        match self {
            AppError::Refused { reason, .. } => Some(reason.as_str()),
            _ => None,
        }
    }

    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            AppError::Refused {
                retry_after_secs, ..
            } => *retry_after_secs,
            _ => None,
        }
    }

    /// The human-readable message shown to the user (never a secret or a stack trace).
    pub fn msg(&self) -> String {
        self.to_string()
    }

    /// `{"code":…,"msg":…,"reason":…}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut body = serde_json::json!({ "code": self.code(), "msg": self.msg() });
        if let Some(reason) = self.reason() {
            body["reason"] = reason.into();
        }
        body
    }

    /// The in-band error frame of the mini-program framing.
    pub fn write_mp_frame(&self, out: &mut BytesMut) {
        frame_mp::write_error(out, self.code(), &self.msg(), self.reason());
    }

    /// The in-band error event of the SSE framing (followed by `data: [DONE]`).
    pub fn write_sse_frame(&self, out: &mut BytesMut) {
        frame_sse::write_error(out, self.code(), &self.msg(), self.reason());
    }

    /// Logs internal errors once, where they are turned into a response.
    pub fn log(&self) {
        if let AppError::Internal(detail) = self {
            tracing::error!(%detail, "internal error");
        }
    }
}

impl From<DbErr> for AppError {
    fn from(e: DbErr) -> Self {
        AppError::Internal(format!("database: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_the_code_table() {
        let cases: Vec<(AppError, i32, u16)> = vec![
            (AppError::Unauthorized("x"), -1, 401),
            (AppError::InsufficientBalance, 101, 402),
            (
                AppError::Refused {
                    reason: Refusal::RateLimited,
                    msg: "x".into(),
                    retry_after_secs: Some(1),
                },
                102,
                429,
            ),
            (
                AppError::Refused {
                    reason: Refusal::ContentBlocked,
                    msg: "x".into(),
                    retry_after_secs: None,
                },
                102,
                403,
            ),
            (
                AppError::Refused {
                    reason: Refusal::InputTooLong,
                    msg: "x".into(),
                    retry_after_secs: None,
                },
                102,
                413,
            ),
            (AppError::NotFound("x"), 404, 404),
            (AppError::bad_request("x"), 10001, 400),
            (
                AppError::Upstream {
                    timeout: false,
                    msg: "x".into(),
                },
                11000,
                502,
            ),
            (
                AppError::Upstream {
                    timeout: true,
                    msg: "x".into(),
                },
                11000,
                504,
            ),
            (AppError::UpstreamRejected("x".into()), 11000, 502),
            (AppError::internal("secret detail"), 500, 500),
        ];
        for (err, code, status) in cases {
            assert_eq!(err.code(), code, "{err:?}");
            assert_eq!(err.status().as_u16(), status, "{err:?}");
            assert_eq!(err.to_json()["code"], code);
        }
        assert!(!AppError::internal("secret detail").msg().contains("secret"));
        assert_eq!(
            AppError::Refused {
                reason: Refusal::QuotaExhausted,
                msg: "x".into(),
                retry_after_secs: None
            }
            .to_json()["reason"],
            "quota_exhausted"
        );
    }
}
