//! The slow paths: what happens when the loaded magazine is empty (on
//! allocation) or full (on free). Each ends by retrying the fast path.
//!
//! Allocation, loaded magazine empty (Bonwick & Adams, section 3.3):
//! 1. previous magazine full → swap loaded and previous;
//! 2. else the depot has a full magazine → it takes the (empty) previous,
//!    the empty loaded one becomes previous, the full one is loaded;
//! 3. else refill an empty magazine with a batch from the slabs.
//!
//! Free, loaded magazine full:
//! 1. previous magazine empty → swap;
//! 2. else (previous full) offer it to the depot; if the depot refuses
//!    (nobody has been allocating this class: a freeing phase), drain both
//!    magazines into the slabs so that their slabs can empty; otherwise the
//!    full loaded magazine becomes previous and an empty one (from the
//!    depot or the magazine cache) is loaded.
//!
//! A thread without magazines (not yet [`ThreadState::Active`], or
//! [`ThreadState::Done`]) or
//! without memory for one uses the slabs directly, one object per lock.

use core::ptr;

use crate::heap::{self, depot, STATS};
use crate::magazine::MagazineSize;
use crate::slab::layout;
use crate::thread::{self, SlowPath, ThreadCache, ThreadState};

/// Allocates from class `c` with the loaded magazine empty, then publishes
/// what the thread's magazines of the class hold.
#[cold]
#[inline(never)]
pub fn allocate(c: usize) -> *mut u8 {
    let p = refill(c);
    if let Some(t) = thread::own() {
        t.slot(c).publish(c);
    }
    p
}

/// Frees `p` of class `c` with the loaded magazine full, then publishes
/// what the thread's magazines of the class hold.
///
/// # Safety
/// `p` must be a live object of class `c`.
#[cold]
#[inline(never)]
pub unsafe fn free(c: usize, p: *mut u8) {
    // SAFETY: forwarded caller guarantee.
    unsafe { exchange(c, p) };
    if let Some(t) = thread::own() {
        t.slot(c).publish(c);
    }
}

/// The allocation slow path proper.
#[inline(always)]
fn refill(c: usize) -> *mut u8 {
    let Some(t) = thread::bound() else {
        return allocate_direct(c);
    };
    t.stats.maybe_flush(&STATS);
    if !ready(t) {
        return allocate_direct(c);
    }
    crate::purger::on_slow_path(t);
    if layout(c).size > MAGAZINE_MAX_OBJECT {
        return allocate_unmagazined(t, c);
    }
    let slot = t.slot(c);
    slot.allocates.set(true);
    if slot.last_slow_path.replace(SlowPath::Allocate) == SlowPath::Free {
        slot.size.set(MagazineSize::Grown);
    }
    let cap = slot.capacity(c);
    let prev = slot.prev.get();
    let loaded = slot.unload();
    // SAFETY: loaded and prev are this thread's magazines of class c with
    // accurate rounds; loaded is empty or null, prev full (any rounds), empty
    // or null (slot invariant).
    unsafe {
        if !prev.is_null() && (*prev).rounds > 0 {
            slot.prev.set(loaded);
            slot.load(prev, cap);
            return crate::allocate_small(c);
        }
        let (full, surplus) = depot(c).take_full(prev, t.id());
        heap::settle(c, surplus);
        if !full.is_null() {
            slot.prev.set(loaded);
            slot.load(full, cap);
            return crate::allocate_small(c);
        }
        // Refill: reuse the loaded or previous (empty) magazine, or get one.
        let m = if !loaded.is_null() {
            loaded
        } else if !prev.is_null() {
            slot.prev.set(ptr::null_mut());
            prev
        } else {
            heap::empty_magazine(c)
        };
        if m.is_null() {
            return allocate_direct(c);
        }
        let n = heap::cache(c).fill(c, ptr::addr_of_mut!((*m).objs).cast(), cap, None);
        (*m).rounds = n;
        slot.load(m, cap);
        if n == 0 {
            return ptr::null_mut();
        }
    }
    crate::allocate_small(c)
}

/// The free slow path proper.
///
/// # Safety
/// `p` must be a live object of class `c`.
#[inline(always)]
unsafe fn exchange(c: usize, p: *mut u8) {
    let Some(t) = thread::bound() else {
        // SAFETY: forwarded caller guarantee.
        return unsafe { free_direct(c, p) };
    };
    t.stats.maybe_flush(&STATS);
    if !ready(t) {
        // SAFETY: forwarded caller guarantee.
        return unsafe { free_direct(c, p) };
    }
    crate::purger::on_slow_path(t);
    if layout(c).size > MAGAZINE_MAX_OBJECT {
        // SAFETY: forwarded caller guarantee.
        return unsafe { free_unmagazined(t, c, p) };
    }
    let slot = t.slot(c);
    if !slot.allocates.get() && !slot.outbox_sent.get() {
        // SAFETY: forwarded caller guarantee; nothing is loaded (only the
        // allocation slow path, or a sent outbox, loads a magazine).
        return unsafe { free_to_outbox(t, c, p) };
    }
    let after_allocate = slot.last_slow_path.replace(SlowPath::Free) == SlowPath::Allocate;
    let cap = slot.capacity(c);
    let mut prev = slot.prev.get();
    let loaded = slot.unload();
    // SAFETY: as in `allocate`; loaded is full (at its possibly lowered
    // limit) or null; p is a live object of class c (caller).
    unsafe {
        let loaded_rounds = if loaded.is_null() {
            0
        } else {
            (*loaded).rounds
        };
        let prev_rounds = if prev.is_null() { 0 } else { (*prev).rounds };
        // Objects of the class the program holds: outside this thread's
        // magazines, the depot's and other threads' (as they last
        // published them). Counting the depot's, a thread freeing a class
        // away while the depot kept what it had freed so far never saw the
        // class shrink; counting other threads', a main thread freeing what
        // its workers left, before their exit flushed their magazines,
        // kept its own (larson's RSS after idle 1.2x or 1.7x by the race).
        let others = depot(c).in_threads().saturating_sub(slot.published.get());
        let live = heap::cache(c)
            .in_use()
            .saturating_sub(loaded_rounds + prev_rounds + depot(c).full_objects() + others);
        // Fewer than a magazine's worth left: the rest go home one by one
        // (at most `cap` locked frees). What a thread that stops freeing
        // keeps is at most the limit of its last visit, each object
        // pinning a slab: a sixteenth of what was live then (a quarter
        // before; larson's main thread kept 18 of the 2000 objects it
        // freed in `tests::freeing_away_is_seen_past_other_threads_magazines`,
        // 3 with two workers beside it, 1 with the four it has now).
        let limit = if live < cap { 0 } else { live / WIND_DOWN };
        // A class the thread allocated since its last free slow path, with
        // grown magazines (it freed and allocated it again before), is in
        // steady use (larson's threads hold a few dozen objects of each of
        // many classes, so the limit is low while nothing is being freed
        // away): winding it down there sent every magazineful home and
        // refilled it from the slabs, a third of larson's time. A thread
        // that built a structure and now frees it has small magazines, and
        // winds down at its first free slow path (a main thread freeing
        // a magazine's worth of a class would otherwise keep them all).
        let steady = after_allocate && slot.size.get() == MagazineSize::Grown;
        // A slot wound down to nothing holds no magazine (`lowered`, all
        // null): each free comes here and re-measures.
        if slot.lowered.get()
            || (!loaded.is_null() && limit < cap && slot.allocates.get() && !steady)
        {
            return wind_down(t, c, p, loaded, prev, limit);
        }
        if !prev.is_null() && (*prev).rounds == 0 {
            slot.prev.set(loaded);
            slot.load(prev, cap);
            return crate::free_small(c, p);
        }
        if loaded.is_null() {
            let m = heap::empty_magazine(c);
            if m.is_null() {
                return free_direct(c, p);
            }
            slot.load(m, cap);
            return crate::free_small(c, p);
        }
        // loaded is full; prev is full or null.
        if !prev.is_null() {
            let (kept, surplus) = depot(c).put_full(prev, t.id());
            heap::settle(c, surplus);
            if kept {
                prev = ptr::null_mut();
            } else {
                // Nobody is allocating this class: a freeing phase. Send
                // both magazines' objects home so their slabs can empty.
                heap::drain(c, prev);
                heap::drain(c, loaded);
                slot.prev.set(prev);
                slot.load(loaded, cap);
                return crate::free_small(c, p);
            }
        }
        let empty = if prev.is_null() {
            heap::empty_magazine(c)
        } else {
            prev
        };
        if empty.is_null() {
            // No memory for a magazine: empty the loaded one instead.
            heap::drain(c, loaded);
            slot.prev.set(ptr::null_mut());
            slot.load(loaded, cap);
        } else {
            slot.prev.set(loaded);
            slot.load(empty, cap);
        }
        crate::free_small(c, p)
    }
}

/// Frees `p` of class `c`, which this thread has never allocated, into the
/// class's outbox (see [`ClassSlot::outbox`](crate::thread::ClassSlot)).
/// The hand-off pattern this is for: a thread receives an object another
/// thread allocated next to its own live ones (a request, a message),
/// frees it, then allocates the same size. Through a magazine it would get
/// that very object back and both threads would write one cache line for
/// as long as they run (the cache-scratch test: 1.6x mimalloc's time with
/// two threads); from the outbox it goes on to the depot with a
/// magazine's worth of others, and this thread's first allocation fills
/// from the slabs.
///
/// # Safety
/// `p` must be a live object of class `c`; the thread has no magazine of
/// class `c` loaded.
#[cold]
#[inline(never)]
unsafe fn free_to_outbox(t: &ThreadCache, c: usize, p: *mut u8) {
    let slot = t.slot(c);
    let cap = slot.capacity(c);
    let mut m = slot.outbox.get();
    if m.is_null() {
        m = heap::empty_magazine(c);
        if m.is_null() {
            // SAFETY: forwarded caller guarantee.
            return unsafe { free_direct(c, p) };
        }
        // SAFETY: an empty magazine is ours; its rounds may be stale.
        unsafe { (*m).rounds = 0 };
        slot.outbox.set(m);
    }
    t.stats.on_free(layout(c).size);
    // SAFETY: the outbox is this thread's, rounds accurate and < cap (a
    // full one is sent below), and p is a free object of class c now.
    unsafe {
        let n = (*m).rounds;
        debug_assert!(n < cap, "the outbox is sent when full");
        ptr::addr_of_mut!((*m).objs)
            .cast::<*mut u8>()
            .add(n)
            .write(p);
        (*m).rounds = n + 1;
        if n + 1 < cap {
            return;
        }
        slot.outbox.set(ptr::null_mut());
        slot.outbox_sent.set(true);
        let (kept, surplus) = depot(c).put_full(m, t.id());
        heap::settle(c, surplus);
        if !kept {
            // Nobody allocates the class: its objects go home, and the
            // magazine becomes the loaded one for the frees to come.
            heap::drain(c, m);
            slot.load(m, cap);
        }
    }
}

/// Objects bigger than this never sit in magazines (jemalloc's `tcache_max`
/// is 32 KiB too): their slots stay empty, so both fast paths come here
/// and take the slab layer's lock, a small price next to writing such an
/// object. A magazine holds one of them (`MAGAZINE_BYTES`), and a thread
/// that freed its last one and went to sleep kept it, and its whole slab,
/// resident for good: nobody else may touch a live thread's magazines.
pub const MAGAZINE_MAX_OBJECT: usize = 32 << 10;

/// One object of a class above [`MAGAZINE_MAX_OBJECT`], straight from the
/// slabs, counted in the thread's statistics.
fn allocate_unmagazined(t: &ThreadCache, c: usize) -> *mut u8 {
    let (p, _) = heap::take_direct(c);
    if !p.is_null() {
        t.stats.on_alloc(&STATS, layout(c).size);
    }
    p
}

/// Frees `p` of a class above [`MAGAZINE_MAX_OBJECT`] straight to its slab.
///
/// # Safety
/// `p` must be a live object of class `c`.
unsafe fn free_unmagazined(t: &ThreadCache, c: usize, p: *mut u8) {
    t.stats.on_free(layout(c).size);
    // SAFETY: forwarded caller guarantee.
    unsafe { heap::give_direct(c, p) };
}

/// A free of class `c` lowers the loaded magazine's limit to the class's
/// live objects (outside this thread's magazines) divided by this.
const WIND_DOWN: usize = 16;

/// The decay of the free path. When a thread that allocates class `c`
/// finds few objects of it live beyond the ones its magazines hold, and
/// has not allocated it since its last free slow path (the program is
/// freeing the class away), the loaded magazine's free limit drops to a
/// sixteenth of them and both magazines (and the depot's full ones) are
/// drained into the slabs, so their slabs can empty and go back to the OS.
/// Each such visit re-measures, so the limit shrinks geometrically with
/// the class, down to 0 once fewer than a magazine's worth are live: the
/// last ones go straight home (`free_direct`), and a program that frees
/// everything leaves no object in its magazines, at the cost of O(log n)
/// extra slow paths (about 16 ln n). (A limit of
/// 1 kept one object per class, and a thread that then slept kept a whole
/// slab of each big class resident, out of reach of the background purger,
/// which cannot touch a live thread's magazines.) The next allocation slow
/// path loads full capacity again, and a class that grows again gets its
/// full limit back here.
///
/// At limit 0 the slot gives its (then empty) magazines back too, to the
/// depot, whose idle empties the background purger frees: a thread that
/// freed a class away and went idle kept two empty magazines of each such
/// class, 528 bytes each, which pinned the magazine cache's slabs they lay
/// in (larson ×4's main thread: 7 of them, 112 KiB resident after the
/// idle second). The slot is left unloaded and `lowered`, so every free
/// of the class comes back here until the thread allocates it again.
///
/// # Safety
/// `loaded` (null only when the slot is `lowered`; unloaded, rounds
/// accurate) and `prev` (null, full or empty) are this thread's magazines
/// of class `c`; `p` is a live object of class `c`.
#[cold]
#[inline(never)]
unsafe fn wind_down(
    t: &ThreadCache,
    c: usize,
    p: *mut u8,
    loaded: *mut crate::magazine::Magazine,
    prev: *mut crate::magazine::Magazine,
    limit: usize,
) {
    let slot = t.slot(c);
    let cap = slot.capacity(c);
    // SAFETY: the magazines are this thread's (caller), their rounds
    // accurate; draining leaves them empty, which keeps the slot invariant
    // (prev full or empty; loaded rounds 0 <= limit).
    unsafe {
        if !loaded.is_null() {
            heap::drain(c, loaded);
        }
        if !prev.is_null() {
            heap::drain(c, prev);
        }
        if limit < cap && depot(c).full_count() > 0 {
            heap::settle(c, depot(c).take_all());
        }
        // The class is being freed away: small magazines from now on,
        // until the thread frees and allocates it again.
        slot.size.set(MagazineSize::Small);
        if limit == 0 {
            // Every free of the class takes this path until the thread
            // allocates it again; the magazines wait in the depot.
            slot.prev.set(ptr::null_mut());
            for m in [loaded, prev] {
                if !m.is_null() {
                    heap::retire_empty(c, m);
                }
            }
            slot.lowered.set(true);
            return free_direct(c, p);
        }
        let m = if loaded.is_null() {
            heap::empty_magazine(c)
        } else {
            loaded
        };
        if m.is_null() {
            // No memory for a magazine: the slot stays unloaded.
            return free_direct(c, p);
        }
        (*m).rounds = 0;
        let small = slot.capacity(c);
        if limit < small {
            slot.load_limited(m, limit);
        } else {
            slot.load(m, small);
        }
        crate::free_small(c, p)
    }
}

/// Whether the thread may use magazines (setting it up on first use).
#[inline]
fn ready(t: &ThreadCache) -> bool {
    match t.state.get() {
        ThreadState::Active => true,
        ThreadState::New => thread::init(t) == ThreadState::Active,
        ThreadState::Done => false,
    }
}

/// One object straight from the slabs, counted globally.
pub fn allocate_direct(c: usize) -> *mut u8 {
    let (p, _) = heap::take_direct(c);
    if !p.is_null() {
        STATS.add(1, 0, 0, crate::slab::layout(c).size as i64);
    }
    p
}

/// Frees one object straight to its slab, counted globally.
///
/// # Safety
/// `p` must be a live object of class `c`.
pub unsafe fn free_direct(c: usize, p: *mut u8) {
    STATS.add(0, 1, 0, -(crate::slab::layout(c).size as i64));
    // SAFETY: forwarded caller guarantee.
    unsafe { heap::give_direct(c, p) };
}
