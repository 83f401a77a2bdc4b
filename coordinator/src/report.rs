//! What a pass did, for people (a summary table) and for programs (JSON).

use std::fmt::Write as _;

use mailwave_common::mailboxes::RowError;
use mailwave_common::model::{ItemFailure, MailboxRecord, MailboxState};
use mailwave_common::store::{Store, StoreError};
use serde::Serialize;

/// The report of one run over a wave.
#[derive(Debug, Serialize)]
pub struct WaveReport {
    pub wave: String,
    pub mailboxes: Vec<MailboxReport>,
    /// CSV rows that were left out, with their line numbers.
    pub rejected_rows: Vec<RejectedRow>,
}

#[derive(Debug, Serialize)]
pub struct RejectedRow {
    pub line: u64,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct MailboxReport {
    #[serde(flatten)]
    pub record: MailboxRecord,
    /// Items that could not be copied, with folder, item, size and reason.
    pub item_failures: Vec<ItemFailure>,
}

impl WaveReport {
    /// Gathers the report of `records` from the store.
    pub async fn gather(
        store: &dyn Store,
        wave: &str,
        records: Vec<MailboxRecord>,
        rejected: &[RowError],
    ) -> Result<WaveReport, StoreError> {
        let mut mailboxes = Vec::with_capacity(records.len());
        for record in records {
            let item_failures = store.failures(record.id).await?;
            mailboxes.push(MailboxReport {
                record,
                item_failures,
            });
        }
        Ok(WaveReport {
            wave: wave.to_owned(),
            mailboxes,
            rejected_rows: rejected
                .iter()
                .map(|e| RejectedRow {
                    line: e.line,
                    reason: e.reason.clone(),
                })
                .collect(),
        })
    }

    /// Whether every mailbox completed and no row was left out.
    pub fn all_completed(&self) -> bool {
        self.rejected_rows.is_empty()
            && self
                .mailboxes
                .iter()
                .all(|m| m.record.state == MailboxState::Completed)
    }

    /// A table per mailbox, then one line per failure.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<32} {:<10} {:>5} {:>8} {:>10} {:>9} {:>6} {:>7} {:>7} {:>9}",
            "mailbox",
            "state",
            "pass",
            "copied",
            "bytes",
            "recovered",
            "flags",
            "skipped",
            "retries",
            "throttled"
        );
        for m in &self.mailboxes {
            let r = &m.record;
            let s = &r.stats;
            let _ = writeln!(
                out,
                "{:<32} {:<10} {:>5} {:>8} {:>10} {:>9} {:>6} {:>7} {:>7} {:>9}",
                truncate(&format!("{} -> {}", r.source, r.target), 32),
                r.state.as_str(),
                r.pass,
                s.items_copied,
                human_bytes(s.bytes_copied),
                s.items_recovered,
                s.flags_updated,
                s.items_skipped,
                s.retries,
                s.throttled
            );
        }
        let failed: Vec<_> = self
            .mailboxes
            .iter()
            .filter(|m| m.record.state != MailboxState::Completed)
            .collect();
        let skipped = self
            .mailboxes
            .iter()
            .map(|m| m.item_failures.len())
            .sum::<usize>();
        let _ = writeln!(
            out,
            "\n{} mailboxes: {} completed, {} failed; {} items skipped; {} CSV rows rejected",
            self.mailboxes.len(),
            self.mailboxes.len() - failed.len(),
            failed.len(),
            skipped,
            self.rejected_rows.len()
        );
        for m in failed {
            let reason = m.record.last_error.as_deref().unwrap_or("did not finish");
            let _ = writeln!(out, "FAILED {}: {reason}", m.record.source);
        }
        for row in &self.rejected_rows {
            let _ = writeln!(out, "REJECTED CSV line {}: {}", row.line, row.reason);
        }
        for m in &self.mailboxes {
            for f in &m.item_failures {
                let _ = writeln!(
                    out,
                    "SKIPPED {} folder {:?} item {} ({} bytes): {}",
                    m.record.source, f.folder, f.item, f.size, f.reason
                );
            }
        }
        out
    }
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(width - 1).collect();
    short.push('…');
    short
}

/// Bytes in binary units, for people.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes} B");
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_for_people() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(745 * 1024 * 1024), "745.0 MiB");
    }

    #[test]
    fn long_names_are_cut_with_an_ellipsis() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("a-very-long-mailbox-name", 10), "a-very-lo…");
    }
}
