//! heapkit-slab (in progress).
