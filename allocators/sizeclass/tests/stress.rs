//! SizeClass as the global allocator under threads, remote frees, thread
//! churn, fork and a randomized model.

use std::alloc::Layout;
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

/// Many threads freeing each other's blocks at once (one CAS each).
#[test]
fn concurrent_cross_thread_frees() {
    let handles: Vec<_> = (0..4)
        .map(|t| {
            thread::spawn(move || {
                let mut rng = Rng(99 + t);
                let mut mine: Vec<Box<[u8]>> = Vec::new();
                for i in 0..20_000u32 {
                    let n = 1 + (rng.next() % 512) as usize;
                    mine.push(vec![(i % 251) as u8; n].into_boxed_slice());
                }
                mine
            })
        })
        .collect();
    let all: Vec<Vec<Box<[u8]>>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let frees: Vec<_> = all
        .into_iter()
        .map(|v| {
            thread::spawn(move || {
                for b in v {
                    let first = b[0];
                    assert!(b.iter().all(|&x| x == first));
                }
            })
        })
        .collect();
    for f in frees {
        f.join().unwrap();
    }
}

/// Zeroed blocks of 64 KiB and more read zero whatever their last user
/// did: wrote a few bytes (zeroed by purging), filled them (zeroed by
/// memset, and remembered as dense), or a mix, for big classes and large
/// blocks, in one thread's reuse order (the same blocks come back).
#[test]
fn zeroed_big_blocks_read_zero_after_dense_and_sparse_use() {
    let a = SizeClass::new();
    let mut rng = Rng(777);
    let before = heapkit_core::os::os_counters();
    for round in 0..600u32 {
        let size = match rng.next() % 4 {
            0 => 72 << 10,
            1 => 200 << 10,
            2 => (64 << 10) + (rng.next() % (192 << 10)) as usize,
            _ => (300 << 10) + (rng.next() % (700 << 10)) as usize,
        };
        let layout = Layout::from_size_align(size, 16).unwrap();
        let p = a.allocate_zeroed(layout);
        assert!(!p.is_null());
        // SAFETY: p is live with `size` bytes.
        let bytes = unsafe { std::slice::from_raw_parts_mut(p, size) };
        // Phases: sparse, then dense, then mixed. (A block once filled
        // stays resident, and so is memset from then on: sparse first.)
        let dense = match round / 200 {
            0 => false,
            1 => true,
            _ => rng.next().is_multiple_of(2),
        };
        // A sparse user reads only the 4 KiB around what it writes (a read
        // maps a page, and mincore counts a mapped page as resident); the
        // core test checks every byte of a purged range.
        let read: Vec<std::ops::Range<usize>> = if dense {
            std::iter::once(0..size).collect()
        } else {
            [0, size / 2, size - 1]
                .iter()
                .map(|&at| at.saturating_sub(2048)..(at + 2048).min(size))
                .collect()
        };
        for r in read {
            if let Some(at) = bytes[r.clone()].iter().position(|&b| b != 0) {
                let at = r.start + at;
                panic!(
                    "round {round}: byte {at} of a zeroed {size}-byte block is {}",
                    bytes[at]
                );
            }
        }
        if dense {
            bytes.fill(0xA5);
        } else {
            for at in [0, size / 2, size - 1] {
                bytes[at] = 0x5A;
            }
        }
        // SAFETY: p is live; freed once.
        unsafe { a.free(p) };
        if round == 199 {
            let after = heapkit_core::os::os_counters();
            assert!(
                after.purges > before.purges,
                "no sparse block was zeroed by a purge"
            );
        }
    }
}

/// A randomized sequence of alloc / realloc / free / zeroed / aligned ops
/// against a model of what each live block must contain.
#[test]
fn randomized_ops_match_the_model() {
    let a = SizeClass::new();
    let mut rng = Rng(12345);
    let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
    for step in 0..200_000u32 {
        let op = rng.next() % 10;
        if op < 4 || live.is_empty() {
            let size = match rng.next() % 8 {
                0 => (rng.next() % (600 << 10)) as usize,
                1 => (rng.next() % 65536) as usize,
                _ => (rng.next() % 512) as usize,
            };
            let align = if rng.next().is_multiple_of(8) {
                1 << (rng.next() % 21)
            } else {
                8
            };
            let layout = Layout::from_size_align(size, align).unwrap();
            let zeroed = rng.next().is_multiple_of(4);
            let p = if zeroed {
                a.allocate_zeroed(layout)
            } else {
                a.allocate(layout)
            };
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0, "misaligned {size}/{align}");
            // SAFETY: p is live.
            assert!(unsafe { a.usable_size(p) } >= size);
            if zeroed {
                verify(p, size, 0);
            }
            let tag = (step % 255) as u8 + 1;
            fill(p, size, tag);
            live.push((p, layout, tag));
        } else if op < 6 {
            let i = (rng.next() as usize) % live.len();
            let (p, layout, tag) = live[i];
            verify(p, layout.size(), tag);
            let new_size = (rng.next() % (400 << 10)) as usize;
            // SAFETY: p is live with layout.
            let q = unsafe { a.reallocate(p, layout, new_size) };
            assert!(!q.is_null());
            assert_eq!(q as usize % layout.align(), 0);
            verify(q, layout.size().min(new_size), tag);
            let nl = Layout::from_size_align(new_size, layout.align()).unwrap();
            fill(q, new_size, tag);
            live[i] = (q, nl, tag);
        } else {
            let i = (rng.next() as usize) % live.len();
            let (p, layout, tag) = live.swap_remove(i);
            verify(p, layout.size(), tag);
            // SAFETY: p is live.
            unsafe { a.free(p) };
        }
        if step % 20_000 == 0 {
            heapkit_sizeclass::check_invariants().unwrap();
        }
    }
    for (p, layout, tag) in live {
        verify(p, layout.size(), tag);
        // SAFETY: p is live.
        unsafe { a.free(p) };
    }
}

/// A child forked from a multi-threaded parent allocates, and frees blocks
/// that threads which do not exist in the child allocated.
#[test]
fn fork_child_frees_blocks_of_vanished_threads() {
    let (tx, rx) = mpsc::channel::<Vec<usize>>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let worker = thread::spawn(move || {
        let blocks: Vec<usize> = (0..5000)
            .map(|i| Box::into_raw(vec![7u8; 16 + i % 200].into_boxed_slice()) as *mut u8 as usize)
            .collect();
        tx.send(blocks).unwrap();
        // Stay alive (and own the segments) across the fork.
        go_rx.recv().unwrap();
    });
    let blocks = rx.recv().unwrap();
    // SAFETY: fork; the child only allocates, frees and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let mut ok = true;
        for (i, &b) in blocks.iter().enumerate() {
            let len = 16 + i % 200;
            // SAFETY: allocated by the worker as a boxed slice of len bytes.
            let s = unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(b as *mut u8, len)) };
            ok &= s.iter().all(|&x| x == 7);
        }
        let mut v: Vec<Vec<u8>> = Vec::new();
        for i in 0..20_000 {
            v.push(vec![1; 1 + i % 700]);
        }
        ok &= v.iter().all(|x| x.iter().all(|&y| y == 1));
        drop(v);
        // SAFETY: leave the child without running the test harness.
        unsafe { libc::_exit(if ok { 0 } else { 3 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child failed: {status}"
    );
    go_tx.send(()).unwrap();
    worker.join().unwrap();
    for (i, &b) in blocks.iter().enumerate() {
        // SAFETY: as in the child.
        drop(unsafe {
            Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                b as *mut u8,
                16 + i % 200,
            ))
        });
    }
}

/// Freeing everything lets RSS-relevant memory go: after a collect, the
/// mapped bytes fall back near where they started.
#[test]
fn free_all_returns_memory() {
    let t = thread::spawn(|| {
        let v: Vec<Vec<u8>> = (0..50_000).map(|i| vec![1u8; 64 + i % 900]).collect();
        drop(v);
        SizeClass::new().collect();
        let s = GLOBAL.stats();
        assert!(s.os_purges > 0, "nothing purged: {s}");
    });
    t.join().unwrap();
}
