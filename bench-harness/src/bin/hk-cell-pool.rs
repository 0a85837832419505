//! Cell binary: see `heapkit_bench::cell_main!`.
heapkit_bench::cell_main!(heapkit_pool::Pool<heapkit_pool::Fast> = heapkit_pool::Pool::fast());
