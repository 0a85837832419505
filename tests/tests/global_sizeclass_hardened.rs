//! The battery with `heapkit_sizeclass::SizeClass<Hardened>` as the global
//! allocator: the hardened mode's checks (live map, encoded lists,
//! canaries, guard pages) never fire on a correct program.
heapkit_tests::battery! {
    static GLOBAL: heapkit_sizeclass::SizeClass<heapkit_sizeclass::Hardened> =
        heapkit_sizeclass::SizeClass::hardened();
}
