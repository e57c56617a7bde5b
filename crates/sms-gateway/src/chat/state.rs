//! `/state`: what the store holds for the person chatting — the process the soul is in, its soul
//! and process memory, and the working memory it will think with next — as readable lines.

use std::fmt::Write as _;

use serde_json::Value;
use soul_engine::WorkingMemory;

/// The longest a memory's text is shown; longer ones end with `…`.
const SHOWN_CHARS: usize = 120;

/// `export` (what `Store::export_user` returns) as `/state` shows it; `None` (nobody by that
/// address yet) says so.
pub(crate) fn describe(export: Option<&Value>) -> String {
    let Some(export) = export else {
        return "no conversation yet: the first message starts one\n".to_owned();
    };
    let mut out = String::new();
    let process = &export["mental_process_state"];
    match process["name"].as_str() {
        Some(name) => {
            let _ = write!(out, "process: {name}");
            let _ = write!(out, " (run {} times", process["invocation_count"]);
            if let Some(previous) = process["previous"].as_str() {
                let _ = write!(out, ", after {previous}");
            }
            out.push(')');
            if !matches!(&process["params"], Value::Null)
                && process["params"].as_object().is_none_or(|p| !p.is_empty())
            {
                let _ = write!(out, ", params {}", process["params"]);
            }
            out.push('\n');
        }
        None => out.push_str("process: the initial one (this session has not begun)\n"),
    }
    section(&mut out, "soul memory", &export["soul_memories"], |row| {
        format!("{} = {}", text(&row["key"]), row["value"])
    });
    section(
        &mut out,
        "process memory",
        &export["process_memories"],
        |row| {
            format!(
                "{}: {} = {}",
                text(&row["process"]),
                text(&row["key"]),
                row["value"]
            )
        },
    );
    let snapshot = export["working_memory_snapshots"]
        .as_array()
        .and_then(|snapshots| snapshots.last())
        .map(|row| row["snapshot"].clone());
    match snapshot.map(WorkingMemory::from_json) {
        None => out.push_str("working memory: none yet\n"),
        Some(Err(error)) => {
            let _ = writeln!(out, "working memory: unreadable ({error})");
        }
        Some(Ok(memory)) => {
            let _ = writeln!(out, "working memory: {} memories", memory.len());
            for m in memory.iter() {
                let region = m.region.as_ref().map_or("conversation", |r| r.as_str());
                let _ = writeln!(
                    out,
                    "  [{region}] {}: {}",
                    m.role.as_str(),
                    shortened(&m.content)
                );
            }
        }
    }
    out
}

/// A titled list of `rows` (a JSON array), one line each, or `title: none`.
fn section(out: &mut String, title: &str, rows: &Value, line: impl Fn(&Value) -> String) {
    let rows = rows.as_array().map(Vec::as_slice).unwrap_or_default();
    if rows.is_empty() {
        let _ = writeln!(out, "{title}: none");
        return;
    }
    let _ = writeln!(out, "{title}:");
    for row in rows {
        let _ = writeln!(out, "  {}", line(row));
    }
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// `content` on one line, at most [`SHOWN_CHARS`] characters.
fn shortened(content: &str) -> String {
    let one_line = content.replace('\n', " ");
    if one_line.chars().count() <= SHOWN_CHARS {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(SHOWN_CHARS - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use soul_engine::{Memory, Region};

    use super::*;

    #[test]
    fn the_process_the_memories_and_working_memory_are_shown() {
        let memory = WorkingMemory::new("Pip")
            .with_memory(Memory::system("You are Pip.").in_region(Region::core()))
            .with_memory(Memory::user(format!("line one\n{}", "x".repeat(200))));
        let export = json!({
            "mental_process_state": {
                "name": "quiz", "params": {"topic": "cells"}, "invocation_count": 2,
                "previous": "study"
            },
            "soul_memories": [{"key": "user_name", "value": "Ana"}],
            "process_memories": [{"process": "quiz", "key": "correct", "value": 1}],
            "working_memory_snapshots": [{"snapshot": memory.to_json()}],
        });
        let shown = describe(Some(&export));
        let expected = format!(
            "process: quiz (run 2 times, after study), params {{\"topic\":\"cells\"}}\n\
             soul memory:\n  user_name = \"Ana\"\n\
             process memory:\n  quiz: correct = 1\n\
             working memory: 2 memories\n  [core] system: You are Pip.\n  \
             [conversation] user: line one {}…\n",
            "x".repeat(SHOWN_CHARS - 10)
        );
        assert_eq!(shown, expected);
    }

    #[test]
    fn nothing_stored_yet_is_said_plainly() {
        assert_eq!(
            describe(None),
            "no conversation yet: the first message starts one\n"
        );
        let empty = json!({"mental_process_state": null, "soul_memories": [],
            "process_memories": [], "working_memory_snapshots": []});
        assert_eq!(
            describe(Some(&empty)),
            "process: the initial one (this session has not begun)\n\
             soul memory: none\nprocess memory: none\nworking memory: none yet\n"
        );
    }
}
