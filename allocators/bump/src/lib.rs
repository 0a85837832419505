//! heapkit-bump (in progress).
