//! Putting C together from tiles that arrive in any order.
//!
//! A tile that spans all of k is its block of C. When k is split, a block is
//! the sum of its tiles' partial products: they are added in depth order, so C
//! comes out bit for bit the same whatever order the tiles arrive in, and a
//! partial is held only until the ones before it are in.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::matrix::{DenseMatrix, Dtype, Element, Matrix, ShapeError};
use crate::plan::Plan;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssemblyError {
    #[error("tile {index} does not exist (the plan has {tiles})")]
    NoSuchTile { index: usize, tiles: usize },
    #[error("block {index} does not exist (the plan has {blocks})")]
    NoSuchBlock { index: usize, blocks: usize },
    #[error("{what} {index} should be {expected} bytes, got {actual}")]
    WrongSize { what: &'static str, index: usize, expected: usize, actual: usize },
    #[error("tile {index} should be {}x{} {}, got {}x{} {}", expected.0, expected.1, expected.2, actual.0, actual.1, actual.2)]
    WrongShape { index: usize, expected: (usize, usize, Dtype), actual: (usize, usize, Dtype) },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    New,
    /// Already had this tile (a speculative copy or a late result); ignored.
    Duplicate,
}

/// C, filled tile by tile.
#[derive(Debug)]
pub struct Assembly {
    plan: Plan,
    c: DenseMatrix,
    tile_done: Vec<bool>,
    tiles_done: usize,
    /// Per block: how many of its depth slices have been added to C.
    added: Vec<usize>,
    /// Partials that arrived before an earlier slice of their block.
    waiting: BTreeMap<usize, DenseMatrix>,
    remaining: usize,
}

impl Assembly {
    pub fn new(plan: Plan, dtype: Dtype) -> Result<Self, ShapeError> {
        let c = DenseMatrix::zeros(dtype, plan.m, plan.n)?;
        let (tiles, blocks) = (plan.tiles(), plan.blocks());
        Ok(Self { plan, c, tile_done: vec![false; tiles], tiles_done: 0, added: vec![0; blocks], waiting: BTreeMap::new(), remaining: blocks })
    }

    /// Bytes tile `index`'s product must have.
    pub fn tile_bytes(&self, index: usize) -> usize {
        let tile = self.plan.tile(index);
        tile.rows.len() * tile.cols.len() * self.c.dtype().size()
    }

    /// Takes tile `index`'s product (|rows| × |cols| of the tile, in C's
    /// dtype), unless it is already in.
    pub fn accept(&mut self, index: usize, product: DenseMatrix) -> Result<Accepted, AssemblyError> {
        let tiles = self.tile_done.len();
        if index >= tiles {
            return Err(AssemblyError::NoSuchTile { index, tiles });
        }
        let tile = self.plan.tile(index);
        let expected = (tile.rows.len(), tile.cols.len(), self.c.dtype());
        let actual = (product.rows(), product.cols(), product.dtype());
        if actual != expected {
            return Err(AssemblyError::WrongShape { index, expected, actual });
        }
        if self.tile_done[index] {
            return Ok(Accepted::Duplicate);
        }
        self.tile_done[index] = true;
        self.tiles_done += 1;
        self.waiting.insert(index, product);
        // Add this block's partials in depth order, as far as they have come.
        let block = self.plan.block_of(index);
        let first = self.plan.tiles_of(block).start;
        while let Some(next) = self.waiting.remove(&(first + self.added[block])) {
            self.add(block, &next, self.added[block] == 0);
            self.added[block] += 1;
        }
        if self.added[block] == self.plan.depth.parts {
            self.remaining -= 1;
        }
        Ok(Accepted::New)
    }

    /// Writes (or, unless `first`, adds) a block-shaped product into C.
    fn add(&mut self, block: usize, product: &DenseMatrix, first: bool) {
        let (rows, cols) = self.plan.block(block);
        match (&mut self.c, product) {
            (DenseMatrix::F64(c), DenseMatrix::F64(p)) => add_block(c, p, rows.start, cols, first),
            (DenseMatrix::F32(c), DenseMatrix::F32(p)) => add_block(c, p, rows.start, cols, first),
            _ => unreachable!("products are built with C's dtype"),
        }
    }

    /// Puts a whole block of C (e.g. from a checkpoint) in place, unless it is in already.
    pub fn accept_block(&mut self, index: usize, bytes: &[u8]) -> Result<Accepted, AssemblyError> {
        let blocks = self.added.len();
        if index >= blocks {
            return Err(AssemblyError::NoSuchBlock { index, blocks });
        }
        let (rows, cols) = self.plan.block(index);
        let expected = rows.len() * cols.len() * self.c.dtype().size();
        if bytes.len() != expected {
            return Err(AssemblyError::WrongSize { what: "block", index, expected, actual: bytes.len() });
        }
        if self.is_block_done(index) {
            return Ok(Accepted::Duplicate);
        }
        let block = DenseMatrix::from_le_bytes(self.c.dtype(), rows.len(), cols.len(), bytes).expect("size checked");
        self.add(index, &block, true);
        for t in self.plan.tiles_of(index) {
            self.tiles_done += usize::from(!self.tile_done[t]);
            self.tile_done[t] = true;
            self.waiting.remove(&t);
        }
        self.added[index] = self.plan.depth.parts;
        self.remaining -= 1;
        Ok(Accepted::New)
    }

    /// Block `index` of C, column-major, once it is complete (and C has not been taken).
    pub fn block(&self, index: usize) -> Option<Cow<'_, [u8]>> {
        if !self.is_block_done(index) || self.c.cols() != self.plan.n {
            return None;
        }
        Some(block_of(&self.c, &self.plan, index))
    }

    pub fn tiles_done(&self) -> usize {
        self.tiles_done
    }

    pub fn is_tile_done(&self, index: usize) -> bool {
        self.tile_done.get(index).copied().unwrap_or(false)
    }
    pub fn is_block_done(&self, index: usize) -> bool {
        self.added.get(index).is_some_and(|&a| a == self.plan.depth.parts)
    }
    /// Blocks of C not yet complete.
    pub fn remaining(&self) -> usize {
        self.remaining
    }
    pub fn is_complete(&self) -> bool {
        self.remaining == 0
    }

    /// Hands over the assembled C once every block is in (once; later calls get `None`).
    pub fn take(&mut self) -> Option<DenseMatrix> {
        if !self.is_complete() || self.c.cols() != self.plan.n {
            return None;
        }
        let empty = DenseMatrix::zeros(self.c.dtype(), 0, 0).expect("empty matrix");
        Some(std::mem::replace(&mut self.c, empty))
    }
}

/// Block `index` of `c` as `plan` cuts it, column-major: borrowed when it
/// spans all of C's rows, gathered otherwise.
pub fn block_of<'c>(c: &'c DenseMatrix, plan: &Plan, index: usize) -> Cow<'c, [u8]> {
    let (rows, cols) = plan.block(index);
    let full = c.column_byte_range(cols.clone());
    if rows.len() == plan.m {
        return Cow::Borrowed(&c.as_bytes()[full]);
    }
    let (elem, column) = (c.dtype().size(), plan.m * c.dtype().size());
    let mut out = Vec::with_capacity(rows.len() * cols.len() * elem);
    for j in cols {
        let start = j * column + rows.start * elem;
        out.extend_from_slice(&c.as_bytes()[start..start + rows.len() * elem]);
    }
    Cow::Owned(out)
}

/// C[rows, cols] = product (if `first`), else += product; `product` is block-shaped.
fn add_block<T: Element + std::ops::AddAssign>(c: &mut Matrix<T>, product: &Matrix<T>, row: usize, cols: std::ops::Range<usize>, first: bool) {
    let (m, h) = (c.rows(), product.rows());
    for (jj, j) in cols.enumerate() {
        let dst = &mut c.as_mut_slice()[j * m + row..j * m + row + h];
        let src = product.columns(jj..jj + 1);
        if first {
            dst.copy_from_slice(src);
        } else {
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += *s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::tests::naive;
    use proptest::prelude::*;

    /// A's rows and B's columns of a tile, multiplied over the tile's depth.
    fn tile_product(a: &Matrix<f64>, b: &Matrix<f64>, plan: &Plan, t: usize) -> Matrix<f64> {
        let tile = plan.tile(t);
        Matrix::from_fn(tile.rows.len(), tile.cols.len(), |i, j| {
            tile.depth.clone().map(|p| a.get(tile.rows.start + i, p) * b.get(p, tile.cols.start + j)).sum()
        })
    }

    fn assembled(a: &Matrix<f64>, b: &Matrix<f64>, plan: &Plan, order: &[usize]) -> Matrix<f64> {
        let mut asm = Assembly::new(plan.clone(), Dtype::F64).unwrap();
        for &t in order.iter().chain(order) {
            asm.accept(t, tile_product(a, b, plan, t).into()).unwrap();
        }
        match asm.take().unwrap() {
            DenseMatrix::F64(c) => c,
            DenseMatrix::F32(_) => unreachable!(),
        }
    }

    proptest! {
        /// Tiles in any order, each twice, sum to the product: exactly, since
        /// small integers make every sum exact.
        #[test]
        fn tiles_in_any_order_assemble_the_product(
            m in 1usize..20, k in 1usize..20, n in 1usize..20,
            (pr, pc, pk) in (1usize..5, 1usize..5, 1usize..5),
            shuffle in any::<u64>(),
        ) {
            let a = Matrix::from_fn(m, k, |i, j| ((i * 7 + j * 3) % 5) as f64 - 2.0);
            let b = Matrix::from_fn(k, n, |i, j| ((i * 5 + j * 11) % 9) as f64 - 4.0);
            let plan = Plan::grid(m, k, n, pr, pc, pk);
            let mut order: Vec<usize> = (0..plan.tiles()).collect();
            order.sort_by_key(|&i| (i as u64).wrapping_mul(shuffle | 1).rotate_left(17));
            prop_assert_eq!(assembled(&a, &b, &plan, &order), naive(&a, &b));
        }
    }

    #[test]
    fn partials_are_summed_in_depth_order_whatever_order_they_arrive_in() {
        // Values whose f64 sums depend on the order.
        let a = Matrix::from_fn(3, 6, |i, p| [1e16, 1.0, -1e16, 1.0, 3.0, 0.5][p] * (i + 1) as f64);
        let b = Matrix::from_fn(6, 2, |_, j| 1.0 + j as f64);
        let plan = Plan::grid(3, 6, 2, 1, 1, 6);
        let forward: Vec<usize> = (0..6).collect();
        let backward: Vec<usize> = (0..6).rev().collect();
        assert_eq!(assembled(&a, &b, &plan, &forward).as_bytes(), assembled(&a, &b, &plan, &backward).as_bytes());
    }

    #[test]
    fn blocks_come_out_for_checkpoints_and_go_back_in() {
        let a = Matrix::from_fn(4, 3, |i, j| (i * 3 + j) as f64);
        let b = Matrix::from_fn(3, 5, |i, j| (i + 2 * j) as f64);
        let plan = Plan::grid(4, 3, 5, 2, 2, 3);
        let mut asm = Assembly::new(plan.clone(), Dtype::F64).unwrap();
        for t in plan.tiles_of(3) {
            assert!(asm.block(3).is_none());
            asm.accept(t, tile_product(&a, &b, &plan, t).into()).unwrap();
        }
        let block = asm.block(3).unwrap().into_owned();
        let mut again = Assembly::new(plan.clone(), Dtype::F64).unwrap();
        assert_eq!(again.accept_block(3, &block), Ok(Accepted::New));
        assert!(again.is_tile_done(plan.tiles_of(3).start) && again.is_block_done(3));
        assert_eq!(again.accept(plan.tiles_of(3).start, tile_product(&a, &b, &plan, 9).into()), Ok(Accepted::Duplicate));
        assert_eq!(again.block(3).unwrap(), block.as_slice());
        assert_eq!(again.remaining(), 3);
    }

    #[test]
    fn rejects_bad_tiles_and_ignores_duplicates() {
        let mut asm = Assembly::new(Plan::columns(2, 2, 3, 2), Dtype::F64).unwrap();
        let zeros = |rows, cols| DenseMatrix::F64(Matrix::zeros(rows, cols).unwrap());
        assert_eq!(asm.accept(5, zeros(2, 1)), Err(AssemblyError::NoSuchTile { index: 5, tiles: 2 }));
        // Columns 0..1 and 1..3: the second tile is 2x2, in f64.
        let wrong = Err(AssemblyError::WrongShape { index: 1, expected: (2, 2, Dtype::F64), actual: (2, 1, Dtype::F64) });
        assert_eq!(asm.accept(1, zeros(2, 1)), wrong);
        let f32 = DenseMatrix::F32(Matrix::zeros(2, 2).unwrap());
        assert!(matches!(asm.accept(1, f32), Err(AssemblyError::WrongShape { actual: (2, 2, Dtype::F32), .. })));
        assert_eq!(asm.accept(1, zeros(2, 2)), Ok(Accepted::New));
        assert_eq!(asm.accept(1, DenseMatrix::F64(Matrix::from_fn(2, 2, |_, _| 1.0))), Ok(Accepted::Duplicate));
        assert!(!asm.is_complete());
        assert!(asm.take().is_none());
    }
}
