//! Response framing (lines plus literals) and raw parsing of the responses
//! that are simpler or more robust to handle without `imap-proto`.

use std::future::Future;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::error::ImapError;
use super::types::Namespace;

/// Read-ahead when waiting for a line.
const READ_CHUNK: usize = 64 * 1024;
/// Minimum free buffer space before a read; below this, `READ_CHUNK` is reserved.
const MIN_SPARE: usize = 4 * 1024;
/// Extra room reserved with a literal for the rest of the response, so that
/// finishing the response does not force a reallocation of the literal.
const LITERAL_SLACK: usize = 16 * 1024;
/// Longest accepted line part (a huge SEARCH result still fits).
const MAX_LINE: usize = 64 * 1024 * 1024;
/// Largest literal accepted when the command did not ask for more (header
/// blocks, folder names): see [`ResponseReader::set_literal_limit`].
pub(super) const DEFAULT_LITERAL_LIMIT: usize = 4 * 1024 * 1024;
/// Deepest parenthesis nesting accepted in one response. Real BODYSTRUCTUREs
/// stay far below; parsers recurse once per level, so a response nested
/// deeper must never reach them.
pub(super) const MAX_NESTING: usize = 64;

/// Runs one I/O future with a deadline, mapping errors to [`ImapError`].
pub(super) async fn io_timeout<T>(
    limit: Duration,
    fut: impl Future<Output = std::io::Result<T>>,
) -> Result<T, ImapError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result.map_err(ImapError::Io),
        Err(_) => Err(ImapError::Timeout(limit)),
    }
}

enum Progress {
    /// A complete response of this many bytes is at the start of the buffer.
    Complete(usize),
    /// Inside a line: need more bytes.
    Line,
    /// Inside a literal: this many bytes are still missing.
    Literal(usize),
}

/// Splits the byte stream into complete responses.
///
/// Only line parts are scanned for `{N}`; literal bytes are skipped by count.
pub(super) struct ResponseReader {
    buf: BytesMut,
    /// Start of the current line part of the response being framed.
    line_start: usize,
    /// Where to continue searching for LF (everything before was checked).
    scan: usize,
    /// Parenthesis nesting and quoting where `scan` stands.
    nesting: Nesting,
    /// Literal bytes of the response being framed so far.
    literal_bytes: usize,
    /// The most literal bytes one response may hold.
    literal_limit: usize,
}

/// Where the scan of a response's line parts is: how deep in parentheses,
/// inside a quoted string or not (and after a backslash in it).
#[derive(Debug, Default, Clone, Copy)]
struct Nesting {
    depth: usize,
    quoted: bool,
    escaped: bool,
}

impl Nesting {
    /// Takes one byte of a line part into account; `Err` when too deep.
    fn step(&mut self, byte: u8) -> Result<(), ImapError> {
        if self.quoted {
            match byte {
                _ if self.escaped => self.escaped = false,
                b'\\' => self.escaped = true,
                b'"' => self.quoted = false,
                _ => {}
            }
            return Ok(());
        }
        match byte {
            b'"' => self.quoted = true,
            b'(' | b'[' => {
                self.depth += 1;
                if self.depth > MAX_NESTING {
                    return Err(ImapError::Protocol(format!(
                        "response nested deeper than {MAX_NESTING} levels"
                    )));
                }
            }
            b')' | b']' => self.depth = self.depth.saturating_sub(1),
            _ => {}
        }
        Ok(())
    }

    /// A line ends: a quoted string never spans lines.
    fn end_line(&mut self) {
        self.quoted = false;
        self.escaped = false;
    }
}

impl ResponseReader {
    pub(super) fn new() -> Self {
        ResponseReader {
            buf: BytesMut::with_capacity(READ_CHUNK),
            line_start: 0,
            scan: 0,
            nesting: Nesting::default(),
            literal_bytes: 0,
            literal_limit: DEFAULT_LITERAL_LIMIT,
        }
    }

    /// The most literal bytes one response may hold from now on: a
    /// response announcing more fails the connection before its bytes are
    /// read, whatever size a server claims.
    pub(super) fn set_literal_limit(&mut self, bytes: usize) {
        self.literal_limit = bytes;
    }

    /// Whether bytes were received that no response consumed yet.
    pub(super) fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Reads one complete response (including any literals and the final CRLF).
    pub(super) async fn read<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        limit: Duration,
    ) -> Result<Bytes, ImapError> {
        loop {
            match self.advance()? {
                Progress::Complete(len) => return Ok(self.buf.split_to(len).freeze()),
                Progress::Literal(missing) => self.buf.reserve(missing + LITERAL_SLACK),
                Progress::Line => {
                    if self.buf.capacity() - self.buf.len() < MIN_SPARE {
                        self.buf.reserve(READ_CHUNK);
                    }
                }
            }
            let n = io_timeout(limit, io.read_buf(&mut self.buf)).await?;
            if n == 0 {
                return Err(ImapError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                )));
            }
        }
    }

    fn advance(&mut self) -> Result<Progress, ImapError> {
        loop {
            if self.line_start > self.buf.len() {
                return Ok(Progress::Literal(self.line_start - self.buf.len()));
            }
            let Some(offset) = self.buf[self.scan..].iter().position(|&b| b == b'\n') else {
                for &byte in &self.buf[self.scan..] {
                    self.nesting.step(byte)?;
                }
                self.scan = self.buf.len();
                if self.scan - self.line_start > MAX_LINE {
                    return Err(ImapError::Protocol("response line too long".into()));
                }
                return Ok(Progress::Line);
            };
            let lf = self.scan + offset;
            for &byte in &self.buf[self.scan..lf] {
                self.nesting.step(byte)?;
            }
            self.nesting.end_line();
            let Some(len) = literal_len(&self.buf[self.line_start..=lf])? else {
                self.line_start = 0;
                self.scan = 0;
                self.nesting = Nesting::default();
                self.literal_bytes = 0;
                return Ok(Progress::Complete(lf + 1));
            };
            self.literal_bytes = self.literal_bytes.saturating_add(len);
            if self.literal_bytes > self.literal_limit {
                return Err(ImapError::Protocol(format!(
                    "the server announced {len} bytes of literal data, more than the {} bytes asked for",
                    self.literal_limit
                )));
            }
            self.line_start = lf + 1 + len;
            self.scan = self.line_start;
        }
    }
}

/// The announced size if `line` ends with `{N}\r\n` or `{N+}\r\n`.
fn literal_len(line: &[u8]) -> Result<Option<usize>, ImapError> {
    let Some(head) = line.strip_suffix(b"}\r\n") else {
        return Ok(None);
    };
    let Some(open) = head.iter().rposition(|&b| b == b'{') else {
        return Ok(None);
    };
    let digits = &head[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || digits.len() > 12 || !digits.iter().all(u8::is_ascii_digit) {
        return Ok(None);
    }
    let len: usize = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(usize::MAX);
    Ok(Some(len))
}

/// Status of a tagged or untagged condition response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    Ok,
    No,
    Bad,
    Bye,
    PreAuth,
}

/// A parsed `OK`/`NO`/`BAD`/`BYE`/`PREAUTH` response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StatusLine {
    pub(super) status: Status,
    /// Contents of the `[...]` response code, e.g. `APPENDUID 38505 3955:3957`.
    pub(super) code: Option<String>,
    pub(super) text: String,
}

impl StatusLine {
    /// Response code name in upper case (`ALREADYEXISTS`).
    pub(super) fn code_name(&self) -> Option<String> {
        let code = self.code.as_deref()?;
        let name = code.split(' ').next().unwrap_or(code);
        Some(name.to_ascii_uppercase())
    }

    /// Arguments of the response code if its name is `name` (case-insensitive).
    pub(super) fn code_arg(&self, name: &str) -> Option<&str> {
        let code = self.code.as_deref()?;
        let (head, rest) = code.split_once(' ').unwrap_or((code, ""));
        head.eq_ignore_ascii_case(name).then_some(rest)
    }

    /// `Ok` for `OK`/`PREAUTH`, the matching error otherwise.
    pub(super) fn into_result(self) -> Result<StatusLine, ImapError> {
        match self.status {
            Status::Ok | Status::PreAuth => Ok(self),
            Status::No => Err(ImapError::No {
                code: self.code_name(),
                text: self.text,
            }),
            Status::Bad => Err(ImapError::Bad { text: self.text }),
            Status::Bye => Err(ImapError::Bye { text: self.text }),
        }
    }
}

/// Parses `STATUS [SP "[" code "]"] [SP text]` (everything after the tag).
/// Only the first word is inspected before deciding, so calling this on a
/// large FETCH response costs nothing.
pub(super) fn parse_status(rest: &[u8]) -> Option<StatusLine> {
    let word_end = rest
        .iter()
        .take(8)
        .position(|&b| b == b' ' || b == b'\r' || b == b'\n')?;
    let status = match rest[..word_end].to_ascii_uppercase().as_slice() {
        b"OK" => Status::Ok,
        b"NO" => Status::No,
        b"BAD" => Status::Bad,
        b"BYE" => Status::Bye,
        b"PREAUTH" => Status::PreAuth,
        _ => return None,
    };
    let after = trim_crlf(&rest[word_end..]);
    let after = String::from_utf8_lossy(after.strip_prefix(b" ").unwrap_or(after));
    let (code, text) = match after.strip_prefix('[').and_then(|c| c.split_once(']')) {
        Some((code, text)) => (Some(code.to_string()), text.trim_start()),
        None => (None, after.as_ref()),
    };
    Some(StatusLine {
        status,
        code,
        text: text.to_string(),
    })
}

fn trim_crlf(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Coarse classification of one response frame.
#[derive(Debug)]
pub(super) enum Frame<'a> {
    /// `+ ...`; carries the text after the `+`.
    Continuation(&'a [u8]),
    /// `* ...`; carries everything after `* `.
    Untagged(&'a [u8]),
    Tagged {
        tag: &'a [u8],
        status: StatusLine,
    },
}

pub(super) fn classify(frame: &[u8]) -> Result<Frame<'_>, ImapError> {
    if let Some(rest) = frame.strip_prefix(b"+") {
        let rest = trim_crlf(rest);
        return Ok(Frame::Continuation(rest.strip_prefix(b" ").unwrap_or(rest)));
    }
    if let Some(rest) = frame.strip_prefix(b"* ") {
        return Ok(Frame::Untagged(rest));
    }
    let parsed = frame
        .iter()
        .position(|&b| b == b' ')
        .and_then(|sp| Some((&frame[..sp], parse_status(&frame[sp + 1..])?)));
    let Some((tag, status)) = parsed else {
        let shown = String::from_utf8_lossy(&frame[..frame.len().min(200)]);
        return Err(ImapError::Protocol(format!("unexpected response: {shown}")));
    };
    Ok(Frame::Tagged { tag, status })
}

/// If the untagged response starts with `keyword` (case-insensitive),
/// returns its arguments without the trailing CRLF.
pub(super) fn keyword_args<'a>(untagged: &'a [u8], keyword: &str) -> Option<&'a [u8]> {
    let head = untagged.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword.as_bytes()) {
        return None;
    }
    let rest = trim_crlf(&untagged[keyword.len()..]);
    match rest.first() {
        None => Some(rest),
        Some(b' ') => Some(&rest[1..]),
        Some(_) => None,
    }
}

/// Upper-cased space-separated atoms (capability lists, ENABLED).
pub(super) fn atoms(list: &[u8]) -> impl Iterator<Item = String> + '_ {
    list.split(|&b| b == b' ')
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
}

/// Parses the personal namespace from the arguments of a NAMESPACE response.
pub(super) fn parse_namespace(args: &[u8]) -> Result<Option<Namespace>, ImapError> {
    let mut cur = Cursor { s: args, pos: 0 };
    if cur.nil() {
        return Ok(None);
    }
    let parsed = (|| {
        cur.expect(b'(')?;
        cur.expect(b'(')?;
        let prefix = cur.string()?;
        cur.expect(b' ')?;
        let delimiter = if cur.nil() { None } else { Some(cur.string()?) };
        Some((prefix, delimiter))
    })();
    let Some((prefix, delimiter)) = parsed else {
        return Err(ImapError::Protocol(format!(
            "cannot parse NAMESPACE response: {}",
            String::from_utf8_lossy(args)
        )));
    };
    Ok(Some(Namespace {
        prefix: String::from_utf8_lossy(&prefix).into_owned(),
        delimiter: delimiter.and_then(|d| String::from_utf8_lossy(&d).chars().next()),
    }))
}

/// Minimal tokenizer for the few responses parsed by hand.
struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn expect(&mut self, b: u8) -> Option<()> {
        (self.s.get(self.pos) == Some(&b)).then(|| self.pos += 1)
    }

    fn nil(&mut self) -> bool {
        let is_nil = self
            .s
            .get(self.pos..self.pos + 3)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"NIL"));
        if is_nil {
            self.pos += 3;
        }
        is_nil
    }

    /// A quoted string (unescaped) or a literal.
    fn string(&mut self) -> Option<Vec<u8>> {
        if self.expect(b'"').is_some() {
            let mut out = Vec::new();
            loop {
                let b = *self.s.get(self.pos)?;
                self.pos += 1;
                match b {
                    b'"' => return Some(out),
                    b'\\' => {
                        out.push(*self.s.get(self.pos)?);
                        self.pos += 1;
                    }
                    _ => out.push(b),
                }
            }
        }
        self.expect(b'{')?;
        let close = self.pos + self.s[self.pos..].iter().position(|&b| b == b'}')?;
        let digits = std::str::from_utf8(&self.s[self.pos..close]).ok()?;
        let len: usize = digits.trim_end_matches('+').parse().ok()?;
        let start = close + 3;
        let data = self.s.get(start..start.checked_add(len)?)?.to_vec();
        self.pos = start + len;
        Some(data)
    }
}

/// Expands the uid-set of an `APPENDUID` code (`38505 5:7,9`), returning
/// `(uidvalidity, uids)`; `None` if malformed or longer than `limit`.
pub(super) fn parse_appenduid(args: &str, limit: usize) -> Option<(u32, Vec<u32>)> {
    let (validity, set) = args.trim().split_once(' ')?;
    let validity = validity.parse().ok()?;
    let mut uids = Vec::new();
    for part in set.split(',') {
        let (a, b) = part.split_once(':').unwrap_or((part, part));
        let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
        let (lo, hi) = (a.min(b), a.max(b));
        if (hi - lo) as usize >= limit.saturating_sub(uids.len()) {
            return None;
        }
        uids.extend(lo..=hi);
    }
    Some((validity, uids))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::ReadBuf;

    /// Yields `data` in chunks of the given sizes (cycling).
    struct Chunked {
        data: Vec<u8>,
        pos: usize,
        sizes: Vec<usize>,
        turn: usize,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let size = self.sizes[self.turn % self.sizes.len()];
            self.turn += 1;
            let end = (self.pos + size)
                .min(self.data.len())
                .min(self.pos + buf.remaining());
            let chunk = self.data[self.pos..end].to_vec();
            buf.put_slice(&chunk);
            self.pos = end;
            Poll::Ready(Ok(()))
        }
    }

    const STREAM: &[&[u8]] = &[
        b"* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n",
        b"* 1 FETCH (UID 7 BODY[] {22}\r\nhi)\r\n* 2 FETCH (x\r\n)\r\n ok)\r\n",
        b"* 2 FETCH (UID 8 BODY[HEADER] {0}\r\n BODY[TEXT] {5}\r\n{1}\r\n)\r\n",
        b"* LIST () \"/\" {5+}\r\nab}\r\n\r\n",
        b"A1 OK done\r\n",
    ];

    async fn frames_with(sizes: Vec<usize>) -> Vec<Bytes> {
        let mut io = Chunked {
            data: STREAM.concat(),
            pos: 0,
            sizes,
            turn: 0,
        };
        let mut reader = ResponseReader::new();
        let mut out = Vec::new();
        for _ in STREAM {
            out.push(reader.read(&mut io, Duration::from_secs(1)).await.unwrap());
        }
        assert!(!reader.has_buffered());
        let eof = reader.read(&mut io, Duration::from_secs(1)).await;
        assert!(matches!(eof, Err(ImapError::Io(_))), "{eof:?}");
        out
    }

    #[tokio::test]
    async fn frames_survive_every_split() {
        let total = STREAM.concat().len();
        let mut patterns: Vec<Vec<usize>> = (1..=total).map(|n| vec![n]).collect();
        patterns.extend([vec![1, 2, 3], vec![5, 1], vec![13, 7, 1, 40], vec![2, 64]]);
        for sizes in patterns {
            let frames = frames_with(sizes.clone()).await;
            let expected: Vec<&[u8]> = STREAM.to_vec();
            let got: Vec<&[u8]> = frames.iter().map(|f| &f[..]).collect();
            assert_eq!(got, expected, "split pattern {sizes:?}");
        }
    }

    #[tokio::test]
    async fn large_literal_is_read_into_one_allocation() {
        let body = vec![b'x'; 3 * 1024 * 1024];
        let mut data = format!("* 1 FETCH (BODY[] {{{}}}\r\n", body.len()).into_bytes();
        data.extend_from_slice(&body);
        data.extend_from_slice(b" UID 3)\r\n");
        let mut io = Chunked {
            data: data.clone(),
            pos: 0,
            sizes: vec![100_000, 7, 65_536],
            turn: 0,
        };
        let mut reader = ResponseReader::new();
        let frame = reader.read(&mut io, Duration::from_secs(1)).await.unwrap();
        assert_eq!(&frame[..], &data[..]);
        // The frame must live in a buffer sized for the literal up front.
        assert!(reader.buf.capacity() <= LITERAL_SLACK + READ_CHUNK);
    }

    #[test]
    fn literal_detection() {
        assert_eq!(literal_len(b"* X {12}\r\n").unwrap(), Some(12));
        assert_eq!(literal_len(b"A1 APPEND x {7+}\r\n").unwrap(), Some(7));
        assert_eq!(literal_len(b"* OK {x}\r\n").unwrap(), None);
        assert_eq!(literal_len(b"* OK {}\r\n").unwrap(), None);
        assert_eq!(literal_len(b"* OK 12}\r\n").unwrap(), None);
        assert_eq!(literal_len(b"* OK {12}\n").unwrap(), None);
    }

    #[tokio::test]
    async fn a_literal_larger_than_asked_for_fails_before_its_bytes_are_read() {
        let mut io = Chunked {
            data: b"* 1 FETCH (UID 1 BODY[] {2147483648}\r\nxxxx".to_vec(),
            pos: 0,
            sizes: vec![4096],
            turn: 0,
        };
        let mut reader = ResponseReader::new();
        reader.set_literal_limit(1024 * 1024);
        let error = reader
            .read(&mut io, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ImapError::Protocol(text) if text.contains("2147483648")),
            "{error:?}"
        );
        assert!(
            reader.buf.capacity() <= 2 * READ_CHUNK,
            "nothing reserved for it"
        );
    }

    #[tokio::test]
    async fn nesting_is_limited_before_any_parser_sees_the_response() {
        let deep = format!(
            "* 1 FETCH (BODYSTRUCTURE {}\"TEXT\"{})\r\n",
            "(".repeat(400),
            ")".repeat(400)
        );
        let mut io = Chunked {
            data: deep.into_bytes(),
            pos: 0,
            sizes: vec![7, 300],
            turn: 0,
        };
        let error = ResponseReader::new()
            .read(&mut io, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(&error, ImapError::Protocol(text) if text.contains("nested")));

        // Parentheses inside quoted strings and literals do not count.
        let text = format!(
            "* LIST () \"/\" \"{}\"\r\n* 1 FETCH (BODY[] {{100}}\r\n{})\r\n",
            "(".repeat(100),
            "(".repeat(100)
        );
        let mut io = Chunked {
            data: text.into_bytes(),
            pos: 0,
            sizes: vec![13],
            turn: 0,
        };
        let mut reader = ResponseReader::new();
        for _ in 0..2 {
            reader.read(&mut io, Duration::from_secs(1)).await.unwrap();
        }
    }

    #[test]
    fn status_lines() {
        let s = parse_status(b"NO [ALREADYEXISTS] Mailbox exists\r\n").unwrap();
        assert_eq!(s.status, Status::No);
        assert_eq!(s.code_name().as_deref(), Some("ALREADYEXISTS"));
        assert_eq!(s.text, "Mailbox exists");
        let s = parse_status(b"ok [APPENDUID 38505 3955:3957] Append completed.\r\n").unwrap();
        assert_eq!(s.status, Status::Ok);
        assert_eq!(s.code_arg("appenduid"), Some("38505 3955:3957"));
        assert_eq!(s.code_arg("COPYUID"), None);
        let s = parse_status(b"BYE\r\n").unwrap();
        assert_eq!((s.status, s.code, s.text.as_str()), (Status::Bye, None, ""));
        assert!(parse_status(b"FETCH (UID 1)\r\n").is_none());
        match StatusLine::into_result(parse_status(b"BAD [PARSE] oops\r\n").unwrap()) {
            Err(ImapError::Bad { text }) => assert_eq!(text, "oops"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn classification() {
        assert!(matches!(
            classify(b"+ go ahead\r\n"),
            Ok(Frame::Continuation(b"go ahead"))
        ));
        assert!(matches!(classify(b"+\r\n"), Ok(Frame::Continuation(b""))));
        assert!(matches!(
            classify(b"* 3 EXISTS\r\n"),
            Ok(Frame::Untagged(b"3 EXISTS\r\n"))
        ));
        match classify(b"A17 NO [TRYCREATE] no such mailbox\r\n").unwrap() {
            Frame::Tagged { tag, status } => {
                assert_eq!(tag, b"A17");
                assert_eq!(status.code_name().as_deref(), Some("TRYCREATE"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(b"garbage\r\n"),
            Err(ImapError::Protocol(_))
        ));
        assert_eq!(
            keyword_args(b"CAPABILITY IMAP4rev1 IDLE\r\n", "capability"),
            Some(&b"IMAP4rev1 IDLE"[..])
        );
        assert_eq!(keyword_args(b"CAPABILITYX\r\n", "CAPABILITY"), None);
        assert_eq!(keyword_args(b"ENABLED\r\n", "ENABLED"), Some(&b""[..]));
    }

    #[test]
    fn namespaces() {
        let ns = parse_namespace(b"((\"\" \"/\")) ((\"~\" \"/\")) NIL").unwrap();
        assert_eq!(
            ns,
            Some(Namespace {
                prefix: String::new(),
                delimiter: Some('/')
            })
        );
        let ns = parse_namespace(b"((\"INBOX.\" \".\" \"X-PARAM\" (\"a\"))) NIL NIL").unwrap();
        assert_eq!(
            ns,
            Some(Namespace {
                prefix: "INBOX.".into(),
                delimiter: Some('.')
            })
        );
        let ns = parse_namespace(b"(({5}\r\nMail\\ NIL)) NIL NIL").unwrap();
        assert_eq!(
            ns,
            Some(Namespace {
                prefix: "Mail\\".into(),
                delimiter: None
            })
        );
        let ns = parse_namespace(b"((\"a\\\"b\" \"\\\\\")) NIL NIL").unwrap();
        assert_eq!(
            ns,
            Some(Namespace {
                prefix: "a\"b".into(),
                delimiter: Some('\\')
            })
        );
        assert_eq!(parse_namespace(b"NIL NIL NIL").unwrap(), None);
        assert!(parse_namespace(b"(garbage").is_err());
    }

    #[test]
    fn appenduid_sets() {
        assert_eq!(parse_appenduid("38505 3955", 1), Some((38505, vec![3955])));
        assert_eq!(parse_appenduid("1 5:7,9", 4), Some((1, vec![5, 6, 7, 9])));
        assert_eq!(parse_appenduid("1 7:5", 3), Some((1, vec![5, 6, 7])));
        assert_eq!(parse_appenduid("1 1:4000000000", 50), None);
        assert_eq!(parse_appenduid("1 5:7,9", 3), None);
        assert_eq!(parse_appenduid("x 5", 3), None);
        assert_eq!(parse_appenduid("1 5:", 3), None);
    }
}
