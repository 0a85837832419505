use super::*;
use std::cell::Cell;
use std::vec::Vec;

std::thread_local! {
    /// This thread's walks that joined the previous one: (frames
    /// reused, joins cut short by a changed slot).
    static REJOINS: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

std::thread_local! {
    /// This thread's joins that moved the held steps (out of room).
    static RECENTRES: Cell<usize> = const { Cell::new(0) };
}

pub(super) fn note_recentre() {
    RECENTRES.with(|r| r.set(r.get() + 1));
}

pub(super) fn note_rejoin(reused: usize, cut_short: bool) {
    REJOINS.with(|r| {
        let (n, cut) = r.get();
        r.set((n + reused, cut + cut_short as usize));
    });
}

#[inline(never)]
fn deep(levels: usize, frames: &mut [usize], cache: &mut UnwindCache) -> usize {
    if levels == 0 {
        return backtrace_cached(frames, cache);
    }
    let n = deep(levels - 1, frames, cache);
    core::hint::black_box(n)
}

#[test]
fn agrees_with_libgcc() {
    let cache = super::super::map(UnwindCache::BYTES).cast::<UnwindCache>();
    assert!(!cache.is_null());
    // SAFETY: a fresh zeroed mapping is an empty cache.
    let cache = unsafe { &mut *cache };
    for round in 0..2 {
        let mut fast = [0usize; 64];
        let mut slow = [0usize; 64];
        let n = deep(5, &mut fast, cache);
        let m = {
            #[inline(never)]
            fn reference(levels: usize, frames: &mut [usize]) -> usize {
                if levels == 0 {
                    return super::super::backtrace(frames);
                }
                let n = reference(levels - 1, frames);
                core::hint::black_box(n)
            }
            reference(5, &mut slow)
        };
        assert!(n >= 7, "round {round}: only {n} frames");
        // The innermost frames differ (different functions); from the
        // test function's caller outwards both walks see the same
        // return addresses.
        let tail = 3;
        assert_eq!(
            fast[n - tail..n],
            slow[m - tail..m],
            "round {round}: {:x?} vs {:x?}",
            &fast[..n],
            &slow[..m]
        );
    }
}
/// Two walks from the same frame, one with the thread's previous walk
/// remembered and one without (the same rules, no previous walk).
#[inline(never)]
fn walk_twice(
    levels: usize,
    warm: &mut UnwindCache,
    cold: &mut UnwindCache,
) -> (Vec<usize>, Vec<usize>) {
    if levels == 0 {
        let mut a = [0usize; 48];
        let mut b = [0usize; 48];
        let n = backtrace_cached(&mut a, warm);
        cold.last.len = 0;
        let m = backtrace_cached(&mut b, cold);
        // Frame 0 is the return address into this function, different
        // for the two calls.
        return (a[1..n].to_vec(), b[1..m].to_vec());
    }
    let r = walk_twice(levels - 1, warm, cold);
    core::hint::black_box(r)
}

/// The same through one of two call sites of one frame: walks from
/// the two share their stack addresses and every state up to this
/// frame's, but not the return address into it, which the remembered
/// walk must notice.
#[inline(never)]
fn walk_twice_from(
    site: bool,
    levels: usize,
    warm: &mut UnwindCache,
    cold: &mut UnwindCache,
) -> (Vec<usize>, Vec<usize>) {
    // Different work after each call keeps the two call sites apart.
    let r = if core::hint::black_box(site) {
        let r = walk_twice(levels, warm, cold);
        core::hint::black_box(1);
        r
    } else {
        let r = walk_twice(levels, warm, cold);
        core::hint::black_box(2);
        core::hint::black_box(3);
        r
    };
    core::hint::black_box(r)
}

/// A walk from a state an outer function took starts at that
/// function's caller: the frames between are skipped, the rest are the
/// full walk's. Twice, so the second walk reuses the first's steps.
#[test]
fn a_walk_from_an_outer_frame_skips_the_frames_inside_it() {
    #[inline(never)]
    fn outer(cache: &mut UnwindCache) -> (Vec<usize>, Vec<usize>) {
        let start = FrameState::here();
        let r = inner(start, cache);
        core::hint::black_box(r)
    }
    #[inline(never)]
    fn inner(start: FrameState, cache: &mut UnwindCache) -> (Vec<usize>, Vec<usize>) {
        let mut full = [0usize; 64];
        let n = backtrace_cached(&mut full, cache);
        let mut from = [0usize; 64];
        // SAFETY: `start` was taken by our caller, which is still live.
        let m = unsafe { backtrace_from(start, &mut from, cache) };
        core::hint::black_box((full[..n].to_vec(), from[..m].to_vec()))
    }
    let cache = super::super::map(UnwindCache::BYTES).cast::<UnwindCache>();
    assert!(!cache.is_null());
    // SAFETY: a fresh zeroed mapping is an empty cache.
    let cache = unsafe { &mut *cache };
    for round in 0..2 {
        let (full, from) = outer(cache);
        // full: backtrace_cached's return into inner, inner's into
        // outer, outer's into this test, ...; from: outer's first.
        assert!(from.len() >= 3, "round {round}: {from:x?}");
        assert_eq!(full[2..], from[..], "round {round}: {full:x?} vs {from:x?}");
    }
}

#[test]
fn a_remembered_walk_gives_the_same_stack_as_a_fresh_one() {
    let map = || {
        let p = super::super::map(UnwindCache::BYTES).cast::<UnwindCache>();
        assert!(!p.is_null());
        // SAFETY: a fresh zeroed mapping is an empty cache, used only here.
        unsafe { &mut *p }
    };
    let (warm, cold) = (map(), map());
    for round in 0..60 {
        let levels = [3, 3, 7, 1, 7, 12, 0, 12, 4, 4][round % 10];
        let (a, b) = match round % 3 {
            0 => walk_twice(levels, warm, cold),
            site => walk_twice_from(site == 1, levels, warm, cold),
        };
        assert!(a.len() >= levels + 2, "round {round}: {} frames", a.len());
        assert_eq!(a, b, "round {round}, {levels} levels");
    }
    let (reused, cut_short) = REJOINS.with(|r| r.get());
    assert!(reused > 100, "{reused} frames reused");
    assert!(cut_short > 0, "no remembered walk was cut short");
    // Walks far deeper and shallower in turn (after 40 levels, the
    // outer steps a 0-level walk keeps sit 40 slots up), so the kept
    // steps run out of room both ways and are moved.
    let moved = RECENTRES.with(|r| r.get());
    for round in 0..24 {
        let levels = [40, 0, 30, 2][round % 4];
        let (a, b) = walk_twice(levels, warm, cold);
        assert!(
            a.len() >= levels + 2,
            "deep round {round}: {} frames",
            a.len()
        );
        assert_eq!(a, b, "deep round {round}, {levels} levels");
    }
    let moved = RECENTRES.with(|r| r.get()) - moved;
    assert!(moved >= 12, "kept steps moved {moved} times");
}

#[test]
fn a_rule_packs_into_one_word() {
    for (from_rbp, cfa, ra, rbp) in [
        (false, 8, -8, 0),
        (true, 16, -8, -16),
        (false, 1 << 20, -8, -16),
        (false, -24, 32767, -16384),
        (true, i32::MIN as i64, -32768, 16383),
    ] {
        let r = Rule::new(from_rbp, cfa, ra, rbp).unwrap();
        assert!(!r.is_none());
        assert_eq!(
            (
                r.cfa_from_rbp(),
                r.cfa_offset(),
                r.ra_offset(),
                r.rbp_offset()
            ),
            (from_rbp, cfa as isize, ra as isize, rbp as isize)
        );
    }
    assert_eq!(Rule::new(false, 0, -8, 0), None);
    assert_eq!(Rule::new(false, 8, 1 << 15, 0), None);
    assert_eq!(Rule::new(false, 8, -8, 1 << 14), None);
    assert_eq!(Rule::new(false, 1 << 31, -8, 0), None);
}
