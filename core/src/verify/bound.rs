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
    /// The smallest positive subnormal ("tiny": more than the absolute error
    /// of one operation whose result underflows) over 2^-1022, f64's smallest
    /// normal number: tiny itself is a subnormal in f64, slow to compute with.
    pub tiny_over_min_normal: f64,
    /// Below this, a sum t_p = Σ_j |b_pj·r_j| may have lost to underflow an
    /// amount that is not negligible next to itself (see [`Self::small_t`]).
    pub small_t_below: f64,
    /// The largest finite value.
    pub max: f64,
    /// Every integer below this is exact, and so is every sum of them.
    pub exact_below: f64,
}

pub(super) const F64: Precision = Precision {
    u: f64::EPSILON / 2.0,
    tiny_over_min_normal: f64::EPSILON, // 2^-1074 / 2^-1022
    small_t_below: f64::from_bits((1023 - 900) << 52), // 2^-900
    max: f64::MAX,
    exact_below: crate::matrix::EXACT_INTEGER_LIMIT,
};

pub(super) const F32: Precision = Precision {
    u: f32::EPSILON as f64 / 2.0,
    tiny_over_min_normal: f64::from_bits((1023 + 873) << 52), // 2^-149 / 2^-1022
    small_t_below: f64::from_bits((1023 - 100) << 52),        // 2^-100
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

    /// At least `count` times tiny, and never subnormal: arithmetic on
    /// subnormals takes a slow path on x86 (about 100 times slower), and for
    /// f64 the exact figure would be one. It is at least f64's smallest normal
    /// number, which loosens nothing that matters.
    pub(super) fn underflow(self, count: f64) -> f64 {
        f64::MIN_POSITIVE * (count * self.tiny_over_min_normal).max(1.0)
    }

    /// Where a column of t = |B|·|r| over a group of `w` columns is positive
    /// but below `.0`, our x_p (summed in f64, then held in this precision)
    /// may have lost up to w·tiny to underflow, which |a_ip| could magnify;
    /// `.1` is that loss over u, so that raising t_p by it puts the loss inside
    /// the worker's γ_k·S_i (see `Verifier::precompute`). Above `.0` the loss
    /// is below 2^-20·u·t_p, inside the roundings already counted. (With every
    /// |r_j| ≥ 1, t_p is 0 only where every b_pj is.)
    pub(super) fn small_t(self, w: usize) -> (f64, f64) {
        (self.small_t_below, self.underflow(w as f64 + 1.0) / self.u)
    }

    /// The worst-case error of an honest dot product of length `k` whose
    /// magnitude sum Σ|a_p||b_p| is at most `s` (including underflow).
    pub(super) fn dot_error(self, k: usize, s: f64) -> f64 {
        self.gamma(k) * s + self.underflow(k as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_constants_are_what_they_say() {
        assert_eq!(F64.tiny_over_min_normal * f64::MIN_POSITIVE, 2f64.powi(-1074));
        assert_eq!(F32.tiny_over_min_normal * f64::MIN_POSITIVE, f64::from(f32::from_bits(1)));
        assert_eq!((F64.small_t_below, F32.small_t_below), (2f64.powi(-900), 2f64.powi(-100)));
        assert_eq!(F32.u, 2f64.powi(-24));
        assert_eq!(F64.u, 2f64.powi(-53));
        assert_eq!(F32.max, f64::from(f32::MAX));
        assert!(F64.gamma(1 << 60).is_infinite());
        for count in [0.0, 1.0, 1e6, 1e20] {
            assert!(F64.underflow(count) >= count * 2f64.powi(-1074) && F64.underflow(count) >= f64::MIN_POSITIVE);
            assert!(F32.underflow(count) >= count * 2f64.powi(-149) && F32.underflow(count) >= f64::MIN_POSITIVE);
        }
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
