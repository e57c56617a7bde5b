//! A per-number limit on inbound messages per minute (`RATE_LIMIT_PER_MINUTE`), kept in this
//! process's memory: it protects the model bill from a runaway sender, not a shared quota, so
//! with several gateway processes each one counts the messages it receives.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};

/// Numbers tracked before the counts of past minutes are dropped.
const PRUNE_ABOVE: usize = 10_000;

/// Fixed one-minute windows per number.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_minute: NonZeroU32,
    /// Number → (minute since the epoch, messages in it).
    windows: Mutex<HashMap<String, (i64, u32)>>,
}

impl RateLimiter {
    /// Allows `per_minute` messages per number per calendar minute.
    pub(crate) fn new(per_minute: NonZeroU32) -> Self {
        RateLimiter {
            per_minute,
            windows: Mutex::default(),
        }
    }

    /// Counts a message from `number` at `now`; `false` when it is over the limit.
    pub(crate) fn allow(&self, number: &str, now: DateTime<Utc>) -> bool {
        let minute = now.timestamp().div_euclid(60);
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if windows.len() > PRUNE_ABOVE {
            windows.retain(|_, (window, _)| *window == minute);
        }
        let entry = windows.entry(number.to_owned()).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1 <= self.per_minute.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    #[test]
    fn limits_each_number_per_minute() {
        let limiter = RateLimiter::new(NonZeroU32::new(2).unwrap());
        let t0 = Utc.with_ymd_and_hms(2026, 11, 24, 18, 0, 5).unwrap();
        assert!(limiter.allow("+1", t0));
        assert!(limiter.allow("+1", t0));
        assert!(!limiter.allow("+1", t0));
        assert!(limiter.allow("+2", t0));
        let next_minute = t0 + chrono::Duration::seconds(60);
        assert!(limiter.allow("+1", next_minute));
    }
}
