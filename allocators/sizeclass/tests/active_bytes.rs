//! `stats().active_bytes`: the memory holding blocks (carved blocks of pages
//! in use, live large mappings). Alone in its binary: the count is
//! process-wide.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::{mpsc, Mutex};
use std::thread;

use heapkit_core::HeapAlloc;
use heapkit_sizeclass::SizeClass;

#[global_allocator]
static GLOBAL: SizeClass = SizeClass::new();

const MIB: u64 = 1 << 20;

/// The tests of this binary run one at a time: each reads the process's
/// counts.
static SERIAL: Mutex<()> = Mutex::new(());

struct Block(*mut u8, Layout);
// SAFETY: a block is plain heap memory handed between threads.
unsafe impl Send for Block {}

#[test]
fn active_bytes_follow_the_pages_not_the_live_blocks() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let layout = Layout::from_size_align(64, 8).unwrap();
    const N: usize = 200_000;
    let mut blocks: Vec<*mut u8> = Vec::with_capacity(N);
    let base = GLOBAL.stats();
    for _ in 0..N {
        // SAFETY: a non-zero layout.
        let p = unsafe { GLOBAL.alloc(layout) };
        assert!(!p.is_null());
        blocks.push(p);
    }
    let full = GLOBAL.stats();
    let added = (N * 64) as u64;
    assert!(full.live_bytes >= base.live_bytes + added);
    assert!(full.active_bytes >= full.live_bytes);
    // (Hardened, a 64-byte request takes an 80-byte block.)
    assert!(full.active_bytes <= base.active_bytes + added * 3 / 2 + MIB);
    // Every other block freed: half the live bytes, the same pages.
    for p in blocks.iter().step_by(2) {
        // SAFETY: allocated above with `layout`, freed once.
        unsafe { GLOBAL.dealloc(*p, layout) };
    }
    let half = GLOBAL.stats();
    assert!(half.live_bytes + added / 2 <= full.live_bytes + MIB);
    assert!(
        half.active_bytes + MIB >= full.active_bytes,
        "{half:?}\n{full:?}"
    );
    // The rest freed, and the memory given back.
    for p in blocks.iter().skip(1).step_by(2) {
        // SAFETY: as above.
        unsafe { GLOBAL.dealloc(*p, layout) };
    }
    GLOBAL.trim();
    let end = GLOBAL.stats();
    assert!(
        end.active_bytes <= base.active_bytes + MIB,
        "{end:?}\n{base:?}"
    );
    // A large block counts its mapping while it lives.
    let big = Layout::from_size_align(8 << 20, 8).unwrap();
    // SAFETY: a non-zero layout.
    let p = unsafe { GLOBAL.alloc(big) };
    assert!(!p.is_null());
    assert!(GLOBAL.stats().active_bytes >= end.active_bytes + (8 << 20));
    // SAFETY: allocated just above.
    unsafe { GLOBAL.dealloc(p, big) };
    assert!(GLOBAL.stats().active_bytes <= end.active_bytes + MIB);
}

/// Threads that allocate, free half their blocks themselves and hand the
/// other half to this thread, then exit: once everything is freed and the
/// memory given back, the count is back where it started (no page's
/// carvings counted without their give-back, through remote frees,
/// abandoned segments and their reclaim).
#[test]
fn active_bytes_return_after_threads_and_remote_frees() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Set up this thread's heap and the channel first.
    let (tx, rx) = mpsc::channel::<Block>();
    let warm: Vec<u8> = vec![1; 4096];
    drop(warm);
    GLOBAL.trim();
    let base = GLOBAL.stats();
    let workers: Vec<_> = (0..4u64)
        .map(|t| {
            let tx = tx.clone();
            thread::spawn(move || {
                let mut seed = 0x9e37_79b9_7f4a_7c15 ^ t;
                for i in 0..40_000usize {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let size = 16 + (seed % 2048) as usize;
                    let layout = Layout::from_size_align(size, 8).unwrap();
                    // SAFETY: a non-zero layout.
                    let p = unsafe { GLOBAL.alloc(layout) };
                    assert!(!p.is_null());
                    if i % 2 == 0 {
                        tx.send(Block(p, layout)).unwrap();
                    } else {
                        // SAFETY: allocated just above.
                        unsafe { GLOBAL.dealloc(p, layout) };
                    }
                }
            })
        })
        .collect();
    drop(tx);
    for Block(p, layout) in rx {
        // SAFETY: allocated by a worker with `layout`, sent once.
        unsafe { GLOBAL.dealloc(p, layout) };
    }
    for w in workers {
        w.join().unwrap();
    }
    GLOBAL.trim();
    let end = GLOBAL.stats();
    assert!(
        end.active_bytes <= base.active_bytes + 2 * MIB,
        "{end:?}\n{base:?}"
    );
}
