//! Bump and Arena against bumpalo and the system allocator, side by side.
//!
//! - `small_alloc/<size>`: one allocation of `size` bytes (8-64) and a write
//!   of the value, per element; batches of 1000 are timed, and the cleanup
//!   after each batch (LIFO frees for Bump and System, `reset` for the
//!   arenas) is not.
//! - `vec_growth`: push 1000 `u64` into an empty `Vec` (an
//!   `allocator_api2` `Vec` in the arenas, growing in place when it is the
//!   last allocation), timed per push, with the reset untimed.
//! - `reset_cycle`: 100 allocations of 32 bytes and a reset (System: 100
//!   mallocs and 100 frees), timed per cycle.
//!
//! `cargo bench -p heapkit-bump -- --warm-up-time 1 --measurement-time 3`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use heapkit_bump::{Arena, Bump};

const BATCH: usize = 1000;

/// Times `BATCH` calls of `alloc(i)` per iteration; `cleanup` runs untimed
/// after every batch with the pointers made.
fn time_batches<P>(
    iters: u64,
    mut alloc: impl FnMut(usize) -> P,
    mut cleanup: impl FnMut(&mut Vec<P>),
) -> Duration {
    let mut ptrs: Vec<P> = Vec::with_capacity(BATCH);
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        for i in 0..BATCH {
            ptrs.push(alloc(i));
        }
        total += start.elapsed();
        cleanup(&mut ptrs);
        ptrs.clear();
    }
    total
}

fn small_alloc_size<const WORDS: usize>(c: &mut Criterion) {
    let size = WORDS * 8;
    let mut g = c.benchmark_group("small_alloc");
    g.throughput(Throughput::Elements(BATCH as u64));
    let layout = Layout::new::<[u64; WORDS]>();

    g.bench_function(BenchmarkId::new("heapkit_bump::Bump", size), |b| {
        let bump = Bump::new();
        b.iter_custom(|iters| {
            time_batches(
                iters,
                |i| {
                    // SAFETY: a non-zero-size layout.
                    let p = unsafe { bump.alloc(layout) }.cast::<[u64; WORDS]>();
                    // SAFETY: p is a fresh block for the value.
                    unsafe { p.write([black_box(i as u64); WORDS]) };
                    p
                },
                |ptrs| {
                    for &p in ptrs.iter().rev() {
                        // SAFETY: live blocks, freed newest first.
                        unsafe { bump.dealloc(p.cast(), layout) };
                    }
                },
            )
        })
    });
    g.bench_function(BenchmarkId::new("heapkit_bump::Arena", size), |b| {
        let mut arena = Arena::new();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                for i in 0..BATCH {
                    black_box(arena.alloc([black_box(i as u64); WORDS]));
                }
                total += start.elapsed();
                arena.reset();
            }
            total
        })
    });
    g.bench_function(BenchmarkId::new("bumpalo", size), |b| {
        let mut bump = bumpalo::Bump::new();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                for i in 0..BATCH {
                    black_box(bump.alloc([black_box(i as u64); WORDS]));
                }
                total += start.elapsed();
                bump.reset();
            }
            total
        })
    });
    g.bench_function(BenchmarkId::new("system", size), |b| {
        b.iter_custom(|iters| {
            time_batches(
                iters,
                |i| {
                    // SAFETY: a non-zero-size layout.
                    let p = unsafe { System.alloc(layout) }.cast::<[u64; WORDS]>();
                    // SAFETY: p is a fresh block for the value.
                    unsafe { p.write([black_box(i as u64); WORDS]) };
                    p
                },
                |ptrs| {
                    for &p in ptrs.iter().rev() {
                        // SAFETY: live blocks.
                        unsafe { System.dealloc(p.cast(), layout) };
                    }
                },
            )
        })
    });
    g.finish();
}

fn small_alloc(c: &mut Criterion) {
    small_alloc_size::<1>(c);
    small_alloc_size::<2>(c);
    small_alloc_size::<4>(c);
    small_alloc_size::<8>(c);
}

fn vec_growth(c: &mut Criterion) {
    const N: usize = 1000;
    let mut g = c.benchmark_group("vec_growth");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("heapkit_bump::Arena", |b| {
        let mut arena = Arena::new();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let mut v = allocator_api2::vec::Vec::new_in(&arena);
                for i in 0..N {
                    v.push(black_box(i as u64));
                }
                black_box(&v);
                drop(v);
                total += start.elapsed();
                arena.reset();
            }
            total
        })
    });
    g.bench_function("bumpalo", |b| {
        let mut bump = bumpalo::Bump::new();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let mut v = allocator_api2::vec::Vec::new_in(&bump);
                for i in 0..N {
                    v.push(black_box(i as u64));
                }
                black_box(&v);
                drop(v);
                total += start.elapsed();
                bump.reset();
            }
            total
        })
    });
    g.bench_function("system", |b| {
        b.iter(|| {
            let mut v = Vec::new();
            for i in 0..N {
                v.push(black_box(i as u64));
            }
            black_box(v)
        })
    });
    g.finish();
}

fn reset_cycle(c: &mut Criterion) {
    const N: usize = 100;
    let mut g = c.benchmark_group("reset_cycle");
    g.bench_function("heapkit_bump::Arena", |b| {
        let mut arena = Arena::new();
        b.iter(|| {
            for i in 0..N {
                black_box(arena.alloc([black_box(i as u64); 4]));
            }
            arena.reset();
        })
    });
    g.bench_function("bumpalo", |b| {
        let mut bump = bumpalo::Bump::new();
        b.iter(|| {
            for i in 0..N {
                black_box(bump.alloc([black_box(i as u64); 4]));
            }
            bump.reset();
        })
    });
    g.bench_function("system", |b| {
        let layout = Layout::new::<[u64; 4]>();
        let mut ptrs = Vec::with_capacity(N);
        b.iter(|| {
            for i in 0..N {
                // SAFETY: a non-zero-size layout.
                let p = unsafe { System.alloc(layout) }.cast::<[u64; 4]>();
                // SAFETY: p is a fresh block for the value.
                unsafe { p.write([black_box(i as u64); 4]) };
                ptrs.push(p);
            }
            for p in ptrs.drain(..) {
                // SAFETY: live blocks.
                unsafe { System.dealloc(p.cast(), layout) };
            }
        })
    });
    g.finish();
}

criterion_group!(benches, small_alloc, vec_growth, reset_cycle);
criterion_main!(benches);
