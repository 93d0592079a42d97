//! The bytes of a job's panels, cut from A and B as they are sent.
//!
//! A panel that spans all rows of its operand is a contiguous run of its
//! column-major bytes and goes out without a copy; any other is gathered
//! column by column. The last few gathered panels are kept, since the
//! neighbours of a worker in the layout often need the same one next.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::matrix::DenseMatrix;
use crate::plan::{Operand, PanelId, Plan};
use crate::protocol::MatrixBytes;

/// Gathered panels kept for reuse.
const KEEP: usize = 4;

#[derive(Debug)]
pub(crate) struct Panels {
    a: Bytes,
    b: Bytes,
    /// Rows of A and of B, and the element size.
    a_rows: usize,
    b_rows: usize,
    elem: usize,
    recent: VecDeque<(PanelId, Bytes)>,
}

impl Panels {
    pub fn new(a: Arc<DenseMatrix>, b: Arc<DenseMatrix>) -> Self {
        let (a_rows, b_rows, elem) = (a.rows(), b.rows(), a.dtype().size());
        Self { a: MatrixBytes::into_bytes(a), b: MatrixBytes::into_bytes(b), a_rows, b_rows, elem, recent: VecDeque::new() }
    }

    /// Panel `id` of `plan`, column-major.
    pub fn bytes(&mut self, plan: &Plan, id: PanelId) -> Bytes {
        let panel = plan.panel(id);
        let (source, rows) = match panel.operand {
            Operand::A => (&self.a, self.a_rows),
            Operand::B => (&self.b, self.b_rows),
        };
        let column = rows * self.elem;
        if panel.rows.len() == rows {
            return source.slice(panel.cols.start * column..panel.cols.end * column);
        }
        if let Some((_, bytes)) = self.recent.iter().find(|(p, _)| *p == id) {
            return bytes.clone();
        }
        let height = panel.rows.len() * self.elem;
        let mut out = Vec::with_capacity(height * panel.cols.len());
        for j in panel.cols {
            let start = j * column + panel.rows.start * self.elem;
            out.extend_from_slice(&source[start..start + height]);
        }
        let bytes = Bytes::from(out);
        if self.recent.len() == KEEP {
            self.recent.pop_front();
        }
        self.recent.push_back((id, bytes.clone()));
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::Matrix;

    #[test]
    fn panels_are_their_operands_rectangles() {
        let a = Matrix::from_fn(5, 4, |i, j| (10 * i + j) as f64);
        let b = Matrix::from_fn(4, 3, |i, j| (100 + 10 * i + j) as f64);
        let plan = Plan::grid(5, 4, 3, 2, 3, 2);
        let mut panels = Panels::new(Arc::new(a.clone().into()), Arc::new(b.clone().into()));
        for id in 0..plan.panels() as PanelId {
            let panel = plan.panel(id);
            let source = if panel.operand == Operand::A { &a } else { &b };
            let want = Matrix::from_fn(panel.rows.len(), panel.cols.len(), |i, j| source.get(panel.rows.start + i, panel.cols.start + j));
            assert_eq!(&panels.bytes(&plan, id)[..], want.as_bytes(), "panel {id}: {panel:?}");
        }
    }
}
