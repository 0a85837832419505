//! Exact stats deltas, alone in their test binary: `Bump`'s counters are
//! process-wide, so any other test allocating through `Bump` at the same
//! time (as the unit tests do) would move them between two snapshots.

use core::alloc::Layout;

use heapkit_bump::Bump;
use heapkit_core::HeapAlloc;

#[test]
fn stats_count_operations() {
    let b = Bump::new();
    let before = b.stats();
    let p = b.allocate(Layout::from_size_align(1000, 8).unwrap());
    assert!(!p.is_null());
    let mid = b.stats();
    assert_eq!(mid.allocs, before.allocs + 1);
    // SAFETY: p is live.
    unsafe { b.free(p) };
    let after = b.stats();
    assert_eq!(after.frees, before.frees + 1);
    assert!(after.mapped_bytes > 0);
}
