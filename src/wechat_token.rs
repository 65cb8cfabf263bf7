//! WeChat `access_token`s, cached per app id: fetched from
//! `POST {api_base}/cgi-bin/stable_token` (`grant_type=client_credential`), kept until
//! shortly before `expires_in` runs out, and dropped by [`AccessTokens::invalidate`] when
//! an API call answers that the token is invalid or expired (errcode 40001, 40014, 42001;
//! see [`is_token_error`]).
//!
//! The stable token endpoint gives every replica the same token (the older
//! `cgi-bin/token` made each fetch invalidate the token the other replicas held). Only when
//! WeChat hands back the very token an API call just refused is a new one forced
//! (`force_refresh`, limited by WeChat per day): replicas never force each other in turn.
//!
//! One fetch at a time per app id: callers that find no valid token wait for the one
//! fetch in flight instead of each asking WeChat (each fetch invalidates the last token
//! after a few minutes, and the daily number of fetches is limited).
//!
//! Used by the Official Account's customer-service push; any other caller (the
//! mini-program's `msg_sec_check`) passes its own app id and secret.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("WeChat token API unreachable: {0}")]
    Unreachable(String),
    #[error("WeChat refused the token request: errcode {errcode}: {errmsg}")]
    Refused { errcode: i64, errmsg: String },
}

/// Whether a WeChat API `errcode` says the access token is invalid or expired.
pub fn is_token_error(errcode: i64) -> bool {
    matches!(errcode, 40001 | 40014 | 42001)
}

#[derive(Clone)]
struct Cached {
    token: String,
    /// Refresh from this instant on (a margin before WeChat's expiry).
    fresh_until: Instant,
}

/// The token cache of every app the gateway calls WeChat for.
#[derive(Default)]
pub struct AccessTokens {
    /// Per app id; the async lock makes one fetch at a time per app.
    apps: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

/// One app's token, and the last one an API call refused.
#[derive(Default)]
struct Slot {
    cached: Option<Cached>,
    refused: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TokenAnswer {
    access_token: Option<String>,
    expires_in: Option<u64>,
    errcode: i64,
    errmsg: String,
}

impl AccessTokens {
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&self, app_id: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(apps.entry(app_id.to_string()).or_default())
    }

    /// A valid token of `app_id`: the cached one, or a new one from WeChat.
    pub async fn get(
        &self,
        http: &reqwest::Client,
        api_base: &str,
        app_id: &str,
        secret: &str,
    ) -> Result<String, TokenError> {
        let slot = self.slot(app_id);
        let mut slot = slot.lock().await;
        if let Some(c) = slot.cached.as_ref()
            && Instant::now() < c.fresh_until
        {
            return Ok(c.token.clone());
        }
        let mut fetched = fetch(http, api_base, app_id, secret, false).await?;
        if slot.refused.as_deref() == Some(fetched.token.as_str()) {
            tracing::warn!(
                app_id,
                "WeChat handed back a refused access token: forcing a new one"
            );
            fetched = fetch(http, api_base, app_id, secret, true).await?;
        }
        let token = fetched.token.clone();
        slot.cached = Some(fetched);
        slot.refused = None;
        Ok(token)
    }

    /// Forgets `token` of `app_id` (an API said it is invalid), unless a newer one
    /// replaced it meanwhile.
    pub async fn invalidate(&self, app_id: &str, token: &str) {
        let slot = self.slot(app_id);
        let mut slot = slot.lock().await;
        if slot.cached.as_ref().is_some_and(|c| c.token == token) {
            slot.cached = None;
            slot.refused = Some(token.to_string());
        }
    }
}

/// Calls a WeChat API that takes an access token.
pub struct TokenCall<'a> {
    pub http: &'a reqwest::Client,
    pub api_base: &'a str,
    pub app_id: &'a str,
    pub secret: &'a str,
    /// From the API base, e.g. `/wxa/msg_sec_check`.
    pub path: &'a str,
    pub body: &'a serde_json::Value,
    pub timeout: Duration,
}

impl AccessTokens {
    /// POSTs `call.body` to `{api_base}{path}?access_token=…` with the app's token; when
    /// WeChat says the token is invalid or expired, drops it and tries once more with a
    /// fresh one. The answer's JSON, whatever its `errcode` (0 or absent = success), or
    /// why there is none.
    pub async fn post(&self, call: TokenCall<'_>) -> Result<serde_json::Value, String> {
        let url = format!("{}{}", call.api_base.trim_end_matches('/'), call.path);
        for attempt in 0..2 {
            let token = self
                .get(call.http, call.api_base, call.app_id, call.secret)
                .await
                .map_err(|e| e.to_string())?;
            let answer: serde_json::Value = call
                .http
                .post(&url)
                .query(&[("access_token", token.as_str())])
                .json(call.body)
                .timeout(call.timeout)
                .send()
                .await
                .map_err(|e| e.without_url().to_string())?
                .json()
                .await
                .map_err(|e| e.without_url().to_string())?;
            let errcode = answer["errcode"].as_i64().unwrap_or(0);
            if is_token_error(errcode) && attempt == 0 {
                self.invalidate(call.app_id, &token).await;
                continue;
            }
            return Ok(answer);
        }
        Err("access token refused twice".into())
    }
}

/// The `errcode` of a WeChat answer and its `errmsg`, when it is not a success.
pub fn api_error(answer: &serde_json::Value) -> Option<String> {
    match answer["errcode"].as_i64().unwrap_or(0) {
        0 => None,
        code => Some(format!(
            "errcode {code}: {}",
            answer["errmsg"].as_str().unwrap_or_default()
        )),
    }
}

async fn fetch(
    http: &reqwest::Client,
    api_base: &str,
    app_id: &str,
    secret: &str,
    force_refresh: bool,
) -> Result<Cached, TokenError> {
    let url = format!("{}/cgi-bin/stable_token", api_base.trim_end_matches('/'));
    let asked = Instant::now();
    let answer: TokenAnswer = http
        .post(&url)
        .json(&serde_json::json!({
            "grant_type": "client_credential",
            "appid": app_id,
            "secret": secret,
            "force_refresh": force_refresh,
        }))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| TokenError::Unreachable(e.without_url().to_string()))?
        .json()
        .await
        .map_err(|e| TokenError::Unreachable(e.without_url().to_string()))?;
    match answer.access_token.filter(|t| !t.is_empty()) {
        Some(token) if answer.errcode == 0 => {
            let expires_in = answer.expires_in.unwrap_or(7200);
            // Refresh 5 minutes early (WeChat keeps the old token valid that long
            // after a new one), or at half-life for short-lived tokens.
            let margin = (expires_in / 2).min(300);
            Ok(Cached {
                token,
                fresh_until: asked + Duration::from_secs(expires_in - margin),
            })
        }
        _ => Err(TokenError::Refused {
            errcode: answer.errcode,
            errmsg: answer.errmsg,
        }),
    }
}
