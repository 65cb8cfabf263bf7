//! Opening an answer on an upstream: channels tried in priority order (channels of one
//! priority share the first attempts by weight), keys rotated round-robin, failover
//! before the first byte, per-channel outbound proxies, and the timeouts (connect,
//! first byte, idle between pieces).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::time::{Instant, Sleep};

use super::demo::DemoEvents;
use super::sse::{SseEvent, SseParser};
use super::{EventSource, UpstreamRequest, secs};
use crate::config::{Channel, Config};
use crate::error::AppError;

/// The pool of upstream channels shared by every request. One `reqwest::Client` (and
/// so one connection pool) for all of them per event-loop thread (see [`set_thread_slot`]).
pub struct Upstream {
    /// One per event-loop thread: an upstream connection is driven by the thread that
    /// opened it, so each thread's answers use connections of their own thread.
    clients: Vec<reqwest::Client>,
    /// Sorted by priority.
    channels: Vec<ChannelState>,
    /// Smooth weighted round-robin state of each group of channels sharing a priority:
    /// (index range in `channels`, current weights).
    groups: Vec<(std::ops::Range<usize>, Mutex<Vec<i64>>)>,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
    demo_delay: Duration,
}

struct ChannelState {
    config: Channel,
    /// This channel's own clients (one per thread) when it goes through a proxy or
    /// speaks h2c; empty otherwise.
    clients: Vec<reqwest::Client>,
    /// Round-robin position in the key pool.
    next_key: AtomicUsize,
    /// Keys that answered 401: out of rotation until the gateway restarts.
    revoked: Vec<AtomicBool>,
    /// `{base_url}/chat/completions`, parsed once (`None`: it does not parse; each
    /// request then reports that).
    chat_url: Option<reqwest::Url>,
    /// Each key's `Authorization` header, made once (`None`: not a valid header value;
    /// each request then reports that).
    auth: Vec<Option<http::HeaderValue>>,
}

/// The path of the chat endpoint below a channel's base URL.
const CHAT_COMPLETIONS: &str = "chat/completions";

thread_local! {
    /// Which event loop this thread is ([`set_thread_slot`]); 0 elsewhere.
    static SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as event loop `slot`: its answers use that slot's clients.
pub fn set_thread_slot(slot: usize) {
    SLOT.with(|s| s.set(slot));
}

/// The client of this thread's slot; `None` when there are none.
fn of_this_thread(clients: &[reqwest::Client]) -> Option<&reqwest::Client> {
    match clients.len() {
        0 => None,
        n => clients.get(SLOT.with(std::cell::Cell::get) % n),
    }
}

/// Why one attempt on one key failed.
enum Failure {
    /// 401: the key is bad; take it out of rotation and try the next.
    KeyRevoked,
    /// Connect error, timeout, 429, 5xx: try the next key, then the next channel.
    Retry(AppError),
    /// The upstream refused the request itself (400, 404, …): another key won't help.
    Final(AppError),
}

/// A key's state, for the admin.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyStatus {
    pub channel: String,
    /// The first characters of the key.
    pub key: String,
    pub revoked: bool,
}

impl Upstream {
    /// Builds the pool; an error is one line naming what is wrong.
    pub fn new(config: &Config) -> Result<Self, String> {
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(secs(config.upstream.connect_timeout_secs))
                .pool_idle_timeout(Duration::from_secs(90))
                .tcp_nodelay(true)
        };
        let threads = config.event_loop_threads();
        let clients = (0..threads)
            .map(|_| builder().build().map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut channels = Vec::with_capacity(config.channels.len());
        for c in &config.channels {
            // A channel with a proxy or speaking h2c has clients of its own.
            let mut clients = Vec::new();
            if c.proxy.is_some() || c.http2 {
                for _ in 0..threads {
                    let mut own = builder();
                    if let Some(url) = &c.proxy {
                        let bad =
                            |e: reqwest::Error| format!("channel {}: proxy {url}: {e}", c.name);
                        own = own.proxy(reqwest::Proxy::all(url).map_err(bad)?);
                    }
                    if c.http2 {
                        own = own.http2_prior_knowledge();
                    }
                    let bad = |e: reqwest::Error| format!("channel {}: {e}", c.name);
                    clients.push(own.build().map_err(bad)?);
                }
            }
            channels.push(ChannelState {
                config: c.clone(),
                clients,
                next_key: AtomicUsize::new(0),
                revoked: c.api_keys.iter().map(|_| AtomicBool::new(false)).collect(),
                chat_url: reqwest::Url::parse(&endpoint(&c.base_url, CHAT_COMPLETIONS)).ok(),
                auth: c
                    .api_keys
                    .iter()
                    .map(|k| {
                        let mut value = http::HeaderValue::try_from(format!("Bearer {k}")).ok()?;
                        value.set_sensitive(true);
                        Some(value)
                    })
                    .collect(),
            });
        }
        channels.sort_by_key(|c| c.config.priority);
        let mut groups = Vec::new();
        let mut start = 0;
        while start < channels.len() {
            let priority = channels[start].config.priority;
            let end = start
                + channels[start..]
                    .iter()
                    .take_while(|c| c.config.priority == priority)
                    .count();
            groups.push((start..end, Mutex::new(vec![0; end - start])));
            start = end;
        }
        Ok(Self {
            clients,
            channels,
            groups,
            first_byte_timeout: secs(config.upstream.first_byte_timeout_secs),
            idle_timeout: secs(config.upstream.idle_timeout_secs),
            demo_delay: Duration::from_millis(config.demo_chunk_delay_ms),
        })
    }

    /// True when no upstream is configured and the demo model answers.
    pub fn is_demo(&self) -> bool {
        self.channels.is_empty()
    }

    /// Starts a streaming answer. Before the upstream's first byte, a connect error,
    /// timeout, 429 or 5xx moves on to the next channel; the first that answers 2xx
    /// wins. With no channels configured the demo model answers.
    pub async fn open(&self, req: &UpstreamRequest) -> Result<EventSource, AppError> {
        if self.is_demo() {
            return Ok(EventSource::Demo(DemoEvents::new(
                &req.model,
                &req.messages,
                self.demo_delay,
            )));
        }
        let mut body = json!({
            "model": req.model,
            "messages": req.messages,
            "stream": true,
            "max_tokens": req.max_tokens,
        });
        if let Some(t) = req.temperature {
            body["temperature"] = json!(t);
        }
        let (response, channel) = self.send(&req.model, body, true).await?;
        Ok(EventSource::Http(Box::new(self.events(response, channel))))
    }

    /// The events of a streaming `response`.
    pub fn events(&self, response: reqwest::Response, channel: String) -> HttpEvents {
        HttpEvents {
            channel,
            response,
            parser: SseParser::new(),
            idle_timeout: self.idle_timeout,
            last_read: Instant::now(),
            idle: Box::pin(tokio::time::sleep(self.idle_timeout)),
            ended: false,
        }
    }

    /// This thread's HTTP client (also for fetching what an upstream links to).
    pub fn client(&self) -> &reqwest::Client {
        // Never empty: there is at least one thread.
        of_this_thread(&self.clients).unwrap_or_else(|| &self.clients[0])
    }

    /// Posts `body` to `/chat/completions` of the channels serving `model`, in order,
    /// until one answers 2xx; returns its response (headers read, body not) and the
    /// channel's name. `stream` requests ask for usage where the channel supports it.
    pub async fn send(
        &self,
        model: &str,
        body: Value,
        stream: bool,
    ) -> Result<(reqwest::Response, String), AppError> {
        self.post(model, CHAT_COMPLETIONS, body, stream).await
    }

    /// Posts `body` to `path` (relative to the channel's base URL) with the same
    /// failover as [`Upstream::send`].
    pub async fn post(
        &self,
        model: &str,
        path: &str,
        body: Value,
        stream: bool,
    ) -> Result<(reqwest::Response, String), AppError> {
        let mut last_error = AppError::NotFound("模型不存在");
        let order = self.order(model);
        // The body as bytes, made before the first request in each form a channel needs
        // (with `stream_options` for those that report usage): a pending request keeps
        // these rather than a tree of JSON values (when many answers open at once,
        // thousands wait for their upstream's response together).
        let wants_usage = |c: &ChannelState| stream && c.config.include_usage;
        let plain = if order.iter().all(|c| wants_usage(c)) {
            None
        } else {
            Some(to_bytes(&body)?)
        };
        let with_usage = if order.iter().any(|c| wants_usage(c)) {
            let mut body = body;
            if let Some(fields) = body.as_object_mut() {
                fields.insert("stream_options".into(), json!({ "include_usage": true }));
            }
            Some(to_bytes(&body)?)
        } else {
            drop(body);
            None
        };
        for channel in order {
            // Both forms were made above for every channel that needs them.
            let Some(body) = (if wants_usage(channel) {
                &with_usage
            } else {
                &plain
            }) else {
                continue;
            };
            // Each live key of the channel at most once, in rotation order.
            for _ in 0..channel.config.api_keys.len().max(1) {
                let Some(key) = channel.next_key() else {
                    last_error = upstream_error(false, "上游服务的密钥均已失效");
                    break;
                };
                match self.try_channel(channel, path, body, key).await {
                    Ok(response) => return Ok((response, channel.config.name.clone())),
                    Err(Failure::KeyRevoked) => {
                        channel.revoke(key);
                        metrics::counter!(crate::metrics::FAILOVERS, "channel" => channel.config.name.clone()).increment(1);
                        last_error = upstream_error(false, "上游服务暂时不可用，请稍后再试");
                    }
                    Err(Failure::Retry(e)) => {
                        metrics::counter!(crate::metrics::UPSTREAM_ERRORS, "channel" => channel.config.name.clone()).increment(1);
                        metrics::counter!(crate::metrics::FAILOVERS, "channel" => channel.config.name.clone()).increment(1);
                        tracing::warn!(channel = %channel.config.name, error = %e, "upstream failed before the first byte; trying the next key or channel");
                        last_error = e;
                    }
                    Err(Failure::Final(e)) => {
                        metrics::counter!(crate::metrics::UPSTREAM_ERRORS, "channel" => channel.config.name.clone()).increment(1);
                        return Err(e);
                    }
                }
            }
        }
        Err(last_error)
    }

    async fn try_channel(
        &self,
        channel: &ChannelState,
        path: &str,
        body: &Bytes,
        key: Option<usize>,
    ) -> Result<reqwest::Response, Failure> {
        let client = of_this_thread(&channel.clients).unwrap_or_else(|| self.client());
        let request = match &channel.chat_url {
            Some(url) if path == CHAT_COMPLETIONS => client.post(url.clone()),
            _ => client.post(endpoint(&channel.config.base_url, path)),
        };
        let mut request = request
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body.clone());
        if let Some(k) = key {
            request = match channel.auth.get(k).and_then(Option::as_ref) {
                Some(value) => request.header(http::header::AUTHORIZATION, value.clone()),
                None => request.bearer_auth(&channel.config.api_keys[k]),
            };
        }
        let response = match tokio::time::timeout(self.first_byte_timeout, request.send()).await {
            Err(_) => return Err(Failure::Retry(upstream_error(true, "上游服务响应超时"))),
            Ok(Err(e)) if e.is_timeout() => {
                return Err(Failure::Retry(upstream_error(true, "上游服务连接超时")));
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "upstream request failed");
                return Err(Failure::Retry(upstream_error(false, "上游服务连接失败")));
            }
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let detail = tokio::time::timeout(Duration::from_secs(2), response.text())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let detail: String = detail.chars().take(300).collect();
        tracing::warn!(channel = %channel.config.name, %status, %detail, "upstream refused");
        Err(match status.as_u16() {
            401 if key.is_some() => Failure::KeyRevoked,
            408 | 409 | 429 | 500..=599 => {
                Failure::Retry(upstream_error(false, "上游服务暂时不可用，请稍后再试"))
            }
            _ => Failure::Final(AppError::UpstreamRejected("上游服务拒绝了该请求".into())),
        })
    }

    /// The channels serving `model`, in the order to try them: by priority; within one
    /// priority the first is picked by smooth weighted round-robin (over many requests
    /// each channel leads in proportion to its weight), the rest follow by weight.
    fn order(&self, model: &str) -> Vec<&ChannelState> {
        let mut order = Vec::with_capacity(self.channels.len());
        for (range, current) in &self.groups {
            let mut group: Vec<usize> = range
                .clone()
                .filter(|&i| self.channels[i].serves(model))
                .collect();
            if group.len() > 1 {
                let weight = |i: usize| i64::from(self.channels[i].config.weight.max(1));
                let mut current = current.lock().unwrap_or_else(|p| p.into_inner());
                let total: i64 = group.iter().map(|&i| weight(i)).sum();
                for &i in &group {
                    current[i - range.start] += weight(i);
                }
                let lead = group
                    .iter()
                    .copied()
                    .max_by_key(|&i| (current[i - range.start], std::cmp::Reverse(i)))
                    .unwrap_or(range.start);
                current[lead - range.start] -= total;
                group.sort_by_key(|&i| (i != lead, std::cmp::Reverse(weight(i)), i));
            }
            order.extend(group.into_iter().map(|i| &self.channels[i]));
        }
        order
    }

    /// Every key of every channel and whether it is still in rotation.
    pub fn key_status(&self) -> Vec<KeyStatus> {
        self.channels
            .iter()
            .flat_map(|c| {
                c.config
                    .api_keys
                    .iter()
                    .zip(&c.revoked)
                    .map(|(key, revoked)| KeyStatus {
                        channel: c.config.name.clone(),
                        key: key.chars().take(7).collect::<String>() + "…",
                        revoked: revoked.load(Ordering::Relaxed),
                    })
            })
            .collect()
    }
}

impl ChannelState {
    fn serves(&self, model: &str) -> bool {
        self.config.models.is_empty() || self.config.models.iter().any(|m| m == model)
    }

    /// The next key in rotation that has not been revoked (`Some(None)`-like: `None`
    /// when every key is revoked; a channel without keys sends none).
    fn next_key(&self) -> Option<Option<usize>> {
        let n = self.config.api_keys.len();
        if n == 0 {
            return Some(None);
        }
        for _ in 0..n {
            let i = self.next_key.fetch_add(1, Ordering::Relaxed) % n;
            if !self.revoked[i].load(Ordering::Relaxed) {
                return Some(Some(i));
            }
        }
        None
    }

    fn revoke(&self, key: Option<usize>) {
        if let Some(i) = key
            && !self.revoked[i].swap(true, Ordering::Relaxed)
        {
            tracing::error!(channel = %self.config.name, key_index = i, "an upstream key answered 401: taken out of rotation");
            metrics::counter!(crate::metrics::REVOKED_KEYS, "channel" => self.config.name.clone())
                .increment(1);
        }
    }
}

fn upstream_error(timeout: bool, msg: &str) -> AppError {
    AppError::Upstream {
        timeout,
        msg: msg.to_string(),
    }
}

/// The most one unfinished upstream event may hold (its partial line and data lines). A
/// chunk is a few hundred bytes; an upstream that never ends its line would otherwise
/// grow the answer's memory until the answer's time bound.
const MAX_EVENT_BYTES: usize = 4 << 20;

/// The events of an answer streamed by an HTTP upstream.
pub struct HttpEvents {
    channel: String,
    response: reqwest::Response,
    parser: SseParser,
    idle_timeout: Duration,
    /// When bytes last came.
    last_read: Instant,
    /// Fires when the silence since the last bytes may have become an idle timeout. Kept
    /// here, not in the future, so a cancelled `next()` does not restart the clock; one
    /// timer per answer, not touched per read: when it fires after bytes came, it is
    /// moved to `last_read + idle_timeout` and waited for again.
    idle: Pin<Box<Sleep>>,
    ended: bool,
}

impl HttpEvents {
    pub fn channel(&self) -> &str {
        &self.channel
    }

    pub async fn next(&mut self) -> Result<Option<SseEvent>, AppError> {
        loop {
            if let Some(event) = self.parser.next_event() {
                return Ok(Some(event));
            }
            if self.ended {
                return Ok(self.parser.finish());
            }
            // Nothing complete is buffered: all of it is one unfinished event.
            if self.parser.buffered_len() > MAX_EVENT_BYTES {
                tracing::warn!(channel = %self.channel, limit = MAX_EVENT_BYTES, "upstream event too large; answer cut");
                return Err(upstream_error(false, "上游服务返回的数据异常，回答不完整"));
            }
            let read = tokio::select! {
                biased;
                read = self.response.chunk() => read,
                () = poll_fn(|cx| {
                    crate::clock::poll_until(&mut self.idle, cx, self.last_read + self.idle_timeout)
                }) => {
                    return Err(upstream_error(true, "上游服务长时间无响应，回答已中断"));
                }
            };
            match read {
                Err(e) => {
                    tracing::warn!(channel = %self.channel, error = %e, "upstream stream broke off");
                    return Err(upstream_error(false, "上游服务连接中断，回答不完整"));
                }
                Ok(None) => self.ended = true,
                Ok(Some(bytes)) => {
                    self.last_read = Instant::now();
                    self.parser.push(&bytes);
                }
            }
        }
    }
}

/// `path` below a channel's `base_url`.
fn endpoint(base_url: &str, path: &str) -> String {
    format!("{}/{path}", base_url.trim_end_matches('/'))
}

/// `body` as the bytes of a JSON request body.
fn to_bytes(body: &Value) -> Result<Bytes, AppError> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| AppError::Internal(format!("encoding an upstream request: {e}")))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn channel(name: &str, priority: i32, weight: u32, models: &[&str]) -> Channel {
        Channel {
            models: models.iter().map(|m| m.to_string()).collect(),
            priority,
            weight,
            ..Channel::new(name, "http://127.0.0.1:9/v1")
        }
    }

    #[test]
    fn channels_of_one_priority_lead_in_proportion_to_their_weight() {
        let config = Config {
            channels: vec![
                channel("backup", 1, 5, &[]),
                channel("big", 0, 3, &[]),
                channel("small", 0, 1, &[]),
                channel("other-model", 0, 9, &["x"]),
            ],
            ..Config::default()
        };
        let up = Upstream::new(&config).unwrap();
        let mut leads: HashMap<String, usize> = HashMap::new();
        for _ in 0..400 {
            let order: Vec<&str> = up
                .order("m")
                .iter()
                .map(|c| c.config.name.as_str())
                .collect();
            assert_eq!(order.len(), 3, "{order:?}");
            assert_eq!(order[2], "backup", "lower priority always after: {order:?}");
            *leads.entry(order[0].to_string()).or_default() += 1;
        }
        assert_eq!((leads["big"], leads["small"]), (300, 100), "{leads:?}");
        // Smooth: the light channel is never starved for long.
        let firsts: Vec<String> = (0..8)
            .map(|_| up.order("m")[0].config.name.clone())
            .collect();
        assert!(
            firsts.windows(4).all(|w| w.iter().any(|n| n == "small")),
            "{firsts:?}"
        );
    }

    /// Events from a response whose body comes in `parts`.
    fn events_of(parts: Vec<Vec<u8>>) -> HttpEvents {
        let stream = futures_util::stream::iter(
            parts
                .into_iter()
                .map(|p| Ok::<_, std::io::Error>(bytes::Bytes::from(p))),
        );
        let response = http::Response::new(reqwest::Body::wrap_stream(stream));
        let up = Upstream::new(&Config::default()).unwrap();
        up.events(reqwest::Response::from(response), "c".into())
    }

    #[tokio::test]
    async fn an_upstream_event_that_never_ends_is_cut_at_its_limit() {
        let piece = vec![b'x'; 64 << 10];
        let mut parts = vec![b"data: {\"a\":1}\n\ndata: ".to_vec()];
        // 8 MiB of one line, never ended; the reader stops after about half of it.
        parts.extend(std::iter::repeat_n(piece, 128));
        let mut events = events_of(parts);
        let first = events.next().await.unwrap().unwrap();
        assert_eq!(&first.data[..], b"{\"a\":1}");
        let err = events.next().await.unwrap_err();
        assert!(
            matches!(err, AppError::Upstream { timeout: false, .. }),
            "{err:?}"
        );
        assert!(
            events.parser.buffered_len() <= MAX_EVENT_BYTES + (64 << 10),
            "{}",
            events.parser.buffered_len()
        );
    }

    #[tokio::test]
    async fn a_large_event_under_the_limit_goes_through() {
        let big = "y".repeat(MAX_EVENT_BYTES / 2);
        let body = format!("data: {big}\n\ndata: [DONE]\n\n").into_bytes();
        let parts = body.chunks(50_000).map(<[u8]>::to_vec).collect();
        let mut events = events_of(parts);
        let event = events.next().await.unwrap().unwrap();
        assert_eq!(event.data.len(), big.len());
        assert_eq!(&events.next().await.unwrap().unwrap().data[..], b"[DONE]");
    }

    #[test]
    fn a_bad_proxy_url_is_a_clear_start_error() {
        let mut c = channel("p", 0, 1, &[]);
        c.proxy = Some("::not a url".into());
        let err = Upstream::new(&Config {
            channels: vec![c],
            ..Config::default()
        })
        .err()
        .unwrap();
        assert!(err.contains("channel p: proxy"), "{err}");
    }
}
