//! Command construction: quoting, literals, flag lists, UID sets.

use std::fmt::Write as _;

use bytes::Bytes;

/// Literals up to this size may be non-synchronizing under LITERAL- (RFC 7888).
const LITERAL_MINUS_MAX: usize = 4096;

/// Which non-synchronizing literals the server accepts (RFC 7888).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LiteralMode {
    Plus,
    Minus,
    Sync,
}

impl LiteralMode {
    /// Whether a literal of `len` bytes can be sent without waiting for `+`.
    pub(super) fn non_sync(self, len: usize) -> bool {
        match self {
            LiteralMode::Plus => true,
            LiteralMode::Minus => len <= LITERAL_MINUS_MAX,
            LiteralMode::Sync => false,
        }
    }
}

/// A piece of a command as it goes on the wire.
pub(super) enum Segment {
    Text(Vec<u8>),
    /// Literal payload; its `{N}` header ends the preceding text segment.
    /// With `sync` the client must wait for a continuation before sending it.
    Literal {
        data: Bytes,
        sync: bool,
    },
}

/// A complete tagged command.
pub(super) struct Command {
    pub(super) tag: String,
    pub(super) segments: Vec<Segment>,
}

impl Command {
    /// Command name for logs (never includes arguments, which may be secret).
    pub(super) fn verb(&self) -> &str {
        let Some(Segment::Text(first)) = self.segments.first() else {
            return "";
        };
        let after_tag = first
            .get(self.tag.len() + 1..)
            .unwrap_or_default()
            .split(|&b| b == b' ' || b == b'\r')
            .next()
            .unwrap_or_default();
        std::str::from_utf8(after_tag).unwrap_or("?")
    }

    /// Whether any literal requires a continuation round trip.
    pub(super) fn needs_sync(&self) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Literal { sync: true, .. }))
    }
}

/// Builds a [`Command`] piece by piece.
pub(super) struct CommandBuilder {
    tag: String,
    mode: LiteralMode,
    segments: Vec<Segment>,
    text: Vec<u8>,
}

impl CommandBuilder {
    pub(super) fn new(tag: &str, mode: LiteralMode) -> Self {
        let mut text = Vec::with_capacity(128);
        text.extend_from_slice(tag.as_bytes());
        text.push(b' ');
        CommandBuilder {
            tag: tag.to_string(),
            mode,
            segments: Vec::new(),
            text,
        }
    }

    /// Appends protocol text verbatim (command names, atoms, spaces).
    pub(super) fn raw(&mut self, s: &str) -> &mut Self {
        self.text.extend_from_slice(s.as_bytes());
        self
    }

    /// Appends a string argument: quoted when possible, otherwise a literal.
    pub(super) fn string(&mut self, s: &str) -> &mut Self {
        if !s.bytes().all(is_quotable) {
            return self.literal(Bytes::copy_from_slice(s.as_bytes()));
        }
        self.text.reserve(s.len() + 2);
        self.text.push(b'"');
        for b in s.bytes() {
            if b == b'"' || b == b'\\' {
                self.text.push(b'\\');
            }
            self.text.push(b);
        }
        self.text.push(b'"');
        self
    }

    /// Appends a literal, non-synchronizing when the server allows it.
    pub(super) fn literal(&mut self, data: Bytes) -> &mut Self {
        let sync = !self.mode.non_sync(data.len());
        let plus = if sync { "" } else { "+" };
        let header = format!("{{{}{plus}}}\r\n", data.len());
        self.text.extend_from_slice(header.as_bytes());
        self.segments
            .push(Segment::Text(std::mem::take(&mut self.text)));
        self.segments.push(Segment::Literal { data, sync });
        self
    }

    /// Appends a parenthesized flag list, dropping `\Recent` and invalid flags.
    pub(super) fn flag_list(&mut self, flags: &[String]) -> &mut Self {
        self.text.push(b'(');
        let mut first = true;
        for flag in flags {
            if flag.eq_ignore_ascii_case("\\Recent") {
                continue;
            }
            if !is_valid_flag(flag) {
                tracing::warn!(
                    flag = %mailwave_common::text::escape_controls(flag),
                    "dropping flag that is not a valid IMAP atom"
                );
                continue;
            }
            if !first {
                self.text.push(b' ');
            }
            first = false;
            self.text.extend_from_slice(flag.as_bytes());
        }
        self.text.push(b')');
        self
    }

    /// Terminates the command with CRLF.
    pub(super) fn finish(mut self) -> Command {
        self.text.extend_from_slice(b"\r\n");
        self.segments.push(Segment::Text(self.text));
        Command {
            tag: self.tag,
            segments: self.segments,
        }
    }
}

fn is_quotable(b: u8) -> bool {
    b != 0 && b != b'\r' && b != b'\n' && b < 0x80
}

fn is_atom_char(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && !b"(){%*\"\\]".contains(&b)
}

/// Whether `flag` is a syntactically valid system flag or keyword.
pub(super) fn is_valid_flag(flag: &str) -> bool {
    let atom = flag.strip_prefix('\\').unwrap_or(flag);
    !atom.is_empty() && atom.bytes().all(is_atom_char)
}

/// Compresses UIDs into an IMAP sequence set such as `1:5,7,9:12`.
pub fn uid_set(uids: &[u32]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut iter = sorted.into_iter().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while let Some(&next) = iter.peek() {
            if end.checked_add(1) != Some(next) {
                break;
            }
            end = next;
            iter.next();
        }
        if !out.is_empty() {
            out.push(',');
        }
        let _ = if start == end {
            write!(out, "{start}")
        } else {
            write!(out, "{start}:{end}")
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(cmd: &Command) -> Vec<u8> {
        let mut out = Vec::new();
        for s in &cmd.segments {
            match s {
                Segment::Text(t) => out.extend_from_slice(t),
                Segment::Literal { data, .. } => out.extend_from_slice(data),
            }
        }
        out
    }

    #[test]
    fn quoting_and_literals() {
        let mut b = CommandBuilder::new("A1", LiteralMode::Sync);
        b.raw("LOGIN ")
            .string("us\"er\\x")
            .raw(" ")
            .string("pä\r\nss");
        let cmd = b.finish();
        assert_eq!(cmd.verb(), "LOGIN");
        assert!(cmd.needs_sync());
        assert_eq!(
            wire(&cmd),
            "A1 LOGIN \"us\\\"er\\\\x\" {7}\r\npä\r\nss\r\n".as_bytes()
        );

        let mut b = CommandBuilder::new("A2", LiteralMode::Plus);
        b.raw("LOGIN ").string("ü").raw(" ").string("");
        let cmd = b.finish();
        assert!(!cmd.needs_sync());
        assert_eq!(wire(&cmd), "A2 LOGIN {2+}\r\nü \"\"\r\n".as_bytes());
    }

    #[test]
    fn literal_minus_threshold() {
        let mut b = CommandBuilder::new("A3", LiteralMode::Minus);
        b.raw("APPEND x ")
            .literal(Bytes::from(vec![b'a'; 4096]))
            .raw(" ")
            .literal(Bytes::from(vec![b'b'; 4097]));
        let cmd = b.finish();
        let syncs: Vec<bool> = cmd
            .segments
            .iter()
            .filter_map(|s| match s {
                Segment::Literal { sync, .. } => Some(*sync),
                Segment::Text(_) => None,
            })
            .collect();
        assert_eq!(syncs, [false, true]);
        let w = wire(&cmd);
        assert!(w.starts_with(b"A3 APPEND x {4096+}\r\naaaa"));
        assert!(w.windows(9).any(|x| x == b" {4097}\r\n"));
    }

    #[test]
    fn flag_lists_filter_recent_and_invalid() {
        let flags: Vec<String> = [
            "\\Seen",
            "\\Recent",
            "$Forwarded",
            "bad flag",
            "a(b",
            "\\",
            "Projekt-X",
        ]
        .map(String::from)
        .to_vec();
        let mut b = CommandBuilder::new("A4", LiteralMode::Plus);
        b.raw("STORE 1 FLAGS ").flag_list(&flags);
        assert_eq!(
            wire(&b.finish()),
            b"A4 STORE 1 FLAGS (\\Seen $Forwarded Projekt-X)\r\n"
        );
    }

    #[test]
    fn uid_sets() {
        assert_eq!(uid_set(&[]), "");
        assert_eq!(uid_set(&[7]), "7");
        assert_eq!(uid_set(&[1, 2, 3, 4, 5, 7, 9, 10, 11, 12]), "1:5,7,9:12");
        assert_eq!(uid_set(&[12, 9, 10, 11, 9, 1]), "1,9:12");
        assert_eq!(uid_set(&[u32::MAX - 1, u32::MAX]), "4294967294:4294967295");
    }
}
