//! What a pass did, for people (a summary table) and for programs (JSON).

use std::fmt::Write as _;

use mailwave_common::mailboxes::RowError;
use mailwave_common::model::{FailureScope, ItemFailure, MailboxRecord, MailboxState};
use mailwave_common::store::{StoreError, WaveStore};
use serde::Serialize;

/// How a run ended; its exit code says it (documented in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Every mailbox completed: every item copied, confirmed gone, or left
    /// out by the operator's policy (listed). Exit code 0.
    Completed,
    /// Every mailbox finished, but some items or folders could not be
    /// copied (each recorded with its reason), or CSV rows were rejected.
    /// Exit code 3.
    CompletedWithErrors,
    /// At least one mailbox failed (or did not finish). Exit code 1.
    MailboxesFailed,
}

impl RunOutcome {
    pub fn exit_code(self) -> u8 {
        match self {
            RunOutcome::Completed => 0,
            RunOutcome::MailboxesFailed => 1,
            RunOutcome::CompletedWithErrors => 3,
        }
    }
}

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
    /// Items and folders that could not be copied, with folder, item, size
    /// and reason (`scope`: `folder` for a whole folder, else `item`).
    pub item_failures: Vec<ItemFailure>,
}

impl WaveReport {
    /// Gathers the report of `records` from the store.
    pub async fn gather(
        store: &dyn WaveStore,
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

    /// How the run ended, for the exit code.
    pub fn outcome(&self) -> RunOutcome {
        let state = |s| self.mailboxes.iter().any(|m| m.record.state == s);
        if state(MailboxState::Failed)
            || self.mailboxes.iter().any(|m| !m.record.state.is_terminal())
        {
            return RunOutcome::MailboxesFailed;
        }
        if state(MailboxState::CompletedWithErrors) || !self.rejected_rows.is_empty() {
            return RunOutcome::CompletedWithErrors;
        }
        RunOutcome::Completed
    }

    /// A table per mailbox, then one line per failure.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<32} {:<21} {:>5} {:>8} {:>10} {:>9} {:>6} {:>7} {:>7} {:>7} {:>9}",
            "mailbox",
            "state",
            "pass",
            "copied",
            "bytes",
            "recovered",
            "flags",
            "failed",
            "policy",
            "retries",
            "throttled"
        );
        for m in &self.mailboxes {
            let r = &m.record;
            let s = &r.stats;
            let _ = writeln!(
                out,
                "{:<32} {:<21} {:>5} {:>8} {:>10} {:>9} {:>6} {:>7} {:>7} {:>7} {:>9}",
                truncate(&safe(&format!("{} -> {}", r.source, r.target)), 32),
                r.state.as_str(),
                r.pass,
                s.items_copied,
                human_bytes(s.bytes_copied),
                s.items_recovered,
                s.flags_updated,
                s.items_failed,
                s.items_skipped_by_policy,
                s.retries,
                s.throttled
            );
        }
        let in_state = |state| {
            self.mailboxes
                .iter()
                .filter(|m| m.record.state == state)
                .count()
        };
        let failures = || {
            self.mailboxes
                .iter()
                .flat_map(|m| m.item_failures.iter().map(move |f| (m, f)))
        };
        let _ = writeln!(
            out,
            "\n{} mailboxes: {} completed, {} completed with errors, {} failed; \
             {} items not copied, {} skipped by policy; {} CSV rows rejected",
            self.mailboxes.len(),
            in_state(MailboxState::Completed),
            in_state(MailboxState::CompletedWithErrors),
            self.mailboxes.len()
                - in_state(MailboxState::Completed)
                - in_state(MailboxState::CompletedWithErrors),
            failures().filter(|(_, f)| !f.policy).count(),
            failures().filter(|(_, f)| f.policy).count(),
            self.rejected_rows.len()
        );
        for m in &self.mailboxes {
            if matches!(
                m.record.state,
                MailboxState::Completed | MailboxState::CompletedWithErrors
            ) {
                continue;
            }
            let reason = m.record.last_error.as_deref().unwrap_or("did not finish");
            let _ = writeln!(out, "FAILED {}: {}", safe(&m.record.source), safe(reason));
        }
        for row in &self.rejected_rows {
            let _ = writeln!(out, "REJECTED CSV line {}: {}", row.line, safe(&row.reason));
        }
        for m in self
            .mailboxes
            .iter()
            .filter(|m| m.record.stats.keywords_refused > 0)
        {
            let stats = &m.record.stats;
            let names: Vec<&str> = stats.refused_keywords.iter().map(String::as_str).collect();
            let _ = writeln!(
                out,
                "KEYWORDS NOT KEPT {}: the target stores no custom keywords; {} left off copied messages ({})",
                safe(&m.record.source),
                stats.keywords_refused,
                safe(&names.join(", "))
            );
        }
        for (m, f) in failures() {
            let label = if f.policy {
                "SKIPPED BY POLICY"
            } else {
                "NOT COPIED"
            };
            let what = match &f.scope {
                FailureScope::Folder => "(the whole folder)".to_owned(),
                FailureScope::Item {
                    item,
                    size: Some(size),
                } => format!("item {} ({size} bytes)", safe(item)),
                FailureScope::Item { item, size: None } => {
                    format!("item {} (size unknown)", safe(item))
                }
            };
            let _ = writeln!(
                out,
                "{label} {} folder {:?} {what}: {}",
                safe(&m.record.source),
                f.folder,
                safe(&f.reason)
            );
        }
        out
    }
}

/// Text that may come from a server or a file, safe for a terminal.
fn safe(text: &str) -> std::borrow::Cow<'_, str> {
    mailwave_common::text::escape_controls(text)
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
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
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
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(human_bytes(5 << 50), "5.0 PiB");
        assert_eq!(human_bytes(745 * 1024 * 1024), "745.0 MiB");
    }

    #[test]
    fn folder_failures_and_unknown_sizes_are_shown_as_such() {
        let failure = |folder: &str, scope| ItemFailure {
            mailbox: 1,
            folder: folder.into(),
            scope,
            class: mailwave_common::ErrorClass::Item,
            reason: "refused".into(),
            pass: 1,
            policy: false,
        };
        let item = |item: &str, size| FailureScope::Item {
            item: item.into(),
            size,
        };
        let report = WaveReport {
            wave: "w".into(),
            mailboxes: vec![MailboxReport {
                record: MailboxRecord {
                    id: 1,
                    wave: 1,
                    source: "a@x".into(),
                    target: "a@y".into(),
                    state: MailboxState::CompletedWithErrors,
                    pass: 1,
                    attempts: 1,
                    last_error: None,
                    stats: Default::default(),
                },
                item_failures: vec![
                    failure("Bad", FailureScope::Folder),
                    failure("INBOX", item("4", Some(0))),
                    failure("INBOX", item("5", None)),
                ],
            }],
            rejected_rows: Vec::new(),
        };
        let text = report.summary();
        for line in [
            "NOT COPIED a@x folder \"Bad\" (the whole folder): refused",
            "NOT COPIED a@x folder \"INBOX\" item 4 (0 bytes): refused",
            "NOT COPIED a@x folder \"INBOX\" item 5 (size unknown): refused",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        let json = serde_json::to_value(&report.mailboxes[0].item_failures).unwrap();
        assert_eq!(json[0]["scope"], "folder");
        assert_eq!(json[0].get("item"), None);
        assert_eq!(
            (&json[1]["scope"], &json[1]["item"]),
            (&"item".into(), &"4".into())
        );
        assert_eq!(json[1]["size"], 0);
        assert_eq!(json[2]["size"], serde_json::Value::Null);
    }

    #[test]
    fn long_names_are_cut_with_an_ellipsis() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("a-very-long-mailbox-name", 10), "a-very-lo…");
    }
}
