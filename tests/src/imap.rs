//! A tiny raw IMAP4rev1 client, independent from mailwave's IMAP stack.
//!
//! It only knows what the fixtures need (login, LIST, STATUS, SELECT/EXAMINE,
//! APPEND, UID FETCH, UID STORE, EXPUNGE, CREATE) and hands out raw bytes
//! wherever exactness matters. Mailbox names are taken and returned as UTF-8
//! and converted with this crate's own modified UTF-7 code.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use chrono::{DateTime, FixedOffset};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::mutf7;

/// How long any single network read or write may take before the client
/// gives up (generous: 25 MB bodies on a loaded 2-core machine).
const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// Transport security of an IMAP connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP.
    Plain,
    /// TLS from the first byte (imaps).
    Implicit,
    /// Plain TCP upgraded with STARTTLS before authentication.
    StartTls,
}

/// How to authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// `LOGIN user password` (for Dovecot master impersonation pass
    /// `user*master` as the user).
    Login { user: String, password: String },
    /// `AUTHENTICATE PLAIN` with an optional authorization identity
    /// (`authzid` = the user to act as, `authcid` = the one whose password it is).
    Plain {
        authzid: Option<String>,
        authcid: String,
        password: String,
    },
    /// `AUTHENTICATE XOAUTH2` with an OAuth 2 bearer token.
    Xoauth2 { user: String, token: String },
}

/// Everything needed to open an authenticated session.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// PEM file of the CA to trust for TLS (required for TLS modes).
    pub ca_pem: Option<PathBuf>,
    /// Name to verify the server certificate against (default: `localhost`).
    pub tls_server_name: String,
    pub auth: Auth,
}

impl Endpoint {
    /// Plain-TCP endpoint with LOGIN.
    pub fn plain(host: &str, port: u16, user: &str, password: &str) -> Self {
        Self {
            host: host.to_owned(),
            port,
            tls: TlsMode::Plain,
            ca_pem: None,
            tls_server_name: "localhost".to_owned(),
            auth: Auth::Login {
                user: user.to_owned(),
                password: password.to_owned(),
            },
        }
    }

    /// The login name this endpoint acts as (for messages).
    pub fn describe(&self) -> String {
        let who = match &self.auth {
            Auth::Login { user, .. } => user.clone(),
            Auth::Plain {
                authzid, authcid, ..
            } => match authzid {
                Some(z) => format!("{z} (as {authcid})"),
                None => authcid.clone(),
            },
            Auth::Xoauth2 { user, .. } => format!("{user} (XOAUTH2)"),
        };
        format!("{who}@{}:{} ({:?})", self.host, self.port, self.tls)
    }

    /// Connects, optionally negotiates TLS, and authenticates.
    pub async fn connect(&self) -> Result<Client> {
        let mut client = Client::connect(
            &self.host,
            self.port,
            &self.tls,
            self.ca_pem.as_deref(),
            &self.tls_server_name,
        )
        .await
        .with_context(|| format!("connecting to {}", self.describe()))?;
        match &self.auth {
            Auth::Login { user, password } => client.login(user, password).await,
            Auth::Plain {
                authzid,
                authcid,
                password,
            } => {
                client
                    .authenticate_plain(authzid.as_deref(), authcid, password)
                    .await
            }
            Auth::Xoauth2 { user, token } => client.authenticate_xoauth2(user, token).await,
        }
        .with_context(|| format!("authenticating {}", self.describe()))?;
        Ok(client)
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One entry of a LIST response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListEntry {
    /// Name exactly as on the wire (modified UTF-7).
    pub raw_name: String,
    /// Decoded UTF-8 name (equal to `raw_name` if it is not valid mUTF-7).
    pub name: String,
    pub separator: Option<char>,
    /// Attributes as sent, e.g. `\HasNoChildren`, `\Sent`, `\Noselect`.
    pub attributes: Vec<String>,
}

impl ListEntry {
    /// False for `\Noselect` / `\NonExistent` placeholders.
    pub fn selectable(&self) -> bool {
        !self.attributes.iter().any(|a| {
            a.eq_ignore_ascii_case("\\Noselect") || a.eq_ignore_ascii_case("\\NonExistent")
        })
    }

    /// The RFC 6154 special-use attribute, if any.
    pub fn special_use(&self) -> Option<String> {
        const USES: [&str; 7] = [
            "\\All",
            "\\Archive",
            "\\Drafts",
            "\\Flagged",
            "\\Junk",
            "\\Sent",
            "\\Trash",
        ];
        self.attributes.iter().find_map(|a| {
            USES.iter()
                .find(|u| u.eq_ignore_ascii_case(a))
                .map(|u| (*u).to_owned())
        })
    }
}

/// Result of SELECT / EXAMINE / STATUS (whatever the server told).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailboxStatus {
    pub messages: Option<u32>,
    pub uidvalidity: Option<u32>,
    pub uidnext: Option<u32>,
    pub unseen: Option<u32>,
    pub highestmodseq: Option<u64>,
}

/// One message from `UID FETCH ... (UID FLAGS INTERNALDATE BODY.PEEK[])`.
#[derive(Clone, Debug)]
pub struct FetchedMessage {
    pub seq: u32,
    pub uid: u32,
    pub flags: Vec<String>,
    /// INTERNALDATE exactly as sent by the server.
    pub internal_date_raw: String,
    pub internal_date: Option<DateTime<FixedOffset>>,
    /// `BODY[]` bytes (empty if the body was not requested).
    pub body: Vec<u8>,
}

/// Outcome of a tagged command.
#[derive(Clone, Debug)]
pub struct CommandResult {
    /// Untagged responses (`* ...`), raw bytes without the trailing CRLF,
    /// literals kept in wire form.
    pub untagged: Vec<Vec<u8>>,
    /// Text of the tagged OK line after the tag (e.g. `OK [APPENDUID 1 2] done`).
    pub tagged: String,
}

/// What to do with flags in [`Client::uid_store`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOp {
    Replace,
    Add,
    Remove,
}

/// A piece of a command: text, or a literal sent as `{n}` / `{n+}`.
#[derive(Clone, Debug)]
pub enum Part<'a> {
    Text(&'a [u8]),
    Owned(Vec<u8>),
    Literal(&'a [u8]),
}

/// A raw IMAP connection.
pub struct Client {
    reader: BufReader<Box<dyn Stream>>,
    next_tag: u32,
    capabilities: Vec<String>,
    greeting: String,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("capabilities", &self.capabilities)
            .field("greeting", &self.greeting)
            .finish()
    }
}

/// Builds a rustls client config trusting exactly the CA in `ca_pem`.
pub fn rustls_config(ca_pem: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let pem = std::fs::read(ca_pem).with_context(|| format!("reading {}", ca_pem.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.context("parsing CA PEM")?)?;
    }
    if roots.is_empty() {
        bail!("no certificate in {}", ca_pem.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn tls_wrap(
    tcp: TcpStream,
    ca_pem: Option<&Path>,
    server_name: &str,
) -> Result<Box<dyn Stream>> {
    let ca = ca_pem.context("TLS requested but no CA PEM given")?;
    let connector = tokio_rustls::TlsConnector::from(rustls_config(ca)?);
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
        .context("invalid TLS server name")?;
    let tls = tokio::time::timeout(IO_TIMEOUT, connector.connect(name, tcp))
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake")?;
    Ok(Box::new(tls))
}

impl Client {
    /// Opens a connection and reads the greeting (no authentication).
    pub async fn connect(
        host: &str,
        port: u16,
        tls: &TlsMode,
        ca_pem: Option<&Path>,
        tls_server_name: &str,
    ) -> Result<Client> {
        let tcp = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect((host, port)))
            .await
            .context("TCP connect timed out")??;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Stream> = match tls {
            TlsMode::Implicit => tls_wrap(tcp, ca_pem, tls_server_name).await?,
            TlsMode::Plain | TlsMode::StartTls => Box::new(tcp),
        };
        let mut client = Client {
            reader: BufReader::with_capacity(256 * 1024, stream),
            next_tag: 1,
            capabilities: Vec::new(),
            greeting: String::new(),
        };
        let greeting = client.read_response().await?;
        client.greeting = String::from_utf8_lossy(&greeting).into_owned();
        if !client.greeting.starts_with("* OK") && !client.greeting.starts_with("* PREAUTH") {
            bail!("unexpected greeting: {}", client.greeting);
        }
        if *tls == TlsMode::StartTls {
            client.run_text("STARTTLS").await?;
            if !client.reader.buffer().is_empty() {
                bail!("server sent data after STARTTLS OK (injection?)");
            }
            let Client {
                reader,
                next_tag,
                greeting,
                ..
            } = client;
            let inner = reader.into_inner();
            // The only way to get the TcpStream back out of the box would be
            // downcasting; instead, re-wrap the boxed stream generically.
            let tls_stream = tls_wrap_boxed(inner, ca_pem, tls_server_name).await?;
            client = Client {
                reader: BufReader::with_capacity(256 * 1024, tls_stream),
                next_tag,
                capabilities: Vec::new(),
                greeting,
            };
        }
        client.refresh_capabilities().await?;
        Ok(client)
    }

    /// The server greeting line.
    pub fn greeting(&self) -> &str {
        &self.greeting
    }

    /// Capabilities as last fetched (upper-cased).
    pub fn capabilities(&self) -> &[String] {
        &self.capabilities
    }

    /// True if the capability (case-insensitive) was advertised.
    pub fn has_capability(&self, cap: &str) -> bool {
        self.capabilities
            .iter()
            .any(|c| c.eq_ignore_ascii_case(cap))
    }

    /// Issues CAPABILITY and stores the answer.
    pub async fn refresh_capabilities(&mut self) -> Result<()> {
        let res = self.run_text("CAPABILITY").await?;
        let mut caps = Vec::new();
        for line in &res.untagged {
            let text = String::from_utf8_lossy(line);
            if let Some(rest) = text.strip_prefix("* CAPABILITY ") {
                caps.extend(
                    rest.split_ascii_whitespace()
                        .map(|s| s.to_ascii_uppercase()),
                );
            }
        }
        self.capabilities = caps;
        Ok(())
    }

    /// `LOGIN` (quoted strings, literals for bytes quoting cannot carry).
    pub async fn login(&mut self, user: &str, password: &str) -> Result<()> {
        let mut parts = vec![Part::Text(b"LOGIN ")];
        push_astring(&mut parts, user.as_bytes());
        parts.push(Part::Text(b" "));
        push_astring(&mut parts, password.as_bytes());
        self.run(&parts, |_| Ok(())).await?;
        self.refresh_capabilities().await
    }

    /// `AUTHENTICATE PLAIN`, with SASL-IR if available.
    pub async fn authenticate_plain(
        &mut self,
        authzid: Option<&str>,
        authcid: &str,
        password: &str,
    ) -> Result<()> {
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}\0{authcid}\0{password}", authzid.unwrap_or("")));
        if self.has_capability("SASL-IR") {
            self.run_text(&format!("AUTHENTICATE PLAIN {token}"))
                .await?;
        } else {
            let tag = self.new_tag();
            self.write_all(format!("{tag} AUTHENTICATE PLAIN\r\n").as_bytes())
                .await?;
            let mut untagged = Vec::new();
            self.wait_continuation(&mut untagged).await?;
            self.write_all(format!("{token}\r\n").as_bytes()).await?;
            self.finish(&tag, &mut |_| Ok(()), &mut untagged).await?;
        }
        self.refresh_capabilities().await
    }

    /// `AUTHENTICATE XOAUTH2`, with SASL-IR if available. A refused token
    /// is an error (the server's error challenge is not answered).
    pub async fn authenticate_xoauth2(&mut self, user: &str, token: &str) -> Result<()> {
        let initial = base64::engine::general_purpose::STANDARD
            .encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"));
        if self.has_capability("SASL-IR") {
            self.run_text(&format!("AUTHENTICATE XOAUTH2 {initial}"))
                .await?;
        } else {
            let tag = self.new_tag();
            self.write_all(format!("{tag} AUTHENTICATE XOAUTH2\r\n").as_bytes())
                .await?;
            let mut untagged = Vec::new();
            self.wait_continuation(&mut untagged).await?;
            self.write_all(format!("{initial}\r\n").as_bytes()).await?;
            self.finish(&tag, &mut |_| Ok(()), &mut untagged).await?;
        }
        self.refresh_capabilities().await
    }

    /// `LIST "" "*"` (Dovecot includes special-use attributes when it
    /// advertises SPECIAL-USE).
    pub async fn list(&mut self) -> Result<Vec<ListEntry>> {
        let res = self.run_text("LIST \"\" \"*\"").await?;
        let mut out = Vec::new();
        for line in &res.untagged {
            let toks = parse_tokens(line)?;
            if toks.len() < 5 || !toks[1].is_atom("LIST") {
                continue;
            }
            let attributes = toks[2]
                .as_list()
                .context("LIST attributes")?
                .iter()
                .map(|t| t.text())
                .collect();
            let separator = match &toks[3] {
                t if t.is_atom("NIL") => None,
                t => t.text().chars().next(),
            };
            let raw_name = toks[4].text();
            let name = mutf7::decode(&raw_name).unwrap_or_else(|_| raw_name.clone());
            out.push(ListEntry {
                raw_name,
                name,
                separator,
                attributes,
            });
        }
        Ok(out)
    }

    /// `CREATE` (UTF-8 name).
    pub async fn create(&mut self, mailbox: &str) -> Result<()> {
        self.simple_mailbox_command("CREATE", mailbox)
            .await
            .map(drop)
    }

    /// `DELETE` (UTF-8 name).
    pub async fn delete(&mut self, mailbox: &str) -> Result<()> {
        self.simple_mailbox_command("DELETE", mailbox)
            .await
            .map(drop)
    }

    /// `SUBSCRIBE` (UTF-8 name).
    pub async fn subscribe(&mut self, mailbox: &str) -> Result<()> {
        self.simple_mailbox_command("SUBSCRIBE", mailbox)
            .await
            .map(drop)
    }

    async fn simple_mailbox_command(&mut self, verb: &str, mailbox: &str) -> Result<CommandResult> {
        let mut cmd = format!("{verb} ").into_bytes();
        cmd.extend(quote(mutf7::encode(mailbox).as_bytes()));
        self.run(&[Part::Owned(cmd)], |_| Ok(()))
            .await
            .with_context(|| format!("{verb} {mailbox:?}"))
    }

    /// `RENAME` (UTF-8 names).
    pub async fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let mut cmd = b"RENAME ".to_vec();
        cmd.extend(quote(mutf7::encode(from).as_bytes()));
        cmd.push(b' ');
        cmd.extend(quote(mutf7::encode(to).as_bytes()));
        self.run(&[Part::Owned(cmd)], |_| Ok(())).await.map(drop)
    }

    /// `SELECT` (UTF-8 name).
    pub async fn select(&mut self, mailbox: &str) -> Result<MailboxStatus> {
        self.select_raw("SELECT", &mutf7::encode(mailbox)).await
    }

    /// `EXAMINE` (UTF-8 name).
    pub async fn examine(&mut self, mailbox: &str) -> Result<MailboxStatus> {
        self.select_raw("EXAMINE", &mutf7::encode(mailbox)).await
    }

    /// `SELECT`/`EXAMINE` with a name exactly as on the wire.
    pub async fn select_raw(&mut self, verb: &str, raw_name: &str) -> Result<MailboxStatus> {
        let mut cmd = format!("{verb} ").into_bytes();
        cmd.extend(quote(raw_name.as_bytes()));
        let res = self.run(&[Part::Owned(cmd)], |_| Ok(())).await?;
        let mut st = MailboxStatus::default();
        for line in &res.untagged {
            let text = String::from_utf8_lossy(line);
            let words: Vec<&str> = text.split_ascii_whitespace().collect();
            if words.len() >= 3 && words[2].eq_ignore_ascii_case("EXISTS") {
                st.messages = words[1].parse().ok();
            }
            st.uidvalidity = st.uidvalidity.or(code_number(&text, "UIDVALIDITY"));
            st.uidnext = st.uidnext.or(code_number(&text, "UIDNEXT"));
            st.unseen = st.unseen.or(code_number(&text, "UNSEEN"));
            st.highestmodseq = st.highestmodseq.or(code_number(&text, "HIGHESTMODSEQ"));
        }
        Ok(st)
    }

    /// `STATUS mailbox (MESSAGES UIDVALIDITY UIDNEXT UNSEEN)` (UTF-8 name).
    pub async fn status(&mut self, mailbox: &str) -> Result<MailboxStatus> {
        let mut cmd = b"STATUS ".to_vec();
        cmd.extend(quote(mutf7::encode(mailbox).as_bytes()));
        cmd.extend_from_slice(b" (MESSAGES UIDVALIDITY UIDNEXT UNSEEN)");
        let res = self.run(&[Part::Owned(cmd)], |_| Ok(())).await?;
        let mut st = MailboxStatus::default();
        for line in &res.untagged {
            let toks = parse_tokens(line)?;
            if toks.len() < 4 || !toks[1].is_atom("STATUS") {
                continue;
            }
            let items = toks.last().and_then(Tok::as_list).context("STATUS items")?;
            for pair in items.chunks(2) {
                if let [k, v] = pair {
                    let v = v.text();
                    match k.text().to_ascii_uppercase().as_str() {
                        "MESSAGES" => st.messages = v.parse().ok(),
                        "UIDVALIDITY" => st.uidvalidity = v.parse().ok(),
                        "UIDNEXT" => st.uidnext = v.parse().ok(),
                        "UNSEEN" => st.unseen = v.parse().ok(),
                        _ => {}
                    }
                }
            }
        }
        Ok(st)
    }

    /// `APPEND` with flags and an optional internal date. Returns the UID
    /// from APPENDUID when the server sends one.
    pub async fn append(
        &mut self,
        mailbox: &str,
        flags: &[String],
        internal_date: Option<DateTime<FixedOffset>>,
        message: &[u8],
    ) -> Result<Option<u32>> {
        let mut cmd = b"APPEND ".to_vec();
        cmd.extend(quote(mutf7::encode(mailbox).as_bytes()));
        cmd.extend_from_slice(b" (");
        cmd.extend_from_slice(flags.join(" ").as_bytes());
        cmd.push(b')');
        if let Some(date) = internal_date {
            cmd.extend_from_slice(format!(" \"{}\"", format_internal_date(&date)).as_bytes());
        }
        cmd.push(b' ');
        let res = self
            .run(&[Part::Owned(cmd), Part::Literal(message)], |_| Ok(()))
            .await
            .with_context(|| format!("APPEND to {mailbox:?}"))?;
        Ok(appenduid(&res.tagged))
    }

    /// `UID FETCH <set> (UID FLAGS INTERNALDATE [BODY.PEEK[]])` in the
    /// selected mailbox; `on_message` sees each message as it arrives, so
    /// big folders are never held in memory at once.
    pub async fn uid_fetch(
        &mut self,
        uid_set: &str,
        with_body: bool,
        mut on_message: impl FnMut(FetchedMessage) -> Result<()>,
    ) -> Result<()> {
        let items = if with_body {
            "(UID FLAGS INTERNALDATE BODY.PEEK[])"
        } else {
            "(UID FLAGS INTERNALDATE)"
        };
        let cmd = format!("UID FETCH {uid_set} {items}");
        self.run(&[Part::Owned(cmd.into_bytes())], |resp| {
            if let Some(msg) = parse_fetch(resp, with_body)? {
                on_message(msg)?;
            }
            Ok(())
        })
        .await
        .map(drop)
    }

    /// Collects [`Client::uid_fetch`] into a vector.
    pub async fn uid_fetch_all(
        &mut self,
        uid_set: &str,
        with_body: bool,
    ) -> Result<Vec<FetchedMessage>> {
        let mut out = Vec::new();
        self.uid_fetch(uid_set, with_body, |m| {
            out.push(m);
            Ok(())
        })
        .await?;
        out.sort_by_key(|m| m.uid);
        Ok(out)
    }

    /// `UID STORE <set> [+-]FLAGS.SILENT (...)` in the selected mailbox.
    pub async fn uid_store(&mut self, uid_set: &str, op: StoreOp, flags: &[String]) -> Result<()> {
        let sign = match op {
            StoreOp::Replace => "",
            StoreOp::Add => "+",
            StoreOp::Remove => "-",
        };
        self.run_text(&format!(
            "UID STORE {uid_set} {sign}FLAGS.SILENT ({})",
            flags.join(" ")
        ))
        .await
        .map(drop)
    }

    /// `EXPUNGE` in the selected mailbox.
    pub async fn expunge(&mut self) -> Result<()> {
        self.run_text("EXPUNGE").await.map(drop)
    }

    /// `LOGOUT` (errors ignored: the server may close first).
    pub async fn logout(mut self) {
        let _ = self.run_text("LOGOUT").await;
    }

    /// Runs a command given as plain text (no literals).
    pub async fn run_text(&mut self, command: &str) -> Result<CommandResult> {
        self.run(&[Part::Text(command.as_bytes())], |_| Ok(()))
            .await
    }

    /// Runs a command made of parts; literals use LITERAL+ when the server
    /// has it, otherwise wait for the continuation. `on_untagged` sees every
    /// untagged response as it arrives; untagged responses that are not
    /// FETCH responses are also collected in the result.
    pub async fn run(
        &mut self,
        parts: &[Part<'_>],
        mut on_untagged: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<CommandResult> {
        let tag = self.new_tag();
        let literal_plus = self.has_capability("LITERAL+");
        let mut untagged = Vec::new();
        let mut buf: Vec<u8> = format!("{tag} ").into_bytes();
        for part in parts {
            match part {
                Part::Text(t) => buf.extend_from_slice(t),
                Part::Owned(t) => buf.extend_from_slice(t),
                Part::Literal(lit) => {
                    if literal_plus {
                        buf.extend_from_slice(format!("{{{}+}}\r\n", lit.len()).as_bytes());
                        self.write_all(&buf).await?;
                        buf.clear();
                    } else {
                        buf.extend_from_slice(format!("{{{}}}\r\n", lit.len()).as_bytes());
                        self.write_all(&buf).await?;
                        buf.clear();
                        self.wait_continuation(&mut untagged).await?;
                    }
                    self.write_all(lit).await?;
                }
            }
        }
        buf.extend_from_slice(b"\r\n");
        self.write_all(&buf).await?;
        let tagged = self.finish(&tag, &mut on_untagged, &mut untagged).await?;
        Ok(CommandResult { untagged, tagged })
    }

    fn new_tag(&mut self) -> String {
        let tag = format!("T{:04}", self.next_tag);
        self.next_tag += 1;
        tag
    }

    async fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let stream = self.reader.get_mut();
        tokio::time::timeout(IO_TIMEOUT, async {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
        .await
        .context("write timed out")?
        .context("write")?;
        Ok(())
    }

    async fn wait_continuation(&mut self, untagged: &mut Vec<Vec<u8>>) -> Result<()> {
        loop {
            let resp = self.read_response().await?;
            if resp.starts_with(b"+") {
                return Ok(());
            }
            if resp.starts_with(b"* ") {
                untagged.push(resp);
                continue;
            }
            bail!(
                "expected continuation, got: {}",
                String::from_utf8_lossy(&resp[..resp.len().min(300)])
            );
        }
    }

    async fn finish(
        &mut self,
        tag: &str,
        on_untagged: &mut dyn FnMut(&[u8]) -> Result<()>,
        untagged: &mut Vec<Vec<u8>>,
    ) -> Result<String> {
        loop {
            let resp = self.read_response().await?;
            if resp.starts_with(b"* ") {
                on_untagged(&resp)?;
                let is_fetch = resp
                    .split(|b| *b == b' ')
                    .nth(2)
                    .is_some_and(|w| w.eq_ignore_ascii_case(b"FETCH"));
                if !is_fetch {
                    untagged.push(resp);
                }
                continue;
            }
            if resp.starts_with(b"+") {
                bail!("unexpected continuation request");
            }
            let text = String::from_utf8_lossy(&resp).into_owned();
            let Some(rest) = text.strip_prefix(tag).and_then(|r| r.strip_prefix(' ')) else {
                bail!("response with unknown tag: {text}");
            };
            if rest.len() >= 2 && rest[..2].eq_ignore_ascii_case("OK") {
                return Ok(rest.to_owned());
            }
            return Err(anyhow!("IMAP command failed: {rest}"));
        }
    }

    /// Reads one complete response (line plus any literals), without the
    /// final CRLF.
    async fn read_response(&mut self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let start = out.len();
            let n = tokio::time::timeout(IO_TIMEOUT, self.reader.read_until(b'\n', &mut out))
                .await
                .context("read timed out")??;
            if n == 0 {
                bail!("connection closed by server");
            }
            let line = &out[start..];
            let trimmed = line
                .strip_suffix(b"\r\n")
                .or_else(|| line.strip_suffix(b"\n"))
                .unwrap_or(line);
            if let Some(len) = trailing_literal_len(trimmed) {
                let old = out.len();
                out.resize(old + len, 0);
                tokio::time::timeout(IO_TIMEOUT, self.reader.read_exact(&mut out[old..]))
                    .await
                    .context("read timed out")??;
                continue;
            }
            let trimmed_len = trimmed.len();
            out.truncate(start + trimmed_len);
            return Ok(out);
        }
    }
}

async fn tls_wrap_boxed(
    inner: Box<dyn Stream>,
    ca_pem: Option<&Path>,
    server_name: &str,
) -> Result<Box<dyn Stream>> {
    let ca = ca_pem.context("TLS requested but no CA PEM given")?;
    let connector = tokio_rustls::TlsConnector::from(rustls_config(ca)?);
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
        .context("invalid TLS server name")?;
    let tls = tokio::time::timeout(IO_TIMEOUT, connector.connect(name, inner))
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake after STARTTLS")?;
    Ok(Box::new(tls))
}

/// Adds `s` as a quoted string, or as a literal for bytes a quoted string
/// cannot carry.
fn push_astring<'a>(parts: &mut Vec<Part<'a>>, s: &'a [u8]) {
    if s.iter()
        .any(|b| matches!(*b, b'\r' | b'\n' | 0) || *b >= 0x80)
    {
        parts.push(Part::Literal(s));
    } else {
        parts.push(Part::Owned(quote(s)));
    }
}

/// Quotes a string for IMAP (`"` and `\` escaped).
pub fn quote(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 2);
    out.push(b'"');
    for &b in s {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
    out
}

fn trailing_literal_len(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"}")?;
    let open = line.iter().rposition(|b| *b == b'{')?;
    let digits = &line[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The UID of `[APPENDUID <uidvalidity> <uid>]` in a tagged OK text.
fn appenduid(text: &str) -> Option<u32> {
    let start = text.find("[APPENDUID ")? + "[APPENDUID ".len();
    let rest = &text[start..];
    let end = rest.find(']')?;
    rest[..end].split_ascii_whitespace().nth(1)?.parse().ok()
}

/// Finds `[NAME <number>` in a response text.
fn code_number<T: std::str::FromStr>(text: &str, name: &str) -> Option<T> {
    let needle = format!("[{name} ");
    let start = text.find(&needle)? + needle.len();
    let rest = &text[start..];
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

/// Formats an INTERNALDATE / APPEND date-time: `05-Jan-2020 13:04:05 +0100`.
pub fn format_internal_date(date: &DateTime<FixedOffset>) -> String {
    date.format("%d-%b-%Y %H:%M:%S %z").to_string()
}

/// Parses an INTERNALDATE (` 5-Jan-2020 13:04:05 +0100` or zero-padded).
pub fn parse_internal_date(s: &str) -> Option<DateTime<FixedOffset>> {
    let s = s.trim();
    let padded;
    let s = if s.find('-') == Some(1) {
        padded = format!("0{s}");
        padded.as_str()
    } else {
        s
    };
    DateTime::parse_from_str(s, "%d-%b-%Y %H:%M:%S %z").ok()
}

/// A token of an IMAP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok<'a> {
    Atom(&'a [u8]),
    Quoted(Vec<u8>),
    Literal(&'a [u8]),
    List(Vec<Tok<'a>>),
}

impl<'a> Tok<'a> {
    fn is_atom(&self, s: &str) -> bool {
        matches!(self, Tok::Atom(a) if a.eq_ignore_ascii_case(s.as_bytes()))
    }

    fn as_list(&self) -> Option<&[Tok<'a>]> {
        match self {
            Tok::List(l) => Some(l),
            _ => None,
        }
    }

    /// Bytes of an atom, quoted string or literal.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Tok::Atom(a) | Tok::Literal(a) => Some(a),
            Tok::Quoted(q) => Some(q),
            Tok::List(_) => None,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(self.bytes().unwrap_or_default()).into_owned()
    }
}

/// Tokenizes a complete response (as returned by the reader). Response
/// codes in brackets are not special: `[UIDNEXT` is just an atom.
pub fn parse_tokens(buf: &[u8]) -> Result<Vec<Tok<'_>>> {
    let mut pos = 0;
    let toks = parse_seq(buf, &mut pos, false)?;
    Ok(toks)
}

fn parse_seq<'a>(buf: &'a [u8], pos: &mut usize, in_list: bool) -> Result<Vec<Tok<'a>>> {
    let mut out = Vec::new();
    while *pos < buf.len() {
        match buf[*pos] {
            b' ' | b'\r' | b'\n' => *pos += 1,
            b'(' => {
                *pos += 1;
                out.push(Tok::List(parse_seq(buf, pos, true)?));
            }
            b')' => {
                if !in_list {
                    bail!("unbalanced ')' in response");
                }
                *pos += 1;
                return Ok(out);
            }
            b'"' => {
                *pos += 1;
                let mut s = Vec::new();
                loop {
                    let Some(&b) = buf.get(*pos) else {
                        bail!("unterminated quoted string");
                    };
                    *pos += 1;
                    match b {
                        b'\\' => {
                            s.push(*buf.get(*pos).context("dangling escape")?);
                            *pos += 1;
                        }
                        b'"' => break,
                        _ => s.push(b),
                    }
                }
                out.push(Tok::Quoted(s));
            }
            b'{' => {
                let close = buf[*pos..]
                    .iter()
                    .position(|b| *b == b'}')
                    .context("unterminated literal length")?
                    + *pos;
                let digits = std::str::from_utf8(&buf[*pos + 1..close])?.trim_end_matches('+');
                let len: usize = digits.parse().context("literal length")?;
                let mut start = close + 1;
                if buf.get(start) == Some(&b'\r') {
                    start += 1;
                }
                if buf.get(start) == Some(&b'\n') {
                    start += 1;
                }
                let end = start + len;
                if end > buf.len() {
                    bail!("literal longer than response");
                }
                out.push(Tok::Literal(&buf[start..end]));
                *pos = end;
            }
            _ => {
                let start = *pos;
                // `BODY[]`/`BODY[HEADER.FIELDS (A B)]`: a bracketed section
                // belongs to the atom even if it contains spaces/parens.
                let mut depth = 0usize;
                while *pos < buf.len() {
                    let b = buf[*pos];
                    if matches!(b, b'\r' | b'\n')
                        || (depth == 0 && matches!(b, b' ' | b'(' | b')' | b'"'))
                    {
                        break;
                    }
                    if b == b'[' {
                        depth += 1;
                    } else if b == b']' {
                        depth = depth.saturating_sub(1);
                    }
                    *pos += 1;
                }
                out.push(Tok::Atom(&buf[start..*pos]));
            }
        }
    }
    if in_list {
        bail!("unterminated list");
    }
    Ok(out)
}

fn parse_fetch(resp: &[u8], want_body: bool) -> Result<Option<FetchedMessage>> {
    // Cheap pre-check before tokenizing.
    let mut words = resp.splitn(4, |b| *b == b' ');
    let (Some(b"*"), Some(seq), Some(verb)) = (words.next(), words.next(), words.next()) else {
        return Ok(None);
    };
    if !verb.eq_ignore_ascii_case(b"FETCH") {
        return Ok(None);
    }
    let seq: u32 = std::str::from_utf8(seq)?.parse()?;
    let toks = parse_tokens(resp)?;
    let items = toks
        .get(3)
        .and_then(Tok::as_list)
        .context("FETCH without item list")?;
    let mut msg = FetchedMessage {
        seq,
        uid: 0,
        flags: Vec::new(),
        internal_date_raw: String::new(),
        internal_date: None,
        body: Vec::new(),
    };
    let mut have_body = false;
    for pair in items.chunks(2) {
        let [k, v] = pair else { break };
        let key = k.text().to_ascii_uppercase();
        match key.as_str() {
            "UID" => msg.uid = v.text().parse().context("UID")?,
            "FLAGS" => {
                msg.flags = v
                    .as_list()
                    .context("FLAGS")?
                    .iter()
                    .map(Tok::text)
                    .collect()
            }
            "INTERNALDATE" => {
                msg.internal_date_raw = v.text();
                msg.internal_date = parse_internal_date(&msg.internal_date_raw);
            }
            "BODY[]" => {
                have_body = true;
                msg.body = v.bytes().unwrap_or_default().to_vec();
                if v.is_atom("NIL") {
                    msg.body.clear();
                }
            }
            _ => {}
        }
    }
    if msg.uid == 0 || (want_body && !have_body) {
        // An unsolicited FLAGS update or similar.
        return Ok(None);
    }
    Ok(Some(msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizes_fetch_with_literal() {
        let resp = b"* 3 FETCH (UID 17 FLAGS (\\Seen $Label1) INTERNALDATE \" 5-Jan-2020 13:04:05 +0100\" BODY[] {5}\r\nab)\"c)";
        let m = parse_fetch(resp, true).unwrap().unwrap();
        assert_eq!(m.seq, 3);
        assert_eq!(m.uid, 17);
        assert_eq!(m.flags, vec!["\\Seen", "$Label1"]);
        assert_eq!(m.body, b"ab)\"c");
        assert_eq!(
            m.internal_date.unwrap().to_rfc3339(),
            "2020-01-05T13:04:05+01:00"
        );
    }

    #[test]
    fn appenduid_code() {
        assert_eq!(appenduid("OK [APPENDUID 38505 3955] done"), Some(3955));
        assert_eq!(appenduid("OK done"), None);
    }

    #[test]
    fn literal_len() {
        assert_eq!(trailing_literal_len(b"* 1 FETCH (BODY[] {123}"), Some(123));
        assert_eq!(trailing_literal_len(b"A APPEND x {7+}"), Some(7));
        assert_eq!(trailing_literal_len(b"* OK {x}"), None);
    }

    #[test]
    fn list_tokens() {
        let toks =
            parse_tokens(b"* LIST (\\HasNoChildren \\Sent) \".\" \"Kunden &- Partner\"").unwrap();
        assert_eq!(toks.len(), 5);
        assert_eq!(toks[4].text(), "Kunden &- Partner");
    }

    #[test]
    fn date_format_roundtrip() {
        let d = parse_internal_date("21-Nov-2026 14:57:46 -0530").unwrap();
        assert_eq!(format_internal_date(&d), "21-Nov-2026 14:57:46 -0530");
    }
}
