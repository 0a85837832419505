//! Randomized operation sequences checked against a model.
//!
//! A seeded xorshift drives alloc / alloc_zeroed / free / realloc actions on
//! a model of live blocks. Every block holds the pattern of its seed; it is
//! verified before every free and realloc, the kept prefix after every
//! realloc, and every new block is checked against the address ranges of all
//! live blocks (an interval map), so a block handed out twice is caught at
//! once. The multi-thread variant shares one interval map and passes blocks
//! between threads, so blocks are freed and realloc'd by threads that did
//! not allocate them.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use crate::pattern::{assert_aligned, check_range, fill_range, first_nonzero, XorShift};
use crate::{Block, Volume};

/// Live address ranges: start -> end.
#[derive(Default)]
struct Ranges(BTreeMap<usize, usize>);

impl Ranges {
    #[track_caller]
    fn insert(&mut self, b: &Block, op: &str) {
        let (start, end) = (b.addr, b.addr + b.size);
        if let Some((&s, &e)) = self.0.range(..=start).next_back() {
            assert!(
                e <= start,
                "{op}: new block [{start:#x}, {end:#x}) overlaps live [{s:#x}, {e:#x})"
            );
        }
        if let Some((&s, &e)) = self.0.range(start..).next() {
            assert!(
                end <= s,
                "{op}: new block [{start:#x}, {end:#x}) overlaps live [{s:#x}, {e:#x})"
            );
        }
        self.0.insert(start, end);
    }

    fn remove(&mut self, b: &Block) {
        let removed = self.0.remove(&b.addr);
        assert_eq!(
            removed,
            Some(b.addr + b.size),
            "model out of sync for {:#x}",
            b.addr
        );
    }
}

fn random_size(rng: &mut XorShift, v: Volume) -> usize {
    match rng.below(1000) {
        0..=599 => rng.range(1, 128),
        600..=849 => rng.range(129, 4096),
        850..=969 => rng.range(4097, 65536),
        970..=994 => rng.range(65537, 300 * 1024),
        _ if v == Volume::Full => rng.range(300 * 1024, 4 << 20),
        _ => rng.range(300 * 1024, 1 << 20),
    }
}

fn random_align(rng: &mut XorShift) -> usize {
    match rng.below(100) {
        0..=84 => 1 << rng.below(5),
        85..=96 => 1 << rng.range(5, 12),
        _ => 1 << rng.range(13, 20),
    }
}

fn lock(m: &Mutex<Ranges>) -> MutexGuard<'_, Ranges> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One thread's walk. `ranges` is this thread's or shared; `exchange`, when
/// given, is where blocks are passed to other threads.
fn walk<A: GlobalAlloc>(
    a: &A,
    v: Volume,
    seed: u64,
    ops: usize,
    ranges: &Mutex<Ranges>,
    exchange: Option<&Mutex<Vec<Block>>>,
) {
    let mut rng = XorShift::new(seed);
    let cap = v.pick(1500, 400);
    let mut live: Vec<Block> = Vec::new();
    for op in 0..ops {
        if op % 8192 == 8191 {
            // Let time-based decay purge free pages while blocks stay live.
            thread::sleep(Duration::from_millis(25));
        }
        let roll = rng.below(100);
        let must_free = live.len() >= cap;
        if !must_free && (live.is_empty() || roll < 40) {
            // alloc or alloc_zeroed
            let size = random_size(&mut rng, v);
            let align = random_align(&mut rng);
            let zeroed = rng.chance(25);
            let what = format!(
                "op {op}: alloc{} {size} align {align}",
                if zeroed { "_zeroed" } else { "" }
            );
            let b = Block::new(a, size, align, rng.next(), zeroed, &what);
            lock(ranges).insert(&b, &what);
            live.push(b);
        } else if must_free || roll < 70 {
            let i = rng.below(live.len());
            let b = live.swap_remove(i);
            if let (Some(ex), true) = (exchange, rng.chance(20)) {
                // Hand it to another thread, which will free or realloc it.
                ex.lock().unwrap_or_else(|e| e.into_inner()).push(b);
                continue;
            }
            lock(ranges).remove(&b);
            let what = format!("op {op}: free of {} bytes align {}", b.size, b.align);
            // SAFETY: b is live, allocated from a; freed once.
            unsafe { b.free(a, &what) };
        } else if roll < 95 {
            let i = rng.below(live.len());
            let b = live[i];
            let new_size = if rng.chance(50) {
                random_size(&mut rng, v)
            } else {
                // Near the old size: the in-place paths.
                (b.size + rng.range(0, 64)).saturating_sub(32).max(1)
            };
            b.verify(&format!("op {op}: before realloc of {} bytes", b.size));
            lock(ranges).remove(&b);
            // SAFETY: b is live with its layout; new_size is small.
            let p = unsafe { a.realloc(b.ptr(), b.layout(), new_size) };
            let what = format!(
                "op {op}: realloc {} -> {new_size} align {}",
                b.size, b.align
            );
            assert!(!p.is_null(), "{what}: returned null");
            assert_aligned(p, b.align, &what);
            let kept = b.size.min(new_size);
            // SAFETY: p is live for new_size >= kept bytes.
            if let Err(m) = unsafe { check_range(p, 0, kept, b.seed) } {
                panic!("{what}: {:p} -> {p:p} lost contents: {m}", b.ptr());
            }
            if new_size > b.size {
                // SAFETY: p is live for new_size bytes.
                unsafe { fill_range(p, b.size, new_size, b.seed) };
            }
            let nb = Block {
                addr: p as usize,
                size: new_size,
                ..b
            };
            lock(ranges).insert(&nb, &what);
            live[i] = nb;
        } else if let Some(ex) = exchange {
            // Take a block another thread allocated.
            if let Some(b) = ex.lock().unwrap_or_else(|e| e.into_inner()).pop() {
                live.push(b);
            }
        } else {
            // Single thread: a zeroed block that is freed at once (checks
            // alloc_zeroed on just-freed memory).
            let size = random_size(&mut rng, v);
            let layout = Layout::from_size_align(size, 16).expect("valid");
            // SAFETY: non-zero size.
            let p = unsafe { a.alloc_zeroed(layout) };
            assert!(!p.is_null(), "op {op}: alloc_zeroed({size}) returned null");
            // SAFETY: p is live for size bytes.
            if let Some(at) = unsafe { first_nonzero(p, size) } {
                panic!("op {op}: alloc_zeroed({size}) = {p:p} has a non-zero byte at {at}");
            }
            // SAFETY: p is live with layout.
            unsafe { a.dealloc(p, layout) };
        }
    }
    for b in live {
        lock(ranges).remove(&b);
        // SAFETY: b is live, allocated from a; freed once.
        unsafe { b.free(a, "final free") };
    }
}

/// Several seeded walks on one thread.
pub fn single_thread<A: GlobalAlloc>(a: &A, v: Volume) {
    for seed in 0..v.pick(4, 2) as u64 {
        let ranges = Mutex::new(Ranges::default());
        walk(a, v, seed, v.pick(60_000, 10_000), &ranges, None);
        assert!(ranges.into_inner().expect("not poisoned").0.is_empty());
    }
}

/// Six threads walking at once, sharing the interval map and passing blocks
/// to each other through an exchange; what is left in the exchange is freed
/// by the main thread.
pub fn multi_thread<A: GlobalAlloc + Sync>(a: &A, v: Volume) {
    let ranges = Mutex::new(Ranges::default());
    let exchange: Mutex<Vec<Block>> = Mutex::new(Vec::new());
    let ops = v.pick(35_000, 6_000);
    thread::scope(|s| {
        let walkers: Vec<_> = (0..6u64)
            .map(|t| {
                let (ranges, exchange) = (&ranges, &exchange);
                s.spawn(move || walk(a, v, 1000 + t, ops, ranges, Some(exchange)))
            })
            .collect();
        for w in walkers {
            if let Err(payload) = w.join() {
                // Report the walker's own message, not "a scoped thread panicked".
                std::panic::resume_unwind(payload);
            }
        }
    });
    let mut ranges = ranges.into_inner().unwrap_or_else(|e| e.into_inner());
    for b in exchange.into_inner().unwrap_or_else(|e| e.into_inner()) {
        ranges.remove(&b);
        // SAFETY: b is live, allocated from a by a walker; freed once.
        unsafe { b.free(a, "block left in the exchange") };
    }
    assert!(
        ranges.0.is_empty(),
        "model lost track of {} blocks",
        ranges.0.len()
    );
}
