//! How many failed logins the inspector takes: per client address and overall, within a sliding
//! window. Once either is reached, every login is refused (the right token too, so that guessing
//! on learns nothing) until the oldest failure counted leaves the window.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};

/// How many failed logins are let through before the next are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimit {
    /// Failed logins from one client address within [`window`](Self::window).
    pub per_address: u32,
    /// Failed logins from every address together within [`window`](Self::window).
    pub overall: u32,
    /// How long a failure counts.
    pub window: Duration,
}

impl Default for LoginLimit {
    /// 10 failures per address and 100 overall in 15 minutes.
    fn default() -> Self {
        LoginLimit {
            per_address: 10,
            overall: 100,
            window: Duration::minutes(15),
        }
    }
}

/// The failures counted, by client address (`None`: the server was not told the address).
#[derive(Debug, Default)]
struct Failures {
    by_address: HashMap<Option<IpAddr>, VecDeque<DateTime<Utc>>>,
    all: VecDeque<DateTime<Utc>>,
}

/// Counts failed logins against a [`LoginLimit`]; times come from the caller's clock.
#[derive(Debug)]
pub(crate) struct Limiter {
    limit: LoginLimit,
    failures: Mutex<Failures>,
}

/// Drops the failures that left the window ending at `now`.
fn expire(times: &mut VecDeque<DateTime<Utc>>, window: Duration, now: DateTime<Utc>) {
    while times.front().is_some_and(|at| *at + window <= now) {
        times.pop_front();
    }
}

/// When `times` (oldest first) holds `limit` failures or more, how long until one leaves the
/// window: at least a second, in whole seconds.
fn wait(
    times: &VecDeque<DateTime<Utc>>,
    limit: u32,
    window: Duration,
    now: DateTime<Utc>,
) -> Option<Duration> {
    if times.len() < limit as usize {
        return None;
    }
    let until = times.front().map_or(now, |at| *at + window);
    let seconds = ((until - now).num_milliseconds() + 999).div_euclid(1000);
    Some(Duration::seconds(seconds.max(1)))
}

impl Limiter {
    pub(crate) fn new(limit: LoginLimit) -> Self {
        Limiter {
            limit,
            failures: Mutex::new(Failures::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Failures> {
        // Counting goes on after a panic elsewhere: the counts stay meaningful.
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Err` with how long to wait when a login from `client` is not taken at `now`.
    pub(crate) fn check(&self, client: Option<IpAddr>, now: DateTime<Utc>) -> Result<(), Duration> {
        let window = self.limit.window;
        let mut failures = self.lock();
        expire(&mut failures.all, window, now);
        let overall = wait(&failures.all, self.limit.overall, window, now);
        // Every address's failures expire here, so an address that never comes back is dropped.
        failures.by_address.retain(|_, times| {
            expire(times, window, now);
            !times.is_empty()
        });
        let mine = failures
            .by_address
            .get(&client)
            .and_then(|times| wait(times, self.limit.per_address, window, now));
        match (overall, mine) {
            (None, None) => Ok(()),
            (Some(a), Some(b)) => Err(a.max(b)),
            (Some(wait), None) | (None, Some(wait)) => Err(wait),
        }
    }

    /// Counts a failed login from `client` at `now`.
    pub(crate) fn failed(&self, client: Option<IpAddr>, now: DateTime<Utc>) {
        let mut failures = self.lock();
        failures.all.push_back(now);
        failures
            .by_address
            .entry(client)
            .or_default()
            .push_back(now);
    }

    /// Forgets `client`'s failures: it logged in.
    pub(crate) fn succeeded(&self, client: Option<IpAddr>) {
        self.lock().by_address.remove(&client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    fn limiter() -> Limiter {
        Limiter::new(LoginLimit {
            per_address: 3,
            overall: 5,
            window: Duration::minutes(10),
        })
    }

    #[test]
    fn an_address_is_refused_after_its_failures_until_the_oldest_leaves_the_window() {
        let limiter = limiter();
        for minute in 0..3 {
            assert_eq!(
                limiter.check(ip(1), t0() + Duration::minutes(minute)),
                Ok(())
            );
            limiter.failed(ip(1), t0() + Duration::minutes(minute));
        }
        let now = t0() + Duration::minutes(4);
        assert_eq!(limiter.check(ip(1), now), Err(Duration::minutes(6)));
        // Another address is not held back.
        assert_eq!(limiter.check(ip(2), now), Ok(()));
        // The first failure leaves the window at minute 10.
        let almost = t0() + Duration::minutes(10) - Duration::milliseconds(1);
        assert_eq!(limiter.check(ip(1), almost), Err(Duration::seconds(1)));
        assert_eq!(limiter.check(ip(1), t0() + Duration::minutes(10)), Ok(()));
    }

    #[test]
    fn failures_from_every_address_together_are_limited_too() {
        let limiter = limiter();
        for last in 1..=5 {
            assert_eq!(limiter.check(ip(last), t0()), Ok(()));
            limiter.failed(ip(last), t0());
        }
        assert_eq!(
            limiter.check(ip(9), t0() + Duration::minutes(1)),
            Err(Duration::minutes(9))
        );
        assert_eq!(limiter.check(ip(9), t0() + Duration::minutes(10)), Ok(()));
    }

    #[test]
    fn a_login_forgets_its_addresss_failures_but_not_the_overall_count() {
        let limiter = limiter();
        for _ in 0..2 {
            limiter.failed(ip(1), t0());
        }
        limiter.succeeded(ip(1));
        limiter.failed(ip(1), t0());
        limiter.failed(ip(1), t0());
        assert_eq!(limiter.check(ip(1), t0()), Ok(()));
        limiter.failed(ip(2), t0());
        // Five failures in all: everyone waits.
        assert!(limiter.check(ip(3), t0()).is_err());
    }
}
