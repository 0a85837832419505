//! The battery with `heapkit_pool::Pool` as the global allocator.
heapkit_tests::battery! {
    static GLOBAL: heapkit_pool::Pool = heapkit_pool::Pool::new();
}
