//! A gentle check-in after a silence: the `schedule_check_in` subprocess and the `check_in`
//! process the scheduled event is aimed at.
//!
//! On every message from the person, `schedule_check_in` moves the pending check-in (the
//! pending event aimed at `check_in`) to [`CHECK_IN_AFTER`] later, at the time given by
//! [`check_in_time`], or schedules one when none is pending. When it comes due, `check_in`
//! sends one short, gentle message and the soul returns to `conversation` — unless it is in
//! careful mode, where the check-in is a careful reply with the crisis resources and careful mode
//! stays. A check-in is not followed by another: only the person's next message schedules one,
//! so a silence is met with one message, never a series.

use chrono::{DateTime, Duration, FixedOffset, NaiveTime, TimeZone, Timelike, Utc};
use soul_engine::prelude::*;

use super::{CONVERSATION, NAME, SOUL, crisis, say};

/// Reschedules the check-in on every message from the person.
pub const SCHEDULE_CHECK_IN: Subprocess =
    subprocess!(soul = SOUL, name = "schedule_check_in", schedule_check_in);
/// The check-in itself, run by the scheduled event.
pub const CHECK_IN: MentalProcess = mental_process!(soul = SOUL, name = "check_in", check_in);

/// How long a silence lasts before Sage checks in.
pub const CHECK_IN_AFTER: Duration = Duration::days(3);

/// The perception the check-in event delivers (it reaches working memory as it is, as Sage's own
/// perception: the assistant role).
pub const CHECK_IN_PERCEPTION: &str =
    "[Three days have passed without a message from them. Sage checks in.]";

/// Perception metadata key: the person's UTC offset in minutes, when the embedding program knows
/// it (from the number's region, say).
pub const UTC_OFFSET_METADATA_KEY: &str = "utc_offset_minutes";

/// The earliest and latest local hours a check-in may arrive at, when the offset is known.
const LOCAL_HOURS: std::ops::RangeInclusive<u32> = 10..=19;

/// When to check in after a message sent at `last_message_at`: [`CHECK_IN_AFTER`] later. With the
/// person's UTC offset known, that time is moved into 10:00–19:59 local time (earlier → 10:00,
/// later → 19:00 the same local day). Without it, the time of day stays the one the person last
/// wrote at — a time they were demonstrably awake and texting.
pub fn check_in_time(
    last_message_at: DateTime<Utc>,
    utc_offset_minutes: Option<i32>,
) -> DateTime<Utc> {
    let due = last_message_at + CHECK_IN_AFTER;
    let Some(offset) = utc_offset_minutes.and_then(|minutes| FixedOffset::east_opt(minutes * 60))
    else {
        return due;
    };
    let local = due.with_timezone(&offset);
    let hour = local.hour();
    let moved_to = if hour < *LOCAL_HOURS.start() {
        NaiveTime::from_hms_opt(*LOCAL_HOURS.start(), 0, 0)
    } else if hour > *LOCAL_HOURS.end() {
        NaiveTime::from_hms_opt(*LOCAL_HOURS.end(), 0, 0)
    } else {
        None
    };
    moved_to
        .and_then(|time| {
            offset
                .from_local_datetime(&local.date_naive().and_time(time))
                .single()
        })
        .map_or(due, |moved| moved.with_timezone(&Utc))
}

async fn schedule_check_in(cx: ProcessContext) -> ProcessResult {
    // A due check-in is not the person writing: it is answered once, and nothing is pending
    // after it until they write again.
    if matches!(cx.perception().kind, PerceptionKind::Event { .. }) {
        return Ok(Next::stay(cx.memory().clone()));
    }
    let offset = cx
        .perception()
        .metadata
        .get(UTC_OFFSET_METADATA_KEY)
        .and_then(serde_json::Value::as_i64)
        .and_then(|minutes| i32::try_from(minutes).ok());
    let at = check_in_time(cx.perception().at, offset);
    let mut pending = cx
        .pending_events()
        .into_iter()
        .filter(|event| event.process.as_deref() == Some(CHECK_IN.name()));
    match pending.next() {
        Some(check_in) => cx.schedule_event(check_in.rescheduled(at)),
        None => cx.schedule(at, Some(CHECK_IN), CHECK_IN_PERCEPTION),
    };
    // One silence, one check-in.
    for extra in pending {
        cx.cancel_scheduled(extra.id);
    }
    Ok(Next::stay(cx.memory().clone()))
}

async fn check_in(cx: ProcessContext) -> ProcessResult {
    // An aimed event runs this process once and `Next::stay` leaves the interrupted process
    // current: `crisis`, or `first_contact` after a timeout, which sends careful mode back there.
    if crisis::in_careful_mode(&cx) {
        let memory = crisis::careful_reply(
            &cx,
            cx.memory(),
            &format!(
                "{NAME} has not heard from them for a few days since they said they might be at \
                 risk. Check in gently: ask how they are doing right now."
            ),
        )
        .await;
        return Ok(Next::stay(memory));
    }
    let memory = say(
        &cx,
        cx.memory(),
        "They have not written for a few days. Send a short, gentle check-in: you were thinking \
         of them and wonder how they are. Make clear there is no pressure to reply.",
    )
    .await?;
    Ok(Next::to(CONVERSATION, memory))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(day: u32, hour: u32, minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, day, hour, minute, 0)
            .single()
            .unwrap()
    }

    #[test]
    fn without_an_offset_the_time_of_day_is_kept() {
        assert_eq!(check_in_time(at(24, 3, 17), None), at(27, 3, 17));
    }

    #[test]
    fn with_an_offset_the_check_in_lands_in_local_daytime() {
        // 03:00 UTC is 22:00 the day before at UTC-5: moved to 19:00 local, 00:00 UTC.
        assert_eq!(check_in_time(at(24, 3, 0), Some(-300)), at(27, 0, 0));
        // 05:30 UTC is 06:30 at UTC+1: moved to 10:00 local, 09:00 UTC.
        assert_eq!(check_in_time(at(24, 5, 30), Some(60)), at(27, 9, 0));
        // 14:45 UTC is 15:45 at UTC+1: already fine.
        assert_eq!(check_in_time(at(24, 14, 45), Some(60)), at(27, 14, 45));
        // An impossible offset is ignored.
        assert_eq!(check_in_time(at(24, 3, 0), Some(100_000)), at(27, 3, 0));
    }
}
