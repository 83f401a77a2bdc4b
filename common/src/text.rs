//! Text that came from outside (a mail server, a file, a CSV) made safe to
//! print, log or store: control characters never reach a terminal.

use std::borrow::Cow;

/// `text` with every control character (C0, DEL, C1) written as an escape
/// (`\e`, `\r`, `\u{9b}`, …), so that a server's answer cannot move the
/// cursor, clear the screen or forge log lines. Tabs stay tabs.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\u{1b}' => escaped.push_str("\\e"),
            '\r' => escaped.push_str("\\r"),
            '\n' => escaped.push_str("\\n"),
            '\0' => escaped.push_str("\\0"),
            c if is_unsafe(c) => escaped.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

/// [`escape_controls`] of bytes that may not be UTF-8 (invalid sequences
/// become U+FFFD).
pub fn escape_bytes(bytes: &[u8]) -> String {
    escape_controls(&String::from_utf8_lossy(bytes)).into_owned()
}

fn is_unsafe(c: char) -> bool {
    c != '\t'
        && (c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_sequences_are_written_out() {
        let hostile = "NO \u{1b}[2J\u{1b}[Hall mailboxes completed\r\n\u{9b}31m\u{7f}";
        let safe = escape_controls(hostile);
        assert!(!safe.chars().any(|c| c.is_control()), "{safe}");
        assert_eq!(
            safe,
            "NO \\e[2J\\e[Hall mailboxes completed\\r\\n\\u{9b}31m\\u{7f}"
        );
        assert!(matches!(escape_controls("plain\ttext é"), Cow::Borrowed(_)));
        assert_eq!(escape_controls("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(escape_bytes(b"x\x00\xffy"), "x\\0\u{fffd}y");
    }
}
