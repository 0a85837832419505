//! The slow paths of [`Bump`]: mapping chunks, the large path, moving
//! reallocations and the thread-exit hook. Every function here is
//! `#[cold] #[inline(never)]` and ends, where it allocates from a chunk, by
//! calling the fast path again.

use core::alloc::Layout;
use core::ffi::c_void;
use core::ptr::{self, NonNull};

use heapkit_core::os::{self, ThreadExitKey};
use heapkit_core::segment::{tag_of, SegmentTag};
use heapkit_core::{large, HeapAlloc};

use super::{
    bound, chunk_sized, header_size, Bump, ChunkHeader, ThreadHeap, ThreadState, GLOBAL_STATS,
    HEADER, MAX_CHUNK,
};

static EXIT_KEY: ThreadExitKey = ThreadExitKey::new();

/// Registers the exit hook of a thread whose heap was just bound (so that
/// the counts of a thread that only frees are flushed too).
pub(super) fn register_bound_thread(t: *mut ThreadHeap) {
    // SAFETY: the thread's own heap, alive as long as the thread.
    register_thread(unsafe { &*t });
}

/// Serves what the current chunk cannot: a large block, or a new chunk and
/// then the fast path again.
#[cold]
#[inline(never)]
pub(super) fn allocate(layout: Layout, zeroed: bool) -> *mut u8 {
    let t = bound();
    t.stats.maybe_flush(&GLOBAL_STATS);
    if !chunk_sized(layout.size(), layout.align()) {
        return allocate_large(t, layout, zeroed);
    }
    if !refill(t, layout) {
        return ptr::null_mut();
    }
    register_thread(t);
    Bump::allocate_in(t, layout, zeroed)
}

fn allocate_large(t: &ThreadHeap, layout: Layout, zeroed: bool) -> *mut u8 {
    let p = large::allocate(layout, zeroed);
    if !p.is_null() {
        // SAFETY: p is a live large block.
        t.stats
            .on_alloc(&GLOBAL_STATS, unsafe { large::usable_size(p) });
    }
    p
}

/// Frees a large block and counts it.
///
/// # Safety
/// `ptr` must be a live large block.
#[cold]
#[inline(never)]
pub(super) unsafe fn free_large(ptr: *mut u8) {
    // SAFETY: caller guarantee.
    let size = unsafe { large::size_to_free(ptr) };
    // SAFETY: caller guarantee.
    unsafe { large::free(ptr) };
    let t = bound();
    t.stats.on_free(size);
    t.stats.maybe_flush(&GLOBAL_STATS);
}

/// Maps a new chunk big enough for `layout` and makes it current. The rest
/// of the old chunk is abandoned (its untouched pages cost address space,
/// not memory). Returns `false` if the OS refuses.
fn refill(t: &ThreadHeap, layout: Layout) -> bool {
    let header = core::mem::size_of::<ChunkHeader>();
    // chunk_sized(layout) bounds this well below MAX_CHUNK (const-asserted).
    let needed = header + HEADER + layout.align().max(HEADER) + layout.size() + 1;
    let Some(needed) = os::round_to_pages(needed) else {
        return false;
    };
    let size = t.next_chunk.get().max(needed).min(MAX_CHUNK);
    let base = large::map_segments(size);
    if base.is_null() {
        return false;
    }
    // SAFETY: base is a fresh mapping of `size` bytes, aligned to
    // SEGMENT_ALIGN; the header goes at its start.
    unsafe {
        base.cast::<ChunkHeader>().write(ChunkHeader {
            tag: SegmentTag::BUMP,
            map_size: size,
        })
    };
    let start = base as usize;
    t.cur.set(start + header);
    // One byte short of the mapping: a zero-size block at `end` still masks
    // to this segment.
    t.end.set(start + size - 1);
    t.dirty_until.set(0);
    t.next_chunk.set((size * 2).min(MAX_CHUNK));
    true
}

/// Registers the thread-exit hook once per thread (again after it ran).
/// Called after the new chunk is installed, so an allocation made by
/// `pthread_setspecific` itself (under the LD_PRELOAD shim) is served by the
/// fast path and does not register twice.
fn register_thread(t: &ThreadHeap) {
    if t.state.get() == ThreadState::Registered as u8 {
        return;
    }
    t.state.set(ThreadState::Registered as u8);
    // A non-null value so the destructor runs; it is never dereferenced. If
    // the key cannot be created the thread only loses the tail unmapping
    // and its last stats batch.
    let _ = EXIT_KEY.register(on_thread_exit, NonNull::<c_void>::dangling().as_ptr());
}

/// The thread-exit hook: flush the stats and unmap the whole pages after the
/// bump pointer (never handed out, so nobody points there). Blocks of the
/// thread stay valid. The thread returns to the sentinel state, so an
/// allocation from a later TLS destructor maps a fresh small chunk.
unsafe extern "C" fn on_thread_exit(_value: *mut c_void) {
    let t = bound();
    {
        t.stats.flush(&GLOBAL_STATS);
        let cur = t.cur.get();
        if cur != 0 {
            let base = heapkit_core::segment::segment_of(cur as *const u8).cast::<u8>();
            // SAFETY: cur is inside the thread's current chunk, whose header
            // is at its segment start.
            let map_size = unsafe { (*base.cast::<ChunkHeader>()).map_size };
            let tail = os::round_to_pages(cur).unwrap_or(usize::MAX);
            // The chunk owns its whole span (map_segments rounds up).
            let map_end = base as usize + large::span_of(map_size).unwrap_or(map_size);
            if tail < map_end {
                // SAFETY: [tail, map_end) is page-aligned, inside this
                // chunk's span and above every block ever handed out from
                // it (all blocks end at or below cur); the thread's state is
                // reset below, so nothing will hand it out.
                unsafe { os::unmap(tail as *mut u8, map_end - tail) };
            }
        }
        t.cur.set(0);
        t.end.set(0);
        t.dirty_until.set(0);
        t.next_chunk.set(super::MIN_CHUNK);
        t.state.set(ThreadState::Exited as u8);
    }
}

/// Reallocations that cannot stay in place: large blocks (by `mremap`), and
/// moves (allocate, copy, free). A large block that shrinks to a chunk-sized
/// layout moves into a chunk, which keeps the invariant `deallocate` relies
/// on (a chunk-sized live layout is a chunk block).
///
/// # Safety
/// As for [`HeapAlloc::reallocate`].
#[cold]
#[inline(never)]
pub(super) unsafe fn reallocate(
    bump: &Bump,
    ptr: *mut u8,
    old_layout: Layout,
    new_size: usize,
) -> *mut u8 {
    let align = old_layout.align();
    // SAFETY: ptr is a live block of ours.
    let is_large = unsafe { tag_of(ptr) } == SegmentTag::LARGE;
    if is_large && !chunk_sized(new_size, align) {
        // SAFETY: a live large block.
        let old = unsafe { large::usable_size(ptr) };
        // SAFETY: a live large block.
        let q = unsafe { large::reallocate(ptr, new_size) };
        if !q.is_null() {
            // SAFETY: q is the live, resized large block.
            let new = unsafe { large::usable_size(q) };
            bound().stats.on_realloc(&GLOBAL_STATS, old, new);
        }
        return q;
    }
    let Ok(new_layout) = Layout::from_size_align(new_size, align) else {
        return ptr::null_mut();
    };
    let q = bump.allocate(new_layout);
    if q.is_null() {
        return q;
    }
    let old = if is_large {
        // SAFETY: a live large block.
        unsafe { large::usable_size(ptr) }
    } else {
        // SAFETY: a live chunk block.
        unsafe { header_size(ptr) }
    };
    // SAFETY: both blocks are live and distinct; the copy is within both.
    unsafe { ptr::copy_nonoverlapping(ptr, q, old.min(new_size).min(old_layout.size())) };
    // SAFETY: ptr is live and no longer used.
    unsafe { bump.free(ptr) };
    q
}
