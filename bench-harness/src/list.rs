//! `heapkit-bench list`: the registered allocators and workloads.

use crate::cell::cell_binary;
use crate::error::Result;
use crate::registry::ALLOCATORS;
use crate::workloads::WORKLOADS;

/// Prints both tables on stdout.
pub fn list() -> Result<()> {
    println!("allocators:");
    for a in ALLOCATORS {
        let built = if cell_binary(a).is_ok() {
            ""
        } else {
            "  (cell binary not built)"
        };
        println!(
            "  {:<10} {}  [{}]{built}",
            a.name, a.description, a.type_name
        );
    }
    println!("\nworkloads:");
    for w in WORKLOADS {
        let threads = if w.multi_threaded {
            "threads"
        } else {
            "1 thread"
        };
        println!("  {:<14} {:<8} {}", w.name, threads, w.description);
    }
    Ok(())
}
