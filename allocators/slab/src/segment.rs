//! Segments: the 4 MiB mappings slabs are cut from, and how a pointer finds
//! its slab by masking.
//!
//! A segment is one `SEGMENT_ALIGN`-aligned mapping of `SEGMENT_ALIGN` bytes,
//! split into [`CHUNKS`] chunks of [`CHUNK`] bytes. The first
//! [`HEADER_CHUNKS`] chunks hold the [`SegmentHeader`]: the
//! [`SegmentTag::SLAB`] tag, two bytes per chunk (`chunk_class`: which cache
//! owns the chunk, `chunk_first`: where its slab starts) and one
//! [`SlabMeta`] per chunk. A slab is a run of whole chunks; its metadata is
//! `metas[first chunk]`. So for any object `p`:
//!
//! ```text
//! seg   = p & !(SEGMENT_ALIGN - 1)          // segment_of(p)
//! chunk = (p - seg) >> CHUNK_SHIFT
//! class = seg.chunk_class[chunk]            // the free fast path stops here
//! slab  = &seg.metas[seg.chunk_first[chunk]]
//! ```
//!
//! Slab data never holds a header, so a slab's first object sits at a
//! `CHUNK`-aligned address and objects of power-of-two size up to `CHUNK`
//! are naturally aligned to their size; larger power-of-two classes ask
//! [`alloc_run`] for runs starting at a multiple of their size.
//!
//! Free chunks are always *clean*: fresh from `mmap` or purged with
//! `MADV_DONTNEED` when their slab was released, so a new slab reads as
//! zero. A segment with no slab left is kept as the one spare, or unmapped.
//!
//! Each mode has its own segments and segment list: the default mode's
//! are tagged [`SegmentTag::SLAB`], the hardened mode's
//! [`SegmentTag::SLAB_HARDENED`], carry a random key for the free marks,
//! canaries and free-list links of their objects, and end with an
//! inaccessible guard (at least one chunk, never part of a slab), so a
//! linear overflow out of the last slab faults instead of running into the
//! next mapping. A cache's segments are those of its mode
//! ([`crate::slab::is_hardened`]).
//!
//! Each segment list is guarded by its own lock, taken only when a cache
//! needs a new slab or releases one (never on the magazine paths). Lock
//! order: a cache's slab lock, then this lock.

use core::ptr;

use heapkit_core::list::{Linked, List};
use heapkit_core::lock::SpinLock;
use heapkit_core::os;
use heapkit_core::segment::{segment_of, SegmentTag, SEGMENT_ALIGN};

use heapkit_core::harden::{Hardened, Policy};

use crate::slab::{is_hardened, SlabMeta};

/// log2 of [`CHUNK`].
pub const CHUNK_SHIFT: usize = 14;
/// The granule slabs are made of (16 KiB).
pub const CHUNK: usize = 1 << CHUNK_SHIFT;
/// Chunks per segment.
pub const CHUNKS: usize = SEGMENT_ALIGN / CHUNK;
/// `chunk_class` value of a chunk no slab owns (free, or the header).
pub const NO_CLASS: u8 = u8::MAX;

const BITMAP_WORDS: usize = CHUNKS / 64;

/// The start of every slab segment.
#[repr(C)]
pub struct SegmentHeader {
    /// [`SegmentTag::SLAB`] or [`SegmentTag::SLAB_HARDENED`]; first, so
    /// `heapkit_core::segment::tag_of` reads it.
    tag: SegmentTag,
    /// The key of the hardened mode's marks, canaries and links (0 in the
    /// default mode); on the tag's cache line, which a free reads anyway.
    key: usize,
    /// Cache index owning each chunk, or [`NO_CLASS`]. Written under the
    /// segment lock before any object of the chunk is handed out; read
    /// without a lock by `free` of a live object (which cannot race with a
    /// write to the same byte: the chunk's slab stays until it is empty).
    pub chunk_class: [u8; CHUNKS],
    /// Index of the first chunk of the slab owning each chunk.
    pub chunk_first: [u8; CHUNKS],
    /// Bit `i` set: chunk `i` is free (and clean). Under the segment lock.
    free: [u64; BITMAP_WORDS],
    /// Chunks owned by slabs. Under the segment lock.
    used_chunks: usize,
    /// The segment list (under the segment lock).
    next: *mut SegmentHeader,
    prev: *mut SegmentHeader,
    /// `metas[i]` describes the slab starting at chunk `i`.
    pub metas: [SlabMeta; CHUNKS],
}

/// Chunks taken by the header (never part of a slab).
pub const HEADER_CHUNKS: usize = core::mem::size_of::<SegmentHeader>().div_ceil(CHUNK);
const _: () = assert!(HEADER_CHUNKS == 1);
const _: () = assert!(CHUNKS <= 256, "chunk indices must fit a u8");
const _: () = assert!(CHUNKS.is_multiple_of(64));

/// Every slab segment (core's one intrusive list), and how many have no
/// slab (at most one is kept).
struct SegmentList {
    list: List<SegmentHeader>,
    spare: usize,
}

// SAFETY: `next` and `prev` are the segment header's own links; only
// SEGMENTS (under its lock) uses them.
unsafe impl Linked for SegmentHeader {
    unsafe fn next(node: *mut Self) -> *mut *mut Self {
        // SAFETY: node is a live segment (the trait's contract).
        unsafe { ptr::addr_of_mut!((*node).next) }
    }
    unsafe fn prev(node: *mut Self) -> *mut *mut Self {
        // SAFETY: as above.
        unsafe { ptr::addr_of_mut!((*node).prev) }
    }
}

/// The default mode's segments, then the hardened mode's.
static SEGMENTS: [SpinLock<SegmentList>; 2] = [const {
    SpinLock::new(SegmentList {
        list: List::EMPTY,
        spare: 0,
    })
}; 2];

/// The segment list of a cache's (or a segment's) mode.
fn segments(hardened: bool) -> &'static SpinLock<SegmentList> {
    &SEGMENTS[hardened as usize]
}

/// Chunks at the end of a hardened segment kept inaccessible: at least one,
/// and whole OS pages.
fn guard_chunks() -> usize {
    os::page_size().div_ceil(CHUNK).max(1)
}

/// The hardened mode's key of segment `seg` (0 in the default mode).
///
/// # Safety
/// `seg` must be a live slab segment.
#[inline(always)]
pub unsafe fn key(seg: *const SegmentHeader) -> usize {
    // SAFETY: a live segment's header is initialised (caller) and its key
    // never changes.
    unsafe { ptr::addr_of!((*seg).key).read() }
}

/// The offset of `p` from the start of its slab.
///
/// # Safety
/// `p` must lie in a chunk of a live slab segment `seg` that a slab owns.
#[inline(always)]
pub unsafe fn offset_in_slab(seg: *const SegmentHeader, p: *const u8) -> usize {
    let chunk = (p as usize - seg as usize) >> CHUNK_SHIFT;
    // SAFETY: chunk < CHUNKS (p lies in seg); the header is initialised.
    let first = unsafe { *ptr::addr_of!((*seg).chunk_first).cast::<u8>().add(chunk) };
    p as usize - seg as usize - ((first as usize) << CHUNK_SHIFT)
}

/// The metadata of the slab holding `p`.
///
/// # Safety
/// `p` must point into a slab of a live slab segment (a live object, or
/// anything inside a slab its caller's lock keeps alive).
#[inline]
pub unsafe fn slab_of(p: *const u8) -> *mut SlabMeta {
    let seg = segment_of(p).cast::<SegmentHeader>();
    let chunk = (p as usize - seg as usize) >> CHUNK_SHIFT;
    // SAFETY: the segment is mapped and its header initialised (caller);
    // chunk < CHUNKS because p lies inside the segment.
    unsafe {
        let first = *ptr::addr_of!((*seg).chunk_first).cast::<u8>().add(chunk);
        ptr::addr_of_mut!((*seg).metas)
            .cast::<SlabMeta>()
            .add(first as usize)
    }
}

/// The cache index of the slab holding `p`: one load from the header.
///
/// # Safety
/// As for [`slab_of`].
#[inline]
pub unsafe fn class_of_ptr(seg: *const SegmentHeader, p: *const u8) -> usize {
    let chunk = (p as usize - seg as usize) >> CHUNK_SHIFT;
    // SAFETY: chunk < CHUNKS (p is inside seg); the header is initialised.
    unsafe { *ptr::addr_of!((*seg).chunk_class).cast::<u8>().add(chunk) as usize }
}

/// Is `bits[i]` set?
#[cfg(test)]
fn bit(bits: &[u64; BITMAP_WORDS], i: usize) -> bool {
    bits.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

fn set_bits(bits: &mut [u64; BITMAP_WORDS], first: usize, n: usize, value: bool) {
    for i in first..first + n {
        if let Some(w) = bits.get_mut(i / 64) {
            if value {
                *w |= 1 << (i % 64);
            } else {
                *w &= !(1 << (i % 64));
            }
        }
    }
}

/// The first index `>= from` whose bit is `value` (below [`CHUNKS`]), a
/// word at a time.
fn next_bit(bits: &[u64; BITMAP_WORDS], from: usize, value: bool) -> Option<usize> {
    let flip = if value { 0 } else { u64::MAX };
    let mut i = from / 64;
    let mut w = (*bits.get(i)? ^ flip) & (u64::MAX << (from % 64));
    while w == 0 {
        i += 1;
        w = *bits.get(i)? ^ flip;
    }
    Some(i * 64 + w.trailing_zeros() as usize)
}

/// The first run of `n` free chunks starting at a multiple of `align` (a
/// power of two). Jumps from a free chunk to the next taken one and back a
/// word at a time, so a full or fragmented segment costs a few word scans,
/// not a test per chunk (the scan per chunk, with a division per step, was
/// most of `slab`'s time on the fragmentation workload).
fn find_run(bits: &[u64; BITMAP_WORDS], n: usize, align: usize) -> Option<usize> {
    debug_assert!(align.is_power_of_two() && n > 0);
    let mut start = HEADER_CHUNKS;
    loop {
        let free = next_bit(bits, start, true)?;
        let first = (free + align - 1) & !(align - 1);
        if first + n > CHUNKS {
            return None;
        }
        match next_bit(bits, first, false) {
            Some(taken) if taken < first + n => start = taken + 1,
            _ => return Some(first),
        }
    }
}

/// Maps and initialises a new segment of the default or the hardened mode;
/// null on exhaustion.
fn new_segment(hardened: bool) -> *mut SegmentHeader {
    let seg = heapkit_core::large::map_segments(SEGMENT_ALIGN).cast::<SegmentHeader>();
    if seg.is_null() {
        return seg;
    }
    let guard = if hardened { guard_chunks() } else { 0 };
    if guard > 0 {
        // SAFETY: the last `guard` chunks are whole pages of this fresh
        // mapping, which nothing uses; they never become free chunks.
        let ok = unsafe {
            os::protect(
                seg.cast::<u8>().add((CHUNKS - guard) * CHUNK),
                guard * CHUNK,
                false,
            )
        };
        if !ok {
            // SAFETY: the fresh mapping is on no list and nobody uses it.
            unsafe { heapkit_core::large::unmap_segments(seg.cast(), SEGMENT_ALIGN) };
            return ptr::null_mut();
        }
    }
    // SAFETY: seg is a fresh, zeroed, exclusively owned mapping larger than
    // the header; zero is a valid SlabMeta, pointer and integer.
    unsafe {
        let (tag, key) = if hardened {
            (SegmentTag::SLAB_HARDENED, Hardened::key_for(seg.cast()))
        } else {
            (SegmentTag::SLAB, 0)
        };
        ptr::addr_of_mut!((*seg).tag).write(tag);
        ptr::addr_of_mut!((*seg).key).write(key);
        ptr::addr_of_mut!((*seg).chunk_class).write([NO_CLASS; CHUNKS]);
        let mut free = [0u64; BITMAP_WORDS];
        set_bits(
            &mut free,
            HEADER_CHUNKS,
            CHUNKS - HEADER_CHUNKS - guard,
            true,
        );
        ptr::addr_of_mut!((*seg).free).write(free);
    }
    seg
}

/// Raw field access: the header is shared (free paths read `chunk_class`
/// and cache locks guard individual `metas`), so no `&mut` to the whole
/// header is ever made; each helper touches one field.
macro_rules! field {
    ($seg:expr, $f:ident) => {
        ptr::addr_of_mut!((*$seg).$f)
    };
}

/// Writes the owner bytes of chunks `first..first + n`.
///
/// # Safety
/// The segment lock is held and the chunks belong to no live slab (or to
/// the one being created or released).
unsafe fn set_owner(seg: *mut SegmentHeader, first: usize, n: usize, class: u8) {
    for i in first..first + n {
        if i < CHUNKS {
            // SAFETY: i < CHUNKS; each byte is a separate location written
            // only under the segment lock (caller).
            unsafe {
                field!(seg, chunk_class).cast::<u8>().add(i).write(class);
                field!(seg, chunk_first)
                    .cast::<u8>()
                    .add(i)
                    .write(first as u8);
            }
        }
    }
}

/// Takes a run of `n` clean chunks starting at a multiple of `align` for a
/// slab of cache `cache`, and returns that slab's (reset) metadata with
/// `start` and `chunks` set; null on exhaustion.
pub fn alloc_run(n: usize, align: usize, cache: u8) -> *mut SlabMeta {
    let hardened = is_hardened(cache as usize);
    let guard = if hardened { guard_chunks() } else { 0 };
    let room = CHUNKS - HEADER_CHUNKS - guard;
    let mut list = segments(hardened).lock();
    let mut seg = list.list.first;
    let mut found = None;
    while !seg.is_null() {
        // SAFETY: segments on the list are live; the lock guards `free`,
        // `used_chunks` and the links.
        let (free, used, next) = unsafe {
            (
                &*field!(seg, free),
                *field!(seg, used_chunks),
                *field!(seg, next),
            )
        };
        if room - used >= n {
            if let Some(first) = find_run(free, n, align) {
                found = Some(first);
                break;
            }
        }
        seg = next;
    }
    let first = match found {
        Some(first) => first,
        None => {
            seg = new_segment(hardened);
            if seg.is_null() {
                return ptr::null_mut();
            }
            // SAFETY: seg is a fresh segment on no list; the lock guards
            // the links.
            unsafe { list.list.push_back(seg) };
            list.spare += 1;
            // SAFETY: as above.
            match find_run(unsafe { &*field!(seg, free) }, n, align) {
                Some(first) => first,
                None => return ptr::null_mut(),
            }
        }
    };
    // SAFETY: seg is live, the lock is held, the chunks are free (so no
    // cache references metas[first]) and first + n <= CHUNKS.
    unsafe {
        let used = field!(seg, used_chunks);
        if *used == 0 {
            list.spare -= 1;
        }
        *used += n;
        set_bits(&mut *field!(seg, free), first, n, false);
        set_owner(seg, first, n, cache);
        let meta = field!(seg, metas).cast::<SlabMeta>().add(first);
        let mut fresh = SlabMeta::EMPTY;
        fresh.start = seg.cast::<u8>().add(first * CHUNK);
        fresh.chunks = n as u8;
        fresh.cache = cache;
        fresh.key = *field!(seg, key);
        meta.write(fresh);
        meta
    }
}

/// Purges a slab's memory and gives its chunks back to its segment; unmaps
/// the segment if it is now empty and another spare exists.
///
/// # Safety
/// `meta` must be a slab from [`alloc_run`] that is on no cache list and
/// whose objects nobody uses any more.
pub unsafe fn release_run(meta: *mut SlabMeta) {
    // SAFETY: the slab is ours and dead (caller).
    let (start, n) = unsafe { ((*meta).start, (*meta).chunks as usize) };
    // Purge before the chunks become visible as free (free chunks are
    // clean). SAFETY: start..start + n * CHUNK is the slab, page-aligned
    // and dead.
    unsafe { os::purge(start, n * CHUNK) };
    let seg = segment_of(start).cast::<SegmentHeader>();
    let first = (start as usize - seg as usize) >> CHUNK_SHIFT;
    let mut unmap = false;
    {
        // SAFETY: the segment is live; its tag never changes.
        let hardened = unsafe { *field!(seg, tag) } == SegmentTag::SLAB_HARDENED;
        let mut list = segments(hardened).lock();
        // SAFETY: the segment is live; the lock guards its bookkeeping and
        // links; the chunks belong to the dead slab only.
        unsafe {
            set_owner(seg, first, n, NO_CLASS);
            set_bits(&mut *field!(seg, free), first, n, true);
            let used = field!(seg, used_chunks);
            *used -= n;
            if *used == 0 {
                if list.spare >= 1 {
                    list.list.remove(seg);
                    unmap = true;
                } else {
                    list.spare += 1;
                }
            }
        }
    }
    if unmap {
        // SAFETY: the segment is unlinked and holds no slab.
        unsafe { heapkit_core::large::unmap_segments(seg.cast(), SEGMENT_ALIGN) };
    }
}

/// Number of mapped slab segments (for tests and invariants).
pub fn segment_count() -> usize {
    let mut n = 0;
    for segs in &SEGMENTS {
        let list = segs.lock();
        let mut seg = list.list.first;
        while !seg.is_null() {
            n += 1;
            // SAFETY: segments on the list are live; the lock guards links.
            seg = unsafe { *field!(seg, next) };
        }
    }
    n
}

/// Fork support: take the segment locks.
pub fn lock_for_fork() {
    for segs in &SEGMENTS {
        segs.raw().lock();
    }
}

/// Fork support: release the locks in the parent.
pub fn unlock_after_fork() {
    for segs in &SEGMENTS {
        // SAFETY: lock_for_fork took it in this thread.
        unsafe { segs.raw().unlock() };
    }
}

/// Fork support: reset the locks in the child.
pub fn reset_after_fork() {
    for segs in &SEGMENTS {
        // SAFETY: only called in the single-threaded child.
        unsafe { segs.raw().reset_after_fork() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_respect_alignment_and_occupancy() {
        let mut bits = [0u64; BITMAP_WORDS];
        set_bits(&mut bits, HEADER_CHUNKS, CHUNKS - HEADER_CHUNKS, true);
        assert_eq!(find_run(&bits, 1, 1), Some(HEADER_CHUNKS));
        assert_eq!(find_run(&bits, 4, 16), Some(16));
        set_bits(&mut bits, 16, 1, false);
        assert_eq!(find_run(&bits, 4, 16), Some(32));
        assert_eq!(find_run(&bits, CHUNKS, 1), None);
        assert!(!bit(&bits, 0) && bit(&bits, 17));
    }

    /// The word-at-a-time search finds what a chunk-by-chunk one finds, on
    /// random bitmaps of every density, for every run length and alignment
    /// slabs use.
    #[test]
    fn find_run_agrees_with_a_chunk_by_chunk_search() {
        fn naive(bits: &[u64; BITMAP_WORDS], n: usize, align: usize) -> Option<usize> {
            let mut start = HEADER_CHUNKS.next_multiple_of(align);
            while start + n <= CHUNKS {
                match (start..start + n).find(|&i| !bit(bits, i)) {
                    Some(taken) => start = (taken + 1).next_multiple_of(align),
                    None => return Some(start),
                }
            }
            None
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..3000 {
            let mut bits = [0u64; BITMAP_WORDS];
            for w in bits.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Densities from all taken to all free.
                *w = match round % 4 {
                    0 => x,
                    1 => x | x.rotate_left(7),
                    2 => x & x.rotate_left(11) & x.rotate_left(23),
                    _ => !(x & x.rotate_left(5)),
                };
            }
            bits[0] &= !1;
            for (n, align) in [
                (1, 1),
                (2, 1),
                (3, 1),
                (5, 1),
                (9, 1),
                (16, 16),
                (32, 16),
                (64, 32),
            ] {
                assert_eq!(
                    find_run(&bits, n, align),
                    naive(&bits, n, align),
                    "n {n} align {align}"
                );
            }
        }
    }
}
