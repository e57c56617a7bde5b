//! Turns and the outbox: the session timeout, the rate limit, turn slots, leases, how long a
//! reply's claim lasts, the sweeper, shutdown and how long a reply may be.

use std::num::NonZeroU32;
use std::time::Duration;

use super::problem::Problem;
use super::reader::Reader;
use crate::segments;

pub(super) const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// How long a reply's sender holds its claim on it: longer than one send's retry budget (30 s,
/// and a last attempt of 10 s), so that a send retried to the end is not cut off by its claim.
pub(super) const DEFAULT_OUTBOX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// The shortest claim on a reply: its sender needs time for Twilio's answers within it.
pub(super) const MIN_OUTBOX_RETRY_AFTER: Duration = Duration::from_secs(1);
/// A person texts in bursts of a few short messages; a script sends dozens. Each answered
/// message is a model call, so the default keeps a runaway sender's bill small.
pub(super) const DEFAULT_RATE_LIMIT_PER_MINUTE: NonZeroU32 = NonZeroU32::new(6).expect("not zero");
/// Turns a gateway runs at once; the rest wait, stored, for a slot. Each running turn holds a
/// model request and its buffers: the bound keeps memory flat when thousands of conversations
/// arrive together, and at a few seconds per model call it still allows hundreds of turns a second.
pub(super) const DEFAULT_TURN_CONCURRENCY: NonZeroU32 = NonZeroU32::new(500).expect("not zero");
pub(super) const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(15);
/// Under the 30 s most process managers wait after SIGTERM before SIGKILL.
pub(super) const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// Longer than a model call's whole retry budget (and than two calls failing fast), so a slow
/// turn is not taken over while it runs; a turn whose model calls all crawl near the budget can
/// still outlast it, and is then re-run by whichever worker takes the session over.
pub(super) const DEFAULT_TURN_LEASE: Duration = Duration::from_secs(120);

/// A few segments: Sage's longest in-character reply (320 characters, and an emoji or a curly
/// apostrophe makes it UCS-2 at 67 a segment) fits, a model that runs on is cut to about 4 US
/// cents a reply.
const DEFAULT_MAX_REPLY_SEGMENTS: u8 = 5;

impl Reader<'_> {
    /// `MAX_REPLY_SEGMENTS`, and whether the crisis resources fit in it: they are never cut, so
    /// a reply too short for them would have to be longer than the limit.
    pub(super) fn max_reply_segments(&mut self) -> u8 {
        let max = self
            .parsed(
                "MAX_REPLY_SEGMENTS",
                "not a whole number from 1 to 10",
                |text| {
                    text.parse::<u8>()
                        .ok()
                        .filter(|n| (1..=segments::MAX_REPLY_SEGMENTS_CEILING).contains(n))
                },
            )
            .unwrap_or(DEFAULT_MAX_REPLY_SEGMENTS);
        if let Some(resources) = self.get("SOUL_CRISIS_RESOURCES")
            && segments::segment_count(resources) > usize::from(max)
        {
            self.problems.push(Problem::Conflict {
                keys: "SOUL_CRISIS_RESOURCES and MAX_REPLY_SEGMENTS".to_owned(),
                reason: "the crisis resources take more SMS segments than a reply may, and they \
                         are never cut: shorten them or allow more segments",
            });
        }
        max
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use soul_persistence::turn_log::TurnLogLevel;

    use super::*;
    use crate::config::testing::{problems, serve_values, values};
    use crate::config::{Config, Level};

    #[test]
    fn turn_concurrency_defaults_and_must_be_positive() {
        let config = Config::from_values(&serve_values(), Level::Serve).unwrap();
        assert_eq!(config.turn_concurrency, DEFAULT_TURN_CONCURRENCY);
        let mut values = serve_values();
        values.insert("TURN_CONCURRENCY".into(), "8".into());
        let config = Config::from_values(&values, Level::Serve).unwrap();
        assert_eq!(config.turn_concurrency, NonZeroU32::new(8).unwrap());
        for bad in ["0", "-1", "many"] {
            values.insert("TURN_CONCURRENCY".into(), bad.into());
            assert!(
                problems(&values, Level::Serve).iter().any(
                    |p| matches!(p, Problem::Malformed { key, .. } if key == "TURN_CONCURRENCY")
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn turn_attempts_default_to_the_drivers_and_must_be_positive() {
        let config = Config::from_values(&serve_values(), Level::Serve).unwrap();
        assert_eq!(config.turn_max_attempts, None);
        let mut values = serve_values();
        values.insert("TURN_MAX_ATTEMPTS".into(), "5".into());
        let config = Config::from_values(&values, Level::Serve).unwrap();
        assert_eq!(config.turn_max_attempts, NonZeroU32::new(5));
        for bad in ["0", "-1", "often"] {
            values.insert("TURN_MAX_ATTEMPTS".into(), bad.into());
            assert!(
                problems(&values, Level::Serve).iter().any(
                    |p| matches!(p, Problem::Malformed { key, .. } if key == "TURN_MAX_ATTEMPTS")
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_turn_log_is_compact_unless_set_to_full() {
        let config = Config::from_values(&serve_values(), Level::Serve).unwrap();
        assert_eq!(config.turn_log, TurnLogLevel::Compact);
        let mut values = serve_values();
        values.insert("TURN_LOG".into(), "full".into());
        let config = Config::from_values(&values, Level::Serve).unwrap();
        assert_eq!(config.turn_log, TurnLogLevel::Full);
        values.insert("TURN_LOG".into(), "verbose".into());
        assert!(
            problems(&values, Level::Serve)
                .iter()
                .any(|p| matches!(p, Problem::Malformed { key, .. } if key == "TURN_LOG"))
        );
    }

    #[test]
    fn the_rate_limit_can_be_turned_off() {
        let mut values = serve_values();
        values.insert("RATE_LIMIT_PER_MINUTE".into(), "off".into());
        let config = Config::from_values(&values, Level::Serve).unwrap();
        assert_eq!(config.rate_limit_per_minute, None);
    }

    #[test]
    fn gateway_timings_and_crisis_text() {
        let config = Config::from_values(&BTreeMap::new(), Level::Migrate).unwrap();
        assert_eq!(config.outbox_retry_after, Duration::from_secs(60));
        assert_eq!(config.sweep_interval, Duration::from_secs(15));
        assert_eq!(config.shutdown_timeout, Duration::from_secs(20));
        assert!(config.crisis_resources.is_none());

        let config = Config::from_values(
            &values(&[
                ("OUTBOX_RETRY_AFTER", "2m"),
                ("SWEEP_INTERVAL", "500ms"),
                ("SHUTDOWN_TIMEOUT", "5s"),
                ("SOUL_CRISIS_RESOURCES", " Call 999. "),
            ]),
            Level::Migrate,
        )
        .unwrap();
        assert_eq!(config.outbox_retry_after, Duration::from_secs(120));
        assert_eq!(config.sweep_interval, Duration::from_millis(500));
        assert_eq!(config.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(config.crisis_resources.as_deref(), Some("Call 999."));

        let problems = problems(
            &values(&[("SWEEP_INTERVAL", "0s"), ("SHUTDOWN_TIMEOUT", "soon")]),
            Level::Migrate,
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    /// A reply's claim must leave its sender time for Twilio's answers.
    #[test]
    fn outbox_retry_after_is_at_least_a_second() {
        let problems = problems(&values(&[("OUTBOX_RETRY_AFTER", "500ms")]), Level::Migrate);
        assert_eq!(
            problems,
            [Problem::Malformed {
                key: "OUTBOX_RETRY_AFTER".to_owned(),
                value: Some("500ms".to_owned()),
                reason: "shorter than 1s: a reply's sender holds its claim on it this long, and \
                         needs that long at least for Twilio to answer",
            }]
        );
        let config =
            Config::from_values(&values(&[("OUTBOX_RETRY_AFTER", "1s")]), Level::Migrate).unwrap();
        assert_eq!(config.outbox_retry_after, Duration::from_secs(1));
    }

    #[test]
    fn max_reply_segments() {
        let config = Config::from_values(&BTreeMap::new(), Level::Migrate).unwrap();
        assert_eq!(config.max_reply_segments, 5);
        let config =
            Config::from_values(&values(&[("MAX_REPLY_SEGMENTS", "10")]), Level::Migrate).unwrap();
        assert_eq!(config.max_reply_segments, 10);
        for bad in ["0", "11", "three", "-1", "2.5"] {
            assert_eq!(
                problems(&values(&[("MAX_REPLY_SEGMENTS", bad)]), Level::Migrate),
                [Problem::Malformed {
                    key: "MAX_REPLY_SEGMENTS".to_owned(),
                    value: Some(bad.to_owned()),
                    reason: "not a whole number from 1 to 10",
                }],
                "{bad}"
            );
        }
    }

    #[test]
    fn crisis_resources_must_fit_in_a_reply() {
        let resources = "Call 988, text HOME to 741741, or your local emergency number. ".repeat(3);
        let problems = problems(
            &values(&[
                ("SOUL_CRISIS_RESOURCES", resources.as_str()),
                ("MAX_REPLY_SEGMENTS", "1"),
            ]),
            Level::Migrate,
        );
        assert!(
            matches!(
                problems.as_slice(),
                [Problem::Conflict { keys, .. }] if keys == "SOUL_CRISIS_RESOURCES and MAX_REPLY_SEGMENTS"
            ),
            "{problems:?}"
        );
        let config = Config::from_values(
            &values(&[("SOUL_CRISIS_RESOURCES", resources.as_str())]),
            Level::Migrate,
        );
        assert!(config.is_ok());
    }
}
