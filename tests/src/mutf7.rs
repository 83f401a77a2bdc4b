//! Modified UTF-7 (RFC 3501 §5.1.3) for IMAP mailbox names.
//!
//! Written here on purpose instead of reusing the crate mailwave itself uses,
//! so that the checker does not share a bug with the code under test.

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;

/// Encodes a UTF-8 mailbox name to modified UTF-7.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    let mut pending: Vec<u16> = Vec::new();
    for ch in name.chars() {
        if (' '..='~').contains(&ch) {
            flush_shifted(&mut out, &mut pending);
            if ch == '&' {
                out.push_str("&-");
            } else {
                out.push(ch);
            }
        } else {
            let mut buf = [0u16; 2];
            pending.extend_from_slice(ch.encode_utf16(&mut buf));
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
    out.push_str(&STANDARD_NO_PAD.encode(bytes).replace('/', ","));
    out.push('-');
    pending.clear();
}

/// Decodes a modified UTF-7 mailbox name to UTF-8. Fails on malformed input.
pub fn decode(name: &str) -> Result<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let end = after
            .find('-')
            .with_context(|| format!("unterminated modified UTF-7 shift in {name:?}"))?;
        let b64 = &after[..end];
        if b64.is_empty() {
            out.push('&');
        } else {
            let bytes = STANDARD_NO_PAD
                .decode(b64.replace(',', "/"))
                .with_context(|| format!("bad modified base64 in {name:?}"))?;
            if bytes.len() % 2 != 0 {
                bail!("odd UTF-16 length in {name:?}");
            }
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            out.push_str(
                &String::from_utf16(&units)
                    .with_context(|| format!("bad UTF-16 in modified UTF-7 name {name:?}"))?,
            );
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3501_example() {
        assert_eq!(
            encode("~peter/mail/台北/日本語"),
            "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
        );
        assert_eq!(
            decode("~peter/mail/&U,BTFw-/&ZeVnLIqe-").unwrap(),
            "~peter/mail/台北/日本語"
        );
    }

    #[test]
    fn roundtrips() {
        for s in [
            "INBOX",
            "Kunden & Partner",
            "Projecten/Überprüfung",
            "Émoji 📧 post",
            "Ελληνικά",
            "&&",
            "a&b",
        ] {
            assert_eq!(decode(&encode(s)).unwrap(), s, "{s}");
        }
        assert_eq!(encode("Kunden & Partner"), "Kunden &- Partner");
        assert_eq!(encode("Überprüfung"), "&ANw-berpr&APw-fung");
        assert!(decode("&Jjo").is_err());
    }
}
