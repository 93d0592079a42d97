//! Putting C together from column blocks that arrive in any order.

use crate::matrix::{DenseMatrix, Dtype, ShapeError};
use crate::plan::Plan;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssemblyError {
    #[error("block {index} does not exist (the plan has {blocks})")]
    NoSuchBlock { index: usize, blocks: usize },
    #[error("block {index} should be {expected} bytes, got {actual}")]
    WrongSize { index: usize, expected: usize, actual: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    New,
    /// Already had this block (a speculative copy or a late result); ignored.
    Duplicate,
}

/// C, filled block by block.
#[derive(Debug)]
pub struct Assembly {
    plan: Plan,
    c: DenseMatrix,
    done: Vec<bool>,
    remaining: usize,
}

impl Assembly {
    pub fn new(plan: Plan, dtype: Dtype) -> Result<Self, ShapeError> {
        let c = DenseMatrix::zeros(dtype, plan.m, plan.n)?;
        let blocks = plan.blocks();
        Ok(Self { plan, c, done: vec![false; blocks], remaining: blocks })
    }

    /// Bytes block `index` must have.
    fn block_bytes(&self, index: usize) -> usize {
        self.plan.columns(index).len() * self.plan.m * self.c.dtype().size()
    }

    /// Stores block `index` from raw little-endian bytes, unless it is already there.
    pub fn accept(&mut self, index: usize, bytes: &[u8]) -> Result<Accepted, AssemblyError> {
        let blocks = self.done.len();
        if index >= blocks {
            return Err(AssemblyError::NoSuchBlock { index, blocks });
        }
        let expected = self.block_bytes(index);
        if bytes.len() != expected {
            return Err(AssemblyError::WrongSize { index, expected, actual: bytes.len() });
        }
        if self.done[index] {
            return Ok(Accepted::Duplicate);
        }
        let range = self.c.column_byte_range(self.plan.columns(index));
        self.c.as_bytes_mut()[range].copy_from_slice(bytes);
        self.done[index] = true;
        self.remaining -= 1;
        Ok(Accepted::New)
    }

    /// Block `index`'s bytes, once it is in (and C has not been taken).
    pub fn block(&self, index: usize) -> Option<&[u8]> {
        let range = self.c.column_byte_range(self.plan.columns(index));
        self.is_done(index).then(|| self.c.as_bytes().get(range)).flatten()
    }

    pub fn is_done(&self, index: usize) -> bool {
        self.done.get(index).copied().unwrap_or(false)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{multiply, tests::naive};
    use crate::matrix::Matrix;
    use proptest::prelude::*;

    fn blocked_product(a: &Matrix<f64>, b: &Matrix<f64>, width: usize, order: &[usize]) -> Matrix<f64> {
        let plan = Plan::new(a.rows(), a.cols(), b.cols(), width);
        let mut asm = Assembly::new(plan.clone(), Dtype::F64).unwrap();
        for &i in order.iter().chain(order) {
            let c = multiply(a, b.columns(plan.columns(i)));
            asm.accept(i, c.as_bytes()).unwrap();
        }
        match asm.take().unwrap() {
            DenseMatrix::F64(c) => c,
            DenseMatrix::F32(_) => unreachable!(),
        }
    }

    proptest! {
        /// Splitting B, multiplying block by block in any order (each twice),
        /// and assembling equals the naive product.
        #[test]
        fn blocked_equals_naive(
            m in 1usize..24, k in 1usize..24, n in 1usize..40, width in 1usize..45,
            shuffle in any::<u64>(),
        ) {
            let a = Matrix::from_fn(m, k, |i, j| ((i * 7 + j * 3) % 5) as f64 - 2.0);
            let b = Matrix::from_fn(k, n, |i, j| ((i * 5 + j * 11) % 9) as f64 - 4.0);
            let blocks = Plan::new(m, k, n, width).blocks();
            let mut order: Vec<usize> = (0..blocks).collect();
            order.sort_by_key(|&i| (i as u64).wrapping_mul(shuffle | 1).rotate_left(17));
            prop_assert_eq!(blocked_product(&a, &b, width, &order), naive(&a, &b));
        }

        /// Splitting and reassembling without multiplying is the identity.
        #[test]
        fn split_then_assemble_is_identity(rows in 1usize..20, n in 1usize..50, width in 1usize..60) {
            let b = Matrix::from_fn(rows, n, |i, j| (i * 1000 + j) as f32);
            let plan = Plan::new(rows, 1, n, width);
            let mut asm = Assembly::new(plan.clone(), Dtype::F32).unwrap();
            for i in (0..plan.blocks()).rev() {
                let bytes = DenseMatrix::F32(b.clone()).column_byte_range(plan.columns(i));
                asm.accept(i, &b.as_bytes()[bytes]).unwrap();
            }
            prop_assert_eq!(asm.take(), Some(DenseMatrix::F32(b)));
        }
    }

    #[test]
    fn edge_shapes() {
        for (m, k, n) in [(1, 1, 1), (1, 7, 1), (1, 1, 9), (9, 1, 1), (1, 9, 9), (9, 9, 1)] {
            let a = Matrix::from_fn(m, k, |i, j| (i + 2 * j) as f64);
            let b = Matrix::from_fn(k, n, |i, j| (3 * i + j) as f64 - 1.0);
            let order: Vec<usize> = (0..Plan::new(m, k, n, 2).blocks()).collect();
            assert_eq!(blocked_product(&a, &b, 2, &order), naive(&a, &b));
        }
    }

    #[test]
    fn rejects_bad_blocks_and_ignores_duplicates() {
        let mut asm = Assembly::new(Plan::new(2, 2, 3, 2), Dtype::F64).unwrap();
        assert_eq!(asm.accept(5, &[]), Err(AssemblyError::NoSuchBlock { index: 5, blocks: 2 }));
        assert_eq!(asm.accept(1, &[0; 8]), Err(AssemblyError::WrongSize { index: 1, expected: 16, actual: 8 }));
        assert_eq!(asm.accept(1, &[0; 16]), Ok(Accepted::New));
        assert_eq!(asm.accept(1, &[1; 16]), Ok(Accepted::Duplicate));
        assert!(!asm.is_complete());
        assert!(asm.take().is_none());
    }
}
