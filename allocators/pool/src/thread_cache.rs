//! The thread cache: per class, a LIFO list of free blocks owned by one
//! thread. Both fast paths live here.
//!
//! `alloc` pops the head, `free` pushes onto it: a load, a compare and two
//! stores, no atomic instruction, no lock. Each thread frees into its *own*
//! cache whichever thread allocated the block, so cross-thread frees cost
//! the same as local ones; blocks travel back through the depot in batches.
//!
//! Both fast paths have one branch to the slow path:
//!
//! - `alloc`: the list is empty (`head` is null). That is also the state of
//!   a thread that never allocated and of one whose exit hook already ran.
//! - `free`: the list holds `limit` blocks. `limit` starts at 0 and is set
//!   to the class's batch by the thread's first allocation of the class
//!   (its first refill), so the frees of a class the thread has not
//!   allocated go slow, into an outbox its allocations never pop (reusing
//!   an object another thread handed over put both threads on one cache
//!   line: passive false sharing); it is reset to 0 when the thread exits
//!   (so its later frees go to the depot instead of a cache nobody will
//!   flush).
//!
//! The state is a slot of a pool (`heapkit_core::thread_slots`; not in the
//! TLS block, which glibc copies into every thread of the process, this
//! backend in use or not), taken on the thread's first slow path and given
//! back by its exit hook; it is found through [`current`], an initial-exec
//! thread pointer: two instructions, no `__tls_get_addr` call even in
//! `libheapkit.so`. Only [`Cell`]s are used, so a re-entrant call (the slow
//! path registering the exit hook may call `malloc` under `LD_PRELOAD`)
//! never aliases a `&mut`.

use core::cell::Cell;
use core::ptr;

use heapkit_core::ThreadStats;

use heapkit_core::harden::{Fast, Hardened};

use crate::class::{block_size, is_hardened, CLASSES};
use crate::depot::FreeBlock;
use crate::mode::Mode;
use crate::slow;
use crate::STATS;

/// Where a thread's cache is in its set-up (a thread whose exit hook ran
/// has no cache: see [`bound`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ThreadState {
    /// Never set up: the process's fork handlers may not be registered.
    Uninit,
    /// Being set up (a re-entrant call from the registration sees this).
    Initializing,
    /// Set up; the exit hook will flush the cache.
    Active,
}

/// One class of one thread.
pub struct ClassCache {
    /// Top of the LIFO list of free blocks; null if empty.
    pub head: Cell<*mut FreeBlock>,
    /// Blocks on the list (exact).
    pub len: Cell<u32>,
    /// A free goes to the slow path when `len >= limit`.
    pub limit: Cell<u32>,
}

/// A full batch a thread keeps beside its list (cold: slow paths only).
///
/// A list that reaches `limit` on a free becomes the spare (one move, no
/// walk); an empty list on an alloc takes the spare back. Only when a second
/// batch overflows (or the spare is missing) does a batch go to (or come
/// from) the depot, so a thread that hovers around a batch boundary never
/// bounces blocks through the depot, and no list is ever walked to be cut.
///
/// It also carries the class's block accounting (see [`ThreadCache`]).
pub struct SpareBatch {
    /// First block of a null-terminated list, or null.
    pub head: Cell<*mut FreeBlock>,
    /// Blocks in it.
    pub len: Cell<u32>,
}

/// The never-used tail of this thread's current chunk of a class:
/// `cur..end`, whole blocks, all zero.
pub struct FreshRegion {
    /// Next never-used block.
    pub cur: Cell<*mut u8>,
    /// End of the region.
    pub end: Cell<*mut u8>,
}

/// All of one thread's pool state.
pub struct ThreadCache {
    classes: [ClassCache; CLASSES],
    fresh: [FreshRegion; CLASSES],
    spare: [SpareBatch; CLASSES],
    /// Per class, blocks this thread freed of a class it has not allocated
    /// since its set-up (its `limit` is still 0): no allocation of the
    /// thread takes them; a full batch goes to the depot (see
    /// `slow::free`).
    outbox: [SpareBatch; CLASSES],
    /// This thread's counters (heapkit-core's one mechanism: two adds per
    /// operation, flushed into `STATS` by slow paths and at exit).
    pub stats: ThreadStats,
    /// See [`ThreadState`].
    pub state: Cell<ThreadState>,
}

heapkit_core::thread_state! {
    /// This thread's cache: a slot of a pool, not in the TLS block (see
    /// `heapkit_core::thread_slots`), the idle sentinel (empty lists and
    /// zero limits, so both fast paths go slow, where they bind) and the
    /// thread pointer.
    mod state: ThreadCache = ThreadCache::new(), symbol = "heapkit_pool_thread_cache",
        pooled, on_bind = crate::slow::on_bind, first_slot_offset = 0x880;
}

/// The calling thread's cache for the fast paths: an initial-exec thread
/// pointer (no `__tls_get_addr` call even in `libheapkit.so`), naming the
/// never-written idle cache until a slow path binds it.
#[inline(always)]
pub fn current() -> &'static ThreadCache {
    // SAFETY: the idle static or this thread's own cache, which lives
    // until the thread's exit hook gives it back and is only used through
    // Cells, by this thread.
    unsafe { &*state::current() }
}

/// The calling thread's own cache for a slow path, bound on first use.
/// `None` for a thread whose exit hook has run (it gave its cache back)
/// or when no memory can be mapped for one: such calls go through the
/// depots directly (`slow::alloc_exited`, `slow::free_exited`).
#[inline]
pub fn bound() -> Option<&'static ThreadCache> {
    // SAFETY: as for `current` (null excluded).
    unsafe { state::bound_unless_released().as_ref() }
}

/// The calling thread's cache if it has bound one (no binding).
pub fn own() -> Option<&'static ThreadCache> {
    // SAFETY: as for `current` (null excluded).
    unsafe { state::own().as_ref() }
}

/// Gives the calling thread's cache back (its exit hook, once the cache is
/// flushed); later calls from the thread go through the depots.
///
/// # Safety
/// Nothing refers to the cache any more.
pub unsafe fn release() {
    // SAFETY: forwarded caller guarantee.
    unsafe { state::release() }
}

/// The pool the caches live in (for the fork handlers).
pub fn pool() -> &'static heapkit_core::thread_slots::SlotPool {
    state::pool()
}

impl ThreadCache {
    /// An empty cache of a thread not set up yet.
    pub const fn new() -> Self {
        Self {
            classes: [const {
                ClassCache {
                    head: Cell::new(ptr::null_mut()),
                    len: Cell::new(0),
                    limit: Cell::new(0),
                }
            }; CLASSES],
            fresh: [const {
                FreshRegion {
                    cur: Cell::new(ptr::null_mut()),
                    end: Cell::new(ptr::null_mut()),
                }
            }; CLASSES],
            spare: [const {
                SpareBatch {
                    head: Cell::new(ptr::null_mut()),
                    len: Cell::new(0),
                }
            }; CLASSES],
            outbox: [const {
                SpareBatch {
                    head: Cell::new(ptr::null_mut()),
                    len: Cell::new(0),
                }
            }; CLASSES],
            stats: ThreadStats::new(),
            state: Cell::new(ThreadState::Uninit),
        }
    }

    /// The cache of `class` (< CLASSES).
    #[inline(always)]
    pub fn class(&self, class: usize) -> &ClassCache {
        debug_assert!(class < CLASSES);
        // SAFETY: every class index is below CLASSES (see crate::class).
        unsafe { self.classes.get_unchecked(class) }
    }

    /// The fresh region of `class` (< CLASSES).
    #[inline]
    pub fn fresh(&self, class: usize) -> &FreshRegion {
        debug_assert!(class < CLASSES);
        // SAFETY: as for `class`.
        unsafe { self.fresh.get_unchecked(class) }
    }

    /// The outbox of `class` (< CLASSES).
    #[inline]
    pub fn outbox(&self, class: usize) -> &SpareBatch {
        debug_assert!(class < CLASSES);
        // SAFETY: as for `class`.
        unsafe { self.outbox.get_unchecked(class) }
    }

    /// The spare batch of `class` (< CLASSES).
    #[inline]
    pub fn spare(&self, class: usize) -> &SpareBatch {
        debug_assert!(class < CLASSES);
        // SAFETY: as for `class`.
        unsafe { self.spare.get_unchecked(class) }
    }

    /// Fast path of `malloc` for `class` (of mode `P`).
    #[inline]
    pub fn alloc<P: Mode>(&self, class: usize) -> *mut u8 {
        let cc = self.class(class);
        let block = cc.head.get();
        if block.is_null() {
            return slow::alloc(class);
        }
        // SAFETY: block heads our list, so it is a free block of ours whose
        // first word is the next link; it leaves the list here.
        unsafe {
            cc.head.set(P::next_of(block));
            P::on_take(block.cast(), class);
        }
        cc.len.set(cc.len.get() - 1);
        self.stats.on_alloc(&STATS, block_size(class));
        block.cast()
    }

    /// Fast path of `calloc` for `class` (of mode `P`): `size` bytes are
    /// zeroed.
    #[inline]
    pub fn alloc_zeroed<P: Mode>(&self, class: usize, size: usize) -> *mut u8 {
        let cc = self.class(class);
        let block = cc.head.get();
        if block.is_null() {
            return slow::alloc_zeroed(class, size);
        }
        // SAFETY: as in `alloc`; the block then has at least `size` bytes.
        unsafe {
            cc.head.set(P::next_of(block));
            P::on_take(block.cast(), class);
            block.cast::<u8>().write_bytes(0, size);
        }
        cc.len.set(cc.len.get() - 1);
        self.stats.on_alloc(&STATS, block_size(class));
        block.cast()
    }

    /// Fast path of `free` for a block of `class` (of mode `P`).
    ///
    /// # Safety
    /// `block` must be a live pool block of `class`, not used afterwards.
    #[inline]
    pub unsafe fn free<P: Mode>(&self, block: *mut u8, class: usize) {
        let cc = self.class(class);
        let len = cc.len.get();
        if len >= cc.limit.get() {
            // SAFETY: forwarded caller guarantee.
            return unsafe { slow::free(block, class) };
        }
        let block = block.cast::<FreeBlock>();
        // SAFETY: the block is dead and at least 16 bytes; it joins our list.
        unsafe { P::set_next(block, cc.head.get()) };
        cc.head.set(block);
        cc.len.set(len + 1);
        self.stats.on_free(block_size(class));
    }

    /// [`ThreadCache::alloc`] in the mode of class index `class` (the slow
    /// paths' retry).
    pub fn alloc_any(&self, class: usize) -> *mut u8 {
        if is_hardened(class) {
            self.alloc::<Hardened>(class)
        } else {
            self.alloc::<Fast>(class)
        }
    }

    /// [`ThreadCache::alloc_zeroed`] in the mode of class index `class`.
    pub fn alloc_zeroed_any(&self, class: usize, size: usize) -> *mut u8 {
        if is_hardened(class) {
            self.alloc_zeroed::<Hardened>(class, size)
        } else {
            self.alloc_zeroed::<Fast>(class, size)
        }
    }

    /// [`ThreadCache::free`] in the mode of class index `class`.
    ///
    /// # Safety
    /// As for [`ThreadCache::free`].
    pub unsafe fn free_any(&self, block: *mut u8, class: usize) {
        // SAFETY: forwarded caller guarantee.
        unsafe {
            if is_hardened(class) {
                self.free::<Hardened>(block, class)
            } else {
                self.free::<Fast>(block, class)
            }
        }
    }
}

impl Default for ThreadCache {
    fn default() -> Self {
        Self::new()
    }
}
