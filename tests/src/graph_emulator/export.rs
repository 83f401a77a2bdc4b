//! The emulator's opaque export stream (Exchange uses its FastTransfer
//! stream format; this is the emulator's own).
//!
//! ```text
//! "MWXF" | version 1 (1 byte) | header length (u32, big endian)
//!        | header: compact JSON, fixed field order | payload (MIME or item properties)
//! ```
//!
//! Encoding is canonical (timestamps in whole seconds, UTC), and an import
//! only accepts data that re-encodes to the same bytes, so an item exported
//! from one mailbox, imported into another and exported again yields the
//! same bytes.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

use super::config::FlagStatus;

const MAGIC: &[u8; 4] = b"MWXF";
const VERSION: u8 = 1;

/// Everything an item is made of, apart from its identity in a mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ItemContent {
    pub class: String,
    pub is_read: bool,
    pub flag_status: FlagStatus,
    pub received: DateTime<Utc>,
    pub created: DateTime<Utc>,
    pub categories: Vec<String>,
    pub payload: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Header {
    class: String,
    is_read: bool,
    flag_status: FlagStatus,
    received: DateTime<Utc>,
    created: DateTime<Utc>,
    categories: Vec<String>,
}

impl ItemContent {
    /// Drops sub-second precision, which the stream does not carry.
    pub fn normalized(mut self) -> Self {
        self.received = self.received.trunc_subsecs(0);
        self.created = self.created.trunc_subsecs(0);
        self
    }

    /// Whether Graph's mail API sees this item as a message (with MIME).
    pub fn is_message(&self) -> bool {
        self.class.starts_with("IPM.Note") || self.class.starts_with("IPM.Schedule.Meeting")
    }

    pub fn encode(&self) -> Vec<u8> {
        let header = Header {
            class: self.class.clone(),
            is_read: self.is_read,
            flag_status: self.flag_status,
            received: self.received,
            created: self.created,
            categories: self.categories.clone(),
        };
        let header = serde_json::to_vec(&header).expect("the header serializes");
        let header_len = u32::try_from(header.len()).expect("headers are small");
        let mut out = Vec::with_capacity(9 + header.len() + self.payload.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&header_len.to_be_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.payload);
        out
    }

    /// Parses a stream made by [`ItemContent::encode`]; anything else
    /// (including a non-canonical variant) is refused.
    pub fn decode(data: &[u8]) -> Result<Self, String> {
        let rest = data
            .strip_prefix(MAGIC.as_slice())
            .ok_or("not an export stream of this emulator")?;
        let (&version, rest) = rest.split_first().ok_or("truncated stream")?;
        if version != VERSION {
            return Err(format!("unsupported stream version {version}"));
        }
        if rest.len() < 4 {
            return Err("truncated stream".to_owned());
        }
        let (len, rest) = rest.split_at(4);
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        if rest.len() < len {
            return Err("truncated stream header".to_owned());
        }
        let (header, payload) = rest.split_at(len);
        let header: Header =
            serde_json::from_slice(header).map_err(|e| format!("bad stream header: {e}"))?;
        let content = ItemContent {
            class: header.class,
            is_read: header.is_read,
            flag_status: header.flag_status,
            received: header.received,
            created: header.created,
            categories: header.categories,
            payload: payload.to_vec(),
        };
        if content.encode() != data {
            return Err("stream is not in canonical form".to_owned());
        }
        Ok(content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ItemContent {
        ItemContent {
            class: "IPM.Note".to_owned(),
            is_read: true,
            flag_status: FlagStatus::Flagged,
            received: "2024-05-01T10:00:00Z".parse().unwrap(),
            created: "2024-05-01T10:00:01Z".parse().unwrap(),
            categories: vec!["Blue".to_owned()],
            payload: b"Subject: x\r\n\r\nbody\n".to_vec(),
        }
    }

    #[test]
    fn round_trips_byte_for_byte() {
        let data = sample().encode();
        let decoded = ItemContent::decode(&data).unwrap();
        assert_eq!(decoded, sample());
        assert_eq!(decoded.encode(), data);
    }

    #[test]
    fn refuses_foreign_and_damaged_streams() {
        assert!(ItemContent::decode(b"hello").is_err());
        let data = sample().encode();
        assert!(ItemContent::decode(&data[..10]).is_err());
        let mut bad = data.clone();
        bad[4] = 9;
        assert!(ItemContent::decode(&bad).is_err());
    }
}
