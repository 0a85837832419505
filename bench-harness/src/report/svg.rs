//! SVG charts.
use super::Report;
use crate::error::Result;
/// Writes charts; returns file names.
pub fn write_charts(_report: &Report, _dir: &std::path::Path) -> Result<Vec<String>> {
    Ok(vec![])
}
