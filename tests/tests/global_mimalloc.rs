//! The battery with mimalloc as the global allocator: a control.
heapkit_tests::battery! {
    static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
}
