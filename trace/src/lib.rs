//! heapkit-trace (in progress).
