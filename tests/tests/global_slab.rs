//! The battery with `heapkit_slab::Slab` as the global allocator.
heapkit_tests::battery! {
    static GLOBAL: heapkit_slab::Slab = heapkit_slab::Slab::new();
}
