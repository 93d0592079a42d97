//! Running core's kernel on several threads: each thread takes a contiguous
//! range of columns (column-major makes those disjoint slices).

use colonnade_core::kernel;
use colonnade_core::{DenseMatrix, Element, Matrix};

/// C = A · B on `threads` threads.
///
/// # Panics
/// If the inner dimensions or element types differ (callers check).
pub fn multiply(a: &DenseMatrix, b: &DenseMatrix, threads: usize) -> DenseMatrix {
    match (a, b) {
        (DenseMatrix::F64(a), DenseMatrix::F64(b)) => multiply_typed(a, b, threads).into(),
        (DenseMatrix::F32(a), DenseMatrix::F32(b)) => multiply_typed(a, b, threads).into(),
        _ => panic!("A is {} but B is {}", a.dtype(), b.dtype()),
    }
}

fn multiply_typed<T: Element>(a: &Matrix<T>, b: &Matrix<T>, threads: usize) -> Matrix<T> {
    assert_eq!(a.cols(), b.rows(), "inner dimensions differ");
    let (m, k, n) = (a.rows(), a.cols(), b.cols());
    let mut c = Matrix::zeros(m, n).expect("C fits when A and B do");
    let per_thread = n.div_ceil(threads.max(1)).max(1);
    if threads <= 1 || n < 2 || m == 0 {
        kernel::multiply_into(a, b.as_slice(), c.as_mut_slice());
        return c;
    }
    std::thread::scope(|s| {
        let c_parts = c.as_mut_slice().chunks_mut(m * per_thread);
        let b_parts = b.as_slice().chunks(k * per_thread);
        for (c_part, b_part) in c_parts.zip(b_parts) {
            s.spawn(move || kernel::multiply_into(a, b_part, c_part));
        }
    });
    c
}

/// This machine's kernel speed on `threads` threads, flop/s: the best of a
/// few small products (a few milliseconds in all). Workers announce it in
/// their Hello, as a hint for the master's plan until their results show.
pub fn measure_speed(threads: usize) -> u64 {
    let n = 256;
    let a = DenseMatrix::F64(Matrix::from_fn(n, n, |i, j| ((i + j) % 7) as f64));
    let best = (0..3)
        .map(|_| {
            let start = std::time::Instant::now();
            std::hint::black_box(multiply(&a, &a, threads));
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    (kernel::flops(n, n, n) / best.max(1e-9)) as u64
}

/// The number of CPUs this process may use.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_split_columns_without_changing_the_result() {
        let a = Matrix::from_fn(33, 20, |i, j| ((i * 3 + j) % 7) as f64 - 3.0);
        let b = Matrix::from_fn(20, 13, |i, j| ((i + j * 5) % 5) as f64 - 2.0);
        let one = multiply(&a.clone().into(), &b.clone().into(), 1);
        for threads in [2, 3, 5, 13, 40] {
            assert_eq!(multiply(&a.clone().into(), &b.clone().into(), threads), one, "{threads} threads");
        }
    }
}
