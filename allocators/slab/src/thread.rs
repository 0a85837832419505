//! Per-thread state: two magazines per size class and the thread's
//! statistics, in a slot of a pool (`heapkit_core::thread_slots`; not in
//! the TLS block, which glibc copies into every thread of the process,
//! this backend in use or not), reached on the fast paths through
//! [`current`], an initial-exec thread pointer
//! (`heapkit_core::thread_pointer!`: no `__tls_get_addr` call even in
//! `libheapkit.so`). Until a thread's first slow path binds it ([`bound`]),
//! the pointer names a static idle cache, never written, whose null
//! magazines send both fast paths slow.
//!
//! The loaded magazine of each class is kept as three pointers into its
//! object array (`base <= top <= limit`), so the fast paths are one compare
//! and one load or store:
//!
//! - allocate: `top != base` → `top -= 1; return *top`;
//! - free: `top != limit` → `*top = p; top += 1`.
//!
//! A thread that has no magazine yet holds three null pointers, which send
//! both paths to the slow path (the sentinel: no null test on the fast
//! path). The thread is registered with an [`os::ThreadExitKey`] when it
//! binds its cache; when it exits, its magazines go to the depots (or their
//! objects back to the slabs) and the cache back to the pool, and anything
//! it allocates or frees after that takes the locked path straight to the
//! slabs.

use core::cell::Cell;
use core::ffi::c_void;
use core::mem::offset_of;
use core::ptr;

use heapkit_core::os;
use heapkit_core::ThreadStats;

use crate::heap::{self, STATS};
use crate::magazine::{capacity_of_at, Magazine, MagazineSize};
use crate::slab::OBJECT_CACHES;

/// Where a thread's cache is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum ThreadState {
    /// Bound, no magazine used yet: the thread's first magazine slow path
    /// starts using them ([`init`]).
    New,
    /// Magazines in use.
    Active,
    /// The exit hook is running (or ran), or set-up failed: the direct
    /// path only.
    Done,
}

/// A magazine slow path of one class (`ClassSlot::last_slow_path`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SlowPath {
    /// Neither yet.
    None,
    /// `slow::allocate`: the loaded magazine was empty.
    Allocate,
    /// `slow::free` with magazines (not the outbox): the loaded one was full.
    Free,
}

/// The loaded and previous magazines of one class.
///
/// Invariants: `base`, `top`, `limit` are all null, or `base` is
/// `&mag.objs[0]` of the loaded magazine, `limit = base + max(capacity,
/// rounds when loaded)` (`capacity` at the slot's `size`; a magazine
/// filled at the grown size may be loaded into a small slot), or a lower
/// limit, possibly 0, set by `slow::wind_down` (then `lowered`), and
/// `base <= top <= limit` (`top - base` is the rounds held). `prev` is null
/// or a magazine that is empty or full (at the size it was filled at, so
/// any non-zero `rounds` means full), its `rounds` accurate.
pub struct ClassSlot {
    pub top: Cell<*mut *mut u8>,
    pub base: Cell<*mut *mut u8>,
    pub limit: Cell<*mut *mut u8>,
    pub prev: Cell<*mut Magazine>,
    /// Whether this thread has taken the allocation slow path of the class
    /// (a pure freer, like a consumer thread, never winds down: its
    /// magazines feed the depot).
    pub allocates: Cell<bool>,
    /// Which of the class's two magazine slow paths this thread took last:
    /// an allocation after a free grows the magazines, a free after an
    /// allocation is steady use, not a wind-down (see `slow::free`).
    pub last_slow_path: Cell<SlowPath>,
    /// Objects of the class this thread freed before it ever allocated it
    /// (null or a partly filled magazine, `rounds` accurate): most likely
    /// handed over by the thread that allocated them, whose live objects
    /// share their cache lines. This thread's allocations never pop them
    /// (reusing one would make both threads write one line: passive false
    /// sharing); a full outbox goes to the depot (`slow::free_to_outbox`).
    pub outbox: Cell<*mut Magazine>,
    /// The outbox filled once and went to the depot: from then on the
    /// thread's frees of the class take magazines as usual (a pure freer,
    /// like a consumer, pays the outbox's slow path for one magazine only).
    pub outbox_sent: Cell<bool>,
    /// How big this thread's magazines of the class are.
    pub size: Cell<MagazineSize>,
    /// The loaded magazine's limit was lowered by `slow::wind_down`, or,
    /// with no magazine loaded, the class was freed away and the slot gave
    /// its magazines back (every free of the class takes the slow path
    /// until the thread allocates it again).
    pub lowered: Cell<bool>,
    /// Objects this thread last published as held in its magazines of
    /// the class (see `Depot::publish`).
    pub published: Cell<usize>,
}

impl ClassSlot {
    // A const (not a static) on purpose: it is the repeat element of the
    // thread-local's initialiser; each thread gets its own copies.
    #[allow(clippy::declare_interior_mutable_const)]
    const NEW: ClassSlot = ClassSlot {
        top: Cell::new(ptr::null_mut()),
        base: Cell::new(ptr::null_mut()),
        limit: Cell::new(ptr::null_mut()),
        prev: Cell::new(ptr::null_mut()),
        allocates: Cell::new(false),
        last_slow_path: Cell::new(SlowPath::None),
        outbox: Cell::new(ptr::null_mut()),
        outbox_sent: Cell::new(false),
        size: Cell::new(MagazineSize::Small),
        lowered: Cell::new(false),
        published: Cell::new(0),
    };

    /// Rounds this thread's magazines of cache `c` hold (at its `size`).
    #[inline]
    pub fn capacity(&self, c: usize) -> usize {
        capacity_of_at(c, self.size.get())
    }

    /// Detaches the loaded magazine (null if none), writing back its rounds.
    pub fn unload(&self) -> *mut Magazine {
        let base = self.base.get();
        if base.is_null() {
            return ptr::null_mut();
        }
        let m = base
            .cast::<u8>()
            .wrapping_sub(offset_of!(Magazine, objs))
            .cast::<Magazine>();
        // SAFETY: base and top point into the same magazine's array (slot
        // invariant), so the magazine is live and owned by this thread.
        unsafe { (*m).rounds = self.top.get().offset_from(base) as usize };
        self.top.set(ptr::null_mut());
        self.base.set(ptr::null_mut());
        self.limit.set(ptr::null_mut());
        m
    }

    /// Objects held in this slot's magazines (loaded, previous, outbox).
    pub fn held(&self) -> usize {
        let base = self.base.get();
        let loaded = if base.is_null() {
            0
        } else {
            // SAFETY: top and base point into the loaded magazine (slot
            // invariant), top at or past base.
            unsafe { self.top.get().offset_from(base) as usize }
        };
        let rounds = |m: *mut Magazine| {
            if m.is_null() {
                0
            } else {
                // SAFETY: prev and outbox are this thread's magazines, their
                // rounds accurate (slot invariant).
                unsafe { (*m).rounds }
            }
        };
        loaded + rounds(self.prev.get()) + rounds(self.outbox.get())
    }

    /// Publishes what this slot's magazines of cache `c` hold to the
    /// class's depot (see `Depot::publish`): one atomic add on a line the
    /// slow path mostly touches anyway, and none if nothing changed.
    pub fn publish(&self, c: usize) {
        let now = self.held();
        let before = self.published.replace(now);
        if now != before {
            crate::heap::depot(c).publish(now as isize - before as isize);
        }
    }

    /// Makes `m` (rounds accurate) the loaded magazine, with room up to
    /// `capacity` rounds (or its rounds, if more: a magazine filled at the
    /// grown size); null unloads.
    ///
    /// # Safety
    /// Nothing may be loaded; `m` is null or a magazine owned by this thread,
    /// `capacity <= MAGAZINE_SLOTS`.
    pub unsafe fn load(&self, m: *mut Magazine, capacity: usize) {
        self.lowered.set(false);
        // SAFETY: forwarded caller guarantee.
        unsafe { self.set_loaded(m, capacity) }
    }

    /// As [`load`](Self::load), with a limit `slow::wind_down` lowered
    /// below the slot's capacity (`lowered` set).
    ///
    /// # Safety
    /// As for [`load`](Self::load).
    pub unsafe fn load_limited(&self, m: *mut Magazine, limit: usize) {
        self.lowered.set(true);
        // SAFETY: forwarded caller guarantee.
        unsafe { self.set_loaded(m, limit) }
    }

    /// Loads `m` with room up to `limit` rounds (or its rounds, if more).
    ///
    /// # Safety
    /// As for [`load`](Self::load).
    unsafe fn set_loaded(&self, m: *mut Magazine, limit: usize) {
        if m.is_null() {
            return;
        }
        // SAFETY: m is a live magazine; rounds <= MAGAZINE_SLOTS (magazine
        // invariant) and limit <= MAGAZINE_SLOTS (caller), so both stay
        // inside its array.
        unsafe {
            let rounds = (*m).rounds;
            let base = ptr::addr_of_mut!((*m).objs).cast::<*mut u8>();
            self.base.set(base);
            self.top.set(base.add(rounds));
            self.limit.set(base.add(limit.max(rounds)));
        }
    }
}

/// One thread's caches.
pub struct ThreadCache {
    slots: [ClassSlot; OBJECT_CACHES],
    /// Unflushed counters.
    pub stats: ThreadStats,
    /// See [`ThreadState`].
    pub state: Cell<ThreadState>,
    /// Slow paths taken with magazines (saturating; the background purger
    /// starts after a few, see `crate::purger`).
    pub slow_calls: Cell<u32>,
}

impl ThreadCache {
    const fn new() -> Self {
        Self {
            slots: [ClassSlot::NEW; OBJECT_CACHES],
            stats: ThreadStats::new(),
            state: Cell::new(ThreadState::New),
            slow_calls: Cell::new(0),
        }
    }

    /// An opaque id of the owning thread (never 0).
    #[inline]
    pub fn id(&self) -> usize {
        self as *const ThreadCache as usize
    }

    /// The slot of class `c`.
    #[inline]
    pub fn slot(&self, c: usize) -> &ClassSlot {
        debug_assert!(c < OBJECT_CACHES);
        // SAFETY: every object cache index is < OBJECT_CACHES (class_for,
        // plus HARDENED_BASE in hardened mode, or a byte of
        // chunk_class written from one).
        unsafe { self.slots.get_unchecked(c) }
    }

    /// Hands every magazine to the depots (or its objects to the slabs).
    pub fn flush_magazines(&self) {
        for c in 0..OBJECT_CACHES {
            let slot = self.slot(c);
            let cap = slot.capacity(c);
            for m in [
                slot.unload(),
                slot.prev.replace(ptr::null_mut()),
                slot.outbox.replace(ptr::null_mut()),
            ] {
                if !m.is_null() {
                    // SAFETY: the magazine was this thread's, rounds accurate.
                    unsafe { heap::retire(c, m, cap) };
                }
            }
            slot.publish(c);
        }
    }
}

heapkit_core::thread_state! {
    /// This thread's caches: a slot of a pool (see the module docs), the
    /// idle sentinel (null magazines, so both fast paths go slow, where
    /// they bind) and the thread pointer.
    mod state: ThreadCache = ThreadCache::new(), symbol = "heapkit_slab_thread_cache",
        pooled, on_bind = on_bind;
}

/// The calling thread's cache for the fast paths: the never-written idle
/// cache until a slow path binds it.
#[inline(always)]
pub fn current() -> &'static ThreadCache {
    // SAFETY: the idle static or this thread's own cache, which lives until
    // its exit hook gives it back and is only used through Cells, by this
    // thread.
    unsafe { &*state::current() }
}

/// The calling thread's own cache, bound on first use: what every path
/// that writes thread state or counters uses. `None` for a thread whose
/// exit hook has run (it gave its cache back) or when no memory can be
/// mapped for one: such calls take the direct path and count into
/// [`STATS`].
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

/// The pool the caches live in (for the fork handlers and the purger).
pub fn pool() -> &'static heapkit_core::thread_slots::SlotPool {
    state::pool()
}

static THREAD_EXIT: os::ThreadExitKey = os::ThreadExitKey::new();

/// Called when a thread binds its cache (a slot of the pool): the fork
/// handlers (once per process), which hold the pool's lock across
/// `fork()`, and the exit key, whose hook gives the cache back. If the key
/// cannot be created the thread uses the direct path only (nothing is
/// ever left in magazines that no hook would flush).
fn on_bind(t: *mut ThreadCache) {
    crate::fork::ensure_registered();
    // Any non-null value: the destructor reads the thread pointer itself.
    if !THREAD_EXIT.register(on_thread_exit, core::ptr::dangling_mut::<c_void>()) {
        // SAFETY: t is the calling thread's cache, just bound; Cells only.
        unsafe { (*t).state.set(ThreadState::Done) };
    }
}

/// Starts using magazines (a thread's first magazine slow path); returns
/// the new state.
#[cold]
pub fn init(t: &ThreadCache) -> ThreadState {
    if t.state.get() == ThreadState::New {
        t.state.set(ThreadState::Active);
    }
    t.state.get()
}

/// The exit hook: magazines to the depots, counters to the global stats.
unsafe extern "C" fn on_thread_exit(_: *mut c_void) {
    let Some(t) = own() else {
        return;
    };
    t.state.set(ThreadState::Done);
    t.flush_magazines();
    t.stats.flush(&STATS);
    // SAFETY: flushed; nothing refers to the cache any more.
    unsafe { state::release() };
}
