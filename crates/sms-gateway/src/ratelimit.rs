//! A per-number limit on inbound messages (`RATE_LIMIT_PER_MINUTE`), kept in this process's
//! memory: it protects the model bill from a runaway sender, not a shared quota, so with several
//! gateway processes each one counts the messages it receives (a number may get up to the limit
//! through each). A message counts once: Twilio's retry of a message already stored, or of one
//! whose storing failed, gives its token back ([`RateLimiter::refund`]).
//!
//! The limit is a token bucket in its GCRA form: a number may send `per_minute` messages in a
//! burst, then one more every `60 s / per_minute`. Unlike counts per calendar minute, a burst
//! straddling a minute boundary cannot get twice the limit through.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Duration, Utc};

/// Numbers tracked before those whose bucket is full again are forgotten.
const PRUNE_ABOVE: usize = 10_000;

#[derive(Debug)]
pub(crate) struct RateLimiter {
    /// Time for one message's token to come back.
    interval: Duration,
    /// How far ahead of now a number's next free time may run: the burst, less one message.
    tolerance: Duration,
    /// Number → when its bucket is next full (GCRA's "theoretical arrival time").
    full_at: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl RateLimiter {
    /// Allows a burst of `per_minute` messages per number, refilled at `per_minute` a minute.
    pub(crate) fn new(per_minute: NonZeroU32) -> Self {
        let interval = Duration::minutes(1) / i32::try_from(per_minute.get()).unwrap_or(i32::MAX);
        RateLimiter {
            interval,
            tolerance: Duration::minutes(1) - interval,
            full_at: Mutex::default(),
        }
    }

    /// Counts a message from `number` at `now`; `false` when it is over the limit (and then it
    /// uses up nothing, so a sender who keeps trying is not locked out for longer).
    pub(crate) fn allow(&self, number: &str, now: DateTime<Utc>) -> bool {
        let mut full_at = self.full_at.lock().unwrap_or_else(PoisonError::into_inner);
        if full_at.len() > PRUNE_ABOVE {
            full_at.retain(|_, at| *at > now);
        }
        let start = full_at.get(number).map_or(now, |at| (*at).max(now));
        if start - now > self.tolerance {
            return false;
        }
        full_at.insert(number.to_owned(), start + self.interval);
        true
    }

    /// Gives back the token [`allow`](Self::allow) took for a message from `number` that was not
    /// a new one after all (a retried delivery the store had already) or was not stored.
    pub(crate) fn refund(&self, number: &str, now: DateTime<Utc>) {
        let mut full_at = self.full_at.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = full_at.get_mut(number) {
            *at -= self.interval;
            if *at <= now {
                full_at.remove(number);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn limiter(per_minute: u32) -> RateLimiter {
        RateLimiter::new(NonZeroU32::new(per_minute).unwrap())
    }

    #[test]
    fn a_burst_of_the_limit_is_allowed_then_one_per_interval() {
        let limiter = limiter(2);
        let t0 = Utc.with_ymd_and_hms(2026, 11, 24, 18, 0, 5).unwrap();
        assert!(limiter.allow("+1", t0));
        assert!(limiter.allow("+1", t0));
        assert!(!limiter.allow("+1", t0));
        assert!(limiter.allow("+2", t0), "numbers are limited separately");
        assert!(!limiter.allow("+1", t0 + Duration::seconds(29)));
        assert!(limiter.allow("+1", t0 + Duration::seconds(30)));
        assert!(!limiter.allow("+1", t0 + Duration::seconds(31)));
    }

    #[test]
    fn a_burst_across_a_minute_boundary_gets_no_more_through() {
        let limiter = limiter(6);
        let t0 = Utc.with_ymd_and_hms(2026, 11, 24, 18, 0, 59).unwrap();
        let allowed = (0..12)
            .filter(|i| limiter.allow("+1", t0 + Duration::milliseconds(i * 200)))
            .count();
        assert_eq!(allowed, 6);
    }

    #[test]
    fn a_quiet_number_gets_its_whole_burst_back() {
        let limiter = limiter(3);
        let t0 = Utc.with_ymd_and_hms(2026, 11, 24, 18, 0, 0).unwrap();
        assert_eq!((0..5).filter(|_| limiter.allow("+1", t0)).count(), 3);
        let later = t0 + Duration::minutes(1);
        assert_eq!((0..5).filter(|_| limiter.allow("+1", later)).count(), 3);
    }

    #[test]
    fn a_refunded_message_uses_no_token() {
        let limiter = limiter(2);
        let t0 = Utc.with_ymd_and_hms(2026, 11, 24, 18, 0, 0).unwrap();
        assert!(limiter.allow("+1", t0));
        for _ in 0..5 {
            assert!(limiter.allow("+1", t0));
            limiter.refund("+1", t0);
        }
        assert!(limiter.allow("+1", t0));
        assert!(!limiter.allow("+1", t0));
        // A refund for a number never counted, or whose bucket is full again, changes nothing.
        limiter.refund("+2", t0);
        assert!(limiter.allow("+2", t0) && limiter.allow("+2", t0));
        assert!(!limiter.allow("+2", t0));
    }

    #[test]
    fn rejected_messages_do_not_extend_the_wait() {
        let limiter = limiter(1);
        let t0 = Utc.with_ymd_and_hms(2026, 11, 24, 18, 0, 0).unwrap();
        assert!(limiter.allow("+1", t0));
        for s in 1..60 {
            assert!(!limiter.allow("+1", t0 + Duration::seconds(s)));
        }
        assert!(limiter.allow("+1", t0 + Duration::seconds(60)));
    }
}
