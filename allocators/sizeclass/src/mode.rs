//! The two modes sizeclass compiles in: [`Fast`](heapkit_core::harden::Fast) (the default) and
//! [`Hardened`](heapkit_core::harden::Hardened), as a typed policy (`heapkit_core::harden`).
//!
//! [`Mode`] names everything that differs between them, so the rest of
//! the crate is written once, generic over `P: Mode` (any `Policy`):
//!
//! - its own thread heaps (one `thread_state!` per mode: the two never
//!   share a page) and its own segment tag, so a block of one mode freed
//!   through the other is a foreign pointer, reported, never mixed in;
//! - per-block state: a free hardened block carries a *free mark* in its
//!   second word (its address mixed with the page's secret key), set when
//!   it is freed or carved and cleared when it is handed out, so a free of
//!   a block that bears it is a double free, and a block popped without it
//!   was written after its free (or forged). The check reads the cache line
//!   the free writes anyway (the link): no side table, no scan;
//! - the segment layout: a hardened segment's last OS page is an
//!   inaccessible guard;
//! - hooks the fast paths call at the points where hardening checks
//!   something: [`Mode::on_pop`], [`Mode::on_free`],
//!   [`Mode::on_remote_free`], [`Mode::on_collect`], [`Mode::on_empty`],
//!   [`Mode::mark_free`].
//!   The default mode's are empty and compile to nothing (check with
//!   `objdump`: the default fast paths are unchanged); the hardened
//!   mode's are in [`crate::checks`].
//!
//! A pointer into a block (not its start) is found by the canary: its
//! "trailer" lies at the wrong place and does not check; the cold report
//! path then tells an interior pointer from an overflow by dividing.
//!
//! A remote free of a block past [`CHECK_REMOTE_FREE_MAX`] bytes leaves
//! both checks to the owner: it writes the *unchecked* free mark
//! ([`FreeMark::set_unchecked`]), and the owner checks the block's boundary
//! and canary before it hands the block out again ([`Mode::on_pop`]), when
//! a walk of the remote list takes it ([`Mode::on_collect`]), or when the
//! page is retired ([`Mode::on_empty`]), whichever comes first.

use heapkit_core::harden::{FreeMark, Policy, Trailer};
use heapkit_core::misuse::Misuse;
use heapkit_core::segment::SegmentTag;

use heapkit_core::lock::SpinLock;

use crate::checks::{self, check_trailer, report_block, CHECK_REMOTE_FREE_MAX};
use crate::heap::Heap;
use crate::page::Page;
use crate::reclaim::HeapList;
use crate::remote::Block;

/// What differs between sizeclass's modes (see the module docs).
///
/// Implemented for every [`Policy`] (core seals that trait: [`Fast`](heapkit_core::harden::Fast) and
/// [`Hardened`](heapkit_core::harden::Hardened) are the only ones), each item choosing by the policy's
/// constants at compile time; this file is the only place that does.
pub(crate) trait Mode: Policy {
    /// The tag of this mode's segments.
    const TAG: SegmentTag;
    /// Inaccessible bytes at the end of each segment.
    const GUARD_BYTES: usize;
    /// An emptied medium or big page that stays its class's page gives
    /// its carved blocks back as a purgeable dirty tail
    /// ([`Page::reset_carve`]). Not in hardened mode: a free block there
    /// keeps its free mark, which a purge would erase, and a double free
    /// of a block in a purged tail would then go unseen.
    const RECARVE_EMPTY: bool;

    /// The calling thread's heap of this mode, possibly the never-written
    /// sentinel (fast paths only read it).
    fn heap() -> *mut Heap;
    /// The calling thread's own heap of this mode, bound on first use;
    /// null when no memory could be mapped for it.
    fn bound_heap() -> *mut Heap;
    /// [`Mode::bound_heap`], but null (no new heap) for a thread that gave
    /// its heap back at exit, for paths that may run after its exit hook.
    fn bound_heap_unless_released() -> *mut Heap;
    /// Whether `h` is the never-written sentinel [`Mode::heap`] returns
    /// before the thread binds a heap.
    fn heap_is_idle(h: *const Heap) -> bool;
    /// Whether the calling thread has given a heap of this mode back
    /// before (at an earlier run of its exit hook).
    fn heap_released() -> bool;
    /// Gives the calling thread's heap back to its pool (at thread exit,
    /// once nothing refers to it).
    ///
    /// # Safety
    /// The heap is unregistered, owns nothing and is not used again.
    unsafe fn release_heap();
    /// The pool the heaps of this mode live in (for the fork handlers).
    fn heap_pool() -> &'static heapkit_core::thread_slots::SlotPool;
    /// Abandons the calling thread's heap of this mode, if it bound one
    /// (at thread exit).
    fn thread_exit();
    /// The registry of this mode's active heaps (`reclaim.rs`).
    fn registry() -> &'static SpinLock<HeapList>;

    /// `block`, the head of `page`'s free list, is being popped; `next` is
    /// the decoded link it holds. Returns false if the block bears the
    /// unchecked free mark (a remote free left its canary to the owner):
    /// the caller then calls [`Mode::on_pop_unchecked`], out of line.
    ///
    /// # Safety
    /// `page` is the caller's, `block` the head of its `free` list.
    unsafe fn on_pop(page: *mut Page, block: *mut Block, next: *mut Block) -> bool;

    /// Checks `block`, for which [`Mode::on_pop`] returned false, and
    /// clears its mark.
    ///
    /// # Safety
    /// As for [`Mode::on_pop`].
    unsafe fn on_pop_unchecked(page: *mut Page, block: *mut Block);

    /// The owner frees `ptr` of `page`.
    ///
    /// # Safety
    /// `page` is the page of this mode `ptr` falls in, owned by the caller.
    unsafe fn on_free(page: *mut Page, ptr: *mut u8);

    /// Another thread frees `ptr` of `page` (reads only: the
    /// owner's collection marks it free).
    ///
    /// # Safety
    /// As for [`Mode::on_free`], except that the caller does not own `page`.
    unsafe fn on_remote_free(page: *mut Page, ptr: *mut u8);

    /// The owner takes `block` off `page`'s remote list.
    ///
    /// # Safety
    /// The caller owns `page`; `block` was on its remote list.
    unsafe fn on_collect(page: *mut Page, block: *mut Block);

    /// Whether a remote free of a block of `block_size` bytes leaves its
    /// canary to the owner (see [`CHECK_REMOTE_FREE_MAX`]).
    fn remote_frees_unchecked(block_size: usize) -> bool;

    /// `page` has no block live or on its remote list and is being retired:
    /// checks the canaries remote freers left to the owner on blocks that
    /// were not handed out again since (a walk of its lists, only if
    /// [`Page::unchecked_frees`] says there may be any).
    ///
    /// # Safety
    /// The caller owns `page` (or holds its heap's lock), in use and empty.
    unsafe fn on_empty(page: *mut Page);

    /// `block` (of a page whose key is `key`) becomes free: carved, or
    /// freed.
    ///
    /// # Safety
    /// `block` is a block of at least 16 bytes the caller owns.
    unsafe fn mark_free(block: *mut u8, key: usize);

    /// A small block was just allocated from `page` for `requested` bytes
    /// (at most its block size minus [`Policy::TRAILER`]).
    ///
    /// # Safety
    /// `ptr` is a block just handed out from `page` by
    /// `heap::alloc::<Self>`.
    unsafe fn on_handout(page: *mut Page, ptr: *mut u8, requested: usize);

    /// Bytes of the small block `ptr` (of `block_size` bytes) the program
    /// may use: all of them by default, the requested size when hardened.
    ///
    /// # Safety
    /// `ptr` is a live small block of this mode.
    unsafe fn usable(ptr: *mut u8, block_size: usize) -> usize;

    /// `realloc` keeps the small block `ptr` of `page` in place for
    /// `requested` bytes.
    ///
    /// # Safety
    /// `page` is `ptr`'s; `requested + TRAILER <= block_size`.
    unsafe fn on_resize(page: *mut Page, ptr: *mut u8, requested: usize);
}

heapkit_core::thread_state! {
    /// Each thread's heap in the default mode (pooled: not in the TLS
    /// block, see `heapkit_core::thread_slots`).
    mod fast_heap: Heap = Heap::new(), symbol = "heapkit_sizeclass_heap",
        pooled, on_bind = crate::lifecycle::on_bind;
}

heapkit_core::thread_state! {
    /// Each thread's heap in hardened mode (pooled, as above).
    mod hardened_heap: Heap = Heap::new(), symbol = "heapkit_sizeclass_hardened_heap",
        pooled, on_bind = crate::lifecycle::on_bind;
}

impl<P: Policy> Mode for P {
    const TAG: SegmentTag = if P::BLOCK_STATE {
        SegmentTag::SIZECLASS_HARDENED
    } else {
        SegmentTag::SIZECLASS
    };
    const GUARD_BYTES: usize = if P::GUARD_PAGES { 4096 } else { 0 };
    const RECARVE_EMPTY: bool = !P::BLOCK_STATE;

    #[inline(always)]
    fn heap() -> *mut Heap {
        if P::BLOCK_STATE {
            hardened_heap::current()
        } else {
            fast_heap::current()
        }
    }

    #[inline(always)]
    fn bound_heap() -> *mut Heap {
        if P::BLOCK_STATE {
            hardened_heap::bound()
        } else {
            fast_heap::bound()
        }
    }

    fn bound_heap_unless_released() -> *mut Heap {
        if P::BLOCK_STATE {
            hardened_heap::bound_unless_released()
        } else {
            fast_heap::bound_unless_released()
        }
    }

    #[inline(always)]
    fn heap_is_idle(h: *const Heap) -> bool {
        if P::BLOCK_STATE {
            hardened_heap::is_idle(h)
        } else {
            fast_heap::is_idle(h)
        }
    }

    fn heap_released() -> bool {
        if P::BLOCK_STATE {
            hardened_heap::released()
        } else {
            fast_heap::released()
        }
    }

    unsafe fn release_heap() {
        // SAFETY: forwarded caller guarantee.
        unsafe {
            if P::BLOCK_STATE {
                hardened_heap::release()
            } else {
                fast_heap::release()
            }
        }
    }

    fn heap_pool() -> &'static heapkit_core::thread_slots::SlotPool {
        if P::BLOCK_STATE {
            hardened_heap::pool()
        } else {
            fast_heap::pool()
        }
    }

    #[inline]
    fn registry() -> &'static SpinLock<HeapList> {
        if P::BLOCK_STATE {
            &crate::reclaim::HARDENED_HEAPS
        } else {
            &crate::reclaim::FAST_HEAPS
        }
    }

    fn thread_exit() {
        // A thread that never bound this mode's heap has nothing to give.
        if !P::heap_is_idle(P::heap()) {
            crate::lifecycle::exit_heap::<P>();
        }
    }

    #[inline(always)]
    unsafe fn on_pop(page: *mut Page, block: *mut Block, next: *mut Block) -> bool {
        if P::BLOCK_STATE {
            // SAFETY: forwarded caller guarantee.
            unsafe { checks::on_pop(page, block, next) }
        } else {
            true
        }
    }

    #[inline(always)]
    unsafe fn on_pop_unchecked(page: *mut Page, block: *mut Block) {
        if P::BLOCK_STATE {
            // SAFETY: forwarded caller guarantee: `on_pop` checked the
            // links that led to the block.
            unsafe {
                checks::check_unchecked("malloc", page, block.cast());
                FreeMark::clear(block.cast());
            }
        }
    }

    #[inline(always)]
    unsafe fn on_free(page: *mut Page, ptr: *mut u8) {
        if P::BLOCK_STATE {
            // SAFETY: forwarded caller guarantee.
            unsafe { checks::on_free::<P>(page, ptr) }
        }
    }

    #[inline(always)]
    unsafe fn on_remote_free(page: *mut Page, ptr: *mut u8) {
        if P::BLOCK_STATE {
            // SAFETY: forwarded caller guarantee.
            unsafe { checks::on_remote_free::<P>(page, ptr) }
        }
    }

    #[inline(always)]
    unsafe fn on_collect(page: *mut Page, block: *mut Block) {
        if P::BLOCK_STATE {
            // SAFETY: forwarded caller guarantee.
            unsafe { checks::on_collect(page, block) }
        }
    }

    #[inline(always)]
    fn remote_frees_unchecked(block_size: usize) -> bool {
        P::TRAILER != 0 && block_size > CHECK_REMOTE_FREE_MAX
    }

    #[inline(always)]
    unsafe fn on_empty(page: *mut Page) {
        // SAFETY: caller guarantee: the page's lists are the caller's.
        unsafe {
            if P::BLOCK_STATE && (*page).unchecked_frees {
                checks::on_empty::<P>(page);
            }
        }
    }

    #[inline(always)]
    unsafe fn mark_free(block: *mut u8, key: usize) {
        if P::BLOCK_STATE {
            // SAFETY: forwarded caller guarantee.
            unsafe { FreeMark::set(block, key) }
        }
    }

    #[inline(always)]
    unsafe fn on_handout(page: *mut Page, ptr: *mut u8, requested: usize) {
        if P::TRAILER != 0 {
            // SAFETY: ptr is a fresh block of `page` (ours, of this mode),
            // which holds requested + TRAILER bytes.
            unsafe { Trailer::write(ptr, (*page).block_size as usize, requested, (*page).key) }
        }
    }

    #[inline(always)]
    unsafe fn usable(ptr: *mut u8, block_size: usize) -> usize {
        if P::TRAILER != 0 {
            // SAFETY: a live block of this mode carries its trailer.
            unsafe { Trailer::requested(ptr, block_size) }
        } else {
            block_size
        }
    }

    #[inline(always)]
    unsafe fn on_resize(page: *mut Page, ptr: *mut u8, requested: usize) {
        if P::BLOCK_STATE {
            // SAFETY: forwarded caller guarantee.
            unsafe {
                if FreeMark::is_set_any(ptr, (*page).shared_key) {
                    report_block("realloc", Misuse::DoubleFree, page, ptr);
                }
                if P::TRAILER != 0 {
                    check_trailer(
                        "realloc",
                        page,
                        ptr,
                        (*page).shared_size as usize,
                        (*page).shared_key,
                    );
                    Trailer::write(
                        ptr,
                        (*page).shared_size as usize,
                        requested,
                        (*page).shared_key,
                    );
                }
            }
        }
    }
}
