//! The shared large-allocation path: one span of segments per block.
//!
//! Requests above an allocator's largest size class come here. Each block
//! owns a span of whole segments ([`map_segments`], usually carved from the
//! [`reservation`](crate::reservation) without a syscall), aligned to
//! [`SEGMENT_ALIGN`] and tagged [`SegmentTag::LARGE`], with a small header
//! before the user pointer, so `free`/`usable_size` need no layout. Fresh
//! spans are zero, so `allocate(.., zeroed = true)` never memsets them.
//! `reallocate` resizes within the span without a syscall, grows the span
//! with `mremap` in place when the address space after it is free, or moves
//! its pages (no copy) to a fresh span.
//!
//! Freed blocks are kept in a cache (at most [`CACHE_SLOTS`] blocks, and
//! `HEAPKIT_LARGE_CACHE_MB` bytes, default [`CACHE_BYTES`], or half the
//! bytes of live large blocks when that is more: the limit follows demand)
//! so a program that frees and reallocates blocks of similar size skips the
//! page faults; entries older than `HEAPKIT_LARGE_DECAY_MS` (default
//! [`CACHE_DELAY_NS`]) are unmapped by the next large operation or by
//! [`trim`], so resident memory falls soon after a program frees.
//!
//! The cache lock is only ever tried, never waited for: a busy lock sends
//! the operation to the OS instead, so no large operation blocks and a
//! forked child whose parent held the lock still allocates (the optional
//! [`before_fork`] handlers let an allocator keep the cache usable there).
//!
//! Cost: `allocate` is a cache hit or a carve (an `mmap` per 64 MiB of
//! spans, or per block above 16 MiB); `free` is a cache insert or a
//! `munmap`. The header costs one page (`max(64, align)` bytes before the
//! pointer).

use core::alloc::Layout;
use core::ptr;
use core::sync::atomic::Ordering::Relaxed;

use crate::misuse::{self, Misuse};
use crate::os;
use crate::segment::{segment_of, SegmentTag, SEGMENT_ALIGN};

mod cache;

pub use cache::{
    after_fork_child, after_fork_parent, before_fork, trim, CACHE_BYTES, CACHE_DELAY_NS,
    CACHE_SLOTS,
};
use cache::{reclaim_cache, take_cached, LIVE_BYTES};

/// The largest alignment the large path supports (glibc, jemalloc and
/// mimalloc serve up to 1 GiB too).
pub const MAX_ALIGN: usize = 1 << 30;
/// Alignments above this put the block at a segment boundary, with the
/// header one segment before it (see [`allocate`]).
const NEAR_ALIGN: usize = SEGMENT_ALIGN / 2;
/// Header at the start of every large mapping.
#[repr(C)]
struct LargeHeader {
    /// [`SegmentTag::LARGE`].
    tag: SegmentTag,
    /// Bytes mapped, from the segment start.
    map_size: usize,
    /// Offset of the user pointer from the segment start.
    offset: usize,
    /// A [`BlockState`] as its `u64` (read as a plain word: after a misuse
    /// this memory may hold anything): whether the block is handed out or
    /// sits in the cache, so a second free of a cached block is reported,
    /// not cached twice.
    state: u64,
    /// Bytes of the inaccessible guard right after `map_size` (0: none; see
    /// [`allocate_guarded`]).
    guard: usize,
    /// Where the usable block ends, from the segment start: `map_size`, or,
    /// for a guarded block that reuses a larger cached mapping, a page made
    /// inaccessible inside the mapping (the *moved guard*, which stays
    /// while the mapping is cached; see [`allocate_guarded`]).
    end: usize,
}

/// Where a large mapping is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
enum BlockState {
    /// Handed out to the program.
    Live = 0x6c69_7665,
    /// Freed into the cache.
    Cached = 0x6361_6368,
}

/// Writes the header of a block handed out at `base + offset` of a
/// mapping of `map_size` bytes (plus `guard`), counts it live, and returns
/// the user pointer.
///
/// # Safety
/// `base..+map_size` is a large mapping nobody else uses, and `offset` is
/// at least the header's size and at most `map_size` (equal for a
/// zero-size block whose alignment fills the mapping).
unsafe fn hand_out(base: *mut u8, map_size: usize, offset: usize, guard: usize) -> *mut u8 {
    debug_assert!(offset >= core::mem::size_of::<LargeHeader>() && offset <= map_size);
    // SAFETY: caller guarantee: the header fits before the block.
    unsafe {
        base.cast::<LargeHeader>().write(LargeHeader {
            tag: SegmentTag::LARGE,
            map_size,
            offset,
            state: BlockState::Live as u64,
            guard,
            end: map_size,
        });
    }
    LIVE_BYTES.fetch_add(map_size, Relaxed);
    // SAFETY: offset <= map_size: inside the mapping or one past its end.
    unsafe { base.add(offset) }
}

fn offset_for(align: usize) -> usize {
    align.max(64)
}

/// Allocates a large block for `layout`; zeroed if `zeroed`. Returns null on
/// exhaustion or if `layout.align() > MAX_ALIGN`.
pub fn allocate(layout: Layout, zeroed: bool) -> *mut u8 {
    if layout.align() > NEAR_ALIGN {
        return allocate_far_aligned(layout);
    }
    let offset = offset_for(layout.align());
    let Some(map_size) = layout
        .size()
        .checked_add(offset)
        .and_then(os::round_to_pages)
    else {
        return ptr::null_mut();
    };
    let (mut base, cached_size) = take_cached(map_size, 0);
    let recycled = !base.is_null();
    let map_size = if recycled { cached_size } else { map_size };
    if !recycled {
        base = map_segments(map_size);
        if base.is_null() {
            return base;
        }
    }
    // SAFETY: base is a fresh or cached mapping of `map_size` bytes, aligned
    // to SEGMENT_ALIGN, that nobody else uses.
    unsafe {
        let user = hand_out(base, map_size, offset, 0);
        if zeroed && recycled {
            // Only the requested bytes must read as zero (C's calloc).
            os::zero_dead(user, layout.size());
        }
        user
    }
}

/// A block aligned to `SEGMENT_ALIGN` or more (up to [`MAX_ALIGN`]): the
/// pointer is itself a segment boundary, so the header sits at the start
/// of the segment before it, inside the same mapping (`segment_of` maps a
/// boundary pointer to the segment before it). Fresh, so zeroed; never
/// from the cache, whose mappings have no such alignment.
#[cold]
#[inline(never)]
fn allocate_far_aligned(layout: Layout) -> *mut u8 {
    let align = layout.align();
    if align > MAX_ALIGN {
        return ptr::null_mut();
    }
    let Some(body) = os::round_to_pages(layout.size().max(1)) else {
        return ptr::null_mut();
    };
    let Some(map_size) = body.checked_add(SEGMENT_ALIGN) else {
        return ptr::null_mut();
    };
    // The block owns whole segments (see `unmap_segments`), plus room to
    // slide it to an `align` boundary.
    let Some(span) = span_of(map_size) else {
        return ptr::null_mut();
    };
    let Some(reserve) = span.checked_add(align - SEGMENT_ALIGN) else {
        return ptr::null_mut();
    };
    let mut raw = os::map_aligned(reserve, SEGMENT_ALIGN);
    if raw.is_null() {
        reclaim_cache();
        raw = os::map_aligned(reserve, SEGMENT_ALIGN);
        if raw.is_null() {
            return raw;
        }
    }
    let user = (raw as usize + SEGMENT_ALIGN).next_multiple_of(align);
    let base = (user - SEGMENT_ALIGN) as *mut u8;
    let head = base as usize - raw as usize;
    let tail = reserve - head - span;
    // SAFETY: the head and tail are parts of our fresh reservation outside
    // base..base + span, which is what the block keeps.
    unsafe {
        if head > 0 {
            os::unmap(raw, head);
        }
        if tail > 0 {
            os::unmap(base.add(span), tail);
        }
    }
    advise_huge_pages(base, span);
    crate::segment::REGIONS.mark(base);
    // SAFETY: base..+map_size is our fresh mapping; the header fits in its
    // first segment.
    unsafe { hand_out(base, map_size, SEGMENT_ALIGN, 0) }
}

/// A large block for hardened allocators, ending right before an
/// inaccessible page, so a linear overflow past it faults at once instead
/// of running into whatever is mapped next. The block's size is the
/// request rounded up to 16 bytes (or its alignment), so an overflow of up
/// to 15 bytes stays inside it. Alignments above a page cannot end at a
/// guard and take [`allocate`]. A resize moves the block to a new guarded
/// block.
///
/// Freed guarded blocks wait in the cache, guard in place, for a guarded
/// request they fit (a fresh one costs `mmap`, `mprotect` and the page
/// faults: the `large` workload ran 30x slower without). A reused block
/// smaller than a segment (`START_AT_FROM`) ends at the mapping's guard
/// if it then still starts in the mapping's first segment, where
/// `segment_of` finds the header (no syscall). A bigger one (or one that
/// would not) starts where a fresh one would, near the mapping's start,
/// on the pages the last block began on, and the page right after it is
/// made inaccessible (the *moved guard*, `LargeHeader::end`; the last
/// block's moved guard is made accessible again): up to two `mprotect`s.
/// (Before, a mapping served no block that would start past its first
/// segment, and mimalloc-bench's malloc-large, which writes the first MiB
/// of 2-20 MiB blocks, mapped fresh ones: 3.5x default mode's time, now
/// 1.12x. Every reused block at the start: 8,900 `mprotect`s in the C
/// stress program, 1.27x its time. Big blocks at the end too, found
/// through a second header in the segment they start in: their first
/// pages were rarely resident, malloc-large 2.6x.)
pub fn allocate_guarded(layout: Layout, zeroed: bool) -> *mut u8 {
    let page = os::page_size();
    if layout.align() > page {
        return allocate(layout, zeroed);
    }
    let Some(body) = layout
        .size()
        .max(1)
        .checked_next_multiple_of(layout.align().max(16))
    else {
        return ptr::null_mut();
    };
    let Some(map_size) = body
        .checked_add(offset_for(16))
        .and_then(os::round_to_pages)
    else {
        return ptr::null_mut();
    };
    let Some(total) = map_size.checked_add(page) else {
        return ptr::null_mut();
    };
    let (cached, cached_size) = take_cached(map_size, page);
    if !cached.is_null() {
        // At the mapping's end if the block is small enough and still
        // starts in its first segment (where `segment_of` finds the
        // header), else at its start.
        let end = if body < START_AT_FROM && cached_size - body <= SEGMENT_ALIGN - page {
            cached_size
        } else {
            map_size
        };
        // SAFETY: a cached guarded mapping of cached_size >= map_size bytes
        // plus its guard, nobody else's.
        if unsafe { move_guard(cached, cached_size, end) } {
            // SAFETY: as above; the block ends at `end`, now a guard
            // (moved, or the mapping's own), and starts at least 64 bytes
            // into the first segment.
            unsafe {
                let user = hand_out(cached, cached_size, end - body, page);
                (*cached.cast::<LargeHeader>()).end = end;
                debug_assert_eq!(segment_of(user).cast::<u8>(), cached);
                if zeroed {
                    os::zero_dead(user, layout.size());
                }
                return user;
            }
        }
        // SAFETY: the kernel refused a protection change: the mapping (no
        // block in it) goes back whole.
        unsafe { unmap_segments(cached, cached_size + page) };
    }
    let base = map_segments(total);
    if base.is_null() {
        return base;
    }
    // SAFETY: base..+total is our fresh (zero) mapping; the guard is its
    // last page, beyond every byte the block uses; the header fits before
    // the block (offset >= 64).
    unsafe {
        if !os::protect(base.add(map_size), page, false) {
            unmap_segments(base, total);
            return ptr::null_mut();
        }
        hand_out(base, map_size, map_size - body, page)
    }
}

/// Makes the page at `end` of the cached guarded mapping `base` (of
/// `map_size` bytes plus its own guard) its block's guard: the last
/// block's moved guard, if elsewhere, accessible again, and the page at
/// `end` inaccessible unless it is the mapping's own guard. Returns false
/// if the kernel refused (the mapping must then not be reused).
///
/// # Safety
/// `base` is a cached guarded mapping nobody else uses, `end` a page
/// multiple in `..=map_size`.
unsafe fn move_guard(base: *mut u8, map_size: usize, end: usize) -> bool {
    let page = os::page_size();
    // SAFETY: caller guarantee: the header is the mapping's; the pages
    // changed lie inside it and hold nothing live.
    unsafe {
        let last = (*base.cast::<LargeHeader>()).end;
        if last == end {
            return true;
        }
        if last != map_size && !os::protect(base.add(last), page, true) {
            return false;
        }
        end == map_size || os::protect(base.add(end), page, false)
    }
}

/// Guarded blocks of at least this many bytes that reuse a cached mapping
/// start near its start and get a moved guard (see [`allocate_guarded`]):
/// one segment. With 2 MiB, the C stress program (blocks up to 2.25 MiB,
/// of which it writes three bytes) made 1,150 `mprotect`s and ran
/// 1.03-1.10x the build without moved guards, malloc-large 1.08-1.16x
/// default mode's time; with a segment, 1.00x and 1.12x.
const START_AT_FROM: usize = SEGMENT_ALIGN;

/// [`reallocate`] of a guarded block: a new guarded block with the same
/// alignment (the largest the pointer has, up to a page), the contents
/// copied, the old one freed.
///
/// # Safety
/// `ptr` must be a live guarded large block of `old` usable bytes.
#[cold]
#[inline(never)]
unsafe fn reallocate_guarded(ptr: *mut u8, old: usize, new_size: usize) -> *mut u8 {
    let align = (1usize << (ptr as usize).trailing_zeros()).min(os::page_size());
    let Ok(layout) = Layout::from_size_align(new_size, align) else {
        return ptr::null_mut();
    };
    let q = allocate_guarded(layout, false);
    if !q.is_null() {
        // SAFETY: both blocks are live and distinct; the copy stays inside
        // both.
        unsafe {
            ptr::copy_nonoverlapping(ptr, q, old.min(new_size));
            free(ptr);
        }
    }
    q
}

/// Frees a large block.
///
/// # Safety
/// `ptr` must come from [`allocate`], [`allocate_guarded`] or
/// [`reallocate`] and not be freed yet.
pub unsafe fn free(ptr: *mut u8) {
    // SAFETY: the caller guarantees ptr is a live large block (checked).
    let (base, map_size) = unsafe { checked_header(ptr, "free") };
    LIVE_BYTES.fetch_sub(map_size, Relaxed);
    // SAFETY: the header was checked live just above.
    let guard = unsafe { (*base.cast::<LargeHeader>()).guard };
    // SAFETY: the block is dead and base..+map_size plus the guard is its
    // whole mapping.
    unsafe { cache::keep_or_unmap(base, map_size, guard) };
}

/// Bytes usable at `ptr`.
///
/// # Safety
/// `ptr` must be a live large block.
pub unsafe fn usable_size(ptr: *mut u8) -> usize {
    // SAFETY: the caller guarantees ptr is a live large block (checked).
    let (base, _) = unsafe { checked_header(ptr, "malloc_usable_size") };
    // SAFETY: the header was checked live just above.
    unsafe { usable_end(base) - (ptr as usize - base as usize) }
}

/// Bytes usable at `ptr`, a block the caller is about to [`free`]: checked
/// as `free` checks it, so that misuse is reported as `free`'s (allocators
/// read the size first to count it).
///
/// # Safety
/// `ptr` must be a live large block.
pub unsafe fn size_to_free(ptr: *mut u8) -> usize {
    // SAFETY: the caller guarantees ptr is a live large block (checked).
    let (base, _) = unsafe { checked_header(ptr, "free") };
    // SAFETY: the header was checked live just above.
    unsafe { usable_end(base) - (ptr as usize - base as usize) }
}

/// Where the live block of the mapping at `base` ends, from `base`: its
/// mapping's end, or its moved guard.
///
/// # Safety
/// `base` holds a checked live large header.
#[inline]
unsafe fn usable_end(base: *mut u8) -> usize {
    // SAFETY: caller guarantee.
    unsafe { (*base.cast::<LargeHeader>()).end }
}

/// Resizes a large block to `new_size` bytes, keeping its contents; returns
/// the (possibly moved) block or null (the old block is then untouched).
///
/// # Safety
/// `ptr` must be a live large block.
pub unsafe fn reallocate(ptr: *mut u8, new_size: usize) -> *mut u8 {
    // SAFETY: the caller guarantees ptr is a live large block (checked).
    let (base, map_size) = unsafe { checked_header(ptr, "realloc") };
    let offset = ptr as usize - base as usize;
    // SAFETY: the header was checked live just above.
    if unsafe { (*base.cast::<LargeHeader>()).guard } != 0 {
        // SAFETY: a live guarded block, usable up to its end.
        return unsafe { reallocate_guarded(ptr, usable_end(base) - offset, new_size) };
    }
    let Some(new_map) = new_size.checked_add(offset).and_then(os::round_to_pages) else {
        return ptr::null_mut();
    };
    if new_map == map_size {
        return ptr;
    }
    // SAFETY: base..+map_size is exactly this block's mapping, in use by
    // the caller only.
    let moved = unsafe { resize_mapping(base, map_size, new_map) };
    if moved.is_null() {
        return moved;
    }
    LIVE_BYTES.fetch_add(new_map, Relaxed);
    LIVE_BYTES.fetch_sub(map_size, Relaxed);
    // SAFETY: the header moved with the pages; offset < new_map.
    unsafe {
        let header = moved.cast::<LargeHeader>();
        (*header).map_size = new_map;
        (*header).end = new_map;
        moved.add(offset)
    }
}

/// Resizes the large mapping at `base` from `old` to `new` bytes (page
/// multiples). Within the span of `old` ([`span_of`]) nothing moves: a
/// shrink gives the dropped pages back and unmaps whole segments past the
/// new span, a growth just uses more of the span. Past the span, the span
/// grows in place when the address space after it is free, or its pages
/// move (no copy; resident pages stay resident) to a fresh span. Returns
/// the new base, or null with the mapping untouched.
///
/// # Safety
/// `base` must be the start of a large mapping of `old` bytes (as
/// [`map_segments`] made it) that only the caller uses.
unsafe fn resize_mapping(base: *mut u8, old: usize, new: usize) -> *mut u8 {
    let (Some(old_span), Some(new_span)) = (span_of(old), span_of(new)) else {
        return ptr::null_mut();
    };
    if new_span <= old_span {
        // SAFETY: new..old and new_span..old_span lie inside the caller's
        // mapping, past every byte the resized block keeps.
        unsafe {
            if new < old {
                // A refused purge only leaves the pages resident.
                let _ = os::purge(base.add(new), old.min(new_span) - new);
            }
            if new_span < old_span {
                os::unmap(base.add(new_span), old_span - new_span);
            }
        }
        return base;
    }
    // SAFETY: caller guarantee; base..+old_span is the whole span.
    if unsafe { os::remap_in_place(base, old_span, new_span) } {
        return base;
    }
    let dest = map_segments(new);
    if dest.is_null() {
        return dest;
    }
    // SAFETY: dest is a fresh span of `new_span` bytes; the source is the
    // caller's whole span.
    if unsafe { os::remap_to(base, old_span, new_span, dest) } {
        // The pages moved: no mapping starts at `base` any more.
        crate::segment::REGIONS.unmark(base);
        return dest;
    }
    // SAFETY: the fresh span is unused.
    unsafe { unmap_segments(dest, new) };
    ptr::null_mut()
}

/// Bytes of the mappings of live large blocks (every heapkit allocator's,
/// process-wide): what they hold of the address space and, once written,
/// of memory.
pub fn live_mapped_bytes() -> usize {
    cache::LIVE_BYTES.load(core::sync::atomic::Ordering::Relaxed)
}

/// The address space a mapping of `size` bytes made by [`map_segments`]
/// owns: `size` rounded up to whole segments (None on overflow).
#[inline]
pub fn span_of(size: usize) -> Option<usize> {
    size.checked_next_multiple_of(SEGMENT_ALIGN)
}

/// Maps `size` bytes aligned to [`SEGMENT_ALIGN`] for a segment, chunk or
/// large block: a span of whole segments ([`span_of`]), fresh and zero, of
/// which the caller uses `size` bytes (the rest stays untouched). Usually
/// carved from the current [`reservation`](crate::reservation) without a
/// syscall; otherwise mapped on its own. At exhaustion it empties the block
/// cache and gives back the reservation's remainder (either may be what
/// uses up the address space) and tries once more, so a program that freed
/// memory gets it back before it sees NULL.
///
/// The mapping is recorded in [`crate::segment::REGIONS`]; give it back
/// with [`unmap_segments`] and the same `size`.
pub fn map_segments(size: usize) -> *mut u8 {
    let Some(span) = span_of(size) else {
        return ptr::null_mut();
    };
    let mut p = crate::reservation::carve(span);
    if p.is_null() {
        p = os::map_aligned(span, SEGMENT_ALIGN);
        if p.is_null() {
            reclaim_cache();
            p = os::map_aligned(span, SEGMENT_ALIGN);
        }
        // (A carved span's reservation was advised when it was mapped.)
        advise_huge_pages(p, span);
    }
    if !p.is_null() {
        crate::segment::REGIONS.mark(p);
    }
    p
}

/// `HEAPKIT_HUGE_PAGES`: asks for transparent huge pages on a fresh
/// mapping of ours (`p` null: nothing).
fn advise_huge_pages(p: *mut u8, size: usize) {
    if !p.is_null() && crate::options::get().huge_pages {
        // SAFETY: p..p+size is a fresh mapping the caller just made.
        unsafe { os::advise_huge_pages(p, size) };
    }
}

/// Unmaps a whole mapping made by [`map_segments`] (its whole span), first
/// clearing its region bit.
///
/// # Safety
/// `base` must come from [`map_segments`]`(size)` (or a resize that kept
/// the span of `size`), and nothing may use the mapping any more.
pub unsafe fn unmap_segments(base: *mut u8, size: usize) {
    crate::segment::REGIONS.unmark(base);
    let span = span_of(size).unwrap_or(size);
    // SAFETY: caller guarantee: base..+span is the span map_segments made.
    unsafe { os::unmap(base, span) };
}

/// The block's mapping (base, size), after checking that `ptr` is the start
/// of a live large block: a foreign segment, an interior pointer or a block
/// already freed is reported (and the process aborted) instead of being
/// unmapped or cached.
///
/// # Safety
/// `ptr`'s segment start must be mapped (true of any pointer into a heapkit
/// segment, the only kind the allocators pass here).
unsafe fn checked_header(ptr: *mut u8, call: &str) -> (*mut u8, usize) {
    let base = segment_of(ptr).cast::<u8>();
    // SAFETY: the segment start is mapped (caller); a large header is read
    // only after its tag says it is one.
    unsafe {
        if (*base.cast::<SegmentTag>()) != SegmentTag::LARGE {
            misuse::report(
                call,
                Misuse::InvalidPointer,
                ptr,
                "not allocated by heapkit",
            );
        }
        let h = &*base.cast::<LargeHeader>();
        if base.add(h.offset) != ptr {
            misuse::report(call, Misuse::InteriorPointer, ptr, "inside a large block");
        }
        if h.state != BlockState::Live as u64 {
            misuse::report(call, Misuse::DoubleFree, ptr, "large block");
        }
        (base, h.map_size)
    }
}

#[cfg(test)]
mod tests;
