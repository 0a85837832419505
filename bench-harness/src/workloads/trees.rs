//! trees: many tiny objects with LIFO frees (the binary-trees pattern).
//!
//! A long-lived tree of depth 16 is built first; then trees of depth 4, 6, ..
//! 16 are built and torn down repeatedly (more shallow trees than deep ones, so
//! every depth does about the same number of nodes). Nodes are 16 bytes (two
//! child pointers); teardown is post-order, so frees come roughly in reverse
//! allocation order.

use super::{Context, Params};
use crate::measure::Recorder;

const NODE: usize = 16;
const LONG_LIVED_DEPTH: u32 = 16;
const MAX_DEPTH: u32 = 16;
/// Nodes built per depth (quick size).
const NODES_PER_DEPTH: u64 = 1_500_000;

/// Builds a tree of `depth` and returns its root.
fn build(rec: &mut Recorder, depth: u32) -> *mut u8 {
    let node = rec.alloc(NODE);
    let (left, right) = if depth > 0 {
        (build(rec, depth - 1), build(rec, depth - 1))
    } else {
        (std::ptr::null_mut(), std::ptr::null_mut())
    };
    let children = node.cast::<[*mut u8; 2]>();
    // SAFETY: node is a fresh 16-byte, 16-aligned block.
    unsafe { children.write([left, right]) };
    node
}

/// Frees a tree built by [`build`], children first; returns the node count.
fn tear_down(rec: &mut Recorder, node: *mut u8) -> u64 {
    // SAFETY: node was written by `build` and is still live.
    let [left, right] = unsafe { node.cast::<[*mut u8; 2]>().read() };
    let mut count = 1;
    if !left.is_null() {
        count += tear_down(rec, right);
        count += tear_down(rec, left);
    }
    // SAFETY: node is a live 16-byte block from rec.alloc(NODE).
    unsafe { rec.free(node, NODE) };
    count
}

fn nodes(depth: u32) -> u64 {
    (1u64 << (depth + 1)) - 1
}

pub(super) fn run(params: &Params, ctx: &mut Context) {
    let long_lived = build(&mut ctx.recorders[0], LONG_LIVED_DEPTH);
    let long_bytes = nodes(LONG_LIVED_DEPTH) * NODE as u64;
    let per_depth = params.scaled(NODES_PER_DEPTH);
    for depth in (4..=MAX_DEPTH).step_by(2) {
        let iterations = (per_depth / nodes(depth)).max(1);
        for i in 0..iterations {
            let root = build(&mut ctx.recorders[0], depth);
            if depth == MAX_DEPTH && i == 0 {
                ctx.checkpoint(
                    "long-lived+deepest",
                    long_bytes + nodes(depth) * NODE as u64,
                );
            }
            tear_down(&mut ctx.recorders[0], root);
        }
    }
    tear_down(&mut ctx.recorders[0], long_lived);
}
