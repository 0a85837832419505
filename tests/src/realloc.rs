//! realloc growth and shrinkage with content checks, across size-class
//! boundaries and into and out of the large range (up to ~8 MiB).

use std::alloc::{GlobalAlloc, Layout};

use crate::pattern::{assert_aligned, check_range, fill_range, XorShift};
use crate::Volume;

/// The largest size the realloc tests grow to.
pub const MAX_SIZE: usize = 8 << 20;

/// A block being resized: pattern of `seed` over its first `size` bytes.
struct Resized {
    ptr: *mut u8,
    size: usize,
    align: usize,
    seed: u64,
}

impl Resized {
    fn new<A: GlobalAlloc>(a: &A, size: usize, align: usize, seed: u64) -> Self {
        let layout = Layout::from_size_align(size, align).expect("valid layout");
        // SAFETY: non-zero size.
        let ptr = unsafe { a.alloc(layout) };
        assert!(!ptr.is_null(), "alloc({layout:?}) returned null");
        assert_aligned(ptr, align, "realloc start");
        // SAFETY: ptr is live for size bytes.
        unsafe { fill_range(ptr, 0, size, seed) };
        Resized {
            ptr,
            size,
            align,
            seed,
        }
    }

    /// Reallocates to `new_size`; checks the kept prefix and fills the rest.
    #[track_caller]
    fn resize<A: GlobalAlloc>(&mut self, a: &A, new_size: usize) {
        let layout = Layout::from_size_align(self.size, self.align).expect("valid layout");
        let old = self.ptr;
        // SAFETY: self.ptr is live with layout; new_size is non-zero and
        // below isize::MAX once rounded to align.
        let p = unsafe { a.realloc(self.ptr, layout, new_size) };
        assert!(
            !p.is_null(),
            "realloc({old:p}, {layout:?}, {new_size}) returned null"
        );
        assert_aligned(p, self.align, "realloc result");
        let kept = self.size.min(new_size);
        // SAFETY: p is live for new_size >= kept bytes.
        if let Err(m) = unsafe { check_range(p, 0, kept, self.seed) } {
            panic!(
                "realloc {} -> {new_size} (align {}, {old:p} -> {p:p}) lost contents: {m}",
                self.size, self.align
            );
        }
        if new_size > self.size {
            // SAFETY: p is live for new_size bytes.
            unsafe { fill_range(p, self.size, new_size, self.seed) };
        }
        self.ptr = p;
        self.size = new_size;
    }

    fn free<A: GlobalAlloc>(self, a: &A) {
        // SAFETY: live for size bytes.
        if let Err(m) = unsafe { check_range(self.ptr, 0, self.size, self.seed) } {
            panic!(
                "resized block of {} bytes corrupted before free: {m}",
                self.size
            );
        }
        let layout = Layout::from_size_align(self.size, self.align).expect("valid layout");
        // SAFETY: live with layout.
        unsafe { a.dealloc(self.ptr, layout) };
    }
}

/// From 1 byte up to [`MAX_SIZE`] in ~25% steps with jitter, then back down,
/// at alignments 1, 16, 64 and 4096, checking the kept prefix at every step.
/// A neighbour block allocated between steps keeps realloc from always
/// growing at the end of the heap.
pub fn grow_and_shrink<A: GlobalAlloc>(a: &A, v: Volume) {
    let mut rng = XorShift::new(0x4EA1);
    let aligns: &[usize] = match v {
        Volume::Full => &[1, 16, 64, 4096],
        Volume::Light => &[1, 4096],
    };
    for &align in aligns {
        for rep in 0..v.pick(2, 1) as u64 {
            let mut r = Resized::new(a, 1, align, rep * 1000 + align as u64);
            let mut neighbours = Vec::new();
            while r.size < MAX_SIZE {
                let next = (r.size * 5 / 4 + rng.range(1, 24)).min(MAX_SIZE);
                r.resize(a, next);
                if rng.chance(30) {
                    neighbours.push(Resized::new(a, rng.range(1, 512), 8, rng.next()));
                }
            }
            while r.size > 1 {
                let next = (r.size * 3 / 4).saturating_sub(rng.range(0, 8)).max(1);
                r.resize(a, next);
                if rng.chance(30) {
                    neighbours.push(Resized::new(a, rng.range(1, 512), 8, rng.next()));
                }
            }
            r.free(a);
            for n in neighbours {
                n.free(a);
            }
        }
    }
}

/// Sizes on both sides of the boundaries an allocator is likely to have:
/// small classes, pages, the end of the class table (256 KiB), segments
/// (4 MiB).
const BOUNDARIES: [usize; 22] = [
    1,
    8,
    16,
    17,
    128,
    129,
    1024,
    1025,
    4095,
    4096,
    4097,
    32 * 1024,
    32 * 1024 + 1,
    256 * 1024 - 1,
    256 * 1024,
    256 * 1024 + 1,
    256 * 1024 + 4096,
    1 << 20,
    (1 << 20) + 1,
    4 << 20,
    (4 << 20) + 4097,
    MAX_SIZE,
];

/// Random jumps between boundary sizes (small to large and back in one
/// call), several blocks in flight at once, alignments up to 64 KiB.
pub fn jumps_across_boundaries<A: GlobalAlloc>(a: &A, v: Volume) {
    let mut rng = XorShift::new(0xB0B0);
    let aligns = [1usize, 8, 16, 32, 256, 4096, 65536];
    let mut blocks: Vec<Resized> = (0..6u64)
        .map(|i| Resized::new(a, 1 + i as usize, aligns[i as usize % aligns.len()], i))
        .collect();
    for _ in 0..v.pick(600, 60) {
        let i = rng.below(blocks.len());
        let mut size = BOUNDARIES[rng.below(BOUNDARIES.len())];
        if size == MAX_SIZE && rng.chance(50) {
            size = 16;
        }
        blocks[i].resize(a, size);
        if rng.chance(5) {
            let b = blocks.swap_remove(i);
            let align = b.align;
            b.free(a);
            blocks.push(Resized::new(a, rng.range(1, 100), align, rng.next()));
        }
    }
    for b in blocks {
        b.free(a);
    }
}
