//! heapkit-pool (in progress).
