//! A verifier prepared while A is still arriving: B first, then A band by
//! band as a file is read (rows from a C-order file, columns from a Fortran
//! one). Each band's share of y and Ŝ is computed while it is fresh in
//! cache, so the pass over A adds little to the read and nothing to the
//! job. It prepares the groups of
//! [`whole_depth_tiles`]; the plan, made later, is fitted by
//! [`Verifier::retile`] (or, if they do not serve it, prepared anew).

use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

use super::{bound, check_operands, check_weights, depth_rows, groups_for, products_of, weigh, whole_depth_tiles, Group, Runner, Verifier};
use crate::matrix::{DenseMatrix, Dtype, Element};

/// A's column-major storage, m rows per column: while it is read, only some
/// of it holds its values yet (and only a prefix may be lent).
#[derive(Debug, Clone, Copy)]
pub enum Stored<'a> {
    F64(&'a [f64]),
    F32(&'a [f32]),
}

impl<'a> Stored<'a> {
    /// The storage of a matrix of `T`.
    pub fn of<T: Element>(values: &'a [T]) -> Self {
        match T::DTYPE {
            Dtype::F64 => Self::F64(bytemuck::cast_slice(values)),
            Dtype::F32 => Self::F32(bytemuck::cast_slice(values)),
        }
    }

    pub fn of_matrix(matrix: &'a DenseMatrix) -> Self {
        match matrix {
            DenseMatrix::F64(m) => Self::F64(m.as_slice()),
            DenseMatrix::F32(m) => Self::F32(m.as_slice()),
        }
    }

    pub fn dtype(self) -> Dtype {
        match self {
            Self::F64(_) => Dtype::F64,
            Self::F32(_) => Dtype::F32,
        }
    }

    fn len(self) -> usize {
        match self {
            Self::F64(v) => v.len(),
            Self::F32(v) => v.len(),
        }
    }
}

/// y and Ŝ of every group of [`whole_depth_tiles`], filled in as A's bands
/// arrive; [`Self::finish`] makes the verifier.
#[derive(Debug)]
pub struct Preparing {
    m: usize,
    k: usize,
    dtype: Dtype,
    weights: Vec<f64>,
    integer: bool,
    groups: Vec<Group>,
    /// The whole depth, 0..k (none if there are no groups).
    depths: Vec<Range<usize>>,
    /// x = B·r and t = |B|·|r| per group: k × groups, column-major.
    x: Vec<f64>,
    t: Vec<f64>,
    /// m × groups, column-major, as in [`Verifier`].
    y: Vec<f64>,
    scale: Vec<f64>,
    /// Whole rows told of so far (C order), or whole columns (Fortran order).
    rows_done: usize,
    cols_done: usize,
    /// Of those, the ones whose share is in y and Ŝ.
    rows_added: usize,
    cols_added: usize,
}

/// Bands of rows are added this many at least at a time (but the last).
const GATHERED_ROWS: usize = 256;

impl Preparing {
    /// Starts preparing the checks of an `m`-row A times `b`, with the secret
    /// `weights` and `integer` as for [`Verifier::new`]: weighs B (one pass).
    ///
    /// # Panics
    /// As [`Verifier::new`].
    pub fn new(m: usize, b: &DenseMatrix, weights: Vec<f64>, integer: bool) -> Self {
        let (k, n) = (b.rows(), b.cols());
        check_weights(&weights, n);
        let (groups, depths) = groups_for(&whole_depth_tiles(m, k, n), &weights);
        // An empty product needs no weighing: y = Ŝ = 0.
        let (x, t) = if m == 0 || k == 0 { (Vec::new(), Vec::new()) } else { weigh(b, 0..k, &groups, &weights, bound::Precision::of(b.dtype())) };
        let count = groups.len();
        Self {
            m,
            k,
            dtype: b.dtype(),
            weights,
            integer,
            groups,
            depths,
            x,
            t,
            y: vec![0.0; m * count],
            scale: vec![0.0; m * count],
            rows_done: 0,
            cols_done: 0,
            rows_added: 0,
            cols_added: 0,
        }
    }

    /// The secret weights it checks with: a verifier prepared again for
    /// another plan must use them too.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// Whether every element of A has been added.
    pub fn complete(&self) -> bool {
        self.rows_done == self.m || self.cols_done == self.k
    }

    /// Adds the block of A at `rows` × `cols`, which `a` (A's storage, m × k,
    /// or as much of it as reaches the block) holds by now. Blocks come in
    /// order, each once: whole rows band by band (as a C-order file is read),
    /// or whole columns (Fortran order). Thin bands wait to be worked on
    /// together, from a later `a`, which holds them too. The pass is cut
    /// into up to `parts` ranges of the rows, handed to `run` to do at once
    /// where the shell can.
    ///
    /// # Panics
    /// If the block is not the next, or `a` is not an m × k matrix of B's dtype.
    pub fn add(&mut self, a: Stored<'_>, rows: Range<usize>, cols: Range<usize>, parts: usize, run: Runner<'_>) {
        let (m, k, count) = (self.m, self.k, self.groups.len());
        let last = if rows.is_empty() || cols.is_empty() { 0 } else { (cols.end - 1) * m + rows.end };
        assert!(a.dtype() == self.dtype && a.len() >= last && a.len() <= m * k, "A is not {m}x{k} {} up to the block", self.dtype);
        let (rows, cols) = if cols == (0..k) && self.cols_done == 0 && rows.start == self.rows_done && rows.end <= m {
            self.rows_done = rows.end;
            // Each pass lays out x and t for its pieces: bands of a few rows
            // (of a wide A) wait to be added together.
            if rows.end < m && rows.end - self.rows_added < GATHERED_ROWS {
                return;
            }
            (std::mem::replace(&mut self.rows_added, rows.end)..rows.end, cols)
        } else if rows == (0..m) && self.rows_done == 0 && cols.start == self.cols_done && cols.end <= k {
            self.cols_done = cols.end;
            // Each pass over a band of columns reads and writes y and Ŝ for
            // every row: narrow bands of a tall A wait to be added together.
            if cols.end < k && cols.end - self.cols_added < 8 * count {
                return;
            }
            (rows, std::mem::replace(&mut self.cols_added, cols.end)..cols.end)
        } else {
            panic!("rows {rows:?} by columns {cols:?} are not the next block of {m}x{k} after {} rows or {} columns", self.rows_done, self.cols_done);
        };
        if rows.is_empty() || cols.is_empty() || count == 0 {
            return;
        }
        // x and t over the block's depth.
        let (x, t) = if cols == (0..k) {
            (Cow::Borrowed(&self.x[..]), Cow::Borrowed(&self.t[..]))
        } else {
            (Cow::Owned(depth_rows(&self.x, k, &cols)), Cow::Owned(depth_rows(&self.t, k, &cols)))
        };
        let pieces: Vec<Range<usize>> = bound::split(rows.clone(), rows.len().div_ceil(parts.max(1))).collect();
        if pieces.len() == 1 && rows == (0..m) {
            // One piece over every row: its sums are added where they are
            // kept (for a tall A, y and Ŝ are most of the memory touched).
            let (x, t, y, scale) = (&*x, &*t, &mut self.y, &mut self.scale);
            return run(vec![Box::new(move || products_of(a, m, rows, cols, x, t, y, scale))]);
        }
        let mut sums: Vec<(Vec<f64>, Vec<f64>)> = pieces.iter().map(|r| (vec![0.0; r.len() * count], vec![0.0; r.len() * count])).collect();
        let (x, t) = (&*x, &*t);
        let work: Vec<Box<dyn FnOnce() + Send + '_>> = pieces
            .iter()
            .zip(sums.iter_mut())
            .map(|(piece, (y, scale))| {
                let (piece, cols) = (piece.clone(), cols.clone());
                Box::new(move || products_of(a, m, piece, cols, x, t, y, scale)) as Box<dyn FnOnce() + Send + '_>
            })
            .collect();
        run(work);
        // Each block's sums are added in f64 (a column band's are partial).
        for (piece, (y, scale)) in pieces.iter().zip(sums) {
            let h = piece.len();
            for g in 0..count {
                let at = g * m + piece.start..g * m + piece.end;
                self.y[at.clone()].iter_mut().zip(&y[g * h..(g + 1) * h]).for_each(|(o, v)| *o += v);
                self.scale[at].iter_mut().zip(&scale[g * h..(g + 1) * h]).for_each(|(o, v)| *o += v);
            }
        }
    }

    /// The verifier of A·B, checking [`whole_depth_tiles`] until retiled. `b`
    /// must be the B it was started with.
    ///
    /// # Panics
    /// If some rows were never added, or A and B are not the shape and dtype
    /// it was prepared for.
    pub fn finish(self, a: Arc<DenseMatrix>, b: Arc<DenseMatrix>) -> Verifier {
        let (m, k) = (self.m, self.k);
        assert!(self.complete(), "only {} rows or {} columns of A's {m}x{k} were added", self.rows_done, self.cols_done);
        assert!(a.rows() == m && a.cols() == k && a.dtype() == self.dtype, "A is {}, not the {m}x{k} {} prepared for", a.shape_string(), self.dtype);
        check_operands(&a, &b, &self.weights);
        let n = b.cols();
        let mut verifier = Verifier::assemble(a, b, self.weights, self.integer, self.groups, self.depths, self.y, self.scale);
        assert!(verifier.retile(&whole_depth_tiles(m, k, n)), "its groups are those of these tiles");
        verifier
    }
}
