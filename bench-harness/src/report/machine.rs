//! The machine a report was measured on.

use serde::{Deserialize, Serialize};

/// Where a run happened and with which toolchain and code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// Logical CPUs available to the process.
    pub cores: usize,
    /// Kernel release (`/proc/sys/kernel/osrelease`).
    pub kernel: String,
    /// rustc that built the harness and cell binaries.
    pub rustc: String,
    /// The heapkit commit measured: `git rev-parse HEAD` of the source tree
    /// the harness was built from, `+dirty` if it has changes (wherever the
    /// harness runs from; the commit it was built at when that tree is
    /// gone).
    pub git_commit: String,
    /// Host name.
    pub hostname: String,
}

impl Machine {
    /// Detects the current machine; unknown fields become `"unknown"`.
    pub fn detect() -> Self {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .map(|s| s.trim().to_string())
        };
        let cpu_model = read("/proc/cpuinfo")
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_string())
            })
            .unwrap_or_else(unknown);
        // The workspace the harness was built in, not the directory it runs
        // in (a user's own project, or no repository at all).
        let tree = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .arg("-C")
                .arg(tree)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let git_commit = match git(&["rev-parse", "HEAD"]) {
            Some(commit) => {
                let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                    .is_some_and(|s| !s.is_empty());
                if dirty {
                    format!("{commit}+dirty")
                } else {
                    commit
                }
            }
            None => env!("HEAPKIT_BENCH_COMMIT").to_string(),
        };
        Machine {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: read("/proc/sys/kernel/osrelease").unwrap_or_else(unknown),
            rustc: env!("HEAPKIT_BENCH_RUSTC").to_string(),
            git_commit,
            hostname: read("/proc/sys/kernel/hostname").unwrap_or_else(unknown),
        }
    }
}

fn unknown() -> String {
    "unknown".to_string()
}
