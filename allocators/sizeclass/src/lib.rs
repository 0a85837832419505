//! heapkit-sizeclass: the flagship thread-caching size-class allocator.
//!
//! [`SizeClass`] is the allocator heapkit recommends by default. Install it
//! with one line:
//!
//! ```
//! #[global_allocator]
//! static GLOBAL: heapkit_sizeclass::SizeClass = heapkit_sizeclass::SizeClass::new();
//!
//! let v: Vec<u64> = (0..1000).collect();
//! assert_eq!(v.iter().sum::<u64>(), 499_500);
//! ```
//!
//! # Design (free-list sharding, after mimalloc)
//!
//! - Requests up to 256 KiB are rounded to one of core's 96 size classes
//!   (at most 12.5% internal waste from 128 B up). Larger ones, and
//!   alignments above 256 KiB, take core's large path (one mapping each,
//!   `mremap` on realloc).
//! - Memory comes from the OS in 4 MiB segments tagged
//!   `SIZECLASS`, split into pages (64 KiB, 512 KiB or the whole segment by
//!   class size). Page metadata is in the segment header, so any pointer
//!   finds its page by masking, with no per-block header.
//! - Each thread owns a heap: one queue of pages per class, and
//!   `current[class]`, the page the next allocation pops from. Every page
//!   keeps three free lists: `free` (allocation pops, the owner's frees
//!   push: the block just freed is the next handed out, still in cache),
//!   `local_free` (remote frees the owner collected) and `thread_free`
//!   (other threads push with one CAS; the owner takes the lot with one
//!   swap, see `remote.rs`). The slow path's periodic work also runs every
//!   4096 allocations (`slow::heartbeat`), since a balanced allocate/free
//!   loop may never empty a free list.
//! - Pages are carved lazily, one OS page of blocks at a time (at least
//!   four blocks), so fresh memory is not touched long before it is used,
//!   and blocks carved from fresh
//!   or purged memory are known to be zero (`allocate_zeroed` skips the
//!   memset).
//! - Empty pages return to their segment; after 20 ms free (the purge
//!   delay, `HEAPKIT_PURGE_DELAY_MS`) their memory is
//!   purged (`MADV_DONTNEED`) by the owner's next slow path; empty segments
//!   go to a small purged reserve or back to the OS. Without waiting for the
//!   delay, a free that leaves the heap more idle bytes (dirty free pages
//!   and empty small pages kept for their class) than an adaptive budget
//!   (256 KiB up, doubled whenever a page purged early is needed again) or
//!   than 4x the bytes still in use purges them all at once and trims
//!   core's large cache, so a program that frees everything and stops gets
//!   its memory back. Once a program has been seen rebuilding what it freed
//!   (a page purged early is needed again), only the budget counts, until a
//!   second passes without that: freeing a structure and building it again
//!   does not refault it.
//! - A dying thread collects its pages and abandons its segments; live
//!   threads adopt them on their slow path, so nothing is stranded.
//! - Pages that other threads' frees emptied while their owner sleeps are
//!   retired and purged by the freeing thread (`reclaim.rs`), under the
//!   owner's heap lock, which the owner takes on its slow paths only.
//!
//! - Hardened mode ([`SizeClass::hardened`], or the `hardened` feature):
//!   every double and interior free detected at the call, encoded free
//!   lists, a canary after each small block, guard pages after segments
//!   and after large blocks (`mode.rs`; a type parameter, so the default paths are unchanged).
//!
//! Costs: allocation is a class computation, two loads, a pop and a counter
//! bump; a free by the owner is a mask, a compare, a push and a counter
//! bump; a free by another thread is one CAS (plus one `fetch_or` when the
//! page's remote list was empty).
//!
//! # Call tree
//!
//! ```text
//! allocate(layout) ─ align<=16 && size<=256K ─ heap::alloc(class)        [fast: pop page.free]
//!   │                                              └─ slow::alloc        [cold]
//!   │                                                   ├─ init (id, exit key, atfork)
//!   │                                                   ├─ find_page: queue walk (Page::collect),
//!   │                                                   │   take_pending, adopt_one, take_free_page
//!   │                                                   │   (reserve::acquire), sweep (purge/decay)
//!   │                                                   │   [claim of a page purged early: budget x2]
//!   │                                                   └─ heap::alloc (retry fast path)
//!   ├─ align > 16 ─ class_for(layout) ─ heap::alloc    (power-of-two class, aligned carving)
//!   └─ otherwise ─ large::allocate
//! free(ptr) ─ heap::free: tag? ── LARGE ─ large::free
//!              └─ owner? ─ yes ─ push free; used-1 empty or FULL_FLAG ─ slow::page_freed [cold]
//!                         │      page_freed ─ purge::free_page/keep ─ idle > budget ─ purge::purge_idle
//!                         │                    (free empty pages, purge all, large::trim)
//!                         └ no ── free_remote: ThreadFree::push (+ PendingPages::notify)
//! reallocate ─ same class: in place │ large→large: large::reallocate (mremap) │ else copy
//! thread exit (pthread key) ─ lifecycle::thread_exit ─ abandon_all
//! fork ─ lifecycle::before_fork / after_fork_parent / after_fork_child (orphans left unadopted)
//! ```

// Under loom only the remote-free protocol is compiled (and modelled).
#![cfg_attr(loom, allow(dead_code))]

#[cfg(not(loom))]
mod abandoned;
#[cfg(not(loom))]
mod alloc_impl;
#[cfg(not(loom))]
mod carve;
#[cfg(not(loom))]
mod checks;
#[cfg(not(loom))]
mod classes;
#[cfg(not(loom))]
mod heap;
#[cfg(not(loom))]
mod holes;
#[cfg(all(not(loom), any(test, feature = "debug-invariants")))]
mod invariants;
#[cfg(not(loom))]
mod lifecycle;
#[cfg(not(loom))]
mod mode;
#[cfg(not(loom))]
mod page;
#[cfg(not(loom))]
mod purge;
#[cfg(not(loom))]
mod quarantine;
#[cfg(not(loom))]
mod reclaim;
mod remote;
#[cfg(not(loom))]
mod reserve;
#[cfg(not(loom))]
mod segment;
#[cfg(not(loom))]
mod slow;

#[cfg(not(loom))]
pub use alloc_impl::{DefaultPolicy, SizeClass};
/// The two modes (`SizeClass<Fast>`, `SizeClass<Hardened>`), re-exported.
pub use heapkit_core::harden::{Fast, Hardened, Policy};
/// The contract and the statistics type, re-exported so that reading
/// [`stats`] needs no other dependency.
#[cfg(not(loom))]
pub use heapkit_core::{HeapAlloc, Stats};

/// The allocator's statistics (every thread's counts, exact for the calling
/// thread and for exited ones; see `heapkit_core::stats`), whether or not
/// it is installed as the global allocator.
///
/// ```
/// use core::alloc::Layout;
/// use heapkit_sizeclass::{HeapAlloc, SizeClass};
///
/// let before = heapkit_sizeclass::stats();
/// let a = SizeClass::new();
/// let p = a.allocate(Layout::from_size_align(1000, 8).unwrap());
/// let after = heapkit_sizeclass::stats();
/// assert_eq!(after.allocs, before.allocs + 1);
/// assert!(after.live_bytes >= before.live_bytes + 1000);
/// // Mapped and resident bytes too (process-wide).
/// assert!(after.mapped_bytes > 0 && after.resident_bytes > 0);
/// // SAFETY: p is a live block of `a`.
/// unsafe { a.free(p) };
/// assert_eq!(heapkit_sizeclass::stats().live_bytes, before.live_bytes);
/// ```
#[cfg(not(loom))]
pub fn stats() -> Stats {
    HeapAlloc::stats(&SizeClass::new())
}

/// Pages of idle threads' heaps that other threads' frees emptied and that
/// those threads retired and purged (`reclaim.rs`), since the process
/// started.
#[cfg(not(loom))]
pub fn reclaimed_pages() -> u64 {
    reclaim::RECLAIMED_PAGES.load(core::sync::atomic::Ordering::Relaxed)
}

/// [`stats`] of the [`Hardened`] mode's heaps (the two modes count
/// separately only in the calling thread's not yet flushed counts).
#[cfg(not(loom))]
pub fn hardened_stats() -> Stats {
    HeapAlloc::stats(&SizeClass::hardened())
}
#[cfg(all(not(loom), any(test, feature = "debug-invariants")))]
pub use invariants::{check_invariants, check_invariants_of};

/// Where the calling thread's heap of mode `P` lives (0 before its first
/// slow path binds one): for tests that check heaps live outside the TLS
/// block and are reused after their thread exits. Not an API.
#[doc(hidden)]
#[cfg(not(loom))]
pub fn thread_heap_address<P: Policy>() -> usize {
    use crate::mode::Mode;
    let h = P::heap();
    if P::heap_is_idle(h) {
        0
    } else {
        h as usize
    }
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
