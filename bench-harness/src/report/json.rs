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
