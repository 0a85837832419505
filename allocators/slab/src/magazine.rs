//! Magazines and the depot (Bonwick & Adams 2001).
//!
//! A [`Magazine`] is a fixed-capacity LIFO array of free object pointers of
//! one cache. Each thread holds two per size class (the *loaded* one it pops
//! and pushes, and the *previous* one, always full or empty), so a thread
//! that alternates allocations and frees touches no lock and no shared line.
//! When both are exhausted the thread trades with its cache's [`Depot`]: a
//! full magazine for an empty one (allocation), or the other way round
//! (free). One depot visit moves a whole magazine, so the lock is taken at
//! most once per `capacity` operations.
//!
//! Magazines are objects of the internal magazine cache, carved from the
//! allocator's own slabs, never from the global allocator.
//!
//! The depot keeps full magazines only as long as someone allocates from
//! them: `demand` counts allocation-side visits and halves on every refused
//! push, and a push is refused once the depot holds `demand` magazines.
//! Demand is capped at eight magazines when the allocating thread is not
//! the one that filled them (the producer/consumer flow the depot exists
//! for), and at one when it is (a single thread's random walk, which would
//! otherwise park memory in the depot), a limit that doubles each time that
//! thread's objects make a round trip through the slabs the depot could
//! have saved (a refused push, then an allocation that finds the depot
//! empty: a program tearing down and rebuilding a structure). A
//! program that stops allocating and frees everything therefore sends every
//! object back to its slab within a few magazine's worth of frees, and the
//! slabs (now empty) go back to the OS. The depot is lock-based; its lock is
//! a leaf (nothing else is locked while it is held).

use core::ptr;
use core::sync::atomic::{AtomicIsize, AtomicUsize, Ordering::Relaxed};

use heapkit_core::lock::SpinLock;

use crate::slab::layout;

/// Slots in every magazine (the largest capacity).
pub const MAGAZINE_SLOTS: usize = 64;
/// A grown magazine holds at most this many bytes of objects.
const MAGAZINE_BYTES: usize = 16 << 10;
/// A small magazine holds at most this many bytes of objects.
const SMALL_MAGAZINE_BYTES: usize = 4 << 10;
/// Empty magazines a depot keeps (more go back to the magazine cache).
const DEPOT_EMPTY_MAX: usize = 16;
/// Full magazines a depot keeps at most while other threads consume them.
const FULL_MAX: usize = 8;
/// Full magazines a depot keeps at most while the thread that fills them
/// is also the one that empties them (a single thread's private overflow),
/// to begin with: the limit doubles, up to [`FULL_MAX_SAME_THREAD_GROWN`],
/// each time that thread comes back for a full magazine, finds none, and
/// the depot had refused one of its pushes since (a round trip through the
/// slabs the depot could have saved: a program that frees and rebuilds a
/// big structure, like a tree).
const FULL_MAX_SAME_THREAD: usize = 1;
/// The most a single thread's limit grows to (4096 magazines of at most
/// 16 KiB). What the depot holds stays bounded by recent demand, and the
/// free path's wind-down empties it when the class is freed away.
const FULL_MAX_SAME_THREAD_GROWN: usize = 4096;

/// A LIFO of free objects of one cache.
///
/// Invariant: `rounds <= capacity_at(size of the cache's objects, Grown)
/// <= MAGAZINE_SLOTS` and
/// `objs[..rounds]` are free objects of the cache. While a magazine is a
/// thread's loaded magazine, the thread keeps the count in its own `top`
/// pointer and `rounds` is stale.
#[repr(C)]
pub struct Magazine {
    /// Link in a depot list.
    pub next: *mut Magazine,
    /// Objects held.
    pub rounds: usize,
    /// The objects.
    pub objs: [*mut u8; MAGAZINE_SLOTS],
}

/// How big a thread's magazines of one class are (`ClassSlot::size`).
///
/// A thread starts every class with small magazines (4 KiB of objects) and
/// grows them (16 KiB) once it frees the class and then allocates it
/// again: the ping-pong between the two slow paths that magazines exist
/// for (larson's threads, at 1 KiB a small magazine held 4 objects and a
/// thread went to the depot every few calls). A thread that only builds
/// and then frees (a program's main thread setting up and tearing down)
/// never grows them, so what it keeps in them when it goes idle stays
/// small; the wind-down shrinks them again.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MagazineSize {
    /// At most [`SMALL_MAGAZINE_BYTES`] of objects.
    Small,
    /// At most [`MAGAZINE_BYTES`] of objects (and [`MAGAZINE_SLOTS`]).
    Grown,
}

/// Rounds a magazine of objects of `size` bytes holds at `mag` size: by
/// bytes, between 1 and [`MAGAZINE_SLOTS`].
#[inline]
pub const fn capacity_at(size: usize, mag: MagazineSize) -> usize {
    let bytes = match mag {
        MagazineSize::Small => SMALL_MAGAZINE_BYTES,
        MagazineSize::Grown => MAGAZINE_BYTES,
    };
    let n = bytes / size;
    if n < 1 {
        1
    } else if n > MAGAZINE_SLOTS {
        MAGAZINE_SLOTS
    } else {
        n
    }
}

/// Rounds a magazine of cache `c` holds at `mag` size.
#[inline]
pub fn capacity_of_at(c: usize, mag: MagazineSize) -> usize {
    capacity_at(layout(c).size, mag)
}

struct DepotLists {
    full: *mut Magazine,
    n_full: usize,
    empty: *mut Magazine,
    n_empty: usize,
    /// Recent allocation-side visits (see the module docs).
    demand: usize,
    /// The thread that last pushed a full magazine (an opaque id).
    last_putter: usize,
    /// The current limit for that thread (see [`FULL_MAX_SAME_THREAD`]).
    same_thread_limit: usize,
    /// A push was refused since the last allocation-side visit.
    refused: bool,
}

// SAFETY: the lists own the magazines they link; the lock serialises access.
unsafe impl Send for DepotLists {}

/// A cache's depot of full and empty magazines.
pub struct Depot {
    lists: SpinLock<DepotLists>,
    /// Objects in the full magazines (their rounds summed: a magazine is
    /// full at its filler's size, see [`MagazineSize`]). Written under the
    /// lock, read without it (a hint for the free path's wind-down).
    objects: AtomicUsize,
    /// Objects in live threads' magazines (and outboxes) of the class, as
    /// each thread last published them at a slow path
    /// (`ThreadCache::publish`): stale by at most what a thread's fast
    /// paths did since. Lets a thread that frees a class away tell other
    /// threads' cached objects from live ones, even while threads that
    /// just finished their work have not flushed their magazines yet.
    in_threads: AtomicIsize,
}

/// Magazines a depot hands back to be emptied into slabs or freed.
pub struct Surplus {
    /// Full magazines to drain into slabs (linked by `next`).
    pub full: *mut Magazine,
    /// Empty magazines to free (linked by `next`).
    pub empty: *mut Magazine,
}

impl Depot {
    /// An empty depot.
    pub const fn new() -> Self {
        Self {
            lists: SpinLock::new(DepotLists {
                full: ptr::null_mut(),
                n_full: 0,
                empty: ptr::null_mut(),
                n_empty: 0,
                demand: 1,
                last_putter: 0,
                same_thread_limit: FULL_MAX_SAME_THREAD,
                refused: false,
            }),
            objects: AtomicUsize::new(0),
            in_threads: AtomicIsize::new(0),
        }
    }

    /// Allocation side: trades `empty` (an empty magazine, or null) for a
    /// full one. Returns the full magazine, or null (then `empty` is not
    /// taken). Counts as demand either way: up to [`FULL_MAX`] magazines
    /// when `thread` (an opaque id) is not the one that fills them, one
    /// otherwise.
    pub fn take_full(&self, empty: *mut Magazine, thread: usize) -> (*mut Magazine, Surplus) {
        let mut d = self.lists.lock();
        let limit = if thread == d.last_putter {
            if d.full.is_null() && d.refused {
                d.same_thread_limit = (d.same_thread_limit * 2).min(FULL_MAX_SAME_THREAD_GROWN);
            }
            d.same_thread_limit
        } else {
            FULL_MAX
        };
        d.refused = false;
        d.demand = (d.demand + 1).min(limit);
        let full = d.full;
        let mut surplus = Surplus {
            full: ptr::null_mut(),
            empty: ptr::null_mut(),
        };
        if full.is_null() {
            return (full, surplus);
        }
        // SAFETY: magazines on the list are owned by the depot.
        unsafe {
            d.full = (*full).next;
            self.count_objects(-((*full).rounds as isize));
        }
        d.n_full -= 1;
        if !empty.is_null() {
            surplus.empty = push_empty(&mut d, empty);
        }
        (full, surplus)
    }

    /// Free side: offers the full magazine `full`. Returns `true` if the
    /// depot kept it; otherwise the caller drains it. Also returns any full
    /// magazines beyond the (lowered) demand, to be drained too.
    pub fn put_full(&self, full: *mut Magazine, thread: usize) -> (bool, Surplus) {
        let mut d = self.lists.lock();
        d.last_putter = thread;
        let mut surplus = Surplus {
            full: ptr::null_mut(),
            empty: ptr::null_mut(),
        };
        if d.n_full < d.demand {
            // SAFETY: the caller hands the magazine over.
            unsafe {
                (*full).next = d.full;
                self.count_objects((*full).rounds as isize);
            }
            d.full = full;
            d.n_full += 1;
            return (true, surplus);
        }
        d.demand /= 2;
        d.refused = true;
        while d.n_full > d.demand {
            let m = d.full;
            // SAFETY: n_full > 0, so m is a magazine owned by the depot.
            unsafe {
                d.full = (*m).next;
                self.count_objects(-((*m).rounds as isize));
                (*m).next = surplus.full;
            }
            surplus.full = m;
            d.n_full -= 1;
        }
        (false, surplus)
    }

    /// Takes an empty magazine, or null.
    pub fn take_empty(&self) -> *mut Magazine {
        let mut d = self.lists.lock();
        let m = d.empty;
        if !m.is_null() {
            // SAFETY: magazines on the list are owned by the depot.
            d.empty = unsafe { (*m).next };
            d.n_empty -= 1;
        }
        m
    }

    /// Keeps an empty magazine; returns it back (to be freed) if the depot
    /// has enough.
    pub fn put_empty(&self, m: *mut Magazine) -> *mut Magazine {
        push_empty(&mut self.lists.lock(), m)
    }

    /// Takes every magazine (for tests that account for all objects).
    pub fn take_all(&self) -> Surplus {
        let mut d = self.lists.lock();
        let s = Surplus {
            full: d.full,
            empty: d.empty,
        };
        d.full = ptr::null_mut();
        d.empty = ptr::null_mut();
        d.n_full = 0;
        self.objects.store(0, Relaxed);
        d.n_empty = 0;
        s
    }

    /// Full magazines held.
    pub fn full_count(&self) -> usize {
        self.lists.lock().n_full
    }

    /// Objects held in full magazines (read without the lock: exact only
    /// while nothing trades with the depot).
    pub fn full_objects(&self) -> usize {
        self.objects.load(Relaxed)
    }

    /// Adds `delta` to the objects this class has in threads' magazines.
    pub fn publish(&self, delta: isize) {
        self.in_threads.fetch_add(delta, Relaxed);
    }

    /// Objects of the class in threads' magazines, as last published.
    pub fn in_threads(&self) -> usize {
        self.in_threads.load(Relaxed).max(0) as usize
    }

    /// Adds `delta` to [`objects`](Self::objects); the caller holds the
    /// lock (so a load and a store suffice).
    fn count_objects(&self, delta: isize) {
        let n = self.objects.load(Relaxed).wrapping_add_signed(delta);
        self.objects.store(n, Relaxed);
    }

    /// Fork support.
    pub fn lock_for_fork(&self) {
        self.lists.raw().lock();
    }

    /// Fork support: release in the parent.
    pub fn unlock_after_fork(&self) {
        // SAFETY: lock_for_fork took it in this thread.
        unsafe { self.lists.raw().unlock() };
    }

    /// Fork support: reset in the child.
    pub fn reset_after_fork(&self) {
        // SAFETY: only called in the single-threaded child.
        unsafe { self.lists.raw().reset_after_fork() };
    }
}

impl Default for Depot {
    fn default() -> Self {
        Self::new()
    }
}

fn push_empty(d: &mut DepotLists, m: *mut Magazine) -> *mut Magazine {
    if d.n_empty >= DEPOT_EMPTY_MAX {
        // SAFETY: m is handed back to the caller as a one-element list.
        unsafe { (*m).next = ptr::null_mut() };
        return m;
    }
    // SAFETY: the caller hands the magazine over.
    unsafe {
        (*m).rounds = 0;
        (*m).next = d.empty;
    }
    d.empty = m;
    d.n_empty += 1;
    ptr::null_mut()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::boxed::Box;

    fn mag() -> *mut Magazine {
        Box::into_raw(Box::new(Magazine {
            next: ptr::null_mut(),
            rounds: 0,
            objs: [ptr::null_mut(); MAGAZINE_SLOTS],
        }))
    }

    fn count(mut m: *mut Magazine) -> usize {
        let mut n = 0;
        while !m.is_null() {
            n += 1;
            // SAFETY: test magazines are live boxes.
            m = unsafe { (*m).next };
        }
        n
    }

    #[test]
    fn capacities_are_bounded_by_bytes() {
        use MagazineSize::{Grown, Small};
        assert_eq!(capacity_at(16, Small), MAGAZINE_SLOTS);
        assert_eq!(capacity_at(1024, Small), 4);
        assert_eq!(capacity_at(1024, Grown), 16);
        assert_eq!(capacity_at(4096, Grown), 4);
        assert_eq!(capacity_at(256 << 10, Grown), 1);
    }

    #[test]
    fn depot_keeps_full_magazines_only_while_there_is_demand() {
        let d = Depot::new();
        // Initial demand 1: one full magazine is kept, the next refused.
        let (kept, s) = d.put_full(mag(), 1);
        assert!(kept && s.full.is_null());
        let second = mag();
        let (kept, s) = d.put_full(second, 1);
        assert!(!kept);
        // Demand fell to 0: the kept magazine is handed back to drain.
        assert_eq!(count(s.full), 1);
        assert_eq!(d.full_count(), 0);
        // Allocation-side visits by the filling thread: the first finds the
        // depot empty after a refused push (a round trip), so its limit
        // doubles to two.
        let e = mag();
        for _ in 0..3 {
            assert!(d.take_full(e, 1).0.is_null());
        }
        assert!(d.put_full(second, 1).0);
        assert!(d.put_full(mag(), 1).0);
        let (kept, s) = d.put_full(mag(), 1);
        assert!(!kept && count(s.full) == 1 && d.full_count() == 1);
        // Without a further round trip the limit stays at two.
        let (f, _) = d.take_full(ptr::null_mut(), 1);
        assert!(!f.is_null());
        assert!(d.put_full(f, 1).0);
        assert!(d.put_full(mag(), 1).0);
        let (kept, s) = d.put_full(mag(), 1);
        assert!(!kept && count(s.full) == 1 && d.full_count() == 1);
        assert_eq!(count(d.take_all().full), 1);
        // Visits by another thread raise it further.
        assert!(d.take_full(e, 2).0.is_null());
        assert!(d.take_full(e, 2).0.is_null());
        assert!(d.put_full(second, 1).0);
        assert!(d.put_full(mag(), 1).0);
        let (f, s) = d.take_full(e, 2);
        assert!(!f.is_null() && s.empty.is_null());
        assert_eq!(d.take_empty(), e);
        assert!(d.take_empty().is_null());
    }

    #[test]
    fn empty_list_is_bounded() {
        let d = Depot::new();
        for _ in 0..DEPOT_EMPTY_MAX {
            assert!(d.put_empty(mag()).is_null());
        }
        assert!(!d.put_empty(mag()).is_null());
        let s = d.take_all();
        assert_eq!(count(s.empty), DEPOT_EMPTY_MAX);
    }
}
