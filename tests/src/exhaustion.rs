//! Impossible allocations: the allocator must return null (and std must turn
//! that into `Err` for `try_reserve`), leave live blocks intact, and keep
//! working afterwards, on this thread and others.

use std::alloc::{GlobalAlloc, Layout};
use std::thread;

use crate::{Block, Volume};

/// Sizes no machine can serve (more than half the address space).
fn impossible_layouts() -> Vec<Layout> {
    // The largest multiple of `align` (minus a page) that Layout accepts.
    let huge = |align: usize| (isize::MAX as usize + 1) - 4096 - align;
    vec![
        Layout::from_size_align(isize::MAX as usize - 4096, 1).expect("valid"),
        Layout::from_size_align(huge(16), 16).expect("valid"),
        Layout::from_size_align(huge(4096), 4096).expect("valid"),
        Layout::from_size_align(huge(1 << 20), 1 << 20).expect("valid"),
        Layout::from_size_align(1 << 62, 8).expect("valid"),
        Layout::from_size_align((1 << 62) + 12345, 64).expect("valid"),
    ]
}

/// `alloc`, `alloc_zeroed` and `realloc` of impossible sizes return null,
/// `Vec::try_reserve(usize::MAX / 2)` returns `Err`, a block being realloc'd
/// keeps its contents, and allocation still works afterwards.
pub fn impossible_allocation<A: GlobalAlloc + Sync>(a: &A, v: Volume) {
    let keep: Vec<Block> = (1..50u64)
        .map(|i| {
            Block::new(
                a,
                i as usize * 97,
                16,
                i,
                false,
                "block held across failures",
            )
        })
        .collect();
    for round in 0..v.pick(3, 1) {
        for layout in impossible_layouts() {
            // SAFETY: non-zero size.
            let p = unsafe { a.alloc(layout) };
            assert!(
                p.is_null(),
                "alloc({layout:?}) returned {p:p}, not null (round {round})"
            );
            // SAFETY: non-zero size.
            let p = unsafe { a.alloc_zeroed(layout) };
            assert!(
                p.is_null(),
                "alloc_zeroed({layout:?}) returned {p:p}, not null"
            );
        }
        for b in &keep {
            // Any size that fits isize once rounded to the block's alignment.
            for new_size in [isize::MAX as usize - 4096, 1 << 62] {
                // SAFETY: b is live with its layout; new_size rounded up to
                // 16 does not overflow isize.
                let p = unsafe { a.realloc(b.ptr(), b.layout(), new_size) };
                assert!(
                    p.is_null(),
                    "realloc({:p}, {}, {new_size}) returned {p:p}",
                    b.ptr(),
                    b.size
                );
                b.verify("block after a failed realloc");
            }
        }
        let mut v8: Vec<u8> = Vec::new();
        assert!(
            v8.try_reserve(usize::MAX / 2).is_err(),
            "Vec::<u8>::try_reserve(usize::MAX / 2) succeeded"
        );
        assert!(
            v8.try_reserve_exact(isize::MAX as usize - 4096).is_err(),
            "try_reserve_exact succeeded"
        );
        let mut v64: Vec<u64> = vec![1, 2, 3];
        assert!(
            v64.try_reserve(usize::MAX / 16).is_err(),
            "Vec::<u64>::try_reserve succeeded"
        );
        assert_eq!(
            v64,
            [1, 2, 3],
            "Vec kept its contents after a failed reserve"
        );
        let mut s = String::from("still here");
        assert!(
            s.try_reserve(usize::MAX / 2).is_err(),
            "String::try_reserve succeeded"
        );
        assert_eq!(s, "still here");
    }
    // The allocator still works, here and on another thread, at every range.
    let check_works = || {
        let blocks: Vec<Block> = [1usize, 24, 500, 5000, 70_000, 300_000, 3 << 20]
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                Block::new(
                    a,
                    size,
                    8,
                    i as u64,
                    i % 2 == 0,
                    "allocation after failures",
                )
            })
            .collect();
        for b in blocks {
            // SAFETY: allocated from a above.
            unsafe { b.free(a, "allocation after failures") };
        }
        let v: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
        assert!(v.iter().enumerate().all(|(i, s)| *s == i.to_string()));
    };
    check_works();
    thread::scope(|s| {
        s.spawn(check_works);
    });
    for b in keep {
        // SAFETY: allocated from a above, freed once.
        unsafe { b.free(a, "block held across failures") };
    }
}

/// Fill, free, refill under a capped address space (in a forked child, so
/// the cap and the exhaustion stay there): allocate 4 MiB buffers with
/// `try_reserve_exact` until it fails, drop two, and then small, medium
/// and (after dropping everything) 64 MiB reservations must succeed. A
/// program that handles `try_reserve` errors must be able to go on once
/// it frees memory, never be aborted by an allocation that no longer fits
/// because the allocator kept the freed memory to itself.
///
/// jemalloc (a control here) keeps freed address space mapped by design
/// (`opt.retain`), so under an address-space cap it cannot refill: it is
/// reported and skipped, not failed.
pub fn fill_free_refill<A: GlobalAlloc>(_: &A) {
    if std::any::type_name::<A>().contains("Jemalloc") {
        println!("SKIP fill_free_refill: jemalloc retains freed address space (opt.retain)");
        return;
    }
    // SAFETY: fork in a test process; the child only allocates, reads
    // /proc and calls _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = std::panic::catch_unwind(fill_free_refill_child).unwrap_or(3);
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: pid is our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "fill-free-refill child: status {status:#x} (exit {}, signal {}): 1 = a \
         reservation failed after freeing, 2 = could not exhaust, 3 = panic",
        libc::WEXITSTATUS(status),
        libc::WTERMSIG(status)
    );
}

fn fill_free_refill_child() -> i32 {
    const BLOCK: usize = 4 << 20;
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let limit = (pages * 4096 + (384 << 20)) as libc::rlim_t;
    let rl = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: rl is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &rl) } != 0 {
        return 2;
    }
    let mut blocks: Vec<Vec<u8>> = Vec::with_capacity(1024);
    while blocks.len() < 1024 {
        let mut b: Vec<u8> = Vec::new();
        if b.try_reserve_exact(BLOCK).is_err() {
            break;
        }
        b.push(1);
        blocks.push(b);
    }
    if blocks.is_empty() || blocks.len() == 1024 {
        return 2;
    }
    blocks.pop();
    blocks.pop();
    for size in [24usize, 4096, 100_000, 1 << 20] {
        let mut v: Vec<u8> = Vec::new();
        if v.try_reserve_exact(size).is_err() {
            return 1;
        }
        v.push(2);
    }
    blocks.clear();
    let mut big: Vec<u8> = Vec::new();
    if big.try_reserve_exact(64 << 20).is_err() {
        return 1;
    }
    big.push(3);
    0
}
