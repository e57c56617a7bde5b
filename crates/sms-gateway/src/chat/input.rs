//! Where `chat` reads the person's lines: on a terminal, a line editor with history kept in a
//! file; anywhere else (a pipe, a file), plain lines, with no prompt.

use std::io::IsTerminal as _;
use std::path::PathBuf;

use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines, Stdin};

/// How many lines the history file keeps.
const HISTORY_LINES: usize = 1_000;

/// A source of lines.
pub(crate) enum Input {
    /// A terminal: line editing, the prompt, and history saved to `history` after each line.
    Terminal {
        /// `None` only while a line is being read on the blocking pool.
        editor: Option<Box<DefaultEditor>>,
        /// The prompt.
        prompt: &'static str,
        /// The history file.
        history: PathBuf,
    },
    /// Anything else.
    Plain(Lines<BufReader<Stdin>>),
}

/// What reading a line gave.
pub(crate) enum Line {
    /// A line.
    Text(String),
    /// Ctrl-C at the prompt: the line is dropped, the chat goes on.
    Interrupted,
    /// End of input (Ctrl-D, or the end of a pipe).
    End,
}

impl Input {
    /// A line editor when standard input is a terminal, with the history of earlier chats loaded
    /// from `history` (a missing file is a first chat); plain lines otherwise, or when the
    /// terminal cannot be set up for editing.
    pub(crate) fn open(history: PathBuf, prompt: &'static str) -> Self {
        let plain = || Input::Plain(BufReader::new(tokio::io::stdin()).lines());
        if !std::io::stdin().is_terminal() {
            return plain();
        }
        let editor = rustyline::Config::builder()
            .max_history_size(HISTORY_LINES)
            .map(|config| config.auto_add_history(true).build())
            .and_then(DefaultEditor::with_config);
        let mut editor = match editor {
            Ok(editor) => editor,
            Err(error) => {
                tracing::warn!(%error, "no line editing on this terminal; reading plain lines");
                return plain();
            }
        };
        match editor.load_history(&history) {
            Ok(()) => {}
            Err(ReadlineError::Io(error)) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(%error, "could not read the chat history; starting without it");
            }
        }
        Input::Terminal {
            editor: Some(Box::new(editor)),
            prompt,
            history,
        }
    }

    /// The next line.
    pub(crate) async fn next(&mut self) -> Line {
        match self {
            Input::Plain(lines) => match lines.next_line().await {
                Ok(Some(line)) => Line::Text(line),
                // Unreadable input ends the chat as its end does.
                Ok(None) | Err(_) => Line::End,
            },
            Input::Terminal {
                editor,
                prompt,
                history,
            } => {
                let Some(mut taken) = editor.take() else {
                    return Line::End;
                };
                let shown = *prompt;
                // The editor blocks on the terminal: off the runtime, which serves the turns.
                let read = tokio::task::spawn_blocking(move || {
                    let line = taken.readline(shown);
                    (taken, line)
                })
                .await;
                let Ok((taken, line)) = read else {
                    return Line::End;
                };
                let mut taken = taken;
                let line = match line {
                    Ok(line) => {
                        if let Err(error) = taken.save_history(history) {
                            tracing::warn!(%error, "could not save the chat history");
                        }
                        Line::Text(line)
                    }
                    Err(ReadlineError::Interrupted) => Line::Interrupted,
                    Err(ReadlineError::Eof) => Line::End,
                    Err(error) => {
                        tracing::warn!(%error, "could not read from the terminal");
                        Line::End
                    }
                };
                *editor = Some(taken);
                line
            }
        }
    }
}
