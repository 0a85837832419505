//! Shared test battery (in progress).
