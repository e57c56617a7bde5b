//! How `chat` writes: colours on a terminal, plain text anywhere else (a pipe, a file), so a
//! transcript saved from `chat` holds no escape codes.

use std::io::IsTerminal as _;

/// Styles for one output stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Look {
    colour: bool,
}

const BOLD_CYAN: &str = "\x1b[1;36m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

impl Look {
    /// Colours when standard output is a terminal and `NO_COLOR` is not set (no-color.org).
    pub(crate) fn for_stdout() -> Self {
        let no_colour = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
        Look {
            colour: std::io::stdout().is_terminal() && !no_colour,
        }
    }

    fn paint(self, style: &str, text: &str) -> String {
        if self.colour {
            format!("{style}{text}{RESET}")
        } else {
            text.to_owned()
        }
    }

    /// A reply of the soul called `soul`, as one line.
    pub(crate) fn reply(self, soul: &str, text: &str) -> String {
        format!("{} {text}\n", self.paint(BOLD_CYAN, &format!("{soul}>")))
    }

    /// A note from `chat` itself (not the soul), in parentheses.
    pub(crate) fn note(self, text: &str) -> String {
        format!("{}\n", self.paint(DIM, &format!("({text})")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_colour_nothing_but_the_text_is_written() {
        let plain = Look { colour: false };
        assert_eq!(plain.reply("pip", "hi"), "pip> hi\n");
        assert_eq!(plain.note("stored"), "(stored)\n");
    }

    #[test]
    fn with_colour_the_name_and_notes_are_styled_and_the_reply_is_not() {
        let coloured = Look { colour: true };
        assert_eq!(coloured.reply("pip", "hi"), "\x1b[1;36mpip>\x1b[0m hi\n");
        assert_eq!(coloured.note("stored"), "\x1b[2m(stored)\x1b[0m\n");
    }
}
