//! Short-lived threads, one after another (a thread per request, a build
//! tool's workers): each takes the segment the one before it left in the
//! reserve, uses a page of it and exits. Its exit must not purge what the
//! next thread will take resident again. Before, a segment taken from the
//! reserve had every page counted dirty, so each exit purged 48 of them,
//! one `madvise` each (a C program creating 20,000 such threads spent 15 us
//! per thread more under sizeclass than under glibc). One test in its own
//! process: the reserve and the OS counters are process-wide.

use std::alloc::Layout;
use std::thread;

use heapkit_core::os::os_counters;
use heapkit_sizeclass::{check_invariants_of, Fast, HeapAlloc, SizeClass};

/// One short-lived thread: a block, written, freed, then exit.
fn one_thread() {
    thread::spawn(|| {
        let a = SizeClass::fast();
        let layout = Layout::from_size_align(64, 16).unwrap();
        let p = a.allocate(layout);
        assert!(!p.is_null());
        // SAFETY: a live block of 64 bytes, freed once.
        unsafe {
            p.write_bytes(0x5A, 64);
            a.free(p);
        }
        check_invariants_of::<Fast>().expect("heap invariants");
    })
    .join()
    .unwrap();
}

#[test]
fn short_lived_threads_do_not_purge_what_the_next_one_reuses() {
    // The first threads set the reserve's segment up (its pages get dirty
    // and the exit keeps a megabyte of them resident).
    for _ in 0..4 {
        one_thread();
    }
    let before = os_counters().purges;
    const THREADS: usize = 40;
    for _ in 0..THREADS {
        one_thread();
    }
    let purges = os_counters().purges - before;
    // None is needed; a slow machine may see the reserve's decay purge a
    // segment once in a while (every purge delay, 20 ms), never one or
    // more per thread.
    assert!(
        purges < THREADS / 4,
        "{purges} purges for {THREADS} threads"
    );

    // What the exits keep resident is not zero: a thread that takes those
    // segments, for pages of any kind, must still zero what it hands out
    // zeroed (the pages' dirty flags carry over from the old kind's).
    for (fill, zeroed) in [(1024, 100 << 10), (100 << 10, 1024), (1024, 1024)] {
        thread::spawn(move || write_all_then_free(fill))
            .join()
            .unwrap();
        thread::spawn(move || check_zeroed(zeroed)).join().unwrap();
    }
}

/// Fills 4 MiB of blocks of `size` bytes with a pattern and frees them.
fn write_all_then_free(size: usize) {
    let a = SizeClass::fast();
    let layout = Layout::from_size_align(size, 16).unwrap();
    let blocks: Vec<*mut u8> = (0..(4 << 20) / size).map(|_| a.allocate(layout)).collect();
    for &p in &blocks {
        assert!(!p.is_null());
        // SAFETY: a live block of `size` bytes.
        unsafe { p.write_bytes(0xA5, size) };
    }
    for p in blocks {
        // SAFETY: live blocks of `a`, freed once.
        unsafe { a.free(p) };
    }
}

/// Allocates 4 MiB of zeroed blocks of `size` bytes and checks them.
fn check_zeroed(size: usize) {
    let a = SizeClass::fast();
    let layout = Layout::from_size_align(size, 16).unwrap();
    let blocks: Vec<*mut u8> = (0..(4 << 20) / size)
        .map(|_| a.allocate_zeroed(layout))
        .collect();
    for &p in &blocks {
        assert!(!p.is_null());
        // SAFETY: a live block of `size` bytes, read only.
        let bytes = unsafe { std::slice::from_raw_parts(p, size) };
        assert!(
            bytes.iter().all(|&b| b == 0),
            "a zeroed block of {size} bytes is not zero"
        );
    }
    for p in blocks {
        // SAFETY: live blocks of `a`, freed once.
        unsafe { a.free(p) };
    }
    check_invariants_of::<Fast>().expect("heap invariants");
}
