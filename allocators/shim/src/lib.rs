//! libheapkit.so (in progress).
