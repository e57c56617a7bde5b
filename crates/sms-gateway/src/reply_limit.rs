//! The engine's [`ReplyLimit`] for SMS: `MAX_REPLY_SEGMENTS`.
//!
//! The runtime applies it to each reply as the soul speaks it, before the turn is committed, so
//! the reply stored, the reply sent and the soul's memory of it are the same cut text. What is
//! cut is counted (`sms_gateway_replies_cut_total`, `sms_gateway_reply_segments_cut_total`) and
//! logged as counts, never as text.

use std::sync::Arc;

use soul_engine::process::ReplyLimit;

use crate::metrics::Metrics;
use crate::segments::cut_reply;

/// The gateway's [`ReplyLimit`]: a reply longer than `max_segments` SMS segments is cut where
/// a sentence ends, before it is stored or sent; the cut is counted in the metrics and logged
/// without the text.
#[derive(Debug)]
pub(crate) struct SegmentLimit {
    max_segments: usize,
    metrics: Arc<Metrics>,
}

impl SegmentLimit {
    /// Replies of at most `max_segments` segments, cuts counted in `metrics`.
    pub(crate) fn new(max_segments: u8, metrics: Arc<Metrics>) -> Self {
        SegmentLimit {
            max_segments: usize::from(max_segments.max(1)),
            metrics,
        }
    }
}

impl ReplyLimit for SegmentLimit {
    fn limit(&self, body: &str, ending: &str) -> Option<String> {
        let cut = cut_reply(body, ending, self.max_segments)?;
        let excess = cut.segments_before.saturating_sub(cut.segments_after);
        self.metrics.replies_cut.inc();
        self.metrics
            .reply_segments_cut
            .add(u64::try_from(excess).unwrap_or(u64::MAX));
        tracing::warn!(
            segments = cut.segments_before,
            kept = cut.segments_after,
            max = self.max_segments,
            "a reply was longer than MAX_REPLY_SEGMENTS; cut where a sentence ends"
        );
        Some(cut.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segments::segment_count;

    #[test]
    fn a_cut_is_counted_and_a_short_reply_is_not() {
        let metrics = Arc::new(Metrics::new());
        let limit = SegmentLimit::new(2, metrics.clone());

        assert_eq!(limit.limit("Short and sweet.", ""), None);
        assert_eq!(metrics.replies_cut.get(), 0);

        let long = "One more sentence to fill the message. ".repeat(30);
        let kept = limit.limit(long.trim_end(), "").unwrap();
        assert!(segment_count(&kept) <= 2);
        assert_eq!(metrics.replies_cut.get(), 1);
        assert_eq!(
            metrics.reply_segments_cut.get(),
            u64::try_from(segment_count(long.trim_end()) - segment_count(&kept)).unwrap()
        );
    }
}
