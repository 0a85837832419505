//! Criterion micro-benchmarks of every registered allocator, called directly
//! through its `GlobalAlloc` methods (generic over `A: GlobalAlloc`, no dynamic
//! dispatch on the measured path). The bench binary's own global allocator is
//! the system one; the allocators under test are separate static instances.
//!
//! - `malloc_free/<size>`: one alloc + dealloc pair, sizes 16 B .. 64 KiB;
//! - `realloc_growth`: a block grown by doubling from 16 B to 64 KiB, then freed;
//! - `cross_thread_free`: blocks of 64 B allocated on one thread, freed on
//!   another (time = allocating thread's time + freeing thread's time, no
//!   synchronisation inside the timed loops).
//!
//! Run: `cargo bench -p heapkit-bench` (add a filter, e.g. `-- malloc_free/64`).

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

const SIZES: [usize; 5] = [16, 64, 256, 4096, 65536];

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 16).expect("valid layout")
}

fn malloc_free_pair<A: GlobalAlloc>(c: &mut Criterion, name: &str, a: &'static A) {
    let mut group = c.benchmark_group("malloc_free");
    for size in SIZES {
        let layout = layout(size);
        group.bench_with_input(BenchmarkId::new(name, size), &layout, |b, &layout| {
            b.iter(|| {
                // SAFETY: non-zero layout; the block is freed with the same layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    a.dealloc(black_box(p), layout);
                }
            })
        });
    }
    group.finish();
}

fn realloc_growth<A: GlobalAlloc>(c: &mut Criterion, name: &str, a: &'static A) {
    c.bench_function(&format!("realloc_growth/{name}"), |b| {
        b.iter(|| {
            let mut size = 16;
            // SAFETY: each realloc passes the block's current layout; the final
            // block is freed with its final layout.
            unsafe {
                let mut p = a.alloc(layout(size));
                while size < 65536 {
                    p = a.realloc(p, layout(size), size * 2);
                    assert!(!p.is_null());
                    size *= 2;
                }
                a.dealloc(black_box(p), layout(size));
            }
        })
    });
}

/// Pointers moved to the freeing thread.
struct Blocks(Vec<*mut u8>);
// SAFETY: the blocks are exclusively owned and moved as a whole.
unsafe impl Send for Blocks {}

fn cross_thread_free<A: GlobalAlloc + Sync>(c: &mut Criterion, name: &str, a: &'static A) {
    let layout = layout(64);
    c.bench_function(&format!("cross_thread_free/{name}"), |b| {
        b.iter_custom(|iters| {
            let mut blocks = Blocks(Vec::with_capacity(iters as usize));
            let start = Instant::now();
            for _ in 0..iters {
                // SAFETY: non-zero layout.
                blocks.0.push(unsafe { a.alloc(layout) });
            }
            let alloc_time = start.elapsed();
            let free_time = std::thread::scope(|s| {
                s.spawn(move || {
                    let blocks = blocks;
                    let start = Instant::now();
                    for p in blocks.0 {
                        // SAFETY: every block came from a.alloc(layout) above.
                        unsafe { a.dealloc(p, layout) };
                    }
                    start.elapsed()
                })
                .join()
                .unwrap_or_default()
            });
            alloc_time + free_time
        })
    });
}

macro_rules! benches_for_all {
    ($($name:ident : $ty:ty = $init:expr, $description:literal;)*) => {
        fn all(c: &mut Criterion) {
            $({
                static ALLOCATOR: $ty = $init;
                malloc_free_pair(c, stringify!($name), &ALLOCATOR);
                realloc_growth(c, stringify!($name), &ALLOCATOR);
                cross_thread_free(c, stringify!($name), &ALLOCATOR);
            })*
        }
    };
}

heapkit_bench::with_allocators!(benches_for_all);

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
}

criterion_group! {
    name = allocators;
    config = config();
    targets = all
}
criterion_main!(allocators);
