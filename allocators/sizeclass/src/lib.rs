//! heapkit-sizeclass (in progress).
