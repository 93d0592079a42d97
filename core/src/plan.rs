//! Splitting C = A·B into column blocks, and choosing how wide they are.

use std::ops::Range;

use crate::kernel::flops;

/// What the block-width cost model aims at.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CostModel {
    /// Work per task worth its fixed costs (messages, a lease, a kernel call);
    /// the brief's floor is 5 ms of compute.
    pub min_task_seconds: f64,
    /// A conservative per-worker rate, so a slow worker's task still meets the floor.
    pub assumed_flops_per_second: f64,
    /// Enough tasks that fast workers can take more and the tail stays short.
    pub target_tasks: usize,
    /// Bytes of B and C blocks one worker may hold (all its slots together).
    pub worker_block_budget: usize,
    /// Tasks a worker holds at once (one computing, the rest arriving).
    pub slots_per_worker: usize,
}

impl Default for CostModel {
    fn default() -> Self {
        Self {
            min_task_seconds: 0.005,
            assumed_flops_per_second: 50e9,
            target_tasks: 16,
            worker_block_budget: 1 << 30,
            slots_per_worker: 2,
        }
    }
}

impl CostModel {
    /// Block width for an m×k by k×n product with `elem`-byte elements.
    pub fn block_width(&self, m: usize, k: usize, n: usize, elem: usize) -> usize {
        if n == 0 {
            return 1;
        }
        let per_column_flops = flops(m, k, 1).max(1.0);
        let min_width = (self.min_task_seconds * self.assumed_flops_per_second / per_column_flops).ceil() as usize;
        let balanced = n.div_ceil(self.target_tasks.max(1));
        let column_bytes = (m + k).saturating_mul(elem).saturating_mul(self.slots_per_worker.max(1));
        let max_width = (self.worker_block_budget / column_bytes.max(1)).max(1);
        let width = min_width.max(balanced).min(max_width).clamp(1, n);
        // Once a job has several blocks, a multiple of 4 splits evenly over 2 or 4
        // equal workers (9 blocks over 2 workers would leave one idle for a ninth).
        let blocks = n.div_ceil(width);
        if blocks < 4 {
            return width;
        }
        n.div_ceil(blocks.next_multiple_of(4).min(n))
    }
}

/// One task's share of C = A·B: the product A[rows, depth]·B[depth, cols],
/// which is C[rows, cols] itself when `depth` spans all of k, or one partial
/// sum of it otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tile {
    pub rows: Range<usize>,
    pub cols: Range<usize>,
    pub depth: Range<usize>,
}

/// The column blocks of one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub width: usize,
}

impl Plan {
    /// # Panics
    /// If `width` is zero.
    pub fn new(m: usize, k: usize, n: usize, width: usize) -> Self {
        assert!(width > 0, "block width must be positive");
        Self { m, k, n, width: width.min(n.max(1)) }
    }

    pub fn blocks(&self) -> usize {
        self.n.div_ceil(self.width)
    }

    /// Columns of block `index`; the last block may be narrower.
    pub fn columns(&self, index: usize) -> Range<usize> {
        let start = index * self.width;
        start..(start + self.width).min(self.n)
    }

    pub fn iter(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        (0..self.blocks()).map(|i| self.columns(i))
    }

    /// Block `index` as a tile: all rows, all of k.
    pub fn tile(&self, index: usize) -> Tile {
        Tile { rows: 0..self.m, cols: self.columns(index), depth: 0..self.k }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn widths_follow_the_model() {
        let model = CostModel::default();
        // Big square jobs: balance decides (16 tasks).
        assert_eq!(model.block_width(4096, 4096, 4096, 8), 256);
        // Small jobs: the 5 ms floor decides, rounded to a multiple of 4 blocks.
        let w = model.block_width(1024, 1024, 1024, 8);
        assert_eq!(1024usize.div_ceil(w), 12);
        assert!(flops(1024, 1024, w) / model.assumed_flops_per_second >= 0.7 * model.min_task_seconds);
        // Tiny jobs: one block.
        assert_eq!(model.block_width(3, 3, 3, 8), 3);
        // Memory caps the width.
        let tight = CostModel { worker_block_budget: 2 * 100 * 8 * 10, ..model };
        assert!(tight.block_width(50, 50, 100_000, 8) <= 10);
    }

    proptest! {
        #[test]
        fn blocks_cover_every_column_once(n in 1usize..500, width in 1usize..600) {
            let plan = Plan::new(4, 4, n, width);
            let mut next = 0;
            for r in plan.iter() {
                prop_assert_eq!(r.start, next);
                prop_assert!(!r.is_empty() && r.len() <= plan.width);
                next = r.end;
            }
            prop_assert_eq!(next, n);
        }
    }
}
