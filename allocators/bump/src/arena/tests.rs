//! Unit tests of [`Arena`].

use core::alloc::Layout;
use core::ptr::NonNull;
use std::vec::Vec as StdVec;

use allocator_api2::alloc::Allocator;
use allocator_api2::vec::Vec;

use super::{Arena, FIRST_CHUNK};

fn layout(size: usize, align: usize) -> Layout {
    Layout::from_size_align(size, align).unwrap()
}

#[test]
fn values_slices_and_strings() {
    let arena = Arena::new();
    let x = arena.alloc(41u64);
    *x += 1;
    let s = arena.alloc_str("héllo");
    let v = arena.alloc_slice_copy(&[1u16, 2, 3]);
    let f = arena.alloc_slice_fill_with(100, |i| (i * i) as u32);
    let unit = arena.alloc(());
    let empty = arena.alloc_slice_fill_with(0, |_| 0u8);
    assert_eq!(*x, 42);
    assert_eq!(s, "héllo");
    assert_eq!(v, &[1, 2, 3]);
    assert_eq!(f[99], 9801);
    assert_eq!(*unit, ());
    assert!(empty.is_empty());
    assert!(arena.allocated_bytes() >= 8 + 6 + 6 + 400);
    assert!(arena.capacity_bytes() >= FIRST_CHUNK);
}

#[test]
fn every_alignment_up_to_1_mib() {
    let arena = Arena::new();
    for shift in 0..=20 {
        let align = 1usize << shift;
        for size in [0, 1, 100, 5000] {
            let p = arena.alloc_layout(layout(size, align));
            assert_eq!(p.as_ptr() as usize % align, 0);
            // SAFETY: p has size bytes.
            unsafe { p.as_ptr().write_bytes(shift as u8, size) };
        }
    }
}

#[test]
fn impossible_layout_fails_without_panicking() {
    let arena = Arena::new();
    assert!(arena
        .try_alloc_layout(layout(isize::MAX as usize - 4096, 16))
        .is_none());
    assert!((&arena)
        .allocate(layout(isize::MAX as usize / 2, 8))
        .is_err());
    assert_eq!(*arena.alloc(7u8), 7);
}

/// Fills `n` bytes at `p` with a pattern of `seed`.
fn fill(p: *mut u8, n: usize, seed: u8) {
    for i in 0..n {
        // SAFETY: callers pass live blocks of at least n bytes.
        unsafe { *p.add(i) = seed ^ (i as u8) };
    }
}

fn check(p: *const u8, n: usize, seed: u8) -> bool {
    // SAFETY: callers pass live blocks of at least n bytes.
    (0..n).all(|i| unsafe { *p.add(i) } == seed ^ (i as u8))
}

#[test]
fn reset_keeps_the_largest_chunk_and_frees_the_rest() {
    let mut arena = Arena::new();
    for i in 0..10_000 {
        arena.alloc_slice_fill_with(100, |j| (i + j) as u8);
    }
    let big = arena.capacity_bytes();
    assert!(big > 1 << 20);
    arena.reset();
    assert_eq!(arena.allocated_bytes(), 0);
    let kept = arena.capacity_bytes();
    assert!(kept < big && kept >= big / 2 - 4096, "kept {kept} of {big}");
    // A request loop that fits the kept chunk maps nothing more.
    for _ in 0..10 {
        for i in 0..1000 {
            arena.alloc_slice_fill_with(100, |j| (i + j) as u8);
        }
        assert_eq!(arena.capacity_bytes(), kept);
        arena.reset();
    }
}

#[test]
fn checkpoint_rewind_keeps_earlier_allocations() {
    let mut arena = Arena::new();
    let mut early: StdVec<(usize, usize, u8)> = StdVec::new();
    for i in 0..300 {
        let n = 10 + i * 7 % 200;
        let p = arena.alloc_layout(layout(n, 8)).as_ptr();
        fill(p, n, i as u8);
        early.push((p as usize, n, i as u8));
    }
    let before = arena.allocated_bytes();
    let cp = arena.checkpoint();
    // Enough to span several new chunks.
    for i in 0..2000 {
        let p = arena.alloc_layout(layout(1000, 16)).as_ptr();
        fill(p, 1000, !(i as u8));
    }
    assert!(arena.allocated_bytes() > before + 2_000_000);
    arena.rewind(cp);
    assert_eq!(arena.allocated_bytes(), before);
    for &(p, n, s) in &early {
        assert!(check(p as *const u8, n, s));
    }
    // New allocations reuse the rewound space, zeroed when asked, and never
    // overlap the survivors.
    let cp2 = arena.checkpoint();
    for _ in 0..500 {
        let p = arena
            .try_alloc_layout_zeroed(layout(512, 8))
            .unwrap()
            .as_ptr();
        // SAFETY: p has 512 bytes.
        assert!((0..512).all(|i| unsafe { *p.add(i) } == 0));
        fill(p, 512, 0x5A);
    }
    for &(p, n, s) in &early {
        assert!(check(p as *const u8, n, s));
    }
    arena.rewind(cp2);
    arena.rewind(cp);
    assert_eq!(arena.allocated_bytes(), before);
}

#[test]
#[should_panic(expected = "checkpoint not from this arena")]
fn rewind_to_another_arenas_checkpoint_panics() {
    let a = Arena::new();
    a.alloc(1u32);
    let mut b = Arena::new();
    b.alloc(2u32);
    b.rewind(a.checkpoint());
}

#[test]
#[should_panic(expected = "already released")]
fn rewind_to_a_released_checkpoint_panics() {
    let mut a = Arena::new();
    a.alloc(1u32);
    let first = a.checkpoint();
    // A second chunk.
    a.alloc_slice_fill_with(FIRST_CHUNK * 4, |_| 0u8);
    let second = a.checkpoint();
    a.rewind(first); // unmaps the second chunk
    a.rewind(second);
}

#[test]
fn zeroed_after_reset_and_rewind_is_zero() {
    let mut arena = Arena::new();
    for round in 0..3 {
        let cp = arena.checkpoint();
        for _ in 0..100 {
            let p = arena.alloc_layout(layout(4000, 8)).as_ptr();
            // SAFETY: p has 4000 bytes.
            unsafe { p.write_bytes(0xFF, 4000) };
        }
        if round % 2 == 0 {
            arena.rewind(cp);
        } else {
            arena.reset();
        }
        for _ in 0..100 {
            let b = (&arena).allocate_zeroed(layout(4000, 8)).unwrap();
            // SAFETY: b is a live block of 4000 bytes.
            assert!(unsafe { b.as_ref() }.iter().all(|&x| x == 0));
            // SAFETY: as above.
            unsafe { b.cast::<u8>().as_ptr().write_bytes(0xFF, 4000) };
        }
    }
    // grow_zeroed in place over dirty memory.
    arena.reset();
    let a = (&arena).allocate(layout(64, 8)).unwrap().cast::<u8>();
    // SAFETY: a has 64 bytes; it is the last block, so it grows in place.
    unsafe {
        a.as_ptr().write_bytes(7, 64);
        let g = (&arena)
            .grow_zeroed(a, layout(64, 8), layout(8000, 8))
            .unwrap();
        assert_eq!(g.cast::<u8>(), a);
        let bytes = g.as_ref();
        assert!(bytes[..64].iter().all(|&x| x == 7));
        assert!(bytes[64..].iter().all(|&x| x == 0));
    }
}

#[test]
fn vec_in_arena_grows_in_place_and_keeps_contents() {
    let arena = Arena::new();
    let mut v: Vec<u64, &Arena> = Vec::new_in(&arena);
    v.push(0);
    for i in 1..10_000u64 {
        v.push(i * 3);
    }
    v.reserve(v.capacity());
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64 * 3));
    for _ in 0..5000 {
        v.pop();
    }
    v.shrink_to_fit();
    assert_eq!(v.len(), 5000);
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64 * 3));
    // Another allocation in between forces the next growth to move.
    let mut w: Vec<u8, &Arena> = Vec::new_in(&arena);
    w.extend_from_slice(b"between");
    let before = v.as_ptr();
    v.extend(0..10_000u64);
    assert_ne!(v.as_ptr(), before);
    assert!(v[..5000]
        .iter()
        .enumerate()
        .all(|(i, &x)| x == i as u64 * 3));
    assert!(v[5000..].iter().enumerate().all(|(i, &x)| x == i as u64));
    assert_eq!(&w[..], b"between");
}

#[test]
fn vec_growth_in_a_fresh_chunk_does_not_move() {
    let arena = Arena::with_capacity(1 << 20);
    let mut v: Vec<u32, &Arena> = Vec::with_capacity_in(4, &arena);
    let p = v.as_ptr();
    for i in 0..100_000 {
        v.push(i);
    }
    assert_eq!(v.as_ptr(), p, "the last block grows in place");
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32));
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

#[test]
fn random_operations_with_checkpoints_keep_every_block_intact() {
    let mut arena = Arena::new();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    // (ptr, layout, seed, seq of the op that last placed or resized it)
    let mut live: StdVec<(NonNull<u8>, Layout, u8, usize)> = StdVec::new();
    let mut checkpoints = StdVec::new();
    for step in 0..30_000usize {
        match rng.below(12) {
            0..=4 => {
                let size = if rng.below(30) == 0 {
                    rng.below(200_000)
                } else {
                    rng.below(300)
                };
                let l = layout(size, 1 << rng.below(8));
                let zeroed = rng.below(3) == 0;
                let b = if zeroed {
                    (&arena).allocate_zeroed(l).unwrap()
                } else {
                    (&arena).allocate(l).unwrap()
                };
                let p = b.cast::<u8>();
                assert_eq!(p.as_ptr() as usize % l.align(), 0);
                if zeroed {
                    assert!(check_zero(p.as_ptr(), size), "step {step}");
                }
                fill(p.as_ptr(), size, step as u8);
                live.push((p, l, step as u8, step));
            }
            5..=6 if !live.is_empty() => {
                let i = if rng.below(2) == 0 {
                    live.len() - 1
                } else {
                    rng.below(live.len())
                };
                let (p, l, s, _) = live.remove(i);
                assert!(check(p.as_ptr(), l.size(), s), "step {step}");
                // SAFETY: p is live with l.
                unsafe { (&arena).deallocate(p, l) };
            }
            7..=8 if !live.is_empty() => {
                let i = if rng.below(2) == 0 {
                    live.len() - 1
                } else {
                    rng.below(live.len())
                };
                let (p, l, s, _) = live[i];
                let new = layout(rng.below(2000), l.align());
                // SAFETY: p is live with l; the new layout has its align.
                let b = unsafe {
                    if new.size() >= l.size() {
                        (&arena).grow(p, l, new)
                    } else {
                        (&arena).shrink(p, l, new)
                    }
                }
                .unwrap()
                .cast::<u8>();
                assert!(
                    check(b.as_ptr(), l.size().min(new.size()), s),
                    "step {step}"
                );
                fill(b.as_ptr(), new.size(), s);
                live[i] = (b, new, s, step);
            }
            9 if checkpoints.len() < 8 => {
                checkpoints.push((arena.checkpoint(), step));
            }
            10 if !checkpoints.is_empty() => {
                let (cp, at) = checkpoints.pop().unwrap();
                // What was placed or resized after the checkpoint goes.
                live.retain(|&(_, _, _, seq)| seq < at);
                arena.rewind(cp);
            }
            11 if rng.below(50) == 0 => {
                live.clear();
                checkpoints.clear();
                arena.reset();
            }
            _ => {}
        }
        if step % 2000 == 0 {
            for &(p, l, s, _) in &live {
                assert!(check(p.as_ptr(), l.size(), s), "step {step}");
            }
        }
    }
    for &(p, l, s, _) in &live {
        assert!(check(p.as_ptr(), l.size(), s));
    }
}

fn check_zero(p: *const u8, n: usize) -> bool {
    // SAFETY: callers pass live blocks of at least n bytes.
    (0..n).all(|i| unsafe { *p.add(i) } == 0)
}
