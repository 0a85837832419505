//! Single-threaded behaviour of the pool against a model: randomized
//! alloc / zeroed alloc / realloc / free sequences with fill-and-verify, the
//! C-facing queries (usable_size, free without a layout), alignment and
//! zeroing.

mod common;

use core::alloc::Layout;
use std::collections::BTreeMap;

use common::{fill, verify, Rng};
use heapkit_core::size_class::{class_size, CLASS_COUNT, MAX_SIZE};
use heapkit_core::HeapAlloc;
use heapkit_pool::Pool;

static POOL: Pool = Pool::new();

struct Live {
    layout: Layout,
    tag: u64,
}

/// Random operations against a model map; every block is filled with a
/// pattern at allocation and verified before every realloc and free, so
/// any overlap between two live blocks or any block handed out twice shows
/// up as corruption; overlap is also checked directly on the address ranges.
#[test]
fn randomized_ops_fill_and_verify() {
    let mut rng = Rng(0x5eed);
    let mut live: BTreeMap<usize, Live> = BTreeMap::new();
    let mut tag = 0u64;
    for step in 0..60_000u64 {
        let op = rng.next() % 10;
        if op < 5 || live.is_empty() {
            let layout = rng.layout();
            let zeroed = rng.next().is_multiple_of(4);
            let p = if zeroed {
                POOL.allocate_zeroed(layout)
            } else {
                POOL.allocate(layout)
            };
            assert!(!p.is_null(), "step {step}: {layout:?}");
            assert_eq!(p as usize % layout.align(), 0, "{layout:?}");
            // SAFETY: p is live.
            let usable = unsafe { POOL.usable_size(p) };
            assert!(usable >= layout.size());
            if zeroed {
                // SAFETY: p has layout.size() bytes.
                let bytes = unsafe { core::slice::from_raw_parts(p, layout.size()) };
                assert!(bytes.iter().all(|&b| b == 0), "zeroed block not zero");
            }
            // No overlap with the neighbours in address order.
            let start = p as usize;
            if let Some((&prev, l)) = live.range(..start).next_back() {
                assert!(prev + l.layout.size() <= start, "overlap below");
            }
            if let Some((&next, _)) = live.range(start..).next() {
                assert!(
                    start + layout.size().max(1) <= next || layout.size() == 0,
                    "overlap above"
                );
            }
            tag += 1;
            // SAFETY: p has layout.size() writable bytes.
            unsafe { fill(p, layout.size(), tag) };
            assert!(
                live.insert(start, Live { layout, tag }).is_none(),
                "handed out twice"
            );
        } else {
            let key = *live.keys().nth(rng.next() as usize % live.len()).unwrap();
            let l = live.remove(&key).unwrap();
            let p = key as *mut u8;
            // SAFETY: p is live with l.layout.size() bytes filled.
            unsafe { verify(p, l.layout.size(), l.tag) };
            if op < 8 {
                let new_size = rng.size();
                // SAFETY: p is live with l.layout.
                let q = unsafe { POOL.reallocate(p, l.layout, new_size) };
                assert!(!q.is_null());
                assert_eq!(q as usize % l.layout.align(), 0);
                let kept = l.layout.size().min(new_size);
                // SAFETY: q holds at least `kept` bytes of the old contents.
                unsafe { verify(q, kept, l.tag) };
                let layout = Layout::from_size_align(new_size, l.layout.align()).unwrap();
                tag += 1;
                // SAFETY: q has new_size writable bytes.
                unsafe { fill(q, new_size, tag) };
                assert!(live.insert(q as usize, Live { layout, tag }).is_none());
            } else if op == 8 {
                // SAFETY: p is live with l.layout.
                unsafe { POOL.deallocate(p, l.layout) };
            } else {
                // SAFETY: p is live; the C-style free needs no layout.
                unsafe { POOL.free(p) };
            }
        }
    }
    for (&key, l) in &live {
        // SAFETY: every remaining block is live and filled.
        unsafe {
            verify(key as *const u8, l.layout.size(), l.tag);
            POOL.free(key as *mut u8);
        }
    }
}

/// Every size maps to its class's usable size; realloc stays in place while
/// the class still fits and at least half of it is used (the default mode:
/// hardened, the usable size is the request).
#[test]
fn usable_size_is_the_class_and_realloc_stays_in_place() {
    static POOL: Pool<heapkit_pool::Fast> = Pool::fast();
    for class in 0..CLASS_COUNT {
        let size = class_size(class);
        let layout = Layout::from_size_align(size, 16).unwrap();
        let p = POOL.allocate(layout);
        // SAFETY: p is live.
        unsafe {
            assert_eq!(POOL.usable_size(p), size);
            let q = POOL.reallocate(p, layout, size / 2 + 1);
            assert_eq!(q, p, "class {size}: shrink within the class moved");
            POOL.free(q);
        }
    }
    let layout = Layout::from_size_align(4096, 16).unwrap();
    let p = POOL.allocate(layout);
    // SAFETY: p is live; a big shrink moves to a smaller class.
    unsafe {
        let q = POOL.reallocate(p, layout, 16);
        assert_ne!(q, p);
        assert_eq!(POOL.usable_size(q), 16);
        POOL.free(q);
    }
}

/// Every power-of-two alignment up to 1 MiB, small and large sizes.
#[test]
fn alignments_up_to_one_mebibyte() {
    for shift in 0..=21 {
        let align = 1usize << shift;
        for size in [1, 24, align, MAX_SIZE + 1] {
            let layout = Layout::from_size_align(size, align).unwrap();
            let p = POOL.allocate(layout);
            assert!(!p.is_null(), "{layout:?}");
            assert_eq!(p as usize % align, 0, "{layout:?}");
            // SAFETY: p is live with layout.
            unsafe {
                assert!(POOL.usable_size(p) >= size);
                p.write_bytes(0xA5, size);
                POOL.free(p);
            }
        }
    }
}

/// Zeroed allocations are zero whether they reuse a dirty block or come
/// from never-used chunk memory (where the memset is skipped).
#[test]
fn zeroed_blocks_are_zero_after_reuse() {
    for size in [16usize, 100, 1000, 5000, 70_000, MAX_SIZE, MAX_SIZE + 10] {
        let layout = Layout::from_size_align(size, 16).unwrap();
        let mut blocks = Vec::new();
        for _ in 0..20 {
            let p = POOL.allocate(layout);
            // SAFETY: p is live with `size` bytes.
            unsafe { p.write_bytes(0xFF, size) };
            blocks.push(p);
        }
        for p in blocks.drain(..) {
            // SAFETY: p is live.
            unsafe { POOL.free(p) };
        }
        for _ in 0..40 {
            let p = POOL.allocate_zeroed(layout);
            // SAFETY: p has `size` bytes.
            let bytes = unsafe { core::slice::from_raw_parts(p, size) };
            assert!(bytes.iter().all(|&b| b == 0), "size {size}");
            blocks.push(p);
        }
        for p in blocks {
            // SAFETY: p is live.
            unsafe { POOL.free(p) };
        }
    }
}

/// Zero-size layouts get distinct, freeable blocks.
#[test]
fn zero_size_allocations() {
    let layout = Layout::from_size_align(0, 1).unwrap();
    let a = POOL.allocate(layout);
    let b = POOL.allocate(layout);
    assert!(!a.is_null() && !b.is_null() && a != b);
    // SAFETY: both are live.
    unsafe {
        POOL.free(a);
        POOL.deallocate(b, layout);
    }
}
