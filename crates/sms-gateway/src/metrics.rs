//! Prometheus metrics, kept in atomics and written in the text exposition format by hand: a
//! dozen counters and one histogram do not need a metrics library.
//!
//! Labels take a fixed set of values known at compile time, never a phone number, a session id
//! or anything else a person could be found by.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use soul_engine::model::BoxFuture;
use soul_engine::model::{
    AnswerSink, ChatRequest, Completion, LanguageModel, ModelError, complete_with,
};

/// A counter with one label taking one of `N` fixed values.
#[derive(Debug)]
pub(crate) struct LabeledCounter<const N: usize> {
    name: &'static str,
    help: &'static str,
    label: &'static str,
    values: [&'static str; N],
    counts: [AtomicU64; N],
}

impl<const N: usize> LabeledCounter<N> {
    const fn new(
        name: &'static str,
        help: &'static str,
        label: &'static str,
        values: [&'static str; N],
    ) -> Self {
        LabeledCounter {
            name,
            help,
            label,
            values,
            counts: [const { AtomicU64::new(0) }; N],
        }
    }

    /// Adds `by` to the series labelled `value`. A value not declared is a programming error;
    /// it is counted under the last value rather than lost or panicking.
    pub(crate) fn add(&self, value: &str, by: u64) {
        let index = self
            .values
            .iter()
            .position(|known| *known == value)
            .unwrap_or(N - 1);
        self.counts[index].fetch_add(by, Ordering::Relaxed);
    }

    /// Adds one to the series labelled `value`.
    pub(crate) fn inc(&self, value: &str) {
        self.add(value, 1);
    }

    /// The series labelled `value` (for tests and logs).
    #[cfg(test)]
    pub(crate) fn get(&self, value: &str) -> u64 {
        self.values
            .iter()
            .position(|known| *known == value)
            .map_or(0, |index| self.counts[index].load(Ordering::Relaxed))
    }

    fn render(&self, out: &mut String) {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} counter", self.name);
        for (value, count) in self.values.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{}{{{}=\"{}\"}} {}",
                self.name,
                self.label,
                value,
                count.load(Ordering::Relaxed)
            );
        }
    }
}

/// A counter without labels.
#[derive(Debug)]
pub(crate) struct Counter {
    name: &'static str,
    help: &'static str,
    count: AtomicU64,
}

impl Counter {
    const fn new(name: &'static str, help: &'static str) -> Self {
        Counter {
            name,
            help,
            count: AtomicU64::new(0),
        }
    }

    /// Adds `by`.
    pub(crate) fn add(&self, by: u64) {
        self.count.fetch_add(by, Ordering::Relaxed);
    }

    /// Adds one.
    pub(crate) fn inc(&self) {
        self.add(1);
    }

    /// The count (for tests).
    #[cfg(test)]
    pub(crate) fn get(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} counter", self.name);
        let _ = writeln!(out, "{} {}", self.name, self.count.load(Ordering::Relaxed));
    }
}

/// Upper bounds of the turn latency buckets, in seconds: a turn is one to a few model calls.
const LATENCY_BUCKETS: [f64; 11] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0];

/// A histogram of durations with [`LATENCY_BUCKETS`].
#[derive(Debug)]
pub(crate) struct Histogram {
    name: &'static str,
    help: &'static str,
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    const fn new(name: &'static str, help: &'static str) -> Self {
        Histogram {
            name,
            help,
            buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS.len() + 1],
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub(crate) fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let index = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} histogram", self.name);
        let mut cumulative = 0;
        for (index, count) in self.buckets.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let bound = LATENCY_BUCKETS
                .get(index)
                .map_or_else(|| "+Inf".to_owned(), f64::to_string);
            let _ = writeln!(out, "{}_bucket{{le=\"{bound}\"}} {cumulative}", self.name);
        }
        // Micro-seconds as f64 lose nothing below 2^53 µs (285 years).
        #[allow(clippy::cast_precision_loss)]
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{}_sum {sum}", self.name);
        let _ = writeln!(out, "{}_count {cumulative}", self.name);
    }
}

/// Every metric the gateway exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// Inbound webhooks by what became of them.
    pub(crate) inbound: LabeledCounter<11>,
    /// Committed turns by result.
    pub(crate) turns: LabeledCounter<5>,
    /// Time to run a started turn and commit it, with the messages queued behind it.
    pub(crate) turn_seconds: Histogram,
    /// Model tokens by kind.
    pub(crate) model_tokens: LabeledCounter<2>,
    /// Model requests by result.
    pub(crate) model_requests: LabeledCounter<2>,
    /// Outbound replies by send result.
    pub(crate) outbound: LabeledCounter<6>,
    /// SMS segments handed to Twilio, by encoding.
    pub(crate) segments: LabeledCounter<2>,
    /// Replies cut to `MAX_REPLY_SEGMENTS` before they were stored.
    pub(crate) replies_cut: Counter,
    /// The segments those replies would have taken beyond what was sent.
    pub(crate) reply_segments_cut: Counter,
    /// Delivery status callbacks by status.
    pub(crate) delivery_status: LabeledCounter<6>,
}

impl Metrics {
    /// All zero.
    pub(crate) fn new() -> Self {
        Metrics {
            inbound: LabeledCounter::new(
                "sms_gateway_inbound_total",
                "Inbound SMS webhooks by outcome (waiting: stored while every turn slot was \
                 taken, started once one frees; unrouted: refused, sent to a number no soul \
                 answers).",
                "outcome",
                [
                    "started",
                    "waiting",
                    "queued",
                    "duplicate",
                    "opt_out",
                    "opt_in",
                    "help",
                    "rate_limited",
                    "rejected",
                    "unrouted",
                    "error",
                ],
            ),
            turns: LabeledCounter::new(
                "sms_gateway_turns_total",
                "Turns run, by result (silent: stored without a reply, for an opted-out number \
                 or a keyword; fallback: the engine failed, or the store refused the turn, and \
                 the fallback reply was sent; given_up: started too often without being stored, \
                 closed with the fallback reply or none; failed: not stored, run again once its \
                 lease expires).",
                "result",
                ["answered", "silent", "fallback", "given_up", "failed"],
            ),
            turn_seconds: Histogram::new(
                "sms_gateway_turn_duration_seconds",
                "Time from starting a turn to committing it and the messages queued behind it.",
            ),
            model_tokens: LabeledCounter::new(
                "sms_gateway_model_tokens_total",
                "Model tokens spent, by kind.",
                "kind",
                ["prompt", "completion"],
            ),
            model_requests: LabeledCounter::new(
                "sms_gateway_model_requests_total",
                "Model requests, by result (after the model client's own retries).",
                "result",
                ["ok", "error"],
            ),
            outbound: LabeledCounter::new(
                "sms_gateway_outbound_total",
                "Outbound replies by send result (retry_later: left pending for the outbox; \
                 found_sent: a part found at Twilio already, taken by an earlier attempt; \
                 suppressed: not sent to an opted-out number).",
                "status",
                [
                    "accepted",
                    "failed",
                    "opted_out",
                    "retry_later",
                    "found_sent",
                    "suppressed",
                ],
            ),
            segments: LabeledCounter::new(
                "sms_gateway_outbound_segments_total",
                "SMS segments sent, by encoding.",
                "encoding",
                ["gsm7", "ucs2"],
            ),
            replies_cut: Counter::new(
                "sms_gateway_replies_cut_total",
                "Replies longer than MAX_REPLY_SEGMENTS, cut where a sentence ends before they \
                 were stored and sent.",
            ),
            reply_segments_cut: Counter::new(
                "sms_gateway_reply_segments_cut_total",
                "SMS segments cut from replies: what they would have taken beyond what was sent.",
            ),
            delivery_status: LabeledCounter::new(
                "sms_gateway_delivery_status_total",
                "Delivery status callbacks from Twilio, by status.",
                "status",
                [
                    "accepted",
                    "sent",
                    "delivered",
                    "undelivered",
                    "failed",
                    "other",
                ],
            ),
        }
    }

    /// The text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        self.inbound.render(&mut out);
        self.turns.render(&mut out);
        self.turn_seconds.render(&mut out);
        self.model_tokens.render(&mut out);
        self.model_requests.render(&mut out);
        self.outbound.render(&mut out);
        self.segments.render(&mut out);
        self.replies_cut.render(&mut out);
        self.reply_segments_cut.render(&mut out);
        self.delivery_status.render(&mut out);
        out
    }
}

/// A model that counts requests and tokens into [`Metrics`] around another.
#[derive(Debug)]
pub(crate) struct MeteredModel {
    inner: Arc<dyn LanguageModel>,
    metrics: Arc<Metrics>,
}

impl MeteredModel {
    /// Meters `inner`.
    pub(crate) fn new(inner: Arc<dyn LanguageModel>, metrics: Arc<Metrics>) -> Self {
        MeteredModel { inner, metrics }
    }
}

impl LanguageModel for MeteredModel {
    fn complete<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<Completion, ModelError>> {
        self.wrapped(request, None)
    }

    fn complete_streaming<'a>(
        &'a self,
        request: &'a ChatRequest,
        sink: &'a dyn AnswerSink,
    ) -> BoxFuture<'a, Result<Completion, ModelError>> {
        self.wrapped(request, Some(sink))
    }
}

impl MeteredModel {
    fn wrapped<'a>(
        &'a self,
        request: &'a ChatRequest,
        sink: Option<&'a dyn AnswerSink>,
    ) -> BoxFuture<'a, Result<Completion, ModelError>> {
        Box::pin(async move {
            let result = complete_with(&self.inner, request, sink).await;
            match &result {
                Ok(completion) => {
                    self.metrics.model_requests.inc("ok");
                    let usage = &completion.usage;
                    self.metrics.model_tokens.add("prompt", usage.prompt_tokens);
                    self.metrics
                        .model_tokens
                        .add("completion", usage.completion_tokens);
                }
                Err(_) => self.metrics.model_requests.inc("error"),
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let metrics = Metrics::new();
        metrics.inbound.inc("started");
        metrics.inbound.inc("started");
        metrics.outbound.add("accepted", 3);
        metrics.turn_seconds.observe(Duration::from_millis(80));
        metrics.turn_seconds.observe(Duration::from_secs(100));
        let text = metrics.render();
        assert!(text.contains("sms_gateway_inbound_total{outcome=\"started\"} 2\n"));
        assert!(text.contains("sms_gateway_outbound_total{status=\"accepted\"} 3\n"));
        assert!(text.contains("sms_gateway_turn_duration_seconds_bucket{le=\"0.05\"} 0\n"));
        assert!(text.contains("sms_gateway_turn_duration_seconds_bucket{le=\"0.1\"} 1\n"));
        assert!(text.contains("sms_gateway_turn_duration_seconds_bucket{le=\"60\"} 1\n"));
        assert!(text.contains("sms_gateway_turn_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("sms_gateway_turn_duration_seconds_count 2\n"));
        assert!(text.contains("sms_gateway_turn_duration_seconds_sum 100.08\n"));
        assert!(text.contains("# TYPE sms_gateway_model_tokens_total counter\n"));
        metrics.reply_segments_cut.add(7);
        let text = metrics.render();
        assert!(text.contains("# TYPE sms_gateway_reply_segments_cut_total counter\n"));
        assert!(text.contains("sms_gateway_reply_segments_cut_total 7\n"));
        assert!(text.contains("sms_gateway_replies_cut_total 0\n"));
    }

    /// Every series the outbox counts has its own, opt-outs apart from replies Twilio had taken.
    #[test]
    fn every_outbound_result_is_a_series_of_its_own() {
        let metrics = Metrics::new();
        let results = [
            "accepted",
            "failed",
            "opted_out",
            "retry_later",
            "found_sent",
            "suppressed",
        ];
        for (result, count) in results.into_iter().zip(1..) {
            metrics.outbound.add(result, count);
        }
        let text = metrics.render();
        for (result, count) in results.into_iter().zip(1..) {
            let series = format!("sms_gateway_outbound_total{{status=\"{result}\"}} {count}\n");
            assert!(text.contains(&series), "{series} in\n{text}");
        }
    }

    #[test]
    fn an_undeclared_label_value_lands_in_the_last_series() {
        let metrics = Metrics::new();
        metrics.delivery_status.inc("teleported");
        assert_eq!(metrics.delivery_status.get("other"), 1);
    }
}
