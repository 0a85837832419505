//! Cell binary: see `heapkit_bench::cell_main!`.
heapkit_bench::cell_main!(
    heapkit_sizeclass::SizeClass<heapkit_sizeclass::Fast> = heapkit_sizeclass::SizeClass::fast()
);
