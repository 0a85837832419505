//! fork() while other threads allocate: the child must be able to allocate,
//! free blocks that threads absent in the child allocated, and trim.

use core::alloc::Layout;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use heapkit_core::HeapAlloc;
use heapkit_pool::Pool;

static POOL: Pool = Pool::new();

/// Runs in the forked child: only async-signal-safe-ish work through the
/// pool (no std allocation: std uses the system allocator here anyway).
fn child_work(foreign: &[usize]) -> i32 {
    for &addr in foreign {
        // SAFETY: allocated by a parent thread, live, and owned by the child
        // copy of the address space.
        unsafe { POOL.free(addr as *mut u8) };
    }
    for round in 0..50 {
        let mut blocks = [core::ptr::null_mut::<u8>(); 64];
        for (i, b) in blocks.iter_mut().enumerate() {
            let layout = Layout::from_size_align(8 + i * 40 + round, 8).unwrap();
            *b = POOL.allocate(layout);
            if b.is_null() {
                return 2;
            }
            // SAFETY: fresh block of at least 8 bytes.
            unsafe { b.cast::<u64>().write(i as u64) };
        }
        for (i, &b) in blocks.iter().enumerate() {
            // SAFETY: live blocks written above.
            unsafe {
                if b.cast::<u64>().read() != i as u64 {
                    return 3;
                }
                POOL.free(b);
            }
        }
    }
    POOL.trim();
    0
}

#[test]
fn child_of_a_busy_parent_allocates_and_frees() {
    let stop = AtomicBool::new(false);
    let handoff: Mutex<Vec<usize>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..3 {
            let (stop, handoff) = (&stop, &handoff);
            s.spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let layout = Layout::from_size_align(16 + (i * 7 + t) % 3000, 16).unwrap();
                    let p = POOL.allocate(layout);
                    assert!(!p.is_null());
                    if i.is_multiple_of(50) && handoff.lock().unwrap().len() < 1000 {
                        handoff.lock().unwrap().push(p as usize);
                    } else {
                        // SAFETY: live block.
                        unsafe { POOL.free(p) };
                    }
                    if i.is_multiple_of(10_000) {
                        POOL.trim();
                    }
                    i += 1;
                }
            });
        }
        for _ in 0..20 {
            std::thread::sleep(std::time::Duration::from_millis(5));
            let foreign: Vec<usize> = std::mem::take(&mut *handoff.lock().unwrap());
            // SAFETY: fork in a test; the child only runs child_work and _exit.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0);
            if pid == 0 {
                let code = child_work(&foreign);
                // SAFETY: leave the child without running the parent's exit
                // handlers or test harness.
                unsafe { libc::_exit(code) };
            }
            let mut status = 0;
            // SAFETY: pid is our child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            assert!(libc::WIFEXITED(status), "child crashed: status {status}");
            assert_eq!(libc::WEXITSTATUS(status), 0);
            for addr in foreign {
                // SAFETY: still live in the parent.
                unsafe { POOL.free(addr as *mut u8) };
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
}
