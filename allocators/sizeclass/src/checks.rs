//! The hardened mode's checks: what each hook of [`Mode`] checks when the
//! policy is [`Hardened`] (see [`Mode`] for each hook's contract and
//! `mode.rs` for the per-block state they rely on: the free mark, the
//! canary, the encoded links). Every detection ends in [`report_block`]:
//! one line naming the call, the misuse, the pointer and the class, then
//! an abort.

use core::sync::atomic::Ordering::Relaxed;

use heapkit_core::harden::{FreeMark, Hardened, Policy, Trailer};
use heapkit_core::misuse::{self, Misuse};
use heapkit_core::segment::SEGMENT_ALIGN;

use crate::classes::STRIDE_DIVISOR;
use crate::mode::Mode;
use crate::page::Page;
use crate::remote::Block;

#[inline(always)]
pub(crate) unsafe fn on_pop(page: *mut Page, block: *mut Block, next: *mut Block) -> bool {
    // SAFETY: caller guarantee: the page is ours and block was its head.
    unsafe {
        // The link must be null or a granule of the same segment (a
        // link decoded without its page's key lands anywhere in the
        // address space), and the popped block must bear its free
        // mark (else it was written after its free, or forged).
        if !next.is_null()
            && ((next as usize ^ block as usize) >= SEGMENT_ALIGN || next as usize & 15 != 0)
        {
            corrupted(page, block);
        }
        if !FreeMark::is_set(block.cast(), (*page).key) {
            // To the caller's out-of-line pop: checked here, or in a
            // call that returns here, the fast path saved two more
            // registers (1.5-3% on churn, larson and trees); checked
            // out of line and popped again from the start, the
            // producer/consumer workload took 15% longer.
            return false;
        }
        FreeMark::clear(block.cast());
        true
    }
}

#[inline(always)]
pub(crate) unsafe fn on_free<P: Policy>(page: *mut Page, ptr: *mut u8) {
    // SAFETY: caller guarantee: page is ptr's and ours.
    unsafe {
        let key = (*page).key;
        if FreeMark::is_set_any(ptr, key) {
            report_block("free", Misuse::DoubleFree, page, ptr);
        }
        // The owner's own frees check the canary now: checked when
        // the block is next handed out instead, its last line (cold by
        // then) is a load miss the handout's store to it was not (churn
        // 2.1x default instead of 1.5x).
        if P::TRAILER != 0 {
            check_trailer("free", page, ptr, (*page).block_size as usize, key);
        }
        FreeMark::set(ptr, key);
    }
}

#[inline(always)]
pub(crate) unsafe fn on_remote_free<P: Policy>(page: *mut Page, ptr: *mut u8) {
    // SAFETY: caller guarantee; only the page's shared line is read.
    unsafe {
        let key = (*page).shared_key;
        if FreeMark::is_set_any(ptr, key) {
            report_block("free", Misuse::DoubleFree, page, ptr);
        }
        let size = (*page).shared_size as usize;
        if P::remote_frees_unchecked(size) {
            // The owner checks the canary (`check_deferred`).
            FreeMark::set_unchecked(ptr, key);
        } else {
            check_trailer("free", page, ptr, size, key);
            FreeMark::set(ptr, key);
        }
    }
}

#[inline(always)]
pub(crate) unsafe fn on_collect(page: *mut Page, block: *mut Block) {
    // SAFETY: caller guarantee: the page is ours; `block` came off its
    // remote list (a link decoded with the page's key), so it is read
    // only once it is known to lie among the page's blocks.
    unsafe {
        let off = (block as usize).wrapping_sub((*page).start as usize);
        if off >= (*page).reserved as usize * (*page).stride as usize {
            corrupted(page, block);
        }
        if !FreeMark::is_set(block.cast(), (*page).key) {
            check_deferred("free", page, block.cast());
        }
    }
}

/// Checks the unchecked free blocks on `page`'s lists (see
/// [`Mode::on_empty`]).
///
/// # Safety
/// As for [`Mode::on_empty`].
#[cold]
#[inline(never)]
pub(crate) unsafe fn on_empty<P: Mode>(page: *mut Page) {
    // SAFETY: caller guarantee: the lists are the caller's; every
    // listed block was checked (popped links, `on_collect`) or pushed
    // by the owner, so it lies among the page's blocks.
    unsafe {
        for head in [(*page).free.load(Relaxed), (*page).local_free] {
            let mut b = head;
            while !b.is_null() {
                if !FreeMark::is_set(b.cast(), (*page).key) {
                    check_deferred("free", page, b.cast());
                }
                b = Page::next_free::<P>(page, b);
            }
        }
        (*page).unchecked_frees = false;
    }
}

/// [`check_unchecked`], then the block bears the checked mark.
///
/// # Safety
/// As for [`check_unchecked`].
#[inline(never)]
unsafe fn check_deferred(call: &str, page: *mut Page, block: *mut u8) {
    // SAFETY: forwarded caller guarantee.
    unsafe {
        check_unchecked(call, page, block);
        FreeMark::set(block, (*page).key);
    }
}

/// A free block without the checked free mark, about to be handed out
/// (by `call`), collected or found on an emptied page: it must bear
/// the unchecked one (a remote free left its canary to the owner),
/// start a block, and keep its canary. A misuse is reported as found
/// by `call`, which is not the free that did it.
///
/// # Safety
/// The caller owns `page` (or holds its heap's lock); `block` lies
/// among its blocks, at a 16-byte granule.
#[inline(always)]
pub(crate) unsafe fn check_unchecked(call: &str, page: *mut Page, block: *mut u8) {
    // SAFETY: caller guarantee: block lies among the page's blocks,
    // which are at least 16 bytes; the canary is read only from a block
    // start, so within the page's span.
    unsafe {
        let key = (*page).key;
        if !FreeMark::is_unchecked(block, key) {
            corrupted(page, block.cast());
        }
        // A block start: `off` is a multiple of the stride (one
        // multiply, no division; offsets are below 2^32).
        let off = (block as usize).wrapping_sub((*page).start as usize) as u64;
        // (Unchecked: an index check would put a panic inside `malloc`.)
        let class = (*page).class as usize;
        debug_assert!(class < STRIDE_DIVISOR.len());
        // SAFETY: a page in use holds a heap class, below HEAP_CLASSES.
        let divisor = *STRIDE_DIVISOR.get_unchecked(class);
        if off.wrapping_mul(divisor) >= divisor {
            report_block(call, Misuse::InteriorPointer, page, block);
        }
        // The link and the free mark overwrote the first 16 bytes.
        let size = (*page).block_size as usize;
        if Trailer::check_past(block, size, key, 16).is_none() {
            report_block(call, Misuse::Overflow, page, block);
        }
    }
}

/// The largest blocks whose canary a remote free checks itself. Past it,
/// the canary lies on a line the freeing thread has not touched (the owner
/// wrote it when it handed the block out: a transfer between cores, 14% of
/// the producer/consumer workload's time), and is left to the owner, which
/// checks it before the block is handed out again ([`Mode::on_pop`]), when
/// its page is retired ([`Mode::on_empty`]) or when a walk of the remote list
/// takes it ([`Mode::on_collect`]). A block of at most this size may
/// hold its requested bytes' end and its canary within its first 16
/// bytes, which the link and the mark overwrite. (Checking at collection
/// instead, a walk over lines the freers just wrote, made the
/// producer/consumer workload 10% slower than checking on the freer.)
pub(crate) const CHECK_REMOTE_FREE_MAX: usize = 64;

// Interior pointers are found through the canary (see the module docs).
const _: () = assert!(Hardened::TRAILER > 0);

/// [`check_trailer`] for the quarantine (`quarantine.rs`).
///
/// # Safety
/// As for [`check_trailer`].
pub(crate) unsafe fn check_trailer_of(
    call: &str,
    page: *mut Page,
    ptr: *mut u8,
    block_size: usize,
    key: usize,
) {
    // SAFETY: forwarded caller guarantee.
    unsafe { check_trailer(call, page, ptr, block_size, key) }
}

/// Checks the canary of a hardened block being freed (or resized).
///
/// # Safety
/// `ptr` lies in `page`, whose blocks are `block_size` bytes.
#[inline(always)]
pub(crate) unsafe fn check_trailer(
    call: &str,
    page: *mut Page,
    ptr: *mut u8,
    block_size: usize,
    key: usize,
) {
    // SAFETY: caller guarantee.
    unsafe {
        if Trailer::check(ptr, block_size, key).is_none() {
            bad_trailer(call, page, ptr);
        }
    }
}

/// A trailer that does not check: `ptr` points into a block (its
/// "trailer" is the wrong bytes), or the block was overrun.
#[cold]
#[inline(never)]
unsafe fn bad_trailer(call: &str, page: *mut Page, ptr: *mut u8) -> ! {
    // SAFETY: page is mapped metadata (ptr lies in its segment); only the
    // fields fixed while the page is in use are read.
    let (start, stride) = unsafe { ((*page).start as usize, (*page).stride as usize) };
    let off = (ptr as usize).wrapping_sub(start);
    let what = if stride == 0 || off % stride != 0 || off >= SEGMENT_ALIGN {
        Misuse::InteriorPointer
    } else {
        Misuse::Overflow
    };
    // SAFETY: as above.
    unsafe { report_block(call, what, page, ptr) }
}

#[cold]
#[inline(never)]
unsafe fn corrupted(page: *mut Page, block: *mut Block) -> ! {
    // SAFETY: page is ours.
    unsafe { report_block("malloc", Misuse::CorruptedFreeList, page, block.cast()) }
}

/// Reports `what` about `ptr` with the page's class size as context.
#[cold]
#[inline(never)]
pub(crate) unsafe fn report_block(call: &str, what: Misuse, page: *mut Page, ptr: *mut u8) -> ! {
    // SAFETY: page is mapped metadata.
    let size = unsafe { (*page).shared_size };
    misuse::report_in_class(call, what, ptr, "sizeclass", size as usize)
}
