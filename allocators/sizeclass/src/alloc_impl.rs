//! [`SizeClass`]: the `HeapAlloc` implementation over the thread heaps.

use core::alloc::Layout;
use core::marker::PhantomData;
use core::ptr;

use heapkit_core::harden::{Fast, Hardened, Policy};
use heapkit_core::segment::segment_of;
use heapkit_core::size_class::{class_for, class_of, MAX_SIZE, MIN_ALIGN};
use heapkit_core::{global_alloc, large, realloc_by_copy, HeapAlloc, Stats};

use crate::classes::aligned_twin;
use crate::heap::{self, STATS};
use crate::mode::Mode;
use crate::page::Page;
use crate::segment::Segment;

/// The policy [`SizeClass::new`] uses: [`Fast`], or [`Hardened`] when the
/// crate's `hardened` feature is on.
#[cfg(not(feature = "hardened"))]
pub type DefaultPolicy = Fast;
/// The policy [`SizeClass::new`] uses: [`Fast`], or [`Hardened`] when the
/// crate's `hardened` feature is on.
#[cfg(feature = "hardened")]
pub type DefaultPolicy = Hardened;

/// The thread-caching size-class allocator (see the crate docs), in the
/// mode `P` names: [`Fast`] (the default) or [`Hardened`], which detects
/// every double and interior free, encodes its free lists, puts a canary
/// after every small block and guard pages after segments and large
/// blocks (see
/// `heapkit_core::harden`). The two modes keep separate heaps and
/// segments, so both may be used in one program.
#[derive(Clone, Copy, Debug, Default)]
pub struct SizeClass<P: Policy = DefaultPolicy>(PhantomData<P>);

impl SizeClass<DefaultPolicy> {
    /// The allocator (it has no state of its own: heaps are per thread),
    /// in the [`DefaultPolicy`] mode.
    pub const fn new() -> Self {
        SizeClass(PhantomData)
    }
}

impl SizeClass<Hardened> {
    /// The allocator in hardened mode, whatever the crate's features:
    ///
    /// ```
    /// #[global_allocator]
    /// static GLOBAL: heapkit_sizeclass::SizeClass<heapkit_sizeclass::Hardened> =
    ///     heapkit_sizeclass::SizeClass::hardened();
    ///
    /// let v: Vec<u32> = (0..100).collect();
    /// assert_eq!(v[99], 99);
    /// ```
    pub const fn hardened() -> Self {
        SizeClass(PhantomData)
    }
}

impl SizeClass<Fast> {
    /// The allocator in the default (fast) mode, whatever the crate's
    /// features.
    pub const fn fast() -> Self {
        SizeClass(PhantomData)
    }
}

impl<P: Policy> SizeClass<P> {
    /// Bytes a small request of `size` takes in its block (the size plus
    /// the hardened trailer).
    const TRAILER: usize = P::TRAILER;

    /// Purges every free page of the calling thread's heap now, tidies the
    /// segments exited threads left (their pages emptied since by other
    /// threads' frees are freed and purged, emptied segments released) and
    /// empties the large-block cache: what the decay and the background
    /// purger would do later.
    pub fn collect(&self) {
        crate::purge::collect_now::<P>();
    }

    /// A small block for `size` bytes (`size + TRAILER <= MAX_SIZE`),
    /// zeroed if asked.
    #[inline(always)]
    fn allocate_small(size: usize, zeroed: bool) -> *mut u8 {
        let (p, page) = heap::alloc::<P>(class_of(size + Self::TRAILER));
        if !p.is_null() {
            // SAFETY: p was just handed out from `page` for `size` bytes.
            // Zeroing may write a whole first word, so it comes before the
            // trailer's pattern bytes (which may start inside that word).
            unsafe {
                if zeroed {
                    zero_block(page, p, size);
                }
                P::on_handout(page, p, size);
            }
        }
        p
    }

    #[cold]
    #[inline(never)]
    fn allocate_unusual(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        let with_trailer = layout
            .size()
            .checked_add(Self::TRAILER)
            .and_then(|n| Layout::from_size_align(n, layout.align()).ok());
        match with_trailer.and_then(class_for) {
            Some(class) => {
                let class = if layout.align() > MIN_ALIGN {
                    aligned_twin(class)
                } else {
                    class
                };
                let (p, page) = heap::alloc::<P>(class);
                if !p.is_null() {
                    // SAFETY: p is a fresh block of `page`'s class, which
                    // holds the size plus the trailer.
                    unsafe {
                        if zeroed {
                            zero_block(page, p, layout.size());
                        }
                        P::on_handout(page, p, layout.size());
                    }
                }
                p
            }
            None => {
                // Hardened: the block ends at an inaccessible page.
                let p = if P::GUARD_PAGES {
                    large::allocate_guarded(layout, zeroed)
                } else {
                    large::allocate(layout, zeroed)
                };
                if !p.is_null() {
                    // SAFETY: p is a live large block.
                    let size = unsafe { large::usable_size(p) };
                    heap::count::<P>(|s| s.on_alloc(&STATS, size));
                }
                p
            }
        }
    }

    /// Counts an in-place realloc.
    fn count_realloc(old: usize, new: usize) {
        heap::count::<P>(|s| s.on_realloc(&STATS, old, new));
    }
}

/// Zeroes the first `size` bytes of a fresh small block, or only its first
/// word when its page's free blocks are known to be zero.
///
/// # Safety
/// `p` must be a block just allocated from `page`, of at least `size` bytes.
#[inline]
unsafe fn zero_block(page: *mut Page, p: *mut u8, size: usize) {
    // SAFETY: caller guarantee; the page is ours and live.
    unsafe {
        if (*page).is_zero {
            // Only the free-list link was ever written (and, hardened, the
            // trailer, which lies past `size`).
            p.cast::<usize>().write(0);
        } else if size < heapkit_core::os::ZERO_BY_PURGE_MIN {
            p.write_bytes(0, size);
        } else {
            // A big block: memset or purge, whichever its residency says
            // is cheaper.
            heapkit_core::os::zero_dead(p, size);
        }
    }
}

// SAFETY: small blocks come from pages of their class (size and alignment
// per class_of / class_for, never overlapping: each block is on exactly one
// list or live); large ones from core's large path; every block is freed and
// measured through its segment's tag (each mode has its own); nothing
// allocates through the global allocator and nothing panics.
unsafe impl<P: Policy> HeapAlloc for SizeClass<P> {
    const SEGMENTED: bool = true;

    #[inline]
    fn allocate(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= MIN_ALIGN && layout.size() <= MAX_SIZE - Self::TRAILER {
            return Self::allocate_small(layout.size(), false);
        }
        self.allocate_unusual(layout, false)
    }

    #[inline]
    fn allocate_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= MIN_ALIGN && layout.size() <= MAX_SIZE - Self::TRAILER {
            return Self::allocate_small(layout.size(), true);
        }
        self.allocate_unusual(layout, true)
    }

    // Always: with two modes LLVM stopped inlining this into the C
    // export's `free`, which then paid a call.
    #[inline(always)]
    unsafe fn free(&self, ptr: *mut u8) {
        // SAFETY: caller guarantee.
        unsafe { heap::free::<P>(ptr) }
    }

    #[inline]
    unsafe fn usable_size(&self, ptr: *mut u8) -> usize {
        let seg = segment_of(ptr).cast::<Segment>();
        // SAFETY: caller guarantee: a live block of ours, so its segment is
        // mapped and tagged (ours, or the large path's).
        unsafe {
            if (*seg).tag != P::TAG {
                return large::usable_size(ptr);
            }
            let page = Segment::page_of(seg, ptr);
            P::usable(ptr, (*page).block_size as usize)
        }
    }

    unsafe fn reallocate(&self, ptr: *mut u8, old_layout: Layout, new_size: usize) -> *mut u8 {
        if old_layout.align() > MIN_ALIGN {
            // SAFETY: forwarded caller guarantee.
            return unsafe { realloc_by_copy(self, ptr, old_layout, new_size) };
        }
        let seg = segment_of(ptr).cast::<Segment>();
        // SAFETY: caller guarantee: ptr is a live block of ours.
        let small = unsafe { (*seg).tag == P::TAG };
        let usable;
        if small {
            // SAFETY: a live small block: its page is mapped.
            unsafe {
                let page = Segment::page_of(seg, ptr);
                let block = (*page).block_size as usize;
                usable = P::usable(ptr, block);
                let needed = new_size.saturating_add(Self::TRAILER);
                if needed <= MAX_SIZE && class_of(needed) == class_of(block) {
                    P::on_resize(page, ptr, new_size);
                    Self::count_realloc(block, block);
                    return ptr;
                }
            }
        } else {
            // SAFETY: a live large block.
            usable = unsafe { large::usable_size(ptr) };
            if new_size > MAX_SIZE {
                // SAFETY: ptr is a live large block.
                let q = unsafe { large::reallocate(ptr, new_size) };
                if !q.is_null() {
                    // SAFETY: q is live.
                    let now = unsafe { large::usable_size(q) };
                    Self::count_realloc(usable, now);
                }
                return q;
            }
        }
        let Ok(layout) = Layout::from_size_align(new_size, MIN_ALIGN) else {
            return ptr::null_mut();
        };
        let q = self.allocate(layout);
        if !q.is_null() {
            // SAFETY: both live and distinct; the copy fits both.
            unsafe {
                ptr::copy_nonoverlapping(ptr, q, usable.min(new_size));
                heap::free::<P>(ptr);
            }
            // The allocation and the free counted the bytes; count the call.
            Self::count_realloc(0, 0);
        }
        q
    }

    fn trim(&self) -> bool {
        let before = heapkit_core::os::os_counters();
        self.collect();
        heapkit_core::os::os_counters().released_since(&before)
    }

    fn stats(&self) -> Stats {
        let h = P::heap();
        // SAFETY: the calling thread's own counters, read without
        // re-entrancy.
        let pending = unsafe { &(*h).stats };
        let mut s = STATS.snapshot(Some(pending));
        s.active_bytes = crate::carve::carved_bytes() + large::live_mapped_bytes() as u64;
        s
    }
}

global_alloc!(<P: Policy> SizeClass<P>);
