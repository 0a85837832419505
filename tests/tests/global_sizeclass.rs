//! The battery with `heapkit_sizeclass::SizeClass` as the global allocator.
heapkit_tests::battery! {
    static GLOBAL: heapkit_sizeclass::SizeClass = heapkit_sizeclass::SizeClass::new();
}
