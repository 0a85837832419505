//! Cell binary: see `heapkit_bench::cell_main!`.
heapkit_bench::cell_main!(
    heapkit_slab::Slab<heapkit_slab::Hardened> = heapkit_slab::Slab::hardened()
);
