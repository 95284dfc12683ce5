//! The static memory plan: every activation buffer gets an offset in one
//! arena, reused once its last reader has run.
//!
//! Offsets are in floats per image; a batch of `b` images uses `b ×` every
//! offset and size, which keeps buffers disjoint. Views (flatten, concat in
//! place) have no buffer of their own: they extend the life of their owner's.

use crate::back::kernel_ir::TensorRef;
use crate::ir::Graph;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// The node that owns it (the graph input is node 0).
    pub owner: usize,
    /// Floats per image.
    pub size: u64,
    pub offset: u64,
    /// First node that writes it and last node that reads it (execution order).
    pub first: usize,
    pub last: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    pub buffers: Vec<Buffer>,
    /// Arena size in floats per image.
    pub arena: u64,
    /// What one buffer per node would take, in floats per image.
    pub naive: u64,
}

impl MemoryPlan {
    /// Offset of a node's owner buffer, in floats per image.
    pub fn offset_of(&self, owner: usize) -> Option<u64> {
        self.buffers
            .iter()
            .find(|b| b.owner == owner)
            .map(|b| b.offset)
    }
}

/// Plans buffers for a fused graph whose placements are `refs` (see `kernels::placements`).
pub fn plan(g: &Graph, refs: &[TensorRef]) -> MemoryPlan {
    let n = g.nodes.len();
    let last_use = g.last_uses();
    // Lifetime of each owner: from its first writer to the last reader of anything placed in it.
    let mut first = vec![usize::MAX; n];
    let mut last = vec![0usize; n];
    let mut owns = vec![false; n];
    for (id, r) in refs.iter().enumerate() {
        owns[r.owner] = true;
        first[r.owner] = first[r.owner].min(id);
        last[r.owner] = last[r.owner].max(last_use[id]).max(id);
    }
    let mut order: Vec<usize> = (0..n).filter(|&i| owns[i]).collect();
    order.sort_by_key(|&i| (first[i], i));
    let mut buffers: Vec<Buffer> = Vec::new();
    for owner in order {
        let size = g.nodes[owner].shape.numel() as u64;
        // Buffers still alive when this one is first written.
        let mut busy: Vec<(u64, u64)> = buffers
            .iter()
            .filter(|b| b.last >= first[owner])
            .map(|b| (b.offset, b.offset + b.size))
            .collect();
        busy.sort_unstable();
        // First fit: the lowest gap that holds `size`.
        let mut offset = 0;
        for (start, end) in busy {
            if start >= offset + size {
                break;
            }
            offset = offset.max(end);
        }
        buffers.push(Buffer {
            owner,
            size,
            offset,
            first: first[owner],
            last: last[owner],
        });
    }
    let arena = buffers.iter().map(|b| b.offset + b.size).max().unwrap_or(0);
    let naive = g.nodes.iter().map(|n| n.shape.numel() as u64).sum();
    MemoryPlan {
        buffers,
        arena,
        naive,
    }
}

/// The most floats per image alive at once in the plan: the arena needed if
/// buffers could move. The arena exceeds it when a freed gap is too small for
/// the next buffer (each buffer keeps one offset for its whole life).
pub fn live_peak(plan: &MemoryPlan) -> u64 {
    let steps = plan.buffers.iter().map(|b| b.last).max().unwrap_or(0);
    (0..=steps)
        .map(|t| {
            plan.buffers
                .iter()
                .filter(|b| b.first <= t && t <= b.last)
                .map(|b| b.size)
                .sum::<u64>()
        })
        .max()
        .unwrap_or(0)
}

/// Checks that no two buffers alive at the same time overlap (used by tests).
pub fn verify(plan: &MemoryPlan) -> Result<(), String> {
    for (i, a) in plan.buffers.iter().enumerate() {
        for b in &plan.buffers[i + 1..] {
            let live_together = a.first <= b.last && b.first <= a.last;
            let overlap = a.offset < b.offset + b.size && b.offset < a.offset + a.size;
            if live_together && overlap {
                return Err(format!(
                    "buffers of nodes {} and {} overlap while both are alive",
                    a.owner, b.owner
                ));
            }
        }
    }
    Ok(())
}
