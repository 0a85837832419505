//! [`Bump`]: a global allocator that only moves a pointer forward.
//!
//! Each thread carves its allocations out of its own chunk by bumping a
//! pointer; when the chunk is full it maps a new one (chunks double from
//! [`MIN_CHUNK`] up to [`MAX_CHUNK`] = one 4 MiB segment). Memory is **never
//! reused**, with one exception: the most recent allocation of a thread can
//! be freed (the pointer moves back) or grown and shrunk in place (the
//! pointer moves with it). Every other `free` is a no-op, so a program's
//! footprint only grows. That is the right trade for short-lived batch
//! programs (compilers, code generators, CLI tools) that allocate, compute
//! and exit; it is the wrong one for servers and long loops. The harness
//! (`heapkit-bench`) shows the growth in its RSS columns.
//!
//! Blocks above [`LARGE_THRESHOLD`] (64 KiB), or aligned to more than
//! [`MAX_CHUNK_ALIGN`], go to the shared large path (`heapkit_core::large`),
//! whose blocks really are unmapped (or cached briefly) on `free`: big
//! buffers come back even under a bump allocator.
//!
//! # Call tree
//!
//! ```text
//! allocate / allocate_zeroed           (inline; THREAD cur/end; no lock, no atomic)
//! ├─ chunk-sized and fits the current chunk: bump, write the size header, count
//! └─ slow::allocate                    (cold)
//!    ├─ large or over-aligned -> heapkit_core::large::allocate
//!    └─ slow::refill: map a 4 MiB-aligned chunk tagged BUMP,
//!       register the thread-exit hook (first chunk of a thread),
//!       then allocate again (fast path)
//! deallocate(ptr, layout)              (inline)
//! ├─ layout may be large -> free()
//! └─ ptr + size == cur: move cur back; otherwise nothing
//! free(ptr)                            (inline; one tag load)
//! ├─ tag LARGE -> heapkit_core::large::free
//! └─ header size; last block of this thread: move cur back
//! reallocate                           (inline)
//! ├─ stays chunk-sized, last block and fits: move cur (grow / shrink in place)
//! ├─ shrinking: stay
//! └─ slow::reallocate: large path, or allocate + copy + free
//! usable_size(ptr): tag LARGE -> large::usable_size, else the header
//! thread exit (slow::on_thread_exit): flush stats, unmap the untouched tail
//! ```
//!
//! # Costs
//!
//! - An allocation is a TLS load, an add, a mask, a compare and two stores
//!   (the bump pointer and the size header), plus heapkit-core's per-thread
//!   counters (two adds and one compare; folded into the global stats every
//!   4096 allocations, at chunk refills and at thread exit). A free is a TLS
//!   load, the idle-sentinel compare, a compare with the bump pointer and
//!   two counter adds (plus a tag load when the layout is unknown).
//! - Every block carries an 8-byte header holding its size, so that C's
//!   `free`/`realloc`/`malloc_usable_size` work without a layout; blocks are
//!   at least 8-aligned. A 16-byte C allocation thus takes 32 bytes, a Rust
//!   `Box<u64>` 16, a 1-byte one 16 (sizes round up to words, which keeps
//!   the bump pointer aligned and the common alignments free). This is the
//!   price of a layout-free `usable_size`.
//! - Zeroed allocations from memory that no allocation has touched yet (fresh
//!   OS pages) are not memset; only the part below the thread's
//!   `dirty_until` mark (bytes handed out before and then freed or shrunk
//!   back) is cleared.
//!
//! # What the harness shows
//!
//! `heapkit-bench run --quick --allocators bump,system --threads 1` on a
//! shared 2-core VM, glibc = 1.00 (peak RSS / wall time): churn 264x /
//! 3.9x, trees 31x / 1.75x, realloc 4.5x / 1.5x, large 3.4x / 3.1x,
//! fragmentation 1.6x / 0.29x; larson at 4 threads peaked at 3 GiB. The
//! time lost is page faults: a program that frees and reallocates touches a
//! fresh page for every 4 KiB it ever allocates. Where the working set is
//! built once and dropped at exit (the fragmentation workload, a compiler),
//! Bump is the fastest allocator in the matrix.
//!
//! # Threads and fork
//!
//! No lock and no shared mutable state except the stats counters (flushed
//! in batches) and the OS. A block freed by another thread than the one that
//! allocated it is simply abandoned (it cannot be the freeing thread's last
//! block: chunks are disjoint segments). At thread exit the whole pages
//! after the thread's bump pointer are unmapped (the only memory a thread
//! can hand back); the thread's blocks stay valid for everyone else. A
//! thread that allocates again after its exit hook ran (from a later TLS
//! destructor) starts a fresh small chunk and registers again. `fork` needs
//! no handler: there is no global lock (the large path only ever *tries*
//! its cache lock, see `heapkit_core::large`), and a child keeps every
//! mapping, so blocks of threads that do not exist there stay valid.
//!
//! # Example
//!
//! ```
//! use heapkit_bump::Bump;
//!
//! #[global_allocator]
//! static GLOBAL: Bump = Bump::new();
//!
//! fn main() {
//!     let mut words: Vec<String> = Vec::new();
//!     for i in 0..1000 {
//!         words.push(format!("word{i}"));
//!     }
//!     assert_eq!(words[999], "word999");
//!     let stats = heapkit_core::HeapAlloc::stats(&GLOBAL);
//!     assert!(stats.allocs >= 1000);
//! }
//! ```

mod slow;
#[cfg(test)]
mod tests;

use core::alloc::Layout;
use core::cell::Cell;

use heapkit_core::segment::{tag_of, SegmentTag, SEGMENT_ALIGN};
use heapkit_core::{large, GlobalStats, HeapAlloc, Stats, ThreadStats};

/// Blocks larger than this (bytes) are large blocks: each its own mapping
/// on `heapkit_core::large`, really released on `free` (bump chunks would
/// never give them back; at 512 KiB the harness's `large` workload peaked
/// at 1.3 GiB, at 64 KiB 229 MiB).
pub const LARGE_THRESHOLD: usize = 64 << 10;
/// Alignments above this (bytes) go to the large path (which serves up to
/// 2 MiB).
pub const MAX_CHUNK_ALIGN: usize = 64 << 10;
/// The first chunk of a thread (bytes).
pub const MIN_CHUNK: usize = 64 << 10;
/// The largest chunk: one segment, so `segment_of` finds its tag.
pub const MAX_CHUNK: usize = SEGMENT_ALIGN;

/// Bytes of the size header before every chunk block.
const HEADER: usize = core::mem::size_of::<usize>();

const _: () = assert!(LARGE_THRESHOLD + MAX_CHUNK_ALIGN + 2 * HEADER + 64 < MAX_CHUNK);
const _: () = assert!(MIN_CHUNK.is_power_of_two() && MIN_CHUNK <= MAX_CHUNK);

/// A bump-pointer global allocator with per-thread chunks.
///
/// See the [module documentation](self) for what it is for and what it
/// costs: in short, memory is never reused except by the last allocation of
/// a thread, so use it for short-lived batch programs only.
///
/// All `Bump` values share the same per-thread chunks and counters (like
/// `std::alloc::System`, it is a handle, not a container).
#[derive(Clone, Copy, Debug, Default)]
pub struct Bump {
    _private: (),
}

/// The start of every chunk: its tag and how much is mapped.
#[repr(C)]
struct ChunkHeader {
    tag: SegmentTag,
    map_size: usize,
}

/// One thread's bump state. `const`-initialised, no `Drop`, only touched by
/// its thread.
///
/// Invariants:
/// - `cur <= end + 1`; either `cur == end == 0` (the sentinel: no chunk, the
///   first allocation fails the fit test and takes the slow path) or
///   `chunk + size_of::<ChunkHeader>() <= cur <= end < chunk + MAX_CHUNK`
///   for the thread's current chunk, so every block (even a zero-size one at
///   `end`) masks to that chunk's segment.
/// - Every byte in `[max(cur, dirty_until), end)` is zero (never handed out
///   since the chunk was mapped).
/// - `cur` is 8-aligned; every block `p` handed out from a chunk is
///   8-aligned, occupies a whole number of words and has that size (its
///   usable size) at `p - HEADER`.
/// - A block `p` of size `s` is this thread's last block iff
///   `p + s == cur`; moving `cur` back to `p - HEADER` frees it.
pub(crate) struct ThreadHeap {
    cur: Cell<usize>,
    end: Cell<usize>,
    dirty_until: Cell<usize>,
    /// Size of the next chunk to map.
    next_chunk: Cell<usize>,
    /// [`ThreadState`] as a byte.
    state: Cell<u8>,
    /// This thread's counters (heapkit-core's one mechanism: two adds per
    /// operation; flushed every 4096 allocations, by the slow paths and at
    /// thread exit).
    stats: ThreadStats,
}

impl ThreadHeap {
    /// A heap with no chunk.
    const fn new() -> ThreadHeap {
        ThreadHeap {
            cur: Cell::new(0),
            end: Cell::new(0),
            dirty_until: Cell::new(0),
            next_chunk: Cell::new(MIN_CHUNK),
            state: Cell::new(ThreadState::Fresh as u8),
            stats: ThreadStats::new(),
        }
    }
}

/// Registration state of a thread.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum ThreadState {
    /// No exit hook registered yet.
    Fresh = 0,
    /// Exit hook registered (or being registered).
    Registered = 1,
    /// The exit hook ran; a later allocation registers again.
    Exited = 2,
}

heapkit_core::thread_state! {
    /// This thread's heap: storage, the idle sentinel (an empty range,
    /// `cur == end == 0`, sends every allocation slow; frees and
    /// reallocations bind before they write) and the thread pointer. A
    /// thread's exit hook is registered when it binds, so the counts of a
    /// thread that only frees are flushed too.
    mod state: ThreadHeap = ThreadHeap::new(), symbol = "heapkit_bump_thread_heap",
        on_bind = slow::register_bound_thread;
}

/// The calling thread's heap for the allocation fast path: an initial-exec
/// thread pointer (no `__tls_get_addr` call even in `libheapkit.so`),
/// naming the never-written idle heap until bound.
#[inline(always)]
fn current() -> &'static ThreadHeap {
    // SAFETY: the idle static or this thread's own heap, which lives as long
    // as the thread and is only used through Cells, by this thread.
    unsafe { &*state::current() }
}

/// The calling thread's own heap, bound (and its exit hook registered) on
/// first use: what every path that writes uses.
#[inline(always)]
fn bound() -> &'static ThreadHeap {
    // SAFETY: as for `current`.
    unsafe { &*state::bound() }
}

static GLOBAL_STATS: GlobalStats = GlobalStats::new();

/// Whether a block of `layout` lives in a chunk: a live block is a chunk
/// block iff its current layout passes this test. `allocate` sends
/// everything else to the large path, `reallocate` resizes in place only
/// within these bounds and moves a large block that shrinks into them back
/// into a chunk.
#[inline]
fn chunk_sized(size: usize, align: usize) -> bool {
    size <= LARGE_THRESHOLD && align <= MAX_CHUNK_ALIGN
}

impl Bump {
    /// The allocator handle; usable in a `static`.
    pub const fn new() -> Self {
        Self { _private: () }
    }

    /// The fast path: bump within the current chunk or go slow.
    #[inline(always)]
    fn allocate_in(t: &ThreadHeap, layout: Layout, zeroed: bool) -> *mut u8 {
        // Constant-folded away for the usual constant layouts.
        if !chunk_sized(layout.size(), layout.align()) {
            return slow::allocate(layout, zeroed);
        }
        let size = round_to_word(layout.size());
        let cur = t.cur.get();
        // No overflow: cur and end are user-space addresses (< 2^47) or 0,
        // and a Layout keeps size + align - 1 <= isize::MAX. cur is always
        // 8-aligned, so the usual alignments cost no rounding at all.
        let p = if layout.align() <= HEADER {
            cur.wrapping_add(HEADER)
        } else {
            cur.wrapping_add(HEADER + layout.align() - 1) & !(layout.align() - 1)
        };
        let new_cur = p.wrapping_add(size);
        if new_cur > t.end.get() {
            return slow::allocate(layout, zeroed);
        }
        t.cur.set(new_cur);
        let block = p as *mut u8;
        // SAFETY: cur <= p - HEADER and p + size <= end, so the header and
        // the block are inside the current chunk, unused, and p - HEADER is
        // 8-aligned (align >= 8).
        unsafe { block.sub(HEADER).cast::<usize>().write(size) };
        if zeroed {
            let dirty = t.dirty_until.get();
            if p < dirty {
                let n = (dirty - p).min(size);
                // SAFETY: the first n bytes of the block are ours.
                unsafe { block.write_bytes(0, n) };
            }
        }
        t.stats.on_alloc(&GLOBAL_STATS, size);
        block
    }

    /// Frees chunk block `ptr` of `size` bytes: moves the bump pointer back
    /// if it is this thread's last block.
    #[inline(always)]
    fn free_in(t: &ThreadHeap, ptr: *mut u8, size: usize) {
        let size = round_to_word(size);
        let p = ptr as usize;
        let cur = t.cur.get();
        if p.wrapping_add(size) == cur {
            t.cur.set(p - HEADER);
            if cur > t.dirty_until.get() {
                t.dirty_until.set(cur);
            }
        }
        t.stats.on_free(size);
    }

    /// The statistics of the calling thread (pending) and everyone else
    /// (flushed); see `heapkit_core::stats`.
    pub fn thread_stats_snapshot() -> Stats {
        GLOBAL_STATS.snapshot(Some(&current().stats))
    }
}

/// `size` rounded up to a multiple of 8: chunk blocks occupy whole words,
/// which keeps the bump pointer 8-aligned. No overflow: sizes from a Layout
/// are at most isize::MAX.
#[inline(always)]
const fn round_to_word(size: usize) -> usize {
    size.wrapping_add(HEADER - 1) & !(HEADER - 1)
}

/// The size header of chunk block `ptr` (its size rounded to words: the
/// usable size).
///
/// # Safety
/// `ptr` must be a live chunk block.
#[inline(always)]
unsafe fn header_size(ptr: *mut u8) -> usize {
    // SAFETY: every chunk block has its size in the 8 aligned bytes before it.
    unsafe { ptr.sub(HEADER).cast::<usize>().read() }
}

// SAFETY: allocations come from disjoint bump ranges of per-thread chunks or
// from the large path; nothing panics (no indexing, no unwrap; arithmetic
// that could overflow is wrapping and checked against `end`) or allocates
// through the global allocator; every block is at least 8-aligned and
// aligned to its layout; free/usable_size work from any thread through the
// segment tag and the size header.
unsafe impl HeapAlloc for Bump {
    const SEGMENTED: bool = true;

    #[inline]
    fn allocate(&self, layout: Layout) -> *mut u8 {
        Self::allocate_in(current(), layout, false)
    }

    #[inline]
    fn allocate_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::allocate_in(current(), layout, true)
    }

    #[inline]
    unsafe fn deallocate(&self, ptr: *mut u8, layout: Layout) {
        if !chunk_sized(layout.size(), layout.align()) {
            // SAFETY: forwarded caller guarantee.
            return unsafe { self.free(ptr) };
        }
        // A live block whose layout is chunk-sized is a chunk block (see
        // chunk_sized), and its header holds layout.size().
        Self::free_in(bound(), ptr, layout.size())
    }

    #[inline]
    unsafe fn free(&self, ptr: *mut u8) {
        // SAFETY: ptr is a live block of ours, so its segment is tagged.
        if unsafe { tag_of(ptr) } != SegmentTag::BUMP {
            // SAFETY: a live large block (the large path checks the tag and
            // reports anything else as an invalid pointer).
            return unsafe { slow::free_large(ptr) };
        }
        // SAFETY: a live chunk block.
        let size = unsafe { header_size(ptr) };
        Self::free_in(bound(), ptr, size)
    }

    #[inline]
    unsafe fn usable_size(&self, ptr: *mut u8) -> usize {
        // SAFETY: ptr is a live block of ours, so its segment is tagged.
        if unsafe { tag_of(ptr) } != SegmentTag::BUMP {
            // SAFETY: a live large block.
            unsafe { large::usable_size(ptr) }
        } else {
            // SAFETY: a live chunk block.
            unsafe { header_size(ptr) }
        }
    }

    #[inline]
    unsafe fn reallocate(&self, ptr: *mut u8, old_layout: Layout, new_size: usize) -> *mut u8 {
        let align = old_layout.align();
        // In place only while the block stays chunk-sized: beyond that it
        // moves to the large path (one copy of at most LARGE_THRESHOLD
        // bytes, then mremap), so every block above the threshold is freed
        // for real.
        if chunk_sized(new_size, align) {
            let in_place = (|| {
                let t = bound();
                let p = ptr as usize;
                // The tag, not the layout, decides: C's realloc passes the
                // usable size and 16 as the old layout, which for an
                // over-aligned large block looks chunk-sized.
                // SAFETY: ptr is live, so its segment is tagged.
                if unsafe { tag_of(ptr) } == SegmentTag::LARGE {
                    return false;
                }
                // SAFETY: a live chunk block.
                let old = unsafe { header_size(ptr) };
                let cur = t.cur.get();
                let new_words = round_to_word(new_size);
                if p.wrapping_add(old) == cur && new_words <= t.end.get().wrapping_sub(p) {
                    // The last block: move the bump pointer with it.
                    let new_cur = p + new_words;
                    t.cur.set(new_cur);
                    if new_cur < cur && cur > t.dirty_until.get() {
                        t.dirty_until.set(cur);
                    }
                } else if new_words > old {
                    return false;
                }
                // Shrinking a block that is not last keeps it where it is;
                // the header shrinks so C's realloc copies no more than
                // requested, and usable_size stays truthful.
                // SAFETY: a live chunk block; its header is ours to update.
                unsafe { ptr.sub(HEADER).cast::<usize>().write(new_words) };
                t.stats.on_realloc(&GLOBAL_STATS, old, new_words);
                true
            })();
            if in_place {
                return ptr;
            }
        }
        // SAFETY: forwarded caller guarantee.
        unsafe { slow::reallocate(self, ptr, old_layout, new_size) }
    }

    fn stats(&self) -> Stats {
        Self::thread_stats_snapshot()
    }
}

heapkit_core::global_alloc!(Bump);
