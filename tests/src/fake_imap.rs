//! A small IMAP4rev1 server of our own that misbehaves on cue.
//!
//! It holds users → folders → messages in memory and speaks enough IMAP
//! for mailwave's client as a source and as a target (CAPABILITY, LOGIN,
//! AUTHENTICATE PLAIN with an authorization identity, LIST, LSUB, STATUS,
//! SELECT/EXAMINE, UID FETCH, UID SEARCH UID, APPEND with MULTIAPPEND and
//! APPENDUID, UID STORE, CREATE, SUBSCRIBE, NOOP, LOGOUT). Tests read the
//! stored state back and change each user's [`Faults`] while it runs.
//! Real behaviour is Dovecot's business (`dovecot.rs`); this server is for
//! what real servers do only sometimes.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The received date given to messages stored without one.
const DEFAULT_DATE: &str = "01-Jan-2026 00:00:00 +0000";

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub uid: u32,
    pub flags: BTreeSet<String>,
    pub internal_date: String,
    pub body: Vec<u8>,
    pub modseq: u64,
}

/// One folder.
#[derive(Debug, Clone)]
pub struct Folder {
    pub uid_validity: u32,
    pub uid_next: u32,
    pub messages: Vec<StoredMessage>,
}

impl Folder {
    fn new(uid_validity: u32) -> Folder {
        Folder {
            uid_validity,
            uid_next: 1,
            messages: Vec::new(),
        }
    }

    fn highest_modseq(&self) -> u64 {
        self.messages.iter().map(|m| m.modseq).max().unwrap_or(1)
    }
}

/// What one user's connections do wrong, changed by tests at any time.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// FETCH answers for these UIDs leave out INTERNALDATE.
    pub omit_internal_date: HashSet<u32>,
    /// FETCH answers for these UIDs leave out FLAGS.
    pub omit_flags: HashSet<u32>,
    /// FETCH answers for these UIDs leave out RFC822.SIZE.
    pub omit_size: HashSet<u32>,
    /// `BODY[] NIL` for these UIDs.
    pub body_nil: HashSet<u32>,
    /// FETCH answers for these UIDs carry an item no parser knows.
    pub unknown_item: HashSet<u32>,
    /// FETCH answers for these UIDs are an unparsable line.
    pub garbled: HashSet<u32>,
    /// A tagged NO for any UID FETCH of bodies that includes one of these.
    pub refuse_fetch: HashSet<u32>,
    /// Folders listed with an attribute no parser knows (`\Weird(x)`).
    pub weird_list_attribute: HashSet<String>,
    /// An untagged `* NO` with this text before the answer to SELECT/EXAMINE.
    pub untagged_warning: Option<String>,
    /// Sends an unsolicited FETCH with a BODYSTRUCTURE nested this deep
    /// before the answer to each UID FETCH.
    pub nested_bodystructure: Option<usize>,
    /// Answers a UID FETCH of bodies with a literal announcing this many
    /// bytes, then trickles bytes slowly.
    pub huge_literal: Option<u64>,
    /// Closes the connection after storing this many APPENDs (counted
    /// from when it was set), before the tagged OK of the last one.
    pub drop_after_appends: Option<usize>,
    /// Closes the connection after storing every this many APPENDs, before
    /// the tagged OK of each: a target that keeps failing, but not before
    /// it has stored something.
    pub drop_every_appends: Option<usize>,
    /// APPENDs stored so far, for [`Faults::drop_every_appends`].
    appends_since_drop: usize,
    /// Prepends a `Received:` trace header to every message stored.
    pub prepend_received: bool,
    /// Answers every UID FETCH and APPEND with this tagged NO text.
    pub refuse_with: Option<String>,
    /// Text of the tagged NO answering SELECT/EXAMINE (control bytes kept).
    pub select_refusal: Option<String>,
    /// SELECT/EXAMINE answer `[NOMODSEQ]` although STATUS reports a
    /// HIGHESTMODSEQ (Dovecot after an index failure), and a UID FETCH
    /// asking for modseqs gets Dovecot's BAD.
    pub nomodseq_on_select: bool,
    /// Stores no keywords, as Exchange Online's IMAP: SELECT announces
    /// PERMANENTFLAGS without `\*`, APPEND and STORE keep system flags only
    /// and say nothing of the keywords they drop.
    pub no_custom_keywords: bool,
}

/// One user of the server.
#[derive(Debug, Clone, Default)]
pub struct User {
    pub password: String,
    pub folders: BTreeMap<String, Folder>,
    pub subscriptions: BTreeSet<String>,
    pub faults: Faults,
}

/// A command as the server received it (for assertions on what a client sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedCommand {
    pub user: Option<String>,
    /// The selected folder, if any.
    pub folder: Option<String>,
    /// The command line without its tag and without literal data.
    pub line: String,
}

#[derive(Debug, Default)]
struct World {
    users: BTreeMap<String, User>,
    admin: Option<(String, String)>,
    log: Vec<LoggedCommand>,
    next_validity: u32,
}

/// Which extensions the server announces.
#[derive(Debug, Clone)]
pub struct Capabilities {
    pub uidplus: bool,
    pub literal_plus: bool,
    pub multiappend: bool,
    pub condstore: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            uidplus: true,
            literal_plus: true,
            multiappend: true,
            condstore: false,
        }
    }
}

impl Capabilities {
    fn line(&self) -> String {
        let mut caps = vec!["IMAP4rev1", "AUTH=PLAIN"];
        for (on, name) in [
            (self.uidplus, "UIDPLUS"),
            (self.literal_plus, "LITERAL+"),
            (self.multiappend, "MULTIAPPEND"),
            (self.condstore, "CONDSTORE"),
            (self.condstore, "ENABLE"),
        ] {
            if on {
                caps.push(name);
            }
        }
        caps.join(" ")
    }
}

/// A running fake server; it stops when dropped.
pub struct FakeImap {
    addr: SocketAddr,
    world: Arc<Mutex<World>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeImap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeImap {
    /// Starts a server on 127.0.0.1 on a free port, in the current runtime.
    pub async fn start(capabilities: Capabilities) -> FakeImap {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let world = Arc::new(Mutex::new(World {
            next_validity: 1000,
            ..World::default()
        }));
        let shared = world.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let connection = Connection {
                    world: shared.clone(),
                    capabilities: capabilities.clone(),
                    user: None,
                    selected: None,
                };
                tokio::spawn(connection.serve(stream));
            }
        });
        FakeImap { addr, world, task }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().expect("the fake server's state")
    }

    /// Adds a user with an INBOX (UIDVALIDITY given by the server).
    pub fn add_user(&self, name: &str, password: &str) {
        let mut world = self.world();
        let validity = world.take_validity();
        let mut user = User {
            password: password.into(),
            ..User::default()
        };
        user.folders.insert("INBOX".into(), Folder::new(validity));
        user.subscriptions.insert("INBOX".into());
        world.users.insert(name.into(), user);
    }

    /// Lets `admin` log in as any user with AUTHENTICATE PLAIN and an
    /// authorization identity.
    pub fn set_admin(&self, admin: &str, password: &str) {
        self.world().admin = Some((admin.into(), password.into()));
    }

    /// Creates a folder (with the given UIDVALIDITY, or the server's next).
    pub fn create_folder(&self, user: &str, folder: &str, uid_validity: Option<u32>) {
        self.with_user(user, |user, next_validity| {
            let validity = uid_validity.unwrap_or_else(next_validity);
            user.folders.insert(folder.into(), Folder::new(validity));
        });
    }

    /// Stores a message as an APPEND would (faults aside); returns its UID.
    pub fn add_message(&self, user: &str, folder: &str, body: &[u8], flags: &[&str]) -> u32 {
        self.with_user(user, |user, _| {
            let folder = user.folders.get_mut(folder).expect("the folder exists");
            let uid = folder.uid_next;
            folder.uid_next += 1;
            folder.messages.push(StoredMessage {
                uid,
                flags: flags.iter().map(|f| f.to_string()).collect(),
                internal_date: DEFAULT_DATE.into(),
                body: body.to_vec(),
                modseq: 1,
            });
            uid
        })
    }

    /// Replaces the flags of a message (with a new modseq).
    pub fn set_flags(&self, user: &str, folder: &str, uid: u32, flags: &[&str]) {
        self.with_user(user, |user, _| {
            let folder = user.folders.get_mut(folder).expect("the folder exists");
            let modseq = folder.highest_modseq() + 1;
            let message = folder.messages.iter_mut().find(|m| m.uid == uid);
            let message = message.expect("the message exists");
            message.flags = flags.iter().map(|f| f.to_string()).collect();
            message.modseq = modseq;
        });
    }

    /// Subscribes or unsubscribes a folder.
    pub fn set_subscribed(&self, user: &str, folder: &str, subscribed: bool) {
        self.with_user(user, |user, _| {
            if subscribed {
                user.subscriptions.insert(folder.into());
            } else {
                user.subscriptions.remove(folder);
            }
        });
    }

    /// Gives a folder a new UIDVALIDITY and renumbers its messages from
    /// UID 1 (as a server does after losing its index); returns the new one.
    pub fn renumber(&self, user: &str, folder: &str, uid_validity: u32) {
        self.with_user(user, |user, _| {
            let folder = user.folders.get_mut(folder).expect("the folder exists");
            folder.uid_validity = uid_validity;
            for (index, message) in folder.messages.iter_mut().enumerate() {
                message.uid = index as u32 + 1;
            }
            folder.uid_next = folder.messages.len() as u32 + 1;
        });
    }

    /// Replaces a folder by a new one with this UIDVALIDITY holding
    /// `bodies` (someone deleted and re-created it).
    pub fn recreate_folder(&self, user: &str, folder: &str, uid_validity: u32, bodies: &[&[u8]]) {
        self.with_user(user, |user, _| {
            let mut fresh = Folder::new(uid_validity);
            for body in bodies {
                let uid = fresh.uid_next;
                fresh.uid_next += 1;
                fresh.messages.push(StoredMessage {
                    uid,
                    flags: BTreeSet::new(),
                    internal_date: DEFAULT_DATE.into(),
                    body: body.to_vec(),
                    modseq: 1,
                });
            }
            user.folders.insert(folder.into(), fresh);
        });
    }

    /// Changes a user's faults.
    pub fn faults(&self, user: &str, change: impl FnOnce(&mut Faults)) {
        self.with_user(user, |user, _| change(&mut user.faults));
    }

    /// A copy of a user's folders and messages.
    pub fn folders(&self, user: &str) -> BTreeMap<String, Folder> {
        self.with_user(user, |user, _| user.folders.clone())
    }

    /// A user's subscribed folders.
    pub fn subscriptions(&self, user: &str) -> BTreeSet<String> {
        self.with_user(user, |user, _| user.subscriptions.clone())
    }

    /// Every command received so far.
    pub fn command_log(&self) -> Vec<LoggedCommand> {
        self.world().log.clone()
    }

    fn with_user<T>(
        &self,
        user: &str,
        f: impl FnOnce(&mut User, &mut dyn FnMut() -> u32) -> T,
    ) -> T {
        let mut world = self.world();
        let World {
            users,
            next_validity,
            ..
        } = &mut *world;
        let user = users.get_mut(user).expect("the user exists");
        f(user, &mut || {
            *next_validity += 1;
            *next_validity
        })
    }
}

impl World {
    fn take_validity(&mut self) -> u32 {
        self.next_validity += 1;
        self.next_validity
    }
}

/// A piece of a command: an atom, a string (quoted or literal), or a parenthesis.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Atom(String),
    Str(Vec<u8>),
    Open,
    Close,
}

impl Token {
    fn text(&self) -> String {
        match self {
            Token::Atom(a) => a.clone(),
            Token::Str(s) => String::from_utf8_lossy(s).into_owned(),
            Token::Open => "(".into(),
            Token::Close => ")".into(),
        }
    }
}

/// Why a connection ends.
enum Hangup {
    Closed,
    Io,
}

impl From<std::io::Error> for Hangup {
    fn from(_: std::io::Error) -> Self {
        Hangup::Io
    }
}

struct Connection {
    world: Arc<Mutex<World>>,
    capabilities: Capabilities,
    user: Option<String>,
    selected: Option<String>,
}

type Reader = BufReader<tokio::net::tcp::OwnedReadHalf>;

impl Connection {
    async fn serve(mut self, stream: TcpStream) {
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let greeting = format!(
            "* OK [CAPABILITY {}] fake IMAP ready\r\n",
            self.capabilities.line()
        );
        if write.write_all(greeting.as_bytes()).await.is_err() {
            return;
        }
        loop {
            let Ok(Some((tag, tokens, line))) = read_command(&mut reader, &mut write).await else {
                return;
            };
            self.log(&line);
            match self.answer(&tag, &tokens, &mut reader, &mut write).await {
                Ok(()) => {}
                Err(Hangup::Closed | Hangup::Io) => {
                    let _ = write.shutdown().await;
                    return;
                }
            }
        }
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().expect("the fake server's state")
    }

    fn log(&self, line: &str) {
        let entry = LoggedCommand {
            user: self.user.clone(),
            folder: self.selected.clone(),
            line: line.to_string(),
        };
        self.world().log.push(entry);
    }

    fn faults(&self) -> Faults {
        let world = self.world();
        self.user
            .as_ref()
            .and_then(|u| world.users.get(u))
            .map(|u| u.faults.clone())
            .unwrap_or_default()
    }

    async fn answer<W: AsyncWrite + Unpin>(
        &mut self,
        tag: &str,
        tokens: &[Token],
        reader: &mut Reader,
        out: &mut W,
    ) -> Result<(), Hangup> {
        let verb = tokens
            .first()
            .map(Token::text)
            .unwrap_or_default()
            .to_ascii_uppercase();
        let args = tokens.get(1..).unwrap_or_default();
        let reply = match verb.as_str() {
            "CAPABILITY" => format!(
                "* CAPABILITY {}\r\n{tag} OK done\r\n",
                self.capabilities.line()
            ),
            "NOOP" => format!("{tag} OK done\r\n"),
            "LOGOUT" => {
                out.write_all(format!("* BYE bye\r\n{tag} OK done\r\n").as_bytes())
                    .await?;
                return Err(Hangup::Closed);
            }
            "LOGIN" => {
                let user = args.first().map(Token::text).unwrap_or_default();
                let password = args.get(1).map(Token::text).unwrap_or_default();
                self.login(tag, &user, &password, None)
            }
            "AUTHENTICATE" => {
                let payload = match args.get(1) {
                    Some(initial) => initial.text(),
                    None => {
                        out.write_all(b"+ \r\n").await?;
                        out.flush().await?;
                        let mut line = String::new();
                        reader.read_line(&mut line).await?;
                        line.trim_end().to_string()
                    }
                };
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(payload.as_bytes())
                    .unwrap_or_default();
                let parts: Vec<String> = decoded
                    .split(|&b| b == 0)
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect();
                match parts.as_slice() {
                    [authzid, authcid, password] => {
                        let authzid = Some(authzid.as_str()).filter(|a| !a.is_empty());
                        self.login(tag, authcid, password, authzid)
                    }
                    _ => format!("{tag} BAD malformed PLAIN\r\n"),
                }
            }
            "ENABLE" => format!("* ENABLED CONDSTORE\r\n{tag} OK enabled\r\n"),
            _ if self.user.is_none() => format!("{tag} NO log in first\r\n"),
            "LIST" => self.list(tag, args, false),
            "LSUB" => self.list(tag, args, true),
            "STATUS" => self.status(tag, args),
            "SELECT" | "EXAMINE" => self.select(tag, args),
            "CREATE" => self.create(tag, args),
            "SUBSCRIBE" => {
                let name = args.first().map(Token::text).unwrap_or_default();
                let mut world = self.world();
                let user = world
                    .users
                    .get_mut(self.user.as_deref().unwrap_or_default());
                user.expect("logged in").subscriptions.insert(name);
                format!("{tag} OK subscribed\r\n")
            }
            "APPEND" => return self.append(tag, args, out).await,
            "UID" => {
                let sub = args
                    .first()
                    .map(Token::text)
                    .unwrap_or_default()
                    .to_ascii_uppercase();
                let rest = args.get(1..).unwrap_or_default();
                match sub.as_str() {
                    "FETCH" => return self.fetch(tag, rest, out).await,
                    "SEARCH" => self.search(tag, rest),
                    "STORE" => self.store(tag, rest),
                    _ => format!("{tag} BAD unknown UID command\r\n"),
                }
            }
            _ => format!("{tag} BAD unknown command\r\n"),
        };
        out.write_all(reply.as_bytes()).await?;
        out.flush().await?;
        Ok(())
    }

    fn login(&mut self, tag: &str, authcid: &str, password: &str, authzid: Option<&str>) -> String {
        let world = self.world();
        let as_admin = world
            .admin
            .as_ref()
            .is_some_and(|(admin, secret)| admin == authcid && secret == password);
        let user = match authzid {
            Some(authzid) if as_admin || authzid == authcid => authzid,
            Some(_) => return format!("{tag} NO [AUTHORIZATIONFAILED] not allowed\r\n"),
            None => authcid,
        };
        let known = world.users.get(user);
        let allowed = known.is_some_and(|u| as_admin || u.password == password);
        drop(world);
        if !allowed {
            return format!("{tag} NO [AUTHENTICATIONFAILED] wrong credentials\r\n");
        }
        self.user = Some(user.to_string());
        format!(
            "{tag} OK [CAPABILITY {}] logged in\r\n",
            self.capabilities.line()
        )
    }

    fn with_user<T>(&self, f: impl FnOnce(&mut User, &mut u32) -> T) -> T {
        let mut world = self.world();
        let World {
            users,
            next_validity,
            ..
        } = &mut *world;
        let user = users
            .get_mut(self.user.as_deref().unwrap_or_default())
            .expect("logged in");
        f(user, next_validity)
    }

    fn list(&self, tag: &str, args: &[Token], subscribed_only: bool) -> String {
        let pattern = args.get(1).map(Token::text).unwrap_or_default();
        if pattern.is_empty() {
            return format!("* LIST (\\Noselect) \"/\" \"\"\r\n{tag} OK listed\r\n");
        }
        let faults = self.faults();
        let (names, subscriptions) = self.with_user(|user, _| {
            (
                user.folders.keys().cloned().collect::<Vec<_>>(),
                user.subscriptions.clone(),
            )
        });
        let verb = if subscribed_only { "LSUB" } else { "LIST" };
        let mut reply = String::new();
        for name in names {
            if subscribed_only && !subscriptions.contains(&name) {
                continue;
            }
            let attributes = if faults.weird_list_attribute.contains(&name) {
                "\\HasNoChildren \\Weird(x)"
            } else {
                "\\HasNoChildren"
            };
            reply.push_str(&format!(
                "* {verb} ({attributes}) \"/\" {}\r\n",
                quoted(&name)
            ));
        }
        reply.push_str(&format!("{tag} OK listed\r\n"));
        reply
    }

    fn status(&self, tag: &str, args: &[Token]) -> String {
        let name = args.first().map(Token::text).unwrap_or_default();
        let condstore = self.capabilities.condstore;
        self.with_user(|user, _| {
            let Some(folder) = user.folders.get(&name) else {
                return format!("{tag} NO [NONEXISTENT] Mailbox doesn't exist: {name}\r\n");
            };
            let modseq = if condstore {
                format!(" HIGHESTMODSEQ {}", folder.highest_modseq())
            } else {
                String::new()
            };
            format!(
                "* STATUS {} (MESSAGES {} UIDNEXT {} UIDVALIDITY {}{modseq})\r\n{tag} OK status\r\n",
                quoted(&name),
                folder.messages.len(),
                folder.uid_next,
                folder.uid_validity
            )
        })
    }

    fn select(&mut self, tag: &str, args: &[Token]) -> String {
        let name = args.first().map(Token::text).unwrap_or_default();
        self.selected = None;
        let faults = self.faults();
        let warning = faults
            .untagged_warning
            .map(|text| format!("* NO {text}\r\n"))
            .unwrap_or_default();
        if let Some(text) = faults.select_refusal {
            return format!("{warning}{tag} NO {text}\r\n");
        }
        let condstore = self.capabilities.condstore;
        let reply = self.with_user(|user, _| {
            let folder = user.folders.get(&name)?;
            let modseq = if condstore && faults.nomodseq_on_select {
                "* OK [NOMODSEQ] No permanent modsequences\r\n".to_owned()
            } else if condstore {
                format!("* OK [HIGHESTMODSEQ {}] modseq\r\n", folder.highest_modseq())
            } else {
                String::new()
            };
            let new_keywords = if faults.no_custom_keywords { "" } else { " \\*" };
            Some(format!(
                "{warning}* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft{new_keywords})] flags\r\n* {} EXISTS\r\n* OK [UIDVALIDITY {}] uids\r\n* OK [UIDNEXT {}] next\r\n{modseq}{tag} OK selected\r\n",
                folder.messages.len(),
                folder.uid_validity,
                folder.uid_next
            ))
        });
        match reply {
            Some(reply) => {
                self.selected = Some(name);
                reply
            }
            None => format!("{tag} NO [NONEXISTENT] Mailbox doesn't exist: {name}\r\n"),
        }
    }

    fn create(&self, tag: &str, args: &[Token]) -> String {
        let name = args.first().map(Token::text).unwrap_or_default();
        self.with_user(|user, next_validity| {
            if user.folders.contains_key(&name) {
                return format!("{tag} NO [ALREADYEXISTS] Mailbox already exists\r\n");
            }
            *next_validity += 1;
            user.folders.insert(name, Folder::new(*next_validity));
            format!("{tag} OK created\r\n")
        })
    }

    async fn append<W: AsyncWrite + Unpin>(
        &mut self,
        tag: &str,
        args: &[Token],
        out: &mut W,
    ) -> Result<(), Hangup> {
        let faults = self.faults();
        if let Some(text) = &faults.refuse_with {
            out.write_all(format!("{tag} NO {text}\r\n").as_bytes())
                .await?;
            return Ok(());
        }
        let name = args.first().map(Token::text).unwrap_or_default();
        let mut messages = Vec::new();
        let mut flags = BTreeSet::new();
        let mut date = None;
        let mut rest = args.get(1..).unwrap_or_default().iter();
        while let Some(token) = rest.next() {
            match token {
                Token::Open => {
                    for flag in rest.by_ref() {
                        match flag {
                            Token::Close => break,
                            other => {
                                flags.insert(other.text());
                            }
                        }
                    }
                    if faults.no_custom_keywords {
                        flags.retain(|flag| flag.starts_with('\\'));
                    }
                }
                Token::Str(data) if date.is_none() && looks_like_date(data) => {
                    date = Some(String::from_utf8_lossy(data).into_owned());
                }
                Token::Str(data) => {
                    messages.push((std::mem::take(&mut flags), date.take(), data.clone()));
                }
                _ => {}
            }
        }
        let stored = self.with_user(|user, _| {
            let faults = &mut user.faults;
            let drop_now = match faults.drop_after_appends.as_mut() {
                Some(left) => {
                    *left = left.saturating_sub(1);
                    *left == 0
                }
                None => false,
            };
            if drop_now {
                faults.drop_after_appends = None;
            }
            faults.appends_since_drop += 1;
            let drop_now = drop_now
                || faults
                    .drop_every_appends
                    .is_some_and(|every| faults.appends_since_drop % every == 0);
            let prepend = faults.prepend_received;
            let folder = user.folders.get_mut(&name)?;
            let mut uids = Vec::new();
            for (flags, date, mut body) in messages {
                if prepend {
                    let mut traced =
                        b"Received: from fake.example by fake.example; 1 Jan 2026 00:00:00 +0000\r\n"
                            .to_vec();
                    traced.append(&mut body);
                    body = traced;
                }
                let uid = folder.uid_next;
                folder.uid_next += 1;
                folder.messages.push(StoredMessage {
                    uid,
                    flags,
                    internal_date: date.unwrap_or_else(|| DEFAULT_DATE.into()),
                    body,
                    modseq: folder.highest_modseq() + 1,
                });
                uids.push(uid);
            }
            Some((folder.uid_validity, uids, drop_now))
        });
        let Some((validity, uids, drop_now)) = stored else {
            out.write_all(
                format!("{tag} NO [TRYCREATE] Mailbox doesn't exist: {name}\r\n").as_bytes(),
            )
            .await?;
            return Ok(());
        };
        if drop_now {
            return Err(Hangup::Closed);
        }
        let code = if self.capabilities.uidplus {
            let set: Vec<String> = uids.iter().map(u32::to_string).collect();
            format!("[APPENDUID {validity} {}] ", set.join(","))
        } else {
            String::new()
        };
        out.write_all(format!("{tag} OK {code}appended\r\n").as_bytes())
            .await?;
        out.flush().await?;
        Ok(())
    }

    async fn fetch<W: AsyncWrite + Unpin>(
        &mut self,
        tag: &str,
        args: &[Token],
        out: &mut W,
    ) -> Result<(), Hangup> {
        let set = args.first().map(Token::text).unwrap_or_default();
        let items: String = args
            .get(1..)
            .unwrap_or_default()
            .iter()
            .map(Token::text)
            .collect::<Vec<_>>()
            .join(" ")
            .to_ascii_uppercase();
        let changed_since = items
            .split("CHANGEDSINCE ")
            .nth(1)
            .and_then(|n| n.trim_end_matches([')', ' ']).parse::<u64>().ok());
        let want_body = items.contains("BODY.PEEK[]") || items.contains("BODY[]");
        let want_header = items.contains("BODY.PEEK[HEADER]");
        let want_modseq = items.contains("MODSEQ");
        let faults = self.faults();
        if faults.nomodseq_on_select && (want_modseq || changed_since.is_some()) {
            let bad = format!(
                "{tag} BAD Error in IMAP command UID FETCH: FETCH MODSEQ can't be used with non-permanent modseqs\r\n"
            );
            out.write_all(bad.as_bytes()).await?;
            return Ok(());
        }
        let folder_name = self.selected.clone().unwrap_or_default();
        let messages: Vec<StoredMessage> = self.with_user(|user, _| {
            let Some(folder) = user.folders.get(&folder_name) else {
                return Vec::new();
            };
            let last = folder.uid_next.saturating_sub(1);
            folder
                .messages
                .iter()
                .filter(|m| in_set(&set, m.uid, last))
                .filter(|m| changed_since.is_none_or(|since| m.modseq > since))
                .cloned()
                .collect()
        });
        if let Some(depth) = faults.nested_bodystructure {
            let nested = format!(
                "* 1 FETCH (BODYSTRUCTURE {}\"TEXT\" \"PLAIN\" NIL NIL NIL \"7BIT\" 1 1{})\r\n",
                "(".repeat(depth),
                ")".repeat(depth)
            );
            out.write_all(nested.as_bytes()).await?;
        }
        if let Some(text) = &faults.refuse_with {
            out.write_all(format!("{tag} NO {text}\r\n").as_bytes())
                .await?;
            return Ok(());
        }
        if want_body
            && messages
                .iter()
                .any(|m| faults.refuse_fetch.contains(&m.uid))
        {
            out.write_all(format!("{tag} NO The message cannot be read\r\n").as_bytes())
                .await?;
            return Ok(());
        }
        if want_body && let Some(size) = faults.huge_literal {
            let uid = messages.first().map_or(1, |m| m.uid);
            out.write_all(format!("* 1 FETCH (UID {uid} BODY[] {{{size}}}\r\n").as_bytes())
                .await?;
            out.flush().await?;
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0u64;
            while sent < size {
                out.write_all(&chunk).await?;
                out.flush().await?;
                sent += chunk.len() as u64;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            return Err(Hangup::Closed);
        }
        for (index, message) in messages.iter().enumerate() {
            let uid = message.uid;
            if faults.garbled.contains(&uid) {
                out.write_all(
                    format!("* {} FETCH (UID {uid} ((( garbage\r\n", index + 1).as_bytes(),
                )
                .await?;
                continue;
            }
            let mut parts: Vec<Vec<u8>> = vec![format!("UID {uid}").into_bytes()];
            if items.contains("RFC822.SIZE") && !faults.omit_size.contains(&uid) {
                parts.push(format!("RFC822.SIZE {}", message.body.len()).into_bytes());
            }
            if items.contains("FLAGS") && !faults.omit_flags.contains(&uid) {
                let flags: Vec<&str> = message.flags.iter().map(String::as_str).collect();
                parts.push(format!("FLAGS ({})", flags.join(" ")).into_bytes());
            }
            if items.contains("INTERNALDATE") && !faults.omit_internal_date.contains(&uid) {
                parts.push(format!("INTERNALDATE \"{}\"", message.internal_date).into_bytes());
            }
            if want_modseq {
                parts.push(format!("MODSEQ ({})", message.modseq).into_bytes());
            }
            if faults.unknown_item.contains(&uid) {
                parts.push(b"X-MYSTERY (1 2 3)".to_vec());
            }
            if want_body {
                if faults.body_nil.contains(&uid) {
                    parts.push(b"BODY[] NIL".to_vec());
                } else {
                    let mut part = format!("BODY[] {{{}}}\r\n", message.body.len()).into_bytes();
                    part.extend_from_slice(&message.body);
                    parts.push(part);
                }
            }
            if want_header {
                let header = header_block(&message.body);
                let mut part = format!("BODY[HEADER] {{{}}}\r\n", header.len()).into_bytes();
                part.extend_from_slice(header);
                parts.push(part);
            }
            let mut line = format!("* {} FETCH (", index + 1).into_bytes();
            line.extend_from_slice(&parts.join(&b' '));
            line.extend_from_slice(b")\r\n");
            out.write_all(&line).await?;
        }
        out.write_all(format!("{tag} OK fetched\r\n").as_bytes())
            .await?;
        out.flush().await?;
        Ok(())
    }

    fn search(&self, tag: &str, args: &[Token]) -> String {
        let words: Vec<String> = args.iter().map(Token::text).collect();
        let folder_name = self.selected.clone().unwrap_or_default();
        let set = match words.as_slice() {
            [uid, set] if uid.eq_ignore_ascii_case("UID") => set.clone(),
            [all] if all.eq_ignore_ascii_case("ALL") => "1:*".into(),
            _ => return format!("{tag} BAD only UID n and ALL are searched here\r\n"),
        };
        let found: Vec<String> = self.with_user(|user, _| {
            let Some(folder) = user.folders.get(&folder_name) else {
                return Vec::new();
            };
            let last = folder.uid_next.saturating_sub(1);
            folder
                .messages
                .iter()
                .filter(|m| in_set(&set, m.uid, last))
                .map(|m| m.uid.to_string())
                .collect()
        });
        let list = if found.is_empty() {
            String::new()
        } else {
            format!(" {}", found.join(" "))
        };
        format!("* SEARCH{list}\r\n{tag} OK searched\r\n")
    }

    fn store(&self, tag: &str, args: &[Token]) -> String {
        let set = args.first().map(Token::text).unwrap_or_default();
        let no_custom_keywords = self.faults().no_custom_keywords;
        let flags: BTreeSet<String> = args
            .iter()
            .skip(2)
            .filter(|t| !matches!(t, Token::Open | Token::Close))
            .map(Token::text)
            .filter(|flag| !no_custom_keywords || flag.starts_with('\\'))
            .collect();
        let folder_name = self.selected.clone().unwrap_or_default();
        self.with_user(|user, _| {
            let Some(folder) = user.folders.get_mut(&folder_name) else {
                return format!("{tag} NO no folder selected\r\n");
            };
            let last = folder.uid_next.saturating_sub(1);
            let next_modseq = folder.highest_modseq() + 1;
            for message in folder
                .messages
                .iter_mut()
                .filter(|m| in_set(&set, m.uid, last))
            {
                message.flags = flags.clone();
                message.modseq = next_modseq;
            }
            format!("{tag} OK stored\r\n")
        })
    }
}

/// Reads one command: its tag, its tokens and its line without literal data.
async fn read_command<W: AsyncWrite + Unpin>(
    reader: &mut Reader,
    out: &mut W,
) -> Result<Option<(String, Vec<Token>, String)>, Hangup> {
    let mut raw: Vec<u8> = Vec::new();
    let mut shown = String::new();
    let mut literals: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        let trimmed = text.trim_end_matches(['\r', '\n']);
        match literal_header(trimmed) {
            Some((head, len, sync)) => {
                shown.push_str(head);
                shown.push_str(&format!("{{{len}}}"));
                raw.extend_from_slice(head.as_bytes());
                raw.extend_from_slice(format!("\u{0}{}\u{0}", literals.len()).as_bytes());
                if sync {
                    out.write_all(b"+ go ahead\r\n").await?;
                    out.flush().await?;
                }
                let mut data = vec![0; len];
                reader.read_exact(&mut data).await?;
                literals.push(data);
            }
            None => {
                shown.push_str(trimmed);
                raw.extend_from_slice(trimmed.as_bytes());
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (tag, rest) = text.split_once(' ').unwrap_or((&text, ""));
    let shown = shown.split_once(' ').map_or("", |(_, s)| s).to_string();
    Ok(Some((
        tag.to_string(),
        tokenize(rest, &mut literals),
        shown,
    )))
}

/// `(line before the literal, length, synchronizing)` if `line` ends with `{n}` or `{n+}`.
fn literal_header(line: &str) -> Option<(&str, usize, bool)> {
    let head = line.strip_suffix('}')?;
    let open = head.rfind('{')?;
    let digits = &head[open + 1..];
    let (digits, sync) = match digits.strip_suffix('+') {
        Some(d) => (d, false),
        None => (digits, true),
    };
    Some((&line[..open], digits.parse().ok()?, sync))
}

/// Splits a command line; `\0n\0` marks where literal `n` was.
fn tokenize(text: &str, literals: &mut [Vec<u8>]) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' => {
                chars.next();
            }
            '(' => {
                chars.next();
                tokens.push(Token::Open);
            }
            ')' => {
                chars.next();
                tokens.push(Token::Close);
            }
            '"' => {
                chars.next();
                let mut s = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => s.extend(chars.next()),
                        c => s.push(c),
                    }
                }
                tokens.push(Token::Str(s.into_bytes()));
            }
            '\u{0}' => {
                chars.next();
                let index: String = chars.by_ref().take_while(|&c| c != '\u{0}').collect();
                let index: usize = index.parse().unwrap_or_default();
                tokens.push(Token::Str(std::mem::take(&mut literals[index])));
            }
            _ => {
                let mut atom = String::new();
                let mut depth = 0;
                while let Some(&c) = chars.peek() {
                    match c {
                        '[' => depth += 1,
                        ']' => depth -= 1,
                        ' ' | '(' | ')' if depth == 0 => break,
                        _ => {}
                    }
                    atom.push(c);
                    chars.next();
                }
                tokens.push(Token::Atom(atom));
            }
        }
    }
    tokens
}

fn looks_like_date(data: &[u8]) -> bool {
    data.len() >= 20
        && data.len() <= 30
        && data.iter().filter(|&&b| b == b':').count() == 2
        && !data.contains(&b'\n')
}

/// Whether `uid` is in the sequence set `set` (`*` being `last`).
fn in_set(set: &str, uid: u32, last: u32) -> bool {
    let value = |s: &str| if s == "*" { Some(last) } else { s.parse().ok() };
    set.split(',').any(|part| {
        let (a, b) = part.split_once(':').unwrap_or((part, part));
        match (value(a), value(b)) {
            (Some(a), Some(b)) => (a.min(b)..=a.max(b)).contains(&uid),
            _ => false,
        }
    })
}

/// The header block of a message, up to and including the empty line.
fn header_block(body: &[u8]) -> &[u8] {
    match body.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => &body[..at + 4],
        None => body,
    }
}

/// A folder name as an IMAP quoted string.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A small RFC 5322 message with this subject and body text.
pub fn message(subject: &str, text: &str) -> Vec<u8> {
    format!(
        "From: Sender <sender@example.com>\r\nTo: rcpt@example.com\r\nSubject: {subject}\r\nMessage-ID: <{}@example.com>\r\nDate: Thu, 1 Jan 2026 10:00:00 +0000\r\n\r\n{text}\r\n",
        subject.replace(' ', ".")
    )
    .into_bytes()
}
