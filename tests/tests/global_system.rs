//! The battery with the system allocator (glibc malloc) as the global
//! allocator: a control.
heapkit_tests::battery! {
    static GLOBAL: std::alloc::System = std::alloc::System;
}
