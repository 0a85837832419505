//! `results.json`: the source of truth of a run.

use std::path::Path;

use super::{Report, SCHEMA_VERSION};
use crate::error::{Error, Result};

/// Writes `report` as pretty JSON to `path`.
pub fn write(report: &Report, path: &Path) -> Result<()> {
    let text = serde_json::to_string_pretty(report).map_err(|e| Error::new(e.to_string()))?;
    std::fs::write(path, text + "\n")
        .map_err(|e| Error::new(format!("cannot write {}: {e}", path.display())))
}

/// Reads the report of a report directory: its `results.json`, or, when the
/// run was killed before writing it, the report rebuilt from its sample
/// journal (marked partial).
pub fn read_dir(dir: &Path) -> Result<Report> {
    let results = dir.join("results.json");
    let journal = dir.join(crate::session::JOURNAL);
    if !results.exists() && journal.exists() {
        return read_journal(&journal);
    }
    read(&results)
}

/// Rebuilds a report from a session journal: the header line is the report
/// with no samples, each further line one sample or error of one cell. A
/// torn last line (the process died while writing it) is ignored.
pub fn read_journal(path: &Path) -> Result<Report> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::new(format!("cannot read {}: {e}", path.display())))?;
    let mut lines = text.lines();
    let mut report = parse(lines.next().unwrap_or(""))
        .map_err(|e| Error::new(format!("{}: header: {e}", path.display())))?;
    let mut taken = 0;
    for line in lines {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            break;
        };
        let Some(cell) = value
            .get("cell")
            .and_then(|c| c.as_u64())
            .and_then(|c| report.cells.get_mut(c as usize))
        else {
            break;
        };
        if let Some(sample) = value.get("sample") {
            match serde_json::from_value(sample.clone()) {
                Ok(sample) => cell.samples.push(sample),
                Err(_) => break,
            }
        } else if let Some(err) = value.get("error").and_then(|e| e.as_str()) {
            cell.errors.push(err.to_string());
        }
        taken += 1;
    }
    report.partial = Some(format!(
        "the run was killed before it finished: {taken} samples recovered from {}",
        crate::session::JOURNAL
    ));
    Ok(report)
}

/// Reads a report, with a one-line error for an unreadable file, bad JSON, or
/// a different schema version.
pub fn read(path: &Path) -> Result<Report> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::new(format!("cannot read {}: {e}", path.display())))?;
    parse(&text).map_err(|e| Error::new(format!("{}: {e}", path.display())))
}

/// Parses a report from JSON text.
pub fn parse(text: &str) -> Result<Report> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Error::new(format!("not valid JSON ({e})")))?;
    match value.get("schema").and_then(|s| s.as_u64()) {
        Some(v) if v == u64::from(SCHEMA_VERSION) => {}
        Some(v) => {
            return Err(Error::new(format!(
                "results schema version {v}, this heapkit-bench reads version {SCHEMA_VERSION}"
            )))
        }
        None => {
            return Err(Error::new(
                "not a heapkit-bench results.json (no \"schema\" field)",
            ))
        }
    }
    serde_json::from_value(value)
        .map_err(|e| Error::new(format!("not a heapkit-bench results.json ({e})")))
}
