//! The derived counters are exact: frees and live bytes are computed from
//! block movements, not counted per free, so check them against a model,
//! including frees made by another thread.

use core::alloc::Layout;

use heapkit_core::HeapAlloc;
use heapkit_pool::Pool;

// The model counts class sizes: the default mode (hardened classes hold a canary too).
static POOL: Pool<heapkit_pool::Fast> = Pool::fast();

#[test]
fn counts_match_a_model_across_threads() {
    let mut blocks = Vec::new();
    let mut live = 0u64;
    for i in 0..20_000usize {
        let layout = Layout::from_size_align(1 + (i * 37) % 5000, 8).unwrap();
        let p = if i % 3 == 0 {
            POOL.allocate_zeroed(layout)
        } else {
            POOL.allocate(layout)
        };
        // SAFETY: p is live.
        live += unsafe { POOL.usable_size(p) } as u64;
        blocks.push(p as usize);
    }
    let s = POOL.stats();
    assert_eq!((s.allocs, s.frees, s.live_bytes), (20_000, 0, live), "{s}");

    // Free half here (through the cache, the spare and the depot).
    for &p in &blocks[..10_000] {
        // SAFETY: p is live.
        unsafe {
            live -= POOL.usable_size(p as *mut u8) as u64;
            POOL.free(p as *mut u8);
        }
    }
    let s = POOL.stats();
    assert_eq!(
        (s.allocs, s.frees, s.live_bytes),
        (20_000, 10_000, live),
        "{s}"
    );

    // The rest is freed by a thread that then exits.
    let rest: Vec<usize> = blocks[10_000..].to_vec();
    std::thread::spawn(move || {
        for p in rest {
            // SAFETY: p is live and handed to this thread.
            unsafe { POOL.free(p as *mut u8) };
        }
    })
    .join()
    .unwrap();
    let s = POOL.stats();
    assert_eq!(
        (s.allocs, s.frees, s.live_bytes),
        (20_000, 20_000, 0),
        "{s}"
    );
    assert!(s.peak_live_bytes >= 20_000 * 16);
}
