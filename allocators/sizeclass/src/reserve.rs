//! The reserve: empty segments kept mapped for the next heap that needs
//! one, and where every segment comes from ([`acquire`]: the reserve, or
//! a new mapping) and goes when it empties ([`release`]: the reserve, or
//! back to the OS).
//!
//! At most [`RESERVE_MAX`] segments wait here, behind one [`SpinLock`]
//! taken only on slow paths. Most are purged as they enter; at most
//! [`RESERVE_UNPURGED_MAX`] of those left by exiting threads keep their
//! memory for the purge delay, so that a thread that starts where another
//! one exited finds its pages resident instead of faulting them in again;
//! any heap's decay sweep and the background purger purge them once the
//! delay has passed ([`purge_reserve`]).

use core::ptr;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use heapkit_core::lock::SpinLock;
use heapkit_core::os;
use heapkit_core::segment::SEGMENT_ALIGN;

use crate::mode::Mode;
use crate::page::PageState;
use crate::remote::PendingPages;
use crate::segment::{Segment, SegmentKind, SegmentList, ABANDONED, HEADER_BYTES};

/// Empty segments kept mapped for reuse.
const RESERVE_MAX: usize = 8;
/// Of those, how many may keep their memory unpurged until the purge delay
/// has passed (the rest are purged as they enter): what a program that
/// stops calling the allocator may keep resident in the reserve.
pub(crate) const RESERVE_UNPURGED_MAX: usize = 2;

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
        Segment::lay_out::<P>(seg, kind, unpurged);
        (*seg).owner.store(owner, Relaxed);
    }
    seg
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

/// Fork: takes the reserve's lock (after [`crate::abandoned::lock`]).
pub(crate) fn lock() {
    RESERVE.raw().lock();
}

/// Fork, parent: releases what [`lock`] took.
pub(crate) fn unlock() {
    // SAFETY: `lock` took it in this thread.
    unsafe { RESERVE.raw().unlock() };
}

/// Fork, child: re-initialises the lock (the child is single-threaded).
pub(crate) fn after_fork_child() {
    // SAFETY: the child is single-threaded.
    unsafe { RESERVE.raw().reset_after_fork() };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classes::KIND_OF;
    use heapkit_core::segment::SegmentTag;
    use heapkit_core::size_class::class_of;

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
