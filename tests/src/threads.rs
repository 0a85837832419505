//! Threads: blocks freed by a thread other than the one that allocated them,
//! and hundreds of short-lived threads that leave memory behind, free memory
//! from their TLS destructors, and allocate there too.

use std::alloc::GlobalAlloc;
use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;

use crate::pattern::{fill_slice, verify_slice, XorShift};
use crate::{Block, Volume};

/// A block size drawn from a mix that reaches every range: mostly small,
/// some pages, a few near and beyond 256 KiB.
pub(crate) fn mixed_size(rng: &mut XorShift, allow_large: bool) -> usize {
    match rng.below(1000) {
        0..=649 => rng.range(1, 256),
        650..=899 => rng.range(257, 8 * 1024),
        900..=989 => rng.range(8 * 1024 + 1, 200 * 1024),
        _ if allow_large => rng.range(200 * 1024, 2 << 20),
        _ => rng.range(1, 64),
    }
}

enum Msg {
    Boxed(Box<[u8]>, u64),
    Raw(Block),
}

/// Producer threads allocate patterned blocks (raw through `a`, and boxed
/// slices through std) and send them over a channel; consumer threads verify
/// and free them. Every block is freed by a thread that did not allocate it.
pub fn cross_thread_frees<A: GlobalAlloc + Sync>(a: &A, v: Volume) {
    let producers = 3;
    let consumers = 2;
    let per_producer = v.pick(25_000, 4_000);
    let (tx, rx) = mpsc::sync_channel::<Msg>(256);
    let rx = Mutex::new(rx);
    let freed = AtomicUsize::new(0);
    thread::scope(|s| {
        for p in 0..producers {
            let tx = tx.clone();
            s.spawn(move || {
                let mut rng = XorShift::new(p as u64 + 100);
                for i in 0..per_producer {
                    let size = mixed_size(&mut rng, v == Volume::Full);
                    let seed = rng.next();
                    let msg = if i % 2 == 0 {
                        let mut b = vec![0u8; size].into_boxed_slice();
                        fill_slice(&mut b, seed);
                        Msg::Boxed(b, seed)
                    } else {
                        let align = 1 << rng.below(8);
                        Msg::Raw(Block::new(a, size, align, seed, i % 7 == 0, "producer"))
                    };
                    tx.send(msg).expect("consumers alive");
                }
            });
        }
        drop(tx);
        for _ in 0..consumers {
            s.spawn(|| loop {
                let msg = rx.lock().expect("receiver lock").recv();
                match msg {
                    Ok(Msg::Boxed(b, seed)) => {
                        verify_slice(&b, seed, "boxed slice from another thread")
                    }
                    // SAFETY: the producer allocated it from a and handed it
                    // over; it is freed exactly once, here.
                    Ok(Msg::Raw(b)) => unsafe { b.free(a, "raw block from another thread") },
                    Err(_) => break,
                }
                freed.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    assert_eq!(
        freed.into_inner(),
        producers * per_producer,
        "every block freed"
    );
}

static TLS_FAILURES: AtomicUsize = AtomicUsize::new(0);
static TLS_DESTRUCTORS_RUN: AtomicUsize = AtomicUsize::new(0);

/// Blocks a thread parks in TLS; its destructor runs at thread exit, possibly
/// after the allocator's own thread-exit hook, and checks, frees and
/// allocates.
struct HeldUntilExit(Vec<(Box<[u8]>, u64)>);

impl Drop for HeldUntilExit {
    fn drop(&mut self) {
        // A panic in a TLS destructor aborts; count failures instead.
        let mut ok = true;
        for (b, seed) in self.0.drain(..) {
            // SAFETY: b is readable for its length.
            ok &= unsafe { crate::pattern::check(b.as_ptr(), b.len(), seed) }.is_ok();
        }
        let mut late: Vec<Vec<u8>> = (1..40).map(|i| vec![i as u8; i * 37]).collect();
        late.push(vec![7u8; 300 * 1024]);
        for (i, l) in late.iter().enumerate() {
            let want = if i == 39 { 7 } else { i as u8 + 1 };
            ok &= l.iter().all(|&x| x == want);
        }
        if !ok {
            TLS_FAILURES.fetch_add(1, Ordering::Relaxed);
        }
        TLS_DESTRUCTORS_RUN.fetch_add(1, Ordering::Relaxed);
    }
}

thread_local! {
    static HELD: RefCell<HeldUntilExit> = const { RefCell::new(HeldUntilExit(Vec::new())) };
}

/// Hundreds of threads, a few at a time: each allocates a mix of blocks
/// (through `a` and through std), frees two thirds in random order, parks
/// some in a TLS value whose destructor frees them and allocates more at
/// thread exit, and returns the rest to the main thread, which resizes a
/// third of them and frees them all while the next wave runs.
pub fn many_short_lived<A: GlobalAlloc + Sync>(a: &A, v: Volume) {
    let waves = v.pick(60, 20);
    let per_wave = 6;
    let per_thread = v.pick(300, 80);
    let before = TLS_DESTRUCTORS_RUN.load(Ordering::Relaxed);
    let failures_before = TLS_FAILURES.load(Ordering::Relaxed);
    let mut leftovers: Vec<Block> = Vec::new();
    let mut left_boxes: Vec<(Box<[u8]>, u64)> = Vec::new();
    for wave in 0..waves {
        let returned = thread::scope(|s| {
            let handles: Vec<_> = (0..per_wave)
                .map(|t| {
                    s.spawn(move || {
                        let mut rng = XorShift::new((wave * per_wave + t) as u64);
                        let mut mine: Vec<Block> = (0..per_thread)
                            .map(|_| {
                                let size = mixed_size(&mut rng, false);
                                let align = 1 << rng.below(7);
                                Block::new(
                                    a,
                                    size,
                                    align,
                                    rng.next(),
                                    rng.chance(10),
                                    "short-lived thread",
                                )
                            })
                            .collect();
                        let mut boxes: Vec<(Box<[u8]>, u64)> = (0..per_thread / 4)
                            .map(|_| {
                                let mut b =
                                    vec![0u8; mixed_size(&mut rng, false)].into_boxed_slice();
                                let seed = rng.next();
                                fill_slice(&mut b, seed);
                                (b, seed)
                            })
                            .collect();
                        // Free two thirds in random order.
                        for _ in 0..per_thread * 2 / 3 {
                            let i = rng.below(mine.len());
                            // SAFETY: allocated from a above, freed once.
                            unsafe { mine.swap_remove(i).free(a, "short-lived thread, own block") };
                        }
                        let parked = boxes.split_off(boxes.len() / 2);
                        HELD.with(|h| h.borrow_mut().0.extend(parked));
                        (mine, boxes)
                    })
                })
                .collect();
            // Free the previous wave's leftovers while this wave runs,
            // resizing every third first (realloc of a block whose
            // allocating thread has exited).
            for (i, b) in leftovers.drain(..).enumerate() {
                let b = if i % 3 == 0 {
                    let new_size = if i % 2 == 0 {
                        b.size * 2 + 1
                    } else {
                        b.size / 2 + 1
                    };
                    // SAFETY: returned by a finished thread; allocated from a.
                    unsafe { b.realloc(a, new_size, "realloc of a block left by an exited thread") }
                } else {
                    b
                };
                // SAFETY: returned by a finished thread; allocated from a.
                unsafe { b.free(a, "block left by an exited thread") };
            }
            for (b, seed) in left_boxes.drain(..) {
                verify_slice(&b, seed, "boxed slice left by an exited thread");
            }
            handles
                .into_iter()
                .map(|h| h.join().expect("short-lived thread panicked"))
                .collect::<Vec<_>>()
        });
        for (mine, boxes) in returned {
            leftovers.extend(mine);
            left_boxes.extend(boxes);
        }
    }
    for b in leftovers {
        // SAFETY: as above.
        unsafe { b.free(a, "block left by an exited thread") };
    }
    for (b, seed) in left_boxes {
        verify_slice(&b, seed, "boxed slice left by an exited thread");
    }
    assert_eq!(
        TLS_FAILURES.load(Ordering::Relaxed),
        failures_before,
        "a TLS destructor found a corrupted block or a bad late allocation"
    );
    assert!(
        TLS_DESTRUCTORS_RUN.load(Ordering::Relaxed) >= before + waves * per_wave,
        "TLS destructors did not run"
    );
}
