//! The wave's mailbox list: a CSV with a header row and at least the columns
//! `source` and `target`, optionally `source_password` and `target_password`.
//! A bad row is reported with its line number; the valid rows still run.

use std::collections::HashSet;
use std::io::Read;

use crate::model::MailboxSpec;

/// A valid row of the CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxRow {
    /// Line number in the file (1 = header).
    pub line: u64,
    pub spec: MailboxSpec,
    pub secrets: MailboxSecrets,
}

/// Per-user passwords from the CSV. Kept in memory only; never written to
/// the state store.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct MailboxSecrets {
    pub source_password: Option<String>,
    pub target_password: Option<String>,
}

impl std::fmt::Debug for MailboxSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |p: &Option<String>| p.as_ref().map(|_| "<redacted>");
        f.debug_struct("MailboxSecrets")
            .field("source_password", &shown(&self.source_password))
            .field("target_password", &shown(&self.target_password))
            .finish()
    }
}

/// A row that was left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub line: u64,
    pub reason: String,
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// The file as a whole cannot be used (unreadable, or no usable header).
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("mailbox list: {0}")]
    Read(#[from] csv::Error),
    #[error(
        "mailbox list: the header row must name the columns `source` and `target` (found: {0})"
    )]
    Header(String),
}

/// The parsed list: the rows that will run and the ones that were left out.
#[derive(Debug, Default)]
pub struct MailboxList {
    pub rows: Vec<MailboxRow>,
    pub errors: Vec<RowError>,
    /// The header names `source_password` or `target_password` (distributed
    /// mode refuses such lists: credentials come from the endpoints there).
    pub has_password_columns: bool,
}

/// Parses the mailbox CSV. Blank lines and lines starting with `#` are skipped.
pub fn parse_mailbox_csv(mut input: impl Read) -> Result<MailboxList, CsvError> {
    let mut text = Vec::new();
    input
        .read_to_end(&mut text)
        .map_err(|e| CsvError::Read(e.into()))?;
    // The csv crate does not count comment and blank lines, so line numbers
    // are taken from byte offsets in the file itself: the number of line
    // ends before the offset, found by binary search (a wave may have a
    // hundred thousand rows).
    let line_ends: Vec<usize> = text
        .iter()
        .enumerate()
        .filter_map(|(at, &byte)| (byte == b'\n').then_some(at))
        .collect();
    let line_at = |position: Option<&csv::Position>| {
        position.map_or(0, |p| {
            // A record's offset may point at blank lines before it.
            let mut offset = (p.byte() as usize).min(text.len());
            while offset < text.len() && matches!(text[offset], b'\r' | b'\n') {
                offset += 1;
            }
            1 + line_ends.partition_point(|&end| end < offset) as u64
        })
    };
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(text.as_slice());
    let header = reader.headers()?.clone();
    let column = |name: &str| header.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(source_col), Some(target_col)) = (column("source"), column("target")) else {
        return Err(CsvError::Header(
            header.iter().collect::<Vec<_>>().join(","),
        ));
    };
    let source_password_col = column("source_password");
    let target_password_col = column("target_password");

    let mut list = MailboxList {
        has_password_columns: source_password_col.is_some() || target_password_col.is_some(),
        ..MailboxList::default()
    };
    let mut seen_sources = HashSet::new();
    let mut seen_targets = HashSet::new();
    for record in reader.records() {
        let record = match record {
            Ok(record) => record,
            Err(error) => {
                let line = line_at(error.position());
                list.errors.push(RowError {
                    line,
                    reason: format!("unreadable row: {error}"),
                });
                continue;
            }
        };
        let line = line_at(record.position());
        if record.len() != header.len() {
            list.errors.push(RowError {
                line,
                reason: format!(
                    "expected {} fields as in the header, found {}",
                    header.len(),
                    record.len()
                ),
            });
            continue;
        }
        let field = |col: usize| record.get(col).unwrap_or_default().to_owned();
        let optional = |col: Option<usize>| col.map(field).filter(|v| !v.is_empty());
        let spec = MailboxSpec {
            source: field(source_col),
            target: field(target_col),
        };
        if let Err(reason) = check_address("source", &spec.source)
            .and_then(|()| check_address("target", &spec.target))
        {
            list.errors.push(RowError { line, reason });
            continue;
        }
        if !seen_sources.insert(spec.source.to_lowercase()) {
            list.errors.push(RowError {
                line,
                reason: format!("source {:?} is listed twice in this wave", spec.source),
            });
            continue;
        }
        if !seen_targets.insert(spec.target.to_lowercase()) {
            list.errors.push(RowError {
                line,
                reason: format!(
                    "target {:?} is listed twice in this wave (two sources would merge into one mailbox)",
                    spec.target
                ),
            });
            continue;
        }
        list.rows.push(MailboxRow {
            line,
            spec,
            secrets: MailboxSecrets {
                source_password: optional(source_password_col),
                target_password: optional(target_password_col),
            },
        });
    }
    Ok(list)
}

fn check_address(column: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{column} is empty"));
    }
    if let Some(bad) = value.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "{column} {value:?} contains the character {bad:?}, which no login can hold"
        ));
    }
    if value.len() > 320 {
        return Err(format!("{column} is longer than 320 characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_and_reports_bad_ones_by_line() {
        let input = "\
Source,Target,source_password
alice@old,alice@new,s3cret
# a comment line
bob@old,bob@new,

,carol@new,x
dave@old,dave new,x
eve@old,eve@new
alice@old,alice2@new,x
frank@old,alice@new,x
\"grace@old\",\"grace@new\",\"pw,with,commas\"
";
        let list = parse_mailbox_csv(input.as_bytes()).unwrap();
        assert!(list.has_password_columns);
        assert!(
            !parse_mailbox_csv("source,target\na,b\n".as_bytes())
                .unwrap()
                .has_password_columns
        );
        let sources: Vec<_> = list.rows.iter().map(|r| r.spec.source.as_str()).collect();
        assert_eq!(sources, ["alice@old", "bob@old", "grace@old"]);
        assert_eq!(
            list.rows[0].secrets.source_password.as_deref(),
            Some("s3cret")
        );
        assert_eq!(list.rows[1].secrets.source_password, None);
        assert_eq!(
            list.rows[2].secrets.source_password.as_deref(),
            Some("pw,with,commas")
        );
        let lines: Vec<_> = list.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [6, 7, 8, 9, 10], "{:?}", list.errors);
        assert!(list.errors[0].reason.contains("source is empty"));
        assert!(list.errors[1].reason.contains("' '"));
        assert!(list.errors[2].reason.contains("expected 3 fields"));
        assert!(list.errors[3].reason.contains("listed twice"));
        assert!(list.errors[4].reason.contains("merge"));
    }

    #[test]
    fn header_without_required_columns_is_rejected() {
        let error = parse_mailbox_csv("user,password\na,b\n".as_bytes()).unwrap_err();
        assert!(error.to_string().contains("`source` and `target`"));
    }

    #[test]
    fn secrets_are_not_printed() {
        let secrets = MailboxSecrets {
            source_password: Some("hunter2".into()),
            target_password: None,
        };
        assert!(!format!("{secrets:?}").contains("hunter2"));
    }
}
