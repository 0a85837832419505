//! Holes: the memory of a sleeping owner's page that other threads freed,
//! given back while the page stays in use.
//!
//! The reclaimer (`reclaim.rs`) retires a page whose blocks have *all*
//! come back through remote frees. Two kinds of page it could not touch
//! kept their memory for as long as the owner slept: the class's current
//! page (the owner's allocation fast path pops its `free` list without a
//! lock, so no one else may touch that list or `used`), and a page with a
//! few blocks still live. A thread that allocates a working set, hands it
//! to other threads to free and then waits (the harness's larson: the main
//! thread's first blocks, one current page per class) kept about 600 KiB
//! that way, 1.3x its starting RSS after a second idle.
//!
//! [`Page::purge_holes`] gives that memory back without touching anything
//! a fast path touches. It takes the page's remote frees (they are the
//! taker's alone), and purges each OS page of the page's span in which
//! *every* carved block is one of them: no block there is live or on
//! `free`/`local_free`, so no fast path reads or writes that memory. Those
//! OS pages become the page's `holes`; the blocks that overlap them are
//! *dropped*: on no list, still counted in `used`, and counted in
//! `dropped` ([`Page::in_use`] subtracts it, so every test for "no block
//! in use" stays true to what is live or pending). The other blocks taken
//! go back on `thread_free` for the owner to collect as before.
//!
//! The owner takes dropped blocks back when it next needs blocks from the
//! page ([`Page::fill_holes`], from `Page::collect`, before it carves
//! more): it links every carved block that overlaps a hole onto
//! `local_free` and un-counts them. Retiring the page
//! (`Segment::free_page`, then `Page::init`) or resetting its carve
//! (`Page::reset_carve`) forgets them instead.
//!
//! Only in the default mode (`Mode::RECARVE_EMPTY`): a hardened free block
//! carries a free mark that a purge would erase. Only for pages whose
//! purgeable span has at most [`MAX_UNITS`] OS pages (the 64 KiB pages of
//! small classes with 4 KiB OS pages; not the medium and big pages, whose
//! emptied pages the reclaimer and `reset_carve` already handle).

use core::ptr;
use core::sync::atomic::Ordering::Relaxed;

use heapkit_core::misuse::{self, Misuse};
use heapkit_core::os;

use crate::mode::Mode;
use crate::page::Page;
use crate::remote::Block;
use crate::segment::Segment;

/// OS pages a page's span may have for holes (the width of `Page::holes`).
pub(crate) const MAX_UNITS: usize = 32;

/// A unit mask's bit for "part of the block lies outside the span".
const OUTSIDE: u64 = 1 << 63;

/// Where a page's blocks lie in OS pages: block `i` covers
/// `start + i * stride .. + block_size`, and OS page `u` of the span is
/// `base + u * os_page .. + os_page`.
#[derive(Clone, Copy)]
struct Geometry {
    base: usize,
    os_page: usize,
    units: usize,
    start: usize,
    stride: usize,
    block_size: usize,
}

impl Geometry {
    /// The geometry of `page` (in `seg`), or `None` when its span has more
    /// than [`MAX_UNITS`] OS pages.
    ///
    /// # Safety
    /// `page` is an in-use page of the mapped segment `seg`.
    unsafe fn of(seg: *mut Segment, page: *mut Page) -> Option<Geometry> {
        // SAFETY: caller guarantee: the page's fixed fields are set.
        unsafe {
            let os_page = os::page_size();
            let (base, len) = Segment::purgeable(seg, (*page).index as usize);
            let units = len / os_page;
            if units == 0 || units > MAX_UNITS || !(base as usize).is_multiple_of(os_page) {
                return None;
            }
            Some(Geometry {
                base: base as usize,
                os_page,
                units,
                start: (*page).start as usize,
                stride: (*page).stride as usize,
                block_size: (*page).block_size as usize,
            })
        }
    }

    /// The OS pages of the span block `addr` overlaps, as a mask of
    /// units, plus bit 63 ([`OUTSIDE`]) if part of it lies outside the
    /// purgeable span (then none of its units may be purged).
    fn units_of(&self, addr: usize) -> u64 {
        let end = addr + self.block_size;
        let span_end = self.base + self.units * self.os_page;
        let outside = if addr < self.base || end > span_end {
            OUTSIDE
        } else {
            0
        };
        let (from, to) = (addr.max(self.base), end.min(span_end));
        if from >= to {
            return outside;
        }
        let first = (from - self.base) / self.os_page;
        let last = (to - 1 - self.base) / self.os_page;
        // Both below MAX_UNITS (32), so the shifts cannot overflow.
        outside | (((1u64 << (last + 1)) - 1) & !((1u64 << first) - 1))
    }
}

impl Page {
    /// Takes the page's remote frees and purges every OS page of its span
    /// whose carved blocks are all free and off the owner's lists (taken
    /// now, or dropped before); the blocks over those OS pages are dropped
    /// (see the module docs), the others pushed back. Returns the bytes
    /// purged.
    ///
    /// # Safety
    /// The caller holds the lock of the heap that owns `page` (an in-use
    /// page of `seg`, of mode `P`), so no slow path carves or collects
    /// meanwhile; the owner's fast paths may run.
    pub(crate) unsafe fn purge_holes<P: Mode>(seg: *mut Segment, page: *mut Page) -> usize {
        if !P::RECARVE_EMPTY {
            return 0;
        }
        // SAFETY: caller guarantee. The taken blocks are ours alone
        // (remote.rs invariant 1); the rest of the page is only read
        // (`capacity` and the geometry do not change under the lock), and
        // memory is purged only where no block is live or listed.
        unsafe {
            let Some(g) = Geometry::of(seg, page) else {
                return 0;
            };
            if (*page).thread_free.count() == (*page).holes_tried as u32 {
                // Nothing freed since the last look (the owner would have
                // taken the stack, and a push adds one).
                return 0;
            }
            let (list, count) = (*page).thread_free.take_all();
            if list.is_null() {
                return 0;
            }
            // Bounded: a list that loops (a block freed twice) is reported.
            let (_, taken) = Self::walk_remote::<P>(page, list);
            if taken != count {
                crate::page::corrupted_remote_list(list);
            }
            let holes = (*page).holes as u64;
            // Per OS page: carved blocks over it, and those that are free
            // off the lists (taken now, or dropped over an earlier hole).
            let mut carved = [0u16; MAX_UNITS];
            let mut off_list = [0u16; MAX_UNITS];
            let mut blocked = 0u64;
            for i in 0..(*page).capacity as usize {
                let units = g.units_of(g.start + i * g.stride);
                add(&mut carved, units);
                if units & holes != 0 {
                    add(&mut off_list, units);
                }
                if units & OUTSIDE != 0 {
                    blocked |= units;
                }
            }
            let mut b = list;
            for _ in 0..taken {
                let units = g.units_of(b as usize);
                if units & holes != 0 {
                    // Dropped blocks are on no list: this one was freed
                    // twice.
                    misuse::report(
                        "free",
                        Misuse::DoubleFree,
                        b.cast(),
                        "sizeclass: a block freed again by another thread",
                    );
                }
                add(&mut off_list, units);
                b = Self::next_free::<P>(page, b);
            }
            // The OS pages to purge now.
            let mut fresh = 0u64;
            for u in 0..g.units {
                if carved[u] != 0 && carved[u] == off_list[u] && holes & (1 << u) == 0 {
                    fresh |= 1 << u;
                }
            }
            fresh &= !blocked;
            if fresh == 0 {
                Self::push_back::<P>(page, list);
                (*page).holes_tried = taken as u16;
                return 0;
            }
            let holes = holes | fresh;
            // Drop the taken blocks over a hole, push the others back: the
            // list is walked before the purge, which zeroes its links.
            let mut dropped = 0u32;
            let mut back: *mut Block = ptr::null_mut();
            let mut b = list;
            for _ in 0..taken {
                let next = Self::next_free::<P>(page, b);
                if g.units_of(b as usize) & holes != 0 {
                    dropped += 1;
                } else {
                    Self::link::<P>(page, b, back);
                    back = b;
                }
                b = next;
            }
            Self::push_back::<P>(page, back);
            (*page).holes_tried = (taken - dropped) as u16;
            let before = (*page).dropped.load(Relaxed);
            (*page).dropped.store(before + dropped, Relaxed);
            (*page).holes = holes as u32;
            debug_assert!((*page).dropped.load(Relaxed) <= (*page).used.load(Relaxed));
            // Purge in runs of neighbouring OS pages. A purge the kernel
            // refuses leaves the memory as it was: its blocks stay dropped
            // (what a hole holds does not matter), only nothing is given
            // back.
            let mut purged = 0;
            let mut u = 0;
            while u < g.units {
                if fresh & (1 << u) == 0 {
                    u += 1;
                    continue;
                }
                let run = u;
                while u < g.units && fresh & (1 << u) != 0 {
                    u += 1;
                }
                let len = (u - run) * g.os_page;
                if os::purge((g.base + run * g.os_page) as *mut u8, len) {
                    purged += len;
                }
            }
            purged
        }
    }

    /// Pushes a chain of taken blocks back on the page's `thread_free`,
    /// for the owner to collect.
    ///
    /// # Safety
    /// `list` is null or a chain of blocks of `page` taken from its
    /// `thread_free` by the caller.
    unsafe fn push_back<P: Mode>(page: *mut Page, list: *mut Block) {
        if list.is_null() {
            return;
        }
        // SAFETY: caller guarantee: the chain is ours until pushed, and no
        // longer than the page's blocks in use (`walk_remote`'s bound).
        unsafe {
            let (tail, n) = Self::walk_remote::<P>(page, list);
            let key = (*page).shared_key;
            (*page)
                .thread_free
                .push_chain(list, tail, n, |head| P::encode(head.cast(), key).cast());
        }
    }

    /// The owner takes back the blocks dropped over the page's holes: each
    /// goes on `local_free` (its memory reads as zero until written) and
    /// is no longer counted in `used`. Nothing to do without holes.
    ///
    /// # Safety
    /// The caller owns `page` (its heap's owner, in a slow path, or the
    /// holder of its abandoned segment), and has not carved the page since
    /// the holes were made (`Page::collect` calls this before it carves).
    pub(crate) unsafe fn fill_holes<P: Mode>(page: *mut Page) {
        // SAFETY: caller guarantee; pages with holes are in use.
        unsafe {
            if (*page).holes == 0 {
                return;
            }
            let seg = heapkit_core::segment::segment_of(page).cast::<Segment>();
            let Some(g) = Geometry::of(seg, page) else {
                debug_assert!(false, "holes in a page whose span has too many OS pages");
                return;
            };
            let holes = (*page).holes as u64;
            let mut n = 0u32;
            for i in 0..(*page).capacity as usize {
                let b = (g.start + i * g.stride) as *mut Block;
                if g.units_of(b as usize) & holes != 0 {
                    Self::link::<P>(page, b, (*page).local_free);
                    (*page).local_free = b;
                    n += 1;
                }
            }
            debug_assert_eq!(n, (*page).dropped.load(Relaxed));
            // (Saturating: only a double free could make it fall below.)
            let used = (*page).used.load(Relaxed);
            (*page).used.store(used.saturating_sub(n), Relaxed);
            Self::forget_holes(page);
        }
    }

    /// Forgets the page's holes and dropped blocks, for a caller that
    /// takes every block of the page off the lists at once (a retired page,
    /// a reset carve). `used` is the caller's to set.
    ///
    /// # Safety
    /// As for [`Page::fill_holes`] (or the page is being retired).
    #[inline]
    pub(crate) unsafe fn forget_holes(page: *mut Page) {
        // SAFETY: caller guarantee.
        unsafe {
            (*page).holes = 0;
            (*page).dropped.store(0, Relaxed);
            (*page).holes_tried = 0;
        }
    }
}

/// Adds one to `counts[u]` for each unit bit `u` of `units` ([`OUTSIDE`]
/// is ignored).
fn add(counts: &mut [u16; MAX_UNITS], mut units: u64) {
    units &= (1u64 << MAX_UNITS) - 1;
    while units != 0 {
        let u = units.trailing_zeros() as usize;
        counts[u] += 1;
        units &= units - 1;
    }
}
