//! What a thread leaves behind when it exits: its free pages stay resident
//! for the next thread (no purge, no refault), and the decay or an explicit
//! collection purges them later. One test in its own process: the segment
//! reserve and the abandoned list are process-wide.

use std::alloc::Layout;
use std::thread;

use heapkit_sizeclass::{check_invariants_of, Fast, HeapAlloc, SizeClass};

/// Blocks the test allocates per thread: 96 KiB, two small pages' worth.
const BLOCKS: usize = 96;
const BLOCK: usize = 1024;

/// Whether every OS page under `addrs` is resident (`mincore`).
fn all_resident(addrs: &[usize]) -> bool {
    let page_mask = heapkit_core::os::page_size() - 1;
    addrs.iter().all(|&a| {
        let mut resident = [false];
        // SAFETY: the page is inside a heapkit segment, a mapping that
        // stays mapped (in the reserve, abandoned or in use) for the whole
        // test.
        let ok = unsafe {
            heapkit_core::os::resident_pages((a & !page_mask) as *const u8, &mut resident)
        };
        assert!(ok, "mincore failed");
        resident[0]
    })
}

/// Minor page faults of the calling thread so far.
fn thread_faults() -> i64 {
    heapkit_core::os::thread_minor_faults() as i64
}

/// Allocates `BLOCKS` blocks, writes them whole, frees them; returns their
/// addresses and the faults the thread took meanwhile.
fn fill_and_free(a: SizeClass<Fast>) -> (Vec<usize>, i64) {
    let layout = Layout::from_size_align(BLOCK, 16).unwrap();
    let before = thread_faults();
    let blocks: Vec<*mut u8> = (0..BLOCKS).map(|_| a.allocate(layout)).collect();
    for &p in &blocks {
        assert!(!p.is_null());
        // SAFETY: a live block of BLOCK bytes.
        unsafe { p.write_bytes(0xA5, BLOCK) };
    }
    let faults = thread_faults() - before;
    let addrs = blocks.iter().map(|&p| p as usize).collect();
    for p in blocks {
        // SAFETY: live blocks of `a`, freed once.
        unsafe { a.free(p) };
    }
    check_invariants_of::<Fast>().expect("heap invariants");
    (addrs, faults)
}

#[test]
fn an_exiting_threads_pages_stay_resident_for_the_next_thread_until_collected() {
    let a = SizeClass::fast();
    // A first thread fills fresh pages: it faults them in.
    let (first, first_faults) = thread::spawn(move || fill_and_free(a)).join().unwrap();
    assert!(
        first_faults >= (BLOCKS * BLOCK / 4096) as i64 / 2,
        "the first thread took only {first_faults} faults on fresh memory"
    );
    // It exited: what it freed is still resident (before, thread exit
    // purged every free page, and the next thread faulted them in again).
    assert!(
        all_resident(&first),
        "an exiting thread purged its free pages"
    );

    // A second thread gets the same memory back without faulting it in.
    let (second, second_faults) = thread::spawn(move || fill_and_free(a)).join().unwrap();
    let reused = second.iter().filter(|p| first.contains(p)).count();
    assert!(
        reused >= BLOCKS / 2,
        "the second thread reused {reused} of {BLOCKS} blocks"
    );
    assert!(
        second_faults < first_faults / 2,
        "the second thread refaulted: {second_faults} faults, the first {first_faults}"
    );

    // A collection purges what the exited threads left (the reserve
    // included): none of it stays resident.
    a.collect();
    assert!(
        second.iter().all(|&p| !all_resident(&[p])),
        "memory left by exited threads stayed resident after collect()"
    );
}
