//! Cell binary: see `heapkit_bench::cell_main!`.
heapkit_bench::cell_main!(tikv_jemallocator::Jemalloc);
