//! Thread churn with remote frees, alone in its binary so that the
//! process-wide mapped-bytes counter sees only this test.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::mpsc;
use std::thread;

use heapkit_core::HeapAlloc;
use heapkit_sizeclass::SizeClass;

#[global_allocator]
static GLOBAL: SizeClass = SizeClass::new();

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn fill(p: *mut u8, n: usize, tag: u8) {
    // SAFETY: p has n bytes.
    unsafe { std::ptr::write_bytes(p, tag, n) };
}

fn verify(p: *mut u8, n: usize, tag: u8) {
    // SAFETY: p has n bytes.
    let s = unsafe { std::slice::from_raw_parts(p, n) };
    assert!(s.iter().all(|&b| b == tag), "block corrupted");
}

/// Threads allocate blocks and die while other threads free them; across
/// rounds the memory is reused (mapped bytes stay bounded), and every block
/// keeps its contents until freed.
#[test]
fn remote_frees_and_thread_churn_reuse_memory() {
    // How many abandoned segments still await adoption when a round ends
    // depends on timing, so mapped bytes swing by tens of MiB from round to
    // round (seen: 20-64 MiB) with no trend. Compare against the peak of the
    // first ten rounds, not one sample: without reuse, every round would add
    // its ~12 MiB of blocks, over 200 MiB above that peak by the last round.
    const WARMUP_ROUNDS: u64 = 10;
    const SLACK: u64 = 32 << 20;
    let mut warmup_peak = 0u64;
    for round in 0..30 {
        let (tx, rx) = mpsc::channel::<Vec<(usize, usize, u8)>>();
        let producers: Vec<_> = (0..4)
            .map(|t| {
                let tx = tx.clone();
                thread::spawn(move || {
                    let mut rng = Rng(0x9E37_79B9 + t as u64 * 7 + round);
                    let mut batch = Vec::with_capacity(2000);
                    for _ in 0..2000 {
                        let size = 1 + (rng.next() % 3000) as usize;
                        let tag = (rng.next() & 0xff) as u8;
                        let layout = Layout::from_size_align(size, 8).unwrap();
                        // SAFETY: non-zero size.
                        let p = unsafe { GLOBAL.alloc(layout) };
                        assert!(!p.is_null());
                        fill(p, size, tag);
                        batch.push((p as usize, size, tag));
                    }
                    tx.send(batch).unwrap();
                    // The producer exits now: its segments get abandoned.
                })
            })
            .collect();
        drop(tx);
        let consumers: Vec<_> = rx
            .into_iter()
            .map(|batch| {
                thread::spawn(move || {
                    for (p, size, tag) in batch {
                        verify(p as *mut u8, size, tag);
                        let layout = Layout::from_size_align(size, 8).unwrap();
                        // SAFETY: allocated above with this layout.
                        unsafe { GLOBAL.dealloc(p as *mut u8, layout) };
                    }
                })
            })
            .collect();
        for h in producers.into_iter().chain(consumers) {
            h.join().unwrap();
        }
        let mapped = GLOBAL.stats().mapped_bytes;
        if round < WARMUP_ROUNDS {
            warmup_peak = warmup_peak.max(mapped);
        } else {
            assert!(
                mapped <= warmup_peak + SLACK,
                "mapped bytes grow across rounds: {mapped} in round {round}, \
                 peak of the first {WARMUP_ROUNDS} rounds {warmup_peak}"
            );
        }
    }
}
