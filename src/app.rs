//! The shared state of a running gateway, built once at start-up from the config.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::TokenKeys;
use crate::chat::answer::AnswerRegistry;
use crate::config::Config;
use crate::upstream::Upstream;

pub struct App {
    pub config: Config,
    pub db: DatabaseConnection,
    pub tokens: TokenKeys,
    pub admin_token: String,
    /// Whether the admin token was generated (and stored) rather than configured.
    pub admin_token_generated: bool,
    pub upstream: Upstream,
    /// Rate limits and caps on open answers.
    pub limiter: crate::limits::Limiter,
    /// Words refused in questions and cut from answers.
    pub words: crate::safety::WordList,
    /// For calls to WeChat's APIs (and WeChat Pay's).
    pub http: reqwest::Client,
    /// WeChat Pay API v3 with its keys; `None` when `[wechat_pay]` is not configured.
    pub pay: Option<crate::pay::WechatPay>,
    /// WeChat access tokens, per app id (Official Account push, …).
    pub wechat_tokens: crate::wechat_token::AccessTokens,
    /// Answers streaming in this process.
    pub answers: AnswerRegistry,
    /// Every answer task, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Cancelled when the gateway stops; background loops end with it.
    pub shutdown: CancellationToken,
}

/// Why the gateway could not start. Displayed as one line.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("database {url}: {source}")]
    Database { url: String, source: sea_orm::DbErr },
    #[error("{0}")]
    Other(String),
}

impl App {
    /// Connects the database (applying migrations), loads or generates the secrets and
    /// builds the upstream pool.
    pub async fn new(config: Config) -> Result<Arc<Self>, StartError> {
        let db_err = |source| StartError::Database {
            url: redact(&config.database_url),
            source,
        };
        let db = crate::db::connect(&config.database_url)
            .await
            .map_err(db_err)?;
        let jwt_secret = match &config.jwt_secret {
            Some(secret) => secret.clone(),
            None => {
                crate::db::setting_or_insert(&db, "jwt_secret", random_secret)
                    .await
                    .map_err(db_err)?
                    .0
            }
        };
        let admin_token_generated = config.admin_token.is_none();
        let admin_token = match &config.admin_token {
            Some(token) => token.clone(),
            None => {
                crate::db::setting_or_insert(&db, "admin_token", random_secret)
                    .await
                    .map_err(db_err)?
                    .0
            }
        };
        let upstream = Upstream::new(&config).map_err(StartError::Other)?;
        let words = config
            .safety
            .all_words()
            .and_then(|w| crate::safety::WordList::new(&w))
            .map_err(StartError::Other)?;
        let mut limiter = crate::limits::Limiter::new(&config.limits);
        if let Some(url) = &config.redis_url {
            limiter = limiter.share(
                crate::limits::SharedLimits::new(url, &config.redis_prefix)
                    .map_err(StartError::Other)?,
            );
        }
        // Configs built in code (tests, embedders) skip `Config::load`'s validation.
        config
            .validate_pay()
            .map_err(|e| StartError::Other(e.to_string()))?;
        let pay = match &config.wechat_pay {
            Some(pay) => Some(
                crate::pay::WechatPay::load(pay, &config.wechat.pay_api_base)
                    .map_err(StartError::Other)?,
            ),
            None => None,
        };
        crate::metrics::install();
        crate::response::set_body_read_timeout(Duration::from_secs(
            config.limits.body_read_timeout_secs,
        ));
        // Loading the tokenizer takes a moment; do it before the first question.
        tokio::task::spawn_blocking(crate::tokens::warm_up);
        Ok(Arc::new(Self {
            tokens: TokenKeys::new(jwt_secret.as_bytes(), config.jwt_ttl_secs),
            admin_token,
            admin_token_generated,
            upstream,
            limiter,
            words,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| StartError::Other(e.to_string()))?,
            pay,
            wechat_tokens: crate::wechat_token::AccessTokens::new(),
            answers: AnswerRegistry::default(),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            db,
            config,
        }))
    }

    /// Runs `work` on the server's tracker (shutdown waits for it), in the span of the
    /// request that started it, so its log lines carry that request's id.
    pub fn spawn<F>(&self, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        use tracing::Instrument;
        self.tasks.spawn(work.instrument(tracing::Span::current()));
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs_f64(self.config.heartbeat_secs)
    }
}

/// 64 hex digits from the OS's random source.
fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A database URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}://{}:***@{}", &url[..scheme_end], user, &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            super::redact("postgres://u:pw@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(
            super::redact("sqlite://x.db?mode=rwc"),
            "sqlite://x.db?mode=rwc"
        );
    }
}
