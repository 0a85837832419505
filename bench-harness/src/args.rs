//! Options shared by `run`, `replay` and `preload`, flattened into each
//! command's arguments so they are spelt the same everywhere.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::error::{Error, Result};

/// What the three measuring commands have in common.
#[derive(Args, Debug, Clone, Default)]
pub struct MatrixArgs {
    /// Comma-separated allocators to measure (default: all). `preload` also
    /// takes `native`, `jemalloc-so`, `mimalloc-so`.
    #[arg(long, value_delimiter = ',', visible_alias = "backends")]
    pub allocators: Vec<String>,
    /// Repetitions (fresh processes) per cell [default: the preset's, or 3].
    #[arg(long, visible_alias = "reps")]
    pub repetitions: Option<usize>,
    /// Column the ratios are relative to [default: glibc: `system`, or
    /// `native` (no preload) in `preload`; the first column when glibc is
    /// not measured].
    #[arg(long)]
    pub baseline: Option<String>,
    /// Report directory name under --out (default: `<kind>-<UTC date-time>`).
    #[arg(long)]
    pub name: Option<String>,
    /// Parent directory of report directories.
    #[arg(long, default_value = "reports")]
    pub out: PathBuf,
    /// Seconds after which one measured process is killed and recorded as
    /// failed.
    #[arg(long, default_value_t = crate::session::DEFAULT_TIMEOUT_S)]
    pub timeout: u64,
}

impl MatrixArgs {
    /// `--timeout` as a duration (at least one second).
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout.max(1))
    }

    /// The baseline column by the one rule of all three commands: the one
    /// asked for (which must be measured), else glibc (`glibc_column`) when
    /// measured, else the first column.
    pub fn baseline(&self, columns: &[String], glibc_column: &str) -> Result<String> {
        match &self.baseline {
            Some(asked) if columns.contains(asked) => Ok(asked.clone()),
            Some(asked) => Err(Error::new(format!(
                "baseline '{asked}' is not among the measured columns ({})",
                columns.join(", ")
            ))),
            None if columns.iter().any(|c| c == glibc_column) => Ok(glibc_column.to_string()),
            None => columns
                .first()
                .cloned()
                .ok_or_else(|| Error::new("nothing to measure")),
        }
    }

    /// `--repetitions`, or `default`; never 0.
    pub fn repetitions_or(&self, default: usize) -> Result<usize> {
        match self.repetitions.unwrap_or(default) {
            0 => Err(Error::new("--repetitions must be at least 1")),
            n => Ok(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_baseline_rule() {
        let cols: Vec<String> = ["sizeclass", "system", "jemalloc"].map(String::from).into();
        let mut args = MatrixArgs::default();
        assert_eq!(args.baseline(&cols, "system").unwrap(), "system");
        assert_eq!(args.baseline(&cols, "native").unwrap(), "sizeclass");
        args.baseline = Some("jemalloc".into());
        assert_eq!(args.baseline(&cols, "system").unwrap(), "jemalloc");
        args.baseline = Some("mimalloc".into());
        assert!(args.baseline(&cols, "system").is_err());
    }
}
