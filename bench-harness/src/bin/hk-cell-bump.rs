//! Cell binary: see `heapkit_bench::cell_main!`.
heapkit_bench::cell_main!(heapkit_bump::Bump = heapkit_bump::Bump::new());
