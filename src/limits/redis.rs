//! Rate limits shared by every replica: one GCRA per key kept in Redis and updated by
//! one atomic script, with Redis's own clock, so replicas' clocks never matter.
//!
//! Redis is a help, not a dependency: when it cannot be reached (or answers slowly),
//! the caller falls back to its in-process limiter and a warning is logged once; the
//! next call after a short back-off tries Redis again.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

/// GCRA with the theoretical arrival time (TAT) in integer microseconds of Redis time.
/// KEYS[1] = the key; ARGV[1] = emission interval (µs), ARGV[2] = burst.
/// Returns 0 when admitted, else the microseconds until the next request would be.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat + interval - burst * interval
if now < allow_at then
  return math.ceil(allow_at - now)
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 0
";

/// How long one Redis call may take before the in-process limiter decides instead.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// After a failure, how long to decide in process before trying Redis again.
const BACK_OFF: Duration = Duration::from_secs(2);

pub struct SharedLimits {
    client: redis::Client,
    prefix: String,
    script: redis::Script,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    started: Instant,
    /// Until when (ms since `started`) Redis is skipped after a failure.
    skip_until_ms: AtomicU64,
    degraded: AtomicBool,
    last_error: Mutex<String>,
}

/// What Redis said about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// Refused: the next request fits after this long.
    Wait(Duration),
}

impl SharedLimits {
    /// Parses the URL (no connection yet: a Redis that is down at start-up only means
    /// in-process limits until it is up).
    pub fn new(url: &str, prefix: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis_url: {e}"))?;
        Ok(Self {
            client,
            prefix: prefix.to_string(),
            script: redis::Script::new(GCRA),
            conn: tokio::sync::Mutex::new(None),
            started: Instant::now(),
            skip_until_ms: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
            last_error: Mutex::new(String::new()),
        })
    }

    /// Whether the last decision was made without Redis.
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// One request against the limit `name`/`key`: `burst` at once, then one every
    /// `interval`. `None` when Redis could not decide (the caller decides in process).
    pub async fn check(
        &self,
        name: &str,
        key: &str,
        interval: Duration,
        burst: u32,
    ) -> Option<Verdict> {
        let now_ms = self.started.elapsed().as_millis() as u64;
        if now_ms < self.skip_until_ms.load(Ordering::Relaxed) {
            return None;
        }
        let full_key = format!("{}{name}:{key}", self.prefix);
        let interval_us = interval.as_micros().max(1) as u64;
        match tokio::time::timeout(CALL_TIMEOUT, self.call(&full_key, interval_us, burst)).await {
            Ok(Ok(wait_us)) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::warn!("redis is back: rate limits are shared by all replicas again");
                }
                Some(if wait_us == 0 {
                    Verdict::Admit
                } else {
                    Verdict::Wait(Duration::from_micros(wait_us))
                })
            }
            Ok(Err(e)) => {
                self.fail(e.to_string()).await;
                None
            }
            Err(_) => {
                self.fail(format!("no answer within {} ms", CALL_TIMEOUT.as_millis()))
                    .await;
                None
            }
        }
    }

    async fn call(&self, key: &str, interval_us: u64, burst: u32) -> redis::RedisResult<u64> {
        let mut conn = {
            let mut slot = self.conn.lock().await;
            match slot.as_ref() {
                Some(c) => c.clone(),
                None => {
                    let c = self.client.get_multiplexed_async_connection().await?;
                    *slot = Some(c.clone());
                    c
                }
            }
        };
        self.script
            .key(key)
            .arg(interval_us)
            .arg(burst)
            .invoke_async(&mut conn)
            .await
    }

    async fn fail(&self, error: String) {
        *self.conn.lock().await = None;
        let until = self.started.elapsed() + BACK_OFF;
        self.skip_until_ms
            .store(until.as_millis() as u64, Ordering::Relaxed);
        let first = !self.degraded.swap(true, Ordering::Relaxed);
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        if first || *last != error {
            tracing::warn!(
                error = %error,
                "redis unreachable: rate limits fall back to this replica's own counts"
            );
            *last = error;
        }
    }
}
