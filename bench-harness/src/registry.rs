//! The allocator table, generated from the one list in [`crate::with_allocators!`].

use crate::error::{Error, Result};

/// One registered allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocatorEntry {
    /// Name on the command line and in reports.
    pub name: &'static str,
    /// File name of its cell binary (next to `heapkit-bench`).
    pub cell_binary: &'static str,
    /// One line for `list`.
    pub description: &'static str,
    /// The Rust type installed as `#[global_allocator]`.
    pub type_name: &'static str,
}

macro_rules! allocator_table {
    ($($name:ident : $ty:ty = $init:expr, $description:literal;)*) => {
        /// Every registered allocator, in report column order.
        pub const ALLOCATORS: &[AllocatorEntry] = &[
            $(AllocatorEntry {
                name: stringify!($name),
                cell_binary: concat!("hk-cell-", stringify!($name)),
                description: $description,
                type_name: stringify!($ty),
            },)*
        ];
    };
}

crate::with_allocators!(allocator_table);

/// Looks an allocator up by name, with a one-line error listing the known names.
pub fn find_allocator(name: &str) -> Result<&'static AllocatorEntry> {
    ALLOCATORS.iter().find(|a| a.name == name).ok_or_else(|| {
        Error::new(format!(
            "unknown allocator '{name}' (known: {})",
            allocator_names().join(", ")
        ))
    })
}

/// Names of all registered allocators.
pub fn allocator_names() -> Vec<&'static str> {
    ALLOCATORS.iter().map(|a| a.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_registered() {
        for name in ["system", "jemalloc", "mimalloc"] {
            let entry = find_allocator(name).unwrap();
            assert_eq!(entry.cell_binary, format!("hk-cell-{name}"));
        }
    }

    #[test]
    fn unknown_allocator_is_one_line_error() {
        let err = find_allocator("tcmalloc").unwrap_err();
        assert!(err.0.starts_with("unknown allocator 'tcmalloc'"));
        assert!(!err.0.contains('\n'));
    }
}
