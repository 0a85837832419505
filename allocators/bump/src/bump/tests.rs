//! Unit tests of [`Bump`] used directly (the test binary's global allocator
//! stays the system's; `tests/tests/global_bump.rs` installs Bump globally).

use core::alloc::Layout;
use std::vec::Vec;

use heapkit_core::segment::{tag_of, SegmentTag};
use heapkit_core::HeapAlloc;

use super::{Bump, LARGE_THRESHOLD};

const B: Bump = Bump::new();

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

fn fill(p: *mut u8, n: usize, seed: u8) {
    for i in 0..n {
        // SAFETY: callers pass live blocks of at least n bytes.
        unsafe { *p.add(i) = seed.wrapping_add(i as u8).wrapping_mul(31) };
    }
}

fn check(p: *mut u8, n: usize, seed: u8) -> bool {
    // SAFETY: callers pass live blocks of at least n bytes.
    (0..n).all(|i| unsafe { *p.add(i) } == seed.wrapping_add(i as u8).wrapping_mul(31))
}

#[test]
fn every_alignment_up_to_2_mib() {
    for shift in 0..=21 {
        let align = 1usize << shift;
        for size in [0, 1, 7, 64, 4096, 100_000] {
            let l = layout(size, align);
            let p = B.allocate(l);
            assert!(!p.is_null(), "align {align} size {size}");
            assert_eq!(p as usize % align, 0, "align {align} size {size}");
            fill(p, size, shift as u8);
            // SAFETY: p is live with layout l.
            unsafe {
                assert!(B.usable_size(p) >= size);
                assert!(check(p, size, shift as u8));
                if shift % 2 == 0 {
                    B.deallocate(p, l);
                } else {
                    B.free(p);
                }
            }
        }
    }
}

#[test]
fn last_block_is_freed_and_grown_in_place() {
    let a = B.allocate(layout(100, 8));
    let b = B.allocate(layout(48, 8));
    fill(a, 100, 1);
    fill(b, 48, 2);
    // SAFETY: a and b are live blocks with these layouts.
    unsafe {
        B.deallocate(b, layout(48, 8));
        // The space comes back: the same address again.
        let c = B.allocate(layout(48, 8));
        assert_eq!(c, b);
        fill(c, 48, 3);
        // Growing the last block keeps its address and contents.
        let d = B.reallocate(c, layout(48, 8), 5000);
        assert_eq!(d, c);
        assert!(check(d, 48, 3));
        assert_eq!(B.usable_size(d), 5000);
        fill(d, 5000, 4);
        // Shrinking it in place too, and the freed tail is reused.
        let e = B.reallocate(d, layout(5000, 8), 16);
        assert_eq!(e, d);
        assert!(check(e, 16, 4));
        let f = B.allocate(layout(8, 8));
        assert_eq!(f as usize, e as usize + 16 + 8);
        // A block that is not last moves when it grows, keeping contents.
        let g = B.reallocate(a, layout(100, 8), 300);
        assert_ne!(g, a);
        assert!(check(g, 100, 1));
        // Freeing a block that is not last changes nothing for the others.
        B.deallocate(e, layout(16, 8));
        assert!(check(g, 100, 1));
        let h = B.allocate(layout(8, 8));
        assert!(h as usize > g as usize);
        B.free(h);
        B.free(g);
        B.free(f);
    }
}

#[test]
fn multi_level_lifo_free_reuses_memory() {
    let first = B.allocate(layout(24, 8));
    let mut ptrs = Vec::new();
    for _ in 0..100 {
        ptrs.push(B.allocate(layout(24, 8)));
    }
    for &p in ptrs.iter().rev() {
        // SAFETY: live blocks freed once, newest first.
        unsafe { B.deallocate(p, layout(24, 8)) };
    }
    // Everything after `first` came back.
    let again = B.allocate(layout(24, 8));
    assert_eq!(again, ptrs[0]);
    // SAFETY: live blocks.
    unsafe {
        B.free(again);
        B.free(first);
    }
}

#[test]
fn impossible_layouts_return_null() {
    assert!(B.allocate(layout(isize::MAX as usize - 4096, 16)).is_null());
    assert!(B
        .allocate_zeroed(layout(isize::MAX as usize / 2, 4096))
        .is_null());
    // Beyond what the large path can align (1 GiB).
    assert!(B.allocate(layout(64, 2 << 30)).is_null());
    // The thread still allocates afterwards.
    let p = B.allocate(layout(64, 8));
    assert!(!p.is_null());
    // SAFETY: p is live.
    unsafe { B.free(p) };
}

#[test]
fn zeroed_memory_after_dirty_frees_is_zero() {
    for size in [8, 100, 4096, 60_000] {
        let l = layout(size, 16);
        let p = B.allocate(l);
        // SAFETY: p is live with l.
        unsafe {
            p.write_bytes(0xEE, size);
            B.deallocate(p, l);
        }
        let z = B.allocate_zeroed(l);
        assert_eq!(z, p, "the freed last block is reused");
        // SAFETY: z is live with l.
        unsafe {
            assert!((0..size).all(|i| *z.add(i) == 0), "size {size}");
            // Dirty the block, shrink it, and ask for zeroed memory over the
            // freed tail.
            z.write_bytes(0xAA, size);
            let s = B.reallocate(z, l, 8);
            assert_eq!(s, z);
            let y = B.allocate_zeroed(layout(size, 8));
            assert!((0..size).all(|i| *y.add(i) == 0));
            B.free(y);
            B.free(s);
        }
    }
    let big = layout(LARGE_THRESHOLD * 2, 16);
    let p = B.allocate_zeroed(big);
    // SAFETY: p is live with big.
    unsafe {
        assert_eq!(tag_of(p), SegmentTag::LARGE);
        assert!((0..big.size()).step_by(4093).all(|i| *p.add(i) == 0));
        B.deallocate(p, big);
    }
}

#[test]
fn large_blocks_realloc_and_move_back_to_chunks() {
    let l = layout(LARGE_THRESHOLD + 1, 16);
    let p = B.allocate(l);
    // SAFETY: p is live; every pointer below is live when used.
    unsafe {
        assert_eq!(tag_of(p), SegmentTag::LARGE);
        fill(p, 4096, 9);
        let q = B.reallocate(p, l, 4 << 20);
        assert_eq!(tag_of(q), SegmentTag::LARGE);
        assert!(check(q, 4096, 9));
        // Shrinking to a chunk size moves it into a chunk, so a sized
        // deallocate with the small layout finds it.
        let r = B.reallocate(q, layout(4 << 20, 16), 100);
        assert_eq!(tag_of(r), SegmentTag::BUMP);
        assert!(check(r, 100, 9));
        assert_eq!(B.usable_size(r), 104);
        B.deallocate(r, layout(100, 16));
    }
}

#[test]
fn frees_from_other_threads_are_harmless() {
    let l = layout(40, 8);
    let mine = B.allocate(l);
    fill(mine, 40, 5);
    let theirs = std::thread::spawn(move || {
        let p = B.allocate(l);
        fill(p, 40, 6);
        p as usize
    })
    .join()
    .unwrap();
    // The other thread has exited: its blocks stay valid.
    assert!(check(theirs as *mut u8, 40, 6));
    // SAFETY: theirs is a live block of another (dead) thread.
    unsafe { B.free(theirs as *mut u8) };
    let mine_addr = mine as usize;
    std::thread::spawn(move || {
        // SAFETY: mine is live; freeing it here is a no-op.
        unsafe { B.deallocate(mine_addr as *mut u8, l) };
        let p = B.allocate(l);
        assert_ne!(p as usize, mine_addr);
    })
    .join()
    .unwrap();
    // The other thread's free did not roll this thread back: the next block
    // comes after `mine` (whose memory is dead but never handed out again).
    let again = B.allocate(l);
    assert!(again as usize > mine_addr);
    // SAFETY: again is live.
    unsafe { B.free(again) };
}

/// A tiny xorshift generator, so the sequence is reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Live {
    ptr: *mut u8,
    layout: Layout,
    seed: u8,
}

#[test]
fn random_operations_keep_every_block_intact() {
    for seed in [1u64, 0x9E37_79B9_7F4A_7C15, 42] {
        let mut rng = Rng(seed);
        let mut live: Vec<Live> = Vec::new();
        for step in 0..20_000 {
            let op = rng.below(10);
            if op < 5 || live.is_empty() {
                let size = match rng.below(20) {
                    0 => rng.below(2 << 20),
                    1..=3 => rng.below(8192),
                    _ => rng.below(256),
                };
                let max_shift = if rng.below(50) == 0 { 21 } else { 7 };
                let align = 1 << rng.below(max_shift);
                let l = layout(size, align);
                let zeroed = rng.below(4) == 0;
                let p = if zeroed {
                    B.allocate_zeroed(l)
                } else {
                    B.allocate(l)
                };
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0);
                if zeroed {
                    // SAFETY: p is live with l.
                    assert!((0..size).all(|i| unsafe { *p.add(i) } == 0), "step {step}");
                }
                let s = step as u8;
                fill(p, size, s);
                live.push(Live {
                    ptr: p,
                    layout: l,
                    seed: s,
                });
            } else if op < 8 {
                // Free, biased to the newest block so the in-place path runs.
                let i = if rng.below(2) == 0 {
                    live.len() - 1
                } else {
                    rng.below(live.len())
                };
                let b = live.swap_remove(i);
                assert!(check(b.ptr, b.layout.size(), b.seed), "step {step}");
                // SAFETY: b is live with its layout, freed once.
                unsafe {
                    if rng.below(2) == 0 {
                        B.deallocate(b.ptr, b.layout);
                    } else {
                        B.free(b.ptr);
                    }
                }
            } else {
                let i = if rng.below(2) == 0 {
                    live.len() - 1
                } else {
                    rng.below(live.len())
                };
                let new_size = match rng.below(10) {
                    0 => rng.below(1 << 20),
                    _ => rng.below(512),
                };
                let b = &mut live[i];
                // SAFETY: b is live with its layout.
                let q = unsafe { B.reallocate(b.ptr, b.layout, new_size) };
                assert!(!q.is_null());
                let kept = b.layout.size().min(new_size);
                assert!(check(q, kept, b.seed), "step {step}");
                b.ptr = q;
                b.layout = layout(new_size, b.layout.align());
                fill(q, new_size, b.seed);
            }
            if step % 1000 == 0 {
                for b in &live {
                    assert!(check(b.ptr, b.layout.size(), b.seed), "step {step}");
                    // SAFETY: b is live.
                    assert!(unsafe { B.usable_size(b.ptr) } >= b.layout.size());
                }
            }
        }
        for b in live {
            assert!(check(b.ptr, b.layout.size(), b.seed));
            // SAFETY: b is live.
            unsafe { B.deallocate(b.ptr, b.layout) };
        }
    }
}

#[test]
fn c_api_realloc_and_usable_size_without_layouts() {
    use heapkit_core::capi;
    // SAFETY: every pointer passed to capi below is null or live.
    unsafe {
        // An over-aligned small block lives on the large path; C's realloc
        // passes (usable size, 16) as its layout, which looks chunk-sized.
        let p = capi::memalign(&B, 128 << 10, 16).cast::<u8>();
        assert_eq!(tag_of(p), SegmentTag::LARGE);
        fill(p, 16, 7);
        let q = capi::realloc(&B, p.cast(), 100).cast::<u8>();
        assert!(check(q, 16, 7));
        assert!(capi::malloc_usable_size(&B, q.cast()) >= 100);
        capi::free(&B, q.cast());

        let mut r = capi::malloc(&B, 1).cast::<u8>();
        fill(r, 1, 3);
        let mut filled = 1;
        for size in [10, 100, 1000, 100_000, 1 << 20, 50, 3] {
            r = capi::realloc(&B, r.cast(), size).cast::<u8>();
            assert!(!r.is_null());
            assert_eq!(r as usize % 16, 0);
            assert!(check(r, filled.min(size), 3), "size {size}");
            assert!(capi::malloc_usable_size(&B, r.cast()) >= size);
            filled = size.min(5000);
            fill(r, filled, 3);
        }
        let z = capi::calloc(&B, 100, 10).cast::<u8>();
        assert!((0..1000).all(|i| *z.add(i) == 0));
        capi::free(&B, z.cast());
        capi::free(&B, r.cast());
    }
}

#[test]
fn header_costs_one_word_per_block() {
    // Consecutive blocks of one thread: size + 8-byte header, rounded to the
    // alignment (at least 8).
    for (size, align, stride) in [
        (8, 8, 16),
        (24, 8, 32),
        (16, 16, 32),
        (1, 1, 16),
        (64, 16, 80),
    ] {
        let l = layout(size, align);
        let a = B.allocate(l);
        let b = B.allocate(l);
        let c = B.allocate(l);
        // (`a` may have ended a chunk; `b` and `c` share one: each refill
        // makes room for at least the block it serves.)
        if b as usize - a as usize != stride {
            let d = B.allocate(l);
            assert_eq!(d as usize - c as usize, stride, "size {size} align {align}");
            // SAFETY: d is live.
            unsafe { B.deallocate(d, l) };
        } else {
            assert_eq!(c as usize - b as usize, stride, "size {size} align {align}");
        }
        // SAFETY: live blocks, freed newest first.
        unsafe {
            B.deallocate(c, l);
            B.deallocate(b, l);
            B.deallocate(a, l);
        }
    }
}
