//! The battery with `heapkit_bump::Bump` as the global allocator. Bump never
//! reuses memory (only the last block of a thread can be freed or grown in
//! place), so it runs every test at the light volume.
heapkit_tests::battery! {
    static GLOBAL: heapkit_bump::Bump = heapkit_bump::Bump::new();
    volume = heapkit_tests::Volume::Light;
}
