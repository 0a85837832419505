//! heapkit-slab: a slab allocator with per-thread magazines (Bonwick 1994;
//! Bonwick & Adams 2001), usable as Rust's global allocator or, through the
//! heapkit shim, as any program's `malloc`.
//!
//! ```
//! #[global_allocator]
//! static GLOBAL: heapkit_slab::Slab = heapkit_slab::Slab::new();
//!
//! let v: Vec<u64> = (0..1000).collect();
//! assert_eq!(v.iter().sum::<u64>(), 999 * 1000 / 2);
//! ```
//!
//! # What it is good at, and what it costs
//!
//! - **Many objects of few sizes, in steady state.** Each size class has a
//!   cache of slabs (runs of 16 KiB chunks holding objects of one size, no
//!   per-object header) and each thread holds two magazines of free objects
//!   per class. An allocation pops a magazine, a free pushes one: no lock,
//!   no atomic, no shared cache line.
//! - **Frees from other threads are as cheap as local ones.** A freed object
//!   goes into the *freeing* thread's magazine; full magazines flow through
//!   the depot to the threads that allocate (a producer/consumer pair trades
//!   one magazine per 64 small objects under one uncontended lock).
//! - **Returning memory.** The depot keeps full magazines only while some
//!   thread allocates from them, so a program that frees everything sends the
//!   objects back to their slabs; empty slabs beyond one in four of a
//!   cache's working set are purged (`MADV_DONTNEED`) and their chunks
//!   returned to the segment, and segments with no slab left are unmapped
//!   (one spare kept). Exited threads hand their magazines back. A thread
//!   that allocates a class and then frees it away lowers that class's
//!   magazine limit as the class's live count falls (`slow::wind_down`), so
//!   even the objects its own magazines would hold go home: a program that
//!   frees everything keeps no object in its magazines.
//!
//! Large blocks of 8 MiB or more are purged when freed (core's block cache
//! then only saves the `mmap`/`munmap` calls, not the page faults); smaller
//! ones stay in core's cache, resident, for up to a quarter second.
//!
//! Costs: a thread pins up to two magazines per size class it uses (at most
//! 64 objects or 4 KiB each), and an object sitting in a magazine keeps its
//! whole slab resident. Objects above 32 KiB
//! ([`MAGAZINE_MAX_OBJECT`]) skip the magazines
//! and take the slab layer's lock on every call. With
//! `HEAPKIT_BACKGROUND_PURGE_MS` set, a background thread gives back what
//! the depots and empty slabs hold once the program goes idle (`purger`). Sizes above 256 KiB (and alignments above 256 KiB)
//! take core's large path: one `mmap` per block. Objects of one class never
//! serve another, so a program that frees many objects of one size and then
//! allocates another size keeps both sets of slabs (less so than it seems:
//! empty slabs go back to the OS).
//!
//! # Layout
//!
//! Slabs are cut from 4 MiB segments aligned to 4 MiB and tagged
//! [`SegmentTag::SLAB`](heapkit_core::segment::SegmentTag::SLAB); the segment
//! header holds a byte per chunk naming its cache and the metadata of every
//! slab, so `free(p)` needs no layout: mask, read the tag, read the class.
//! Objects of power-of-two classes (which serve alignments above 16) sit at
//! multiples of their size from a suitably aligned slab start, so every
//! alignment up to 256 KiB is served by the slabs.
//!
//! # Call tree
//!
//! ```text
//! Slab::allocate(layout)
//! ├─ class_for(layout) → Slab::allocate_small(c)          [fast: pop loaded magazine]
//! │   └─ slow::allocate              [cold: > 32 KiB direct / swap previous / depot full / refill]
//! │       ├─ Depot::take_full                              (depot lock, leaf)
//! │       ├─ Cache::fill                                   (cache lock)
//! │       │   └─ segment::alloc_run                        (segment lock, may mmap)
//! │       └─ Slab::allocate_small(c)                       (retry)
//! └─ large::allocate                                      [> 256 KiB]
//! Slab::free(ptr)
//! ├─ tag_of(ptr) == SLAB → class byte → Slab::free_small(c, ptr) [fast: push loaded magazine]
//! │   └─ slow::free                  [cold: swap previous / depot / drain into slabs]
//! │       ├─ Depot::put_full → heap::drain → Cache::give_back
//! │       │   └─ segment::release_run                      (purge, maybe munmap)
//! │       └─ Slab::free_small(c, ptr)                      (retry)
//! └─ large::free
//! thread exit → thread::on_thread_exit → ThreadCache::flush_magazines → heap::retire
//! fork → fork::{prepare, parent, child} (every lock)
//! ```

#![no_std]

// std only for `thread_local!` (native, const, no destructor); nothing else
// of std is used on allocator paths.
extern crate std;

mod cache;
mod fork;
mod heap;
mod magazine;
mod purger;
mod segment;
mod slab;
mod slow;
mod thread;

use core::alloc::Layout;
use core::ptr;

use heapkit_core::segment::{segment_of, SegmentTag};
use heapkit_core::size_class::class_for;
use heapkit_core::{large, os};

pub use cache::CacheCensus;
/// The contract and the statistics type, re-exported so that reading
/// [`stats`] needs no other dependency.
pub use heapkit_core::{HeapAlloc, Stats};
pub use magazine::MAGAZINE_SLOTS;
pub use segment::CHUNK;
pub use slow::MAGAZINE_MAX_OBJECT;

/// The allocator's statistics (every thread's counts, exact for the calling
/// thread and for exited ones), whether or not it is the global allocator.
///
/// ```
/// use core::alloc::Layout;
/// use heapkit_slab::{HeapAlloc, Slab};
///
/// let before = heapkit_slab::stats();
/// let a = Slab::new();
/// let p = a.allocate(Layout::from_size_align(1000, 8).unwrap());
/// let after = heapkit_slab::stats();
/// assert_eq!(after.allocs, before.allocs + 1);
/// assert!(after.live_bytes >= before.live_bytes + 1000);
/// // SAFETY: p is a live block of `a`.
/// unsafe { a.free(p) };
/// assert_eq!(heapkit_slab::stats().live_bytes, before.live_bytes);
/// ```
pub fn stats() -> Stats {
    HeapAlloc::stats(&Slab::new())
}

use heap::STATS;
use segment::SegmentHeader;
use slab::{layout, CACHE_COUNT};

/// Zeroed allocations of classes at least this big skip the magazines, so
/// that an object carved from never-used slab memory needs no memset.
const ZERO_DIRECT: usize = 4096;

/// Freed large blocks of at least this many bytes are purged (see
/// `Slab::free_large`).
pub const PURGE_LARGE: usize = 8 << 20;

/// The slab allocator. Every value is a handle to the one process-wide heap,
/// so `Slab::new()` costs nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Slab {
    _private: (),
}

/// What [`Slab::check_invariants`] counts over every cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Slabs on partial, sparse, full and empty lists.
    pub slabs: usize,
    /// Empty slabs kept for reuse.
    pub empty_slabs: usize,
    /// Objects of the size classes the slabs count as in use (live blocks
    /// plus objects sitting in magazines).
    pub in_use: usize,
    /// Magazines in use (loaded, previous, or in depots).
    pub magazines: usize,
    /// Slab segments mapped.
    pub segments: usize,
    /// Of those, objects sitting in full depot magazines.
    pub in_depots: usize,
}

impl Slab {
    /// The allocator.
    pub const fn new() -> Self {
        Self { _private: () }
    }

    /// Pops the calling thread's loaded magazine of class `c`.
    #[inline]
    fn allocate_small(c: usize) -> *mut u8 {
        let t = thread::current();
        let slot = t.slot(c);
        let top = slot.top.get();
        if top != slot.base.get() {
            // SAFETY: base < top <= limit inside the loaded magazine, whose
            // objects below top are free objects of class c (IDLE's are
            // null, so it never gets here).
            let (top, p) = unsafe {
                let top = top.sub(1);
                (top, *top)
            };
            slot.top.set(top);
            t.stats.on_alloc(&STATS, layout(c).size);
            p
        } else {
            slow::allocate(c)
        }
    }

    /// Pushes `p` onto the calling thread's loaded magazine of class `c`.
    ///
    /// # Safety
    /// `p` must be a live object of class `c`.
    #[inline]
    unsafe fn free_small(c: usize, p: *mut u8) {
        let t = thread::current();
        let slot = t.slot(c);
        let top = slot.top.get();
        if top != slot.limit.get() {
            // SAFETY: base <= top < limit inside the loaded magazine (IDLE's
            // are null, so it never gets here).
            unsafe {
                top.write(p);
                slot.top.set(top.add(1));
            }
            t.stats.on_free(layout(c).size);
        } else {
            // SAFETY: forwarded caller guarantee.
            unsafe { slow::free(c, p) }
        }
    }

    /// The cache class of a slab block, or `None` for a large block.
    ///
    /// # Safety
    /// `ptr` must be a live block of this allocator.
    #[inline]
    unsafe fn class_of_block(ptr: *mut u8) -> Option<usize> {
        let seg = segment_of(ptr);
        // SAFETY: every block lives in a tagged mapping (caller).
        if unsafe { seg.read() } == SegmentTag::SLAB {
            // SAFETY: a slab segment's header is initialised.
            Some(unsafe { segment::class_of_ptr(seg.cast::<SegmentHeader>(), ptr) })
        } else {
            None
        }
    }

    /// Hands the calling thread's magazines to the depots (as its exit
    /// would). The thread gets new ones on its next allocation.
    pub fn flush_thread_cache(&self) {
        thread::bound().flush_magazines();
    }

    /// Returns every object sitting in a depot to its slab, purges every
    /// empty slab (returning chunks to segments and unmapping empty
    /// segments) and unmaps core's cached large blocks: the allocator's
    /// `malloc_trim`. Magazines of live threads are untouched.
    pub fn trim(&self) {
        for c in 0..heapkit_core::size_class::CLASS_COUNT {
            let s = heap::depot(c).take_all();
            // SAFETY: the surplus comes from depot(c).
            unsafe { heap::settle(c, s) };
        }
        for c in 0..CACHE_COUNT {
            heap::cache(c).release_empty(true);
        }
        let _ = large::trim(false);
    }

    /// Walks every slab of every cache and checks its bookkeeping: the
    /// in-use count against the free objects, the list against the count,
    /// free objects inside the carved part, never-carved memory still zero,
    /// and the segment header mapping each slab back to its metadata.
    pub fn check_invariants(&self) -> Result<Census, &'static str> {
        let mut census = Census::default();
        for c in 0..CACHE_COUNT {
            let k = heap::cache(c).census(c)?;
            census.slabs += k.partial + k.sparse + k.full + k.empty;
            census.empty_slabs += k.empty;
            if c == slab::MAGAZINE_CACHE {
                census.magazines = k.in_use;
                continue;
            }
            census.in_use += k.in_use;
            census.in_depots += heap::depot(c).full_count() * magazine::capacity_of(c);
        }
        census.segments = segment::segment_count();
        Ok(census)
    }

    fn count_large(alloc: bool, bytes: usize) {
        let t = thread::bound();
        if t.state.get() == thread::DONE {
            let b = bytes as i64;
            if alloc {
                STATS.add(1, 0, 0, b)
            } else {
                STATS.add(0, 1, 0, -b)
            }
        } else {
            if alloc {
                t.stats.on_alloc(&STATS, bytes);
            } else {
                t.stats.on_free(bytes);
            }
            t.stats.maybe_flush(&STATS);
        }
    }

    /// Frees a large block. Blocks of at least [`PURGE_LARGE`] bytes are
    /// purged first: core's block cache still saves the `mmap`/`munmap`
    /// pair when a similar block is allocated again, but a freed huge block
    /// (typically a big buffer or collection dropped at the end of a phase)
    /// does not stay resident. Smaller large blocks are cached resident, so
    /// a program that cycles through them does not fault their pages in
    /// again.
    ///
    /// # Safety
    /// `ptr` must be a live large block.
    unsafe fn free_large(ptr: *mut u8) {
        // SAFETY: a live large block (caller).
        let usable = unsafe { large::size_to_free(ptr) };
        Self::count_large(false, usable);
        if usable < PURGE_LARGE {
            // SAFETY: a live large block (caller).
            return unsafe { large::free(ptr) };
        }
        let page = os::page_size();
        let start = (ptr as usize).next_multiple_of(page);
        let end = ptr as usize + usable;
        if end > start {
            // SAFETY: start..end are whole pages of the block's own mapping
            // (its end is page-aligned), whose contents are dead; the header
            // before ptr is untouched.
            unsafe { os::purge(start as *mut u8, end - start) };
        }
        // SAFETY: a live large block (caller).
        unsafe { large::free(ptr) };
    }

    fn allocate_large(layout: Layout, zeroed: bool) -> *mut u8 {
        let p = large::allocate(layout, zeroed);
        if !p.is_null() {
            // SAFETY: p is a live large block.
            Self::count_large(true, unsafe { large::usable_size(p) });
        }
        p
    }
}

// SAFETY: blocks come from slabs (class size >= layout size; power-of-two
// classes for alignments > 16, laid out at multiples of their size from
// aligned slab starts) or from core's large path; free and usable_size find
// the owner by the segment tag; nothing allocates through the global
// allocator or panics.
unsafe impl HeapAlloc for Slab {
    const SEGMENTED: bool = true;

    #[inline]
    fn allocate(&self, layout: Layout) -> *mut u8 {
        match class_for(layout) {
            Some(c) => Self::allocate_small(c),
            None => Self::allocate_large(layout, false),
        }
    }

    #[inline]
    fn allocate_zeroed(&self, layout: Layout) -> *mut u8 {
        let Some(c) = class_for(layout) else {
            return Self::allocate_large(layout, true);
        };
        let size = slab::layout(c).size;
        let (p, zero) = if size >= ZERO_DIRECT {
            let (p, zero) = heap::take_direct(c);
            if !p.is_null() {
                let t = thread::bound();
                if t.state.get() == thread::ACTIVE {
                    t.stats.on_alloc(&STATS, size)
                } else {
                    STATS.add(1, 0, 0, size as i64)
                }
            }
            (p, zero)
        } else {
            (Self::allocate_small(c), false)
        };
        if !p.is_null() && !zero {
            // SAFETY: p is a fresh block of at least layout.size() bytes.
            unsafe { p.write_bytes(0, layout.size()) };
        }
        p
    }

    #[inline]
    unsafe fn free(&self, ptr: *mut u8) {
        // SAFETY: ptr is a live block (caller).
        match unsafe { Self::class_of_block(ptr) } {
            // SAFETY: a live object of class c.
            Some(c) => unsafe { Self::free_small(c, ptr) },
            None => {
                // SAFETY: a live large block.
                unsafe { Self::free_large(ptr) }
            }
        }
    }

    #[inline]
    unsafe fn usable_size(&self, ptr: *mut u8) -> usize {
        // SAFETY: ptr is a live block (caller).
        match unsafe { Self::class_of_block(ptr) } {
            Some(c) => layout(c).size,
            // SAFETY: a live large block.
            None => unsafe { large::usable_size(ptr) },
        }
    }

    unsafe fn reallocate(&self, ptr: *mut u8, old_layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, old_layout.align()) else {
            return ptr::null_mut();
        };
        // SAFETY: ptr is a live block (caller).
        let old_class = unsafe { Self::class_of_block(ptr) };
        let new_class = class_for(new_layout);
        match old_class {
            Some(c) => {
                let size = layout(c).size;
                // In place while the class still fits and is not more than
                // twice what is asked (the alignment is the block's own).
                if new_size <= size && new_size >= size / 2 {
                    thread::bound().stats.on_realloc(&STATS, size, size);
                    return ptr;
                }
            }
            None if new_class.is_none() => {
                // Large to large: mremap in place or by moving pages.
                // SAFETY: a live large block.
                let old = unsafe { large::usable_size(ptr) };
                // SAFETY: as above; the offset (and so the alignment) is kept.
                let q = unsafe { large::reallocate(ptr, new_size) };
                if !q.is_null() {
                    // SAFETY: q is the live resized block.
                    let new = unsafe { large::usable_size(q) };
                    thread::bound().stats.on_realloc(&STATS, old, new);
                }
                return q;
            }
            None => {}
        }
        // Move: allocate, copy, free (the bytes counted as an alloc and a
        // free, the call as a realloc).
        let q = self.allocate(new_layout);
        if !q.is_null() {
            // SAFETY: both blocks are live and distinct; the copy stays within
            // the old block's layout and the new size.
            unsafe {
                ptr::copy_nonoverlapping(ptr, q, old_layout.size().min(new_size));
                self.free(ptr);
            }
            thread::bound().stats.on_realloc(&STATS, 0, 0);
        }
        q
    }

    fn trim(&self) -> bool {
        let before = os::os_counters();
        self.flush_thread_cache();
        Slab::trim(self);
        os::os_counters().released_since(&before)
    }

    fn stats(&self) -> Stats {
        STATS.snapshot(Some(&thread::current().stats))
    }
}

heapkit_core::global_alloc!(Slab);

#[cfg(test)]
mod tests;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
