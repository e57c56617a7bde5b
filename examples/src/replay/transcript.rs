//! The readable transcript of a conversation: who said what, the process transitions, the memory
//! and schedule changes, step by step. The golden `transcript.txt` is this text.

use std::fmt::Write as _;

use super::format::{Action, Conversation, Outcome, Step};

/// How wide the margin before a step's results is.
const INDENT: &str = "    ";

/// The whole transcript of `conversation` (named `name`) with `outcomes`, one per step.
pub fn render(name: &str, conversation: &Conversation, outcomes: &[&Outcome]) -> String {
    let mut out = format!(
        "# {name}: {}\n# soul: {}\n",
        conversation.title, conversation.soul
    );
    let mut process: Option<&str> = None;
    for (step, outcome) in conversation.steps.iter().zip(outcomes) {
        out.push('\n');
        out.push_str(&render_step(step, outcome, process));
        if let Some(now) = &outcome.process {
            process = Some(now);
        }
    }
    out
}

/// One step of the transcript; `process` is the process the session was in before it.
pub fn render_step(step: &Step, outcome: &Outcome, process: Option<&str>) -> String {
    let mut out = String::new();
    let at = step.at.format("%Y-%m-%d %H:%M UTC");
    // Writing to a String cannot fail.
    let _ = match step.action() {
        Ok(Action::Say { from, text }) => writeln!(out, "{at}  {from}: {text}"),
        Ok(Action::OptOut {
            from,
            opted_out: true,
        }) => writeln!(out, "{at}  {from} opts out (STOP)"),
        Ok(Action::OptOut {
            from,
            opted_out: false,
        }) => writeln!(out, "{at}  {from} opts back in (START)"),
        Ok(Action::FireDueEvents) => writeln!(out, "{at}  (due events fire)"),
        Err(_) => writeln!(out, "{at}  (not a valid step)"),
    };
    let said_something = step.say.is_some() || step.fire_due_events;
    if outcome.replies.is_empty() && said_something {
        out.push_str(INDENT);
        out.push_str("(no reply)\n");
    }
    for reply in &outcome.replies {
        write_reply(&mut out, reply);
    }
    if step.fire_due_events {
        let _ = writeln!(out, "{INDENT}fired: {} event(s)", outcome.fired);
    }
    if outcome.fell_back {
        out.push_str(INDENT);
        out.push_str("(the engine failed: the fallback reply was sent)\n");
    }
    if let Some(now) = &outcome.process {
        // Before the first turn the session is in the process that ran first: the initial one.
        let before = process.or(outcome.processes_run.first().map(String::as_str));
        let moved = match before {
            Some(before) if before != now => format!("{before} → {now}"),
            _ => now.clone(),
        };
        let _ = if outcome.processes_run.is_empty() {
            // A failed turn: the fallback reply went out, and no process's run counted.
            writeln!(out, "{INDENT}process: {moved}")
        } else {
            writeln!(
                out,
                "{INDENT}process: {moved} (ran: {})",
                outcome.processes_run.join(", ")
            )
        };
    }
    if let Some(number) = outcome.new_session {
        let _ = writeln!(out, "{INDENT}session #{number} begins");
    }
    for change in &outcome.memory {
        let _ = writeln!(out, "{INDENT}memory: {change}");
    }
    for change in &outcome.events {
        let _ = writeln!(out, "{INDENT}event: {change}");
    }
    if let Some(summary) = &outcome.summary {
        let _ = writeln!(out, "{INDENT}summary: {summary}");
    }
    out
}

/// A reply, its later lines aligned under its first (careful replies have paragraphs).
fn write_reply(out: &mut String, reply: &str) {
    let first = format!("{INDENT}reply: ");
    let rest = " ".repeat(first.chars().count());
    for (i, line) in reply.lines().enumerate() {
        let margin = if i == 0 { &first } else { &rest };
        let line = format!("{margin}{line}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if reply.is_empty() {
        out.push_str(first.trim_end());
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(json: &str) -> Step {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_step_shows_who_said_what_and_what_changed() {
        let step = step(r#"{"at": "2026-11-24T18:00:00Z", "from": "+15550100", "say": "hi"}"#);
        let outcome = Outcome {
            replies: vec!["Hello!\n\nSecond paragraph.".to_owned()],
            processes_run: vec!["first_contact".to_owned(), "conversation".to_owned()],
            process: Some("conversation".to_owned()),
            new_session: Some(1),
            memory: vec!["+ user_name = \"Ana\"".to_owned()],
            events: vec!["+ check_in due 2026-11-27 18:00 UTC".to_owned()],
            fired: 0,
            summary: None,
            fell_back: false,
        };
        assert_eq!(
            render_step(&step, &outcome, Some("first_contact")),
            "2026-11-24 18:00 UTC  +15550100: hi\n\
             \x20   reply: Hello!\n\
             \n\
             \x20          Second paragraph.\n\
             \x20   process: first_contact → conversation (ran: first_contact, conversation)\n\
             \x20   session #1 begins\n\
             \x20   memory: + user_name = \"Ana\"\n\
             \x20   event: + check_in due 2026-11-27 18:00 UTC\n"
        );
    }

    #[test]
    fn an_unanswered_message_says_so() {
        let step = step(r#"{"at": "2026-11-24T18:00:00Z", "from": "+1", "say": "hi"}"#);
        let out = render_step(&step, &Outcome::default(), None);
        assert!(out.ends_with("    (no reply)\n"), "{out}");
    }
}
