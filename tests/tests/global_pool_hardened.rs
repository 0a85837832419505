//! The battery with `heapkit_pool::Pool<Hardened>` as the global
//! allocator: the hardened mode's checks (free marks, encoded links,
//! canaries, guard pages) never fire on a correct program.
heapkit_tests::battery! {
    static GLOBAL: heapkit_pool::Pool<heapkit_pool::Hardened> =
        heapkit_pool::Pool::hardened();
}
