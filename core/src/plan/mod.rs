//! Splitting C = A·B into tiles, and the panels of A and B they need.
//!
//! A plan is a grid: rows of C in `rows.parts` bands, columns in `cols.parts`,
//! and the inner dimension k in `depth.parts` slices. Tile (r, c, s) is the
//! product A[I_r, K_s]·B[K_s, J_c]: C[I_r, J_c] itself when k is not split, or
//! one of its partial sums, which the master adds up once each is verified.
//! Its operands are panel A(r, s) and panel B(s, c). A panel travels once to
//! each worker that needs it and stays in that worker's cache while it fits,
//! so tiles that share a panel share its bytes.
//!
//! One column band with k unsplit (`Plan::columns`) is the classic 1-D split:
//! one A panel (all of A) and one B panel per tile. How the grid is chosen is
//! [`model`]'s business.

use std::ops::Range;

pub mod model;

pub use model::CostModel;

/// 0..len cut into `parts` near-equal ranges (sizes differ by at most one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Split {
    pub len: usize,
    pub parts: usize,
}

impl Split {
    /// At least one part, and no empty part unless `len` is zero.
    pub fn new(len: usize, parts: usize) -> Self {
        Self { len, parts: parts.clamp(1, len.max(1)) }
    }

    pub fn range(&self, i: usize) -> Range<usize> {
        i * self.len / self.parts..(i + 1) * self.len / self.parts
    }

    /// The longest part.
    pub fn largest(&self) -> usize {
        self.len.div_ceil(self.parts)
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

/// Which operand a panel is cut from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Operand {
    A,
    B,
}

/// A panel's id within its job.
pub type PanelId = u32;

/// A rectangle of A or B that travels as one unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Panel {
    pub operand: Operand,
    pub rows: Range<usize>,
    pub cols: Range<usize>,
}

impl Panel {
    pub fn elements(&self) -> usize {
        self.rows.len() * self.cols.len()
    }
}

/// The tile grid of one job.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub rows: Split,
    pub cols: Split,
    pub depth: Split,
    /// How many workers the grid was laid out for, along rows, columns and
    /// depth: each starts in its own box of tiles (see `job::queue`).
    pub layout: (usize, usize, usize),
    /// Whether workers beyond the layout's may split a box and share it (the
    /// plan used the whole pool), or should wait for a box to be free (the
    /// plan chose fewer workers, to spare the link).
    pub spread: bool,
    /// The slowest speed (flop/s) the plan counted on for a region: a slower
    /// worker does not take over a free one.
    pub min_speed: f64,
}

impl Plan {
    /// A grid of `rows` × `cols` × `depth` parts (each at least 1, at most the dimension).
    pub fn grid(m: usize, k: usize, n: usize, rows: usize, cols: usize, depth: usize) -> Self {
        Self { m, k, n, rows: Split::new(m, rows), cols: Split::new(n, cols), depth: Split::new(k, depth), layout: (1, 1, 1), spread: true, min_speed: 0.0 }
    }

    /// The 1-D split: column blocks of at most `width` columns, all rows, all of k.
    ///
    /// # Panics
    /// If `width` is zero.
    pub fn columns(m: usize, k: usize, n: usize, width: usize) -> Self {
        assert!(width > 0, "block width must be positive");
        Self::grid(m, k, n, 1, n.div_ceil(width), 1)
    }

    /// The same grid, laid out for workers along rows, columns and depth.
    pub fn laid_out(self, layout: (usize, usize, usize)) -> Self {
        Self { layout, ..self }
    }

    /// The same grid, letting extra workers split boxes (`spread`) or not.
    pub fn spread_to(self, spread: bool) -> Self {
        Self { spread, ..self }
    }

    /// The grid's shape: (row bands, column bands, depth slices).
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.rows.parts, self.cols.parts, self.depth.parts)
    }

    pub fn tiles(&self) -> usize {
        self.rows.parts * self.cols.parts * self.depth.parts
    }

    /// Tile `t`'s grid position (r, c, s). Partials of one block of C are adjacent.
    pub fn coords(&self, t: usize) -> (usize, usize, usize) {
        let s = t % self.depth.parts;
        let rc = t / self.depth.parts;
        (rc / self.cols.parts, rc % self.cols.parts, s)
    }

    pub fn index(&self, r: usize, c: usize, s: usize) -> usize {
        (r * self.cols.parts + c) * self.depth.parts + s
    }

    pub fn tile(&self, t: usize) -> Tile {
        let (r, c, s) = self.coords(t);
        Tile { rows: self.rows.range(r), cols: self.cols.range(c), depth: self.depth.range(s) }
    }

    /// Blocks of C: one per (row band, column band); each is the sum of its
    /// tiles' products over the depth slices.
    pub fn blocks(&self) -> usize {
        self.rows.parts * self.cols.parts
    }

    /// The block of C tile `t` contributes to.
    pub fn block_of(&self, t: usize) -> usize {
        t / self.depth.parts
    }

    /// Block `b`'s rows and columns of C.
    pub fn block(&self, b: usize) -> (Range<usize>, Range<usize>) {
        (self.rows.range(b / self.cols.parts), self.cols.range(b % self.cols.parts))
    }

    /// The tiles whose products sum to block `b`, in depth order.
    pub fn tiles_of(&self, b: usize) -> Range<usize> {
        b * self.depth.parts..(b + 1) * self.depth.parts
    }

    pub fn panels(&self) -> usize {
        (self.rows.parts + self.cols.parts) * self.depth.parts
    }

    /// Panels A(r, s) and B(s, c) of tile `t`.
    pub fn panels_of(&self, t: usize) -> [PanelId; 2] {
        let (r, c, s) = self.coords(t);
        let a = r * self.depth.parts + s;
        let b = self.rows.parts * self.depth.parts + s * self.cols.parts + c;
        [a as PanelId, b as PanelId]
    }

    /// Panel `id`'s rectangle of A or B.
    pub fn panel(&self, id: PanelId) -> Panel {
        let id = id as usize;
        let a_panels = self.rows.parts * self.depth.parts;
        if id < a_panels {
            let (r, s) = (id / self.depth.parts, id % self.depth.parts);
            Panel { operand: Operand::A, rows: self.rows.range(r), cols: self.depth.range(s) }
        } else {
            let (s, c) = ((id - a_panels) / self.cols.parts, (id - a_panels) % self.cols.parts);
            Panel { operand: Operand::B, rows: self.depth.range(s), cols: self.cols.range(c) }
        }
    }

    /// Elements of A, B and C one tile of the largest size holds.
    pub fn largest_tile_elements(&self) -> usize {
        let (mr, nc, kd) = (self.rows.largest(), self.cols.largest(), self.depth.largest());
        mr * kd + kd * nc + mr * nc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_d_is_column_blocks() {
        let plan = Plan::columns(5, 6, 17, 3);
        assert_eq!(plan.tiles(), 6);
        assert_eq!(plan.blocks(), 6);
        assert_eq!(plan.panels(), 7, "all of A, and one panel of B per block");
        assert_eq!(plan.panels_of(2), [0, 3]);
        assert_eq!(plan.panel(0), Panel { operand: Operand::A, rows: 0..5, cols: 0..6 });
        assert!(plan.tile(5).cols.len() <= 3);
    }

    proptest! {
        /// Every element of C is in exactly one block, every (element, depth) in
        /// exactly one tile, and a tile's panels are exactly its operands.
        #[test]
        fn tiles_cover_everything_once(m in 1usize..30, k in 1usize..30, n in 1usize..30, pr in 1usize..8, pc in 1usize..8, pk in 1usize..8) {
            let plan = Plan::grid(m, k, n, pr, pc, pk);
            let mut seen = vec![0u8; m * n * k];
            for t in 0..plan.tiles() {
                let tile = plan.tile(t);
                prop_assert!(!tile.rows.is_empty() && !tile.cols.is_empty() && !tile.depth.is_empty());
                prop_assert_eq!(plan.index(plan.coords(t).0, plan.coords(t).1, plan.coords(t).2), t);
                let (rows, cols) = plan.block(plan.block_of(t));
                prop_assert_eq!((&rows, &cols), (&tile.rows, &tile.cols));
                prop_assert!(plan.tiles_of(plan.block_of(t)).contains(&t));
                let [a, b] = plan.panels_of(t);
                prop_assert_eq!(plan.panel(a), Panel { operand: Operand::A, rows: tile.rows.clone(), cols: tile.depth.clone() });
                prop_assert_eq!(plan.panel(b), Panel { operand: Operand::B, rows: tile.depth.clone(), cols: tile.cols.clone() });
                for i in tile.rows.clone() {
                    for j in tile.cols.clone() {
                        for p in tile.depth.clone() {
                            seen[(i * n + j) * k + p] += 1;
                        }
                    }
                }
            }
            prop_assert!(seen.iter().all(|&x| x == 1));
        }
    }
}
