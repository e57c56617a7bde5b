//! Server-rendered HTML: escaping, and the page every view is wrapped in (its stylesheet
//! embedded in the binary, so that the inspector needs no network).

use std::fmt::Write as _;

/// The stylesheet, served at `/assets/style.css`.
pub(crate) const STYLE: &str = include_str!("assets/style.css");
/// The chat page's script, served at `/assets/chat.js`.
pub(crate) const CHAT_JS: &str = include_str!("assets/chat.js");

/// `text` escaped for HTML text and attribute values.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What the navigation bar offers.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Nav<'a> {
    /// The session's CSRF token, for the logout form; none: no logout (open access, where
    /// there is no login to end, or no session).
    pub(crate) logout: Option<&'a str>,
    /// A link to the browser chat.
    pub(crate) chat: bool,
}

/// A whole page: `title`, the navigation and `body`, which is HTML already.
pub(crate) fn page(title: &str, nav_bar: Nav<'_>, body: &str) -> String {
    let mut nav = String::from(r#"<a href="/">Conversations</a> <a href="/audit">Audit</a>"#);
    if nav_bar.chat {
        nav.push_str(r#" <a href="/chat">Chat</a>"#);
    }
    if let Some(csrf) = nav_bar.logout {
        let _ = write!(
            nav,
            r#" <form method="post" action="/logout" class="inline">{}<button id="logout">Log out</button></form>"#,
            csrf_field(csrf)
        );
    }
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · inspector</title><link rel="stylesheet" href="/assets/style.css"></head>
<body><header><strong>Soul inspector</strong> <nav>{nav}</nav></header>
<main>{body}</main></body></html>"#,
        title = esc(title),
    )
}

/// The hidden field every form carries.
pub(crate) fn csrf_field(csrf: &str) -> String {
    format!(r#"<input type="hidden" name="csrf" value="{}">"#, esc(csrf))
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn markup_in_text_is_escaped() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }
}
