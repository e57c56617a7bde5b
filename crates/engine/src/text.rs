//! Text made storable: the control characters a store may refuse are dropped from what a turn
//! keeps, whoever wrote it.
//!
//! PostgreSQL's `text` and `jsonb` refuse U+0000, so one such character in a model's answer (or
//! in a person's message) would make every commit of the turn fail. The engine applies
//! [`make_storable`] to each model answer before a step reads it, and [`make_json_storable`] to
//! the JSON a structured answer decodes to (its `\u0000` escapes become characters only then);
//! the gateway applies [`storable`] to inbound messages. Line feeds and tabs are text and stay;
//! carriage returns go (phones' line ends), as does every other control character (C0, DEL and
//! C1). Everything else, whatever the script, passes unchanged.

use std::borrow::Cow;

use serde_json::Value;

/// `text` without the control characters other than line feed and tab; borrowed when it has
/// none.
pub fn storable(text: &str) -> Cow<'_, str> {
    if text.chars().all(is_kept) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.chars().filter(|c| is_kept(*c)).collect())
    }
}

/// Makes `text` [`storable`] in place.
pub fn make_storable(text: &mut String) {
    if let Cow::Owned(clean) = storable(text) {
        *text = clean;
    }
}

/// Makes every string of `value` [`storable`] in place, object keys included.
pub fn make_json_storable(value: &mut Value) {
    match value {
        Value::String(text) => make_storable(text),
        Value::Array(items) => items.iter_mut().for_each(make_json_storable),
        Value::Object(map) => {
            if map.keys().any(|key| !key.chars().all(is_kept)) {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(key, value)| (storable(&key).into_owned(), value))
                    .collect();
            }
            map.values_mut().for_each(make_json_storable);
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn is_kept(c: char) -> bool {
    !c.is_control() || matches!(c, '\n' | '\t')
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn control_characters_go_and_everything_else_stays() {
        assert_eq!(
            storable("a\u{0}b\r\nc\u{7}\u{1b}[31md\u{7f}e\u{85}f"),
            "ab\nc[31mdef"
        );
        for text in [
            "héllo wörld",
            "👩‍👩‍👧‍👦 family 🏳️‍🌈",
            "مرحبا \u{200f}بك",
            "line one\nline two\ttabbed",
        ] {
            assert!(matches!(storable(text), Cow::Borrowed(same) if same == text));
        }
    }

    #[test]
    fn every_string_of_a_json_value_is_made_storable() {
        let mut value = json!({
            "mood\u{0}": "calm\u{0}",
            "notes": ["a\u{1}b", {"deep": "c\u{0}d"}],
            "count": 3,
            "ok": true,
            "none": null,
        });
        make_json_storable(&mut value);
        assert_eq!(
            value,
            json!({
                "mood": "calm",
                "notes": ["ab", {"deep": "cd"}],
                "count": 3,
                "ok": true,
                "none": null,
            })
        );
    }
}
