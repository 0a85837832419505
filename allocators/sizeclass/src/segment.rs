//! Segments: 4 MiB aligned mappings split into pages of one kind.
//!
//! A segment starts with its header ([`Segment`]): the [`SegmentTag`], the
//! owning heap's id, and the metadata of every page. So `free(p)` is a mask
//! (`segment_of(p)`) and a shift (`(p - segment) >> page_shift`) away from
//! the page that holds `p`, whatever thread frees it.
//!
//! Three kinds, chosen by block size so every page holds at least eight
//! blocks:
//!
//! | kind | page size | pages | classes |
//! |---|---|---|---|
//! | small | 64 KiB | 64 | up to 8 KiB |
//! | medium | 512 KiB | 8 | up to 64 KiB |
//! | big | 4 MiB | 1 | up to 256 KiB |
//!
//! Page 0 begins after the header, rounded up to the largest power of two
//! dividing the block size; every other page begins at a page-size boundary.
//! Blocks of a power-of-two class are therefore aligned to their size, which
//! is how aligned requests are served.
//!
//! Where a segment no heap owns waits: empty ones in the reserve
//! ([`crate::reserve`], which also maps new ones), those of exited threads
//! that still hold live blocks on the abandoned list ([`crate::abandoned`]).

use core::mem::size_of;
use core::ptr;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use heapkit_core::list::{Linked, List};
use heapkit_core::segment::{SegmentTag, SEGMENT_ALIGN};

use crate::mode::Mode;
use crate::page::{Page, PageState};
use crate::remote::PendingPages;

/// Number of segment kinds.
pub(crate) const KINDS: usize = 3;
/// Most pages in a segment (the small kind).
pub(crate) const MAX_PAGES: usize = 64;

/// What a segment is cut into: the size of its pages, which decides the
/// classes it serves ([`KIND_OF`](crate::classes::KIND_OF)). A heap keeps one segment list per kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum SegmentKind {
    /// 64 pages of 64 KiB: classes up to 8 KiB. The zero value: a fresh
    /// (zeroed) segment header reads as this kind until `acquire` sets it.
    Small = 0,
    /// 8 pages of 512 KiB: classes up to 64 KiB.
    Medium = 1,
    /// One page, the whole segment: classes up to 256 KiB.
    Big = 2,
}

impl SegmentKind {
    /// Every kind, in index order.
    pub(crate) const ALL: [SegmentKind; KINDS] =
        [SegmentKind::Small, SegmentKind::Medium, SegmentKind::Big];

    /// The kind's index (in a heap's segment lists).
    #[inline]
    pub(crate) const fn index(self) -> usize {
        self as usize
    }

    /// `log2` of the kind's page size.
    const fn page_shift(self) -> u32 {
        match self {
            SegmentKind::Small => 16,
            SegmentKind::Medium => 19,
            SegmentKind::Big => 22,
        }
    }
}
/// Owner id of an abandoned segment (no heap has it).
pub(crate) const ABANDONED: u64 = u64::MAX;
/// Segment header.
#[repr(C)]
pub(crate) struct Segment {
    /// The mode's tag: [`SegmentTag::SIZECLASS`] or
    /// [`SegmentTag::SIZECLASS_HARDENED`] (`Mode::TAG`).
    pub tag: SegmentTag,
    /// Id of the owning heap, or [`ABANDONED`]. Written only by the owner
    /// (when abandoning) or by the adopter holding the segment exclusively.
    pub owner: AtomicU64,
    /// `log2` of the page size.
    pub page_shift: u32,
    /// Pages in this segment.
    pub page_count: u32,
    /// What the segment is cut into (set by `acquire`).
    pub kind: SegmentKind,
    /// Pages not [`PageState::Free`] (owner only).
    pub used_pages: u32,
    /// Inaccessible bytes at the end (`Mode::GUARD_BYTES`).
    pub guard_bytes: u32,
    /// In the reserve with memory not purged since its pages were last
    /// used (at most [`crate::reserve::RESERVE_UNPURGED_MAX`] such).
    /// Reserve only.
    pub unpurged: bool,
    /// When the segment entered the reserve (monotonic ns). Reserve only.
    pub released_ns: u64,
    /// Pages with `dirty` set, as [`crate::reserve::acquire`] hands the segment out (its
    /// new owner counts them as dirty free pages without a pass over the
    /// pages); counted by [`crate::reserve::release`] for a segment kept unpurged.
    pub dirty_pages: u32,
    /// Pages that may have remote frees.
    pub pending: PendingPages,
    /// Links in the owner's segment list, or the abandoned list.
    pub next: *mut Segment,
    /// See `next`.
    pub prev: *mut Segment,
    /// Page metadata.
    pub pages: [Page; MAX_PAGES],
}

/// Bytes reserved for the header at the start of every segment.
pub(crate) const HEADER_BYTES: usize = (size_of::<Segment>() + 4095) & !4095;
const _: () = assert!(HEADER_BYTES <= 12288);

impl Segment {
    /// Lays `seg` out as a segment of `kind` in mode `P`, every page free:
    /// the header's fields and the kind's page metadata. `unpurged` is when
    /// an unpurged reserve segment was released (its pages' dirty flags and
    /// free times carry over); `None` for a fresh or purged one.
    ///
    /// # Safety
    /// The caller owns `seg` exclusively: fresh (zeroed), or taken from
    /// the reserve with every page free.
    pub(crate) unsafe fn lay_out<P: Mode>(
        seg: *mut Segment,
        kind: SegmentKind,
        unpurged: Option<u64>,
    ) {
        // SAFETY: caller guarantee.
        unsafe {
            if unpurged.is_some() && (*seg).tag == P::TAG && (*seg).kind == kind {
                // An unpurged segment of this mode and kind (a thread's, given
                // back at its exit, taken by the next thread): its pages are
                // laid out as wanted, every one free, with exact dirty flags
                // and the time each was freed. Nothing to redo: re-laying its
                // 64 pages' metadata (two passes over 64 cache lines) was most
                // of a short thread's first allocation.
                debug_assert_eq!((*seg).used_pages, 0);
                debug_assert!((0..(*seg).page_count as usize)
                    .all(|i| (*Segment::page(seg, i)).state == PageState::Free));
                debug_assert_eq!(
                    (*seg).dirty_pages as usize,
                    (0..(*seg).page_count as usize)
                        .filter(|&i| (*Segment::page(seg, i)).dirty)
                        .count()
                );
                (*seg).next = ptr::null_mut();
                (*seg).prev = ptr::null_mut();
                return;
            }
            // Which bytes of an unpurged segment hold old contents: its old
            // pages' dirty flags, read before the new kind's pages replace them.
            let old_shift = (*seg).page_shift;
            let mut old_dirty = 0u64;
            if unpurged.is_some() {
                for i in 0..(*seg).page_count as usize {
                    if (*Segment::page(seg, i)).dirty {
                        old_dirty |= 1 << i;
                    }
                }
            }
            ptr::addr_of_mut!((*seg).tag).write(P::TAG);
            (*seg).page_shift = kind.page_shift();
            (*seg).page_count = (SEGMENT_ALIGN >> kind.page_shift()) as u32;
            (*seg).kind = kind;
            (*seg).used_pages = 0;
            (*seg).next = ptr::null_mut();
            (*seg).prev = ptr::null_mut();
            (*seg).dirty_pages = 0;
            // Only the kind's pages: the metadata past `page_count` (left by
            // an earlier kind with more pages, or never written) describes no
            // page and is read by nothing until a kind with more pages lays
            // it out here again.
            for i in 0..(*seg).page_count as usize {
                let p = Segment::page(seg, i);
                (*p).index = i as u32;
                Page::set_state(p, PageState::Free);
                // A page holds old bytes (not zero; purged by the new owner's
                // decay if it stays unused) where an old page it overlaps was
                // dirty, in an unpurged segment. Every page was, before: a
                // thread that took such a segment and used one page of it
                // purged 48 at its exit, page by page. (Set in a purged or
                // fresh segment too: a page past an earlier kind's
                // `page_count` may keep a flag from a kind before it.)
                (*p).dirty = unpurged.is_some()
                    && old_dirty & overlapped(i, (*seg).page_shift, old_shift) != 0;
                (*seg).dirty_pages += (*p).dirty as u32;
                if let Some(released_ns) = unpurged {
                    (*p).freed_at_ns = released_ns;
                }
            }
        }
    }

    /// The page holding `ptr`.
    ///
    /// # Safety
    /// `seg` must be a mapped segment and `ptr` inside its first
    /// `SEGMENT_ALIGN` bytes.
    #[inline]
    pub(crate) unsafe fn page_of(seg: *mut Segment, ptr: *mut u8) -> *mut Page {
        // SAFETY: caller guarantee; the index is below page_count because
        // pages tile the segment.
        unsafe {
            let index = (ptr as usize - seg as usize) >> (*seg).page_shift;
            ptr::addr_of_mut!((*seg).pages).cast::<Page>().add(index)
        }
    }

    /// Page `i`.
    ///
    /// # Safety
    /// `seg` mapped, `i < page_count`.
    #[inline]
    pub(crate) unsafe fn page(seg: *mut Segment, i: usize) -> *mut Page {
        // SAFETY: caller guarantee.
        unsafe { ptr::addr_of_mut!((*seg).pages).cast::<Page>().add(i) }
    }

    /// The span of page `i` usable for blocks of `block_size`: (start, len).
    ///
    /// # Safety
    /// `seg` mapped, `i < page_count`.
    pub(crate) unsafe fn span(seg: *mut Segment, i: usize, block_size: usize) -> (*mut u8, usize) {
        // SAFETY: caller guarantee.
        let (shift, guard) = unsafe { ((*seg).page_shift, (*seg).guard_bytes as usize) };
        let begin = i << shift;
        let end = (begin + (1 << shift)).min(SEGMENT_ALIGN - guard);
        let begin = if i == 0 {
            let pow2 = block_size & block_size.wrapping_neg();
            (HEADER_BYTES + pow2 - 1) & !(pow2 - 1)
        } else {
            begin
        };
        // SAFETY: begin < SEGMENT_ALIGN, inside the mapping.
        (unsafe { seg.cast::<u8>().add(begin) }, end - begin)
    }

    /// Returns `page`, empty, to its segment's free pool: state `Free`,
    /// lists cleared, `freed_at_ns = now` (for the decay), one page fewer in
    /// use. The heap's own accounting is the caller's. Hardened, the
    /// blocks on the lists are checked first ([`Mode::on_empty`]; a caller
    /// that purges the page's span before this must check them itself).
    ///
    /// # Safety
    /// The caller owns `seg` and `page` (a page of it, in use, no block live
    /// or on its remote list).
    pub(crate) unsafe fn free_page<P: Mode>(seg: *mut Segment, page: *mut Page, now: u64) {
        // SAFETY: caller guarantee.
        unsafe {
            debug_assert!(Page::in_use(page) == 0 && (*page).state != PageState::Free);
            P::on_empty(page);
            Page::set_state(page, PageState::Free);
            // What is left in `used` are blocks dropped over holes
            // (`holes.rs`), gone with the page.
            (*page).used.store(0, Relaxed);
            Page::forget_holes(page);
            (*page).free.store(ptr::null_mut(), Relaxed);
            (*page).local_free = ptr::null_mut();
            (*page).parked = false;
            (*page).freed_at_ns = now;
            (*seg).used_pages -= 1;
            // Its carved blocks hold memory no more (`capacity` is reset
            // when the page is taken again).
            crate::carve::count_carved(-i64::from((*page).capacity), (*page).stride as usize);
        }
    }

    /// The OS-page-aligned part of page `i` that may be purged.
    ///
    /// # Safety
    /// `seg` mapped, `i < page_count`.
    pub(crate) unsafe fn purgeable(seg: *mut Segment, i: usize) -> (*mut u8, usize) {
        // SAFETY: caller guarantee.
        let (shift, guard) = unsafe { ((*seg).page_shift, (*seg).guard_bytes as usize) };
        let begin = if i == 0 { HEADER_BYTES } else { i << shift };
        let end = ((i + 1) << shift).min(SEGMENT_ALIGN - guard);
        // SAFETY: begin < SEGMENT_ALIGN.
        (unsafe { seg.cast::<u8>().add(begin) }, end - begin)
    }

    /// A free page index, or `None`.
    ///
    /// # Safety
    /// The caller must own `seg`.
    pub(crate) unsafe fn find_free_page(seg: *mut Segment) -> Option<usize> {
        // SAFETY: owner access to page metadata.
        unsafe {
            if (*seg).used_pages == (*seg).page_count {
                return None;
            }
            (0..(*seg).page_count as usize)
                .find(|&i| (*Segment::page(seg, i)).state == PageState::Free)
        }
    }
}

// SAFETY: `next` and `prev` are the segment's own links; only the list
// that holds it (its heap's, the reserve or the abandoned list) uses them.
unsafe impl Linked for Segment {
    unsafe fn next(node: *mut Self) -> *mut *mut Self {
        // SAFETY: node is a live segment (the trait's contract).
        unsafe { ptr::addr_of_mut!((*node).next) }
    }
    unsafe fn prev(node: *mut Self) -> *mut *mut Self {
        // SAFETY: as above.
        unsafe { ptr::addr_of_mut!((*node).prev) }
    }
}

/// A list of segments (core's one intrusive list).
pub(crate) type SegmentList = List<Segment>;

/// The pages of page size `1 << old_shift` that page `i` of page size
/// `1 << shift` overlaps, as a mask of their indices (both cut the same
/// segment from its start).
fn overlapped(i: usize, shift: u32, old_shift: u32) -> u64 {
    let first = (i << shift) >> old_shift;
    let last = ((((i + 1) << shift) - 1) >> old_shift).min(MAX_PAGES - 1);
    if first > last {
        return 0;
    }
    let n = last - first + 1;
    let ones = if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
    ones << first
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classes::KIND_OF;
    use heapkit_core::size_class::{class_of, CLASS_COUNT, SIZES};

    #[test]
    fn a_reused_segments_pages_are_dirty_where_its_old_pages_were() {
        let (small, medium, big) = (
            SegmentKind::Small.page_shift(),
            SegmentKind::Medium.page_shift(),
            SegmentKind::Big.page_shift(),
        );
        // Same kind: each page is itself.
        for i in 0..64 {
            assert_eq!(overlapped(i, small, small), 1 << i);
        }
        // Smaller pages than before: the one old page holding them.
        assert_eq!(overlapped(0, small, medium), 1);
        assert_eq!(overlapped(9, small, medium), 1 << 1);
        assert_eq!(overlapped(63, small, medium), 1 << 7);
        assert_eq!(overlapped(63, small, big), 1);
        // Larger pages: every old page inside.
        assert_eq!(overlapped(0, medium, small), 0xff);
        assert_eq!(overlapped(7, medium, small), 0xff << 56);
        assert_eq!(overlapped(0, big, small), u64::MAX);
        assert_eq!(overlapped(0, big, medium), 0xff);
        // Every byte of a new page (its first and its last are checked)
        // lies in an old page of its mask, for every pair of kinds.
        for new in SegmentKind::ALL {
            for old in SegmentKind::ALL {
                let (ns, os) = (new.page_shift(), old.page_shift());
                let pages = SEGMENT_ALIGN >> ns;
                for i in 0..pages {
                    for byte in [i << ns, ((i + 1) << ns) - 1] {
                        assert!(overlapped(i, ns, os) & (1 << (byte >> os)) != 0);
                    }
                }
            }
        }
    }

    #[test]
    fn every_class_fits_at_least_eight_blocks_in_a_page_of_its_kind() {
        for c in 0..CLASS_COUNT {
            let page = 1usize << KIND_OF[c].page_shift();
            let size = SIZES[c] as usize;
            // Page 0 loses the header (rounded to the block's power of two).
            let pow2 = size & size.wrapping_neg();
            let first = page.min(SEGMENT_ALIGN) - ((HEADER_BYTES + pow2 - 1) & !(pow2 - 1));
            assert!(page / size >= 8, "class {c} ({size})");
            assert!(first / size >= 6, "class {c} ({size}) in page 0");
            assert!(size <= u32::MAX as usize);
        }
        assert_eq!(KIND_OF[class_of(8 << 10)], SegmentKind::Small);
        assert_eq!(KIND_OF[class_of((8 << 10) + 1)], SegmentKind::Medium);
        assert_eq!(KIND_OF[class_of(64 << 10)], SegmentKind::Medium);
        assert_eq!(KIND_OF[class_of(256 << 10)], SegmentKind::Big);
        for (i, kind) in SegmentKind::ALL.into_iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }
}
