//! Typed configuration: a TOML file plus `CHATGATE_*` environment variables, validated
//! once at start-up.
//!
//! The environment is read through the [`Env`] trait so tests can back it with a map
//! instead of mutating the process environment. An environment variable overrides the
//! file's key of the same meaning. With no file and no variables the defaults give a
//! working gateway: SQLite in the working directory and the built-in demo model.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The name of the built-in model that answers when no upstream is configured.
pub const DEMO_MODEL: &str = "demo";

/// Where configuration values come from besides the file.
pub trait Env {
    fn var(&self, key: &str) -> Option<String>;
}

/// The real process environment. Empty values count as unset.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).filter(|v| !v.is_empty()).cloned()
    }
}

/// Why the configuration was refused. Displayed as one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// The most event-loop threads `threads` may ask for (each has a runtime, a listening
/// socket and its own upstream clients).
pub const MAX_THREADS: usize = 256;

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: String,
    pub database_url: String,
    /// Free questions per user per day, used before money; 0 = none.
    pub free_messages_per_day: u32,
    /// An unsettled hold older than this is settled or released.
    pub hold_ttl_secs: u64,
    /// The system prompt put in front of every conversation (empty = none).
    pub system_prompt: String,
    /// The model used when a request names none.
    pub default_model: Option<String>,
    pub jwt_secret: Option<String>,
    /// How long a login token stays valid.
    pub jwt_ttl_secs: u64,
    pub admin_token: Option<String>,
    pub redis_url: Option<String>,
    /// Prefix of every key the gateway writes to Redis (replicas of one deployment
    /// share it; deployments sharing a Redis use different ones).
    pub redis_prefix: String,
    /// Seconds between heartbeats while a client waits for the next token.
    pub heartbeat_secs: f64,
    /// How long answers in flight may take to finish when the gateway is asked to stop.
    pub shutdown_grace_secs: u64,
    /// Event-loop threads serving connections, each a runtime of its own with its own
    /// listening socket; 0: one per CPU core.
    pub threads: usize,
    /// Seconds between flushes of a growing answer to the database.
    pub answer_flush_secs: f64,
    /// Milliseconds between the pieces of the demo model's canned answer.
    pub demo_chunk_delay_ms: u64,
    /// The UTC offset whose midnight starts a new day of free messages (`+08:00`).
    pub timezone: String,
    /// Seconds between housekeeping runs (abandoned holds and answers).
    pub sweep_interval_secs: f64,
    /// Guest accounts one client address may create per day.
    pub guests_per_ip_per_day: u32,
    pub limits: Limits,
    pub upstream: UpstreamTimeouts,
    pub channels: Vec<Channel>,
    pub models: BTreeMap<String, ModelConfig>,
    pub wechat: WechatConfig,
    /// WeChat Pay API v3; online recharge is off without it.
    pub wechat_pay: Option<WechatPayConfig>,
    /// The gateway's public base URL (`https://chat.example.com`), for links sent to
    /// users (the Official Account's `/a/{token}`). Unset: taken from each request's
    /// `Host` (and `X-Forwarded-Proto`) header.
    pub public_url: Option<String>,
    pub images: ImagesConfig,
    pub safety: SafetyConfig,
    /// What `GET /api/pay/packages` offers.
    pub recharge_packages: Vec<RechargePackage>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            database_url: "sqlite://chatgate.db?mode=rwc".into(),
            free_messages_per_day: 20,
            hold_ttl_secs: 600,
            system_prompt: "You are a helpful assistant.".into(),
            default_model: None,
            jwt_secret: None,
            jwt_ttl_secs: 30 * 24 * 3600,
            admin_token: None,
            redis_url: None,
            redis_prefix: "chatgate:".into(),
            heartbeat_secs: 5.0,
            shutdown_grace_secs: 30,
            threads: 0,
            answer_flush_secs: 1.0,
            demo_chunk_delay_ms: 40,
            timezone: "+08:00".into(),
            sweep_interval_secs: 60.0,
            guests_per_ip_per_day: 3,
            limits: Limits::default(),
            upstream: UpstreamTimeouts::default(),
            channels: Vec::new(),
            models: BTreeMap::new(),
            wechat: WechatConfig::default(),
            wechat_pay: None,
            public_url: None,
            images: ImagesConfig::default(),
            safety: SafetyConfig::default(),
            recharge_packages: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub ip_per_second: u32,
    pub ip_burst: u32,
    pub user_chats_per_minute: u32,
    pub user_concurrent_streams: u32,
    pub upstream_concurrent_streams: u32,
    pub max_body_bytes: usize,
    pub max_message_chars: usize,
    pub header_read_timeout_secs: u64,
    /// How long a request body may take to arrive.
    pub body_read_timeout_secs: u64,
    /// An answer nobody stops is cut after this.
    pub max_answer_secs: u64,
    /// Open client connections at most; more are turned away.
    pub max_connections: usize,
    /// Reverse proxies (nginx) whose `X-Forwarded-For` / `X-Real-IP` name the client.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            ip_per_second: 5,
            ip_burst: 10,
            user_chats_per_minute: 20,
            user_concurrent_streams: 2,
            upstream_concurrent_streams: 512,
            max_body_bytes: 1 << 20,
            max_message_chars: 8000,
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 30,
            max_answer_secs: 600,
            max_connections: 20_000,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTimeouts {
    pub connect_timeout_secs: f64,
    /// From sending the request to the response headers.
    pub first_byte_timeout_secs: f64,
    /// The longest silence between two pieces of a streaming answer.
    pub idle_timeout_secs: f64,
}

impl Default for UpstreamTimeouts {
    fn default() -> Self {
        Self {
            connect_timeout_secs: 10.0,
            first_byte_timeout_secs: 60.0,
            idle_timeout_secs: 120.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    pub name: String,
    pub base_url: String,
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// The models this channel serves; empty = every configured model.
    #[serde(default)]
    pub models: Vec<String>,
    /// Lower is tried first.
    #[serde(default)]
    pub priority: i32,
    #[serde(default = "one")]
    pub weight: u32,
    /// Ask the upstream for usage numbers (`stream_options.include_usage`).
    #[serde(default = "yes")]
    pub include_usage: bool,
    /// Outbound proxy for this channel: `http://host:port`, `https://…`,
    /// `socks5://host:port` (names resolved here) or `socks5h://…` (by the proxy).
    #[serde(default)]
    pub proxy: Option<String>,
    /// Speak HTTP/2 to an `http://` upstream without asking first (h2c, prior
    /// knowledge): all open answers share a few connections instead of one each
    /// (memory and descriptors per open stream). Only for upstreams that speak it;
    /// `https://` upstreams agree on HTTP/2 by themselves when they can.
    #[serde(default)]
    pub http2: bool,
}

impl Channel {
    /// A channel with no keys serving every model, priority 0, weight 1.
    pub fn new(name: &str, base_url: impl Into<String>) -> Self {
        Self {
            name: name.to_string(),
            base_url: base_url.into(),
            api_keys: Vec::new(),
            models: Vec::new(),
            priority: 0,
            weight: 1,
            include_usage: true,
            proxy: None,
            http2: false,
        }
    }
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}

/// Price and size of one model. Money in micros; a price of 0 is free.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub input_micros_per_million: u64,
    pub output_micros_per_million: u64,
    pub request_micros: u64,
    pub image_micros: u64,
    pub context_tokens: u64,
    pub max_output_tokens: u64,
    /// Sent upstream as `temperature` when set.
    pub temperature: Option<f64>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            input_micros_per_million: 0,
            output_micros_per_million: 0,
            request_micros: 0,
            image_micros: 0,
            context_tokens: 128_000,
            max_output_tokens: 4096,
            temperature: None,
        }
    }
}

/// Content safety (`[safety]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SafetyConfig {
    /// Words refused in questions and cut from answers (ASCII case ignored).
    pub words: Vec<String>,
    /// A file with more words, one per line (`#` starts a comment line).
    pub words_file: Option<std::path::PathBuf>,
    /// Check mini-program users' questions with WeChat's `msg_sec_check` v2.
    pub msg_sec_check: bool,
    /// When `msg_sec_check` cannot answer: serve anyway (true) or refuse (false).
    pub fail_open: bool,
}

impl Default for SafetyConfig {
    fn default() -> Self {
        Self {
            words: Vec::new(),
            words_file: None,
            msg_sec_check: false,
            fail_open: true,
        }
    }
}

impl SafetyConfig {
    /// The configured words and those of `words_file`.
    pub fn all_words(&self) -> Result<Vec<String>, String> {
        let mut words = self.words.clone();
        if let Some(path) = &self.words_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("safety.words_file {}: {e}", path.display()))?;
            words.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
        }
        Ok(words)
    }
}

/// Image generation (`POST /api/images`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// The image model, served by a channel listing it and priced by its `image_micros`.
    pub model: String,
    /// Stored images are deleted after this.
    pub ttl_secs: u64,
    /// The size asked for when the request names none.
    pub default_size: String,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        Self {
            model: "dall-e-3".into(),
            ttl_secs: 86_400,
            default_size: "1024x1024".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WechatConfig {
    pub api_base: String,
    pub pay_api_base: String,
    pub mp_app_id: Option<String>,
    pub mp_app_secret: Option<String>,
    pub oa_token: Option<String>,
    pub oa_app_id: Option<String>,
    pub oa_app_secret: Option<String>,
    pub oa_encoding_aes_key: Option<String>,
    /// How long one delivery may wait for the answer before it gives up on replying.
    pub oa_reply_deadline_ms: u64,
    /// Reply `success` at once and push the answer through `message/custom/send`
    /// (needs the customer-service permission) instead of riding WeChat's retries.
    pub oa_push: bool,
    /// How long WeChat waits for one delivery (5 s). A delivery that is not the last
    /// and has no answer by its deadline holds the request past this, so WeChat retries.
    pub oa_wechat_timeout_ms: u64,
    /// How many times WeChat delivers one message (3); the last one replies with a link.
    pub oa_deliveries: u32,
    /// The longest reply text in bytes; a longer answer is cut, at a character
    /// boundary, with the link appended (the whole stays within this).
    pub oa_reply_max_bytes: usize,
    /// A conversation idle longer than this is not continued: the next question starts
    /// a new one.
    pub oa_session_idle_secs: u64,
    /// Days an Official Account message (and so its `/a/{token}` link) is kept; 0 =
    /// forever.
    pub oa_keep_days: u64,
    /// Only messages starting with `/chat` go to the model; others get the help text.
    pub oa_command_only: bool,
    /// The reply to a new follower (the `subscribe` event).
    pub oa_welcome: String,
    /// The largest webhook body accepted (WeChat's messages are small).
    pub oa_max_body_bytes: usize,
}

impl Default for WechatConfig {
    fn default() -> Self {
        Self {
            api_base: "https://api.weixin.qq.com".into(),
            pay_api_base: "https://api.mch.weixin.qq.com".into(),
            mp_app_id: None,
            mp_app_secret: None,
            oa_token: None,
            oa_app_id: None,
            oa_app_secret: None,
            oa_encoding_aes_key: None,
            oa_reply_deadline_ms: 4500,
            oa_push: false,
            oa_wechat_timeout_ms: 5000,
            oa_deliveries: 3,
            oa_reply_max_bytes: 2000,
            oa_session_idle_secs: 300,
            oa_keep_days: 30,
            oa_command_only: false,
            oa_welcome: "欢迎关注！直接发送文字即可向 AI 提问。\n发送 /new 开始新的对话，/history 查看最近的回答。".into(),
            oa_max_body_bytes: 64 * 1024,
        }
    }
}

/// The merchant account of WeChat Pay API v3 (`[wechat_pay]`). The key files are read
/// once, when the gateway starts (`pay::WechatPay::load`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WechatPayConfig {
    pub mch_id: String,
    /// The app the payer pays in (the mini-program's app id); also named in Native orders.
    pub app_id: String,
    /// 32 bytes: the key of the AEAD_AES_256_GCM resources in notifications.
    pub api_v3_key: String,
    /// The serial number of the merchant certificate the private key belongs to.
    pub merchant_serial_no: String,
    /// `apiclient_key.pem` (PKCS#8 or PKCS#1 PEM): signs requests and `pay_params`.
    pub merchant_private_key_path: PathBuf,
    /// The WeChat Pay public key (PEM): verifies responses and notifications.
    pub platform_public_key_path: PathBuf,
    /// `Wechatpay-Serial` of that key (`PUB_KEY_ID_…`); another serial is logged.
    pub platform_serial_no: String,
    /// Where WeChat Pay posts notifications: `https://…/pay/wechat/notify`.
    pub notify_url: String,
    /// An order unpaid after this long is closed (and WeChat Pay refuses to take payment
    /// for it past `time_expire`).
    #[serde(default = "default_order_ttl")]
    pub order_ttl_secs: u64,
    /// The sweep asks WeChat Pay about a pending order once it is this old (its
    /// notification may be lost); the order query asks at once.
    #[serde(default = "default_query_after")]
    pub query_after_secs: u64,
}

fn default_order_ttl() -> u64 {
    1800
}
fn default_query_after() -> u64 {
    60
}

/// One recharge package (`[[recharge_packages]]`): pay `price_fen`, get `credit_micros`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RechargePackage {
    pub id: String,
    pub title: String,
    /// The price in fen (1/100 CNY), as WeChat Pay takes it.
    pub price_fen: i64,
    /// What is credited to the balance once paid.
    pub credit_micros: i64,
}

impl Config {
    /// Reads the file named by `path` (or `CHATGATE_CONFIG`), applies the environment
    /// and validates the result.
    pub fn load(path: Option<&Path>, env: &dyn Env) -> Result<Self, ConfigError> {
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| env.var("CHATGATE_CONFIG").map(PathBuf::from));
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                Self::from_toml(&text).map_err(|message| ConfigError::Parse { path, message })?
            }
            None => Self::default(),
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text; the error is a single line.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text)
            .map_err(|e| e.message().replace('\n', " ").trim().to_string() + &location(text, &e))
    }

    fn apply_env(&mut self, env: &dyn Env) -> Result<(), ConfigError> {
        if let Some(v) = env.var("CHATGATE_LISTEN") {
            self.listen = v;
        }
        if let Some(v) = env.var("CHATGATE_DATABASE_URL") {
            self.database_url = v;
        }
        if let Some(v) = env.var("CHATGATE_REDIS_URL") {
            self.redis_url = Some(v);
        }
        if let Some(v) = env.var("CHATGATE_JWT_SECRET") {
            self.jwt_secret = Some(v);
        }
        if let Some(v) = env.var("CHATGATE_ADMIN_TOKEN") {
            self.admin_token = Some(v);
        }
        if let Some(v) = env.var("CHATGATE_DEFAULT_MODEL") {
            self.default_model = Some(v);
        }
        if let Some(v) = env.var("CHATGATE_WECHAT_API_BASE") {
            self.wechat.api_base = v;
        }
        if let Some(v) = env.var("CHATGATE_WECHAT_PAY_API_BASE") {
            self.wechat.pay_api_base = v;
        }
        let keys = env.var("CHATGATE_UPSTREAM_API_KEYS");
        match env.var("CHATGATE_UPSTREAM_BASE_URL") {
            // The variables describe one channel serving every model; it replaces the
            // file's channels, as an environment variable overrides the file.
            Some(base_url) => {
                let api_keys = keys
                    .map(|k| {
                        k.split(',')
                            .map(str::trim)
                            .filter(|k| !k.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default();
                self.channels = vec![Channel {
                    api_keys,
                    ..Channel::new("env", base_url)
                }];
            }
            None if keys.is_some() => {
                return Err(invalid(
                    "CHATGATE_UPSTREAM_API_KEYS is set but CHATGATE_UPSTREAM_BASE_URL is not",
                ));
            }
            None => {}
        }
        Ok(())
    }

    fn validate(&mut self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        let scheme = self.database_url.split(':').next().unwrap_or_default();
        if !matches!(
            scheme,
            "sqlite" | "postgres" | "postgresql" | "mysql" | "mariadb"
        ) {
            return Err(invalid(format!(
                "database_url must start with sqlite:, postgres: or mysql: (got {:?})",
                self.database_url
            )));
        }
        for channel in &self.channels {
            if !(channel.base_url.starts_with("http://")
                || channel.base_url.starts_with("https://"))
            {
                return Err(invalid(format!(
                    "channel {:?}: base_url must start with http:// or https:// (got {:?})",
                    channel.name, channel.base_url
                )));
            }
            if reqwest::Url::parse(&channel.base_url).is_err() {
                return Err(invalid(format!(
                    "channel {:?}: base_url {:?} is not a valid URL",
                    channel.name, channel.base_url
                )));
            }
        }
        for (name, model) in &self.models {
            if model.max_output_tokens == 0 {
                return Err(invalid(format!(
                    "model {name:?}: max_output_tokens must be above 0"
                )));
            }
            if model.context_tokens <= model.max_output_tokens {
                return Err(invalid(format!(
                    "model {name:?}: context_tokens ({}) must be larger than max_output_tokens ({})",
                    model.context_tokens, model.max_output_tokens
                )));
            }
        }
        if !(self.heartbeat_secs > 0.0
            && self.answer_flush_secs > 0.0
            && self.sweep_interval_secs > 0.0)
        {
            return Err(invalid(
                "heartbeat_secs, answer_flush_secs and sweep_interval_secs must be above 0",
            ));
        }
        if self.threads > MAX_THREADS {
            return Err(invalid(format!(
                "threads must be 0 (one per core) to {MAX_THREADS} (got {})",
                self.threads
            )));
        }
        if crate::ledger::day::parse_offset(&self.timezone).is_none() {
            return Err(invalid(format!(
                "timezone must be a UTC offset such as \"+08:00\" (got {:?})",
                self.timezone
            )));
        }
        for (what, secs) in [
            (
                "upstream.connect_timeout_secs",
                self.upstream.connect_timeout_secs,
            ),
            (
                "upstream.first_byte_timeout_secs",
                self.upstream.first_byte_timeout_secs,
            ),
            (
                "upstream.idle_timeout_secs",
                self.upstream.idle_timeout_secs,
            ),
        ] {
            if !(secs > 0.0 && secs.is_finite()) {
                return Err(invalid(format!(
                    "{what} must be a positive number of seconds"
                )));
            }
        }
        if self.limits.max_body_bytes == 0 || self.limits.max_message_chars == 0 {
            return Err(invalid(
                "limits.max_body_bytes and limits.max_message_chars must be above 0",
            ));
        }
        self.validate_pay()?;
        self.validate_official_account()?;
        let default = self.default_model();
        if !self.has_model(&default) {
            return Err(invalid(format!(
                "default model {default:?} is served by no channel"
            )));
        }
        Ok(())
    }

    /// Recharge packages and `[wechat_pay]`, except the key files (read at start-up).
    pub fn validate_pay(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for p in &self.recharge_packages {
            let id_ok = !p.id.is_empty()
                && p.id.len() <= 64
                && p.id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !id_ok {
                return Err(invalid(format!(
                    "recharge_packages: id {:?} must be 1 to 64 letters, digits, - or _",
                    p.id
                )));
            }
            if !seen.insert(p.id.as_str()) {
                return Err(invalid(format!(
                    "recharge_packages: id {:?} is used twice",
                    p.id
                )));
            }
            if p.price_fen <= 0 || p.credit_micros <= 0 {
                return Err(invalid(format!(
                    "recharge_packages {:?}: price_fen and credit_micros must be above 0",
                    p.id
                )));
            }
            // WeChat Pay's `description` is at most 127 bytes.
            if p.title.trim().is_empty() || p.title.len() > 127 {
                return Err(invalid(format!(
                    "recharge_packages {:?}: title must be 1 to 127 bytes",
                    p.id
                )));
            }
        }
        let Some(pay) = &self.wechat_pay else {
            return Ok(());
        };
        if pay.api_v3_key.len() != 32 {
            return Err(invalid(format!(
                "wechat_pay.api_v3_key must be 32 bytes (got {})",
                pay.api_v3_key.len()
            )));
        }
        for (what, value) in [
            ("mch_id", &pay.mch_id),
            ("app_id", &pay.app_id),
            ("merchant_serial_no", &pay.merchant_serial_no),
            ("platform_serial_no", &pay.platform_serial_no),
        ] {
            if value.trim().is_empty() || value.contains('"') {
                return Err(invalid(format!(
                    "wechat_pay.{what} must be set (and hold no quote)"
                )));
            }
        }
        if !pay.notify_url.starts_with("https://") || reqwest::Url::parse(&pay.notify_url).is_err()
        {
            return Err(invalid(format!(
                "wechat_pay.notify_url must be an https:// URL (got {:?})",
                pay.notify_url
            )));
        }
        if !(60..=7 * 86_400).contains(&pay.order_ttl_secs) {
            return Err(invalid(
                "wechat_pay.order_ttl_secs must be between 60 and 604800",
            ));
        }
        if reqwest::Url::parse(&self.wechat.pay_api_base).is_err() {
            return Err(invalid(format!(
                "wechat.pay_api_base {:?} is not a valid URL",
                self.wechat.pay_api_base
            )));
        }
        Ok(())
    }

    fn validate_official_account(&self) -> Result<(), ConfigError> {
        let w = &self.wechat;
        if w.oa_reply_deadline_ms == 0 || w.oa_reply_deadline_ms >= w.oa_wechat_timeout_ms {
            return Err(invalid(format!(
                "wechat.oa_reply_deadline_ms ({}) must be above 0 and below wechat.oa_wechat_timeout_ms ({})",
                w.oa_reply_deadline_ms, w.oa_wechat_timeout_ms
            )));
        }
        if w.oa_deliveries == 0 {
            return Err(invalid("wechat.oa_deliveries must be at least 1"));
        }
        if w.oa_reply_max_bytes < 300 {
            return Err(invalid(
                "wechat.oa_reply_max_bytes must be at least 300 (room for the link)",
            ));
        }
        if w.oa_max_body_bytes < 1024 {
            return Err(invalid("wechat.oa_max_body_bytes must be at least 1024"));
        }
        if let Some(key) = &w.oa_encoding_aes_key {
            let Some(app_id) = &w.oa_app_id else {
                return Err(invalid(
                    "wechat.oa_encoding_aes_key is set but wechat.oa_app_id is not (safe mode checks it)",
                ));
            };
            crate::wechat_oa::crypto::SafeMode::new(key, app_id)
                .map_err(|e| invalid(format!("wechat.oa_encoding_aes_key: {e}")))?;
        }
        if w.oa_push && (w.oa_app_id.is_none() || w.oa_app_secret.is_none()) {
            return Err(invalid(
                "wechat.oa_push needs wechat.oa_app_id and wechat.oa_app_secret",
            ));
        }
        if let Some(url) = &self.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(format!(
                "public_url must start with http:// or https:// (got {url:?})"
            )));
        }
        Ok(())
    }

    /// The address to listen on.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        if let Ok(addr) = self.listen.parse() {
            return Ok(addr);
        }
        self.listen
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| {
                invalid(format!(
                    "listen: {:?} is not a host:port address",
                    self.listen
                ))
            })
    }

    /// True when no upstream is configured and the demo model answers.
    pub fn demo_mode(&self) -> bool {
        self.channels.is_empty()
    }

    /// How many event-loop threads serve connections (`threads`, 0 = one per core).
    pub fn event_loop_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }

    /// The model used when a request names none.
    pub fn default_model(&self) -> String {
        if let Some(m) = &self.default_model {
            return m.clone();
        }
        if self.demo_mode() {
            return DEMO_MODEL.into();
        }
        self.channels
            .iter()
            .flat_map(|c| c.models.iter())
            .chain(self.models.keys())
            .next()
            .cloned()
            .unwrap_or_else(|| "gpt-4o-mini".into())
    }

    /// Whether some channel (or the demo) serves `model`.
    pub fn has_model(&self, model: &str) -> bool {
        if self.demo_mode() {
            return model == DEMO_MODEL;
        }
        let known = self.models.contains_key(model)
            || self.default_model.as_deref() == Some(model)
            || self
                .channels
                .iter()
                .any(|c| c.models.iter().any(|m| m == model));
        known
            && self
                .channels
                .iter()
                .any(|c| c.models.is_empty() || c.models.iter().any(|m| m == model))
    }

    /// Price and size of `model` (the defaults when it has no `[models]` entry). The
    /// demo model costs a token amount per answer unless configured, so the whole money
    /// path can be tried with it.
    pub fn model(&self, model: &str) -> ModelConfig {
        match self.models.get(model) {
            Some(m) => m.clone(),
            None if model == DEMO_MODEL => ModelConfig {
                request_micros: 10_000,
                ..ModelConfig::default()
            },
            None => ModelConfig::default(),
        }
    }

    /// Minutes east of UTC of the free-message day.
    pub fn utc_offset_minutes(&self) -> i32 {
        crate::ledger::day::parse_offset(&self.timezone).unwrap_or(480)
    }

    /// Today's date (`YYYY-MM-DD`) for free messages.
    pub fn today(&self) -> String {
        crate::ledger::day::local_day(crate::clock::unix_millis(), self.utc_offset_minutes())
    }
}

/// " (line L, column C)" for a TOML error, or "".
fn location(text: &str, e: &toml::de::Error) -> String {
    e.span()
        .map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!(" (line {line}, column {column})")
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_configuration_gives_sqlite_and_the_demo_model() {
        let c = Config::load(None, &env(&[])).unwrap();
        assert!(c.database_url.starts_with("sqlite://chatgate.db"));
        assert!(c.demo_mode());
        assert_eq!(c.default_model(), DEMO_MODEL);
        assert!(c.has_model("demo"));
        assert!(!c.has_model("gpt-4o"));
    }

    #[test]
    fn threads_default_to_one_per_core_and_are_bounded() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.threads, 0);
        assert!(c.event_loop_threads() >= 1);
        let mut c = Config::from_toml("threads = 3").unwrap();
        assert_eq!(c.event_loop_threads(), 3);
        c.validate().unwrap();
        let err = Config::from_toml("threads = 100000")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("threads must be 0"), "{err}");
    }

    #[test]
    fn the_design_example_parses() {
        let text = include_str!("../chatgate.example.toml");
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.limits.user_concurrent_streams, 2);
        assert_eq!(c.models["gpt-4o-mini"].input_micros_per_million, 150_000);
        assert_eq!(c.channels[0].priority, 0);
        assert_eq!(c.recharge_packages[0].price_fen, 1000);
        assert_eq!(c.recharge_packages[0].credit_micros, 10_000_000);
        assert_eq!(
            c.wechat_pay.unwrap().notify_url,
            "https://example.com/pay/wechat/notify"
        );
        assert_eq!(c.wechat.oa_deliveries, 3);
        assert_eq!(c.wechat.oa_reply_max_bytes, 2000);
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\n[[channels]]\nname=\"a\"\nbase_url=\"http://x/v1\"\nmodels=[\"m\"]\n").unwrap();
        let c = Config::load(
            Some(&path),
            &env(&[
                ("CHATGATE_LISTEN", "127.0.0.1:0"),
                ("CHATGATE_UPSTREAM_BASE_URL", "http://127.0.0.1:9/v1"),
                ("CHATGATE_UPSTREAM_API_KEYS", "k1, k2,"),
                ("CHATGATE_DEFAULT_MODEL", "gpt-x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:0");
        assert_eq!(c.channels.len(), 1);
        assert_eq!(c.channels[0].api_keys, vec!["k1", "k2"]);
        assert_eq!(c.default_model(), "gpt-x");
        assert!(c.has_model("gpt-x"));
        assert!(!c.has_model("unknown"));
    }

    #[test]
    fn bad_configurations_are_one_clear_line() {
        let pay = |extra: &str| {
            format!(
                "[wechat_pay]\nmch_id = \"1\"\napp_id = \"wx\"\nmerchant_serial_no = \"S\"\n\
                 merchant_private_key_path = \"k.pem\"\nplatform_public_key_path = \"p.pem\"\n\
                 platform_serial_no = \"P\"\n{}\n{extra}\n",
                if extra.contains("notify_url") {
                    ""
                } else {
                    "notify_url = \"https://x/pay/wechat/notify\""
                }
            )
        };
        let good = pay("api_v3_key = \"0123456789abcdef0123456789abcdef\"");
        let c = Config::from_toml(&good).unwrap();
        c.clone().validate().unwrap();
        assert_eq!(c.wechat_pay.unwrap().order_ttl_secs, 1800);
        let key = "api_v3_key = \"0123456789abcdef0123456789abcdef\"";
        let money: Vec<(String, &str)> = vec![
            (
                "[[recharge_packages]]\nid=\"a\"\ntitle=\"t\"\nprice_fen=0\ncredit_micros=1".into(),
                "must be above 0",
            ),
            (
                "[[recharge_packages]]\nid=\"a\"\ntitle=\"t\"\nprice_fen=1\ncredit_micros=-1"
                    .into(),
                "must be above 0",
            ),
            (
                "[[recharge_packages]]\nid=\"a\"\ntitle=\"t\"\nprice_fen=1\ncredit_micros=1\n\
                 [[recharge_packages]]\nid=\"a\"\ntitle=\"u\"\nprice_fen=2\ncredit_micros=2"
                    .into(),
                "used twice",
            ),
            (
                "[[recharge_packages]]\nid=\"a\"\ntitle=\"t\"\nprice=1\ncredit_micros=1".into(),
                "unknown field",
            ),
            (pay("api_v3_key = \"short\""), "32 bytes"),
            (
                pay(&format!("{key}\nnotify_url = \"http://x/n\"")),
                "https://",
            ),
            (pay(&format!("{key}\norder_ttl_secs = 5")), "order_ttl_secs"),
            (pay(&format!("{key}\nsurprise = 1")), "unknown field"),
        ];
        // The one-line error a config file gives.
        let load_error = |text: &str| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("c.toml");
            std::fs::write(&path, text).unwrap();
            Config::load(Some(&path), &env(&[]))
                .unwrap_err()
                .to_string()
        };
        for (text, says) in &money {
            let err = load_error(text);
            assert!(err.contains(says), "{text:?} gave {err}");
            assert!(
                !err.contains('\n'),
                "{text:?} gave a multi-line error: {err}"
            );
        }
        let cases: &[&str] = &[
            "listen = 5",
            "lisen = \"x\"",
            "database_url = \"oracle://x\"",
            "[[channels]]\nname=\"a\"\nbase_url=\"ftp://x\"",
            "[models.m]\ncontext_tokens = 10\nmax_output_tokens = 20",
            "default_model = \"gpt\"",
            "timezone = \"Asia/Shanghai\"",
            "[wechat]\noa_reply_deadline_ms = 6000",
            "[wechat]\noa_app_id = \"wx1\"\noa_encoding_aes_key = \"short\"",
            "[wechat]\noa_encoding_aes_key = \"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\"",
            "[wechat]\noa_push = true",
            "public_url = \"chat.example.com\"",
        ];
        for text in cases.iter().copied() {
            let err = load_error(text);
            assert!(
                !err.contains('\n'),
                "{text:?} gave a multi-line error: {err}"
            );
            assert!(!err.is_empty());
        }
        let err = Config::load(None, &env(&[("CHATGATE_UPSTREAM_API_KEYS", "k")])).unwrap_err();
        assert!(err.to_string().contains("CHATGATE_UPSTREAM_BASE_URL"));
    }
}
