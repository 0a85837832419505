//! How a page carves its blocks and gives them back.
//!
//! A page's blocks are carved lazily ([`Page::extend`], one OS page worth
//! at a time, from the allocation slow path), so a fresh page costs only
//! the memory it hands out. The reverse matters when a page empties but
//! stays its class's page: its carved blocks are all free, resident, and
//! on lists its owner's fast paths pop without a lock, so no other thread
//! may purge them. Two moves make them purgeable (see
//! `purge::empty_page_kept` for when each is used):
//!
//! - [`Page::park`]: the free blocks move to `local_free`, where no fast
//!   path looks; the owner's next allocation from the page takes the slow
//!   path, under the heap's lock, and moves them back.
//! - [`Page::reset_carve`]: the page keeps its first blocks and gives the
//!   others back to its uncarved part as a *dirty tail*
//!   (`Page::dirty_end`), which [`Page::purge_tail`] purges under the
//!   heap's lock (the decay, the reclaimer, the background purger), since
//!   only a slow path carves.

use core::ptr;
use core::sync::atomic::{AtomicI64, Ordering::Relaxed};

use heapkit_core::misuse::{self, Misuse};

use crate::mode::Mode;
use crate::page::Page;
use crate::remote::Block;
use crate::segment::{Segment, SegmentKind};

/// Bytes of the blocks carved on pages in use, both modes (live, free, or
/// remotely freed: all hold memory), for `stats.active`. Written where a
/// page's `capacity` changes, all slow paths (a carving, a reset, a page
/// retired), never by a fast path; on a line of its own.
#[repr(align(64))]
struct CarvedBytes(AtomicI64);

static CARVED: CarvedBytes = CarvedBytes(AtomicI64::new(0));

/// Counts `blocks` blocks of `stride` bytes carved (or, negative, given
/// back by a reset or with their page).
#[inline]
pub(crate) fn count_carved(blocks: i64, stride: usize) {
    let delta = blocks * stride as i64;
    let before = CARVED.0.fetch_add(delta, Relaxed);
    // A page's carvings happen before its give-backs (its owner's, or
    // handed over with its segment), so the sum never goes below 0 unless
    // a capacity change went uncounted.
    debug_assert!(before + delta >= 0, "carved bytes below zero");
}

/// Bytes of blocks carved on pages in use (see [`count_carved`]).
pub(crate) fn carved_bytes() -> u64 {
    CARVED.0.load(Relaxed).max(0) as u64
}

/// How many bytes of blocks [`Page::extend`] carves at once...
const EXTEND_BYTES: usize = 4096;
/// ...but never fewer blocks than this (while the page has room): with one
/// block per OS page (classes of 4 KiB and up), carving one at a time sent
/// every fresh block through the allocation slow path...
const EXTEND_MIN_BLOCKS: usize = 4;
/// ...as long as those blocks span at most this many bytes. Carving writes
/// each block's first word, so every block carved ahead of its use is a
/// page faulted in (and resident) before the program asks for it: for
/// blocks of 32 KiB, three faults inside one `malloc` (this VM takes 1-3 us
/// per fault), where the slow path a carving of one block costs instead is
/// a hundred nanoseconds. Strides above 16 KiB carve one block at a time
/// ([`Page::carves_singly`]).
const EXTEND_AHEAD_BYTES: usize = 32 * 1024;

/// How many blocks of `stride` bytes one carving takes (while the page has
/// room): one OS page worth, at least [`EXTEND_MIN_BLOCKS`] while they
/// span at most [`EXTEND_AHEAD_BYTES`], and at least one.
#[inline]
fn carve_blocks(stride: usize) -> usize {
    let ahead = (EXTEND_AHEAD_BYTES / stride).min(EXTEND_MIN_BLOCKS);
    (EXTEND_BYTES / stride).max(ahead).max(1)
}

impl Page {
    /// How many blocks [`Page::reset_carve`] keeps carved in a page of
    /// segment kind `kind`: one carving's worth ([`Page::extend`]) for a
    /// small page, so that a loop that never holds more than that many
    /// blocks of the class at once keeps them; one block (8 KiB and up)
    /// for the others.
    #[inline]
    pub(crate) fn keep_on_reset(stride: usize, kind: SegmentKind) -> u32 {
        if kind == SegmentKind::Small {
            carve_blocks(stride) as u32
        } else {
            1
        }
    }

    /// Parks an empty page: its free blocks move from `free` to
    /// `local_free`, so the owner's next allocation from it takes the slow
    /// path (which moves them back, under the heap's lock). While a page is
    /// parked ([`Page::is_parked`]) no fast path reads or writes it, and a
    /// purger holding the heap's lock may [`Page::reset_carve`] it even if
    /// it is its class's current page.
    ///
    /// # Safety
    /// The caller must own `page`, hold its heap's lock, and the page must
    /// have no block in use.
    pub(crate) unsafe fn park<P: Mode>(page: *mut Page) {
        // SAFETY: caller guarantee: the lists are the owner's, and with no
        // block in use no one else pushes to them.
        unsafe {
            debug_assert_eq!(Self::in_use(page), 0);
            let free = (*page).free.load(Relaxed);
            if free.is_null() {
                // Nothing to move: parked already if its blocks wait on
                // `local_free` (collected remote frees emptied it).
                (*page).parked = !(*page).local_free.is_null();
                return;
            }
            let local = (*page).local_free;
            if local.is_null() {
                (*page).local_free = free;
            } else {
                // Rare (remote frees collected, then local ones): append
                // `free` after `local_free`'s last block.
                // Bounded: remote frees are collected by count, unwalked,
                // so a block freed twice by other threads (not in a row)
                // can leave a loop here; it is reported, not spun on.
                let mut tail = local;
                let mut steps = 0u32;
                loop {
                    let next = Self::next_free::<P>(page, tail);
                    if next.is_null() {
                        break;
                    }
                    tail = next;
                    steps += 1;
                    if steps > (*page).capacity {
                        misuse::report(
                            "free",
                            Misuse::CorruptedFreeList,
                            local.cast(),
                            "sizeclass: a page's collected frees",
                        );
                    }
                }
                Self::link::<P>(page, tail, free);
            }
            (*page).free.store(ptr::null_mut(), Relaxed);
            (*page).parked = true;
        }
    }

    /// True when the page is parked ([`Page::parked`]): nothing in use,
    /// every carved block on `local_free` (or in its dirty tail), `free`
    /// empty, until its owner's next slow path.
    ///
    /// # Safety
    /// `page` must be an in-use page, read with its heap's lock held.
    #[inline]
    pub(crate) unsafe fn is_parked(page: *const Page) -> bool {
        // SAFETY: caller guarantee. The lists and count are read only once
        // the flag says the owner's fast paths leave them alone.
        unsafe {
            let parked = (*page).parked;
            debug_assert!(
                !parked
                    || ((*page).free.load(Relaxed).is_null()
                        && !(*page).local_free.is_null()
                        && Self::in_use(page) == 0),
                "a parked page's blocks are on local_free, none in use"
            );
            parked
        }
    }

    /// Gives the carved blocks of an empty page from block `keep` on back
    /// to its uncarved part, as its dirty tail (see `dirty_end`), which a
    /// purger may then purge ([`Page::purge_tail`]) while the page stays
    /// its class's current page. Blocks `0..keep` become `local_free`, in
    /// address order, and `free` is left empty, so the page stays parked
    /// until its owner's next allocation from it (a slow path) takes them
    /// and carves the others again ([`Page::extend`]). Nothing to do when
    /// at most `keep` blocks are carved.
    ///
    /// # Safety
    /// The caller must hold the lock of the heap that owns `page`; the page
    /// must have no block in use, and either be parked or the caller be its
    /// owner; `keep >= 1`.
    pub(crate) unsafe fn reset_carve<P: Mode>(page: *mut Page, keep: u32, now: u64) {
        // SAFETY: caller guarantee: with nothing in use, blocks 0..keep
        // (carved, as capacity > keep) are free; the owner's fast paths do
        // not touch a parked page, and its slow paths wait for the lock.
        unsafe {
            debug_assert_eq!(Self::in_use(page), 0);
            debug_assert!(keep >= 1);
            if (*page).capacity <= keep {
                return;
            }
            // Blocks dropped over holes (`holes.rs`) are taken back or
            // become tail with the others: none is counted any more (with
            // nothing live, the owner's fast paths do not write `used`).
            let dropped = (*page).dropped.load(Relaxed);
            if dropped != 0 {
                let used = (*page).used.load(Relaxed);
                (*page).used.store(used.saturating_sub(dropped), Relaxed);
                Self::forget_holes(page);
            }
            (*page).dirty_end = (*page).dirty_end.max((*page).capacity);
            (*page).free.store(ptr::null_mut(), Relaxed);
            (*page).local_free = Self::link_run::<P>(page, 0, keep as usize);
            count_carved(
                i64::from(keep) - i64::from((*page).capacity),
                (*page).stride as usize,
            );
            (*page).capacity = keep;
            (*page).is_zero = false;
            (*page).parked = true;
            (*page).freed_at_ns = now;
        }
    }

    /// True when the page has a dirty tail (see `dirty_end`).
    ///
    /// # Safety
    /// `page` must be metadata of a mapped segment, read with the heap's
    /// lock held.
    #[inline]
    pub(crate) unsafe fn has_dirty_tail(page: *const Page) -> bool {
        // SAFETY: caller guarantee.
        unsafe { (*page).dirty_end > (*page).capacity }
    }

    /// Purges the page's dirty tail (the OS pages wholly past block
    /// `capacity - 1`); returns the bytes purged.
    ///
    /// # Safety
    /// The caller must hold the lock of the heap that owns `page` (in use,
    /// in segment `seg`): no one carves meanwhile.
    pub(crate) unsafe fn purge_tail(seg: *mut Segment, page: *mut Page) -> usize {
        // SAFETY: caller guarantee: blocks capacity..dirty_end are on no
        // list and handed to no one, and the range stays inside the page's
        // span (its end is the span's, clamped).
        unsafe {
            let os_page = heapkit_core::os::page_size();
            let stride = (*page).stride as usize;
            let (span, len) = Segment::purgeable(seg, (*page).index as usize);
            let span_end = span as usize + len;
            let start = (*page).start as usize;
            let from = (start + (*page).capacity as usize * stride).next_multiple_of(os_page);
            let to = (start + (*page).dirty_end as usize * stride)
                .next_multiple_of(os_page)
                .min(span_end);
            (*page).dirty_end = (*page).capacity;
            if to <= from {
                return 0;
            }
            heapkit_core::os::purge(from as *mut u8, to - from);
            to - from
        }
    }

    /// Whether the page's next carving is a single block, which the
    /// allocation slow path then takes with [`Page::carve_one`], unwritten,
    /// instead of listing it: a stride above 16 KiB (half of
    /// [`EXTEND_AHEAD_BYTES`]; default mode: a hardened block bears its
    /// free mark from its carving on).
    ///
    /// # Safety
    /// The caller must own `page`, in use.
    #[inline]
    pub(crate) unsafe fn carves_singly<P: Mode>(page: *const Page) -> bool {
        // SAFETY: caller guarantee.
        unsafe {
            !P::BLOCK_STATE
                && (*page).capacity < (*page).reserved
                && carve_blocks((*page).stride as usize) == 1
        }
    }

    /// Carves the page's next block and returns it, for the caller to hand
    /// out at once, as the pop from `free` would ([`Page::carves_singly`]
    /// holds). Nothing is written into the block: listed, its link was the
    /// write that faulted in its first OS page, inside `malloc` (1-3 us on
    /// this VM for each fresh 16-256 KiB block), where the program's own
    /// first write now does.
    ///
    /// # Safety
    /// The caller must own `page`, with [`Page::carves_singly`] true, and
    /// hand the block out (counting it in `used`).
    pub(crate) unsafe fn carve_one<P: Mode>(page: *mut Page) -> *mut u8 {
        // SAFETY: caller guarantee: block `capacity` lies inside the page's
        // span (capacity < reserved) and was never handed out.
        unsafe {
            debug_assert!(Self::carves_singly::<P>(page));
            let block = (*page)
                .start
                .add((*page).capacity as usize * (*page).stride as usize);
            (*page).capacity += 1;
            (*page).carve_kept = false;
            count_carved(1, (*page).stride as usize);
            block
        }
    }

    /// Carves one OS page of fresh blocks ([`carve_blocks`])
    /// onto the empty `free` list.
    ///
    /// # Safety
    /// The caller must own `page`, with `free` empty and
    /// `capacity < reserved`.
    pub(crate) unsafe fn extend<P: Mode>(page: *mut Page) {
        // SAFETY: blocks capacity..capacity+n lie inside the page's span
        // (n <= reserved - capacity) and were never handed out.
        unsafe {
            let size = (*page).stride as usize;
            let room = ((*page).reserved - (*page).capacity) as usize;
            let n = carve_blocks(size).min(room);
            debug_assert!(n >= 1);
            (*page).free.store(
                Self::link_run::<P>(page, (*page).capacity as usize, n),
                Relaxed,
            );
            (*page).capacity += n as u32;
            (*page).carve_kept = false;
            count_carved(n as i64, size);
        }
    }

    /// Links blocks `from..from + n` of the page into a list in address
    /// order, each with its free mark; returns its head.
    ///
    /// # Safety
    /// The caller must own `page` and blocks `from..from + n` (inside the
    /// page's span, on no list, handed to no one); `n >= 1`.
    unsafe fn link_run<P: Mode>(page: *mut Page, from: usize, n: usize) -> *mut Block {
        // SAFETY: caller guarantee: every block written lies in the span.
        unsafe {
            let stride = (*page).stride as usize;
            let first = (*page).start.add(from * stride);
            let mut b = first;
            for _ in 1..n {
                let next = b.add(stride);
                Self::link::<P>(page, b.cast(), next.cast());
                P::mark_free(b, (*page).key);
                b = next;
            }
            Self::link::<P>(page, b.cast(), ptr::null_mut());
            P::mark_free(b, (*page).key);
            first.cast()
        }
    }
}
