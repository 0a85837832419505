//! The two modes slab compiles in: [`Fast`](heapkit_core::harden::Fast)
//! (the default) and [`Hardened`], as a typed policy
//! (`heapkit_core::harden`).
//!
//! [`Mode`] names everything that differs between them, so `Slab<P>` is
//! written once:
//!
//! - which caches serve the mode ([`Mode::CACHE_BASE`]: the hardened mode's
//!   are their own, after the default mode's, so the modes never share a
//!   magazine, a slab or a segment) and its segment tag, so an object of
//!   one mode freed through the other is a foreign pointer, reported;
//! - the checks at the two points where an object changes hands,
//!   [`Mode::on_handout`] and [`Mode::on_free`], which are empty in the
//!   default mode and compile to nothing.
//!
//! In hardened mode every free object is *sealed* ([`seal`]): its second
//! word bears a [`FreeMark`] and its first a keyed copy of its address
//! (set when it is freed or carved, checked and cleared when it is handed
//! out). A free of an object that bears the mark is a double free, and an
//! object handed out without its seal was written after its free (a
//! pointer planted in its first word is caught here). A free of a pointer
//! that is not the start of an object of its slab is found exactly (its
//! offset in the slab), and the canary ([`Trailer`]) after the requested
//! size finds an overflow. The slab layer encodes its free-list links with
//! the segment's key (`SlabMeta::take`, `SlabMeta::give`); magazines hold
//! their objects' addresses outside the objects, so a write after free
//! cannot steer them. Hardened segments end with a guard
//! (`crate::segment`), hardened large blocks with a guard page.

use core::alloc::Layout;

use heapkit_core::harden::{FreeMark, Hardened, Policy, Trailer};
use heapkit_core::misuse::{self, Misuse};
use heapkit_core::segment::{segment_of, SegmentTag};
use heapkit_core::size_class::{class_for, CLASS_COUNT, DIVISORS};

use crate::segment::{self, SegmentHeader};
use crate::slab::{layout, HARDENED_BASE};

/// What differs between slab's modes (see the module docs).
///
/// Implemented for every [`Policy`] (core seals that trait, so the two
/// modes are the only ones); each item chooses by the policy's constants at
/// compile time, and this file is the only place that does.
pub(crate) trait Mode: Policy {
    /// The tag of this mode's segments.
    const TAG: SegmentTag;
    /// This mode's first cache: class `c` is served by cache
    /// `CACHE_BASE + c`.
    const CACHE_BASE: usize;

    /// The cache serving `layout` (with room for the canary), or `None`
    /// for the large path.
    fn cache_for(layout: Layout) -> Option<usize>;

    /// Object `p` of cache `c` was just taken (from a magazine or a slab)
    /// for `requested` bytes.
    ///
    /// # Safety
    /// `p` is an object of cache `c`, of this mode, that the caller now
    /// owns; `requested + TRAILER <= layout(c).size`.
    unsafe fn on_handout(p: *mut u8, c: usize, requested: usize);

    /// `call` frees `p`, which lies in segment `seg` of this mode in a
    /// chunk of cache `c` (the chunk's owner byte): hardened mode checks
    /// that `p` is a live object of a cache of this mode and marks it free.
    ///
    /// # Safety
    /// `seg` is a live segment with this mode's tag and `p` lies in it;
    /// `c` is the owner byte of `p`'s chunk.
    unsafe fn on_free(call: &str, seg: *mut SegmentHeader, c: usize, p: *mut u8);

    /// As [`Mode::on_free`], without marking `p` free: `call` (a
    /// `realloc`) is about to read or resize it.
    ///
    /// # Safety
    /// As for [`Mode::on_free`].
    unsafe fn check(call: &str, seg: *mut SegmentHeader, c: usize, p: *mut u8);

    /// The live object `p` of cache `c` in segment `seg` is kept in place
    /// for `requested` bytes (hardened: the canary moves).
    ///
    /// # Safety
    /// `p` is a live object of cache `c` of this mode in `seg`, checked by
    /// [`Mode::check`]; `requested + TRAILER <= layout(c).size`.
    unsafe fn on_resize(seg: *mut SegmentHeader, c: usize, p: *mut u8, requested: usize);

    /// Bytes of object `p` of cache `c` the program may use: all of them
    /// by default, the requested size when hardened.
    ///
    /// # Safety
    /// `p` is a live object of cache `c` of this mode.
    unsafe fn usable(p: *mut u8, c: usize) -> usize;
}

impl<P: Policy> Mode for P {
    const TAG: SegmentTag = if P::BLOCK_STATE {
        SegmentTag::SLAB_HARDENED
    } else {
        SegmentTag::SLAB
    };
    const CACHE_BASE: usize = if P::BLOCK_STATE { HARDENED_BASE } else { 0 };

    #[inline(always)]
    fn cache_for(l: Layout) -> Option<usize> {
        if P::TRAILER == 0 {
            return class_for(l).map(|c| c + Self::CACHE_BASE);
        }
        let with_trailer = Layout::from_size_align(l.size().checked_add(P::TRAILER)?, l.align());
        class_for(with_trailer.ok()?).map(|c| c + Self::CACHE_BASE)
    }

    #[inline(always)]
    unsafe fn on_handout(p: *mut u8, c: usize, requested: usize) {
        if P::BLOCK_STATE {
            // SAFETY: forwarded caller guarantee.
            unsafe { checks::on_handout(p, c, requested) }
        }
    }

    #[inline(always)]
    unsafe fn on_free(call: &str, seg: *mut SegmentHeader, c: usize, p: *mut u8) {
        if P::BLOCK_STATE {
            // SAFETY: forwarded caller guarantee.
            unsafe {
                let key = checks::check_live(call, seg, c, p);
                seal(p, key);
            }
        }
    }

    #[inline(always)]
    unsafe fn check(call: &str, seg: *mut SegmentHeader, c: usize, p: *mut u8) {
        if P::BLOCK_STATE {
            // SAFETY: forwarded caller guarantee.
            unsafe {
                checks::check_live(call, seg, c, p);
            }
        }
    }

    #[inline(always)]
    unsafe fn on_resize(seg: *mut SegmentHeader, c: usize, p: *mut u8, requested: usize) {
        if P::TRAILER != 0 {
            // SAFETY: p is a live object of cache c (caller), which holds
            // requested + TRAILER bytes; seg is its live segment.
            unsafe { Trailer::write(p, layout(c).size, requested, segment::key(seg)) }
        }
    }

    #[inline(always)]
    unsafe fn usable(p: *mut u8, c: usize) -> usize {
        let size = layout(c).size;
        if P::TRAILER == 0 {
            return size;
        }
        // SAFETY: a live hardened object carries its trailer (caller);
        // clamped, so a misused pointer still gives a size inside the
        // object (the free or realloc that follows reports it).
        unsafe { Trailer::requested(p, size).min(size - P::TRAILER) }
    }
}

/// The hardened mode's checks (see [`Mode`] for each hook's contract).
mod checks {
    use super::*;

    #[inline(always)]
    pub(super) unsafe fn on_handout(p: *mut u8, c: usize, requested: usize) {
        // SAFETY: p is an object of a hardened cache the caller now owns
        // (caller guarantee), so its segment is live and keyed.
        unsafe {
            let key = segment::key(segment_of(p).cast());
            if !sealed(p, key) {
                corrupted(p, layout(c).size);
            }
            // Both words of the seal go: a carved object reads as zero.
            p.cast::<usize>().write(0);
            FreeMark::clear(p);
            Trailer::write(p, layout(c).size, requested, key);
        }
    }

    /// Checks that `p` is a live object of a hardened cache; returns its
    /// segment's key.
    #[inline(always)]
    pub(super) unsafe fn check_live(
        call: &str,
        seg: *mut SegmentHeader,
        c: usize,
        p: *mut u8,
    ) -> usize {
        if c.wrapping_sub(HARDENED_BASE) >= CLASS_COUNT {
            // A free chunk, the header, or the magazine cache's.
            invalid(call, p);
        }
        let l = layout(c);
        // SAFETY: p lies in a chunk owned by a slab of cache c (its owner
        // byte names one), whose offset and objects are readable.
        unsafe {
            let off = segment::offset_in_slab(seg, p);
            let class = c - HARDENED_BASE;
            if off >= l.capacity as usize * l.size || !DIVISORS[class].divides(off as u32) {
                report(call, Misuse::InteriorPointer, p, l.size);
            }
            let key = segment::key(seg);
            if FreeMark::is_set(p, key) {
                report(call, Misuse::DoubleFree, p, l.size);
            }
            if Trailer::check(p, l.size, key).is_none() {
                report(call, Misuse::Overflow, p, l.size);
            }
            key
        }
    }
}

/// The first word of a sealed free object `p` under `key`.
#[inline(always)]
fn seal_word(p: *const u8, key: usize) -> usize {
    Hardened::encode(p.cast_mut(), key) as usize
}

/// Seals the free hardened object `p`: its free mark, and a keyed copy of
/// its address in its first word.
///
/// # Safety
/// `p` is an object of at least 16 bytes the caller owns.
#[inline(always)]
pub(crate) unsafe fn seal(p: *mut u8, key: usize) {
    // SAFETY: the first two words are the caller's (caller guarantee).
    unsafe {
        p.cast::<usize>().write(seal_word(p, key));
        FreeMark::set(p, key);
    }
}

/// Puts back the first word of the seal of `p`, which held its slab's
/// free-list link (its mark, in the second word, stayed).
///
/// # Safety
/// As for [`seal`].
#[inline(always)]
pub(crate) unsafe fn reseal_first_word(p: *mut u8, key: usize) {
    // SAFETY: as for `seal`.
    unsafe { p.cast::<usize>().write(seal_word(p, key)) }
}

/// Whether `p` bears its whole seal.
///
/// # Safety
/// `p` is a readable object of at least 16 bytes.
#[inline(always)]
unsafe fn sealed(p: *mut u8, key: usize) -> bool {
    // SAFETY: caller guarantee.
    unsafe { p.cast::<usize>().read() == seal_word(p, key) && FreeMark::is_set(p, key) }
}

/// A hardened free list (a slab's or a magazine's object) holds an object
/// that was written after its free.
#[cold]
#[inline(never)]
pub(crate) fn corrupted(p: *mut u8, size: usize) -> ! {
    report("malloc", Misuse::CorruptedFreeList, p, size)
}

#[cold]
#[inline(never)]
fn invalid(call: &str, p: *mut u8) -> ! {
    misuse::report(call, Misuse::InvalidPointer, p, "slab, not an object")
}

/// Reports `what` about `p` with the object size as context.
#[cold]
#[inline(never)]
fn report(call: &str, what: Misuse, p: *mut u8, size: usize) -> ! {
    misuse::report_in_class(call, what, p, "slab", size)
}
