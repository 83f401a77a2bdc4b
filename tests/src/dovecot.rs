//! Throw-away Dovecot IMAP servers for integration tests.
//!
//! Every [`DovecotServer`] is an independent `dovecot -F` master process with
//! its own generated config, `base_dir`, state, logs, mail tree and port, all
//! inside one temporary directory that is removed on drop. The master runs
//! in its own process group under a tiny shell watchdog, so dropping the
//! server (or the test process dying) takes every Dovecot process with it.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::imap::{Auth, Endpoint, TlsMode};
use crate::mutf7;

/// How long to wait for a new instance to greet.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// System user that owns the mail trees (created if missing when root).
pub const VMAIL_USER: &str = "vmail";

/// A special-use mailbox the server auto-creates (`auto = subscribe`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecialFolder {
    /// Mailbox name (UTF-8, hierarchy written with the server's separator).
    pub name: String,
    /// RFC 6154 attribute, e.g. `\Sent`.
    pub special_use: String,
}

impl SpecialFolder {
    pub fn new(name: &str, special_use: &str) -> Self {
        Self {
            name: name.to_owned(),
            special_use: special_use.to_owned(),
        }
    }

    /// Sent, Drafts, Trash, Junk, Archive.
    pub fn defaults() -> Vec<Self> {
        vec![
            Self::new("Sent", "\\Sent"),
            Self::new("Drafts", "\\Drafts"),
            Self::new("Trash", "\\Trash"),
            Self::new("Junk", "\\Junk"),
            Self::new("Archive", "\\Archive"),
        ]
    }

    /// Outlook/Exchange-style names: "Sent Items", "Deleted Items", ...
    pub fn outlook() -> Vec<Self> {
        vec![
            Self::new("Sent Items", "\\Sent"),
            Self::new("Drafts", "\\Drafts"),
            Self::new("Deleted Items", "\\Trash"),
            Self::new("Junk E-mail", "\\Junk"),
            Self::new("Archive", "\\Archive"),
        ]
    }
}

/// TLS setting of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    /// `ssl = no`: plain port only, no STARTTLS.
    Off,
    /// `ssl = yes`: plain port with STARTTLS plus an implicit-TLS port.
    On,
    /// `ssl = required`: like `On`, but login needs TLS first.
    Required,
}

/// Configuration of one Dovecot instance.
#[derive(Clone, Debug)]
pub struct DovecotOptions {
    /// `(user, password)`; passwords must not contain `:` or newlines.
    pub users: Vec<(String, String)>,
    pub master_user: String,
    pub master_password: String,
    /// Hierarchy separator: `.` (Maildir++) or `/` (`LAYOUT=fs`).
    pub separator: char,
    /// Special-use mailboxes of the inbox namespace (may be empty).
    pub special_folders: Vec<SpecialFolder>,
    pub tls: Tls,
    /// `auth_mechanisms` (default `plain login`); add e.g. `xoauth2`
    /// together with a matching passdb in `extra_config`.
    pub auth_mechanisms: Vec<String>,
    /// Load the listescape plugin so that names containing the storage's
    /// forbidden characters (`/` on a `.` server, `\`, leading `~`) work.
    pub listescape: bool,
    /// `disable_plaintext_auth = no` (default true: LOGIN without TLS ok).
    pub allow_plaintext_auth: bool,
    /// `auth_verbose`, `auth_debug`, `mail_debug`.
    pub debug: bool,
    /// Appended verbatim to the generated config.
    pub extra_config: String,
    /// Adds an `oauth2` passdb (after the passwd-file ones) for XOAUTH2 and
    /// OAUTHBEARER logins that asks this RFC 7662 introspection URL about
    /// the token (`GET`, token appended), e.g. the Graph emulator's
    /// [`introspection_url`](crate::GraphEmulator::introspection_url). The
    /// answer's `username` must be in the login's domain
    /// (`username_format = %d`), so an app-only token is good for every
    /// mailbox of its tenant, as with Exchange Online. OAuth users still
    /// need a `users` entry: it is their userdb.
    pub oauth2_introspection_url: Option<String>,
    /// Users whose mail is an existing Maildir tree rather than one under
    /// the server's own directory (see [`DovecotOptions::serve_maildir`]).
    pub served_maildirs: Vec<ServedMaildir>,
}

/// An existing Maildir tree served as one user's mailbox.
#[derive(Clone, Debug)]
pub struct ServedMaildir {
    pub user: String,
    pub path: PathBuf,
    /// Dovecot's `UTF-8` layout option: folder names in raw UTF-8 on disk.
    pub utf8_names: bool,
}

impl Default for DovecotOptions {
    fn default() -> Self {
        Self {
            users: Vec::new(),
            master_user: "mwadmin".to_owned(),
            master_password: "master-secret".to_owned(),
            separator: '.',
            special_folders: SpecialFolder::defaults(),
            tls: Tls::Off,
            auth_mechanisms: vec!["plain".to_owned(), "login".to_owned()],
            listescape: true,
            allow_plaintext_auth: true,
            debug: false,
            extra_config: String::new(),
            oauth2_introspection_url: None,
            served_maildirs: Vec::new(),
        }
    }
}

impl DovecotOptions {
    /// Adds one user.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.to_owned(), password.to_owned()));
        self
    }

    /// Adds a user whose mailbox is the Maildir tree at `path`, e.g. one
    /// mailwave wrote: the server reads exactly those files (made the mail
    /// owner's, with the directories above made traversable), with
    /// Dovecot's default layout or, with `utf8_names`, its `UTF-8` option.
    pub fn serve_maildir(
        mut self,
        user: &str,
        password: &str,
        path: &Path,
        utf8_names: bool,
    ) -> Self {
        self.served_maildirs.push(ServedMaildir {
            user: user.to_owned(),
            path: path.to_owned(),
            utf8_names,
        });
        self.user(user, password)
    }

    /// Adds `user01..userNN` with password `pw-userNN`.
    pub fn numbered_users(mut self, count: usize) -> Self {
        for i in 1..=count {
            let name = format!("user{i:02}");
            let pw = format!("pw-{name}");
            self.users.push((name, pw));
        }
        self
    }

    pub fn separator(mut self, sep: char) -> Self {
        self.separator = sep;
        self
    }

    pub fn special_folders(mut self, folders: Vec<SpecialFolder>) -> Self {
        self.special_folders = folders;
        self
    }

    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = tls;
        self
    }

    pub fn auth_mechanism(mut self, mech: &str) -> Self {
        self.auth_mechanisms.push(mech.to_owned());
        self
    }

    pub fn extra_config(mut self, text: &str) -> Self {
        self.extra_config.push_str(text);
        self.extra_config.push('\n');
        self
    }

    pub fn debug(mut self, on: bool) -> Self {
        self.debug = on;
        self
    }

    /// Accepts XOAUTH2 and OAUTHBEARER logins validated by token
    /// introspection (see [`DovecotOptions::oauth2_introspection_url`]).
    pub fn oauth2_introspection(mut self, url: &str) -> Self {
        self.oauth2_introspection_url = Some(url.to_owned());
        for mech in ["xoauth2", "oauthbearer"] {
            if !self.auth_mechanisms.iter().any(|m| m == mech) {
                self.auth_mechanisms.push(mech.to_owned());
            }
        }
        self
    }
}

/// The `oauth2` passdb's settings for an introspection endpoint.
fn oauth2_settings(introspection_url: &str, debug: bool) -> String {
    format!(
        "introspection_mode = get\n\
         introspection_url = {introspection_url}\n\
         username_attribute = username\n\
         username_format = %d\n\
         active_attribute = active\n\
         active_value = true\n\
         debug = {}\n",
        if debug { "yes" } else { "no" }
    )
}

/// A running Dovecot instance; killed and deleted on drop.
#[derive(Debug)]
pub struct DovecotServer {
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    port: u16,
    tls_port: Option<u16>,
    options: DovecotOptions,
    mail_root: PathBuf,
    ca_pem: Option<PathBuf>,
    cert_pem: Option<PathBuf>,
    owner: (u32, u32),
}

/// Finds the dovecot binary or fails with install instructions.
pub fn dovecot_binary() -> Result<PathBuf> {
    let mut candidates = vec![PathBuf::from("/usr/sbin/dovecot")];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|p| p.join("dovecot")));
    }
    candidates.into_iter().find(|p| p.is_file()).context(
        "the `dovecot` binary was not found: the mailwave integration tests need a real \
         Dovecot IMAP server. Install it with `apt-get install dovecot-imapd` \
         (Debian/Ubuntu; add a /usr/sbin/policy-rc.d that exits 101 to keep the \
         package from starting a system instance)",
    )
}

/// Returns the uid/gid that owns mail trees: `vmail` (created if needed)
/// when running as root, otherwise the current user.
fn mail_owner() -> Result<(u32, u32, String)> {
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        let user =
            nix::unistd::User::from_uid(euid)?.context("current user has no passwd entry")?;
        return Ok((user.uid.as_raw(), user.gid.as_raw(), user.name));
    }
    for attempt in 0..5 {
        if let Some(u) = nix::unistd::User::from_name(VMAIL_USER)? {
            return Ok((u.uid.as_raw(), u.gid.as_raw(), u.name));
        }
        // Several test processes may race here; useradd fails for all but
        // one of them, and the next lookup sees the user.
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                VMAIL_USER,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(50 * (attempt + 1)));
    }
    bail!("could not create the `{VMAIL_USER}` system user (useradd)")
}

/// Lets every user traverse the directories above `path` (`o+x`), so
/// that the mail processes can reach a tree made elsewhere.
fn grant_traversal(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for dir in path.ancestors().skip(1) {
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o001))
                .with_context(|| format!("chmod o+x {}", dir.display()))?;
        }
    }
    Ok(())
}

/// Recursively chowns a tree (no symlink following).
pub(crate) fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<()> {
    if nix::unistd::geteuid().as_raw() == uid {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))?;
    if path.symlink_metadata()?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a probe port")?;
    Ok(l.local_addr()?.port())
}

fn run_openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .context("running `openssl` (apt-get install openssl)")?;
    ensure!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Creates `ca.pem` and a `server.pem`/`server.key` for localhost and
/// 127.0.0.1 signed by it.
fn make_certs(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("ca.cnf"),
        "[req]\ndistinguished_name = dn\nx509_extensions = v3_ca\nprompt = no\n\
         [dn]\nCN = mailwave test CA\n\
         [v3_ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier = hash\n",
    )?;
    std::fs::write(
        dir.join("leaf.cnf"),
        "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = localhost\n\
         [v3_leaf]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
         extendedKeyUsage = serverAuth\nsubjectAltName = DNS:localhost,IP:127.0.0.1\n\
         authorityKeyIdentifier = keyid\n",
    )?;
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut ca_args = vec![
        "req", "-x509", "-config", "ca.cnf", "-nodes", "-days", "3650",
    ];
    ca_args.extend(ec);
    ca_args.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    run_openssl(dir, &ca_args)?;
    let mut csr_args = vec!["req", "-new", "-config", "leaf.cnf", "-nodes"];
    csr_args.extend(ec);
    csr_args.extend(["-keyout", "server.key", "-out", "server.csr"]);
    run_openssl(dir, &csr_args)?;
    run_openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "3650",
            "-extfile",
            "leaf.cnf",
            "-extensions",
            "v3_leaf",
            "-out",
            "server.pem",
        ],
    )?;
    Ok((
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    ))
}

fn check_user_field(what: &str, s: &str) -> Result<()> {
    ensure!(
        !s.is_empty() && !s.contains([':', '\n', '\r', '\0']),
        "{what} {s:?} cannot go into a passwd-file"
    );
    Ok(())
}

fn conf_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl DovecotServer {
    /// Starts a new instance. Fails (never skips) if Dovecot is missing.
    pub fn start(options: DovecotOptions) -> Result<DovecotServer> {
        let binary = dovecot_binary()?;
        ensure!(
            options.separator == '.' || options.separator == '/',
            "separator must be '.' or '/'"
        );
        for (u, p) in &options.users {
            check_user_field("user", u)?;
            check_user_field("password", p)?;
            ensure!(!u.contains('*'), "user {u:?} must not contain '*'");
        }
        check_user_field("master user", &options.master_user)?;
        check_user_field("master password", &options.master_password)?;
        let (uid, gid, owner_name) = mail_owner()?;

        let mut builder = tempfile::Builder::new();
        builder.prefix("mailwave-dovecot-");
        let dir = match std::env::var_os("MAILWAVE_TEST_TMPDIR") {
            Some(base) => builder.tempdir_in(base),
            None => builder.tempdir(),
        }
        .context("creating the Dovecot temp dir")?;
        let root = dir.path().to_path_buf();
        // The mail processes run as the mail owner and must traverse it.
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let mail_root = root.join("mail");
        for sub in ["run", "state", "etc"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        std::fs::create_dir_all(&mail_root)?;
        std::os::unix::fs::chown(&mail_root, Some(uid), Some(gid))?;

        for served in &options.served_maildirs {
            let path = served
                .path
                .to_str()
                .context("a served Maildir path is UTF-8")?;
            ensure!(
                !path.contains([':', ' ', '\n']),
                "served Maildir path {path:?} cannot go into a passwd-file"
            );
            chown_tree(&served.path, uid, gid)?;
            grant_traversal(&served.path)?;
        }
        let mut users = String::new();
        for (u, p) in &options.users {
            let mail = match options
                .served_maildirs
                .iter()
                .find(|served| &served.user == u)
            {
                Some(served) => format!(
                    "userdb_mail=maildir:{}{}",
                    served.path.display(),
                    if served.utf8_names { ":UTF-8" } else { "" }
                ),
                None => String::new(),
            };
            writeln!(users, "{u}:{{PLAIN}}{p}::::::{mail}")?;
        }
        std::fs::write(root.join("etc/users"), users)?;
        if let Some(url) = &options.oauth2_introspection_url {
            std::fs::write(
                root.join("etc/oauth2.conf.ext"),
                oauth2_settings(url, options.debug),
            )?;
        }
        std::fs::write(
            root.join("etc/masters"),
            format!(
                "{}:{{PLAIN}}{}::::::\n",
                options.master_user, options.master_password
            ),
        )?;

        let (ca_pem, cert_pem, key_pem) = if options.tls == Tls::Off {
            (None, None, None)
        } else {
            let (ca, cert, key) = make_certs(&root.join("tls"))?;
            (Some(ca), Some(cert), Some(key))
        };

        let mut last_err = None;
        for _attempt in 0..4 {
            let port = free_port()?;
            let tls_port = if options.tls == Tls::Off {
                None
            } else {
                Some(free_port()?)
            };
            let conf = Self::config_text(
                &options,
                &root,
                port,
                tls_port,
                cert_pem.as_deref().zip(key_pem.as_deref()),
                uid,
                &owner_name,
            );
            let conf_path = root.join("etc/dovecot.conf");
            std::fs::write(&conf_path, conf)?;
            let mut server = DovecotServer {
                child: None,
                dir: None,
                root: root.clone(),
                port,
                tls_port,
                options: options.clone(),
                mail_root: mail_root.clone(),
                ca_pem: ca_pem.clone(),
                cert_pem: cert_pem.clone(),
                owner: (uid, gid),
            };
            match server.spawn_and_wait(&binary, &conf_path) {
                Ok(()) => {
                    server.dir = Some(dir);
                    return Ok(server);
                }
                Err(e) => {
                    let log = server.log_contents();
                    server.kill();
                    let port_clash = log.contains("Address already in use");
                    last_err = Some(e.context(format!("Dovecot log:\n{log}")));
                    if !port_clash {
                        break;
                    }
                    let _ = std::fs::remove_file(root.join("dovecot.log"));
                    let _ = std::fs::remove_file(root.join("dovecot-info.log"));
                }
            }
        }
        // Keep the directory for post-mortem only if asked to.
        if std::env::var_os("MAILWAVE_KEEP_DOVECOT").is_some() {
            let kept = dir.keep();
            eprintln!("kept failed Dovecot dir {}", kept.display());
        }
        Err(last_err
            .unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
            .context("starting Dovecot"))
    }

    fn config_text(
        o: &DovecotOptions,
        root: &Path,
        port: u16,
        tls_port: Option<u16>,
        cert_key: Option<(&Path, &Path)>,
        uid: u32,
        owner_name: &str,
    ) -> String {
        let r = root.display();
        let layout = if o.separator == '/' { ":LAYOUT=fs" } else { "" };
        let (internal_user, login_user) = if nix::unistd::geteuid().is_root() {
            ("dovecot", "dovenull")
        } else {
            (owner_name, owner_name)
        };
        let mut c = String::new();
        let _ = write!(
            c,
            "# generated by mailwave-tests\n\
             base_dir = {r}/run\n\
             state_dir = {r}/state\n\
             instance_name = mailwave-test-{port}\n\
             listen = 127.0.0.1\n\
             protocols = imap\n\
             log_path = {r}/dovecot.log\n\
             info_log_path = {r}/dovecot-info.log\n\
             debug_log_path = {r}/dovecot-info.log\n\
             default_internal_user = {internal_user}\n\
             default_login_user = {login_user}\n\
             mail_uid = {owner_name}\n\
             mail_gid = {uid_gid}\n\
             first_valid_uid = {uid}\n\
             mail_location = maildir:{r}/mail/%u{layout}\n\
             mail_fsync = never\n\
             imap_max_line_length = 10M\n\
             auth_mechanisms = {mechs}\n\
             auth_master_user_separator = *\n\
             auth_failure_delay = 0\n\
             disable_plaintext_auth = {dpa}\n\
             auth_verbose = {dbg}\n\
             auth_debug = {dbg}\n\
             mail_debug = {dbg}\n\
             protocol imap {{\n  mail_max_userip_connections = 1000\n{plugins}}}\n",
            uid_gid = {
                // mail_gid by number: the group name may differ from the user.
                nix::unistd::User::from_name(owner_name)
                    .ok()
                    .flatten()
                    .map(|u| u.gid.as_raw().to_string())
                    .unwrap_or_else(|| owner_name.to_owned())
            },
            mechs = o.auth_mechanisms.join(" "),
            dpa = if o.allow_plaintext_auth { "no" } else { "yes" },
            dbg = if o.debug { "yes" } else { "no" },
            plugins = if o.listescape {
                "  mail_plugins = $mail_plugins listescape\n"
            } else {
                ""
            },
        );
        match (o.tls, cert_key) {
            (Tls::Off, _) | (_, None) => c.push_str("ssl = no\n"),
            (tls, Some((cert, key))) => {
                let _ = writeln!(
                    c,
                    "ssl = {}\nssl_cert = <{}\nssl_key = <{}",
                    if tls == Tls::Required {
                        "required"
                    } else {
                        "yes"
                    },
                    cert.display(),
                    key.display()
                );
                if Path::new("/usr/share/dovecot/dh.pem").exists() {
                    c.push_str("ssl_dh = </usr/share/dovecot/dh.pem\n");
                }
            }
        }
        let _ = write!(
            c,
            "service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n  inet_listener imaps {{\n    address = 127.0.0.1\n    port = {tp}\n{ssl}  }}\n}}\n",
            tp = tls_port.unwrap_or(0),
            ssl = if tls_port.is_some() {
                "    ssl = yes\n"
            } else {
                ""
            },
        );
        let _ = write!(
            c,
            "passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%u {r}/etc/masters\n  master = yes\n  pass = yes\n}}\n\
             passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%u {r}/etc/users\n}}\n\
             userdb {{\n  driver = passwd-file\n  args = username_format=%u {r}/etc/users\n}}\n"
        );
        if o.oauth2_introspection_url.is_some() {
            let _ = write!(
                c,
                "passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {r}/etc/oauth2.conf.ext\n}}\n"
            );
        }
        let _ = write!(
            c,
            "namespace inbox {{\n  inbox = yes\n  prefix =\n  separator = {}\n",
            o.separator
        );
        for f in &o.special_folders {
            let _ = write!(
                c,
                "  mailbox {} {{\n    special_use = {}\n    auto = subscribe\n  }}\n",
                conf_quote(&f.name),
                f.special_use
            );
        }
        c.push_str("}\n");
        c.push_str(&o.extra_config);
        c.push('\n');
        c
    }

    fn spawn_and_wait(&mut self, binary: &Path, conf: &Path) -> Result<()> {
        let stdout = std::fs::File::create(self.root.join("stdout.log"))?;
        let stderr = stdout.try_clone()?;
        // Watchdog: the shell leads a fresh process group, runs Dovecot in
        // it and kills the whole group once Dovecot or the test process is
        // gone. Drop kills the group directly.
        let script = r#"
"$0" -F -c "$1" &
d=$!
while kill -0 "$2" 2>/dev/null && kill -0 "$d" 2>/dev/null; do sleep 1; done
kill -KILL 0
"#;
        let child = std::os::unix::process::CommandExt::process_group(
            Command::new("sh")
                .arg("-c")
                .arg(script)
                .arg(binary)
                .arg(conf)
                .arg(std::process::id().to_string())
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr),
            0,
        )
        .spawn()
        .context("spawning dovecot")?;
        self.child = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        let addr = self.addr();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("dovecot exited during startup ({status})");
            }
            if self.log_contents().contains("Fatal:") {
                bail!("dovecot reported a fatal error during startup");
            }
            if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).unwrap_or(0);
                let greeting = String::from_utf8_lossy(&buf[..n]);
                if greeting.starts_with("* OK") {
                    let _ = s.write_all(b"x LOGOUT\r\n");
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("dovecot did not greet on {addr} within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(tp) = self.tls_port {
            let a = SocketAddr::from(([127, 0, 0, 1], tp));
            while TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_err() {
                if Instant::now() > deadline {
                    bail!("dovecot imaps port {tp} not accepting");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pgid = Pid::from_raw(child.id() as i32);
            let _ = killpg(pgid, Signal::SIGKILL);
            let _ = child.wait();
            // Killed processes may linger as zombies until init reaps them,
            // which is harmless; wait only until the listeners are gone.
            let deadline = Instant::now() + Duration::from_secs(5);
            let ports = std::iter::once(self.port).chain(self.tls_port);
            for port in ports {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                while Instant::now() < deadline
                    && TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// Stops the server and deletes its directory (same as drop).
    pub fn stop(self) {}

    /// Plain IMAP port (STARTTLS-capable when TLS is on).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Implicit-TLS (imaps) port, when TLS is on.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    /// The temp dir holding config, logs and mail.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// `<dir>/mail`: one Maildir per user below it.
    pub fn mail_root(&self) -> &Path {
        &self.mail_root
    }

    /// Root Maildir of a user (`<mail_root>/<user>`, or the tree it was
    /// given by [`DovecotOptions::serve_maildir`]), i.e. INBOX.
    pub fn user_maildir(&self, user: &str) -> PathBuf {
        match self
            .options
            .served_maildirs
            .iter()
            .find(|served| served.user == user)
        {
            Some(served) => served.path.clone(),
            None => self.mail_root.join(user),
        }
    }

    /// Hierarchy separator (`.` or `/`).
    pub fn separator(&self) -> char {
        self.options.separator
    }

    pub fn options(&self) -> &DovecotOptions {
        &self.options
    }

    pub fn special_folders(&self) -> &[SpecialFolder] {
        &self.options.special_folders
    }

    /// Configured users and passwords.
    pub fn users(&self) -> &[(String, String)] {
        &self.options.users
    }

    /// Password of a configured user.
    pub fn password(&self, user: &str) -> Result<&str> {
        self.options
            .users
            .iter()
            .find(|(u, _)| u == user)
            .map(|(_, p)| p.as_str())
            .with_context(|| format!("no user {user:?} on this server"))
    }

    /// `(master user, master password)`; log in as `user*master` or via
    /// SASL PLAIN with authzid = user.
    pub fn master_credentials(&self) -> (&str, &str) {
        (&self.options.master_user, &self.options.master_password)
    }

    /// uid/gid that owns the mail tree.
    pub fn mail_owner(&self) -> (u32, u32) {
        self.owner
    }

    /// PEM of the CA that signed the server certificate (TLS on only).
    pub fn ca_pem_path(&self) -> Option<&Path> {
        self.ca_pem.as_deref()
    }

    /// PEM of the server certificate itself (TLS on only).
    pub fn cert_pem_path(&self) -> Option<&Path> {
        self.cert_pem.as_deref()
    }

    /// Contents of the Dovecot log files (errors first, then info).
    pub fn log_contents(&self) -> String {
        let mut s = String::new();
        for f in ["dovecot.log", "dovecot-info.log", "stdout.log"] {
            if let Ok(t) = std::fs::read_to_string(self.root.join(f)) {
                let _ = writeln!(s, "== {f} ==\n{t}");
            }
        }
        s
    }

    /// Plain-TCP endpoint logging in as the user with its own password.
    pub fn endpoint(&self, user: &str) -> Result<Endpoint> {
        Ok(self.make_endpoint(Auth::Login {
            user: user.to_owned(),
            password: self.password(user)?.to_owned(),
        }))
    }

    /// Plain-TCP endpoint impersonating `user` with `LOGIN user*master`.
    pub fn master_endpoint(&self, user: &str) -> Endpoint {
        self.make_endpoint(Auth::Login {
            user: format!("{user}*{}", self.options.master_user),
            password: self.options.master_password.clone(),
        })
    }

    /// Plain-TCP endpoint impersonating `user` with SASL PLAIN authzid.
    pub fn master_plain_endpoint(&self, user: &str) -> Endpoint {
        self.make_endpoint(Auth::Plain {
            authzid: Some(user.to_owned()),
            authcid: self.options.master_user.clone(),
            password: self.options.master_password.clone(),
        })
    }

    /// Turns an endpoint of this server into a TLS one (implicit TLS uses
    /// the imaps port). Fails if TLS is off.
    pub fn with_tls(&self, mut endpoint: Endpoint, mode: TlsMode) -> Result<Endpoint> {
        if mode != TlsMode::Plain {
            ensure!(self.options.tls != Tls::Off, "this server has TLS off");
        }
        if mode == TlsMode::Implicit {
            endpoint.port = self.tls_port.context("no imaps port")?;
        }
        endpoint.tls = mode;
        endpoint.ca_pem = self.ca_pem.clone();
        Ok(endpoint)
    }

    fn make_endpoint(&self, auth: Auth) -> Endpoint {
        Endpoint {
            host: "127.0.0.1".to_owned(),
            port: self.port,
            tls: TlsMode::Plain,
            ca_pem: self.ca_pem.clone(),
            tls_server_name: "localhost".to_owned(),
            auth,
        }
    }

    /// On-disk Maildir directory of a folder (UTF-8 name with this server's
    /// separator), following Dovecot's naming: Maildir++ `.a.b` or fs
    /// `a/b`, modified UTF-7, listescape `\NN` escapes.
    pub fn folder_dir(&self, user: &str, folder: &str) -> PathBuf {
        folder_dir(
            &self.user_maildir(user),
            self.options.separator,
            self.options.listescape,
            folder,
        )
    }

    /// Makes Dovecot assign a new UIDVALIDITY to an existing folder while
    /// keeping its messages: deletes the folder's `dovecot-uidlist` and
    /// index files (and the user's mailbox-list index that caches STATUS).
    /// Returns `(old, new)` UIDVALIDITY as seen by STATUS. Call it while no
    /// session has the folder selected.
    pub async fn reset_uidvalidity(&self, user: &str, folder: &str) -> Result<(u32, u32)> {
        let endpoint = self.master_endpoint(user);
        let mut client = endpoint.connect().await?;
        let before = client.status(folder).await?;
        client.logout().await;
        let old = before.uidvalidity.context("STATUS without UIDVALIDITY")?;

        let dir = self.folder_dir(user, folder);
        ensure!(
            dir.join("cur").is_dir(),
            "{} is not a Maildir",
            dir.display()
        );
        let index_dirs = [dir.clone(), self.user_maildir(user)];
        for (i, d) in index_dirs.iter().enumerate() {
            for entry in std::fs::read_dir(d)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let folder_file = i == 0
                    && (name.starts_with("dovecot-uidlist") || name.starts_with("dovecot.index"));
                let list_index = name.starts_with("dovecot.list.index");
                if (folder_file || list_index) && entry.file_type()?.is_file() {
                    std::fs::remove_file(entry.path())?;
                }
            }
        }
        for sub in ["cur", "new"] {
            for entry in std::fs::read_dir(dir.join(sub))? {
                let path = entry?.path();
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                if let Some(stripped) = strip_uid_field(&name) {
                    std::fs::rename(&path, path.with_file_name(stripped))?;
                }
            }
        }

        let mut client = endpoint.connect().await?;
        let after = client.status(folder).await?;
        client.logout().await;
        let new = after.uidvalidity.context("STATUS without UIDVALIDITY")?;
        ensure!(
            new != old,
            "UIDVALIDITY of {folder:?} did not change ({old})"
        );
        ensure!(
            after.messages == before.messages,
            "message count of {folder:?} changed during UIDVALIDITY reset: {:?} -> {:?}",
            before.messages,
            after.messages
        );
        Ok((old, new))
    }
}

impl Drop for DovecotServer {
    fn drop(&mut self) {
        self.kill();
        if std::env::var_os("MAILWAVE_KEEP_DOVECOT").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("kept Dovecot dir {}", dir.keep().display());
        }
    }
}

/// Removes a `,U=<n>` field from a Maildir file name, if present.
fn strip_uid_field(name: &str) -> Option<String> {
    let start = name.find(",U=")?;
    let rest = &name[start + 3..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    Some(format!("{}{}", &name[..start], &rest[end..]))
}

/// Escapes one name component the way Dovecot's listescape plugin stores it.
fn listescape_component(comp: &str, first: bool) -> String {
    let mut out = String::with_capacity(comp.len());
    for (i, ch) in comp.chars().enumerate() {
        match ch {
            '\\' => out.push_str("\\5c"),
            '/' => out.push_str("\\2f"),
            '~' if first && i == 0 => out.push_str("\\7e"),
            _ => out.push(ch),
        }
    }
    out
}

/// See [`DovecotServer::folder_dir`].
pub fn folder_dir(user_root: &Path, separator: char, listescape: bool, folder: &str) -> PathBuf {
    if folder.eq_ignore_ascii_case("INBOX") {
        return user_root.to_path_buf();
    }
    let comps: Vec<String> = folder
        .split(separator)
        .enumerate()
        .map(|(i, c)| {
            let c = if listescape {
                listescape_component(c, i == 0)
            } else {
                c.to_owned()
            };
            mutf7::encode(&c)
        })
        .collect();
    if separator == '/' {
        comps.iter().fold(user_root.to_path_buf(), |p, c| p.join(c))
    } else {
        user_root.join(format!(".{}", comps.join(".")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_dirs() {
        let r = Path::new("/m/u");
        assert_eq!(folder_dir(r, '.', true, "INBOX"), r);
        assert_eq!(
            folder_dir(r, '.', true, "Projecten.Überprüfung"),
            r.join(".Projecten.&ANw-berpr&APw-fung")
        );
        assert_eq!(folder_dir(r, '.', true, "a/b"), r.join(".a\\2fb"));
        assert_eq!(folder_dir(r, '.', true, "~x"), r.join(".\\7ex"));
        assert_eq!(
            folder_dir(r, '/', true, "Archiv/2024/Q1"),
            r.join("Archiv/2024/Q1")
        );
        assert_eq!(folder_dir(r, '/', true, "v1.2"), r.join("v1.2"));
        assert_eq!(
            folder_dir(r, '/', true, "Kunden & Partner"),
            r.join("Kunden &- Partner")
        );
    }

    #[test]
    fn strips_uid() {
        assert_eq!(
            strip_uid_field("123.M1P2.h,S=10,U=7:2,S").as_deref(),
            Some("123.M1P2.h,S=10:2,S")
        );
        assert_eq!(strip_uid_field("123.M1P2.h,S=10:2,S"), None);
    }
}
