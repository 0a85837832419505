//! [`List`]: the intrusive doubly linked list every heapkit allocator uses
//! for its pages, segments and slabs.
//!
//! The nodes live in allocator metadata (segment headers, page tables), so
//! the list owns nothing and allocates nothing: it holds the first and last
//! node and a count, and each node carries its own `next`/`prev` pointers,
//! which the node type exposes through [`Linked`]. Every operation is O(1).
//!
//! ```
//! use core::ptr::{self, addr_of_mut};
//! use heapkit_core::list::{Linked, List};
//!
//! struct Node { value: u32, next: *mut Node, prev: *mut Node }
//! // SAFETY: the fields are the node's own and nothing else uses them.
//! unsafe impl Linked for Node {
//!     unsafe fn next(node: *mut Self) -> *mut *mut Self {
//!         // SAFETY: node is valid (the trait's contract).
//!         unsafe { addr_of_mut!((*node).next) }
//!     }
//!     unsafe fn prev(node: *mut Self) -> *mut *mut Self {
//!         // SAFETY: as above.
//!         unsafe { addr_of_mut!((*node).prev) }
//!     }
//! }
//!
//! let mut a = Node { value: 1, next: ptr::null_mut(), prev: ptr::null_mut() };
//! let mut b = Node { value: 2, next: ptr::null_mut(), prev: ptr::null_mut() };
//! let mut list = List::<Node>::EMPTY;
//! // SAFETY: a and b are live, on no list, and outlive the list's use.
//! unsafe {
//!     list.push_back(&mut a);
//!     list.push_front(&mut b);
//!     assert_eq!((*list.first).value, 2);
//!     list.remove(&mut b);
//!     assert_eq!(list.len, 1);
//!     assert_eq!((*list.pop_front()).value, 1);
//! }
//! assert!(list.first.is_null() && list.last.is_null());
//! ```

use core::ptr;

/// A node type that can sit on a [`List`]: it has a `next` and a `prev`
/// pointer of its own.
///
/// # Safety
/// `next` and `prev` must return the addresses of two distinct pointer
/// fields of `*node` that only the list that holds the node uses.
pub unsafe trait Linked: Sized {
    /// The address of the node's `next` pointer.
    ///
    /// # Safety
    /// `node` must point to a live node.
    unsafe fn next(node: *mut Self) -> *mut *mut Self;

    /// The address of the node's `prev` pointer.
    ///
    /// # Safety
    /// `node` must point to a live node.
    unsafe fn prev(node: *mut Self) -> *mut *mut Self;
}

/// An intrusive doubly linked list of `T`s.
///
/// Invariants: `first` and `last` are both null or both nodes on the list;
/// `len` nodes are reachable from `first` by `next` (the last one's `next`
/// null) and from `last` by `prev`; a node is on at most one list.
pub struct List<T: Linked> {
    /// The first node, or null.
    pub first: *mut T,
    /// The last node, or null.
    pub last: *mut T,
    /// Nodes on the list.
    pub len: usize,
}

// SAFETY: the list holds pointers to nodes owned by whoever owns the list (a
// lock around it, or the one thread whose heap it is); moving it between
// threads moves that ownership with it.
unsafe impl<T: Linked> Send for List<T> {}

impl<T: Linked> Clone for List<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: Linked> Copy for List<T> {}

impl<T: Linked> List<T> {
    /// The empty list.
    pub const EMPTY: List<T> = List {
        first: ptr::null_mut(),
        last: ptr::null_mut(),
        len: 0,
    };

    /// Whether the list has no node.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.first.is_null()
    }

    /// Links `node` in front.
    ///
    /// # Safety
    /// `node` must be live, on no list, and owned by the list's owner, as
    /// must every node on the list.
    #[inline]
    pub unsafe fn push_front(&mut self, node: *mut T) {
        // SAFETY: caller guarantee.
        unsafe {
            *T::prev(node) = ptr::null_mut();
            *T::next(node) = self.first;
            if self.first.is_null() {
                self.last = node;
            } else {
                *T::prev(self.first) = node;
            }
        }
        self.first = node;
        self.len += 1;
    }

    /// Links `node` at the back.
    ///
    /// # Safety
    /// As for [`List::push_front`].
    #[inline]
    pub unsafe fn push_back(&mut self, node: *mut T) {
        // SAFETY: caller guarantee.
        unsafe {
            *T::next(node) = ptr::null_mut();
            *T::prev(node) = self.last;
            if self.last.is_null() {
                self.first = node;
            } else {
                *T::next(self.last) = node;
            }
        }
        self.last = node;
        self.len += 1;
    }

    /// Unlinks `node`, leaving its links null.
    ///
    /// # Safety
    /// `node` must be on this list.
    #[inline]
    pub unsafe fn remove(&mut self, node: *mut T) {
        debug_assert!(self.len > 0);
        // SAFETY: node and its neighbours are on this list (caller).
        unsafe {
            let (prev, next) = (*T::prev(node), *T::next(node));
            if prev.is_null() {
                debug_assert!(self.first == node, "removing a node of another list");
                self.first = next;
            } else {
                *T::next(prev) = next;
            }
            if next.is_null() {
                self.last = prev;
            } else {
                *T::prev(next) = prev;
            }
            *T::next(node) = ptr::null_mut();
            *T::prev(node) = ptr::null_mut();
        }
        self.len -= 1;
    }

    /// Unlinks and returns the first node (null if the list is empty).
    ///
    /// # Safety
    /// As for [`List::remove`].
    #[inline]
    pub unsafe fn pop_front(&mut self) -> *mut T {
        let node = self.first;
        if !node.is_null() {
            // SAFETY: node is on this list.
            unsafe { self.remove(node) };
        }
        node
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::ptr::addr_of_mut;
    use std::vec::Vec;

    struct Node {
        id: usize,
        next: *mut Node,
        prev: *mut Node,
    }

    // SAFETY: the fields are the node's own.
    unsafe impl Linked for Node {
        unsafe fn next(node: *mut Self) -> *mut *mut Self {
            // SAFETY: node is live (contract).
            unsafe { addr_of_mut!((*node).next) }
        }
        unsafe fn prev(node: *mut Self) -> *mut *mut Self {
            // SAFETY: node is live (contract).
            unsafe { addr_of_mut!((*node).prev) }
        }
    }

    fn ids(list: &List<Node>) -> (Vec<usize>, Vec<usize>) {
        let (mut fwd, mut back) = (Vec::new(), Vec::new());
        // SAFETY: every node on the list is live for the test.
        unsafe {
            let mut n = list.first;
            while !n.is_null() {
                fwd.push((*n).id);
                n = (*n).next;
            }
            let mut n = list.last;
            while !n.is_null() {
                back.push((*n).id);
                n = (*n).prev;
            }
        }
        back.reverse();
        (fwd, back)
    }

    #[test]
    fn push_remove_pop_keep_both_directions_and_the_count() {
        let mut nodes: Vec<Node> = (0..6)
            .map(|id| Node {
                id,
                next: ptr::null_mut(),
                prev: ptr::null_mut(),
            })
            .collect();
        let p: Vec<*mut Node> = nodes.iter_mut().map(|n| n as *mut Node).collect();
        let mut list = List::<Node>::EMPTY;
        // SAFETY: the nodes are live and each is pushed once.
        unsafe {
            list.push_back(p[0]);
            list.push_back(p[1]);
            list.push_front(p[2]);
            list.push_back(p[3]);
            assert_eq!(ids(&list).0, [2, 0, 1, 3]);
            assert_eq!(ids(&list).0, ids(&list).1);
            list.remove(p[0]); // middle
            list.remove(p[3]); // last
            list.remove(p[2]); // first
            assert_eq!(ids(&list).0, [1]);
            assert_eq!(list.len, 1);
            assert!((*p[0]).next.is_null() && (*p[0]).prev.is_null());
            list.push_front(p[4]);
            assert_eq!(list.pop_front(), p[4]);
            assert_eq!(list.pop_front(), p[1]);
            assert!(list.pop_front().is_null());
        }
        assert!(list.is_empty() && list.last.is_null() && list.len == 0);
    }
}
