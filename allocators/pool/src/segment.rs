//! Segments and chunks: where blocks live and how a pointer finds its class.
//!
//! A segment is a 4 MiB mapping aligned to [`SEGMENT_ALIGN`], cut into 64
//! pages of 64 KiB. Page 0 holds the [`SegmentHeader`] (only its first
//! 4 KiB page is ever touched); the others are handed out as *chunks*:
//! naturally aligned power-of-two runs of pages, each holding blocks of one
//! class. The header's `page_class` byte per page is what makes a free
//! without a layout cheap:
//!
//! ```text
//! segment = ptr & !(4 MiB - 1)        // one mask
//! class   = segment.page_class[(ptr - segment) >> 16]   // one load
//! ```
//!
//! There is no per-object header. Each mode has its own segments: the
//! default mode's are tagged [`SegmentTag::POOL`], the hardened mode's
//! [`SegmentTag::POOL_HARDENED`], and these keep their last page
//! inaccessible (a guard: a linear overflow out of the last chunk faults).
//! A mode's segment list, page bitmaps and trim counters are guarded by one
//! spin lock ([`chunks`]) that only chunk carving, [`crate::Pool::trim`]
//! and fork take; `tag` and `page_class` of a
//! page are written under it before any block of that page is handed out,
//! and rewritten only when the chunk has no block outside the trimmer's
//! hands, so lock-free readers (`free`, `usable_size`) never race a writer of
//! the byte they read.
//!
//! Memory of a chunk that was never handed out is zero: fresh from `mmap`,
//! or purged with `MADV_DONTNEED` when [`crate::trim`] released it.

use core::ptr;

use heapkit_core::list::{Linked, List};
use heapkit_core::lock::SpinLock;
use heapkit_core::os;
use heapkit_core::segment::{SegmentTag, SEGMENT_ALIGN};

use crate::class::{chunk_bytes, is_hardened, CHUNK_PAGES, CLASSES, PAGE, PAGE_SHIFT};

/// Pages in a segment.
pub const PAGES: usize = SEGMENT_ALIGN / PAGE;
/// `page_class` of a page that belongs to no chunk.
pub const FREE_PAGE: u8 = 0xFF;
/// `page_class` of page 0, the header.
pub const HEADER_PAGE: u8 = 0xFE;
/// Every block address fits in this many bits, which the depot's batch
/// links rely on (they keep a count in the bits above).
pub const ADDRESS_BITS: u32 = 48;

const _: () = assert!(PAGES == 64);
const _: () = assert!(CLASSES < HEADER_PAGE as usize);

/// The start of every pool segment.
#[repr(C)]
pub struct SegmentHeader {
    /// [`SegmentTag::POOL`] or [`SegmentTag::POOL_HARDENED`].
    pub tag: SegmentTag,
    /// Class of every page's chunk, [`FREE_PAGE`] or [`HEADER_PAGE`].
    /// Read without the lock by `free`; see the module docs for why that
    /// never races.
    pub page_class: [u8; PAGES],
    // --- everything below is guarded by CHUNKS ---
    /// Next segment in [`CHUNKS`]' list.
    next: *mut SegmentHeader,
    /// Previous segment in [`CHUNKS`]' list.
    prev: *mut SegmentHeader,
    /// Bit `i` set: page `i` is in a chunk or `reserved`.
    used: u64,
    /// Pages never in a chunk: the header (bit 0) and, hardened, the guard
    /// (the last page).
    reserved: u64,
    /// Scratch for trim: free blocks counted per chunk, at its first page.
    pub trim_count: [u32; PAGES],
    /// Scratch for trim: bit at the first page of every chunk to release.
    pub release: u64,
}

// SAFETY: `next` and `prev` are two distinct fields of the header that only
// the CHUNKS list holding the segment uses (under its lock).
unsafe impl Linked for SegmentHeader {
    unsafe fn next(node: *mut Self) -> *mut *mut Self {
        // SAFETY: node is a live segment header (the trait's contract).
        unsafe { ptr::addr_of_mut!((*node).next) }
    }
    unsafe fn prev(node: *mut Self) -> *mut *mut Self {
        // SAFETY: as above.
        unsafe { ptr::addr_of_mut!((*node).prev) }
    }
}

/// The list of all pool segments of one mode (core's intrusive [`List`]),
/// inside the lock that guards their chunk bookkeeping. Every listed
/// segment is a live mapping owned by the list.
pub struct SegmentList(List<SegmentHeader>);

/// Every pool segment of each mode (default, hardened); taken to carve or
/// release chunks (never on a fast path).
pub static CHUNKS: [SpinLock<SegmentList>; 2] =
    [const { SpinLock::new(SegmentList(List::EMPTY)) }; 2];

/// The segment list of the default (`false`) or hardened mode.
#[inline]
pub fn chunks(hardened: bool) -> &'static SpinLock<SegmentList> {
    &CHUNKS[hardened as usize]
}

/// The segment list class index `class` carves from.
#[inline]
pub fn chunks_of(class: usize) -> &'static SpinLock<SegmentList> {
    chunks(is_hardened(class))
}

/// The header of the segment holding `ptr`.
#[inline]
pub fn header_of<T>(ptr: *const T) -> *mut SegmentHeader {
    heapkit_core::segment::segment_of(ptr).cast()
}

/// The class of a pool block.
///
/// # Safety
/// `ptr` must be a live block inside a pool segment.
#[inline]
pub unsafe fn class_of_block(ptr: *const u8) -> usize {
    let seg = header_of(ptr);
    let page = (ptr as usize - seg as usize) >> PAGE_SHIFT;
    debug_assert!(page > 0 && page < PAGES);
    // SAFETY: seg is a mapped pool header (caller) and page < PAGES because
    // the block lies within the segment.
    unsafe { (*seg).page_class.as_ptr().add(page).read() as usize }
}

/// The first page of a chunk of `class` holding `ptr`, and its segment.
#[inline]
pub fn chunk_of(ptr: *const u8, class: usize) -> (*mut SegmentHeader, usize) {
    let seg = header_of(ptr);
    let page = (ptr as usize - seg as usize) >> PAGE_SHIFT;
    let pages = chunk_bytes(class) >> PAGE_SHIFT;
    (seg, page & !(pages - 1))
}

fn run_mask(first: usize, pages: usize) -> u64 {
    (((1u128 << pages) - 1) << first) as u64
}

impl SegmentList {
    /// Carves a chunk for `class`; returns its start (zeroed memory) or null
    /// if the OS refuses a new segment.
    pub fn carve(&mut self, class: usize) -> *mut u8 {
        let pages = chunk_bytes(class) >> PAGE_SHIFT;
        let mut seg = self.0.first;
        while !seg.is_null() {
            // SAFETY: every listed segment is a live mapping, guarded by us.
            unsafe {
                if let Some(first) = find_run((*seg).used, pages) {
                    return take_run(seg, first, pages, class);
                }
                seg = (*seg).next;
            }
        }
        let seg = new_segment(is_hardened(class));
        if seg.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: seg is a fresh segment, on no list; linking it under the
        // lock.
        unsafe {
            self.0.push_front(seg);
            match find_run((*seg).used, pages) {
                Some(first) => take_run(seg, first, pages, class),
                None => ptr::null_mut(),
            }
        }
    }

    /// Releases every chunk marked in a segment's `release` bits (purging its
    /// pages), clears every trim scratch field, and unmaps segments left with
    /// no chunk. Returns the bytes released.
    pub fn release_marked(&mut self) -> usize {
        let mut released = 0;
        let mut seg = self.0.first;
        // SAFETY: every listed segment is ours under the lock; `next` is read
        // before the segment may be unlinked and unmapped.
        unsafe {
            while !seg.is_null() {
                let next = (*seg).next;
                let mut bits = (*seg).release;
                while bits != 0 {
                    let first = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let class = ptr::addr_of!((*seg).page_class)
                        .cast::<u8>()
                        .add(first)
                        .read() as usize;
                    let pages = CHUNK_PAGES[class % CLASSES] as usize;
                    let start = seg.cast::<u8>().add(first * PAGE);
                    os::purge(start, pages * PAGE);
                    set_page_class(seg, first, pages, FREE_PAGE);
                    (*seg).used &= !run_mask(first, pages);
                    released += pages * PAGE;
                }
                (*seg).release = 0;
                (*seg).trim_count = [0; PAGES];
                if (*seg).used == (*seg).reserved {
                    self.0.remove(seg);
                    heapkit_core::large::unmap_segments(seg.cast(), SEGMENT_ALIGN);
                }
                seg = next;
            }
        }
        released
    }

    /// Bytes of all chunks currently carved (free or not).
    pub fn chunk_bytes_in_use(&self) -> usize {
        let mut total = 0;
        let mut seg = self.0.first;
        while !seg.is_null() {
            // SAFETY: listed segments are live and guarded by us.
            unsafe {
                total += ((*seg).used & !(*seg).reserved).count_ones() as usize * PAGE;
                seg = (*seg).next;
            }
        }
        total
    }
}

/// Writes the `page_class` bytes of pages `first..first+pages` through a raw
/// pointer (lock-free readers read the other bytes meanwhile, so no
/// reference to the whole array may be formed).
///
/// # Safety
/// `seg` is a live segment guarded by the caller's lock, the pages are in
/// range and no block of them is live.
unsafe fn set_page_class(seg: *mut SegmentHeader, first: usize, pages: usize, value: u8) {
    debug_assert!(first + pages <= PAGES);
    // SAFETY: caller guarantee.
    unsafe {
        ptr::addr_of_mut!((*seg).page_class)
            .cast::<u8>()
            .add(first)
            .write_bytes(value, pages)
    };
}

/// First page of a free, naturally aligned run of `pages` pages.
fn find_run(used: u64, pages: usize) -> Option<usize> {
    let mut first = 0;
    while first + pages <= PAGES {
        if used & run_mask(first, pages) == 0 {
            return Some(first);
        }
        first += pages;
    }
    None
}

/// Marks pages `first..first+pages` as a chunk of `class`.
///
/// # Safety
/// `seg` is a live segment guarded by the caller's lock and the run is free.
unsafe fn take_run(seg: *mut SegmentHeader, first: usize, pages: usize, class: usize) -> *mut u8 {
    // SAFETY: caller guarantee; no block of these pages exists, so no reader
    // looks at their page_class bytes.
    unsafe {
        (*seg).used |= run_mask(first, pages);
        set_page_class(seg, first, pages, class as u8);
        seg.cast::<u8>().add(first * PAGE)
    }
}

/// Maps and initialises a segment of the default or the hardened mode;
/// null on failure.
fn new_segment(hardened: bool) -> *mut SegmentHeader {
    let base = heapkit_core::large::map_segments(SEGMENT_ALIGN);
    if base.is_null() {
        return ptr::null_mut();
    }
    if (base as usize + SEGMENT_ALIGN) >> ADDRESS_BITS != 0 {
        // Batch links keep a count above bit 48; an address this high (only
        // possible with 5-level paging and an explicit hint) is refused.
        // SAFETY: base is the mapping just made, unused.
        unsafe { heapkit_core::large::unmap_segments(base, SEGMENT_ALIGN) };
        return ptr::null_mut();
    }
    let seg = base.cast::<SegmentHeader>();
    let mut page_class = [FREE_PAGE; PAGES];
    page_class[0] = HEADER_PAGE;
    let mut reserved = 1;
    if hardened {
        // SAFETY: the last page is whole OS pages (64 KiB) of this fresh,
        // unused mapping; it is reserved, so no chunk ever covers it.
        if !unsafe { os::protect(base.add((PAGES - 1) * PAGE), PAGE, false) } {
            // SAFETY: base is the mapping just made, unused.
            unsafe { heapkit_core::large::unmap_segments(base, SEGMENT_ALIGN) };
            return ptr::null_mut();
        }
        page_class[PAGES - 1] = HEADER_PAGE;
        reserved |= 1 << (PAGES - 1);
    }
    let tag = if hardened {
        SegmentTag::POOL_HARDENED
    } else {
        SegmentTag::POOL
    };
    // SAFETY: base is a fresh mapping large enough for the header.
    unsafe {
        seg.write(SegmentHeader {
            tag,
            page_class,
            next: ptr::null_mut(),
            prev: ptr::null_mut(),
            used: reserved,
            reserved,
            trim_count: [0; PAGES],
            release: 0,
        })
    };
    seg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_naturally_aligned() {
        assert_eq!(find_run(1, 1), Some(1));
        assert_eq!(find_run(1, 2), Some(2));
        assert_eq!(find_run(1, 16), Some(16));
        assert_eq!(find_run(u64::MAX >> 1, 1), Some(63));
        assert_eq!(find_run(u64::MAX, 1), None);
        assert_eq!(find_run(1 | (1 << 16), 16), Some(32));
    }
}
