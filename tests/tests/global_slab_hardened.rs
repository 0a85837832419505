//! The battery with `heapkit_slab::Slab<Hardened>` as the global
//! allocator: the hardened mode's checks (free marks, encoded slab lists,
//! canaries, guard chunks) never fire on a correct program.
heapkit_tests::battery! {
    static GLOBAL: heapkit_slab::Slab<heapkit_slab::Hardened> =
        heapkit_slab::Slab::hardened();
}
