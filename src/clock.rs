//! Wall-clock time as Unix seconds and milliseconds, the only form stored; and a timer
//! for deadlines that keep moving later.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::{Instant, Sleep};

pub fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Waits on `timer` until `due`, a deadline that only ever moves later (the end of a
/// silence that activity keeps pushing back). The timer is not moved each time `due`
/// does: when it fires early it is moved to `due` and waited for again.
pub fn poll_until(timer: &mut Pin<Box<Sleep>>, cx: &mut Context<'_>, due: Instant) -> Poll<()> {
    loop {
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if Instant::now() >= due {
            return Poll::Ready(());
        }
        timer.as_mut().reset(due);
    }
}
