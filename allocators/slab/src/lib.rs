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
//! 64 objects or 4 KiB each, 16 KiB once the thread has freed and
//! allocated the class again: steady use), and an object sitting in a
//! magazine keeps its whole slab resident. Objects above 32 KiB
//! ([`MAGAZINE_MAX_OBJECT`]) skip the magazines
//! and take the slab layer's lock on every call. With
//! `HEAPKIT_BACKGROUND_PURGE_MS` set, a background thread gives back what
//! the depots and empty slabs hold once the program goes idle (`purger`). Sizes above 256 KiB (and alignments above 256 KiB)
//! take core's large path: one `mmap` per block. Objects of one class never
//! serve another, so a program that frees many objects of one size and then
//! allocates another size keeps both sets of slabs (less so than it seems:
//! empty slabs go back to the OS).
//!
//! # Hardened mode
//!
//! `Slab::hardened()` (or the crate's `hardened` feature, which makes
//! `Slab::new()` hardened; `HEAPKIT_HARDEN=1` under the shim) stops the
//! program with one line at every double free, every free of a pointer
//! that is not an object's start, a write after free into a free object's
//! first two words, and an overflow past the requested size (a canary);
//! the slabs' free lists are encoded with a per-segment random key, and
//! segments and large blocks end with an inaccessible guard. The two modes
//! keep separate caches, magazines and segments (see `mode.rs`), so a
//! program may use both.
//!
//! ```
//! use core::alloc::Layout;
//! use heapkit_slab::{HeapAlloc, Slab};
//!
//! let a = Slab::hardened();
//! let p = a.allocate(Layout::from_size_align(100, 8).unwrap());
//! // SAFETY: p is a live block of `a`; hardened, the usable size is
//! // what was asked (the canary follows).
//! unsafe {
//!     assert_eq!(a.usable_size(p), 100);
//!     a.free(p);
//! }
//! ```
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
mod mode;
mod purger;
mod segment;
mod slab;
mod slow;
mod thread;

use core::alloc::Layout;
use core::marker::PhantomData;
use core::ptr;

use heapkit_core::segment::segment_of;
use heapkit_core::{large, os};

pub use cache::CacheCensus;
/// The two modes (see [`Slab`]).
pub use heapkit_core::harden::{Fast, Hardened, Policy};
/// The contract and the statistics type, re-exported so that reading
/// [`stats`] needs no other dependency.
pub use heapkit_core::{HeapAlloc, Stats};
pub use magazine::MAGAZINE_SLOTS;
pub use segment::CHUNK;
pub use slow::MAGAZINE_MAX_OBJECT;

/// The allocator's statistics (every thread's counts, exact for the calling
/// thread and for exited ones; both modes together), whether or not it is
/// the global allocator.
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
    HeapAlloc::stats(&Slab::fast())
}

use heap::STATS;
use mode::Mode;
use segment::SegmentHeader;
use slab::{layout, CACHE_COUNT};

/// Zeroed allocations of classes at least this big skip the magazines, so
/// that an object carved from never-used slab memory needs no memset.
const ZERO_DIRECT: usize = 4096;

/// Freed large blocks of at least this many bytes are purged (see
/// `Slab::free_large`).
pub const PURGE_LARGE: usize = 8 << 20;

/// The policy [`Slab::new`] uses: [`Fast`], or [`Hardened`] when the
/// crate's `hardened` feature is on.
#[cfg(not(feature = "hardened"))]
pub type DefaultPolicy = Fast;
/// The policy [`Slab::new`] uses: [`Fast`], or [`Hardened`] when the
/// crate's `hardened` feature is on.
#[cfg(feature = "hardened")]
pub type DefaultPolicy = Hardened;

/// The slab allocator, in the mode `P` names: [`Fast`] (the default) or
/// [`Hardened`], which detects every double, interior and foreign free at
/// the call, encodes the slabs' free lists, puts a canary after every
/// object and ends every segment and large block with a guard (see
/// `heapkit_core::harden`). The two modes keep separate caches, magazines
/// and segments, so both may be used in one program.
///
/// Every value is a handle to the one process-wide heap, so `Slab::new()`
/// costs nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Slab<P: Policy = DefaultPolicy>(PhantomData<P>);

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

impl Slab<DefaultPolicy> {
    /// The allocator, in the [`DefaultPolicy`] mode.
    pub const fn new() -> Self {
        Slab(PhantomData)
    }
}

impl Slab<Hardened> {
    /// The allocator in hardened mode, whatever the crate's features:
    ///
    /// ```
    /// #[global_allocator]
    /// static GLOBAL: heapkit_slab::Slab<heapkit_slab::Hardened> =
    ///     heapkit_slab::Slab::hardened();
    ///
    /// let v: Vec<u32> = (0..100).collect();
    /// assert_eq!(v[99], 99);
    /// ```
    pub const fn hardened() -> Self {
        Slab(PhantomData)
    }
}

impl Slab<Fast> {
    /// The allocator in the default (fast) mode, whatever the crate's
    /// features.
    pub const fn fast() -> Self {
        Slab(PhantomData)
    }
}

/// Pops the calling thread's loaded magazine of cache `c`.
#[inline]
fn allocate_small(c: usize) -> *mut u8 {
    let t = thread::current();
    let slot = t.slot(c);
    let top = slot.top.get();
    if top != slot.base.get() {
        // SAFETY: base < top <= limit inside the loaded magazine, whose
        // objects below top are free objects of cache c (IDLE's are
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

/// Pushes `p` onto the calling thread's loaded magazine of cache `c`.
///
/// # Safety
/// `p` must be a live object of cache `c`.
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

/// Counts a large allocation or free in the calling thread's statistics.
fn count_large(alloc: bool, bytes: usize) {
    match thread::bound().filter(|t| t.state.get() != thread::ThreadState::Done) {
        None => {
            let b = bytes as i64;
            if alloc {
                STATS.add(1, 0, 0, b)
            } else {
                STATS.add(0, 1, 0, -b)
            }
        }
        Some(t) => {
            if alloc {
                t.stats.on_alloc(&STATS, bytes);
            } else {
                t.stats.on_free(bytes);
            }
            t.stats.maybe_flush(&STATS);
        }
    }
}

/// Counts a reallocation from `old` to `new` usable bytes in the calling
/// thread's statistics (straight into [`STATS`] for a thread whose
/// counters are no longer flushed).
fn count_realloc(old: usize, new: usize) {
    match thread::bound().filter(|t| t.state.get() != thread::ThreadState::Done) {
        None => STATS.add(0, 0, 1, new as i64 - old as i64),
        Some(t) => t.stats.on_realloc(&STATS, old, new),
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
    count_large(false, usable);
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

impl<P: Policy> Slab<P> {
    /// The segment and cache of a slab block of this mode, or `None` for
    /// anything else (a large block, or a foreign pointer, which the large
    /// path reports).
    ///
    /// # Safety
    /// `ptr`'s segment must be mapped (true of any pointer into a heapkit
    /// mapping).
    #[inline(always)]
    unsafe fn slab_block(ptr: *mut u8) -> Option<(*mut SegmentHeader, usize)> {
        let seg = segment_of(ptr).cast::<SegmentHeader>();
        // SAFETY: every block lives in a tagged mapping (caller); a slab
        // segment's header is initialised.
        unsafe {
            if seg.cast::<heapkit_core::segment::SegmentTag>().read() == P::TAG {
                Some((seg, segment::class_of_ptr(seg, ptr)))
            } else {
                None
            }
        }
    }

    /// The cache of a slab block, or `None` for a large block.
    ///
    /// # Safety
    /// `ptr` must be a live block of this allocator.
    #[inline]
    #[cfg(test)]
    unsafe fn class_of_block(ptr: *mut u8) -> Option<usize> {
        // SAFETY: forwarded caller guarantee.
        unsafe { Self::slab_block(ptr) }.map(|(_, c)| c)
    }

    /// Hands the calling thread's magazines to the depots (as its exit
    /// would). The thread gets new ones on its next allocation.
    pub fn flush_thread_cache(&self) {
        if let Some(t) = thread::own() {
            t.flush_magazines();
        }
    }

    /// Returns every object sitting in a depot to its slab (freeing the
    /// depots' magazines), purges every
    /// empty slab (returning chunks to segments and unmapping empty
    /// segments) and unmaps core's cached large blocks: the allocator's
    /// `malloc_trim`. Magazines of live threads are untouched.
    pub fn trim(&self) {
        for c in 0..slab::OBJECT_CACHES {
            // A class never used has nothing in its depot.
            if !heap::cache(c).was_used() {
                continue;
            }
            heap::release_depot(c);
        }
        for c in 0..CACHE_COUNT {
            heap::cache(c).release_empty(true);
        }
        let _ = large::trim(false);
    }

    /// Walks every slab of every cache (of both modes) and checks its
    /// bookkeeping: the in-use count against the free objects, the list
    /// against the count, free objects inside the carved part (and, in
    /// hardened mode, bearing their free mark), never-carved memory still
    /// zero, and the segment header mapping each slab back to its
    /// metadata.
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
            census.in_depots += heap::depot(c).full_objects();
        }
        census.segments = segment::segment_count();
        Ok(census)
    }

    fn allocate_large(layout: Layout, zeroed: bool) -> *mut u8 {
        // Hardened: the block ends at an inaccessible page.
        let p = if P::GUARD_PAGES {
            large::allocate_guarded(layout, zeroed)
        } else {
            large::allocate(layout, zeroed)
        };
        if !p.is_null() {
            // SAFETY: p is a live large block.
            count_large(true, unsafe { large::usable_size(p) });
        }
        p
    }
}

// SAFETY: blocks come from slabs (cache size >= layout size plus the
// hardened canary; power-of-two classes for alignments > 16, laid out at
// multiples of their size from aligned slab starts) or from core's large
// path; free and usable_size find the owner by the segment tag (each mode
// has its own); nothing allocates through the global allocator or panics.
unsafe impl<P: Policy> HeapAlloc for Slab<P> {
    const SEGMENTED: bool = true;

    #[inline]
    fn allocate(&self, layout: Layout) -> *mut u8 {
        match P::cache_for(layout) {
            Some(c) => {
                let p = allocate_small(c);
                if !p.is_null() {
                    // SAFETY: p was just taken from cache c, whose objects
                    // hold the size plus the canary.
                    unsafe { P::on_handout(p, c, layout.size()) };
                }
                p
            }
            None => Self::allocate_large(layout, false),
        }
    }

    #[inline]
    fn allocate_zeroed(&self, layout: Layout) -> *mut u8 {
        let Some(c) = P::cache_for(layout) else {
            return Self::allocate_large(layout, true);
        };
        let size = slab::layout(c).size;
        let (p, zero) = if size >= ZERO_DIRECT {
            let (p, zero) = heap::take_direct(c);
            if !p.is_null() {
                match thread::bound().filter(|t| t.state.get() == thread::ThreadState::Active) {
                    Some(t) => t.stats.on_alloc(&STATS, size),
                    None => STATS.add(1, 0, 0, size as i64),
                }
            }
            (p, zero)
        } else {
            (allocate_small(c), false)
        };
        if !p.is_null() {
            // The handout (which clears a carved object's seal, so it
            // reads as zero again) comes first; the zeroing stops where
            // the canary starts.
            // SAFETY: p is a fresh block of cache c, of layout.size()
            // bytes plus the canary.
            unsafe {
                P::on_handout(p, c, layout.size());
                if !zero {
                    p.write_bytes(0, layout.size());
                }
            }
        }
        p
    }

    #[inline]
    unsafe fn free(&self, ptr: *mut u8) {
        // SAFETY: ptr is in a heapkit mapping (caller).
        match unsafe { Self::slab_block(ptr) } {
            // SAFETY: ptr lies in a chunk of seg owned by cache c (its
            // owner byte); the checks stop a pointer that is not a live
            // object of this mode, so what is pushed is one.
            Some((seg, c)) => unsafe {
                P::on_free("free", seg, c, ptr);
                free_small(c, ptr)
            },
            None => {
                // SAFETY: a live large block (or a foreign one, which the
                // large path reports).
                unsafe { free_large(ptr) }
            }
        }
    }

    #[inline]
    unsafe fn usable_size(&self, ptr: *mut u8) -> usize {
        // SAFETY: ptr is a live block (caller).
        match unsafe { Self::slab_block(ptr) } {
            // SAFETY: a live object of cache c.
            Some((_, c)) => unsafe { P::usable(ptr, c) },
            // SAFETY: a live large block.
            None => unsafe { large::usable_size(ptr) },
        }
    }

    unsafe fn reallocate(&self, ptr: *mut u8, old_layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, old_layout.align()) else {
            return ptr::null_mut();
        };
        // SAFETY: ptr is a live block (caller).
        let old = unsafe { Self::slab_block(ptr) };
        let new_class = P::cache_for(new_layout);
        let mut keep = old_layout.size();
        match old {
            Some((seg, c)) => {
                // SAFETY: ptr lies in a chunk of seg owned by cache c; the
                // check stops the program unless it is a live object.
                unsafe { P::check("realloc", seg, c, ptr) };
                let size = layout(c).size;
                let needed = new_size.saturating_add(P::TRAILER);
                // In place while the class still fits and is not more than
                // twice what is asked (the alignment is the block's own).
                if needed <= size && needed >= size / 2 {
                    // SAFETY: a live object of cache c (checked), which
                    // holds `needed` bytes.
                    unsafe { P::on_resize(seg, c, ptr, new_size) };
                    count_realloc(size, size);
                    return ptr;
                }
                // SAFETY: a live object of cache c (checked).
                keep = keep.min(unsafe { P::usable(ptr, c) });
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
                    count_realloc(old, new);
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
            // the old block's usable bytes and the new size.
            unsafe {
                ptr::copy_nonoverlapping(ptr, q, keep.min(new_size));
                self.free(ptr);
            }
            count_realloc(0, 0);
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
        let mut s = STATS.snapshot(Some(&thread::current().stats));
        // The slabs holding objects (magazines are metadata, as jemalloc
        // counts its own apart), both modes, and the live large mappings.
        let slabs: usize = (0..slab::OBJECT_CACHES)
            .filter(|&c| heap::cache(c).was_used())
            .map(|c| heap::cache(c).slab_bytes_in_use(c))
            .sum();
        s.active_bytes = (slabs + large::live_mapped_bytes()) as u64;
        s
    }
}

heapkit_core::global_alloc!(<P: Policy> Slab<P>);

#[cfg(test)]
mod tests;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
