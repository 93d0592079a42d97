//! Moving a file's elements into a column-major matrix fast: whole runs
//! converted by one monomorphised loop, and row-major panels transposed in
//! cache-sized tiles.

use colonnade_core::{Element, Matrix};

/// Converts a run of elements stored in the matrix's own order.
pub(crate) fn convert<S: Copy, T>(src: &[S], dst: &mut [T], decode: impl Fn(S) -> T) {
    debug_assert_eq!(src.len(), dst.len());
    for (out, &s) in dst.iter_mut().zip(src) {
        *out = decode(s);
    }
}

/// Transposes a row-major `height`×`width` panel `src` (rows `i0..` and
/// columns `c0..` of the matrix) into the column-major `dst`, which has `rows`
/// rows: `dst[(c0 + j) * rows + i0 + i] = decode(src[i * width + j])`, with
/// the panel's columns split over up to `threads` threads: each writes its
/// own columns of the matrix, and the cache misses of reading down the panel
/// (its rows are a matrix row apart) overlap.
///
/// Works in `B`×`B` tiles: a tile's `B` source rows and `B` destination
/// columns are each one or two cache lines when `B` elements fill a line (8
/// for f64, 16 for f32), so every line is fetched once and written whole.
#[allow(clippy::too_many_arguments)]
pub(crate) fn transpose<const B: usize, S: Copy + Sync, T: Copy + Send>(
    src: &[S],
    height: usize,
    width: usize,
    dst: &mut [T],
    rows: usize,
    i0: usize,
    c0: usize,
    decode: impl Fn(S) -> T + Copy + Send,
    threads: usize,
) {
    assert!(src.len() == height * width && i0 + height <= rows && (c0 + width) * rows <= dst.len(), "panel out of bounds");
    // Whole tiles per thread, so that no tile is split.
    let per_thread = width.div_ceil(threads.max(1)).next_multiple_of(B);
    if per_thread >= width {
        return transpose_columns::<B, _, _>(src, height, width, 0..width, &mut dst[c0 * rows..], rows, i0, decode);
    }
    std::thread::scope(|scope| {
        let parts = dst[c0 * rows..(c0 + width) * rows].chunks_mut(per_thread * rows);
        for (first, part) in (0..width).step_by(per_thread).zip(parts) {
            let columns = first..(first + per_thread).min(width);
            scope.spawn(move || transpose_columns::<B, _, _>(src, height, width, columns, part, rows, i0, decode));
        }
    });
}

/// The work of [`transpose`] for the panel's `columns`, into `dst`, whose
/// first column is the matrix column of panel column `columns.start`.
#[allow(clippy::too_many_arguments)]
fn transpose_columns<const B: usize, S: Copy, T: Copy>(
    src: &[S],
    height: usize,
    width: usize,
    columns: std::ops::Range<usize>,
    dst: &mut [T],
    rows: usize,
    i0: usize,
    decode: impl Fn(S) -> T,
) {
    assert!(columns.end <= width && columns.len() * rows <= dst.len(), "columns out of bounds");
    let first = columns.start;
    for jb in columns.clone().step_by(B) {
        let jw = B.min(columns.end - jb);
        for ib in (0..height).step_by(B) {
            let iw = B.min(height - ib);
            if iw == B && jw == B {
                // A full tile: fixed bounds, so the loops unroll and the
                // indexing checks fold away.
                let rows_in: [&[S; B]; B] = std::array::from_fn(|i| {
                    let at = (ib + i) * width + jb;
                    src[at..at + B].try_into().expect("B elements")
                });
                for j in 0..B {
                    let at = (jb - first + j) * rows + i0 + ib;
                    let column: &mut [T; B] = (&mut dst[at..at + B]).try_into().expect("B elements");
                    for (out, row) in column.iter_mut().zip(&rows_in) {
                        *out = decode(row[j]);
                    }
                }
            } else {
                for j in jb..jb + jw {
                    let column = &mut dst[(j - first) * rows + i0 + ib..][..iw];
                    for (i, out) in column.iter_mut().enumerate() {
                        *out = decode(src[(ib + i) * width + j]);
                    }
                }
            }
        }
    }
}

/// The tile side for elements of type `T`: one 64-byte cache line of them.
pub(crate) const fn tile_for<T>() -> usize {
    64 / std::mem::size_of::<T>()
}

/// A `rows`×`cols` matrix of zeros. A large one comes from fresh pages that
/// nothing has touched yet (the allocator's zeroed memory), so filling it is
/// the first write, and is backed by huge pages where the system allows, as
/// numpy does for its arrays: far fewer page faults and TLB misses while the
/// matrix is filled, most of all when it is filled across its columns by a
/// transposition.
pub(crate) fn zeroed<T: Element>(rows: usize, cols: usize) -> Result<Matrix<T>, String> {
    let mut m = Matrix::<T>::zeros(rows, cols).map_err(|e| e.to_string())?;
    advise_huge_pages(bytemuck::cast_slice_mut(m.as_mut_slice()));
    Ok(m)
}

/// Asks the kernel to back `bytes` (if large) with huge pages, as numpy does
/// for its arrays. Only worth it before the pages are first touched.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub(crate) fn advise_huge_pages(bytes: &mut [u8]) {
    // numpy's threshold; smaller arrays gain nothing.
    const MIN: usize = 4 << 20;
    const PAGE: usize = 4096;
    if bytes.len() < MIN {
        return;
    }
    // The whole pages inside the slice (madvise wants a page-aligned start).
    let addr = bytes.as_ptr() as usize;
    let skip = addr.next_multiple_of(PAGE) - addr;
    let len = (bytes.len() - skip) / PAGE * PAGE;
    let pages = &mut bytes[skip..skip + len];
    // SAFETY: madvise only advises: MADV_HUGEPAGE changes how the kernel backs
    // these pages, never their contents, and the range lies within memory this
    // slice owns. Failure (e.g. huge pages disabled) just leaves normal pages.
    unsafe {
        libc::madvise(pages.as_mut_ptr().cast(), pages.len(), libc::MADV_HUGEPAGE);
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn advise_huge_pages(_bytes: &mut [u8]) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The panel transposed one element at a time.
    fn reference(src: &[u32], height: usize, width: usize, rows: usize, cols: usize, i0: usize, c0: usize) -> Vec<u64> {
        let mut dst = vec![u64::MAX; rows * cols];
        for i in 0..height {
            for j in 0..width {
                dst[(c0 + j) * rows + i0 + i] = u64::from(src[i * width + j]) * 3;
            }
        }
        dst
    }

    fn check<const B: usize>(height: usize, width: usize, rows: usize, cols: usize, i0: usize, c0: usize) {
        let src: Vec<u32> = (0..height * width).map(|k| k as u32 * 7 + 1).collect();
        let want = reference(&src, height, width, rows, cols, i0, c0);
        for threads in [1, 2, 3, 7] {
            let mut dst = vec![u64::MAX; rows * cols];
            transpose::<B, _, _>(&src, height, width, &mut dst, rows, i0, c0, |s| u64::from(s) * 3, threads);
            assert_eq!(dst, want, "B={B} {height}x{width} panel at ({i0}, {c0}) of {rows}x{cols} on {threads} threads");
        }
    }

    #[test]
    fn transposes_panels_of_every_shape() {
        // Whole matrices, divisible by the tile or not, thin ones included.
        for (r, c) in [(1, 1), (1, 37), (37, 1), (8, 8), (16, 24), (9, 17), (31, 33), (64, 7), (5, 100)] {
            check::<8>(r, c, r, c, 0, 0);
            check::<16>(r, c, r, c, 0, 0);
            check::<1>(r, c, r, c, 0, 0);
        }
        // Panels inside a larger matrix: the rest stays untouched.
        check::<8>(8, 20, 29, 20, 16, 0);
        check::<8>(5, 20, 29, 20, 24, 0);
        check::<8>(1, 9, 3, 30, 2, 21);
        check::<16>(17, 13, 40, 50, 23, 37);
    }

    #[test]
    fn converts_runs() {
        let mut dst = [0.0f64; 5];
        convert(&[[1u8, 0], [0, 1], [255, 255], [0, 0], [7, 0]], &mut dst, |b| f64::from(i16::from_le_bytes(b)));
        assert_eq!(dst, [1.0, 256.0, -1.0, 0.0, 7.0]);
    }

    #[test]
    fn zeroed_matrices_are_zero() {
        for (r, c) in [(1, 1), (1024, 1025)] {
            let m = zeroed::<f64>(r, c).unwrap();
            assert_eq!((m.rows(), m.cols()), (r, c));
            assert!(m.as_slice().iter().all(|&v| v.to_bits() == 0));
        }
        assert!(zeroed::<f32>(usize::MAX, 2).is_err());
    }
}
