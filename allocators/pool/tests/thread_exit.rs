//! A thread that exits hands its cached blocks back, and a thread that keeps
//! allocating and freeing after its exit hook ran (from a later TLS
//! destructor) goes through the depots and loses nothing.

use core::alloc::Layout;
use core::ffi::c_void;

use heapkit_core::HeapAlloc;
use heapkit_pool::Pool;

static POOL: Pool = Pool::new();

fn churn(rounds: usize) {
    let mut blocks = Vec::new();
    for i in 0..rounds {
        let layout = Layout::from_size_align(16 + (i % 40) * 24, 8).unwrap();
        blocks.push((POOL.allocate(layout), layout));
    }
    for (p, layout) in blocks {
        assert!(!p.is_null());
        // SAFETY: p is live with layout.
        unsafe { POOL.deallocate(p, layout) };
    }
}

/// Runs after the pool's own exit hook (a key created later is destroyed
/// later by glibc): allocates and frees in the "exited" state.
unsafe extern "C" fn late_destructor(_: *mut c_void) {
    churn(300);
    let layout = Layout::from_size_align(64, 8).unwrap();
    let p = POOL.allocate_zeroed(layout);
    // SAFETY: p is live with 64 bytes.
    unsafe {
        assert!(core::slice::from_raw_parts(p, 64).iter().all(|&b| b == 0));
        POOL.free(p);
    }
}

#[test]
fn exiting_threads_return_their_blocks() {
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                // The pool's exit key is created by this thread's first slow
                // path; ours, created after it, runs after it.
                churn(5000);
                let mut key: libc::pthread_key_t = 0;
                // SAFETY: valid out-pointer and destructor.
                unsafe {
                    assert_eq!(libc::pthread_key_create(&mut key, Some(late_destructor)), 0);
                    libc::pthread_setspecific(key, std::ptr::dangling::<c_void>());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Every block was freed into some thread's cache; the threads are gone,
    // so only their exit hooks (and the exited-state paths) can have put the
    // blocks where trim finds them.
    assert!(POOL.chunk_bytes() > 0);
    POOL.trim();
    assert_eq!(POOL.chunk_bytes(), 0, "an exited thread kept blocks");
    let s = POOL.stats();
    assert_eq!(s.allocs, s.frees, "{s}");
    assert_eq!(s.live_bytes, 0, "{s}");
}
