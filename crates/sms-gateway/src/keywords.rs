//! Carrier keywords: STOP, START, HELP and their synonyms.
//!
//! Twilio answers these itself on long codes and blocks later sends to an opted-out number
//! (error 21610), but it still forwards the message, so the gateway must record the opt-out
//! and not reply. The gateway reads keywords as Twilio does: only a message that is a single
//! keyword counts, in any case, with the white space and punctuation around it ignored —
//! "Stop.", " STOP! " and "stop" are STOP. "stop please" and "please stop texting" are not:
//! Twilio does not block the number for them either (its opt-out documentation gives "STOP
//! PLEASE" and "PLEASE CANCEL" as messages that do not opt out), so they are ordinary messages
//! and the soul answers them.

/// What a keyword message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Keyword {
    /// Stop all messages to this number.
    OptOut,
    /// Resume messages after an opt-out.
    OptIn,
    /// Send the help text.
    Help,
}

const OPT_OUT: &[&str] = &[
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "REVOKE",
    "OPTOUT",
];
const OPT_IN: &[&str] = &["START", "UNSTOP", "YES"];
const HELP: &[&str] = &["HELP", "INFO"];

/// The keyword `body` is, if any: the whole body, in any case, less the white space and
/// punctuation around it.
pub(crate) fn classify(body: &str) -> Option<Keyword> {
    let word = body.trim_matches(|c: char| c.is_whitespace() || is_punctuation(c));
    let is_one_of = |list: &[&str]| {
        list.iter()
            .any(|keyword| keyword.eq_ignore_ascii_case(word))
    };
    if is_one_of(OPT_OUT) {
        Some(Keyword::OptOut)
    } else if is_one_of(OPT_IN) {
        Some(Keyword::OptIn)
    } else if is_one_of(HELP) {
        Some(Keyword::Help)
    } else {
        None
    }
}

/// ASCII punctuation, and the marks phones put in for it: curly quotes, inverted marks,
/// the ellipsis.
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || matches!(c, '‘' | '’' | '“' | '”' | '¡' | '¿' | '…' | '«' | '»')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_keyword_in_any_case_and_padding() {
        for (list, expected) in [
            (OPT_OUT, Keyword::OptOut),
            (OPT_IN, Keyword::OptIn),
            (HELP, Keyword::Help),
        ] {
            for keyword in list {
                for variant in [
                    keyword.to_string(),
                    keyword.to_lowercase(),
                    format!("  {}\n", keyword.to_lowercase()),
                    format!("\t{keyword} "),
                ] {
                    assert_eq!(classify(&variant), Some(expected), "{variant:?}");
                }
            }
        }
        assert_eq!(classify("Stop"), Some(Keyword::OptOut));
        assert_eq!(classify("sToPaLl"), Some(Keyword::OptOut));
        assert_eq!(classify("Yes"), Some(Keyword::OptIn));
    }

    #[test]
    fn punctuation_around_the_keyword_is_ignored() {
        for body in [
            "Stop.",
            "STOP!",
            " stop. ",
            "stop!!!",
            "\"STOP\"",
            "“Stop”",
            "¡Stop!",
            "(stop)",
            "...stop...",
            "stop…",
            "- STOP -",
        ] {
            assert_eq!(classify(body), Some(Keyword::OptOut), "{body:?}");
        }
        assert_eq!(classify("Yes!"), Some(Keyword::OptIn));
        assert_eq!(classify("Help?"), Some(Keyword::Help));
        assert_eq!(classify("?!."), None);
    }

    #[test]
    fn only_the_whole_body_counts() {
        for body in [
            "",
            "   ",
            "please stop",
            "stop it",
            "stop please",
            "Stop, please.",
            "stop stop",
            "st.op",
            "S TOP",
            "helpful",
            "yes please",
            "I want to quit smoking",
            "ＳＴＯＰ",
            "stöp",
        ] {
            assert_eq!(classify(body), None, "{body:?}");
        }
    }
}
