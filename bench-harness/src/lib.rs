//! heapkit-bench (in progress).
