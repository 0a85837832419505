//! The slab layer of one cache: partial, full and empty slabs of one object
//! size under one lock.
//!
//! Magazines sit in front of this layer, so it is entered only to refill an
//! empty magazine ([`Cache::fill`], a batch of objects per lock), to drain a
//! magazine the depot does not want ([`Cache::give_back`]), or by threads
//! that have no magazines (being set up, or already exited).
//!
//! Slabs with free objects sit on one of two lists: *partial* (more than a
//! quarter in use) or *sparse* (a quarter or less). Allocation prefers a
//! partial slab, then a sparse one, then an empty slab, then a new slab
//! from [`crate::segment`]: concentrating allocations in the fullest slabs
//! lets sparse ones drain under churn, which is what keeps a long-running
//! program's slab count near its live data. A slab whose last object comes
//! back moves to the empty list; the empty list keeps at most
//! one slab in four of the cache's working slabs (the hysteresis that stops
//! a program oscillating around a slab boundary from purging and faulting
//! the same memory over and over), and the rest are purged and their chunks
//! returned to their segment.
//!
//! Lock order: this lock, then the segment lock. No two cache locks are
//! ever held together.

use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use heapkit_core::harden::{FreeMark, Hardened, Policy};
use heapkit_core::lock::SpinLock;

use crate::segment::{self, slab_of};
use crate::slab::{layout, SlabList, SlabMeta};

/// A cache's slabs of one fullness (core's one intrusive list); each slab
/// also names the list it is on (`SlabMeta::list`).
struct List(heapkit_core::list::List<SlabMeta>);

impl List {
    const fn new() -> Self {
        Self(heapkit_core::list::List::EMPTY)
    }

    /// # Safety
    /// `s` is a live slab on no list.
    unsafe fn push(&mut self, s: *mut SlabMeta, which: SlabList) {
        // SAFETY: s is live and on no list; the cache lock guards both.
        unsafe {
            (*s).list = which;
            self.0.push_front(s);
        }
    }

    /// # Safety
    /// `s` is a live slab on this list.
    unsafe fn remove(&mut self, s: *mut SlabMeta) {
        // SAFETY: s is on this list (caller); the lock guards it.
        unsafe {
            self.0.remove(s);
            (*s).list = SlabList::None;
        }
    }
}

/// The slab lists of one cache, and what its keep policy remembers.
///
/// Invariant: every slab of the cache with an object handed out is on
/// `partial`, `sparse` or `full` (by its count), every other one it holds
/// on `empty`; `peak_working` is the most slabs those three lists held
/// together at the end of a `Cache::fill`.
struct Slabs {
    partial: List,
    sparse: List,
    full: List,
    empty: List,
    /// The most slabs `partial`, `sparse` and `full` held together (as
    /// `Cache::fill` left them).
    peak_working: usize,
    /// When empty slabs were last released beyond the keep (monotonic ns;
    /// 0: never).
    released_ns: u64,
    /// When the cache last needed a new slab within [`REBUILD_WINDOW_NS`]
    /// of such a release (0: never).
    rebuilt_ns: u64,
    /// The program frees this cache's slabs and builds them again (a new
    /// slab was needed right after empty ones were released):
    /// [`Slabs::empty_kept`] keeps up to `peak_working` empty slabs
    /// meanwhile. Cleared by the first release that finds the last such
    /// need [`REBUILD_HOLD_NS`] or more ago.
    rebuilding: bool,
}

/// A new slab needed this soon after empty ones were released means the
/// program rebuilds what it freed. Longer than sizeclass's purge delay:
/// a program that grows its structures through the classes (realloc's
/// vectors) empties a small class's slabs early in a round and needs them
/// again at the next round's start, 40 ms later there; with a 20 ms window
/// realloc took 58,510 faults, with 100 ms (or 250 ms) 41,788.
const REBUILD_WINDOW_NS: u64 = 100_000_000;
/// How long after it was last seen rebuilding a cache may stop keeping
/// its empty slabs (at its next release beyond the keep).
const REBUILD_HOLD_NS: u64 = 1_000_000_000;

impl Slabs {
    /// Empty slabs kept unpurged for reuse: a quarter of the working ones,
    /// and at least one, so a program that cycles one big object (a slab
    /// of a few) does not purge and re-fault the slab on every round; as
    /// many as the cache ever had working while the program frees and
    /// rebuilds (`rebuilding`): the harness's realloc workload, which frees
    /// 80 MiB of vectors and grows them again six times, faulted all of it
    /// in again at every round (112,822 faults, 2.2x the mimalloc crate's
    /// time). The background purger and `malloc_trim` release these too.
    fn empty_kept(&self) -> usize {
        let working = self.partial.0.len + self.sparse.0.len + self.full.0.len;
        let kept = (working / 4).max(1);
        if self.rebuilding {
            kept.max(self.peak_working)
        } else {
            kept
        }
    }

    /// Records that the cache needs a new slab (it had no empty one).
    fn note_new_slab(&mut self) {
        if self.released_ns == 0 {
            return;
        }
        let now = heapkit_core::os::monotonic_ns();
        if now.saturating_sub(self.released_ns) < REBUILD_WINDOW_NS {
            self.rebuilding = true;
            self.rebuilt_ns = now;
        }
    }

    /// Records a release of empty slabs beyond the keep; stops rebuilding
    /// once that was last seen long enough ago.
    fn note_release(&mut self) {
        let now = heapkit_core::os::monotonic_ns();
        self.released_ns = now;
        if self.rebuilding && now.saturating_sub(self.rebuilt_ns) >= REBUILD_HOLD_NS {
            self.rebuilding = false;
        }
    }

    fn list(&mut self, which: SlabList) -> Option<&mut List> {
        match which {
            SlabList::None => None,
            SlabList::Partial => Some(&mut self.partial),
            SlabList::Sparse => Some(&mut self.sparse),
            SlabList::Full => Some(&mut self.full),
            SlabList::Empty => Some(&mut self.empty),
        }
    }

    /// Moves `s` to the list its count calls for.
    ///
    /// # Safety
    /// `s` is a live slab of this cache, on the list its `list` names.
    #[inline]
    unsafe fn place(&mut self, s: *mut SlabMeta, capacity: u32) {
        // SAFETY: s is live and guarded by the cache lock (caller).
        let (now, want) = unsafe { ((*s).list, SlabList::for_count((*s).in_use, capacity)) };
        if now == want {
            return;
        }
        if let Some(l) = self.list(now) {
            // SAFETY: s is on the list it names (caller).
            unsafe { l.remove(s) };
        }
        if let Some(l) = self.list(want) {
            // SAFETY: s is now on no list.
            unsafe { l.push(s, want) };
        }
    }
}

// SAFETY: the lists link slabs owned by this cache; the lock serialises
// every access to them.
unsafe impl Send for Slabs {}

/// The slab layer of one cache.
pub struct Cache {
    slabs: SpinLock<Slabs>,
    /// Objects handed out by the slab layer (live or in magazines): the sum
    /// of the slabs' `in_use`, written under the lock, read without it by
    /// [`Cache::in_use`] (a hint: the idle test of `slow::free`).
    in_use: AtomicUsize,
    /// Set when the cache makes its first slab, never cleared: trim and
    /// the purger skip the caches a program never used (most of them: one
    /// per class and mode) without touching their locks, whose pages would
    /// otherwise become resident on the first `malloc_trim`.
    used: AtomicBool,
}

/// Slabs released at once after the lock is dropped (more wait for the next
/// give-back).
const RELEASE_BATCH: usize = 8;

/// What `Cache::census` counts for one cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheCensus {
    /// Slabs on each list.
    pub partial: usize,
    pub sparse: usize,
    pub full: usize,
    pub empty: usize,
    /// Objects handed out by the slab layer (live or in magazines).
    pub in_use: usize,
}

impl Default for Cache {
    fn default() -> Self {
        Self::new()
    }
}

impl Cache {
    /// A cache with no slabs. Its index (which selects its layout) is
    /// passed to every method: caches live in one array.
    pub const fn new() -> Self {
        Self {
            slabs: SpinLock::new(Slabs {
                partial: List::new(),
                sparse: List::new(),
                full: List::new(),
                empty: List::new(),
                peak_working: 0,
                released_ns: 0,
                rebuilt_ns: 0,
                rebuilding: false,
            }),
            in_use: AtomicUsize::new(0),
            used: AtomicBool::new(false),
        }
    }

    /// Whether the cache ever made a slab (see the field).
    #[inline]
    pub fn was_used(&self) -> bool {
        self.used.load(Ordering::Relaxed)
    }

    /// Objects of this cache handed out (live or sitting in magazines), as
    /// last written under the lock: a hint, read without the lock.
    #[inline]
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Bytes of this cache's slabs that hold objects (live or in
    /// magazines): its partial, sparse and full slabs, not its empty ones.
    /// Takes the lock (statistics, never a fast path).
    pub fn slab_bytes_in_use(&self, index: usize) -> usize {
        let l = layout(index);
        let st = self.slabs.lock();
        (st.partial.0.len + st.sparse.0.len + st.full.0.len) * l.chunks * segment::CHUNK
    }

    /// Takes up to `want` objects into `out[..]`; returns how many (0 only
    /// on exhaustion). If `zero` is given, it is set to whether the first
    /// object is known to be zero.
    ///
    /// # Safety
    /// `out` must be valid for `want` pointer writes.
    pub unsafe fn fill(
        &self,
        index: usize,
        out: *mut *mut u8,
        want: usize,
        zero: Option<&mut bool>,
    ) -> usize {
        let l = layout(index);
        let mut st = self.slabs.lock();
        let mut n = 0;
        let mut first_zero = false;
        while n < want {
            let mut s = st.partial.0.first;
            if s.is_null() {
                s = st.sparse.0.first;
            }
            if s.is_null() {
                s = st.empty.0.first;
            }
            if s.is_null() {
                st.note_new_slab();
                s = segment::alloc_run(l.chunks, l.align_chunks, index as u8);
                if s.is_null() {
                    break;
                }
                self.used.store(true, Ordering::Relaxed);
            }
            // SAFETY: s is a live slab of this cache with free objects (or
            // fresh, on no list), under the lock.
            let slab = unsafe { &mut *s };
            while n < want {
                let (p, z) = slab.take(l);
                if p.is_null() {
                    break;
                }
                if n == 0 {
                    first_zero = z;
                }
                // SAFETY: n < want (caller: out has room for want).
                unsafe { out.add(n).write(p) };
                n += 1;
            }
            // SAFETY: s is on the list it names.
            unsafe { st.place(s, l.capacity) };
        }
        let working = st.partial.0.len + st.sparse.0.len + st.full.0.len;
        st.peak_working = st.peak_working.max(working);
        self.in_use
            .store(self.in_use.load(Ordering::Relaxed) + n, Ordering::Relaxed);
        drop(st);
        if let Some(z) = zero {
            *z = first_zero;
        }
        n
    }

    /// Gives `n` objects of this cache back to their slabs.
    ///
    /// # Safety
    /// `objs[..n]` must be distinct in-use objects of this cache that
    /// nobody uses any more.
    pub unsafe fn give_back(&self, index: usize, objs: *const *mut u8, n: usize) {
        let l = layout(index);
        let mut st = self.slabs.lock();
        for i in 0..n {
            // SAFETY: i < n (caller); the object is ours and dead, so its
            // slab is live and guarded by this lock.
            unsafe {
                let p = *objs.add(i);
                let s = slab_of(p);
                debug_assert_eq!((*s).cache as usize, index);
                (*s).give(p);
                st.place(s, l.capacity);
            }
        }
        self.in_use.store(
            self.in_use.load(Ordering::Relaxed).wrapping_sub(n),
            Ordering::Relaxed,
        );
        let excess = st.empty.0.len > st.empty_kept();
        drop(st);
        if excess {
            self.release_empty(false);
        }
    }

    /// Purges empty slabs and returns their chunks to the segments: those
    /// beyond [`Slabs::empty_kept`], or (`all`: `malloc_trim`, the
    /// background purger) every one. The purges run outside the lock, a
    /// batch at a time.
    pub fn release_empty(&self, all: bool) {
        if !self.was_used() {
            return;
        }
        loop {
            let mut batch = [ptr::null_mut::<SlabMeta>(); RELEASE_BATCH];
            let mut n = 0;
            {
                let mut st = self.slabs.lock();
                let keep = if all { 0 } else { st.empty_kept() };
                if !all && st.empty.0.len > keep {
                    st.note_release();
                }
                while st.empty.0.len > keep && n < RELEASE_BATCH {
                    let s = st.empty.0.first;
                    // SAFETY: the empty list is non-empty.
                    unsafe { st.empty.remove(s) };
                    if let Some(slot) = batch.get_mut(n) {
                        *slot = s;
                    }
                    n += 1;
                }
            }
            for &s in batch.iter().take(n) {
                // SAFETY: s is off every list, with no object in use.
                unsafe { segment::release_run(s) };
            }
            if n < RELEASE_BATCH {
                return;
            }
        }
    }

    /// Counts slabs and in-use objects, verifying every slab on the way:
    /// its in-use count against its free objects, its list against its
    /// count, and every free object's position.
    pub fn census(&self, index: usize) -> Result<CacheCensus, &'static str> {
        let l = layout(index);
        let st = self.slabs.lock();
        let mut c = CacheCensus::default();
        for (list, which) in [
            (&st.partial, SlabList::Partial),
            (&st.sparse, SlabList::Sparse),
            (&st.full, SlabList::Full),
            (&st.empty, SlabList::Empty),
        ] {
            let mut s = list.0.first;
            let mut len = 0;
            let mut prev = ptr::null_mut();
            while !s.is_null() {
                // SAFETY: slabs on the lists are live; the lock is held.
                let slab = unsafe { &*s };
                if slab.list != which || slab.prev != prev || slab.cache as usize != index {
                    return Err("slab on the wrong list or badly linked");
                }
                // SAFETY: the slab's start is a live object address.
                if unsafe { slab_of(slab.start) } != s {
                    return Err("segment header does not map the slab to its metadata");
                }
                let mut free = 0u32;
                let mut f = slab.free;
                while !f.is_null() {
                    let off = (f as usize).wrapping_sub(slab.start as usize);
                    if !off.is_multiple_of(l.size) || off / l.size >= slab.carved as usize {
                        return Err("free object outside the carved part of its slab");
                    }
                    free += 1;
                    if free > l.capacity {
                        return Err("free list longer than the slab (cycle?)");
                    }
                    // SAFETY: f is a free object of this slab (at least 16
                    // bytes).
                    if slab.key != 0 && !unsafe { FreeMark::is_set(f.cast(), slab.key) } {
                        return Err("hardened free object without its free mark");
                    }
                    // SAFETY: f is a free object of this slab.
                    let stored = unsafe { (*f).next };
                    f = if slab.key == 0 {
                        stored
                    } else {
                        Hardened::decode(stored.cast(), slab.key).cast()
                    };
                }
                if slab.in_use + free != slab.carved || slab.carved > l.capacity {
                    return Err("in-use count does not match the free objects");
                }
                let expect = SlabList::for_count(slab.in_use, l.capacity);
                if expect != which {
                    return Err("slab on a list that does not match its count");
                }
                // The never-carved tail must still be zero.
                let tail = slab.carved as usize * l.size;
                let end = l.capacity as usize * l.size;
                let mut off = tail;
                while off < end {
                    // SAFETY: off < slab size; the slab is mapped.
                    if unsafe { *slab.start.add(off) } != 0 {
                        return Err("never-carved object is not zero");
                    }
                    off += 4096;
                }
                c.in_use += slab.in_use as usize;
                len += 1;
                prev = s;
                s = slab.next;
            }
            if len != list.0.len {
                return Err("list length mismatch");
            }
            match which {
                SlabList::Partial => c.partial = len,
                SlabList::Sparse => c.sparse = len,
                SlabList::Full => c.full = len,
                _ => c.empty = len,
            }
        }
        Ok(c)
    }

    /// Fork support.
    pub fn lock_for_fork(&self) {
        self.slabs.raw().lock();
    }

    /// Fork support: release in the parent.
    pub fn unlock_after_fork(&self) {
        // SAFETY: lock_for_fork took it in this thread.
        unsafe { self.slabs.raw().unlock() };
    }

    /// Fork support: reset in the child.
    pub fn reset_after_fork(&self) {
        // SAFETY: only called in the single-threaded child.
        unsafe { self.slabs.raw().reset_after_fork() };
    }
}
