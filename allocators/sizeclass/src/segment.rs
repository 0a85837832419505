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
//! Globals (all behind [`SpinLock`]s, touched only on slow paths): abandoned
//! segments wait on `ABANDONED` for a live heap to adopt them, and a few
//! empty segments wait in `RESERVE` to spare the next mapping. At most
//! [`RESERVE_UNPURGED_MAX`] of those, left by exiting threads, keep their
//! memory (unpurged) for the purge delay, so that a thread that starts
//! where another one exited finds its pages resident instead of faulting
//! them in again; any heap's decay sweep and the background purger purge
//! them once the delay has passed ([`purge_reserve`]).

use core::mem::size_of;
use core::ptr;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use heapkit_core::list::{Linked, List};
use heapkit_core::lock::SpinLock;
use heapkit_core::os;
use heapkit_core::segment::{SegmentTag, SEGMENT_ALIGN};

use crate::mode::Mode;
use crate::page::{Page, PageState};
use crate::remote::PendingPages;

/// Number of segment kinds.
pub(crate) const KINDS: usize = 3;
/// Most pages in a segment (the small kind).
pub(crate) const MAX_PAGES: usize = 64;

/// What a segment is cut into: the size of its pages, which decides the
/// classes it serves ([`KIND_OF`]). A heap keeps one segment list per kind.
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
/// Empty segments kept mapped for reuse.
const RESERVE_MAX: usize = 8;
/// Of those, how many may keep their memory unpurged until the purge delay
/// has passed (the rest are purged as they enter): what a program that
/// stops calling the allocator may keep resident in the reserve.
pub(crate) const RESERVE_UNPURGED_MAX: usize = 2;

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
    /// used (at most [`RESERVE_UNPURGED_MAX`] such; see
    /// [`RESERVE_UNPURGED`]). Reserve only.
    pub unpurged: bool,
    /// When the segment entered the reserve (monotonic ns). Reserve only.
    pub released_ns: u64,
    /// Pages with `dirty` set, as [`acquire`] hands the segment out (its
    /// new owner counts them as dirty free pages without a pass over the
    /// pages); counted by [`release`] for a segment kept unpurged.
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
            (*page).free = ptr::null_mut();
            (*page).local_free = ptr::null_mut();
            (*page).freed_at_ns = now;
            (*seg).used_pages -= 1;
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

/// Segments whose owner exited.
pub(crate) static ABANDONED_LIST: SpinLock<SegmentList> = SpinLock::new(SegmentList::EMPTY);
/// Cheap "is anything abandoned" hint.
pub(crate) static ABANDONED_COUNT: AtomicU64 = AtomicU64::new(0);
/// Empty segments (at most `RESERVE_MAX`; the list counts them).
static RESERVE: SpinLock<SegmentList> = SpinLock::new(SegmentList::EMPTY);
/// Reserve segments with `unpurged` set (changed under `RESERVE`'s lock;
/// read without it as a hint).
static RESERVE_UNPURGED: AtomicU64 = AtomicU64::new(0);

/// A fresh segment of `kind` for mode `P`, owned by `owner`: from the
/// reserve or the OS. Null on exhaustion.
pub(crate) fn acquire<P: Mode>(kind: SegmentKind, owner: u64) -> *mut Segment {
    let mut unpurged = None;
    let mut seg = {
        let mut r = RESERVE.lock();
        // SAFETY: reserve segments are owned by the reserve (locked); a
        // popped one is ours.
        unsafe {
            let seg = r.pop_front();
            if !seg.is_null() && (*seg).unpurged {
                (*seg).unpurged = false;
                RESERVE_UNPURGED.fetch_sub(1, Relaxed);
                unpurged = Some((*seg).released_ns);
            }
            seg
        }
    };
    if seg.is_null() {
        seg = heapkit_core::large::map_segments(SEGMENT_ALIGN).cast();
        if seg.is_null() {
            return seg;
        }
        if seg as usize >> 48 != 0 {
            // `ThreadFree` packs a count above 48 address bits. Linux maps
            // nothing there unless asked to (a hint above 2^47), and
            // heapkit never asks; should it happen, the segment is not
            // used.
            // SAFETY: the mapping was just made by map_segments and is
            // referred to by nothing.
            unsafe { heapkit_core::large::unmap_segments(seg.cast(), SEGMENT_ALIGN) };
            return ptr::null_mut();
        }
        // The page metadata is left as the zeroes it reads as: an all-zero
        // `Page` is a free, clean one (see `purge_whole`), and only the
        // kind's `page_count` of them are laid out below. Writing all 64
        // touched the header's three OS pages, two page faults more for
        // every fresh segment of 8 pages or 1 (medium and big blocks),
        // whose metadata fits in the first.
        // SAFETY: fresh zeroed mapping; the header fits in it.
        unsafe { ptr::addr_of_mut!((*seg).pending).write(PendingPages::new()) };
    }
    // SAFETY: seg is exclusively ours (fresh, or taken from the reserve with
    // every page free and purged).
    unsafe {
        if (*seg).guard_bytes as usize != P::GUARD_BYTES {
            // A fresh segment (0), or a reserved one of the other mode.
            let wanted = P::GUARD_BYTES.max((*seg).guard_bytes as usize);
            let guard = seg.cast::<u8>().add(SEGMENT_ALIGN - wanted);
            if !os::protect(guard, wanted, P::GUARD_BYTES == 0) {
                heapkit_core::large::unmap_segments(seg.cast(), SEGMENT_ALIGN);
                return ptr::null_mut();
            }
            (*seg).guard_bytes = P::GUARD_BYTES as u32;
        }
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
            (*seg).owner.store(owner, Relaxed);
            return seg;
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
            (*p).dirty =
                unpurged.is_some() && old_dirty & overlapped(i, (*seg).page_shift, old_shift) != 0;
            (*seg).dirty_pages += (*p).dirty as u32;
            if let Some(released_ns) = unpurged {
                (*p).freed_at_ns = released_ns;
            }
        }
        (*seg).owner.store(owner, Relaxed);
    }
    seg
}

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

/// Returns an empty segment at time `now`: into the reserve (purged, or,
/// with `keep` and while fewer than [`RESERVE_UNPURGED_MAX`] are,
/// unpurged), or unmapped when the reserve is full. Thread exit keeps (the
/// next thread takes the segment resident); a running heap does not (it
/// released the segment because it has free pages enough: keeping it
/// resident raised the harness's RSS after free-all by up to two
/// segments, `realloc` 21 -> 29 MiB).
///
/// # Safety
/// The caller owns `seg`, every page of it is free, and nothing refers to
/// it any more.
pub(crate) unsafe fn release(seg: *mut Segment, now: u64, keep: bool) {
    // SAFETY: caller guarantee.
    unsafe {
        let dirty = (0..(*seg).page_count as usize)
            .filter(|&i| (*Segment::page(seg, i)).dirty)
            .count() as u32;
        let mut r = RESERVE.lock();
        if r.len < RESERVE_MAX {
            (*seg).owner.store(ABANDONED, Relaxed);
            (*seg).released_ns = now;
            (*seg).dirty_pages = 0;
            if dirty != 0 && keep && RESERVE_UNPURGED.load(Relaxed) < RESERVE_UNPURGED_MAX as u64 {
                (*seg).unpurged = true;
                (*seg).dirty_pages = dirty;
                RESERVE_UNPURGED.fetch_add(1, Relaxed);
            } else if dirty != 0 {
                purge_whole(seg);
            } else {
                // Its pages were purged one by one (a tidied abandoned
                // segment): the page metadata they wrote is left.
                purge_page_metadata(seg);
            }
            r.push_front(seg);
            return;
        }
        drop(r);
        heapkit_core::large::unmap_segments(seg.cast(), SEGMENT_ALIGN);
    }
}

/// Purges the reserve's unpurged segments that entered it at least
/// `delay` ns before `now` (all of them with `all`). Never waits for the
/// reserve's lock unless `all`; returns at once when none is unpurged.
pub(crate) fn purge_reserve(now: u64, delay: u64, all: bool) {
    if RESERVE_UNPURGED.load(Relaxed) == 0 {
        return;
    }
    let r = if all {
        RESERVE.lock()
    } else {
        let Some(r) = RESERVE.try_lock() else {
            return;
        };
        r
    };
    // SAFETY: the reserve is locked: its segments are the reserve's, alive
    // and empty.
    unsafe {
        let mut seg = r.first;
        while !seg.is_null() {
            if (*seg).unpurged && (all || now.saturating_sub((*seg).released_ns) >= delay) {
                purge_whole(seg);
                (*seg).unpurged = false;
                RESERVE_UNPURGED.fetch_sub(1, Relaxed);
            }
            seg = (*seg).next;
        }
    }
}

/// Purges every page of an empty segment and marks them clean.
///
/// # Safety
/// The caller owns `seg` (or holds the reserve that does); no page is in
/// use.
unsafe fn purge_whole(seg: *mut Segment) {
    // SAFETY: caller guarantee: nothing past the header is live, and no
    // page is in use, so the metadata of every page is that of a free,
    // clean page.
    unsafe {
        let end = SEGMENT_ALIGN - (*seg).guard_bytes as usize;
        os::purge(seg.cast::<u8>().add(HEADER_BYTES), end - HEADER_BYTES);
        for i in 0..(*seg).page_count as usize {
            (*Segment::page(seg, i)).dirty = false;
        }
        (*seg).dirty_pages = 0;
        purge_page_metadata(seg);
    }
}

/// Purges the header's OS pages after its first, which hold page metadata
/// only (8 KiB of a segment's 12 KiB header stayed resident in each of the
/// eight reserve segments). An all-zero `Page` is a free, clean one (state
/// `Free`, no lists, nothing dirty), what `acquire` expects of a purged
/// reserve segment; a failed purge leaves the same metadata as it was.
///
/// # Safety
/// The caller owns `seg` (or holds the reserve that does); every page is
/// free and clean.
unsafe fn purge_page_metadata(seg: *mut Segment) {
    let os_page = os::page_size();
    let first = core::mem::offset_of!(Segment, pages).next_multiple_of(os_page);
    if first < HEADER_BYTES {
        // SAFETY: caller guarantee: the range is inside the header, and
        // zeroed metadata describes the free, clean pages there are.
        unsafe { os::purge(seg.cast::<u8>().add(first), HEADER_BYTES - first) };
    }
}

// `purge_whole` relies on these: an all-zero page is free and clean.
const _: () = assert!(PageState::Free as u8 == 0);

/// Pushes `seg` onto the abandoned list.
///
/// # Safety
/// The caller owns `seg` and gives it up.
pub(crate) unsafe fn abandon(seg: *mut Segment) {
    let mut list = ABANDONED_LIST.lock();
    // SAFETY: caller gives up seg; the list is locked.
    unsafe {
        (*seg).owner.store(ABANDONED, Relaxed);
        list.push_front(seg);
    }
    ABANDONED_COUNT.fetch_add(1, Relaxed);
}

/// Takes an abandoned segment of mode `P` for `owner` (null if none).
pub(crate) fn adopt<P: Mode>(owner: u64) -> *mut Segment {
    if ABANDONED_COUNT.load(Relaxed) == 0 {
        return ptr::null_mut();
    }
    let mut list = ABANDONED_LIST.lock();
    // SAFETY: the list is locked: its segments are alive and theirs links
    // stable; a removed segment becomes ours.
    let seg = unsafe {
        let mut seg = list.first;
        while !seg.is_null() && (*seg).tag != P::TAG {
            seg = (*seg).next;
        }
        if !seg.is_null() {
            list.remove(seg);
        }
        seg
    };
    if !seg.is_null() {
        ABANDONED_COUNT.fetch_sub(1, Relaxed);
        // SAFETY: seg is ours now.
        unsafe { (*seg).owner.store(owner, Relaxed) };
    }
    seg
}

/// Takes every abandoned segment of mode `P` off the list (the background
/// purger tidies them, then gives them back or releases them).
pub(crate) fn take_abandoned<P: Mode>() -> SegmentList {
    let mut taken = SegmentList::EMPTY;
    if ABANDONED_COUNT.load(Relaxed) == 0 {
        return taken;
    }
    let mut list = ABANDONED_LIST.lock();
    // SAFETY: the list is locked: its segments are alive and their links
    // stable; a removed segment is the caller's.
    unsafe {
        let mut seg = list.first;
        while !seg.is_null() {
            let next = (*seg).next;
            if (*seg).tag == P::TAG {
                list.remove(seg);
                taken.push_front(seg);
            }
            seg = next;
        }
    }
    ABANDONED_COUNT.fetch_sub(taken.len as u64, Relaxed);
    taken
}

/// Fork: take every global lock (in a fixed order).
pub(crate) fn lock_all() {
    ABANDONED_LIST.raw().lock();
    RESERVE.raw().lock();
}

/// Fork, parent: release what [`lock_all`] took.
pub(crate) fn unlock_all() {
    // SAFETY: lock_all took these in this thread.
    unsafe {
        RESERVE.raw().unlock();
        ABANDONED_LIST.raw().unlock();
    }
}

/// Re-initialises the global locks in a forked child.
///
/// Segments of threads that do not exist in the child keep their dead
/// owners' ids, so no heap ever adopts them: a thread caught mid-allocation
/// by `fork()` may have left a page half-updated, and reusing it could hand
/// out a block twice. Frees into those segments stay correct (they are
/// remote frees: one atomic push onto the page's `thread_free`); the child
/// just never reuses that memory, as in mimalloc. Most forked children
/// `exec` soon anyway.
pub(crate) fn after_fork_child() {
    // SAFETY: the child is single-threaded.
    unsafe {
        RESERVE.raw().reset_after_fork();
        ABANDONED_LIST.raw().reset_after_fork();
    }
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

    #[test]
    fn spans_tile_the_segment_and_align_power_of_two_blocks() {
        for kind in SegmentKind::ALL {
            let seg = acquire::<heapkit_core::harden::Fast>(kind, 42);
            assert!(!seg.is_null());
            // SAFETY: seg is ours until released below.
            unsafe {
                assert_eq!((*seg).tag, SegmentTag::SIZECLASS);
                let count = (*seg).page_count as usize;
                assert_eq!(count << (*seg).page_shift, SEGMENT_ALIGN);
                for shift in 4..=18 {
                    let size = 1usize << shift;
                    if KIND_OF[class_of(size)] != kind {
                        continue;
                    }
                    for i in 0..count {
                        let (start, len) = Segment::span(seg, i, size);
                        assert_eq!(start as usize % size, 0, "{kind:?} page {i} size {size}");
                        assert!(start as usize >= seg as usize + HEADER_BYTES);
                        let end = start as usize + len;
                        assert_eq!(end, seg as usize + ((i + 1) << (*seg).page_shift));
                        // Every byte of the span maps back to page i.
                        assert_eq!(Segment::page_of(seg, start), Segment::page(seg, i));
                        assert_eq!(
                            Segment::page_of(seg, (end - 1) as *mut u8),
                            Segment::page(seg, i)
                        );
                    }
                }
                assert_eq!(Segment::find_free_page(seg), Some(0));
                (*seg).used_pages = (*seg).page_count;
                assert_eq!(Segment::find_free_page(seg), None);
                (*seg).used_pages = 0;
                release(seg, 0, false);
            }
        }
    }

    #[test]
    fn hardened_segments_end_in_a_guard_page_and_default_ones_do_not() {
        use heapkit_core::harden::{Fast, Hardened};
        for kind in SegmentKind::ALL {
            let seg = acquire::<Hardened>(kind, 43);
            assert!(!seg.is_null());
            // SAFETY: seg is ours until released; the child only writes the
            // guard byte and exits.
            unsafe {
                assert_eq!((*seg).tag, SegmentTag::SIZECLASS_HARDENED);
                assert_eq!((*seg).guard_bytes, 4096);
                let last = (*seg).page_count as usize - 1;
                let (start, len) = Segment::span(seg, last, 64);
                assert_eq!(start as usize + len, seg as usize + SEGMENT_ALIGN - 4096);
                let (p, n) = Segment::purgeable(seg, last);
                assert_eq!(p as usize + n, seg as usize + SEGMENT_ALIGN - 4096);
                let guard = seg.cast::<u8>().add(SEGMENT_ALIGN - 1);
                let pid = libc::fork();
                if pid == 0 {
                    guard.write_volatile(1);
                    libc::_exit(0);
                }
                let mut status = 0;
                assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
                assert!(
                    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV,
                    "a write to the guard page must fault (status {status:#x})"
                );
                release(seg, 0, false);
            }
            // A default segment (perhaps the one just released, from the
            // reserve) has no guard: its last byte is usable.
            let seg = acquire::<Fast>(kind, 44);
            // SAFETY: ours until released.
            unsafe {
                assert_eq!((*seg).guard_bytes, 0);
                assert_eq!((*seg).tag, SegmentTag::SIZECLASS);
                seg.cast::<u8>().add(SEGMENT_ALIGN - 1).write_volatile(1);
                seg.cast::<u8>().add(SEGMENT_ALIGN - 1).write_volatile(0);
                release(seg, 0, false);
            }
        }
    }
}
