//! The process-wide heap: one [`Cache`] and one [`Depot`] per cache index,
//! the statistics, and the operations on magazines that need both.
//!
//! Every `Slab` value is a handle to this one heap (a global allocator is
//! process-wide anyway), so `Slab::new()` is free and `const`.

use core::ptr;

use crossbeam_utils::CachePadded;
use heapkit_core::GlobalStats;

use crate::cache::Cache;
use crate::magazine::{Depot, Magazine, Surplus};
use crate::slab::{CACHE_COUNT, MAGAZINE_CACHE};

/// The slab layer of every cache (index = size class; the last one holds
/// magazines). Padded so neighbouring locks do not share a line.
pub static CACHES: [CachePadded<Cache>; CACHE_COUNT] =
    [const { CachePadded::new(Cache::new()) }; CACHE_COUNT];

/// The depot of every size class (the magazine cache has none).
pub static DEPOTS: [CachePadded<Depot>; CACHE_COUNT] =
    [const { CachePadded::new(Depot::new()) }; CACHE_COUNT];

/// Allocator-wide counters.
pub static STATS: GlobalStats = GlobalStats::new();

/// The cache with index `c`.
#[inline]
pub fn cache(c: usize) -> &'static Cache {
    debug_assert!(c < CACHE_COUNT);
    // SAFETY: every cache index in this crate is < CACHE_COUNT.
    unsafe { CACHES.get_unchecked(c) }
}

/// The depot of cache `c`.
#[inline]
pub fn depot(c: usize) -> &'static Depot {
    debug_assert!(c < CACHE_COUNT);
    // SAFETY: as for `cache`.
    unsafe { DEPOTS.get_unchecked(c) }
}

/// One object of cache `c` straight from its slabs (no magazine), and
/// whether it is known to be zero; null on exhaustion.
pub fn take_direct(c: usize) -> (*mut u8, bool) {
    let mut p = ptr::null_mut();
    let mut zero = false;
    // SAFETY: &mut p is valid for one write.
    let n = unsafe { cache(c).fill(c, &mut p, 1, Some(&mut zero)) };
    if n == 0 {
        (ptr::null_mut(), false)
    } else {
        (p, zero)
    }
}

/// Gives one object of cache `c` straight back to its slab.
///
/// # Safety
/// `p` must be an in-use object of cache `c` that nobody uses any more.
pub unsafe fn give_direct(c: usize, p: *mut u8) {
    // SAFETY: forwarded caller guarantee; &p is one readable pointer.
    unsafe { cache(c).give_back(c, &p, 1) };
}

/// A new empty magazine from the magazine cache, or null.
pub fn new_magazine() -> *mut Magazine {
    let (p, _) = take_direct(MAGAZINE_CACHE);
    let m = p.cast::<Magazine>();
    if !m.is_null() {
        // SAFETY: m is a fresh object of the magazine cache, sized and
        // (16-byte) aligned for a Magazine.
        unsafe {
            ptr::addr_of_mut!((*m).next).write(ptr::null_mut());
            ptr::addr_of_mut!((*m).rounds).write(0);
        }
    }
    m
}

/// An empty magazine for cache `c`: from its depot, else a new one.
pub fn empty_magazine(c: usize) -> *mut Magazine {
    let m = depot(c).take_empty();
    if m.is_null() {
        new_magazine()
    } else {
        m
    }
}

/// Returns a magazine's memory to the magazine cache.
///
/// # Safety
/// `m` must be a magazine from [`new_magazine`] that nobody uses any more.
pub unsafe fn free_magazine(m: *mut Magazine) {
    // SAFETY: forwarded caller guarantee.
    unsafe { give_direct(MAGAZINE_CACHE, m.cast()) };
}

/// Empties magazine `m` of cache `c` into the slabs (rounds become 0).
///
/// # Safety
/// `m` must be a magazine of cache `c` owned by the caller, its
/// `rounds` accurate.
pub unsafe fn drain(c: usize, m: *mut Magazine) {
    // SAFETY: the caller owns m; its first `rounds` objects are free objects
    // of cache c.
    unsafe {
        let rounds = (*m).rounds;
        if rounds > 0 {
            cache(c).give_back(c, ptr::addr_of!((*m).objs).cast(), rounds);
        }
        (*m).rounds = 0;
    }
}

/// Keeps an empty magazine in the depot of `c`, or frees it.
///
/// # Safety
/// `m` must be an empty magazine owned by the caller.
pub unsafe fn retire_empty(c: usize, m: *mut Magazine) {
    let back = depot(c).put_empty(m);
    if !back.is_null() {
        // SAFETY: the depot handed it back; it is ours and empty.
        unsafe { free_magazine(back) };
    }
}

/// Hands each magazine of a `next`-linked list to `f`, reading its link
/// first (so `f` may free it).
///
/// # Safety
/// The list's magazines must be the caller's, linked by `next`, null-ended.
unsafe fn each_magazine(mut m: *mut Magazine, mut f: impl FnMut(*mut Magazine)) {
    while !m.is_null() {
        // SAFETY: m is one of the caller's magazines (caller), not yet
        // handed to f.
        let next = unsafe { (*m).next };
        f(m);
        m = next;
    }
}

/// Drains and frees what a depot handed back.
///
/// # Safety
/// `s` must come from `depot(c)`.
pub unsafe fn settle(c: usize, s: Surplus) {
    // SAFETY: surplus magazines are owned by the caller now; the full ones
    // hold `rounds` free objects of cache c.
    unsafe {
        each_magazine(s.full, |m| {
            drain(c, m);
            retire_empty(c, m);
        });
        each_magazine(s.empty, |m| free_magazine(m));
    }
}

/// Empties the depot of `c` for good: the full magazines' objects go back
/// to their slabs and every magazine (full or empty) is freed, so the
/// magazine cache's slabs can empty too (`trim`, and the purger's idle
/// round; `settle` alone keeps a drained magazine as the depot's empty).
pub fn release_depot(c: usize) {
    let s = depot(c).take_all();
    // SAFETY: the depot handed every magazine over; the full ones hold
    // `rounds` free objects of cache c.
    unsafe {
        each_magazine(s.full, |m| {
            drain(c, m);
            free_magazine(m);
        });
        each_magazine(s.empty, |m| free_magazine(m));
    }
}

/// Offers a magazine of cache `c` to the depot (as
/// an exiting thread: id 0, never an allocating thread's): a full one (at
/// least `capacity` rounds, its owner's size) is
/// kept if the depot wants it; otherwise it is drained into the
/// slabs and kept as an empty one or freed.
///
/// # Safety
/// `m` must be a magazine of cache `c` owned by the caller, `rounds`
/// accurate.
pub unsafe fn retire(c: usize, m: *mut Magazine, capacity: usize) {
    // SAFETY: the caller owns m.
    unsafe {
        if (*m).rounds >= capacity {
            let (kept, surplus) = depot(c).put_full(m, 0);
            settle(c, surplus);
            if kept {
                return;
            }
        }
        drain(c, m);
        retire_empty(c, m);
    }
}
