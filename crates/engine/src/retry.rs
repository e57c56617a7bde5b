//! Retrying a failed call: capped exponential backoff with full jitter, the server's
//! `Retry-After` when it sends one, and a time budget for the whole call.
//!
//! One policy for every call that is worth repeating: the model client's requests, the
//! gateway's Twilio requests and the turn driver's commits all run through [`retry`], each with
//! its own [`RetryPolicy`] and its own error type, whose [`Failure::verdict`] says what is worth
//! another attempt.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

/// How often and how patiently to retry a failed call.
///
/// Between attempts it waits what the server asked for (`Retry-After`); without that, a random
/// delay between zero and `base_delay · 2^(retry − 1)`, capped by
/// [`with_max_delay`](Self::with_max_delay) ("full jitter"), so that many callers failing
/// together do not retry in lockstep.
///
/// The whole call, attempts and waits together, stays within the [budget](Self::with_budget):
/// each attempt is given the time left, and attempts go on, further and further apart, until
/// the budget is spent, so a short outage is ridden out. The call gives up at once, without
/// waiting, when the wait before the next attempt would use up what is left of the budget, or
/// when the server asks for a wait longer than
/// [`with_max_retry_after`](Self::with_max_retry_after): a server's wait is never shortened to
/// fit, since someone is waiting for the answer, and an answer now (an error the caller can act
/// on) is better than the same refusal later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
    max_retry_after: Duration,
    budget: Duration,
}

impl Default for RetryPolicy {
    /// A model call's: as many attempts as the budget holds, 250 ms base delay, 8 s maximum
    /// backoff, `Retry-After` honoured up to 30 s, 90 s for the whole call.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: u32::MAX,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(30),
            budget: Duration::from_secs(90),
        }
    }
}

impl RetryPolicy {
    /// A policy that makes exactly one attempt.
    pub fn no_retries() -> Self {
        RetryPolicy::default().with_max_attempts(1)
    }

    /// Attempts in all, the first included; at least one (zero is read as one). By default
    /// there is no count: the budget ends the retrying.
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts.max(1);
        self
    }

    /// The backoff before the first retry, doubled for each further one (before jitter).
    pub fn with_base_delay(mut self, base_delay: Duration) -> Self {
        self.base_delay = base_delay;
        self
    }

    /// The longest backoff between two attempts when the server gave no `Retry-After`.
    pub fn with_max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// The longest wait granted to a server's `Retry-After`; a server asking for longer ends
    /// the call at once (it would not be ready sooner), so a misbehaving server cannot stall a
    /// caller for minutes.
    pub fn with_max_retry_after(mut self, max_retry_after: Duration) -> Self {
        self.max_retry_after = max_retry_after;
        self
    }

    /// The time one call may take in all, attempts and the waits between them included.
    pub fn with_budget(mut self, budget: Duration) -> Self {
        self.budget = budget;
        self
    }

    /// Attempts in all, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The time one call may take in all.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// How long to wait before retry number `retry` (1 for the second attempt) when the server
    /// asked for `retry_after`: that, or else the jittered backoff. `None` when the server
    /// asked for longer than the policy's maximum: then there is no retry.
    pub fn delay_before_retry(
        &self,
        retry: u32,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        self.delay_with_rng(retry, retry_after, &mut fastrand::Rng::new())
    }

    fn delay_with_rng(
        &self,
        retry: u32,
        retry_after: Option<Duration>,
        rng: &mut fastrand::Rng,
    ) -> Option<Duration> {
        match retry_after {
            Some(asked) => (asked <= self.max_retry_after).then_some(asked),
            None => Some(self.backoff(retry, rng)),
        }
    }

    /// Full jitter: uniform in `[0, min(max_delay, base_delay · 2^(retry − 1))]`.
    fn backoff(&self, retry: u32, rng: &mut fastrand::Rng) -> Duration {
        let doublings = retry.saturating_sub(1);
        let ceiling = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(doublings))
            .min(self.max_delay);
        let ceiling_nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.u64(0..=ceiling_nanos))
    }
}

/// What a failed attempt says about the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Another attempt would fail the same way: the call ends with this error.
    Final,
    /// Another attempt may succeed.
    Retry {
        /// How long the server asked to be left alone (`Retry-After`), if it said; otherwise
        /// the policy's backoff applies.
        after: Option<Duration>,
    },
}

/// An attempt's error as [`retry`] sees it: what it says about another attempt, and, through
/// `Display`, what the logs say of it — never a message's contents or a secret, since retries
/// are logged at `info`.
pub trait Failure: fmt::Display {
    /// Whether another attempt may help, and when.
    fn verdict(&self) -> Verdict;
}

/// How a retried call failed.
#[derive(Debug)]
pub enum RetryError<E> {
    /// An attempt failed with an error whose [`Verdict`] is final; it is returned as it came.
    Final {
        /// That error.
        error: E,
        /// Attempts made, the failed one included.
        attempts: u32,
    },
    /// Every attempt made failed with an error worth retrying, and the policy allowed no
    /// more: the attempts or the budget ran out, or the server asked for a wait the policy
    /// does not grant.
    Exhausted {
        /// The last attempt's error.
        last: E,
        /// Attempts made.
        attempts: u32,
    },
}

impl<E> RetryError<E> {
    /// Attempts made.
    pub fn attempts(&self) -> u32 {
        match self {
            RetryError::Final { attempts, .. } | RetryError::Exhausted { attempts, .. } => {
                *attempts
            }
        }
    }

    /// The last attempt's error.
    pub fn into_last(self) -> E {
        match self {
            RetryError::Final { error, .. } => error,
            RetryError::Exhausted { last, .. } => last,
        }
    }
}

/// Reads a `Retry-After` header value: delay-seconds (`"120"`) or an HTTP-date
/// (`"Wed, 21 Oct 2015 07:28:00 GMT"`, counted from `now`; a date in the past means "now").
/// Anything else is `None`, and the policy's own backoff applies.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    // IMF-fixdate, the HTTP-date form servers send, is valid RFC 2822.
    let date = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (date.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// Runs `op` until it succeeds, fails with an error whose [`Verdict`] is final, or `policy`
/// allows no more attempts, waiting [`RetryPolicy::delay_before_retry`] between attempts. Each
/// call of `op` is given the time left in the policy's budget, which the attempt should not
/// outlast.
///
/// `call` names the call in the logs (`"model call"`): retries are logged at `info` and giving
/// up at `warn`, with the error's `Display` ([`Failure`]), nothing else. Time is tokio's, so a
/// test with paused time sees the budget at work without waiting.
pub async fn retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    call: &str,
    op: F,
) -> Result<T, RetryError<E>>
where
    E: Failure,
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    retry_with(policy, call, op, tokio::time::sleep, || started.elapsed()).await
}

/// [`retry`] with the waiting and the clock injected, so tests can see the delays and the
/// budget at work without waiting.
async fn retry_with<T, E, F, Fut, S, SleepFut>(
    policy: &RetryPolicy,
    call: &str,
    mut op: F,
    mut sleep: S,
    elapsed: impl Fn() -> Duration,
) -> Result<T, RetryError<E>>
where
    E: Failure,
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    S: FnMut(Duration) -> SleepFut,
    SleepFut: Future<Output = ()>,
{
    let mut attempt = 1;
    loop {
        let error = match op(policy.budget.saturating_sub(elapsed())).await {
            Ok(value) => {
                if attempt > 1 {
                    tracing::debug!(attempt, "{call} succeeded after retrying");
                }
                return Ok(value);
            }
            Err(error) => error,
        };
        let Verdict::Retry { after } = error.verdict() else {
            return Err(RetryError::Final {
                error,
                attempts: attempt,
            });
        };
        let left = policy.budget.saturating_sub(elapsed());
        let delay = match policy.delay_before_retry(attempt, after) {
            _ if attempt >= policy.max_attempts => Err("attempts spent"),
            None => Err("the server asked for a longer wait than is granted"),
            Some(delay) if delay >= left => Err("the wait would use up the budget"),
            Some(delay) => Ok(delay),
        };
        let delay = match delay {
            Ok(delay) => delay,
            Err(reason) => {
                tracing::warn!(
                    attempts = attempt,
                    reason,
                    error = %error,
                    "{call} failed; giving up"
                );
                return Err(RetryError::Exhausted {
                    last: error,
                    attempts: attempt,
                });
            }
        };
        tracing::info!(
            attempt,
            delay = ?delay,
            error = %error,
            "{call} failed; retrying"
        );
        sleep(delay).await;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;

    use chrono::TimeZone;

    use super::*;
    use crate::model::ModelError;

    fn http(status: u16, retry_after: Option<Duration>) -> ModelError {
        ModelError::Http {
            status,
            code: None,
            retry_after,
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
            .with_base_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(1))
            .with_max_retry_after(Duration::from_secs(10))
    }

    #[test]
    fn backoff_stays_under_the_doubling_ceiling_and_the_maximum() {
        let policy = policy();
        let mut rng = fastrand::Rng::with_seed(7);
        for retry in 1..=40 {
            let ceiling = Duration::from_millis(100)
                .saturating_mul(2u32.saturating_pow(retry - 1))
                .min(Duration::from_secs(1));
            for _ in 0..200 {
                let delay = policy
                    .delay_with_rng(retry, None, &mut rng)
                    .expect("a backoff");
                assert!(delay <= ceiling, "retry {retry}: {delay:?} > {ceiling:?}");
            }
        }
    }

    #[test]
    fn backoff_is_jittered_and_grows() {
        let policy = policy();
        let mut rng = fastrand::Rng::with_seed(42);
        let first: Vec<Duration> = (0..200).map(|_| policy.backoff(1, &mut rng)).collect();
        let fourth: Vec<Duration> = (0..200).map(|_| policy.backoff(4, &mut rng)).collect();
        let distinct: std::collections::BTreeSet<_> = first.iter().collect();
        assert!(
            distinct.len() > 100,
            "delays are not jittered: {distinct:?}"
        );
        // Retry 1 never exceeds 100 ms; retry 4 may reach 800 ms and, over 200 draws, does exceed 100 ms.
        assert!(first.iter().all(|d| *d <= Duration::from_millis(100)));
        assert!(fourth.iter().any(|d| *d > Duration::from_millis(100)));
    }

    #[test]
    fn backoff_saturates_instead_of_overflowing() {
        let policy = RetryPolicy::default()
            .with_base_delay(Duration::MAX)
            .with_max_delay(Duration::from_secs(5));
        let mut rng = fastrand::Rng::with_seed(1);
        for retry in [1, 64, u32::MAX] {
            assert!(policy.backoff(retry, &mut rng) <= Duration::from_secs(5));
        }
    }

    #[test]
    fn retry_after_replaces_the_backoff() {
        let policy = policy();
        for asked in [
            Duration::ZERO,
            Duration::from_secs(2),
            Duration::from_secs(10),
        ] {
            assert_eq!(policy.delay_before_retry(1, Some(asked)), Some(asked));
            assert_eq!(policy.delay_before_retry(3, Some(asked)), Some(asked));
        }
    }

    #[test]
    fn a_retry_after_over_the_cap_is_no_retry_not_a_shorter_wait() {
        let policy = policy();
        for asked in [Duration::from_millis(10_001), Duration::from_secs(3600)] {
            assert_eq!(policy.delay_before_retry(1, Some(asked)), None);
        }
    }

    #[test]
    fn without_retry_after_the_backoff_applies() {
        let policy = policy();
        for _ in 0..100 {
            let delay = policy.delay_before_retry(1, None).unwrap();
            assert!(delay <= Duration::from_millis(100));
        }
    }

    #[test]
    fn max_attempts_is_at_least_one() {
        assert_eq!(
            RetryPolicy::default().with_max_attempts(0).max_attempts(),
            1
        );
        assert_eq!(RetryPolicy::no_retries().max_attempts(), 1);
        assert_eq!(RetryPolicy::default().max_attempts(), u32::MAX);
    }

    #[test]
    fn retry_after_seconds_and_dates_parse() {
        let now = Utc.with_ymd_and_hms(2015, 10, 21, 7, 28, 0).unwrap();
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("1.5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    /// What a scripted run did.
    struct Run {
        result: Result<&'static str, ModelError>,
        /// The time left in the budget as each attempt was given it.
        given: Vec<Duration>,
        /// The delays slept, in order.
        slept: Vec<Duration>,
    }

    impl Run {
        fn attempts(&self) -> usize {
            self.given.len()
        }
    }

    /// Runs `retry_with` over scripted outcomes, each attempt taking its scripted time, on a
    /// clock that only the attempts and the sleeps move.
    async fn run_timed(
        policy: &RetryPolicy,
        outcomes: Vec<(Duration, Result<&'static str, ModelError>)>,
    ) -> Run {
        let script = RefCell::new(VecDeque::from(outcomes));
        let clock = Cell::new(Duration::ZERO);
        let given = RefCell::new(Vec::new());
        let slept = RefCell::new(Vec::new());
        let result = retry_with(
            policy,
            "model call",
            |left| {
                given.borrow_mut().push(left);
                let (took, next) = script.borrow_mut().pop_front().expect("the script ran out");
                clock.set(clock.get() + took);
                async move { next }
            },
            |delay| {
                slept.borrow_mut().push(delay);
                clock.set(clock.get() + delay);
                async {}
            },
            || clock.get(),
        )
        .await
        .map_err(ModelError::from);
        Run {
            result,
            given: given.into_inner(),
            slept: slept.into_inner(),
        }
    }

    /// [`run_timed`] with attempts that take no time: the result, the attempts made and the
    /// delays slept.
    async fn run(
        policy: &RetryPolicy,
        outcomes: Vec<Result<&'static str, ModelError>>,
    ) -> (Result<&'static str, ModelError>, usize, Vec<Duration>) {
        let outcomes = outcomes.into_iter().map(|o| (Duration::ZERO, o)).collect();
        let run = run_timed(policy, outcomes).await;
        let attempts = run.attempts();
        (run.result, attempts, run.slept)
    }

    #[tokio::test]
    async fn success_needs_no_retry() {
        let (result, attempts, slept) = run(&policy(), vec![Ok("done")]).await;
        assert_eq!(result.unwrap(), "done");
        assert_eq!(attempts, 1);
        assert!(slept.is_empty());
    }

    #[tokio::test]
    async fn a_rate_limit_is_retried_after_the_servers_delay() {
        let outcomes = vec![
            Err(http(429, Some(Duration::from_secs(3)))),
            Err(http(429, Some(Duration::ZERO))),
            Ok("done"),
        ];
        let (result, attempts, slept) = run(&policy(), outcomes).await;
        assert_eq!(result.unwrap(), "done");
        assert_eq!(attempts, 3);
        assert_eq!(slept, vec![Duration::from_secs(3), Duration::ZERO]);
    }

    #[tokio::test]
    async fn a_retry_after_over_the_cap_gives_up_at_once() {
        // 600 s asked, 10 s granted at most, 90 s of budget: cutting the wait to 10 s would
        // retry a server that said it will not be ready.
        let outcomes = vec![Err(http(503, Some(Duration::from_secs(600)))), Ok("never")];
        let (result, attempts, slept) = run(&policy(), outcomes).await;
        assert_eq!(attempts, 1);
        assert!(slept.is_empty());
        assert!(matches!(
            result.unwrap_err(),
            ModelError::RetriesExhausted { attempts: 1, .. }
        ));
    }

    #[tokio::test]
    async fn fast_failures_are_retried_until_the_budget_is_spent() {
        // Failures that take no time, a 10 s budget and backoffs of at most 1 s: the retries
        // spread over the budget instead of stopping after a fixed few.
        let policy = policy().with_budget(Duration::from_secs(10));
        let outcomes = (0..1000)
            .map(|_| (Duration::ZERO, Err(http(500, None))))
            .collect();
        let run = run_timed(&policy, outcomes).await;
        assert!(run.attempts() >= 10, "only {} attempts", run.attempts());
        let slept: Duration = run.slept.iter().sum();
        assert!(slept < Duration::from_secs(10), "slept {slept:?}");
        assert!(
            slept >= Duration::from_secs(9),
            "gave up with {slept:?} of 10 s slept"
        );
        let made = run.attempts();
        match run.result.unwrap_err() {
            ModelError::RetriesExhausted { attempts, .. } => {
                assert_eq!(attempts as usize, made);
            }
            other => panic!("expected RetriesExhausted, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_short_outage_is_ridden_out() {
        let outcomes = (0..8)
            .map(|_| Err(http(503, None)))
            .chain([Ok("done")])
            .collect();
        let (result, attempts, _) = run(&policy(), outcomes).await;
        assert_eq!(result.unwrap(), "done");
        assert_eq!(attempts, 9);
    }

    #[tokio::test]
    async fn persistent_failures_exhaust_the_budget() {
        let policy = policy().with_max_attempts(3);
        let outcomes = (0..3).map(|_| Err(http(500, None))).collect();
        let (result, attempts, slept) = run(&policy, outcomes).await;
        assert_eq!(attempts, 3);
        assert_eq!(slept.len(), 2);
        assert!(slept.iter().all(|d| *d <= Duration::from_millis(200)));
        match result.unwrap_err() {
            ModelError::RetriesExhausted { attempts, last } => {
                assert_eq!(attempts, 3);
                assert!(matches!(*last, ModelError::Http { status: 500, .. }));
            }
            other => panic!("expected RetriesExhausted, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn time_outs_and_transport_failures_are_retried() {
        let outcomes = vec![
            Err(ModelError::Timeout(Duration::from_secs(1))),
            Err(ModelError::Transport("connection reset".into())),
            Ok("done"),
        ];
        let (result, attempts, _) = run(&policy(), outcomes).await;
        assert_eq!(result.unwrap(), "done");
        assert_eq!(attempts, 3);
    }

    #[tokio::test]
    async fn a_non_retryable_error_returns_at_once() {
        let outcomes = vec![Err(http(400, None))];
        let (result, attempts, slept) = run(&policy(), outcomes).await;
        assert!(matches!(
            result.unwrap_err(),
            ModelError::Http { status: 400, .. }
        ));
        assert_eq!(attempts, 1);
        assert!(slept.is_empty());
    }

    #[tokio::test]
    async fn a_non_retryable_error_after_a_retry_is_returned_as_it_is() {
        let outcomes = vec![Err(http(500, None)), Err(ModelError::Refused)];
        let (result, attempts, _) = run(&policy(), outcomes).await;
        assert!(matches!(result.unwrap_err(), ModelError::Refused));
        assert_eq!(attempts, 2);
    }

    #[tokio::test]
    async fn unusable_answers_are_retried() {
        let outcomes = vec![
            Err(ModelError::InvalidResponse("the answer is empty".into())),
            Ok("done"),
        ];
        let (result, attempts, _) = run(&policy(), outcomes).await;
        assert_eq!(result.unwrap(), "done");
        assert_eq!(attempts, 2);
    }

    #[tokio::test]
    async fn one_attempt_means_no_retry() {
        let outcomes = vec![Err(http(429, Some(Duration::ZERO)))];
        let (result, attempts, slept) = run(&RetryPolicy::no_retries(), outcomes).await;
        assert!(matches!(
            result.unwrap_err(),
            ModelError::RetriesExhausted { attempts: 1, .. }
        ));
        assert_eq!(attempts, 1);
        assert!(slept.is_empty());
    }

    #[tokio::test]
    async fn each_attempt_is_given_the_time_left() {
        let policy = policy().with_budget(Duration::from_secs(10));
        let outcomes = vec![
            (
                Duration::from_secs(3),
                Err(http(503, Some(Duration::from_secs(1)))),
            ),
            (
                Duration::from_secs(2),
                Err(http(503, Some(Duration::from_secs(1)))),
            ),
            (Duration::ZERO, Ok("done")),
        ];
        let run = run_timed(&policy, outcomes).await;
        assert_eq!(run.result.unwrap(), "done");
        assert_eq!(
            run.given,
            [
                Duration::from_secs(10),
                Duration::from_secs(6),
                Duration::from_secs(3)
            ]
        );
    }

    #[tokio::test]
    async fn a_retry_after_past_the_budget_gives_up_at_once() {
        // 10 s asked (within the cap), 8 s left: waiting would leave no time to try again.
        let policy = policy().with_budget(Duration::from_secs(10));
        let outcomes = vec![(
            Duration::from_secs(2),
            Err(http(429, Some(Duration::from_secs(10)))),
        )];
        let run = run_timed(&policy, outcomes).await;
        assert_eq!(run.attempts(), 1);
        assert!(run.slept.is_empty());
        match run.result.unwrap_err() {
            ModelError::RetriesExhausted { attempts: 1, last } => {
                assert!(matches!(*last, ModelError::Http { status: 429, .. }));
            }
            other => panic!("expected RetriesExhausted, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn time_outs_stop_when_the_budget_is_spent() {
        // Each attempt times out after what it was given; the third uses the last of it.
        let policy = policy()
            .with_max_attempts(10)
            .with_budget(Duration::from_secs(5));
        let outcomes = vec![
            (
                Duration::from_secs(2),
                Err(ModelError::Timeout(Duration::from_secs(2))),
            ),
            (
                Duration::from_secs(2),
                Err(ModelError::Timeout(Duration::from_secs(2))),
            ),
            (
                Duration::from_secs(1),
                Err(ModelError::Timeout(Duration::from_secs(1))),
            ),
        ];
        let run = run_timed(&policy, outcomes).await;
        assert_eq!(run.attempts(), 3, "given {:?}", run.given);
        assert!(run.given[2] <= Duration::from_secs(1), "{:?}", run.given);
        assert!(matches!(
            run.result.unwrap_err(),
            ModelError::RetriesExhausted { attempts: 3, .. }
        ));
    }

    #[test]
    fn the_budget_is_kept() {
        assert_eq!(RetryPolicy::default().budget(), Duration::from_secs(90));
        assert_eq!(
            RetryPolicy::default()
                .with_budget(Duration::from_secs(7))
                .budget(),
            Duration::from_secs(7)
        );
    }
}
