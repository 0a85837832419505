//! heapkit-core (in progress).
