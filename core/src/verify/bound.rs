//! The numbers the checks compare against: unit roundoffs, γ_n, and the
//! constants of the two stages (see the module docs of `verify`).

use crate::matrix::Dtype;

/// λ of the probabilistic bound: a row's weighted error beyond
/// λ·√k·u·(its scale) is flagged for the exact stage. Under Higham and Mary's
/// model (independent rounding errors of mean zero) an honest row passes it
/// with probability at least 1 − 2·exp(−λ²/2) ≈ 1 − 7.5e-6.
pub(super) const LAMBDA: f64 = 5.0;

/// c: an element may be off by up to c times the worst-case error of an honest
/// computation, c·γ_k·(|A||B|)_ij. Never less than 1 (that would reject honest
/// results); 2 leaves room for kernels we have not seen.
pub(super) const SLACK: f64 = 2.0;

/// A tile's columns are checked in groups of at most k/GROUP_DEPTH_RATIO (and
/// at least MIN_GROUP) columns, one secret check vector each. A lie of 10× the
/// per-element bound then stands out of the statistical allowance by about
/// 3.2·√(k/G)/λ ≈ 2.6: see the module docs.
const GROUP_DEPTH_RATIO: usize = 16;
const MIN_GROUP: usize = 16;

/// Widest group of columns for a tile of depth `k`.
pub(super) fn group_width(k: usize) -> usize {
    (k / GROUP_DEPTH_RATIO).max(MIN_GROUP)
}

/// Splits `cols` into as few groups of at most `width` columns as possible,
/// of nearly equal widths.
pub(super) fn split(cols: std::ops::Range<usize>, width: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let count = cols.len().div_ceil(width.max(1));
    let (base, extra) = (cols.len().checked_div(count).unwrap_or(0), cols.len().checked_rem(count).unwrap_or(0));
    (0..count).map(move |g| {
        let start = cols.start + g * base + g.min(extra);
        start..start + base + usize::from(g < extra)
    })
}

/// x ≤ limit, and false when either is NaN: NaN is never within a bound.
pub(super) fn within(x: f64, limit: f64) -> bool {
    x <= limit
}

/// One floating-point format's arithmetic.
#[derive(Clone, Copy, Debug)]
pub(super) struct Precision {
    /// Unit roundoff: every operation's relative error is at most u.
    pub u: f64,
    /// The smallest positive subnormal: more than the absolute error of one
    /// operation whose result underflows (round to nearest loses at most half).
    pub tiny: f64,
    /// The largest finite value.
    pub max: f64,
    /// Every integer below this is exact, and so is every sum of them.
    pub exact_below: f64,
}

pub(super) const F64: Precision = Precision {
    u: f64::EPSILON / 2.0,
    tiny: f64::from_bits(1),
    max: f64::MAX,
    exact_below: 9_007_199_254_740_992.0,
};

pub(super) const F32: Precision = Precision {
    u: f32::EPSILON as f64 / 2.0,
    tiny: 1.401_298_464_324_817e-45,
    max: f32::MAX as f64,
    exact_below: 16_777_216.0,
};

impl Precision {
    pub(super) fn of(dtype: Dtype) -> Self {
        match dtype {
            Dtype::F64 => F64,
            Dtype::F32 => F32,
        }
    }

    /// γ_n = n·u/(1 − n·u): the relative error of n roundings in a row, whatever
    /// their order, with or without fused multiply-adds (Higham, Lemma 3.1).
    pub(super) fn gamma(self, n: usize) -> f64 {
        let nu = n as f64 * self.u;
        if nu < 0.5 {
            nu / (1.0 - nu)
        } else {
            f64::INFINITY
        }
    }

    /// The worst-case error of an honest dot product of length `k` whose
    /// magnitude sum Σ|a_p||b_p| is at most `s` (including underflow).
    pub(super) fn dot_error(self, k: usize, s: f64) -> f64 {
        self.gamma(k) * s + k as f64 * self.tiny
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_constants_are_what_they_say() {
        assert_eq!(F64.tiny, 2f64.powi(-1074));
        assert_eq!(F32.tiny, f64::from(f32::from_bits(1)));
        assert_eq!(F32.u, 2f64.powi(-24));
        assert_eq!(F64.u, 2f64.powi(-53));
        assert_eq!(F32.max, f64::from(f32::MAX));
        assert!(F64.gamma(1 << 60).is_infinite());
    }

    #[test]
    fn groups_split_evenly() {
        let widths: Vec<usize> = split(10..30, 8).map(|r| r.len()).collect();
        assert_eq!(widths, [7, 7, 6]);
        assert_eq!(split(10..30, 8).next().unwrap().start, 10);
        assert_eq!(split(10..30, 8).last().unwrap().end, 30);
        assert_eq!(split(5..5, 8).count(), 0);
        assert_eq!(group_width(256), 16);
        assert_eq!(group_width(4096), 256);
        assert_eq!(group_width(3), MIN_GROUP);
    }
}
