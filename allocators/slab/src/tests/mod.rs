//! Unit tests of the whole heap, driven through `HeapAlloc` (the test
//! binary's own global allocator is the system one). The heap is
//! process-wide, so tests that account for every object hold `SERIAL`.
//! This module holds what the tests share; each submodule one family.

use core::alloc::Layout;
use std::sync::{mpsc, Mutex, MutexGuard};
use std::vec::Vec;

use heapkit_core::os;

use super::*;
use crate::magazine::{Depot, Magazine};

mod blocks;
mod caching;
mod hardened;
mod threads;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// SplitMix64.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy)]
struct Block {
    ptr: *mut u8,
    layout: Layout,
    fill: u8,
}

// SAFETY: blocks are plain heap memory handed between test threads.
unsafe impl Send for Block {}

fn fill(b: &Block) {
    // SAFETY: b.ptr is live with b.layout.size() bytes.
    unsafe { b.ptr.write_bytes(b.fill, b.layout.size()) };
}

fn verify(b: &Block) {
    // SAFETY: b.ptr is live with b.layout.size() bytes.
    let bytes = unsafe { core::slice::from_raw_parts(b.ptr, b.layout.size()) };
    assert!(
        bytes.iter().all(|&x| x == b.fill),
        "block {:p} ({:?}) corrupted",
        b.ptr,
        b.layout
    );
}

fn random_layout(rng: &mut Rng) -> Layout {
    let size = match rng.below(20) {
        0 => rng.below(300 << 10) as usize,
        1..=3 => rng.below(16 << 10) as usize,
        _ => rng.below(1024) as usize,
    };
    let align = match rng.below(10) {
        0 => 1usize << rng.below(21),
        _ => 8,
    };
    Layout::from_size_align(size, align).unwrap()
}

fn allocate(a: &Slab, rng: &mut Rng, zeroed: bool) -> Block {
    let layout = random_layout(rng);
    let ptr = if zeroed {
        a.allocate_zeroed(layout)
    } else {
        a.allocate(layout)
    };
    assert!(!ptr.is_null());
    assert_eq!(ptr as usize % layout.align(), 0, "{layout:?}");
    // SAFETY: ptr is live.
    assert!(unsafe { a.usable_size(ptr) } >= layout.size());
    if zeroed {
        // SAFETY: ptr is live with layout.size() bytes.
        let bytes = unsafe { core::slice::from_raw_parts(ptr, layout.size()) };
        assert!(bytes.iter().all(|&x| x == 0), "zeroed block not zero");
    }
    let b = Block {
        ptr,
        layout,
        fill: rng.next() as u8,
    };
    fill(&b);
    b
}

/// Flushes the calling thread's magazines and the depots, so the slab
/// layer's in-use count equals the live objects.
fn settle<P: Policy>(a: &Slab<P>) -> Census {
    a.flush_thread_cache();
    a.trim();
    a.check_invariants().expect("invariants")
}

/// The cache `a` serves `l` from (in hardened mode, the hardened twin of
/// the class).
fn cache_of(a: &Slab, l: Layout) -> usize {
    let p = a.allocate(l);
    // SAFETY: p is a live object of `a`.
    unsafe {
        let c = Slab::<DefaultPolicy>::class_of_block(p).expect("a slab object");
        a.deallocate(p, l);
        c
    }
}

fn is_slab_block(b: &Block) -> bool {
    // SAFETY: the block is live.
    unsafe { Slab::<DefaultPolicy>::class_of_block(b.ptr) }.is_some()
}
