//! Deterministic (seeded) generator of realistic mailboxes, and loaders
//! that put a generated corpus into a Dovecot user.
//!
//! The same [`CorpusSpec`] always yields byte-identical messages (the
//! generator uses its own SplitMix64 and blake3's XOF, not `rand`, so the
//! output does not change with dependency upgrades).
//!
//! Loading: [`Corpus::write_maildir`] writes Maildir files directly (fast;
//! Dovecot picks them up on next access) and [`Corpus::append_imap`] uses
//! IMAP APPEND. Either way, the truth for checks is what the server returns
//! over IMAP (see [`crate::verify`]): Dovecot, for instance, serves the
//! bare-LF message with CRLF line endings.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, FixedOffset, TimeZone as _, Utc};

use crate::dovecot::{DovecotServer, SpecialFolder, chown_tree};
use crate::imap::{Client, StoreOp};

/// Size of the forced large message used by the big-message tests.
pub const LARGE_MESSAGE_BYTES: usize = 25 * 1024 * 1024;

/// A weighted band of message sizes (log-uniform between `min` and `max`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeBand {
    pub weight: u32,
    pub min: usize,
    pub max: usize,
}

/// Distribution of message sizes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SizeProfile {
    /// 1–8 KB: fast tests.
    Tiny,
    /// 86 % 2–50 KB, 13 % 100 KB–2 MB, 1 % 2–8 MB (≈130 KB on average).
    Realistic,
    Custom(Vec<SizeBand>),
}

impl SizeProfile {
    fn bands(&self) -> Vec<SizeBand> {
        let b = |weight, min, max| SizeBand { weight, min, max };
        match self {
            SizeProfile::Tiny => vec![b(1, 1_000, 8_000)],
            SizeProfile::Realistic => vec![
                b(86, 2_000, 50_000),
                b(13, 100_000, 2_000_000),
                b(1, 2_000_000, 8_000_000),
            ],
            SizeProfile::Custom(bands) => bands.clone(),
        }
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct CorpusSpec {
    /// How many folders (INBOX first, then special-use folders, then nested,
    /// non-ASCII and hostile names; extra ones are "Ordner NN").
    /// `usize::MAX` (the default) means exactly the built-in list.
    pub folders: usize,
    /// Replaces the built-in folder list (names with `separator`; parents
    /// must be listed before children). INBOX is added if missing.
    pub folder_names: Option<Vec<String>>,
    /// Number of ordinary messages (tricky ones and the large one come on top).
    pub messages: usize,
    pub size_profile: SizeProfile,
    pub seed: u64,
    /// Hierarchy separator of the server the corpus is meant for; decides
    /// which hostile name is used (`a/b` on `.`, `v1.2` on `/`).
    pub separator: char,
    /// Special-use folder names to fill (from the server's options).
    pub special_folders: Vec<SpecialFolder>,
    /// Add one message of exactly this size (e.g. [`LARGE_MESSAGE_BYTES`]).
    pub large_message: Option<usize>,
    /// Add the tricky messages (raw 8-bit headers, bare LF, long line, no
    /// Message-ID, shared Message-ID, byte-identical duplicates, ...).
    pub tricky: bool,
}

impl CorpusSpec {
    /// All folders, 100 realistic messages, tricky ones, `.` separator,
    /// default special folders.
    pub fn new(seed: u64) -> Self {
        Self {
            folders: usize::MAX,
            folder_names: None,
            messages: 100,
            size_profile: SizeProfile::Realistic,
            seed,
            separator: '.',
            special_folders: SpecialFolder::defaults(),
            large_message: None,
            tricky: true,
        }
    }

    /// Like [`CorpusSpec::new`] but with the separator and special folders
    /// of `server`.
    pub fn for_server(server: &DovecotServer, seed: u64) -> Self {
        Self {
            separator: server.separator(),
            special_folders: server.special_folders().to_vec(),
            ..Self::new(seed)
        }
    }

    pub fn messages(mut self, n: usize) -> Self {
        self.messages = n;
        self
    }

    pub fn folders(mut self, n: usize) -> Self {
        self.folders = n;
        self
    }

    pub fn folder_names(mut self, names: Vec<String>) -> Self {
        self.folder_names = Some(names);
        self
    }

    pub fn size_profile(mut self, p: SizeProfile) -> Self {
        self.size_profile = p;
        self
    }

    pub fn large_message(mut self, bytes: Option<usize>) -> Self {
        self.large_message = bytes;
        self
    }

    pub fn tricky(mut self, on: bool) -> Self {
        self.tricky = on;
        self
    }

    /// The same spec with a seed derived for user number `i`.
    pub fn for_user(&self, i: usize) -> Self {
        let mut s = self.clone();
        s.seed = SplitMix(self.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).next();
        s
    }

    /// The folder list this spec produces.
    pub fn folder_list(&self) -> Vec<String> {
        let sep = self.separator.to_string();
        let mut names: Vec<String> = match &self.folder_names {
            Some(n) => n.clone(),
            None => {
                let mut v = vec!["INBOX".to_owned()];
                v.extend(self.special_folders.iter().map(|f| f.name.clone()));
                let nested: [&[&str]; 13] = [
                    &["Projecten"],
                    &["Projecten", "Überprüfung"],
                    &["Archiv"],
                    &["Archiv", "2024"],
                    &["Archiv", "2024", "Q1"],
                    &["Kunden & Partner"],
                    // Contains the other server's separator.
                    &[if self.separator == '.' { "a/b" } else { "v1.2" }],
                    &["INBOX", "Rechnungen"],
                    &["日本語"],
                    &["Émoji 📧 Post"],
                    &["Ελληνικά"],
                    &["Ελληνικά", "Σημαντικά"],
                    &["Listen", "dev", "rust-lang"],
                ];
                for comps in nested {
                    // Make sure all parents exist as real folders.
                    for depth in 1..=comps.len() {
                        let name = comps[..depth].join(&sep);
                        if !v.contains(&name) {
                            v.push(name);
                        }
                    }
                }
                if self.folders != usize::MAX {
                    let want = self.folders.max(1);
                    for i in 1.. {
                        if v.len() >= want {
                            break;
                        }
                        v.push(format!("Ordner {i:02}"));
                    }
                    v.truncate(want);
                }
                v
            }
        };
        if !names.iter().any(|n| n.eq_ignore_ascii_case("INBOX")) {
            names.insert(0, "INBOX".to_owned());
        }
        names
    }

    /// Generates the corpus.
    pub fn generate(&self) -> Corpus {
        Generator::new(self).run()
    }
}

/// One generated message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorpusMessage {
    /// UTF-8 folder name (server separator).
    pub folder: String,
    pub raw: Vec<u8>,
    /// IMAP flags and keywords, e.g. `\Seen`, `$Label1`.
    pub flags: Vec<String>,
    pub internal_date: DateTime<FixedOffset>,
    /// What kind of message it is (`plain`, `bare-lf`, `duplicate`, ...).
    pub kind: String,
}

/// A generated mailbox set for one user.
#[derive(Clone, Debug)]
pub struct Corpus {
    pub separator: char,
    /// Folders in creation order (parents before children).
    pub folders: Vec<String>,
    pub messages: Vec<CorpusMessage>,
}

/// Timing and volume of a load.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadStats {
    pub messages: usize,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Deterministic 64-bit generator (SplitMix64).
#[derive(Clone, Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }

    fn log_uniform(&mut self, min: usize, max: usize) -> usize {
        let (lo, hi) = ((min.max(1)) as f64, (max.max(min + 1)) as f64);
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (lo * (hi / lo).powf(u)) as usize
    }
}

const FIRST: &[&str] = &[
    "Anna", "Jürgen", "Søren", "Chloé", "Pieter", "Zoë", "Marta", "Łukasz", "Kenji", "Ines",
    "Björn", "Fatima", "Oğuz", "Noor", "Dmitri", "Elena",
];
const LAST: &[&str] = &[
    "Müller", "de Vries", "García", "Nowak", "Janssen", "O'Brien", "Schäfer", "Tanaka", "Rossi",
    "Dubois", "Kowalski", "Öztürk",
];
const DOMAINS: &[&str] = &[
    "example.com",
    "example.org",
    "beispiel.de",
    "voorbeeld.nl",
    "firma.example",
    "lists.example.net",
];
const WORDS: &[&str] = &[
    "Angebot",
    "meeting",
    "Rechnung",
    "offerte",
    "Überprüfung",
    "project",
    "planning",
    "Größe",
    "budget",
    "vergadering",
    "deadline",
    "Änderung",
    "report",
    "quarterly",
    "café",
    "naïve",
    "résumé",
    "Straße",
    "contract",
    "invoice",
    "Termin",
    "status",
    "update",
    "release",
    "übermorgen",
    "klant",
    "Kunde",
    "follow-up",
    "draft",
    "kwartaal",
];
const KEYWORDS: &[&str] = &[
    "$Label1",
    "$Label2",
    "Work",
    "$Forwarded",
    "$MDNSent",
    "NonJunk",
];
/// Offsets in minutes east of UTC.
const ZONES: &[i32] = &[0, 60, 120, -300, -480, 330, 540, 600, -180, 345, -420, 780];

struct Generator<'a> {
    spec: &'a CorpusSpec,
    rng: SplitMix,
    folders: Vec<String>,
    counter: u64,
}

impl<'a> Generator<'a> {
    fn new(spec: &'a CorpusSpec) -> Self {
        Self {
            spec,
            rng: SplitMix(spec.seed),
            folders: spec.folder_list(),
            counter: 0,
        }
    }

    fn special(&self, use_: &str) -> Option<String> {
        self.spec
            .special_folders
            .iter()
            .find(|f| f.special_use.eq_ignore_ascii_case(use_))
            .map(|f| f.name.clone())
            .filter(|n| self.folders.contains(n))
    }

    /// A folder from the list, or INBOX if the list lacks it.
    fn folder_or_inbox(&self, name: &str) -> String {
        let sep = self.spec.separator.to_string();
        let name = name.replace('/', &sep);
        if self.folders.contains(&name) {
            name
        } else {
            "INBOX".to_owned()
        }
    }

    fn run(mut self) -> Corpus {
        let mut messages = Vec::new();
        if self.spec.tricky {
            self.tricky(&mut messages);
        }
        if let Some(size) = self.spec.large_message {
            let folder = self.folder_or_inbox("Archiv/2024/Q1");
            let mut m = self.message(&folder, size, "large");
            m.raw = fit_to_size(m.raw, size);
            messages.push(m);
        }
        let bands = self.spec.size_profile.bands();
        let total_weight: u64 = bands
            .iter()
            .map(|b| u64::from(b.weight))
            .sum::<u64>()
            .max(1);
        for _ in 0..self.spec.messages {
            let folder = self.pick_folder();
            let mut r = self.rng.next() % total_weight;
            let band = bands
                .iter()
                .find(|b| {
                    let w = u64::from(b.weight);
                    if r < w {
                        true
                    } else {
                        r -= w;
                        false
                    }
                })
                .unwrap_or(&bands[0]);
            let size = self.rng.log_uniform(band.min, band.max);
            messages.push(self.message(&folder, size, "plain"));
        }
        Corpus {
            separator: self.spec.separator,
            folders: self.folders,
            messages,
        }
    }

    fn pick_folder(&mut self) -> String {
        let n = self.folders.len() as u64;
        let roll = self.rng.next() % 100;
        if roll < 30 || n == 1 {
            return "INBOX".to_owned();
        }
        if roll < 45
            && let Some(sent) = self.special("\\Sent")
        {
            return sent;
        }
        let i = self.rng.range(0, n - 1) as usize;
        self.folders[i].clone()
    }

    fn date(&mut self) -> DateTime<FixedOffset> {
        // 2003-01-01 .. 2025-06-30
        let secs = self.rng.range(1_041_379_200, 1_751_241_600) as i64;
        let zone = *self.rng.pick(ZONES);
        let tz = FixedOffset::east_opt(zone * 60).expect("zone table holds valid offsets");
        Utc.timestamp_opt(secs, 0)
            .single()
            .unwrap_or_default()
            .with_timezone(&tz)
    }

    fn flags_for(&mut self, folder: &str) -> Vec<String> {
        let mut f = Vec::new();
        let is = |u: &str, g: &Self| g.special(u).as_deref() == Some(folder);
        let (seen, deleted) = if is("\\Sent", self) {
            (100, 0)
        } else if is("\\Trash", self) {
            (95, 30)
        } else if folder == "INBOX" {
            (60, 2)
        } else {
            (90, 1)
        };
        if self.rng.chance(seen) {
            f.push("\\Seen".to_owned());
        }
        if self.rng.chance(12) {
            f.push("\\Answered".to_owned());
        }
        if self.rng.chance(8) {
            f.push("\\Flagged".to_owned());
        }
        if is("\\Drafts", self) {
            f.push("\\Draft".to_owned());
        }
        if self.rng.chance(deleted) {
            f.push("\\Deleted".to_owned());
        }
        for kw in KEYWORDS {
            if self.rng.chance(5) {
                f.push((*kw).to_owned());
            }
        }
        f
    }

    fn person(&mut self) -> (String, String) {
        let first = *self.rng.pick(FIRST);
        let last = *self.rng.pick(LAST);
        let domain = *self.rng.pick(DOMAINS);
        let local: String = format!("{first}.{last}")
            .chars()
            .filter_map(|c| match c {
                'a'..='z' | 'A'..='Z' | '.' => Some(c.to_ascii_lowercase()),
                ' ' | '\'' => None,
                _ => Some('x'),
            })
            .collect();
        (format!("{first} {last}"), format!("{local}@{domain}"))
    }

    fn words(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| *self.rng.pick(WORDS))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn text_body(&mut self, approx: usize) -> String {
        let mut s = String::new();
        while s.len() < approx {
            let n = self.rng.range(6, 12) as usize;
            let mut line = self.words(n);
            if let Some(first) = line.get(..1) {
                line = first.to_uppercase() + &line[1..];
            }
            line.push('.');
            s.push_str(&line);
            s.push_str("\r\n");
            if self.rng.chance(15) {
                s.push_str("\r\n");
            }
        }
        s
    }

    fn encode_phrase(&mut self, text: &str) -> String {
        if text.is_ascii() {
            return text.to_owned();
        }
        if self.rng.chance(50) {
            format!("=?UTF-8?B?{}?=", B64.encode(text))
        } else {
            let mut q = String::from("=?UTF-8?Q?");
            for b in text.bytes() {
                match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => q.push(b as char),
                    b' ' => q.push('_'),
                    _ => {
                        let _ = write!(q, "={b:02X}");
                    }
                }
            }
            q.push_str("?=");
            q
        }
    }

    /// Fresh random-looking bytes (blake3 XOF of seed and counter).
    fn blob(&mut self, len: usize) -> Vec<u8> {
        self.counter += 1;
        let mut h = blake3::Hasher::new();
        h.update(&self.spec.seed.to_le_bytes());
        h.update(&self.counter.to_le_bytes());
        let mut out = vec![0u8; len];
        h.finalize_xof().fill(&mut out);
        out
    }

    fn message_id(&mut self) -> String {
        let a = self.rng.next();
        let domain = *self.rng.pick(DOMAINS);
        format!("<{a:016x}.{}@{domain}>", self.counter)
    }

    /// A complete message of roughly `size` bytes.
    fn message(&mut self, folder: &str, size: usize, kind: &str) -> CorpusMessage {
        let internal_date = self.date();
        let sent = internal_date - chrono::Duration::seconds(self.rng.range(3, 900) as i64);
        let sender_zone = *self.rng.pick(ZONES);
        let sent = sent.with_timezone(
            &FixedOffset::east_opt(sender_zone * 60).unwrap_or(*internal_date.offset()),
        );
        let (from_name, from_addr) = self.person();
        let (to_name, to_addr) = self.person();
        let n = self.rng.range(3, 8) as usize;
        let subject_text = {
            let w = self.words(n);
            let prefix = *self.rng.pick(&["", "", "Re: ", "AW: ", "Fwd: ", "WG: "]);
            format!("{prefix}{w}")
        };
        let subject = self.encode_phrase(&subject_text);
        let from_phrase = self.encode_phrase(&from_name);
        let to_phrase = self.encode_phrase(&to_name);
        let mid = self.message_id();
        let mx = self.rng.range(1, 250);
        let mut h = String::new();
        let _ = write!(
            h,
            "Return-Path: <{from_addr}>\r\n\
             Received: from mx{mx}.example.net (mx{mx}.example.net [192.0.2.{mx}])\r\n\
             \tby mail.example.org (Postfix) with ESMTPS id {id:X}\r\n\
             \tfor <{to_addr}>; {rdate}\r\n\
             From: \"{from_phrase}\" <{from_addr}>\r\n\
             To: \"{to_phrase}\" <{to_addr}>\r\n\
             Subject: {subject}\r\n\
             Date: {date}\r\n\
             Message-ID: {mid}\r\n\
             MIME-Version: 1.0\r\n\
             X-Mailer: mailwave-corpus/1\r\n",
            id = self.rng.next() & 0xFFFF_FFFF,
            rdate = internal_date.to_rfc2822(),
            date = sent.to_rfc2822(),
        );
        let text_len = size.saturating_sub(h.len() + 200).clamp(40, 6_000);
        let text = self.text_body(text_len);
        let remaining = size.saturating_sub(h.len() + text.len() + 400);
        let mut raw = h.into_bytes();
        if remaining < 600 {
            raw.extend_from_slice(
                b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
            );
            raw.extend_from_slice(text.as_bytes());
        } else {
            let boundary = format!("=_mw_{:016x}", self.rng.next());
            raw.extend_from_slice(
                format!(
                    "Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n\
                     This is a multi-part message in MIME format.\r\n\r\n\
                     --{boundary}\r\n\
                     Content-Type: text/plain; charset=utf-8\r\n\
                     Content-Transfer-Encoding: 8bit\r\n\r\n"
                )
                .as_bytes(),
            );
            raw.extend_from_slice(text.as_bytes());
            let (ctype, name) = *self.rng.pick(&[
                ("application/pdf", "Angebot_2024.pdf"),
                ("image/jpeg", "IMG_4711.jpg"),
                ("application/zip", "bijlagen.zip"),
                (
                    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                    "Übersicht Q1.xlsx",
                ),
                ("application/octet-stream", "data.bin"),
            ]);
            let disposition = if name.is_ascii() {
                format!("attachment; filename=\"{name}\"")
            } else {
                let enc: String = name
                    .bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect();
                format!("attachment; filename*=UTF-8''{enc}")
            };
            // base64 with CRLF every 76 chars: 78/76 * 4/3 of the payload.
            let payload = remaining * 76 / 78 * 3 / 4;
            let blob = self.blob(payload);
            let encoded = B64.encode(&blob);
            raw.extend_from_slice(
                format!(
                    "\r\n--{boundary}\r\nContent-Type: {ctype}; name=\"{name}\"\r\n\
                     Content-Transfer-Encoding: base64\r\n\
                     Content-Disposition: {disposition}\r\n\r\n"
                )
                .as_bytes(),
            );
            raw.reserve(encoded.len() + encoded.len() / 38 + 64);
            for line in encoded.as_bytes().chunks(76) {
                raw.extend_from_slice(line);
                raw.extend_from_slice(b"\r\n");
            }
            raw.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        }
        let flags = self.flags_for(folder);
        CorpusMessage {
            folder: folder.to_owned(),
            raw,
            flags,
            internal_date,
            kind: kind.to_owned(),
        }
    }

    fn tricky(&mut self, out: &mut Vec<CorpusMessage>) {
        let inbox = "INBOX".to_owned();
        let date = |g: &mut Self| g.date();

        // Raw 8-bit UTF-8 in headers (no RFC 2047).
        let d = date(self);
        let raw = format!(
            "From: Jürgen Müller <juergen@beispiel.de>\r\n\
             To: Zoë Janssen <zoe@voorbeeld.nl>\r\n\
             Subject: Grüße aus Köln – Überprüfung der Änderungen ✓\r\n\
             Date: {}\r\nMessage-ID: <utf8-headers.{}@beispiel.de>\r\n\
             MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\n\r\n\
             Hallo Zoë,\r\n\r\nanbei die Übersicht. Größe: 5 m², Preis: 12 €.\r\n",
            d.to_rfc2822(),
            self.spec.seed
        );
        out.push(self.fixed(&inbox, raw.into_bytes(), d, vec!["\\Seen"], "utf8-headers"));

        // Bare LF line endings throughout.
        let d = date(self);
        let folder = self.folder_or_inbox("Projecten/Überprüfung");
        let raw = format!(
            "From: unix@example.com\nTo: someone@example.org\nSubject: bare LF line endings\n\
             Date: {}\nMessage-ID: <bare-lf.{}@example.com>\n\n\
             This message was stored with bare LF.\nSecond line.\n\nLast line.\n",
            d.to_rfc2822(),
            self.spec.seed
        );
        out.push(self.fixed(&folder, raw.into_bytes(), d, vec![], "bare-lf"));

        // A 10,000-character line.
        let d = date(self);
        let folder = self.folder_or_inbox("Archiv/2024/Q1");
        let long: String = (0..10_000)
            .map(|i| (b'a' + (i % 26) as u8) as char)
            .collect();
        let raw = format!(
            "From: long@example.com\r\nTo: someone@example.org\r\nSubject: a very long line\r\n\
             Date: {}\r\nMessage-ID: <long-line.{}@example.com>\r\n\r\n{long}\r\nend\r\n",
            d.to_rfc2822(),
            self.spec.seed
        );
        out.push(self.fixed(
            &folder,
            raw.into_bytes(),
            d,
            vec!["\\Seen", "\\Flagged"],
            "long-line",
        ));

        // No Message-ID at all.
        let d = date(self);
        let folder = self.folder_or_inbox("Kunden & Partner");
        let raw = format!(
            "From: nomid@example.com\r\nTo: someone@example.org\r\nSubject: no message id\r\n\
             Date: {}\r\n\r\nThis message has no Message-ID header.\r\n",
            d.to_rfc2822()
        );
        out.push(self.fixed(
            &folder,
            raw.into_bytes(),
            d,
            vec!["\\Seen", "Work"],
            "no-message-id",
        ));

        // Two different messages sharing one Message-ID, same folder.
        let shared = format!("<shared.{}@example.com>", self.spec.seed);
        for (i, body) in ["First version of the text.", "Second, different text."]
            .iter()
            .enumerate()
        {
            let d = date(self);
            let raw = format!(
                "From: dup@example.com\r\nTo: someone@example.org\r\nSubject: shared id {i}\r\n\
                 Date: {}\r\nMessage-ID: {shared}\r\n\r\n{body}\r\n",
                d.to_rfc2822()
            );
            out.push(self.fixed(&inbox, raw.into_bytes(), d, vec![], "shared-message-id"));
        }

        // Byte-identical duplicates in one folder (delivered twice).
        let d = date(self);
        let raw = format!(
            "From: twice@example.com\r\nTo: someone@example.org\r\nSubject: delivered twice\r\n\
             Date: {}\r\nMessage-ID: <twice.{}@example.com>\r\n\r\nSame bytes, two copies.\r\n",
            d.to_rfc2822(),
            self.spec.seed
        );
        let raw = raw.into_bytes();
        out.push(self.fixed(&inbox, raw.clone(), d, vec!["\\Seen"], "duplicate"));
        let d2 = d + chrono::Duration::seconds(61);
        out.push(self.fixed(&inbox, raw, d2, vec!["\\Seen"], "duplicate"));

        // \Deleted but not expunged, with keywords.
        let trash = self.special("\\Trash").unwrap_or_else(|| inbox.clone());
        let mut m = self.message(&trash, 3_000, "deleted-not-expunged");
        m.flags = vec!["\\Seen".into(), "\\Deleted".into(), "$Label1".into()];
        out.push(m);

        // All system flags except \Deleted plus custom keywords.
        let mut m = self.message(&inbox, 4_000, "keywords");
        m.flags = vec![
            "\\Seen".into(),
            "\\Answered".into(),
            "\\Flagged".into(),
            "$Label1".into(),
            "Work".into(),
            "$Forwarded".into(),
        ];
        out.push(m);

        // A draft.
        if let Some(drafts) = self.special("\\Drafts") {
            let mut m = self.message(&drafts, 2_000, "draft");
            m.flags = vec!["\\Draft".into(), "\\Seen".into()];
            out.push(m);
        }

        // No final newline; headers-only message.
        let d = date(self);
        let raw = format!(
            "From: nonl@example.com\r\nSubject: no final newline\r\nDate: {}\r\n\r\nends here",
            d.to_rfc2822()
        );
        out.push(self.fixed(&inbox, raw.into_bytes(), d, vec![], "no-final-newline"));
        let d = date(self);
        let raw = format!(
            "From: empty@example.com\r\nSubject: empty body\r\nDate: {}\r\n\r\n",
            d.to_rfc2822()
        );
        out.push(self.fixed(&inbox, raw.into_bytes(), d, vec!["\\Seen"], "empty-body"));

        // A forwarded message as message/rfc822 with nested multipart.
        let inner = self.message("INBOX", 5_000, "inner");
        let d = date(self);
        let mut raw = format!(
            "From: fwd@example.com\r\nTo: someone@example.org\r\nSubject: Fwd: nested\r\n\
             Date: {}\r\nMessage-ID: <nested.{}@example.com>\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n--outer\r\n\
             Content-Type: text/plain\r\n\r\nSee attached.\r\n--outer\r\n\
             Content-Type: message/rfc822\r\n\r\n",
            d.to_rfc2822(),
            self.spec.seed
        )
        .into_bytes();
        raw.extend_from_slice(&inner.raw);
        raw.extend_from_slice(b"\r\n--outer--\r\n");
        out.push(self.fixed(
            &inbox,
            raw,
            d,
            vec!["\\Seen", "$Forwarded"],
            "message-rfc822",
        ));
    }

    fn fixed(
        &mut self,
        folder: &str,
        raw: Vec<u8>,
        internal_date: DateTime<FixedOffset>,
        flags: Vec<&str>,
        kind: &str,
    ) -> CorpusMessage {
        CorpusMessage {
            folder: folder.to_owned(),
            raw,
            flags: flags.into_iter().map(str::to_owned).collect(),
            internal_date,
            kind: kind.to_owned(),
        }
    }
}

/// Pads (with a trailing text part line) or trims base64 lines so the
/// message is exactly `size` bytes, keeping it well-formed.
fn fit_to_size(mut raw: Vec<u8>, size: usize) -> Vec<u8> {
    let trailer_start = raw
        .windows(4)
        .rposition(|w| w == b"\r\n--")
        .unwrap_or(raw.len());
    let trailer = raw.split_off(trailer_start);
    // `raw` now ends with "...base64\r\n" lines.
    while raw.len() + trailer.len() > size && raw.len() > 80 {
        raw.truncate(raw.len() - 2);
        let cut = raw.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
        raw.truncate(cut);
    }
    let missing = size.saturating_sub(raw.len() + trailer.len());
    if missing > 0 {
        // Extra base64 line(s) of 'A's, 4-char groups, ended by CRLF.
        let mut left = missing;
        while left > 0 {
            let line_len = left.saturating_sub(2).min(76);
            if line_len == 0 {
                // Only 1–2 bytes to spare: make the previous line longer.
                raw.truncate(raw.len() - 2);
                raw.extend(std::iter::repeat_n(b'A', left));
                raw.extend_from_slice(b"\r\n");
                break;
            }
            raw.extend(std::iter::repeat_n(b'A', line_len));
            raw.extend_from_slice(b"\r\n");
            left -= line_len + 2;
        }
    }
    raw.extend_from_slice(&trailer);
    raw
}

fn maildir_flag_letters(flags: &[String], keyword_index: &BTreeMap<String, usize>) -> String {
    let mut letters: Vec<char> = Vec::new();
    for f in flags {
        let c = match f.to_ascii_lowercase().as_str() {
            "\\draft" => Some('D'),
            "\\flagged" => Some('F'),
            "\\answered" => Some('R'),
            "\\seen" => Some('S'),
            "\\deleted" => Some('T'),
            _ => keyword_index.get(f).map(|i| (b'a' + *i as u8) as char),
        };
        letters.extend(c);
    }
    letters.sort_unstable();
    letters.dedup();
    letters.into_iter().collect()
}

impl Corpus {
    /// Total raw bytes.
    pub fn total_bytes(&self) -> u64 {
        self.messages.iter().map(|m| m.raw.len() as u64).sum()
    }

    /// Number of messages per folder.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut c: BTreeMap<String, usize> = self.folders.iter().map(|f| (f.clone(), 0)).collect();
        for m in &self.messages {
            *c.entry(m.folder.clone()).or_default() += 1;
        }
        c
    }

    /// All keywords used.
    pub fn keywords(&self) -> BTreeSet<String> {
        self.messages
            .iter()
            .flat_map(|m| m.flags.iter())
            .filter(|f| !f.starts_with('\\'))
            .cloned()
            .collect()
    }

    /// Messages of one kind (`plain`, `bare-lf`, `duplicate`, `large`, ...).
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a CorpusMessage> + 'a {
        self.messages.iter().filter(move |m| m.kind == kind)
    }

    /// Writes the corpus as Maildir files into `user`'s tree on `server`
    /// (Dovecot's directory naming, flags in the `:2,` suffix, keywords in
    /// `dovecot-keywords`, mtime = internal date, `,S=<size>`). Best done
    /// before the user's first login; existing folders get extra messages.
    /// Drops the user's mailbox-list index so Dovecot rescans the tree.
    pub fn write_maildir(&self, server: &DovecotServer, user: &str) -> Result<LoadStats> {
        ensure!(
            self.separator == server.separator(),
            "corpus made for separator {:?}, server uses {:?}",
            self.separator,
            server.separator()
        );
        server.password(user)?;
        let start = Instant::now();
        let root = server.user_maildir(user);
        let mut stats = LoadStats::default();
        let mut folder_keywords: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
        for folder in &self.folders {
            let dir = server.folder_dir(user, folder);
            for sub in ["cur", "new", "tmp"] {
                std::fs::create_dir_all(dir.join(sub))
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            if dir != root && server.separator() == '.' {
                std::fs::write(dir.join("maildirfolder"), b"")?;
            }
            // Keywords already known to Dovecot keep their letters.
            let mut index = read_dovecot_keywords(&dir)?;
            let mut changed = false;
            for m in self.messages.iter().filter(|m| &m.folder == folder) {
                for f in m.flags.iter().filter(|f| !f.starts_with('\\')) {
                    if !index.contains_key(f) {
                        let next = index.len();
                        ensure!(next < 26, "more than 26 keywords in {folder:?}");
                        index.insert(f.clone(), next);
                        changed = true;
                    }
                }
            }
            if changed {
                let mut by_num: Vec<(&usize, &String)> =
                    index.iter().map(|(k, v)| (v, k)).collect();
                by_num.sort();
                let text: String = by_num.iter().map(|(n, k)| format!("{n} {k}\n")).collect();
                std::fs::write(dir.join("dovecot-keywords"), text)?;
            }
            folder_keywords.insert(folder.as_str(), index);
        }
        let pid = std::process::id();
        let tag = SplitMix(self.messages.len() as u64 ^ u64::from(pid)).next() & 0xFFFF_FFFF;
        for (i, m) in self.messages.iter().enumerate() {
            let Some(index) = folder_keywords.get(m.folder.as_str()) else {
                bail!("message in unknown folder {:?}", m.folder);
            };
            let dir = server.folder_dir(user, &m.folder);
            let letters = maildir_flag_letters(&m.flags, index);
            let secs = m.internal_date.timestamp();
            let name = format!(
                "{secs}.M{i:06}P{pid}V{tag:08x}.mailwave-corpus,S={}:2,{letters}",
                m.raw.len()
            );
            let path = dir.join("cur").join(&name);
            let tmp = dir.join("tmp").join(&name);
            std::fs::write(&tmp, &m.raw).with_context(|| format!("writing {}", tmp.display()))?;
            let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
            let file = std::fs::OpenOptions::new().write(true).open(&tmp)?;
            file.set_times(
                std::fs::FileTimes::new()
                    .set_modified(mtime)
                    .set_accessed(mtime),
            )?;
            drop(file);
            std::fs::rename(&tmp, &path)?;
            stats.messages += 1;
            stats.bytes += m.raw.len() as u64;
        }
        for entry in std::fs::read_dir(&root)? {
            let entry = entry?;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("dovecot.list.index")
            {
                std::fs::remove_file(entry.path())?;
            }
        }
        let (uid, gid) = server.mail_owner();
        chown_tree(&root, uid, gid)?;
        stats.elapsed = start.elapsed();
        Ok(stats)
    }

    /// Loads the corpus with IMAP (CREATE missing folders, then one APPEND
    /// per message with flags and internal date), logged in via master
    /// impersonation.
    pub async fn append_imap(&self, server: &DovecotServer, user: &str) -> Result<LoadStats> {
        let start = Instant::now();
        let mut client = server.master_endpoint(user).connect().await?;
        ensure_folders(&mut client, &self.folders).await?;
        let mut stats = LoadStats::default();
        for m in &self.messages {
            client
                .append(&m.folder, &m.flags, Some(m.internal_date), &m.raw)
                .await?;
            stats.messages += 1;
            stats.bytes += m.raw.len() as u64;
        }
        client.logout().await;
        stats.elapsed = start.elapsed();
        Ok(stats)
    }

    /// Subscribes every folder of the corpus (IMAP).
    pub async fn subscribe_all(&self, server: &DovecotServer, user: &str) -> Result<()> {
        let mut client = server.master_endpoint(user).connect().await?;
        for f in &self.folders {
            client.subscribe(f).await?;
        }
        client.logout().await;
        Ok(())
    }
}

fn read_dovecot_keywords(dir: &Path) -> Result<BTreeMap<String, usize>> {
    let mut map = BTreeMap::new();
    match std::fs::read_to_string(dir.join("dovecot-keywords")) {
        Ok(text) => {
            for line in text.lines() {
                if let Some((n, k)) = line.split_once(' ')
                    && let Ok(n) = n.parse::<usize>()
                {
                    map.insert(k.to_owned(), n);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    Ok(map)
}

/// Creates the folders that do not exist yet (in the given order).
pub async fn ensure_folders(client: &mut Client, folders: &[String]) -> Result<()> {
    let existing: BTreeSet<String> = client
        .list()
        .await?
        .into_iter()
        .filter(|e| e.selectable())
        .map(|e| e.name)
        .collect();
    for f in folders {
        if !f.eq_ignore_ascii_case("INBOX") && !existing.contains(f) {
            client
                .create(f)
                .await
                .with_context(|| format!("CREATE {f:?}"))?;
        }
    }
    Ok(())
}

/// Generates and writes a corpus (Maildir files) for each user, users in
/// parallel; user `i` gets `spec.for_user(i)`. Returns the corpora.
pub fn load_users(
    server: &DovecotServer,
    users: &[&str],
    spec: &CorpusSpec,
) -> Result<Vec<Corpus>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(users.len().max(1));
    type Slot = Option<Result<Corpus>>;
    let mut results: Vec<Slot> = (0..users.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let chunks: Vec<Vec<(usize, &mut Slot)>> = {
            let mut chunks: Vec<Vec<_>> = (0..threads).map(|_| Vec::new()).collect();
            for (i, slot) in results.iter_mut().enumerate() {
                chunks[i % threads].push((i, slot));
            }
            chunks
        };
        for chunk in chunks {
            s.spawn(move || {
                for (i, slot) in chunk {
                    let corpus = spec.for_user(i).generate();
                    *slot = Some(corpus.write_maildir(server, users[i]).map(|_| corpus));
                }
            });
        }
    });
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("loader thread did not run"))))
        .collect()
}

/// Appends messages over IMAP (creating their folders if needed) and
/// returns the new UIDs (APPENDUID), in order.
pub async fn add_messages(
    server: &DovecotServer,
    user: &str,
    messages: &[CorpusMessage],
) -> Result<Vec<u32>> {
    let mut client = server.master_endpoint(user).connect().await?;
    let mut folders: Vec<String> = Vec::new();
    for m in messages {
        if !folders.contains(&m.folder) {
            folders.push(m.folder.clone());
        }
    }
    ensure_folders(&mut client, &folders).await?;
    let mut uids = Vec::new();
    for m in messages {
        let uid = client
            .append(&m.folder, &m.flags, Some(m.internal_date), &m.raw)
            .await?
            .context("server sent no APPENDUID")?;
        uids.push(uid);
    }
    client.logout().await;
    Ok(uids)
}

fn uid_set(uids: &[u32]) -> Result<String> {
    ensure!(!uids.is_empty(), "empty UID list");
    Ok(uids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(","))
}

/// Replaces the flags of the given messages (`UID STORE FLAGS`).
pub async fn set_flags(
    server: &DovecotServer,
    user: &str,
    folder: &str,
    uids: &[u32],
    flags: &[&str],
) -> Result<()> {
    store_flags(server, user, folder, uids, StoreOp::Replace, flags).await
}

/// Adds, removes or replaces flags of the given messages.
pub async fn store_flags(
    server: &DovecotServer,
    user: &str,
    folder: &str,
    uids: &[u32],
    op: StoreOp,
    flags: &[&str],
) -> Result<()> {
    let mut client = server.master_endpoint(user).connect().await?;
    client.select(folder).await?;
    let flags: Vec<String> = flags.iter().map(|f| (*f).to_owned()).collect();
    client.uid_store(&uid_set(uids)?, op, &flags).await?;
    client.logout().await;
    Ok(())
}

/// Marks the messages `\Deleted` and expunges the folder.
pub async fn expunge_messages(
    server: &DovecotServer,
    user: &str,
    folder: &str,
    uids: &[u32],
) -> Result<()> {
    let mut client = server.master_endpoint(user).connect().await?;
    client.select(folder).await?;
    client
        .uid_store(&uid_set(uids)?, StoreOp::Add, &["\\Deleted".to_owned()])
        .await?;
    client.expunge().await?;
    client.logout().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_varied() {
        let spec = CorpusSpec::new(7).messages(200);
        let a = spec.generate();
        let b = spec.generate();
        assert_eq!(a.messages, b.messages);
        let c = spec.for_user(1).generate();
        assert_ne!(a.messages[20].raw, c.messages[20].raw);
        // All kinds of tricky messages are there.
        for kind in [
            "utf8-headers",
            "bare-lf",
            "long-line",
            "no-message-id",
            "shared-message-id",
            "duplicate",
            "deleted-not-expunged",
            "keywords",
        ] {
            assert!(a.of_kind(kind).count() > 0, "{kind}");
        }
        let dups: Vec<_> = a.of_kind("duplicate").collect();
        assert_eq!(dups[0].raw, dups[1].raw);
        assert!(a.folders.contains(&"Projecten.Überprüfung".to_owned()));
        assert!(a.folders.contains(&"a/b".to_owned()));
        let slash = CorpusSpec {
            separator: '/',
            ..CorpusSpec::new(7)
        };
        assert!(slash.folder_list().contains(&"v1.2".to_owned()));
        assert!(slash.folder_list().contains(&"Archiv/2024/Q1".to_owned()));
    }

    #[test]
    fn sizes_are_realistic() {
        let c = CorpusSpec::new(3).messages(1000).tricky(false).generate();
        let mut sizes: Vec<usize> = c.messages.iter().map(|m| m.raw.len()).collect();
        sizes.sort_unstable();
        let median = sizes[sizes.len() / 2];
        assert!((2_000..50_000).contains(&median), "median {median}");
        let avg = c.total_bytes() / 1000;
        assert!((60_000..250_000).contains(&avg), "average {avg}");
        assert!(*sizes.last().unwrap_or(&0) > 1_000_000);
    }

    #[test]
    fn large_message_has_exact_size() {
        let c = CorpusSpec::new(1)
            .messages(0)
            .tricky(false)
            .large_message(Some(LARGE_MESSAGE_BYTES))
            .generate();
        assert_eq!(c.messages.len(), 1);
        assert_eq!(c.messages[0].raw.len(), LARGE_MESSAGE_BYTES);
        assert!(c.messages[0].raw.ends_with(b"--\r\n"));
    }

    #[test]
    fn flag_letters() {
        let idx: BTreeMap<String, usize> =
            [("$Label1".to_owned(), 0), ("Work".to_owned(), 1)].into();
        let f = vec![
            "\\Seen".to_owned(),
            "Work".to_owned(),
            "\\Answered".to_owned(),
            "\\Deleted".to_owned(),
        ];
        assert_eq!(maildir_flag_letters(&f, &idx), "RSTb");
    }
}
