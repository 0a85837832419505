//! `heapkit-bench list`: the registered allocators and workloads.

use crate::cell::cell_binary;
use crate::error::Result;
use crate::registry::ALLOCATORS;
use crate::workloads::WORKLOADS;

/// Prints both tables on stdout.
pub fn list() -> Result<()> {
    println!("allocators:");
    let width = ALLOCATORS.iter().map(|a| a.name.len()).max().unwrap_or(0);
    for a in ALLOCATORS {
        let built = if cell_binary(a).is_ok() {
            ""
        } else {
            "  (cell binary not built)"
        };
        // stringify! spaces a path's tokens: `:: std :: alloc :: System`.
        let type_name: String = a.type_name.split_whitespace().collect();
        let type_name = type_name.trim_start_matches("::").replace("<::", "<");
        println!(
            "  {:<width$} {}  ({type_name}){built}",
            a.name, a.description
        );
    }
    println!("\nworkloads:");
    for w in WORKLOADS {
        let threads = if w.multi_threaded {
            "N threads"
        } else {
            "1 thread"
        };
        println!("  {:<14} {:<10} {}", w.name, threads, w.description);
    }
    Ok(())
}
