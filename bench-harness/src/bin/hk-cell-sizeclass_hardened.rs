//! Cell binary: see `heapkit_bench::cell_main!`.
heapkit_bench::cell_main!(
    heapkit_sizeclass::SizeClass<heapkit_sizeclass::Hardened> =
        heapkit_sizeclass::SizeClass::hardened()
);
