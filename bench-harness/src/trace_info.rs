//! `heapkit-bench trace info TRACE`: what a recorded trace holds.
//!
//! Threads and their operation counts, operations by kind, a size
//! histogram, peak live bytes and object lifetimes, computed by
//! [`heapkit_trace::summary`]. A bad trace is reported as one line naming
//! the byte offset where it goes wrong.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use heapkit_trace::summary::{Summary, SIZE_BUCKETS};
use heapkit_trace::Trace;

use crate::error::{Error, Result};
use crate::report::markdown::{fmt_mib, fmt_ns};

/// `trace` subcommands.
#[derive(Args, Debug, Clone)]
pub struct TraceArgs {
    #[command(subcommand)]
    /// What to do with the trace.
    pub command: TraceCommand,
}

/// What `trace` can do.
#[derive(Subcommand, Debug, Clone)]
pub enum TraceCommand {
    /// Summarise a trace: threads, operations, sizes, peak live bytes, lifetimes.
    Info {
        /// The trace file.
        trace: PathBuf,
    },
}

/// Runs a `trace` subcommand.
pub fn trace(args: &TraceArgs) -> Result<()> {
    match &args.command {
        TraceCommand::Info { trace } => {
            let file_len = std::fs::metadata(trace).map(|m| m.len()).unwrap_or(0);
            let (t, warning) =
                Trace::open_salvaging(trace).map_err(|e| Error::new(e.to_string()))?;
            if let Some(warning) = warning {
                eprintln!("heapkit-bench: warning: {}: {warning}", trace.display());
            }
            let s = Summary::of(&t).map_err(Error::new)?;
            println!(
                "trace {}: {} bytes, {:.1} bytes/operation",
                trace.display(),
                file_len,
                file_len as f64 / t.op_count().max(1) as f64
            );
            print!("{}", render(&s));
            Ok(())
        }
    }
}

/// The summary as text (also the head of a replay's REPORT.md).
pub fn render(s: &Summary) -> String {
    let mut o = String::new();
    let total: usize = s.ops_per_thread.iter().sum();
    let _ = writeln!(
        o,
        "recorded:      {:.3} s, {} operations",
        s.duration_ns as f64 / 1e9,
        total
    );
    let per: Vec<String> = s
        .ops_per_thread
        .iter()
        .take(16)
        .map(|n| n.to_string())
        .collect();
    let _ = writeln!(
        o,
        "threads:       {} (operations: {}{})",
        s.threads,
        per.join(", "),
        if s.threads > 16 { ", ..." } else { "" }
    );
    let _ = writeln!(
        o,
        "allocations:   {} (calloc {}, aligned > 16: {})",
        s.allocs, s.zeroed, s.aligned
    );
    let _ = writeln!(
        o,
        "frees:         {} (on another thread: {})",
        s.frees, s.cross_thread_frees
    );
    let _ = writeln!(o, "reallocs:      {}", s.reallocs);
    let _ = writeln!(
        o,
        "unknown:       {} frees, {} reallocs of blocks allocated before recording",
        s.unknown_frees, s.unknown_reallocs
    );
    let _ = writeln!(o, "replayable:    {} operations", s.replayable_ops());
    let _ = writeln!(o, "requested:     {} total", fmt_mib(s.total_bytes as f64));
    let _ = writeln!(
        o,
        "peak live:     {} ({} bytes)",
        fmt_mib(s.peak_live_bytes as f64),
        s.peak_live_bytes
    );
    let _ = writeln!(
        o,
        "never freed:   {} objects, {}",
        s.leaked,
        fmt_mib(s.leaked_bytes as f64)
    );
    let [p50, p90, p99, max] = s.lifetime_ns;
    let _ = writeln!(
        o,
        "lifetimes:     p50 {}  p90 {}  p99 {}  max {}",
        fmt_ns(p50 as f64),
        fmt_ns(p90 as f64),
        fmt_ns(p99 as f64),
        fmt_ns(max as f64)
    );
    let _ = writeln!(o, "sizes (allocations and reallocs):");
    let most = s.size_histogram.iter().copied().max().unwrap_or(0).max(1);
    for (i, &n) in s.size_histogram.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let label = if i == SIZE_BUCKETS {
            format!(">{}", size_text(8u64 << SIZE_BUCKETS))
        } else {
            format!("<={}", size_text(16u64 << i))
        };
        let bar = "#".repeat(((n * 40).div_ceil(most)) as usize);
        let _ = writeln!(o, "  {label:>8} {n:>10}  {bar}");
    }
    o
}

fn size_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{}G", b >> 30),
        b if b >= 1 << 20 => format!("{}M", b >> 20),
        b if b >= 1 << 10 => format!("{}K", b >> 10),
        b => b.to_string(),
    }
}
