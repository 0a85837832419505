//! heapkit-pool: segregated free-list pools, the simplest fast allocator.
//!
//! Every request up to 256 KiB is rounded to one of the 96 classes of
//! [`heapkit_core::size_class`] and served from that class's pool: a LIFO
//! list of equal free blocks. There is no coalescing, no splitting and no
//! per-object header. Blocks are carved from *chunks* (64 KiB to 1 MiB) of
//! 4 MiB segments; a pointer finds its class by masking to its segment and
//! reading one byte per 64 KiB page. Larger requests take the shared large
//! path of core.
//!
//! ```
//! use core::alloc::Layout;
//! use heapkit_core::HeapAlloc;
//! use heapkit_pool::Pool;
//!
//! static POOL: Pool = Pool::new();
//!
//! let layout = Layout::from_size_align(100, 8).unwrap();
//! let p = POOL.allocate(layout);
//! assert!(!p.is_null());
//! // SAFETY: p is a live block of POOL.
//! unsafe {
//!     // The class of 100 bytes (hardened: the request itself).
//!     assert!(POOL.usable_size(p) == 112 || POOL.usable_size(p) == 100);
//!     POOL.free(p); // no layout needed
//! }
//! ```
//!
//! # Hardened mode
//!
//! `Pool::hardened()` (or the crate's `hardened` feature, which makes
//! `Pool::new()` hardened; `HEAPKIT_HARDEN=1` under the shim) stops the
//! program with one line at every double free, every free of a pointer
//! that is not a block's start, a write after free that reached a free
//! list's link or a free block's mark, and an overflow past the requested
//! size (a canary); free-list links are encoded with a random key, and
//! segments and large blocks end with an inaccessible guard. The two modes
//! keep separate lists, depots and segments (see `mode.rs`), so a program
//! may use both. Hardened blocks are at least 32 bytes.
//!
//! Installed as the global allocator it is one line:
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: heapkit_pool::Pool = heapkit_pool::Pool::new();
//! ```
//!
//! # How blocks move
//!
//! Each thread has its own list per class (module `thread_cache`): `malloc` pops,
//! `free` pushes onto the *freeing* thread's list, whichever thread
//! allocated the block. Neither touches an atomic. When a list of a class
//! reaches a batch (about 64 KiB, 2 to 128 blocks) it becomes the thread's
//! spare batch, and a spare already there goes to that class's global
//! [`depot`]; when the list is empty it takes the spare, or a batch from the
//! depot, or blocks carved from the thread's current chunk, or a new chunk
//! cut from a segment. A thread that exits hands all of it to the depots.
//! What a thread frees of a class it has not allocated (a consumer's frees
//! of what a producer made) waits in an outbox its allocations never pop,
//! and goes to the depot a batch at a time: reused by the freeing thread, a
//! block handed over put two threads' objects on one cache line.
//!
//! # Costs and trade-offs
//!
//! - Memory is *retained*: freed blocks stay in the pools of their class and
//!   are never returned to the OS or reused for another class on their own.
//!   A program that frees a peak of small blocks keeps them resident, and a
//!   program whose sizes drift keeps the chunks of the old sizes.
//!   [`Pool::trim`] releases every chunk whose blocks are all free (see
//!   [`trim`] for what it costs). The harness's fragmentation workload
//!   shows the trade-off.
//! - Each thread can hold up to two batches per class, which bounds the
//!   memory a thread hides from others at about 128 KiB per class it uses.
//! - Internal waste is that of the classes: under 12.5% from 128 B up.
//! - All `Pool` values share one process-wide pool (the state is static),
//!   as a global allocator must.
//! - Chunks are address space first: a thread that uses a class gets a
//!   chunk of its own (up to 1 MiB for the biggest classes), but only the
//!   pages it touches become resident.
//!
//! In the committed quick report (`reports/pool-issue5-quick`) the pool ends
//! the `realloc` workload at 90 MiB RSS and `fragmentation` at 160 MiB,
//! against 4.6 MiB and 86 MiB for glibc: that is the retention, and the
//! price of frees that are three stores.
//!
//! # Threads, exit and fork
//!
//! - The exchange between threads is a spin-locked stack of batches per
//!   class ([`depot`]), taken once per batch, never per allocation; it is
//!   ABA-free by construction.
//! - A `pthread` key destructor hands an exiting thread's lists, spare
//!   batches and unused chunk tails to the depots, and its cache (a slot of
//!   a pool, not thread-local storage) back to the pool. Allocations and
//!   frees the thread makes after that (from later TLS destructors) go
//!   straight through the depots.
//! - `fork` handlers hold every lock of the pool across `fork`, so a child
//!   of a busy parent allocates and frees at once.
//!
//! # Statistics
//!
//! `stats()` is exact for exited threads and the calling thread. Each
//! thread counts into its own `heapkit_core::ThreadStats` (two adds per
//! operation, no shared cache line), flushed every 4096 allocations, by its
//! slow paths (which also flush a live-byte delta above 1 MiB) and at exit.
//! Another live thread's counts can therefore lag until its next slow path.
//!
//! # Call tree
//!
//! ```text
//! Pool::allocate(layout)
//!   class_for(layout) --None--> slow::alloc_large -> core::large::allocate
//!   ThreadCache::alloc(class)               [fast: pop]
//!     '-- list empty --> slow::alloc
//!            exited thread -> slow::alloc_exited (depot, one block)
//!            ensure_init (exit key, fork handlers)
//!            refill: arm the class's limit | spare batch | Depot::pop_batch
//!                    | own fresh region | Depot::pop_region
//!                    | SegmentList::carve (CHUNKS lock)
//!            carve_fresh -> ThreadCache::alloc (retry), or take_fresh
//!            (32 KiB and up: one block, unwritten)
//! Pool::allocate_zeroed(layout)
//!   ThreadCache::alloc_zeroed                [fast: pop + memset]
//!     '-- slow::alloc_zeroed: a fresh-region block is returned unset
//! Pool::free(ptr) / deallocate
//!   segment tag != POOL --> slow::free_large -> core::large::free
//!   class = page_class[page of ptr]
//!   ThreadCache::free(ptr, class)            [fast: push]
//!     '-- len >= limit --> slow::free
//!            exited thread -> slow::free_exited (one-block batch)
//!            class never allocated (limit 0): outbox, a full one ->
//!            Depot::push_batch
//!            else list -> spare, old spare -> Depot::push_batch
//!            -> ThreadCache::free (retry)
//! Pool::reallocate: same class and at least half used -> in place;
//!   large -> large stays: slow::realloc_large (mremap); else move
//! Pool::trim -> trim::trim
//! ```
pub mod class;
pub mod depot;
mod fork;
mod mode;
mod segment;
mod slow;
mod thread_cache;
pub mod trim;

use core::alloc::Layout;
use core::marker::PhantomData;
use core::ptr;

/// The two modes (see [`Pool`]).
pub use heapkit_core::harden::{Fast, Hardened, Policy};
use heapkit_core::size_class::MAX_SIZE;
use heapkit_core::GlobalStats;
/// The contract and the statistics type, re-exported so that reading
/// [`stats`] needs no other dependency.
pub use heapkit_core::{HeapAlloc, Stats};

/// The allocator's statistics (every thread's counts, exact for the calling
/// thread and for exited ones; both modes together), whether or not it is
/// the global allocator.
///
/// ```
/// use core::alloc::Layout;
/// use heapkit_pool::{HeapAlloc, Pool};
///
/// let before = heapkit_pool::stats();
/// let a = Pool::new();
/// let p = a.allocate(Layout::from_size_align(1000, 8).unwrap());
/// let after = heapkit_pool::stats();
/// assert_eq!(after.allocs, before.allocs + 1);
/// assert!(after.live_bytes >= before.live_bytes + 1000);
/// // SAFETY: p is a live block of `a`.
/// unsafe { a.free(p) };
/// assert_eq!(heapkit_pool::stats().live_bytes, before.live_bytes);
/// ```
pub fn stats() -> Stats {
    HeapAlloc::stats(&Pool::fast())
}

use crate::class::block_size;
use crate::mode::Mode;
use crate::segment::{class_of_block, header_of, CHUNKS};

/// The counters of every thread, merged.
static STATS: GlobalStats = GlobalStats::new();

/// The policy [`Pool::new`] uses: [`Fast`], or [`Hardened`] when the
/// crate's `hardened` feature is on.
#[cfg(not(feature = "hardened"))]
pub type DefaultPolicy = Fast;
/// The policy [`Pool::new`] uses: [`Fast`], or [`Hardened`] when the
/// crate's `hardened` feature is on.
#[cfg(feature = "hardened")]
pub type DefaultPolicy = Hardened;

/// The segregated free-list pool allocator, in the mode `P` names:
/// [`Fast`] (the default) or [`Hardened`], which detects every double,
/// interior and foreign free at the call, encodes its free lists, puts a
/// canary after every block and ends every segment and large block with a
/// guard (see `heapkit_core::harden`). The two modes keep separate lists,
/// depots and segments, so both may be used in one program. All values of
/// a mode share one process-wide pool.
#[derive(Clone, Copy, Debug, Default)]
pub struct Pool<P: Policy = DefaultPolicy>(PhantomData<P>);

impl Pool<DefaultPolicy> {
    /// The pool (usable in a `static`), in the [`DefaultPolicy`] mode.
    pub const fn new() -> Self {
        Pool(PhantomData)
    }
}

impl Pool<Hardened> {
    /// The pool in hardened mode, whatever the crate's features:
    ///
    /// ```
    /// #[global_allocator]
    /// static GLOBAL: heapkit_pool::Pool<heapkit_pool::Hardened> =
    ///     heapkit_pool::Pool::hardened();
    ///
    /// let v: Vec<u32> = (0..100).collect();
    /// assert_eq!(v[99], 99);
    /// ```
    pub const fn hardened() -> Self {
        Pool(PhantomData)
    }
}

impl Pool<Fast> {
    /// The pool in the default (fast) mode, whatever the crate's features.
    pub const fn fast() -> Self {
        Pool(PhantomData)
    }
}

impl<P: Policy> Pool<P> {
    /// Releases every chunk whose blocks are all free (of both modes),
    /// after flushing the calling thread's cache, and empties the
    /// large-block cache. Returns the bytes of chunks released. See
    /// [`trim`] for the cost.
    pub fn trim(&self) -> usize {
        trim::trim()
    }

    /// Bytes of all chunks currently cut from segments (live, cached or free
    /// blocks alike, both modes): what [`Pool::trim`] could at most give
    /// back.
    pub fn chunk_bytes(&self) -> usize {
        CHUNKS.iter().map(|c| c.lock().chunk_bytes_in_use()).sum()
    }

    /// The class of `ptr` if it is a block of this mode's segments (else a
    /// large block, or a foreign pointer, which the large path reports).
    ///
    /// # Safety
    /// `ptr`'s segment must be mapped (true of any pointer into a heapkit
    /// mapping).
    #[inline(always)]
    unsafe fn pool_class(ptr: *const u8) -> Option<usize> {
        // SAFETY: every heapkit mapping starts with its tag (caller); a
        // pool segment's page_class is initialised.
        unsafe {
            if ptr::addr_of!((*header_of(ptr)).tag).read() == P::TAG {
                Some(class_of_block(ptr))
            } else {
                None
            }
        }
    }
}

// SAFETY: blocks come from disjoint slots of chunks (or the large path), are
// at least class-size long (the request plus the hardened canary) and
// aligned as `class_for` requires (chunks are aligned to their power-of-two
// size); free and usable_size find the owner by the segment tag (each mode
// has its own); every path returns null on exhaustion and none allocates
// through the global allocator or panics.
unsafe impl<P: Policy> HeapAlloc for Pool<P> {
    const SEGMENTED: bool = true;

    #[inline]
    fn allocate(&self, layout: Layout) -> *mut u8 {
        match P::class_for(layout) {
            Some(class) => {
                let p = thread_cache::current().alloc::<P>(class);
                if !p.is_null() {
                    // SAFETY: p is a fresh block of class, holding the
                    // size plus the canary.
                    unsafe { P::on_handout(p, class, layout.size()) };
                }
                p
            }
            None => slow::alloc_large(layout, false, P::GUARD_PAGES),
        }
    }

    #[inline]
    fn allocate_zeroed(&self, layout: Layout) -> *mut u8 {
        match P::class_for(layout) {
            Some(class) => {
                let p = thread_cache::current().alloc_zeroed::<P>(class, layout.size());
                if !p.is_null() {
                    // SAFETY: as in `allocate`; the canary starts where the
                    // zeroed bytes end.
                    unsafe { P::on_handout(p, class, layout.size()) };
                }
                p
            }
            None => slow::alloc_large(layout, true, P::GUARD_PAGES),
        }
    }

    #[inline]
    unsafe fn free(&self, ptr: *mut u8) {
        // SAFETY: ptr is in a heapkit mapping (caller).
        let Some(class) = (unsafe { Self::pool_class(ptr) }) else {
            // SAFETY: not a segment of this mode, so a large block (or a
            // foreign one, which the large path reports).
            return unsafe { slow::free_large(ptr) };
        };
        // SAFETY: ptr lies in a page of `class` of this mode's segment;
        // the hardened checks stop anything but a live block, which the
        // caller gives up.
        unsafe {
            P::on_free("free", class, ptr);
            thread_cache::current().free::<P>(ptr, class)
        }
    }

    #[inline]
    unsafe fn usable_size(&self, ptr: *mut u8) -> usize {
        // SAFETY: ptr is a live block (caller).
        unsafe {
            match Self::pool_class(ptr) {
                Some(class) => P::usable(ptr, class),
                None => heapkit_core::large::usable_size(ptr),
            }
        }
    }

    unsafe fn reallocate(&self, ptr: *mut u8, old_layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: ptr is a live block (caller).
        let usable = match unsafe { Self::pool_class(ptr) } {
            Some(class) => {
                // SAFETY: ptr lies in a page of `class`; checked live
                // (hardened) before anything is read.
                unsafe { P::check("realloc", class, ptr) };
                let size = block_size(class);
                let needed = new_size.saturating_add(P::TRAILER);
                // In place while the class fits and at least half of it is
                // used (so shrinking a big block to a small one frees
                // memory).
                if needed <= size && needed >= size / 2 {
                    // SAFETY: a live block of class holding `needed` bytes.
                    unsafe { P::on_resize(class, ptr, new_size) };
                    slow::count_realloc(size, size);
                    return ptr;
                }
                // SAFETY: a live block of class (checked).
                unsafe { P::usable(ptr, class) }
            }
            None => {
                if new_size > MAX_SIZE {
                    // SAFETY: a live large block; large keeps its alignment.
                    return unsafe { slow::realloc_large(ptr, new_size) };
                }
                // SAFETY: a live large block.
                unsafe { heapkit_core::large::usable_size(ptr) }
            }
        };
        let Ok(new_layout) = Layout::from_size_align(new_size, old_layout.align()) else {
            return ptr::null_mut();
        };
        let new = self.allocate(new_layout);
        if !new.is_null() {
            // SAFETY: both blocks are live and distinct; the copy stays in
            // bounds of both.
            unsafe {
                ptr::copy_nonoverlapping(ptr, new, old_layout.size().min(new_size).min(usable));
                self.free(ptr);
            }
            slow::count_realloc(0, 0);
        }
        new
    }

    fn trim(&self) -> bool {
        let before = heapkit_core::os::os_counters();
        let released = Pool::trim(self);
        released > 0 || heapkit_core::os::os_counters().released_since(&before)
    }

    fn stats(&self) -> Stats {
        let mut s = STATS.snapshot(Some(&thread_cache::current().stats));
        // Every chunk cut from a segment (live, cached or free blocks: a
        // chunk goes back only whole, at trim), and the live large mappings.
        s.active_bytes = (self.chunk_bytes() + heapkit_core::large::live_mapped_bytes()) as u64;
        s
    }
}

heapkit_core::global_alloc!(<P: Policy> Pool<P>);

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
