//! Cell binary: see `heapkit_bench::cell_main!`.
heapkit_bench::cell_main!(heapkit_pool::Pool = heapkit_pool::Pool::new());
