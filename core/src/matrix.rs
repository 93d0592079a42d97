//! Column-major dense matrices. A block of columns is one contiguous slice,
//! which is what goes on the wire (as raw little-endian bytes) and into the kernel.

use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};

/// The element types Colonnade computes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Dtype {
    F32,
    F64,
}

impl Dtype {
    pub const fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }
}

impl Dtype {
    /// The element type of A·B: f32 only when both are f32, else f64.
    pub fn of_product(a: Dtype, b: Dtype) -> Dtype {
        if a == Dtype::F32 && b == Dtype::F32 {
            Dtype::F32
        } else {
            Dtype::F64
        }
    }
}

/// Below this magnitude every integer, and every sum of such integers that
/// stays below it, is exact in f64 (2^53).
pub const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0;

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
        })
    }
}

/// A scalar the kernel can multiply.
pub trait Element: bytemuck::Pod + Default + PartialEq + fmt::Debug + Send + Sync + 'static {
    const DTYPE: Dtype;
    fn to_f64(self) -> f64;
    fn from_f64(value: f64) -> Self;
}

impl Element for f32 {
    const DTYPE: Dtype = Dtype::F32;
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn from_f64(value: f64) -> Self {
        value as f32
    }
}

impl Element for f64 {
    const DTYPE: Dtype = Dtype::F64;
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(value: f64) -> Self {
        value
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("a {rows}x{cols} matrix needs {expected} elements, got {actual}")]
    Length { rows: usize, cols: usize, expected: usize, actual: usize },
    #[error("a {rows}x{cols} matrix is too large to address")]
    Overflow { rows: usize, cols: usize },
    #[error("{got} bytes is not a whole number of {dtype} elements")]
    Ragged { got: usize, dtype: Dtype },
}

/// Number of elements in a rows×cols matrix, or an error if it overflows.
pub fn element_count(rows: usize, cols: usize) -> Result<usize, ShapeError> {
    rows.checked_mul(cols).ok_or(ShapeError::Overflow { rows, cols })
}

/// A dense, column-major matrix.
#[derive(Clone, PartialEq)]
pub struct Matrix<T> {
    rows: usize,
    cols: usize,
    data: Vec<T>,
}

impl<T: Element> Matrix<T> {
    pub fn from_col_major(rows: usize, cols: usize, data: Vec<T>) -> Result<Self, ShapeError> {
        let expected = element_count(rows, cols)?;
        if data.len() != expected {
            return Err(ShapeError::Length { rows, cols, expected, actual: data.len() });
        }
        Ok(Self { rows, cols, data })
    }

    pub fn zeros(rows: usize, cols: usize) -> Result<Self, ShapeError> {
        Ok(Self { rows, cols, data: vec![T::default(); element_count(rows, cols)?] })
    }

    /// Builds a matrix from `f(row, col)`.
    pub fn from_fn(rows: usize, cols: usize, mut f: impl FnMut(usize, usize) -> T) -> Self {
        let mut data = Vec::with_capacity(rows * cols);
        for j in 0..cols {
            for i in 0..rows {
                data.push(f(i, j));
            }
        }
        Self { rows, cols, data }
    }

    /// Decodes raw little-endian bytes in column-major order.
    pub fn from_le_bytes(rows: usize, cols: usize, bytes: &[u8]) -> Result<Self, ShapeError> {
        let mut m = Self::zeros(rows, cols)?;
        let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut m.data);
        if dst.len() != bytes.len() {
            return Err(ShapeError::Length {
                rows,
                cols,
                expected: dst.len() / T::DTYPE.size(),
                actual: bytes.len() / T::DTYPE.size(),
            });
        }
        dst.copy_from_slice(bytes);
        Ok(m)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn get(&self, row: usize, col: usize) -> T {
        self.data[col * self.rows + row]
    }
    pub fn as_slice(&self) -> &[T] {
        &self.data
    }
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.data
    }
    pub fn into_vec(self) -> Vec<T> {
        self.data
    }
    /// Columns `range`, as one contiguous slice.
    pub fn columns(&self, range: Range<usize>) -> &[T] {
        &self.data[range.start * self.rows..range.end * self.rows]
    }
    pub fn columns_mut(&mut self, range: Range<usize>) -> &mut [T] {
        &mut self.data[range.start * self.rows..range.end * self.rows]
    }
    /// The raw little-endian bytes, column-major.
    pub fn as_bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.data)
    }
}

impl<T: Element> fmt::Debug for Matrix<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Matrix<{}>({}x{})", T::DTYPE, self.rows, self.cols)?;
        if self.data.len() <= 16 {
            write!(f, " {:?}", self.data)?;
        }
        Ok(())
    }
}

/// A matrix whose element type is known only at run time (from a file or the wire).
#[derive(Clone, PartialEq, Debug)]
pub enum DenseMatrix {
    F32(Matrix<f32>),
    F64(Matrix<f64>),
}

impl DenseMatrix {
    pub fn zeros(dtype: Dtype, rows: usize, cols: usize) -> Result<Self, ShapeError> {
        Ok(match dtype {
            Dtype::F32 => DenseMatrix::F32(Matrix::zeros(rows, cols)?),
            Dtype::F64 => DenseMatrix::F64(Matrix::zeros(rows, cols)?),
        })
    }
    /// Decodes raw little-endian bytes, column-major.
    pub fn from_le_bytes(dtype: Dtype, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self, ShapeError> {
        Ok(match dtype {
            Dtype::F32 => DenseMatrix::F32(Matrix::from_le_bytes(rows, cols, bytes)?),
            Dtype::F64 => DenseMatrix::F64(Matrix::from_le_bytes(rows, cols, bytes)?),
        })
    }

    pub fn dtype(&self) -> Dtype {
        match self {
            DenseMatrix::F32(_) => Dtype::F32,
            DenseMatrix::F64(_) => Dtype::F64,
        }
    }
    pub fn rows(&self) -> usize {
        match self {
            DenseMatrix::F32(m) => m.rows(),
            DenseMatrix::F64(m) => m.rows(),
        }
    }
    pub fn cols(&self) -> usize {
        match self {
            DenseMatrix::F32(m) => m.cols(),
            DenseMatrix::F64(m) => m.cols(),
        }
    }
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            DenseMatrix::F32(m) => m.as_bytes(),
            DenseMatrix::F64(m) => m.as_bytes(),
        }
    }
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        match self {
            DenseMatrix::F32(m) => bytemuck::cast_slice_mut(m.as_mut_slice()),
            DenseMatrix::F64(m) => bytemuck::cast_slice_mut(m.as_mut_slice()),
        }
    }
    /// Byte range of columns `range` within `as_bytes()`.
    pub fn column_byte_range(&self, range: Range<usize>) -> Range<usize> {
        let col = self.rows() * self.dtype().size();
        range.start * col..range.end * col
    }
    /// Element (row, col) widened to f64.
    pub fn get_f64(&self, row: usize, col: usize) -> f64 {
        match self {
            DenseMatrix::F32(m) => f64::from(m.get(row, col)),
            DenseMatrix::F64(m) => m.get(row, col),
        }
    }
    /// Converts to f64 (a no-op for f64).
    pub fn into_f64(self) -> Matrix<f64> {
        match self {
            DenseMatrix::F64(m) => m,
            DenseMatrix::F32(m) => {
                let (rows, cols) = (m.rows(), m.cols());
                let data = m.into_vec().into_iter().map(f64::from).collect();
                Matrix { rows, cols, data }
            }
        }
    }
    /// Converts to `dtype` (rounding to f32 if need be).
    pub fn into_dtype(self, dtype: Dtype) -> DenseMatrix {
        match dtype {
            Dtype::F64 => DenseMatrix::F64(self.into_f64()),
            Dtype::F32 => DenseMatrix::F32(self.into_f32()),
        }
    }

    /// Converts to f32 (rounding).
    pub fn into_f32(self) -> Matrix<f32> {
        match self {
            DenseMatrix::F32(m) => m,
            DenseMatrix::F64(m) => {
                let (rows, cols) = (m.rows(), m.cols());
                let data = m.into_vec().into_iter().map(|v| v as f32).collect();
                Matrix { rows, cols, data }
            }
        }
    }
    pub fn shape_string(&self) -> String {
        format!("{}x{}", self.rows(), self.cols())
    }
}

impl From<Matrix<f32>> for DenseMatrix {
    fn from(m: Matrix<f32>) -> Self {
        DenseMatrix::F32(m)
    }
}
impl From<Matrix<f64>> for DenseMatrix {
    fn from(m: Matrix<f64>) -> Self {
        DenseMatrix::F64(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_contiguous() {
        let m = Matrix::from_fn(3, 4, |i, j| (10 * i + j) as f64);
        assert_eq!(m.columns(1..3), &[1.0, 11.0, 21.0, 2.0, 12.0, 22.0]);
        assert_eq!(m.get(2, 3), 23.0);
    }

    #[test]
    fn bytes_round_trip() {
        let m = Matrix::from_fn(2, 3, |i, j| (i as f32) - (j as f32) * 0.5);
        let back = Matrix::<f32>::from_le_bytes(2, 3, m.as_bytes()).unwrap();
        assert_eq!(m, back);
        assert!(Matrix::<f32>::from_le_bytes(2, 3, &m.as_bytes()[1..]).is_err());
    }

    #[test]
    fn wrong_length_is_an_error() {
        assert!(matches!(
            Matrix::from_col_major(2, 2, vec![1.0f64; 3]),
            Err(ShapeError::Length { expected: 4, actual: 3, .. })
        ));
        assert!(matches!(Matrix::<f64>::zeros(usize::MAX, 2), Err(ShapeError::Overflow { .. })));
    }
}
