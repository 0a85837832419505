//! The battery with jemalloc (tikv-jemallocator) as the global allocator: a
//! control.
heapkit_tests::battery! {
    static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
}
