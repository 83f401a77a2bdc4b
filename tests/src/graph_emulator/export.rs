//! The emulator's opaque export stream (Exchange uses its FastTransfer
//! stream format; this is the emulator's own).
//!
//! ```text
//! "MWXF" | version 1 (1 byte) | header length (u32, big endian)
//!        | header: compact JSON, fixed field order | payload (MIME or item properties)
//! ```
//!
//! Encoding is canonical (timestamps in whole seconds, UTC), and an import
//! only accepts data that re-encodes to the same bytes. As with Exchange's
//! stream, a copy is not byte for byte its original: the store that makes
//! an item gives it its own record key and creation time, so an item
//! exported, imported elsewhere and exported again yields other bytes.
//! Its search key (PidTagSearchKey) travels with it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
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
    /// PidTagSearchKey: given by the store that first made the item (see
    /// [`super::model::Mailbox::add_item`]), kept by every copy.
    pub search_key: Option<Vec<u8>>,
    /// PidTagRecordKey: the store's own key of this copy.
    pub record_key: String,
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
    /// Base64.
    search_key: Option<String>,
    record_key: String,
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

    /// PidTagInternetMessageId: a message's `Message-ID` header.
    pub fn internet_message_id(&self) -> Option<String> {
        if !self.is_message() {
            return None;
        }
        let text = String::from_utf8_lossy(&self.payload);
        let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
        let mut found: Option<String> = None;
        for line in lines.by_ref() {
            if line.is_empty() {
                break;
            }
            if line.starts_with([' ', '\t']) {
                if let Some(value) = found.as_mut() {
                    value.push_str(line.trim());
                }
                continue;
            }
            if found.is_some() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("message-id") {
                found = Some(value.trim().to_owned());
            }
        }
        found.filter(|id| !id.is_empty())
    }

    pub fn encode(&self) -> Vec<u8> {
        let header = Header {
            class: self.class.clone(),
            is_read: self.is_read,
            flag_status: self.flag_status,
            received: self.received,
            created: self.created,
            categories: self.categories.clone(),
            search_key: self.search_key.as_ref().map(|k| STANDARD.encode(k)),
            record_key: self.record_key.clone(),
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
        let search_key = header
            .search_key
            .map(|k| STANDARD.decode(k))
            .transpose()
            .map_err(|e| format!("bad search key: {e}"))?;
        let content = ItemContent {
            class: header.class,
            is_read: header.is_read,
            flag_status: header.flag_status,
            received: header.received,
            created: header.created,
            categories: header.categories,
            search_key,
            record_key: header.record_key,
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
            search_key: Some(vec![1, 2, 3]),
            record_key: "rk".to_owned(),
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
    fn internet_message_id_of_messages_only() {
        let mut content = sample();
        content.payload =
            b"Subject: x\r\nMessage-ID:\r\n <a@b>\r\n\r\nMessage-ID: <no>\r\n".to_vec();
        assert_eq!(content.internet_message_id().as_deref(), Some("<a@b>"));
        content.class = "IPM.Contact".to_owned();
        assert_eq!(content.internet_message_id(), None);
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
