//! RFC 3501 §5.1.3 modified UTF-7 for mailbox names.

use base64::Engine as _;
use base64::alphabet::IMAP_MUTF7;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

const ENGINE: GeneralPurpose = GeneralPurpose::new(
    &IMAP_MUTF7,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// A mailbox name that is not valid modified UTF-7.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid modified UTF-7 at byte {position}: {reason}")]
pub struct Mutf7Error {
    pub position: usize,
    pub reason: &'static str,
}

/// Encodes a Unicode mailbox name to modified UTF-7.
pub fn encode_mutf7(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let mut pending: Vec<u16> = Vec::new();
    for c in s.chars() {
        if !(' '..='~').contains(&c) {
            let mut units = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut units));
            continue;
        }
        flush_shifted(&mut out, &mut pending);
        if c == '&' {
            out.push_str("&-");
        } else {
            out.push(c);
        }
    }
    flush_shifted(&mut out, &mut pending);
    out
}

fn flush_shifted(out: &mut String, pending: &mut Vec<u16>) {
    if pending.is_empty() {
        return;
    }
    let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
    out.push('&');
    ENGINE.encode_string(&bytes, out);
    out.push('-');
    pending.clear();
}

/// Decodes a modified UTF-7 mailbox name.
pub fn decode_mutf7(s: &str) -> Result<String, Mutf7Error> {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'&' {
            if !(0x20..=0x7e).contains(&b) {
                return Err(err(i, "character outside printable US-ASCII"));
            }
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let Some(len) = bytes[i + 1..].iter().position(|&c| c == b'-') else {
            return Err(err(i, "unterminated '&' shift"));
        };
        let encoded = &s[i + 1..i + 1 + len];
        if encoded.is_empty() {
            out.push('&');
        } else {
            decode_shifted(encoded, i, &mut out)?;
        }
        i += len + 2;
    }
    Ok(out)
}

fn decode_shifted(encoded: &str, position: usize, out: &mut String) -> Result<(), Mutf7Error> {
    let raw = ENGINE
        .decode(encoded)
        .map_err(|_| err(position, "invalid modified base64"))?;
    if raw.len() % 2 != 0 {
        return Err(err(position, "odd number of UTF-16 bytes"));
    }
    let units = raw
        .chunks_exact(2)
        .map(|p| u16::from_be_bytes([p[0], p[1]]));
    for c in char::decode_utf16(units) {
        out.push(c.map_err(|_| err(position, "unpaired UTF-16 surrogate"))?);
    }
    Ok(())
}

fn err(position: usize, reason: &'static str) -> Mutf7Error {
    Mutf7Error { position, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_encodings() {
        let cases = [
            ("INBOX", "INBOX"),
            ("Projecten/Überprüfung", "Projecten/&ANw-berpr&APw-fung"),
            ("&", "&-"),
            ("Tom & Jerry", "Tom &- Jerry"),
            ("日本語", "&ZeVnLIqe-"),
            ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
            ("📧 Mail", "&2D3c5w- Mail"),
            ("Entwürfe", "Entw&APw-rfe"),
            ("Tab\there", "Tab&AAk-here"),
            ("", ""),
        ];
        for (plain, wire) in cases {
            assert_eq!(encode_mutf7(plain), wire, "encoding {plain:?}");
            assert_eq!(
                decode_mutf7(wire).as_deref(),
                Ok(plain),
                "decoding {wire:?}"
            );
        }
    }

    #[test]
    fn rejects_invalid_input() {
        for bad in ["&", "abc&ZeV", "&2D0-", "Ü", "&ZeVnLIq-", "&#-", "a\tb"] {
            assert!(decode_mutf7(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn round_trip_many_strings() {
        let pool: Vec<char> =
            "aZ09 &-_.,/+~\"\\äöüßÜéñ€日本語台北한국어Ωж😀📧🇩🇪\u{7f}\u{1}\u{ffff}\u{10ffff}"
                .chars()
                .collect();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..5000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let len = (state >> 59) as usize;
            let s: String = (0..len)
                .map(|k| {
                    let idx = (state.rotate_left(7 * k as u32) as usize) % pool.len();
                    pool[idx]
                })
                .collect();
            let wire = encode_mutf7(&s);
            assert!(wire.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{wire:?}");
            assert_eq!(
                decode_mutf7(&wire).as_deref(),
                Ok(s.as_str()),
                "{s:?} -> {wire:?}"
            );
        }
    }
}
