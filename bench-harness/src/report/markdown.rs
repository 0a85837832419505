//! REPORT.md
use super::Report;
/// Renders the report.
pub fn render(report: &Report, _charts: &[String]) -> String {
    format!("# {}\n", report.name)
}
