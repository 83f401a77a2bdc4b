//! The IMAP session: connection setup, command execution and typed commands.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use imap_proto::{
    AttributeValue, MailboxDatum, MailboxListData, MessageSection, NameAttribute, Response,
    SectionPath, StatusAttribute,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tracing::{debug, trace, warn};

use super::command::{Command, CommandBuilder, LiteralMode, Segment, uid_set};
use super::error::ImapError;
use super::framing::{
    DEFAULT_LITERAL_LIMIT, Frame, ResponseReader, Status, StatusLine, atoms, classify, io_timeout,
    keyword_args, parse_appenduid, parse_namespace, parse_status,
};
use super::types::{
    AppendMessage, AppendOutcome, ConnectOptions, FetchedMessage, ListEntry, MailboxStatus,
    MessageMeta, Namespace, SelectedInfo, TlsMode,
};

const WRITE_BUFFER: usize = 64 * 1024;
/// Large writes are split so that the timeout bounds each chunk, not the whole body.
const WRITE_CHUNK: usize = 1024 * 1024;
/// Continuations answered in one AUTHENTICATE before cancelling it.
const MAX_SASL_ROUNDS: usize = 4;

/// The transport under the IMAP session.
enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    #[cfg(test)]
    Mock(tokio::io::DuplexStream),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => $call,
            Stream::Tls($s) => $call,
            #[cfg(test)]
            Stream::Mock($s) => $call,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// An untagged response as seen by a command's response handler.
enum Data<'a> {
    /// `* OK/NO/BAD [...]` (BYE never gets here).
    Status(&'a StatusLine),
    Response(Response<'a>),
    /// Not understood by imap-proto; carries the text after `* `.
    Unparsed(&'a [u8]),
}

fn ignore(_: &Bytes, _: Data<'_>) {}

/// A non-untagged response.
enum Event {
    /// Continuation request with its (possibly base64) text.
    Continue(Bytes),
    Tagged {
        tag: String,
        status: StatusLine,
    },
}

/// An authenticated-or-not IMAP session over one connection.
pub struct ImapConnection {
    io: BufWriter<Stream>,
    reader: ResponseReader,
    timeout: Duration,
    capabilities: HashSet<String>,
    enabled: HashSet<String>,
    tag_counter: u32,
    broken: bool,
}

impl ImapConnection {
    /// Connects, reads the greeting, upgrades with STARTTLS when asked and
    /// learns the capabilities.
    pub async fn connect(opts: &ConnectOptions) -> Result<Self, ImapError> {
        let addr = (opts.host.as_str(), opts.port);
        let tcp = io_timeout(opts.timeout, TcpStream::connect(addr)).await?;
        tcp.set_nodelay(true)?;
        let stream = match opts.tls {
            TlsMode::Implicit => Stream::Tls(Box::new(tls_handshake(tcp, opts).await?)),
            TlsMode::StartTls | TlsMode::None => Stream::Tcp(tcp),
        };
        Self::establish(stream, opts).await
    }

    async fn establish(stream: Stream, opts: &ConnectOptions) -> Result<Self, ImapError> {
        let mut conn = ImapConnection {
            io: BufWriter::with_capacity(WRITE_BUFFER, stream),
            reader: ResponseReader::new(),
            timeout: opts.timeout,
            capabilities: HashSet::new(),
            enabled: HashSet::new(),
            tag_counter: 0,
            broken: false,
        };
        let preauth = conn.read_greeting().await?;
        if opts.tls == TlsMode::StartTls {
            if preauth {
                return Err(ImapError::Tls(
                    "server sent PREAUTH, STARTTLS impossible".into(),
                ));
            }
            conn = conn.starttls(opts).await?;
        }
        if conn.capabilities.is_empty() {
            conn.refresh_capabilities().await?;
        }
        Ok(conn)
    }

    async fn read_greeting(&mut self) -> Result<bool, ImapError> {
        let frame = self.reader.read(&mut self.io, self.timeout).await?;
        let status = match classify(&frame)? {
            Frame::Untagged(rest) => parse_status(rest),
            _ => None,
        };
        let Some(status) = status else {
            return Err(ImapError::Protocol(format!(
                "unexpected greeting: {}",
                preview(&frame)
            )));
        };
        self.absorb_code(&status);
        match status.status {
            Status::Ok => Ok(false),
            Status::PreAuth => Ok(true),
            Status::Bye => Err(ImapError::Bye { text: status.text }),
            Status::No | Status::Bad => Err(ImapError::Protocol(format!(
                "unexpected greeting: {}",
                status.text
            ))),
        }
    }

    async fn starttls(mut self, opts: &ConnectOptions) -> Result<Self, ImapError> {
        if self.capabilities.is_empty() {
            self.refresh_capabilities().await?;
        }
        if !self.has_capability("STARTTLS") {
            return Err(ImapError::Tls(
                "server does not offer STARTTLS; refusing to continue in plaintext".into(),
            ));
        }
        self.simple("STARTTLS").await?;
        if self.reader.has_buffered() {
            return Err(ImapError::Protocol(
                "unexpected data after STARTTLS response".into(),
            ));
        }
        let Stream::Tcp(tcp) = self.io.into_inner() else {
            return Err(ImapError::Tls(
                "STARTTLS requires a plain TCP stream".into(),
            ));
        };
        let tls = tls_handshake(tcp, opts).await?;
        self.io = BufWriter::with_capacity(WRITE_BUFFER, Stream::Tls(Box::new(tls)));
        self.capabilities.clear();
        Ok(self)
    }

    /// Whether the server advertised `cap` (case-insensitive), e.g. `"LITERAL+"`, `"AUTH=PLAIN"`.
    pub fn has_capability(&self, cap: &str) -> bool {
        self.capabilities.contains(&cap.to_ascii_uppercase())
    }

    /// The current capability list (upper case).
    pub fn capabilities(&self) -> impl Iterator<Item = &str> {
        self.capabilities.iter().map(String::as_str)
    }

    /// Whether the server confirmed `ENABLE` of `extension` (case-insensitive).
    pub fn is_enabled(&self, extension: &str) -> bool {
        self.enabled.contains(&extension.to_ascii_uppercase())
    }

    /// `LOGIN`; strings are quoted, or sent as literals if they contain CR/LF/8-bit.
    pub async fn login(&mut self, user: &str, password: &str) -> Result<(), ImapError> {
        let mut b = self.builder();
        b.raw("LOGIN ").string(user).raw(" ").string(password);
        let status = self.execute(b.finish(), ignore).await?;
        self.after_auth(&status).await
    }

    /// SASL PLAIN; `authzid` selects the user to act as (master-user login).
    pub async fn authenticate_plain(
        &mut self,
        authzid: Option<&str>,
        authcid: &str,
        password: &str,
    ) -> Result<(), ImapError> {
        let payload = [authzid.unwrap_or(""), authcid, password].join("\0");
        self.authenticate("PLAIN", payload.as_bytes()).await
    }

    /// SASL XOAUTH2 with an OAuth2 bearer token.
    pub async fn authenticate_xoauth2(
        &mut self,
        user: &str,
        access_token: &str,
    ) -> Result<(), ImapError> {
        let payload = format!("user={user}\x01auth=Bearer {access_token}\x01\x01");
        self.authenticate("XOAUTH2", payload.as_bytes()).await
    }

    async fn authenticate(&mut self, mechanism: &str, initial: &[u8]) -> Result<(), ImapError> {
        self.ensure_usable()?;
        let tag = self.next_tag();
        let result = self.sasl(&tag, mechanism, BASE64.encode(initial)).await;
        let status = self.note(result)?;
        self.after_auth(&status).await
    }

    async fn sasl(
        &mut self,
        tag: &str,
        mechanism: &str,
        encoded: String,
    ) -> Result<StatusLine, ImapError> {
        debug!(tag, mechanism, "sending AUTHENTICATE");
        let mut pending = None;
        if self.has_capability("SASL-IR") {
            self.write(format!("{tag} AUTHENTICATE {mechanism} {encoded}\r\n").as_bytes())
                .await?;
        } else {
            self.write(format!("{tag} AUTHENTICATE {mechanism}\r\n").as_bytes())
                .await?;
            pending = Some(encoded);
        }
        self.flush().await?;
        let mut challenge = None;
        let mut rounds = 0;
        loop {
            match self.next_event(&mut ignore).await? {
                Event::Continue(text) => {
                    rounds += 1;
                    let reply = match pending.take() {
                        Some(initial) => initial,
                        None if rounds > MAX_SASL_ROUNDS => "*".to_string(),
                        None => {
                            // An error challenge (XOAUTH2 sends base64 JSON): answer empty.
                            challenge = Some(decode_challenge(&text));
                            String::new()
                        }
                    };
                    self.write(format!("{reply}\r\n").as_bytes()).await?;
                    self.flush().await?;
                }
                Event::Tagged { tag: t, mut status } if t == tag => {
                    if let Some(details) = challenge
                        && status.status != Status::Ok
                    {
                        status.text = format!("{} ({details})", status.text);
                    }
                    self.absorb_code(&status);
                    return status.into_result();
                }
                Event::Tagged { tag: t, .. } => {
                    warn!(tag = %shown(&t), "ignoring response for unknown tag")
                }
            }
        }
    }

    async fn after_auth(&mut self, status: &StatusLine) -> Result<(), ImapError> {
        if status.code_arg("CAPABILITY").is_none() {
            self.refresh_capabilities().await?;
        }
        Ok(())
    }

    async fn refresh_capabilities(&mut self) -> Result<(), ImapError> {
        self.simple("CAPABILITY").await.map(drop)
    }

    /// `ENABLE` the given extension(s), e.g. `"CONDSTORE"`.
    pub async fn enable(&mut self, what: &str) -> Result<(), ImapError> {
        check_arg(what)?;
        self.simple(&format!("ENABLE {what}")).await.map(drop)
    }

    /// The personal namespace, or `None` if NAMESPACE is not advertised.
    pub async fn namespace(&mut self) -> Result<Option<Namespace>, ImapError> {
        if !self.has_capability("NAMESPACE") {
            return Ok(None);
        }
        let mut found = None;
        let mut b = self.builder();
        b.raw("NAMESPACE");
        self.execute(b.finish(), |_, data| {
            if let Data::Unparsed(rest) = data
                && let Some(args) = keyword_args(rest, "NAMESPACE")
            {
                found = Some(parse_namespace(args));
            }
        })
        .await?;
        Ok(found.transpose()?.flatten())
    }

    /// `LIST reference pattern`; with `special_use` and SPECIAL-USE advertised,
    /// asks for special-use attributes via `RETURN (SPECIAL-USE)`.
    pub async fn list(
        &mut self,
        reference: &str,
        pattern: &str,
        special_use: bool,
    ) -> Result<Vec<ListEntry>, ImapError> {
        let mut b = self.builder();
        b.raw("LIST ").string(reference).raw(" ").string(pattern);
        if special_use && self.has_capability("SPECIAL-USE") {
            b.raw(" RETURN (SPECIAL-USE)");
        }
        self.list_command(b.finish(), "LIST").await
    }

    /// `LSUB reference pattern`: the subscribed folders.
    pub async fn lsub(
        &mut self,
        reference: &str,
        pattern: &str,
    ) -> Result<Vec<ListEntry>, ImapError> {
        let mut b = self.builder();
        b.raw("LSUB ").string(reference).raw(" ").string(pattern);
        self.list_command(b.finish(), "LSUB").await
    }

    /// Runs a LIST or LSUB command. A `* LIST` (or `* LSUB`) line that cannot
    /// be parsed fails the command: the folder it names must not vanish.
    async fn list_command(
        &mut self,
        cmd: Command,
        verb: &str,
    ) -> Result<Vec<ListEntry>, ImapError> {
        let mut entries = Vec::new();
        let mut not_understood = None;
        self.execute(cmd, |frame, data| match data {
            Data::Response(Response::MailboxData(MailboxDatum::List(list))) => {
                entries.push(list_entry(frame, &list));
            }
            Data::Unparsed(rest) if keyword_args(rest, verb).is_some() => {
                not_understood.get_or_insert_with(|| preview(frame));
            }
            _ => {}
        })
        .await?;
        if let Some(line) = not_understood {
            return Err(ImapError::Protocol(format!(
                "cannot parse the {verb} response \"{line}\": a folder would be left out"
            )));
        }
        Ok(entries)
    }

    /// `STATUS` with UIDVALIDITY, UIDNEXT, MESSAGES (+ HIGHESTMODSEQ with CONDSTORE).
    pub async fn status(&mut self, mailbox: &str) -> Result<MailboxStatus, ImapError> {
        let items = if self.has_capability("CONDSTORE") {
            " (UIDVALIDITY UIDNEXT MESSAGES HIGHESTMODSEQ)"
        } else {
            " (UIDVALIDITY UIDNEXT MESSAGES)"
        };
        let mut b = self.builder();
        b.raw("STATUS ").string(mailbox).raw(items);
        let mut out = MailboxStatus::default();
        self.execute(b.finish(), |_, data| {
            let Data::Response(Response::MailboxData(MailboxDatum::Status { status, .. })) = data
            else {
                return;
            };
            for attr in status {
                match attr {
                    StatusAttribute::UidValidity(v) => out.uid_validity = Some(v),
                    StatusAttribute::UidNext(v) => out.uid_next = Some(v),
                    StatusAttribute::Messages(v) => out.messages = Some(v),
                    StatusAttribute::HighestModSeq(v) => out.highest_modseq = Some(v),
                    _ => {}
                }
            }
        })
        .await?;
        Ok(out)
    }

    /// `EXAMINE` (read-only select).
    pub async fn examine(&mut self, mailbox: &str) -> Result<SelectedInfo, ImapError> {
        self.open("EXAMINE ", mailbox).await
    }

    /// `SELECT` (read-write).
    pub async fn select(&mut self, mailbox: &str) -> Result<SelectedInfo, ImapError> {
        self.open("SELECT ", mailbox).await
    }

    async fn open(&mut self, verb: &str, mailbox: &str) -> Result<SelectedInfo, ImapError> {
        let mut b = self.builder();
        b.raw(verb).string(mailbox);
        if self.has_capability("CONDSTORE") {
            b.raw(" (CONDSTORE)");
        }
        let mut info = SelectedInfo::default();
        let status = self
            .execute(b.finish(), |_, data| match data {
                Data::Status(s) => {
                    if let Some(v) = code_number(s, "UIDVALIDITY") {
                        info.uid_validity = u32::try_from(v).ok();
                    }
                    if let Some(v) = code_number(s, "UIDNEXT") {
                        info.uid_next = u32::try_from(v).ok();
                    }
                    if let Some(v) = code_number(s, "HIGHESTMODSEQ") {
                        info.highest_modseq = Some(v);
                    }
                    if let Some(list) = s.code_arg("PERMANENTFLAGS") {
                        let list = list.trim_matches(|c| c == '(' || c == ')' || c == ' ');
                        info.permanent_flags =
                            Some(list.split_whitespace().map(String::from).collect());
                    }
                }
                Data::Response(Response::MailboxData(MailboxDatum::Exists(n))) => info.exists = n,
                _ => {}
            })
            .await?;
        info.read_only = status.code_name().as_deref() == Some("READ-ONLY");
        Ok(info)
    }

    /// `CREATE`; an existing mailbox fails with code `ALREADYEXISTS` (Dovecot, RFC 5530).
    pub async fn create(&mut self, mailbox: &str) -> Result<(), ImapError> {
        let mut b = self.builder();
        b.raw("CREATE ").string(mailbox);
        self.execute(b.finish(), ignore).await.map(drop)
    }

    /// `SUBSCRIBE`; subscribing twice is no error (RFC 3501 6.3.6).
    pub async fn subscribe(&mut self, mailbox: &str) -> Result<(), ImapError> {
        let mut b = self.builder();
        b.raw("SUBSCRIBE ").string(mailbox);
        self.execute(b.finish(), ignore).await.map(drop)
    }

    /// UID, size, flags, internal date (and MODSEQ with CONDSTORE) of the
    /// messages in `uid_set`. `changed_since` adds `(CHANGEDSINCE n)` when the
    /// server has CONDSTORE; without it all messages in the set are returned.
    pub async fn fetch_meta(
        &mut self,
        uid_set: &str,
        changed_since: Option<u64>,
    ) -> Result<Vec<MessageMeta>, ImapError> {
        let condstore = self.has_capability("CONDSTORE");
        let items = if condstore {
            "UID RFC822.SIZE FLAGS INTERNALDATE MODSEQ"
        } else {
            "UID RFC822.SIZE FLAGS INTERNALDATE"
        };
        let fetched = self
            .uid_fetch(uid_set, items, changed_since.filter(|_| condstore))
            .await?;
        fetched
            .into_iter()
            .map(|f| {
                let missing = |item: &str| {
                    ImapError::Protocol(format!("the server sent UID {} without {item}", f.uid))
                };
                Ok(MessageMeta {
                    uid: f.uid,
                    size: f.size.ok_or_else(|| missing("RFC822.SIZE"))?,
                    flags: f.flags.clone().ok_or_else(|| missing("FLAGS"))?,
                    internal_date: f
                        .internal_date
                        .clone()
                        .ok_or_else(|| missing("INTERNALDATE"))?,
                    modseq: f.modseq,
                })
            })
            .collect()
    }

    /// Flags of the messages in `uid_set`, optionally only those changed since a modseq.
    pub async fn fetch_flags(
        &mut self,
        uid_set: &str,
        changed_since: Option<u64>,
    ) -> Result<Vec<(u32, Vec<String>)>, ImapError> {
        let condstore = self.has_capability("CONDSTORE");
        let fetched = self
            .uid_fetch(uid_set, "UID FLAGS", changed_since.filter(|_| condstore))
            .await?;
        fetched
            .into_iter()
            .map(|f| match f.flags {
                Some(flags) => Ok((f.uid, flags)),
                None => Err(ImapError::Protocol(format!(
                    "the server sent UID {} without FLAGS",
                    f.uid
                ))),
            })
            .collect()
    }

    /// Full messages (`BODY.PEEK[]`) with flags and internal date, none
    /// larger than `max_bytes`: a server announcing a bigger literal fails
    /// the connection before its bytes are read. UIDs the server did not
    /// return, or returned without a body (`BODY[] NIL`), are absent: the
    /// caller must find out why (expunged, or not given).
    pub async fn fetch_bodies(
        &mut self,
        uids: &[u32],
        max_bytes: usize,
    ) -> Result<Vec<FetchedMessage>, ImapError> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let items = "UID FLAGS INTERNALDATE BODY.PEEK[]";
        self.reader.set_literal_limit(max_bytes);
        let fetched = self.uid_fetch(&uid_set(uids), items, None).await;
        self.reader.set_literal_limit(DEFAULT_LITERAL_LIMIT);
        let messages = fetched?.into_iter().filter_map(|f| {
            Some(FetchedMessage {
                uid: f.uid,
                body: f.body?,
                flags: f.flags,
                internal_date: f.internal_date,
            })
        });
        Ok(messages.collect())
    }

    /// `(uid, RFC822.SIZE, BODY[HEADER])` for the messages in `uid_set`; a
    /// message returned without either is an error.
    pub async fn fetch_headers(
        &mut self,
        uid_set: &str,
    ) -> Result<Vec<(u32, u64, Bytes)>, ImapError> {
        let fetched = self
            .uid_fetch(uid_set, "UID RFC822.SIZE BODY.PEEK[HEADER]", None)
            .await?;
        fetched
            .into_iter()
            .map(|f| match (f.size, f.header) {
                (Some(size), Some(header)) => Ok((f.uid, size, header)),
                _ => Err(ImapError::Protocol(format!(
                    "the server sent UID {} without RFC822.SIZE or BODY[HEADER]",
                    f.uid
                ))),
            })
            .collect()
    }

    async fn uid_fetch(
        &mut self,
        set: &str,
        items: &str,
        changed_since: Option<u64>,
    ) -> Result<Vec<FetchData>, ImapError> {
        check_set(set)?;
        let mut b = self.builder();
        b.raw("UID FETCH ").raw(set).raw(" (").raw(items).raw(")");
        if let Some(modseq) = changed_since {
            b.raw(&format!(" (CHANGEDSINCE {modseq})"));
        }
        let mut acc = FetchAccumulator::default();
        self.execute(b.finish(), |frame, data| acc.add(frame, data))
            .await?;
        if let Some(line) = acc.not_understood {
            return Err(ImapError::Protocol(format!(
                "cannot parse the FETCH response \"{line}\""
            )));
        }
        Ok(acc.items)
    }

    /// Appends messages, using MULTIAPPEND, LITERAL+/LITERAL- and pipelining
    /// when available. On failure, messages before the failing one may have
    /// been stored (except with MULTIAPPEND, which is atomic).
    pub async fn append(
        &mut self,
        mailbox: &str,
        messages: &[AppendMessage],
    ) -> Result<AppendOutcome, ImapError> {
        if messages.is_empty() {
            return Ok(AppendOutcome::default());
        }
        if messages.len() == 1 || self.has_capability("MULTIAPPEND") {
            let mut b = self.builder();
            b.raw("APPEND ").string(mailbox);
            for message in messages {
                append_args(&mut b, message);
            }
            let status = self.execute(b.finish(), ignore).await?;
            return Ok(append_outcome(&[status], messages.len()));
        }
        let commands: Vec<Command> = messages
            .iter()
            .map(|message| {
                let mut b = self.builder();
                b.raw("APPEND ").string(mailbox);
                append_args(&mut b, message);
                b.finish()
            })
            .collect();
        let statuses = if commands.iter().any(Command::needs_sync) {
            let mut statuses = Vec::with_capacity(commands.len());
            for cmd in commands {
                statuses.push(self.execute(cmd, ignore).await?);
            }
            statuses
        } else {
            self.pipeline(&commands).await?
        };
        Ok(append_outcome(&statuses, messages.len()))
    }

    /// `UID STORE set FLAGS.SILENT (flags)`, replacing the flags.
    pub async fn store_flags(&mut self, uid_set: &str, flags: &[String]) -> Result<(), ImapError> {
        check_set(uid_set)?;
        let mut b = self.builder();
        b.raw("UID STORE ")
            .raw(uid_set)
            .raw(" FLAGS.SILENT ")
            .flag_list(flags);
        self.execute(b.finish(), ignore).await.map(drop)
    }

    /// `UID SEARCH criteria` (criteria are sent verbatim).
    pub async fn search(&mut self, criteria: &str) -> Result<Vec<u32>, ImapError> {
        check_arg(criteria)?;
        let mut b = self.builder();
        b.raw("UID SEARCH ").raw(criteria);
        let mut uids = Vec::new();
        self.execute(b.finish(), |_, data| {
            if let Data::Response(Response::MailboxData(MailboxDatum::Search(found))) = data {
                uids.extend(found);
            }
        })
        .await?;
        Ok(uids)
    }

    /// `NOOP` (also collects pending untagged updates).
    pub async fn noop(&mut self) -> Result<(), ImapError> {
        self.simple("NOOP").await.map(drop)
    }

    /// `LOGOUT` and close the connection.
    pub async fn logout(mut self) -> Result<(), ImapError> {
        if self.broken {
            return Ok(());
        }
        let tag = self.next_tag();
        self.write(format!("{tag} LOGOUT\r\n").as_bytes()).await?;
        self.flush().await?;
        loop {
            // BYE and anything else is expected here; only our tag ends the wait.
            let frame = match self.reader.read(&mut self.io, self.timeout).await {
                Ok(frame) => frame,
                Err(ImapError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            };
            if let Frame::Tagged { tag: t, status } = classify(&frame)?
                && t == tag.as_bytes()
            {
                status.into_result()?;
                break;
            }
        }
        // The server is closing anyway; a failed shutdown changes nothing.
        let _ = io_timeout(self.timeout, self.io.shutdown()).await;
        Ok(())
    }

    // ----- command execution -----

    fn next_tag(&mut self) -> String {
        self.tag_counter += 1;
        format!("A{}", self.tag_counter)
    }

    fn builder(&mut self) -> CommandBuilder {
        let mode = if self.has_capability("LITERAL+") {
            LiteralMode::Plus
        } else if self.has_capability("LITERAL-") {
            LiteralMode::Minus
        } else {
            LiteralMode::Sync
        };
        CommandBuilder::new(&self.next_tag(), mode)
    }

    async fn simple(&mut self, text: &str) -> Result<StatusLine, ImapError> {
        let mut b = self.builder();
        b.raw(text);
        self.execute(b.finish(), ignore).await
    }

    fn ensure_usable(&self) -> Result<(), ImapError> {
        if !self.broken {
            return Ok(());
        }
        Err(ImapError::Io(io::Error::new(
            io::ErrorKind::NotConnected,
            "connection unusable after an earlier error",
        )))
    }

    /// Marks the connection unusable after a fatal error.
    fn note<T>(&mut self, result: Result<T, ImapError>) -> Result<T, ImapError> {
        if let Err(e) = &result
            && e.is_fatal()
        {
            self.broken = true;
        }
        result
    }

    /// Sends `cmd` and waits for its completion; untagged data goes to `on_data`.
    async fn execute<F>(&mut self, cmd: Command, mut on_data: F) -> Result<StatusLine, ImapError>
    where
        F: FnMut(&Bytes, Data<'_>),
    {
        self.ensure_usable()?;
        let result = self.run(&cmd, &mut on_data).await;
        self.note(result)
    }

    async fn run<F>(&mut self, cmd: &Command, on_data: &mut F) -> Result<StatusLine, ImapError>
    where
        F: FnMut(&Bytes, Data<'_>),
    {
        let status = match self.write_command(cmd, on_data).await? {
            Some(early) => early,
            None => {
                self.flush().await?;
                self.await_tagged(&cmd.tag, on_data).await?
            }
        };
        self.absorb_code(&status);
        status.into_result()
    }

    /// Sends several commands without waiting in between, then collects all
    /// completions. Every command is accounted for before the first failure is returned.
    async fn pipeline(&mut self, commands: &[Command]) -> Result<Vec<StatusLine>, ImapError> {
        self.ensure_usable()?;
        let result = self.run_pipeline(commands).await;
        self.note(result)
    }

    async fn run_pipeline(&mut self, commands: &[Command]) -> Result<Vec<StatusLine>, ImapError> {
        for cmd in commands {
            self.write_command(cmd, &mut ignore).await?;
        }
        self.flush().await?;
        let mut done: Vec<Option<StatusLine>> = vec![None; commands.len()];
        let mut remaining = commands.len();
        while remaining > 0 {
            match self.next_event(&mut ignore).await? {
                Event::Tagged { tag, status } => {
                    let index = commands.iter().position(|c| c.tag == tag);
                    let Some(i) = index.filter(|&i| done[i].is_none()) else {
                        warn!(tag = %shown(&tag), "ignoring response for unknown tag");
                        continue;
                    };
                    self.absorb_code(&status);
                    done[i] = Some(status);
                    remaining -= 1;
                }
                Event::Continue(_) => warn!("ignoring unexpected continuation request"),
            }
        }
        done.into_iter()
            .flatten()
            .map(StatusLine::into_result)
            .collect()
    }

    /// Writes the command; at synchronizing literals flushes and waits for `+`.
    /// Returns the tagged response if the server completed the command early.
    async fn write_command<F>(
        &mut self,
        cmd: &Command,
        on_data: &mut F,
    ) -> Result<Option<StatusLine>, ImapError>
    where
        F: FnMut(&Bytes, Data<'_>),
    {
        debug!(tag = %cmd.tag, command = cmd.verb(), "sending");
        for segment in &cmd.segments {
            match segment {
                Segment::Text(text) => self.write(text).await?,
                Segment::Literal { data, sync } => {
                    if *sync {
                        self.flush().await?;
                        if let Some(done) = self.await_continuation(&cmd.tag, on_data).await? {
                            return Ok(Some(done));
                        }
                    }
                    self.write(data).await?;
                }
            }
        }
        Ok(None)
    }

    async fn await_continuation<F>(
        &mut self,
        tag: &str,
        on_data: &mut F,
    ) -> Result<Option<StatusLine>, ImapError>
    where
        F: FnMut(&Bytes, Data<'_>),
    {
        loop {
            match self.next_event(on_data).await? {
                Event::Continue(_) => return Ok(None),
                Event::Tagged { tag: t, status } if t == tag => return Ok(Some(status)),
                Event::Tagged { tag: t, .. } => {
                    warn!(tag = %shown(&t), "ignoring response for unknown tag")
                }
            }
        }
    }

    async fn await_tagged<F>(&mut self, tag: &str, on_data: &mut F) -> Result<StatusLine, ImapError>
    where
        F: FnMut(&Bytes, Data<'_>),
    {
        loop {
            match self.next_event(on_data).await? {
                Event::Tagged { tag: t, status } if t == tag => return Ok(status),
                Event::Tagged { tag: t, .. } => {
                    warn!(tag = %shown(&t), "ignoring response for unknown tag")
                }
                Event::Continue(_) => warn!("ignoring unexpected continuation request"),
            }
        }
    }

    /// Reads until a tagged response or continuation, dispatching untagged data.
    async fn next_event<F>(&mut self, on_data: &mut F) -> Result<Event, ImapError>
    where
        F: FnMut(&Bytes, Data<'_>),
    {
        loop {
            let frame = self.reader.read(&mut self.io, self.timeout).await?;
            trace!(response = %preview(&frame), "received");
            match classify(&frame)? {
                Frame::Continuation(text) => return Ok(Event::Continue(frame.slice_ref(text))),
                Frame::Tagged { tag, status } => {
                    let tag = String::from_utf8_lossy(tag).into_owned();
                    return Ok(Event::Tagged { tag, status });
                }
                Frame::Untagged(rest) => self.dispatch_untagged(&frame, rest, on_data)?,
            }
        }
    }

    fn dispatch_untagged<F>(
        &mut self,
        frame: &Bytes,
        rest: &[u8],
        on_data: &mut F,
    ) -> Result<(), ImapError>
    where
        F: FnMut(&Bytes, Data<'_>),
    {
        if let Some(status) = parse_status(rest) {
            match status.status {
                Status::Bye => return Err(ImapError::Bye { text: status.text }),
                Status::No | Status::Bad => {
                    warn!(text = %shown(&status.text), "untagged server warning")
                }
                Status::Ok | Status::PreAuth => {}
            }
            self.absorb_code(&status);
            on_data(frame, Data::Status(&status));
            return Ok(());
        }
        if let Some(list) = keyword_args(rest, "CAPABILITY") {
            self.capabilities = atoms(list).collect();
            return Ok(());
        }
        if let Some(list) = keyword_args(rest, "ENABLED") {
            self.enabled.extend(atoms(list));
            return Ok(());
        }
        match Response::parse(frame) {
            Ok((_, response)) => on_data(frame, Data::Response(response)),
            Err(_) => {
                debug!(response = %preview(frame), "response not understood by imap-proto");
                on_data(frame, Data::Unparsed(rest));
            }
        }
        Ok(())
    }

    fn absorb_code(&mut self, status: &StatusLine) {
        if let Some(list) = status.code_arg("CAPABILITY") {
            self.capabilities = atoms(list.as_bytes()).collect();
        }
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), ImapError> {
        for chunk in data.chunks(WRITE_CHUNK) {
            io_timeout(self.timeout, self.io.write_all(chunk)).await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ImapError> {
        io_timeout(self.timeout, self.io.flush()).await
    }
}

// ----- TLS -----

async fn tls_handshake(
    tcp: TcpStream,
    opts: &ConnectOptions,
) -> Result<TlsStream<TcpStream>, ImapError> {
    let config = tls_config(opts.ca_file.as_deref()).await?;
    let name = ServerName::try_from(opts.host.clone())
        .map_err(|e| ImapError::Tls(format!("invalid server name {:?}: {e}", opts.host)))?;
    let connector = TlsConnector::from(config);
    match io_timeout(opts.timeout, connector.connect(name, tcp)).await {
        Err(ImapError::Io(e)) => Err(ImapError::Tls(e.to_string())),
        other => other,
    }
}

async fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ImapError> {
    static DEFAULT: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let Some(path) = ca_file else {
        if let Some(config) = DEFAULT.get() {
            return Ok(config.clone());
        }
        let config = build_tls_config(webpki_root_store())?;
        return Ok(DEFAULT.get_or_init(|| config).clone());
    };
    let pem = tokio::fs::read(path)
        .await
        .map_err(|e| ImapError::Tls(format!("reading CA file {}: {e}", path.display())))?;
    let mut roots = webpki_root_store();
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| ImapError::Tls(format!("parsing CA file: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ImapError::Tls(format!("adding CA certificate: {e}")))?;
        added += 1;
    }
    if added == 0 {
        return Err(ImapError::Tls(format!(
            "no certificates in {}",
            path.display()
        )));
    }
    build_tls_config(roots)
}

fn webpki_root_store() -> rustls::RootCertStore {
    rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

fn build_tls_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, ImapError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ImapError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

// ----- response interpretation -----

/// Attributes of one message, merged over all FETCH responses for its UID.
#[derive(Default)]
struct FetchData {
    uid: u32,
    size: Option<u64>,
    flags: Option<Vec<String>>,
    internal_date: Option<String>,
    modseq: Option<u64>,
    body: Option<Bytes>,
    header: Option<Bytes>,
}

impl FetchData {
    fn merge(&mut self, newer: FetchData) {
        self.size = newer.size.or(self.size.take());
        self.flags = newer.flags.or(self.flags.take());
        self.internal_date = newer.internal_date.or(self.internal_date.take());
        self.modseq = newer.modseq.or(self.modseq.take());
        self.body = newer.body.or(self.body.take());
        self.header = newer.header.or(self.header.take());
    }
}

/// Collects FETCH responses that carry a UID, in arrival order.
#[derive(Default)]
struct FetchAccumulator {
    items: Vec<FetchData>,
    index: HashMap<u32, usize>,
    /// The first FETCH response that could not be parsed: it may be an
    /// answer for a message, so the command cannot be trusted.
    not_understood: Option<String>,
}

impl FetchAccumulator {
    fn add(&mut self, frame: &Bytes, data: Data<'_>) {
        let attrs = match data {
            Data::Response(Response::Fetch(_, attrs)) => attrs,
            Data::Unparsed(rest) if is_fetch_response(rest) => {
                self.not_understood.get_or_insert_with(|| preview(frame));
                return;
            }
            _ => return,
        };
        let mut f = FetchData::default();
        let mut uid = None;
        for attr in attrs {
            match attr {
                AttributeValue::Uid(u) => uid = Some(u),
                AttributeValue::Rfc822Size(s) => f.size = Some(u64::from(s)),
                AttributeValue::Flags(flags) => f.flags = Some(flag_strings(&flags)),
                AttributeValue::InternalDate(d) => f.internal_date = Some(d.into_owned()),
                AttributeValue::ModSeq(m) => f.modseq = Some(m),
                AttributeValue::BodySection {
                    section: None,
                    index: None,
                    data: Some(d),
                } => {
                    f.body = Some(sub_bytes(frame, &d));
                }
                AttributeValue::BodySection {
                    section: Some(SectionPath::Full(MessageSection::Header)),
                    index: None,
                    data: Some(d),
                } => f.header = Some(sub_bytes(frame, &d)),
                _ => {}
            }
        }
        // FETCH responses without UID are unsolicited updates by sequence number.
        let Some(uid) = uid else {
            return;
        };
        f.uid = uid;
        match self.index.get(&uid) {
            Some(&i) => self.items[i].merge(f),
            None => {
                self.index.insert(uid, self.items.len());
                self.items.push(f);
            }
        }
    }
}

/// Whether an untagged response is `n FETCH ...`.
fn is_fetch_response(untagged: &[u8]) -> bool {
    let digits = untagged.iter().take_while(|b| b.is_ascii_digit()).count();
    digits > 0 && keyword_args(&untagged[digits..], " FETCH").is_some()
}

fn flag_strings(flags: &[std::borrow::Cow<'_, str>]) -> Vec<String> {
    flags
        .iter()
        .filter(|f| !f.eq_ignore_ascii_case("\\Recent"))
        .map(|f| f.to_string())
        .collect()
}

/// Position of `inner` inside `outer`, if it is a sub-slice of it.
fn offset_in(outer: &[u8], inner: &[u8]) -> Option<usize> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    (start.checked_add(inner.len())? <= outer.len()).then_some(start)
}

/// `data` as a zero-copy slice of `frame` (copied only if it is not part of it).
fn sub_bytes(frame: &Bytes, data: &[u8]) -> Bytes {
    match offset_in(frame, data) {
        Some(start) => frame.slice(start..start + data.len()),
        None => Bytes::copy_from_slice(data),
    }
}

/// imap-proto returns quoted strings with escapes intact; undo them.
fn wire_string(frame: &[u8], s: &str) -> String {
    let quoted = offset_in(frame, s.as_bytes()).is_some_and(|at| at > 0 && frame[at - 1] == b'"');
    if !quoted || !s.contains('\\') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' {
            chars.next().unwrap_or('\\')
        } else {
            c
        });
    }
    out
}

fn list_entry(frame: &[u8], list: &MailboxListData<'_>) -> ListEntry {
    let mut entry = ListEntry {
        name: wire_string(frame, &list.name),
        delimiter: list
            .delimiter
            .as_ref()
            .and_then(|d| wire_string(frame, d).chars().next()),
        attributes: list
            .name_attributes
            .iter()
            .filter_map(name_attribute)
            .collect(),
    };
    // RFC 5258: \NonExistent implies \Noselect; Dovecot sends only the former
    // in answer to LIST-EXTENDED commands.
    if entry.has_attribute("\\NonExistent") && !entry.has_attribute("\\Noselect") {
        entry.attributes.push("\\Noselect".to_string());
    }
    entry
}

fn name_attribute(attr: &NameAttribute<'_>) -> Option<String> {
    let name = match attr {
        NameAttribute::NoInferiors => "\\Noinferiors",
        NameAttribute::NoSelect => "\\Noselect",
        NameAttribute::Marked => "\\Marked",
        NameAttribute::Unmarked => "\\Unmarked",
        NameAttribute::All => "\\All",
        NameAttribute::Archive => "\\Archive",
        NameAttribute::Drafts => "\\Drafts",
        NameAttribute::Flagged => "\\Flagged",
        NameAttribute::Junk => "\\Junk",
        NameAttribute::Sent => "\\Sent",
        NameAttribute::Trash => "\\Trash",
        NameAttribute::Extension(name) => name.as_ref(),
        _ => return None,
    };
    Some(name.to_string())
}

fn code_number(status: &StatusLine, name: &str) -> Option<u64> {
    status.code_arg(name)?.trim().parse().ok()
}

fn append_args(b: &mut CommandBuilder, message: &AppendMessage) {
    if !message.flags.is_empty() {
        b.raw(" ").flag_list(&message.flags);
    }
    if let Some(date) = &message.internal_date {
        b.raw(" ").string(date);
    }
    b.raw(" ").literal(message.body.clone());
}

fn append_outcome(statuses: &[StatusLine], count: usize) -> AppendOutcome {
    let mut outcome = AppendOutcome::default();
    let mut uids = Vec::with_capacity(count);
    let mut complete = true;
    for status in statuses {
        let parsed = status
            .code_arg("APPENDUID")
            .and_then(|args| parse_appenduid(args, count - uids.len()));
        let Some((validity, set)) = parsed else {
            complete = false;
            continue;
        };
        outcome.uid_validity.get_or_insert(validity);
        uids.extend(set);
    }
    outcome.uids = (complete && uids.len() == count).then_some(uids);
    outcome
}

fn decode_challenge(text: &[u8]) -> String {
    match BASE64.decode(text) {
        Ok(decoded) => String::from_utf8_lossy(&decoded).into_owned(),
        Err(_) => String::from_utf8_lossy(text).into_owned(),
    }
}

/// Rejects caller-supplied raw arguments that could break command framing.
fn check_arg(arg: &str) -> Result<(), ImapError> {
    if arg.is_empty() || arg.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(ImapError::Bad {
            text: format!("invalid command argument {arg:?} (rejected by client)"),
        });
    }
    Ok(())
}

/// Rejects sequence sets containing anything but digits, `:`, `,` and `*`.
fn check_set(set: &str) -> Result<(), ImapError> {
    if set.is_empty()
        || !set
            .bytes()
            .all(|b| b.is_ascii_digit() || b":,*".contains(&b))
    {
        return Err(ImapError::Bad {
            text: format!("invalid sequence set {set:?} (rejected by client)"),
        });
    }
    Ok(())
}

/// First line of a response, shortened for logs and errors, its control
/// characters escaped.
fn preview(frame: &[u8]) -> String {
    let line = frame.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    mailwave_common::text::escape_bytes(&line[..line.len().min(200)])
}

/// Server text made safe for logs.
fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    mailwave_common::text::escape_controls(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, DuplexStream};

    const LIMIT: Duration = Duration::from_secs(5);

    /// Scripted server end of an in-memory pipe.
    struct Server {
        io: DuplexStream,
        buf: Vec<u8>,
    }

    impl Server {
        async fn send(&mut self, data: &str) {
            self.send_bytes(data.as_bytes()).await;
        }

        async fn send_bytes(&mut self, data: &[u8]) {
            self.io.write_all(data).await.unwrap();
        }

        async fn fill(&mut self) {
            let mut chunk = [0u8; 4096];
            let n = self.io.read(&mut chunk).await.unwrap();
            assert!(n > 0, "client closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }

        async fn line(&mut self) -> String {
            loop {
                if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = self.buf.drain(..=i).collect();
                    return String::from_utf8(line).unwrap();
                }
                self.fill().await;
            }
        }

        async fn take(&mut self, n: usize) -> Vec<u8> {
            while self.buf.len() < n {
                self.fill().await;
            }
            self.buf.drain(..n).collect()
        }

        /// Reads one command with its literals, answering `+` to synchronizing ones.
        async fn recv(&mut self) -> String {
            let mut cmd = String::new();
            loop {
                let line = self.line().await;
                cmd.push_str(&line);
                let Some((len, sync)) = literal_header(&line) else {
                    return cmd;
                };
                if sync {
                    self.send("+ go ahead\r\n").await;
                }
                cmd.push_str(&String::from_utf8(self.take(len).await).unwrap());
            }
        }

        /// Asserts the client sends nothing for a moment.
        async fn expect_silence(&mut self) {
            assert!(self.buf.is_empty(), "client sent {:?}", self.buf);
            let mut b = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_millis(100), self.io.read(&mut b));
            assert!(
                read.await.is_err(),
                "client did not wait for the continuation"
            );
        }
    }

    fn literal_header(line: &str) -> Option<(usize, bool)> {
        let head = line.strip_suffix("}\r\n")?;
        let digits = &head[head.rfind('{')? + 1..];
        match digits.strip_suffix('+') {
            Some(d) => Some((d.parse().ok()?, false)),
            None => Some((digits.parse().ok()?, true)),
        }
    }

    fn pipe(size: usize) -> (Stream, Server) {
        let (client, server) = tokio::io::duplex(size);
        let server = Server {
            io: server,
            buf: Vec::new(),
        };
        (Stream::Mock(client), server)
    }

    fn opts(tls: TlsMode, timeout: Duration) -> ConnectOptions {
        ConnectOptions {
            host: "mock".into(),
            port: 143,
            tls,
            ca_file: None,
            timeout,
        }
    }

    async fn connect(stream: Stream) -> ImapConnection {
        ImapConnection::establish(stream, &opts(TlsMode::None, LIMIT))
            .await
            .unwrap()
    }

    fn greeting(caps: &str) -> String {
        format!("* OK [CAPABILITY IMAP4rev1 {caps}] Mock ready.\r\n")
    }

    #[tokio::test]
    async fn capabilities_login_and_unsolicited_data() {
        let (stream, mut srv) = pipe(64);
        let script = tokio::spawn(async move {
            srv.send("* OK hello\r\n").await;
            assert_eq!(srv.recv().await, "A1 CAPABILITY\r\n");
            srv.send("* CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN\r\nA1 OK done\r\n")
                .await;
            assert_eq!(
                srv.recv().await,
                "A2 LOGIN \"us\\\"er\" {9+}\r\npässwort\r\n"
            );
            srv.send("A2 OK [CAPABILITY IMAP4rev1 LITERAL+ MULTIAPPEND] Logged in\r\n")
                .await;
            assert_eq!(srv.recv().await, "A3 NOOP\r\n");
            srv.send("* 4 EXISTS\r\n* 2 EXPUNGE\r\n* 1 FETCH (FLAGS (\\Seen))\r\n* OK [ALERT] hi\r\n* NO warn\r\n* XYZZY (weird \"stuff\")\r\nA3 OK\r\n")
                .await;
        });
        let mut conn = connect(stream).await;
        assert!(conn.has_capability("literal+"));
        assert!(conn.has_capability("AUTH=PLAIN"));
        assert!(!conn.has_capability("MULTIAPPEND"));
        conn.login("us\"er", "pässwort").await.unwrap();
        assert!(conn.has_capability("MULTIAPPEND"));
        assert!(!conn.has_capability("AUTH=PLAIN"));
        conn.noop().await.unwrap();
        script.await.unwrap();
    }

    #[tokio::test]
    async fn answers_not_understood_fail_their_command_oversized_literals_the_connection() {
        let (stream, mut srv) = pipe(4096);
        let script = tokio::spawn(async move {
            srv.send(&greeting("")).await;
            let steps: &[(&str, &str)] = &[
                (
                    "A1 LIST \"\" \"*\"\r\n",
                    "* LIST (\\HasNoChildren) \"/\" INBOX\r\n* LIST (\\HasNoChildren \\Weird(x)) \"/\" \"oddattr\"\r\nA1 OK\r\n",
                ),
                (
                    "A2 UID FETCH 1:* (UID RFC822.SIZE FLAGS INTERNALDATE)\r\n",
                    "* 1 FETCH (UID 1 RFC822.SIZE 10 FLAGS () INTERNALDATE \"21-Nov-2026 14:53:20 +0000\")\r\n* 2 FETCH (UID 2 ((( garbage\r\nA2 OK\r\n",
                ),
                (
                    "A3 UID FETCH 1:* (UID RFC822.SIZE FLAGS INTERNALDATE)\r\n",
                    "* 1 FETCH (UID 1 RFC822.SIZE 10 FLAGS ())\r\nA3 OK\r\n",
                ),
                (
                    "A4 UID FETCH 1 (UID FLAGS INTERNALDATE BODY.PEEK[])\r\n",
                    "* 1 FETCH (UID 1 BODY[] {4096}\r\n",
                ),
            ];
            for (expected, reply) in steps {
                assert_eq!(srv.recv().await, *expected);
                srv.send(reply).await;
            }
        });
        let mut conn = connect(stream).await;
        let error = conn.list("", "*", false).await.unwrap_err();
        assert!(
            matches!(&error, ImapError::Protocol(text) if text.contains("oddattr")),
            "{error:?}"
        );
        let error = conn.fetch_meta("1:*", None).await.unwrap_err();
        assert!(
            matches!(&error, ImapError::Protocol(text) if text.contains("garbage")),
            "{error:?}"
        );
        let error = conn.fetch_meta("1:*", None).await.unwrap_err();
        assert!(
            matches!(&error, ImapError::Protocol(text) if text.contains("UID 1 without INTERNALDATE")),
            "{error:?}"
        );
        // A body larger than asked for fails the connection at its announcement.
        let error = conn.fetch_bodies(&[1], 1024).await.unwrap_err();
        assert!(
            matches!(&error, ImapError::Protocol(text) if text.contains("4096")),
            "{error:?}"
        );
        assert!(matches!(conn.noop().await, Err(ImapError::Io(_))));
        script.await.unwrap();
    }

    #[tokio::test]
    async fn refuses_plaintext_without_starttls_and_bye_greeting() {
        let (stream, mut srv) = pipe(4096);
        srv.send(&greeting("AUTH=PLAIN")).await;
        let result = ImapConnection::establish(stream, &opts(TlsMode::StartTls, LIMIT)).await;
        assert!(
            matches!(result, Err(ImapError::Tls(_))),
            "{:?}",
            result.err()
        );

        let (stream, mut srv) = pipe(4096);
        srv.send("* BYE Too many connections\r\n").await;
        let result = ImapConnection::establish(stream, &opts(TlsMode::None, LIMIT)).await;
        match result {
            Err(ImapError::Bye { text }) => assert_eq!(text, "Too many connections"),
            other => panic!("{:?}", other.err()),
        }
    }

    const TRICKY_BODY: &[u8] =
        b"Subject: x\r\n\r\nfoo)\r\n* 9 FETCH (UID 99)\r\nA1 OK fake\r\n{5}\r\nend {3+}\r\n";

    #[tokio::test]
    async fn fetch_bodies_across_read_splits() {
        for size in [1, 2, 3, 7, 64, 8192] {
            let (stream, mut srv) = pipe(size);
            let script = tokio::spawn(async move {
                srv.send(&greeting("LITERAL+")).await;
                assert_eq!(
                    srv.recv().await,
                    "A1 UID FETCH 10:11,13 (UID FLAGS INTERNALDATE BODY.PEEK[])\r\n"
                );
                let len = TRICKY_BODY.len();
                srv.send(&format!("* 1 FETCH (UID 10 RFC822.SIZE {len} FLAGS (\\Seen \\Recent $Forwarded) INTERNALDATE \"21-Nov-2026 14:53:20 +0000\" BODY[] {{{len}}}\r\n")).await;
                srv.send_bytes(TRICKY_BODY).await;
                srv.send(")\r\n* 5 EXISTS\r\n* 2 FETCH (FLAGS (\\Deleted))\r\n")
                    .await;
                srv.send("* 2 FETCH (UID 11 BODY[] {0}\r\n FLAGS () INTERNALDATE \" 1-Jan-2020 00:00:00 -0500\" RFC822.SIZE 0)\r\n").await;
                srv.send("A1 OK Fetch completed.\r\n").await;
            });
            // Spawning also proves the command futures are Send.
            let client = tokio::spawn(async move {
                let mut conn = connect(stream).await;
                conn.fetch_bodies(&[13, 10, 11], 1024).await
            });
            let messages = client.await.unwrap().unwrap();
            script.await.unwrap();
            assert_eq!(messages.len(), 2, "pipe size {size}");
            let m = &messages[0];
            assert_eq!(m.uid, 10);
            assert_eq!(&m.body[..], TRICKY_BODY, "pipe size {size}");
            assert_eq!(
                m.flags.as_deref(),
                Some(&["\\Seen".to_string(), "$Forwarded".into()][..])
            );
            assert_eq!(
                m.internal_date.as_deref(),
                Some("21-Nov-2026 14:53:20 +0000")
            );
            let m = &messages[1];
            assert_eq!((m.uid, m.body.len()), (11, 0));
            assert_eq!(m.flags, Some(Vec::new()));
            assert_eq!(
                m.internal_date.as_deref(),
                Some(" 1-Jan-2020 00:00:00 -0500")
            );
        }
    }

    fn message(flags: &[&str], date: Option<&str>, body: &'static str) -> AppendMessage {
        AppendMessage {
            flags: flags.iter().map(|f| f.to_string()).collect(),
            internal_date: date.map(String::from),
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    #[tokio::test]
    async fn multiappend_with_literal_plus_and_appenduid_ranges() {
        let (stream, mut srv) = pipe(16);
        let script = tokio::spawn(async move {
            srv.send(&greeting("LITERAL+ MULTIAPPEND UIDPLUS")).await;
            assert_eq!(
                srv.recv().await,
                "A1 APPEND \"Archiv/2026\" (\\Seen $Label1) \"21-Nov-2026 14:53:20 +0000\" {7+}\r\nHello\r\n {6+}\r\nSecond (\\Flagged) {3+}\r\n3rd\r\n"
            );
            srv.send("A1 OK [APPENDUID 1700000000 5:7] Append completed.\r\n")
                .await;
            srv.recv().await;
            srv.send("A2 OK [APPENDUID 1700000000 8,10:11] Append completed.\r\n")
                .await;
            srv.recv().await;
            srv.send("A3 OK [APPENDUID 1700000000 12:13] Append completed.\r\n")
                .await;
            srv.recv().await;
            srv.send("A4 NO [TRYCREATE] Mailbox doesn't exist: Nope\r\n")
                .await;
        });
        let mut conn = connect(stream).await;
        let messages = [
            message(
                &["\\Seen", "\\Recent", "$Label1"],
                Some("21-Nov-2026 14:53:20 +0000"),
                "Hello\r\n",
            ),
            message(&[], None, "Second"),
            message(&["\\Flagged"], None, "3rd"),
        ];
        let outcome = conn.append("Archiv/2026", &messages).await.unwrap();
        assert_eq!(outcome.uid_validity, Some(1_700_000_000));
        assert_eq!(outcome.uids, Some(vec![5, 6, 7]));
        let outcome = conn.append("Archiv/2026", &messages).await.unwrap();
        assert_eq!(outcome.uids, Some(vec![8, 10, 11]));
        let outcome = conn.append("Archiv/2026", &messages).await.unwrap();
        assert_eq!(outcome.uid_validity, Some(1_700_000_000));
        assert_eq!(outcome.uids, None, "2 UIDs for 3 messages");
        let err = conn.append("Nope", &messages).await.unwrap_err();
        assert_eq!(err.code(), Some("TRYCREATE"));
        script.await.unwrap();
    }

    #[tokio::test]
    async fn synchronizing_literals_wait_for_continuation() {
        let (stream, mut srv) = pipe(4096);
        let script = tokio::spawn(async move {
            srv.send(&greeting("UIDPLUS")).await;
            assert_eq!(srv.line().await, "A1 APPEND \"INBOX\" (\\Seen) {7}\r\n");
            srv.expect_silence().await;
            srv.send("+ Ready for literal data\r\n").await;
            assert_eq!(srv.take(9).await, b"Hello\r\n\r\n");
            srv.send("* 1 EXISTS\r\nA1 OK [APPENDUID 42 12] Append completed.\r\n")
                .await;
            assert_eq!(srv.recv().await, "A2 APPEND \"INBOX\" {6}\r\nSecond\r\n");
            srv.send("A2 OK [APPENDUID 42 13] Append completed.\r\n")
                .await;
            assert_eq!(srv.line().await, "A3 APPEND \"INBOX\" {3}\r\n");
            srv.send("A3 NO [TOOBIG] Message too large\r\n").await;
            assert_eq!(srv.recv().await, "A4 NOOP\r\n");
            srv.send("A4 OK\r\n").await;
        });
        let mut conn = connect(stream).await;
        let two = [
            message(&["\\Seen"], None, "Hello\r\n"),
            message(&[], None, "Second"),
        ];
        let outcome = conn.append("INBOX", &two).await.unwrap();
        assert_eq!(outcome.uid_validity, Some(42));
        assert_eq!(outcome.uids, Some(vec![12, 13]));
        let err = conn
            .append("INBOX", &[message(&[], None, "big")])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("TOOBIG"));
        conn.noop().await.unwrap();
        script.await.unwrap();
    }

    #[tokio::test]
    async fn appends_are_pipelined_with_literal_plus() {
        let (stream, mut srv) = pipe(4096);
        let script = tokio::spawn(async move {
            srv.send(&greeting("LITERAL+ UIDPLUS")).await;
            // All commands arrive before any response is sent.
            assert_eq!(srv.recv().await, "A1 APPEND \"INBOX\" {3+}\r\none\r\n");
            assert_eq!(srv.recv().await, "A2 APPEND \"INBOX\" {3+}\r\ntwo\r\n");
            srv.send("A1 OK [APPENDUID 7 100] ok\r\nA2 OK [APPENDUID 7 101] ok\r\n")
                .await;
            srv.recv().await;
            srv.recv().await;
            srv.recv().await;
            srv.send("A3 OK [APPENDUID 7 102] ok\r\nA4 NO [LIMIT] Too many\r\nA5 OK [APPENDUID 7 103] ok\r\n").await;
            assert_eq!(srv.recv().await, "A6 NOOP\r\n");
            srv.send("A6 OK\r\n").await;
        });
        let mut conn = connect(stream).await;
        let two = [message(&[], None, "one"), message(&[], None, "two")];
        let outcome = tokio::time::timeout(LIMIT, conn.append("INBOX", &two))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outcome.uids, Some(vec![100, 101]));
        let three = [
            message(&[], None, "a"),
            message(&[], None, "b"),
            message(&[], None, "c"),
        ];
        let err = conn.append("INBOX", &three).await.unwrap_err();
        assert_eq!(err.code(), Some("LIMIT"));
        conn.noop().await.unwrap();
        script.await.unwrap();
    }

    #[tokio::test]
    async fn no_codes_backoff_and_bye() {
        let (stream, mut srv) = pipe(4096);
        let script = tokio::spawn(async move {
            srv.send(&greeting("")).await;
            assert_eq!(srv.recv().await, "A1 CREATE \"Foo\"\r\n");
            srv.send("A1 NO [ALREADYEXISTS] Mailbox already exists\r\n")
                .await;
            assert_eq!(srv.recv().await, "A2 SELECT \"Missing\"\r\n");
            srv.send("A2 NO [NONEXISTENT] Mailbox doesn't exist: Missing\r\n")
                .await;
            assert_eq!(srv.recv().await, "A3 NOOP\r\n");
            srv.send("A3 NO [THROTTLED] Request is throttled. Suggested Backoff Time: 1500 milliseconds\r\n").await;
            assert_eq!(
                srv.recv().await,
                "A4 SEARCH\r\n".replace("SEARCH", "UID SEARCH ALL")
            );
            srv.send("A4 BAD Error in IMAP command: Unknown\r\n").await;
            assert_eq!(srv.recv().await, "A5 NOOP\r\n");
            srv.send("* BYE Server shutting down.\r\n").await;
        });
        let mut conn = connect(stream).await;
        let err = conn.create("Foo").await.unwrap_err();
        assert!(
            matches!(&err, ImapError::No { code: Some(c), text } if c == "ALREADYEXISTS" && text == "Mailbox already exists")
        );
        assert_eq!(
            conn.select("Missing").await.unwrap_err().code(),
            Some("NONEXISTENT")
        );
        let err = conn.noop().await.unwrap_err();
        assert_eq!(err.code(), Some("THROTTLED"));
        assert_eq!(err.backoff_hint(), Some(Duration::from_millis(1500)));
        assert!(matches!(
            conn.search("ALL").await,
            Err(ImapError::Bad { .. })
        ));
        match conn.noop().await {
            Err(ImapError::Bye { text }) => assert_eq!(text, "Server shutting down."),
            other => panic!("{other:?}"),
        }
        script.await.unwrap();
        match conn.noop().await {
            Err(ImapError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::NotConnected),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn xoauth2_failure_continuation() {
        let (stream, mut srv) = pipe(4096);
        let script = tokio::spawn(async move {
            srv.send(&greeting("SASL-IR AUTH=XOAUTH2")).await;
            let line = srv.recv().await;
            let b64 = line
                .strip_prefix("A1 AUTHENTICATE XOAUTH2 ")
                .unwrap()
                .trim_end();
            assert_eq!(
                BASE64.decode(b64).unwrap(),
                b"user=me@example.com\x01auth=Bearer tok123\x01\x01"
            );
            let json = r#"{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}"#;
            srv.send(&format!("+ {}\r\n", BASE64.encode(json))).await;
            assert_eq!(srv.line().await, "\r\n");
            srv.send("A1 NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n")
                .await;
            assert_eq!(srv.recv().await, "A2 NOOP\r\n");
            srv.send("A2 OK\r\n").await;
        });
        let mut conn = connect(stream).await;
        let err = conn
            .authenticate_xoauth2("me@example.com", "tok123")
            .await
            .unwrap_err();
        match &err {
            ImapError::No { code, text } => {
                assert_eq!(code.as_deref(), Some("AUTHENTICATIONFAILED"));
                assert!(text.contains("\"status\":\"401\""), "{text}");
            }
            other => panic!("{other:?}"),
        }
        conn.noop().await.unwrap();
        script.await.unwrap();
    }

    #[tokio::test]
    async fn plain_without_sasl_ir_uses_continuation() {
        let (stream, mut srv) = pipe(4096);
        let script = tokio::spawn(async move {
            srv.send(&greeting("AUTH=PLAIN")).await;
            assert_eq!(srv.recv().await, "A1 AUTHENTICATE PLAIN\r\n");
            srv.send("+ \r\n").await;
            let response = srv.line().await;
            assert_eq!(
                BASE64.decode(response.trim_end()).unwrap(),
                b"user\0admin\0secret"
            );
            srv.send("A1 OK Logged in\r\n").await;
            assert_eq!(srv.recv().await, "A2 CAPABILITY\r\n");
            srv.send("* CAPABILITY IMAP4rev1 MULTIAPPEND\r\nA2 OK\r\n")
                .await;
        });
        let mut conn = connect(stream).await;
        conn.authenticate_plain(Some("user"), "admin", "secret")
            .await
            .unwrap();
        assert!(conn.has_capability("MULTIAPPEND"));
        script.await.unwrap();
    }

    #[tokio::test]
    async fn mailbox_commands_with_condstore() {
        let (stream, mut srv) = pipe(256);
        let script = tokio::spawn(async move {
            srv.send(&greeting("CONDSTORE NAMESPACE SPECIAL-USE ENABLE"))
                .await;
            let steps: &[(&str, &str)] = &[
                (
                    "A1 ENABLE CONDSTORE\r\n",
                    "* ENABLED CONDSTORE\r\nA1 OK Enabled.\r\n",
                ),
                (
                    "A2 NAMESPACE\r\n",
                    "* NAMESPACE ((\"\" \"/\")) NIL NIL\r\nA2 OK\r\n",
                ),
                (
                    "A3 LIST \"\" \"*\" RETURN (SPECIAL-USE)\r\n",
                    "* LIST (\\HasNoChildren) \"/\" INBOX\r\n* LIST (\\HasNoChildren \\Sent) \"/\" \"Sent Items\"\r\n* LIST (\\Noselect \\HasChildren) \"/\" Projecten\r\n* LIST (\\HasNoChildren) \"/\" \"Projecten/&ANw-berpr&APw-fung\"\r\n* LIST () \"/\" \"Quo\\\"te\"\r\n* LIST () NIL {6}\r\nLit\"er\r\nA3 OK List completed.\r\n",
                ),
                (
                    "A4 STATUS \"INBOX\" (UIDVALIDITY UIDNEXT MESSAGES HIGHESTMODSEQ)\r\n",
                    "* STATUS INBOX (MESSAGES 3 UIDNEXT 4 UIDVALIDITY 1700000000 HIGHESTMODSEQ 17)\r\nA4 OK\r\n",
                ),
                (
                    "A5 EXAMINE \"INBOX\" (CONDSTORE)\r\n",
                    "* FLAGS (\\Answered \\Seen)\r\n* OK [PERMANENTFLAGS ()] Read-only mailbox.\r\n* 3 EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 1700000000] UIDs valid\r\n* OK [UIDNEXT 4] Predicted next UID\r\n* OK [HIGHESTMODSEQ 17] Highest\r\nA5 OK [READ-ONLY] Examine completed.\r\n",
                ),
                (
                    "A6 UID FETCH 1:* (UID RFC822.SIZE FLAGS INTERNALDATE MODSEQ) (CHANGEDSINCE 15)\r\n",
                    "* 2 FETCH (UID 2 RFC822.SIZE 1234 FLAGS (\\Seen $Label1) INTERNALDATE \"21-Nov-2026 14:53:20 +0000\" MODSEQ (16))\r\nA6 OK\r\n",
                ),
                (
                    "A7 UID STORE 2 FLAGS.SILENT (\\Seen $Label1)\r\n",
                    "* 2 FETCH (UID 2 MODSEQ (18))\r\nA7 OK\r\n",
                ),
                (
                    "A8 UID FETCH 1:* (UID FLAGS) (CHANGEDSINCE 17)\r\n",
                    "* 2 FETCH (UID 2 MODSEQ (18) FLAGS (\\Seen $Label1))\r\nA8 OK\r\n",
                ),
                ("A9 UID SEARCH UNSEEN\r\n", "* SEARCH 1 3\r\nA9 OK\r\n"),
                (
                    "A10 UID FETCH 1:2 (UID RFC822.SIZE BODY.PEEK[HEADER])\r\n",
                    "* 1 FETCH (UID 1 RFC822.SIZE 100 BODY[HEADER] {12}\r\nSubject: a\r\n)\r\nA10 OK\r\n",
                ),
                (
                    "A11 SELECT \"Sent Items\" (CONDSTORE)\r\n",
                    "* 0 EXISTS\r\n* OK [NOMODSEQ] No permanent modsequences\r\n* OK [PERMANENTFLAGS (\\Seen \\*)] ok\r\nA11 OK [READ-WRITE] Select completed.\r\n",
                ),
                (
                    "A12 LOGOUT\r\n",
                    "* BYE Logging out\r\nA12 OK Logout completed.\r\n",
                ),
            ];
            for (expected, reply) in steps {
                assert_eq!(srv.recv().await, *expected);
                srv.send(reply).await;
            }
        });
        let mut conn = connect(stream).await;
        conn.enable("CONDSTORE").await.unwrap();
        assert!(conn.is_enabled("condstore"));
        let ns = conn.namespace().await.unwrap();
        assert_eq!(
            ns,
            Some(Namespace {
                prefix: String::new(),
                delimiter: Some('/')
            })
        );

        let list = conn.list("", "*", true).await.unwrap();
        let names: Vec<&str> = list.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "INBOX",
                "Sent Items",
                "Projecten",
                "Projecten/&ANw-berpr&APw-fung",
                "Quo\"te",
                "Lit\"er"
            ]
        );
        assert!(list[1].has_attribute("\\sent"));
        assert_eq!(list[2].attributes, ["\\Noselect", "\\HasChildren"]);
        assert_eq!(list[0].delimiter, Some('/'));
        assert_eq!(list[5].delimiter, None);

        let status = conn.status("INBOX").await.unwrap();
        assert_eq!(
            status,
            MailboxStatus {
                uid_validity: Some(1_700_000_000),
                uid_next: Some(4),
                messages: Some(3),
                highest_modseq: Some(17)
            }
        );
        let info = conn.examine("INBOX").await.unwrap();
        assert_eq!(
            info,
            SelectedInfo {
                uid_validity: Some(1_700_000_000),
                uid_next: Some(4),
                exists: 3,
                highest_modseq: Some(17),
                permanent_flags: Some(vec![]),
                read_only: true,
            }
        );
        let meta = conn.fetch_meta("1:*", Some(15)).await.unwrap();
        assert_eq!(
            meta,
            [MessageMeta {
                uid: 2,
                size: 1234,
                flags: vec!["\\Seen".into(), "$Label1".into()],
                internal_date: "21-Nov-2026 14:53:20 +0000".into(),
                modseq: Some(16),
            }]
        );
        let flags: Vec<String> = ["\\Seen", "\\Recent", "$Label1"].map(String::from).to_vec();
        conn.store_flags("2", &flags).await.unwrap();
        assert!(matches!(
            conn.store_flags("1,x", &flags).await,
            Err(ImapError::Bad { .. })
        ));
        let changed = conn.fetch_flags("1:*", Some(17)).await.unwrap();
        assert_eq!(
            changed,
            [(2, vec!["\\Seen".to_string(), "$Label1".to_string()])]
        );
        assert_eq!(conn.search("UNSEEN").await.unwrap(), [1, 3]);
        let headers = conn.fetch_headers("1:2").await.unwrap();
        assert_eq!(headers, [(1, 100, Bytes::from_static(b"Subject: a\r\n"))]);
        let info = conn.select("Sent Items").await.unwrap();
        assert_eq!(
            (info.highest_modseq, info.read_only, info.exists),
            (None, false, 0)
        );
        assert_eq!(
            info.permanent_flags.as_deref(),
            Some(&["\\Seen".to_owned(), "\\*".to_owned()][..])
        );
        conn.logout().await.unwrap();
        script.await.unwrap();
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let (stream, mut srv) = pipe(4096);
        srv.send(&greeting("")).await;
        let mut conn =
            ImapConnection::establish(stream, &opts(TlsMode::None, Duration::from_millis(100)))
                .await
                .unwrap();
        assert!(matches!(conn.noop().await, Err(ImapError::Timeout(_))));
        assert!(matches!(conn.noop().await, Err(ImapError::Io(_))));
        drop(srv);
    }
}
