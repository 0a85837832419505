//! The two modes the pool compiles in: [`Fast`]
//! (the default) and [`Hardened`], as a typed policy
//! (`heapkit_core::harden`).
//!
//! [`Mode`] names everything that differs between them, so `Pool<P>` and
//! the thread cache's fast paths are written once:
//!
//! - which class indices serve the mode ([`Mode::CLASS_BASE`]: the
//!   hardened mode's are their own, `crate::class`), and its segment tag,
//!   so a block of one mode freed through the other is a foreign pointer;
//! - how a free block stores its link: plain by default, hardened
//!   [`Hardened::encode`]d with a process key mixed with the block's
//!   address, and checked on the way out (it must decode to null or to a
//!   16-byte aligned address in a live hardened pool segment);
//! - the checks where a block changes hands ([`Mode::on_take`],
//!   [`Mode::on_free`], [`Mode::check`]), empty by default.
//!
//! A hardened free block bears a [`FreeMark`] in its *last* word (the
//! first two hold the list link and, on a depot batch's first block, the
//! batch link), where a live block keeps its canary ([`Trailer`]); so the
//! hardened classes start at 32 bytes. A free of a marked block is a
//! double free; a block taken from a list without its mark was written
//! after its free. A free of a pointer that is not a block start of its
//! chunk is found exactly (chunks are aligned to their size).
//!
//! The slow paths move blocks between lists by class index, so they use
//! the class-driven forms at the end of this file ([`next_of`],
//! [`set_next`], [`take`], [`mark_carved`]).

use core::alloc::Layout;
use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use heapkit_core::harden::{Fast, FreeMark, Hardened, Policy, Trailer};
use heapkit_core::misuse::{self, Misuse};
use heapkit_core::segment::{SegmentTag, REGIONS};
use heapkit_core::size_class::{class_for, CLASS_COUNT, DIVISORS};

use crate::class::{block_size, chunk_bytes, is_hardened, CHUNK_BLOCKS, CLASSES, HARDENED_BASE};
use crate::depot::FreeBlock;
use crate::segment::header_of;

/// The smallest request a hardened block is sized for (with its canary):
/// 24 bytes, so that every hardened block is at least 32 bytes and its
/// last word is not one of the two the lists use.
const HARDENED_MIN: usize = 24;

/// What differs between the pool's modes (see the module docs).
///
/// Implemented for every [`Policy`] (core seals that trait); each item
/// chooses by the policy's constants at compile time, and this file is the
/// only place that does.
pub(crate) trait Mode: Policy {
    /// The tag of this mode's segments.
    const TAG: SegmentTag;
    /// This mode's first class index.
    const CLASS_BASE: usize;

    /// The class index serving `layout` (with room for the canary), or
    /// `None` for the large path.
    fn class_for(layout: Layout) -> Option<usize>;

    /// The next block after `b` on its list.
    ///
    /// # Safety
    /// `b` is a free block of this mode on a list the caller owns.
    unsafe fn next_of(b: *mut FreeBlock) -> *mut FreeBlock;

    /// Stores in the free block `b` the link to `next`.
    ///
    /// # Safety
    /// `b` is a free block of this mode the caller owns; `next` is null or
    /// one too.
    unsafe fn set_next(b: *mut FreeBlock, next: *mut FreeBlock);

    /// The free block `b` of class `class` leaves its list to be handed
    /// out.
    ///
    /// # Safety
    /// `b` was a free block of `class` on a list the caller owned.
    unsafe fn on_take(b: *mut u8, class: usize);

    /// The block `p` of `class` was just handed out for `requested` bytes.
    ///
    /// # Safety
    /// `p` is a fresh block of `class`; `requested + TRAILER <=
    /// block_size(class)`.
    unsafe fn on_handout(p: *mut u8, class: usize, requested: usize);

    /// `call` frees `p`, in a page of `class` (its `page_class` byte) of a
    /// segment of this mode: hardened, checks that `p` is a live block and
    /// marks it free.
    ///
    /// # Safety
    /// `p` lies in a segment of this mode; `class` is its page's byte.
    unsafe fn on_free(call: &str, class: usize, p: *mut u8);

    /// As [`Mode::on_free`], without marking `p` free (`call` is a
    /// `realloc`).
    ///
    /// # Safety
    /// As for [`Mode::on_free`].
    unsafe fn check(call: &str, class: usize, p: *mut u8);

    /// The live block `p` of `class` is kept in place for `requested` bytes.
    ///
    /// # Safety
    /// `p` is a live block of `class` (checked); `requested + TRAILER <=
    /// block_size(class)`.
    unsafe fn on_resize(class: usize, p: *mut u8, requested: usize);

    /// Bytes of block `p` of `class` the program may use.
    ///
    /// # Safety
    /// `p` is a live block of `class` of this mode.
    unsafe fn usable(p: *mut u8, class: usize) -> usize;
}

impl<P: Policy> Mode for P {
    const TAG: SegmentTag = if P::BLOCK_STATE {
        SegmentTag::POOL_HARDENED
    } else {
        SegmentTag::POOL
    };
    const CLASS_BASE: usize = if P::BLOCK_STATE { HARDENED_BASE } else { 0 };

    #[inline(always)]
    fn class_for(l: Layout) -> Option<usize> {
        if P::TRAILER == 0 {
            return class_for(l).map(|c| c + Self::CLASS_BASE);
        }
        let size = l.size().checked_add(P::TRAILER)?.max(HARDENED_MIN);
        class_for(Layout::from_size_align(size, l.align()).ok()?).map(|c| c + Self::CLASS_BASE)
    }

    #[inline(always)]
    unsafe fn next_of(b: *mut FreeBlock) -> *mut FreeBlock {
        // SAFETY: b is a free block the caller owns (its first word is
        // the link).
        let stored = unsafe { (*b).next };
        if P::BLOCK_STATE {
            checks::decode(b, stored)
        } else {
            stored
        }
    }

    #[inline(always)]
    unsafe fn set_next(b: *mut FreeBlock, next: *mut FreeBlock) {
        let stored = if P::BLOCK_STATE {
            Hardened::encode(next.cast(), link_key(b)).cast()
        } else {
            next
        };
        // SAFETY: b is a free block the caller owns.
        unsafe { ptr::addr_of_mut!((*b).next).write(stored) };
    }

    #[inline(always)]
    unsafe fn on_take(b: *mut u8, class: usize) {
        if P::BLOCK_STATE {
            // SAFETY: forwarded caller guarantee.
            unsafe { checks::on_take(b, class) }
        }
    }

    #[inline(always)]
    unsafe fn on_handout(p: *mut u8, class: usize, requested: usize) {
        if P::TRAILER != 0 {
            // SAFETY: p is a fresh block of class, holding requested +
            // TRAILER bytes (caller).
            unsafe { Trailer::write(p, block_size(class), requested, link_key(p.cast())) }
        }
    }

    #[inline(always)]
    unsafe fn on_free(call: &str, class: usize, p: *mut u8) {
        if P::BLOCK_STATE {
            // SAFETY: forwarded caller guarantee; checked live, so the
            // block is the caller's to mark.
            unsafe {
                checks::check_live(call, class, p);
                FreeMark::set(mark_base(p, class), link_key(p.cast()));
            }
        }
    }

    #[inline(always)]
    unsafe fn check(call: &str, class: usize, p: *mut u8) {
        if P::BLOCK_STATE {
            // SAFETY: forwarded caller guarantee.
            unsafe { checks::check_live(call, class, p) }
        }
    }

    #[inline(always)]
    unsafe fn on_resize(class: usize, p: *mut u8, requested: usize) {
        // SAFETY: forwarded caller guarantee.
        unsafe { Self::on_handout(p, class, requested) }
    }

    #[inline(always)]
    unsafe fn usable(p: *mut u8, class: usize) -> usize {
        let size = block_size(class);
        if P::TRAILER == 0 {
            return size;
        }
        // SAFETY: a live hardened block carries its trailer (caller);
        // clamped, so a misused pointer still gives a size inside the
        // block (the free or realloc that follows reports it).
        unsafe { Trailer::requested(p, size).min(size - P::TRAILER) }
    }
}

/// The process's key for hardened links and marks (drawn once).
static KEY: AtomicUsize = AtomicUsize::new(0);

/// The key of the link and mark stored in block `b`: the process key mixed
/// with the block's address.
#[inline(always)]
fn link_key(b: *const FreeBlock) -> usize {
    let k = KEY.load(Relaxed);
    let k = if k == 0 { draw_key() } else { k };
    k ^ b as usize
}

#[cold]
#[inline(never)]
fn draw_key() -> usize {
    // Keyed by a null "page": the process secret, mixed. Racing threads
    // draw the same value.
    let k = heapkit_core::harden::page_key(ptr::null());
    KEY.store(k, Relaxed);
    k
}

/// Where [`FreeMark`] puts the mark of block `p` of `class`: its last word
/// (`FreeMark` writes the word after the address it is given).
#[inline(always)]
fn mark_base(p: *mut u8, class: usize) -> *mut u8 {
    p.wrapping_add(block_size(class) - 16)
}

/// The hardened mode's checks (see [`Mode`] for each hook's contract).
mod checks {
    use super::*;

    /// Decodes the link `stored` of free block `b`: null, or a 16-byte
    /// aligned address in a live hardened pool segment, else the list was
    /// written after a free.
    #[inline(always)]
    pub(super) fn decode(b: *mut FreeBlock, stored: *mut FreeBlock) -> *mut FreeBlock {
        let next: *mut FreeBlock = Hardened::decode(stored.cast(), link_key(b)).cast();
        if !next.is_null() && !in_hardened_segment(next) {
            corrupted(b.cast(), 0);
        }
        next
    }

    /// Whether `p` is 16-byte aligned in a live hardened pool segment.
    #[inline(always)]
    fn in_hardened_segment(p: *mut FreeBlock) -> bool {
        if p as usize & 15 != 0 || !REGIONS.contains(p) {
            return false;
        }
        // SAFETY: p's segment start is a live heapkit mapping (the region
        // map says so), whose first word is its tag.
        unsafe { ptr::addr_of!((*header_of(p)).tag).read() == SegmentTag::POOL_HARDENED }
    }

    #[inline(always)]
    pub(super) unsafe fn on_take(b: *mut u8, class: usize) {
        // SAFETY: b was a free block of class on the caller's list (so at
        // least 32 bytes, its mark in its last word).
        unsafe {
            let mark = mark_base(b, class);
            if !FreeMark::is_set(mark, link_key(b.cast())) {
                corrupted(b, block_size(class));
            }
            FreeMark::clear(mark);
        }
    }

    /// Checks that `p` is a live block of a hardened class.
    #[inline(always)]
    pub(super) unsafe fn check_live(call: &str, class: usize, p: *mut u8) {
        if class.wrapping_sub(HARDENED_BASE) >= CLASS_COUNT {
            // A free page, the header or the guard.
            invalid(call, p);
        }
        let size = block_size(class);
        // Chunks are aligned to their size.
        let off = p as usize & (chunk_bytes(class) - 1);
        if off >= CHUNK_BLOCKS[class % CLASSES] as usize * size
            || !DIVISORS[class - HARDENED_BASE].divides(off as u32)
        {
            report(call, Misuse::InteriorPointer, p, size);
        }
        let key = link_key(p.cast());
        // SAFETY: p is a block start of a chunk of class, readable.
        unsafe {
            if FreeMark::is_set(mark_base(p, class), key) {
                report(call, Misuse::DoubleFree, p, size);
            }
            if Trailer::check(p, size, key).is_none() {
                report(call, Misuse::Overflow, p, size);
            }
        }
    }
}

/// The next block after free block `b` of class index `class`.
///
/// # Safety
/// As for [`Mode::next_of`].
#[inline]
pub(crate) unsafe fn next_of(b: *mut FreeBlock, class: usize) -> *mut FreeBlock {
    // SAFETY: forwarded caller guarantee.
    unsafe {
        if is_hardened(class) {
            Hardened::next_of(b)
        } else {
            Fast::next_of(b)
        }
    }
}

/// Stores in free block `b` of class index `class` the link to `next`.
///
/// # Safety
/// As for [`Mode::set_next`].
#[inline]
pub(crate) unsafe fn set_next(b: *mut FreeBlock, next: *mut FreeBlock, class: usize) {
    // SAFETY: forwarded caller guarantee.
    unsafe {
        if is_hardened(class) {
            Hardened::set_next(b, next)
        } else {
            Fast::set_next(b, next)
        }
    }
}

/// [`Mode::on_take`] for class index `class`.
///
/// # Safety
/// As for [`Mode::on_take`].
#[inline]
pub(crate) unsafe fn take(b: *mut u8, class: usize) {
    if is_hardened(class) {
        // SAFETY: forwarded caller guarantee.
        unsafe { Hardened::on_take(b, class) }
    }
}

/// Marks the never-used block `b` of class index `class` free (hardened:
/// a carved block joins a list, where every block bears its mark).
///
/// # Safety
/// `b` is a never-handed-out block of `class` the caller owns.
#[inline]
pub(crate) unsafe fn mark_carved(b: *mut u8, class: usize) {
    if is_hardened(class) {
        // SAFETY: b is the caller's, at least 32 bytes.
        unsafe { FreeMark::set(mark_base(b, class), link_key(b.cast())) }
    }
}

/// A hardened list holds a block written after its free (`size` 0: its
/// link decodes to nowhere).
#[cold]
#[inline(never)]
fn corrupted(p: *mut u8, size: usize) -> ! {
    report("malloc", Misuse::CorruptedFreeList, p, size)
}

#[cold]
#[inline(never)]
fn invalid(call: &str, p: *mut u8) -> ! {
    misuse::report(call, Misuse::InvalidPointer, p, "pool, not a block")
}

/// Reports `what` about `p` with the block size as context.
#[cold]
#[inline(never)]
fn report(call: &str, what: Misuse, p: *mut u8, size: usize) -> ! {
    if size == 0 {
        misuse::report(call, what, p, "pool")
    } else {
        misuse::report_in_class(call, what, p, "pool", size)
    }
}
