//! Receiving a matrix that arrives in chunks.

use crate::matrix::{DenseMatrix, Dtype, ShapeError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("chunk at byte {got} arrived out of order (expected byte {expected})")]
    OutOfOrder { expected: u64, got: u64 },
    #[error("chunk ends at byte {end}, past the payload's {total} bytes")]
    Overrun { end: u64, total: u64 },
    #[error("empty chunk")]
    Empty,
}

/// A matrix being filled, in order, from chunks of its raw bytes.
#[derive(Debug)]
pub struct Incoming {
    matrix: DenseMatrix,
    received: usize,
}

impl Incoming {
    pub fn new(dtype: Dtype, rows: usize, cols: usize) -> Result<Self, ShapeError> {
        Ok(Self { matrix: DenseMatrix::zeros(dtype, rows, cols)?, received: 0 })
    }

    pub fn shape(&self) -> (usize, usize) {
        (self.matrix.rows(), self.matrix.cols())
    }

    pub fn total(&self) -> usize {
        self.matrix.as_bytes().len()
    }

    /// Adds one chunk; returns whether the payload is now complete.
    pub fn add(&mut self, offset: u64, body: &[u8]) -> Result<bool, PayloadError> {
        let total = self.total() as u64;
        if offset != self.received as u64 {
            return Err(PayloadError::OutOfOrder { expected: self.received as u64, got: offset });
        }
        if body.is_empty() {
            return Err(PayloadError::Empty);
        }
        let end = offset + body.len() as u64;
        if end > total {
            return Err(PayloadError::Overrun { end, total });
        }
        self.matrix.as_bytes_mut()[self.received..end as usize].copy_from_slice(body);
        self.received = end as usize;
        Ok(self.is_complete())
    }

    pub fn is_complete(&self) -> bool {
        self.received == self.total()
    }

    pub fn into_matrix(self) -> DenseMatrix {
        self.matrix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_in_order_and_rejects_the_rest() {
        let mut p = Incoming::new(Dtype::F32, 2, 2).unwrap();
        assert_eq!(p.add(4, &[0; 4]), Err(PayloadError::OutOfOrder { expected: 0, got: 4 }));
        assert_eq!(p.add(0, &[1; 8]), Ok(false));
        assert_eq!(p.add(8, &[]), Err(PayloadError::Empty));
        assert_eq!(p.add(8, &[2; 12]), Err(PayloadError::Overrun { end: 20, total: 16 }));
        assert_eq!(p.add(8, &[2; 8]), Ok(true));
        assert_eq!(&p.into_matrix().as_bytes()[6..10], &[1, 1, 2, 2]);
    }
}
