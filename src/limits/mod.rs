//! Protection limits, in process: requests per client address (every endpoint), chats
//! per user per minute, concurrent answers per user, and a global cap on open upstream
//! streams. Exceeding one is 102 `rate_limited` with a `Retry-After`.
//!
//! The rate limiters are governor's GCRA, generic over the clock so tests drive them
//! with a fake one instead of sleeping. With Redis configured, the per-address and
//! per-user rates are decided in Redis (`redis.rs`) and so shared by every replica;
//! the in-process limiters decide whenever Redis cannot.

mod redis;

pub use self::redis::{SharedLimits, Verdict};

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use http::HeaderMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Limits;
use crate::error::{AppError, Refusal};

type Keyed<K, C> = RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

pub struct Limiter<C: Clock = DefaultClock> {
    clock: C,
    /// `None` when the limit is switched off (0 in the config).
    per_ip: Option<Keyed<IpAddr, C>>,
    user_chats: Option<Keyed<i64, C>>,
    /// The same two rates in Redis, when configured.
    shared: Option<SharedLimits>,
    ip_rate: (Duration, u32),
    chat_rate: (Duration, u32),
    max_user_streams: u32,
    /// Answers open per user.
    user_streams: Arc<Mutex<HashMap<i64, u32>>>,
    upstream: Arc<Semaphore>,
}

/// Held by an answer while it runs; frees its places when dropped.
#[derive(Debug)]
pub struct StreamPermit {
    user_id: i64,
    user_streams: Arc<Mutex<HashMap<i64, u32>>>,
    _upstream: OwnedSemaphorePermit,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.user_streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.user_id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.user_id);
            }
        }
    }
}

const IP_MSG: &str = "请求过于频繁，请稍后再试";
const CHAT_MSG: &str = "提问过于频繁，请稍后再试";

fn ceil_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil() as u64
}

fn rate_limited(msg: &str, retry_after_secs: u64) -> AppError {
    AppError::Refused {
        reason: Refusal::RateLimited,
        msg: msg.to_string(),
        retry_after_secs: Some(retry_after_secs.max(1)),
    }
}

impl Limiter<DefaultClock> {
    pub fn new(limits: &Limits) -> Self {
        Self::with_clock(limits, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limiter<C> {
    pub fn with_clock(limits: &Limits, clock: C) -> Self {
        let per_ip = NonZeroU32::new(limits.ip_per_second).map(|rate| {
            let burst = NonZeroU32::new(limits.ip_burst).unwrap_or(rate);
            RateLimiter::dashmap_with_clock(
                Quota::per_second(rate).allow_burst(burst),
                clock.clone(),
            )
        });
        let user_chats = NonZeroU32::new(limits.user_chats_per_minute)
            .map(|rate| RateLimiter::dashmap_with_clock(Quota::per_minute(rate), clock.clone()));
        let upstream = match limits.upstream_concurrent_streams {
            0 => Semaphore::MAX_PERMITS,
            n => n as usize,
        };
        let ip_burst = match limits.ip_burst {
            0 => limits.ip_per_second,
            b => b,
        };
        Self {
            clock,
            per_ip,
            user_chats,
            shared: None,
            ip_rate: (
                Duration::from_secs(1) / limits.ip_per_second.max(1),
                ip_burst,
            ),
            chat_rate: (
                Duration::from_secs(60) / limits.user_chats_per_minute.max(1),
                limits.user_chats_per_minute,
            ),
            max_user_streams: limits.user_concurrent_streams,
            user_streams: Arc::default(),
            upstream: Arc::new(Semaphore::new(upstream)),
        }
    }

    fn check<K: std::hash::Hash + Eq + Clone>(
        &self,
        limiter: &Option<Keyed<K, C>>,
        key: &K,
        msg: &str,
    ) -> Result<(), AppError> {
        match limiter {
            Some(l) => l.check_key(key).map_err(|not_until| {
                rate_limited(
                    msg,
                    not_until
                        .wait_time_from(self.clock.now())
                        .as_secs_f64()
                        .ceil() as u64,
                )
            }),
            None => Ok(()),
        }
    }

    /// Decides the per-address and per-user rates in Redis from now on.
    pub fn share(mut self, shared: SharedLimits) -> Self {
        self.shared = Some(shared);
        self
    }

    /// Whether Redis decides (false without Redis, or while it is unreachable).
    pub fn shared_ok(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| !s.degraded())
    }

    /// One request from `ip`, counted across replicas when Redis is configured.
    pub async fn check_ip(&self, ip: IpAddr) -> Result<(), AppError> {
        if self.per_ip.is_none() {
            return Ok(());
        }
        match self.check_shared("ip", &ip.to_string(), self.ip_rate).await {
            Some(result) => result.map_err(|wait| rate_limited(IP_MSG, ceil_secs(wait))),
            None => self.check_ip_here(ip),
        }
    }

    /// One chat (or image, or API completion) of `user_id`, counted across replicas
    /// when Redis is configured.
    pub async fn check_chat(&self, user_id: i64) -> Result<(), AppError> {
        if self.user_chats.is_none() {
            return Ok(());
        }
        match self
            .check_shared("chat", &user_id.to_string(), self.chat_rate)
            .await
        {
            Some(result) => result.map_err(|wait| rate_limited(CHAT_MSG, ceil_secs(wait))),
            None => self.check_chat_here(user_id),
        }
    }

    async fn check_shared(
        &self,
        name: &str,
        key: &str,
        (interval, burst): (Duration, u32),
    ) -> Option<Result<(), Duration>> {
        let shared = self.shared.as_ref()?;
        // Boxed: a Redis round trip's future is large, and every request's future would
        // carry its room even where no Redis is configured.
        match Box::pin(shared.check(name, key, interval, burst)).await? {
            Verdict::Admit => Some(Ok(())),
            Verdict::Wait(wait) => Some(Err(wait)),
        }
    }

    /// One request from `ip`, counted in this process only.
    pub fn check_ip_here(&self, ip: IpAddr) -> Result<(), AppError> {
        self.check(&self.per_ip, &ip, IP_MSG)
    }

    /// One chat of `user_id`, counted in this process only.
    pub fn check_chat_here(&self, user_id: i64) -> Result<(), AppError> {
        self.check(&self.user_chats, &user_id, CHAT_MSG)
    }

    /// A place for one more open answer of `user_id`, and one of the upstream streams.
    pub fn open_stream(&self, user_id: i64) -> Result<StreamPermit, AppError> {
        let upstream = Arc::clone(&self.upstream)
            .try_acquire_owned()
            .map_err(|_| rate_limited("服务繁忙，请稍后再试", 5))?;
        let mut open = self.user_streams.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(user_id).or_insert(0);
        if self.max_user_streams > 0 && *n >= self.max_user_streams {
            if *n == 0 {
                open.remove(&user_id);
            }
            return Err(rate_limited("同时进行的回答过多，请等当前回答结束", 5));
        }
        *n += 1;
        Ok(StreamPermit {
            user_id,
            user_streams: Arc::clone(&self.user_streams),
            _upstream: upstream,
        })
    }

    /// Forgets keys whose limits are back to full (bounded memory).
    pub fn retain_recent(&self) {
        if let Some(l) = &self.per_ip {
            l.retain_recent();
        }
        if let Some(l) = &self.user_chats {
            l.retain_recent();
        }
    }
}

/// The client's address: the TCP peer, or — only when the peer is a trusted proxy —
/// the nearest untrusted address of `X-Forwarded-For` (or `X-Real-IP`).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let forwarded = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|list| {
            list.rsplit(',')
                .filter_map(|a| a.trim().parse::<IpAddr>().ok())
                .find(|a| !trusted.contains(a))
        });
    forwarded
        .or_else(|| {
            headers
                .get("x-real-ip")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limits() -> Limits {
        Limits {
            ip_per_second: 5,
            ip_burst: 10,
            user_chats_per_minute: 20,
            user_concurrent_streams: 2,
            upstream_concurrent_streams: 3,
            ..Limits::default()
        }
    }

    #[test]
    fn per_ip_limit_is_reached_refused_with_retry_after_and_recovers() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::with_clock(&limits(), clock.clone());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..10 {
            l.check_ip_here(ip).unwrap();
        }
        let err = l.check_ip_here(ip).unwrap_err();
        assert_eq!(
            (err.code(), err.status().as_u16(), err.reason()),
            (102, 429, Some("rate_limited"))
        );
        assert_eq!(err.retry_after_secs(), Some(1));
        // Another address is not affected.
        l.check_ip_here("10.0.0.2".parse().unwrap()).unwrap();
        // 5 per second: after 200 ms one more fits, not two.
        clock.advance(Duration::from_millis(200));
        l.check_ip_here(ip).unwrap();
        assert!(l.check_ip_here(ip).is_err());
        clock.advance(Duration::from_secs(2));
        for _ in 0..10 {
            l.check_ip_here(ip).unwrap();
        }
    }

    #[test]
    fn chats_per_minute_are_limited_per_user() {
        let clock = FakeRelativeClock::default();
        let l = Limiter::with_clock(&limits(), clock.clone());
        for _ in 0..20 {
            l.check_chat_here(7).unwrap();
        }
        let err = l.check_chat_here(7).unwrap_err();
        assert_eq!(
            err.retry_after_secs(),
            Some(3),
            "20 a minute: one every 3 s"
        );
        l.check_chat_here(8).unwrap();
        clock.advance(Duration::from_secs(3));
        l.check_chat_here(7).unwrap();
        assert!(l.check_chat_here(7).is_err());
    }

    #[test]
    fn open_answers_are_capped_per_user_and_overall() {
        let l = Limiter::with_clock(&limits(), FakeRelativeClock::default());
        let a = l.open_stream(1).unwrap();
        let b = l.open_stream(1).unwrap();
        assert_eq!(l.open_stream(1).unwrap_err().reason(), Some("rate_limited"));
        drop(a);
        let c = l.open_stream(1).unwrap();
        // Three upstream streams in all.
        let d = l.open_stream(2).unwrap();
        assert!(l.open_stream(3).is_err());
        drop((b, c, d));
        assert!(l.open_stream(3).is_ok());
        assert!(l.user_streams.lock().unwrap().is_empty());
    }

    #[test]
    fn a_zero_switches_a_limit_off() {
        let off = Limits {
            ip_per_second: 0,
            user_chats_per_minute: 0,
            user_concurrent_streams: 0,
            upstream_concurrent_streams: 0,
            ..Limits::default()
        };
        let l = Limiter::with_clock(&off, FakeRelativeClock::default());
        let permits: Vec<_> = (0..100).map(|_| l.open_stream(1).unwrap()).collect();
        for _ in 0..1000 {
            l.check_ip_here("10.0.0.1".parse().unwrap()).unwrap();
            l.check_chat_here(1).unwrap();
        }
        drop(permits);
    }

    #[test]
    fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "203.0.113.9, 198.51.100.7, 127.0.0.1".parse().unwrap(),
        );
        assert_eq!(
            client_ip(proxy, &h, &[proxy]),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(proxy, &h, &[]),
            proxy,
            "an untrusted peer cannot pick its address"
        );
        let mut h = HeaderMap::new();
        h.insert("x-real-ip", "198.51.100.8".parse().unwrap());
        assert_eq!(
            client_ip(proxy, &h, &[proxy]),
            "198.51.100.8".parse::<IpAddr>().unwrap()
        );
    }
}
