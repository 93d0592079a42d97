//! Reading and writing matrix files. The format follows the extension.
//!
//! Every byte of a file is untrusted: readers return an [`InputError`] naming
//! the file and the problem, and never allocate more than the file can justify
//! (or the machine can hold). Writers go through a temporary file and a rename,
//! so a half-written output never replaces a good file.

mod csv;
mod layout;
mod mtx;
mod npy;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::Context;
use colonnade_core::verify::Stored;
use colonnade_core::DenseMatrix;

use crate::units::human_bytes;

/// A bad input file: exit code 2, one line naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct InputError {
    pub path: PathBuf,
    pub problem: String,
}

impl InputError {
    pub fn new(path: &Path, problem: impl Into<String>) -> Self {
        Self { path: path.to_owned(), problem: problem.into() }
    }
}

/// A matrix read from a file, and whether every value in the file was an integer.
#[derive(Debug)]
pub struct Loaded {
    pub matrix: DenseMatrix,
    pub integer: bool,
}

/// A block of a matrix that a reader has filled in: its storage so far
/// (column-major, `shape.0` rows per column), of which `rows` × `cols` is
/// now complete.
#[derive(Debug, Clone)]
pub struct Filled<'a> {
    pub stored: Stored<'a>,
    pub shape: (usize, usize),
    pub rows: Range<usize>,
    pub cols: Range<usize>,
    /// Every value in the file is an integer.
    pub integer: bool,
}

/// Told of blocks in order, each once, as they are read: bands of whole rows
/// or of whole columns.
pub type OnFilled<'f> = &'f mut dyn FnMut(Filled<'_>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Npy,
    Csv,
    Mtx,
}

impl Format {
    pub fn of(path: &Path) -> Result<Self, InputError> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("npy") => Ok(Format::Npy),
            Some("csv") => Ok(Format::Csv),
            Some("mtx") => Ok(Format::Mtx),
            Some(other) => Err(InputError::new(path, format!("unknown extension '.{other}' (use .npy, .csv or .mtx)"))),
            None => Err(InputError::new(path, "no extension (use .npy, .csv or .mtx)")),
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Npy => "npy",
            Format::Csv => "csv",
            Format::Mtx => "mtx",
        }
    }
}

/// Reads a matrix, choosing the format by extension. Neither the file nor the
/// matrix may take more than `limit` bytes of memory; both are checked before
/// they are allocated.
pub fn read_matrix(path: &Path, limit: u64) -> Result<Loaded, InputError> {
    read_matrix_telling(path, limit, None)
}

/// As [`read_matrix`], telling `on_filled` of the matrix as it is read, so
/// that work on it can follow the read closely: band by band from a `.npy`
/// file (rows in C order, columns of little-endian floats in Fortran order),
/// whole at the end from any other. A reader that tells of a band tells of
/// them all.
pub fn read_matrix_filling(path: &Path, limit: u64, on_filled: OnFilled<'_>) -> Result<Loaded, InputError> {
    let mut told = false;
    let loaded = read_matrix_telling(
        path,
        limit,
        Some(&mut |filled| {
            told = true;
            on_filled(filled);
        }),
    )?;
    let (m, k) = (loaded.matrix.rows(), loaded.matrix.cols());
    if !told {
        on_filled(Filled { stored: Stored::of_matrix(&loaded.matrix), shape: (m, k), rows: 0..m, cols: 0..k, integer: loaded.integer });
    }
    Ok(loaded)
}

fn read_matrix_telling(path: &Path, limit: u64, on_filled: Option<OnFilled<'_>>) -> Result<Loaded, InputError> {
    let format = Format::of(path)?;
    let io_error = |e: std::io::Error| InputError::new(path, describe_io(&e));
    let mut file = File::open(path).map_err(io_error)?;
    let size = file.metadata().map_err(io_error)?.len();
    if size > limit {
        return Err(InputError::new(path, format!("the file is {}, {}", human_bytes(size.into()), over_limit(limit))));
    }
    let parsed = match format {
        // Streamed: the file is never held whole.
        Format::Npy => npy::read(&mut file, size, limit, on_filled),
        Format::Csv => csv::read(file, limit),
        Format::Mtx => mtx::read(std::io::BufReader::with_capacity(64 << 10, file), size, limit),
    };
    parsed.map_err(|problem| InputError::new(path, problem))
}

/// Parses a file's untrusted bytes into a matrix of at most `limit` bytes.
/// Never panics; the error says what is wrong and where (the caller adds the
/// file's name). The fuzz targets call this.
pub fn parse(format: Format, bytes: &[u8], limit: u64) -> Result<Loaded, String> {
    match format {
        Format::Npy => npy::parse(bytes, limit),
        Format::Csv => csv::parse(bytes, limit),
        Format::Mtx => mtx::parse(bytes, limit),
    }
}

#[cfg(feature = "fuzzing")]
/// The fuzz targets' check (also replayed over their corpus by `cargo test`):
/// parsing any bytes never panics, and a matrix that parses has the shape it
/// claims and survives a write and a re-read unchanged.
pub fn check_parse(format: Format, bytes: &[u8]) -> bool {
    // Small enough that the write-and-reread check below stays fast: a tiny
    // file may declare a large matrix, and a larger limit starves the fuzzer.
    const LIMIT: u64 = 1 << 20;
    let Ok(loaded) = parse(format, bytes, LIMIT) else { return false };
    let m = &loaded.matrix;
    assert_eq!(m.as_bytes().len(), m.rows() * m.cols() * m.dtype().size(), "shape and data disagree");
    let mut out = Vec::new();
    match format {
        Format::Npy => npy::write(&mut out, m, false),
        Format::Csv => csv::write(&mut out, m, false),
        Format::Mtx => mtx::write(&mut out, m, false),
    }
    .expect("writing to memory");
    let again = parse(format, &out, u64::MAX).expect("what we write, we read");
    let same = |x: &DenseMatrix, y: &DenseMatrix| {
        x.rows() == y.rows() && x.cols() == y.cols() && (0..x.cols()).all(|j| {
            (0..x.rows()).all(|i| {
                let (p, q) = (x.get_f64(i, j), y.get_f64(i, j));
                p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan())
            })
        })
    };
    assert!(same(m, &again.matrix), "a write and a re-read changed the matrix");
    true
}

/// Writes `matrix` in the format `path`'s extension names, as integers if `integer`
/// and every value is an exact integer. Writes to a temporary file, then renames.
pub fn write_matrix(path: &Path, matrix: &DenseMatrix, integer: bool) -> anyhow::Result<()> {
    let format = Format::of(path)?;
    let integer = integer && all_exact_integers(matrix);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().with_context(|| format!("{}: not a file name", path.display()))?;
    // Unique per write, so two writers of the same file never share a temporary.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nth = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{}.{}.{nth}.tmp", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let file = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        match format {
            Format::Npy => npy::write(&mut out, matrix, integer)?,
            Format::Csv => csv::write(&mut out, matrix, integer)?,
            Format::Mtx => mtx::write(&mut out, matrix, integer)?,
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

fn all_exact_integers(m: &DenseMatrix) -> bool {
    let ok = |v: f64| v.fract() == 0.0 && v.abs() <= colonnade_core::matrix::EXACT_INTEGER_LIMIT;
    match m {
        DenseMatrix::F64(m) => m.as_slice().iter().all(|&v| ok(v)),
        DenseMatrix::F32(m) => m.as_slice().iter().all(|&v| ok(f64::from(v))),
    }
}

fn describe_io(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Every reader calls this as soon as it knows the shape, before it loops or
/// allocates: fails if the matrix is empty (a 0x10^11 header would otherwise
/// cost 10^11 empty steps), or would take more than `limit` bytes.
pub(crate) fn check_dense_size(rows: usize, cols: usize, elem: usize, limit: u64) -> Result<(), String> {
    if rows == 0 || cols == 0 {
        return Err(format!("the matrix is empty ({rows}x{cols})"));
    }
    let bytes = (rows as u128) * (cols as u128) * elem as u128;
    if bytes > u128::from(limit) {
        return Err(format!("a dense {rows}x{cols} matrix needs {}, {}", human_bytes(bytes), over_limit(limit)));
    }
    Ok(())
}

/// "more than the … memory limit", saying where the limit comes from.
pub fn over_limit(limit: u64) -> String {
    format!("more than the {} memory limit (set by --max-memory, by default the memory available)", human_bytes(limit.into()))
}

/// Memory the system could give this process now, if it says.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Writes one value for a text format: integers plainly, floats in the shortest
/// form that reads back exactly.
pub(crate) fn format_value(out: &mut impl Write, v: f64, integer: bool, f32_precision: bool) -> std::io::Result<()> {
    if integer {
        write!(out, "{}", v as i64)
    } else if f32_precision {
        write!(out, "{:?}", v as f32)
    } else {
        write!(out, "{v:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use colonnade_core::{Dtype, Matrix};

    #[test]
    fn every_format_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let m = DenseMatrix::F64(Matrix::from_fn(3, 2, |i, j| i as f64 * 0.1 - j as f64 * 1e300));
        let ints = DenseMatrix::F64(Matrix::from_fn(2, 3, |i, j| (i * 10 + j) as f64 - 7.0));
        let single = DenseMatrix::F32(Matrix::from_fn(2, 2, |i, j| (i as f32 + 0.1) * (j as f32 - 3.3)));
        for ext in ["npy", "csv", "mtx"] {
            let path = dir.path().join(format!("m.{ext}"));
            write_matrix(&path, &m, false).unwrap();
            assert_eq!(read_matrix(&path, u64::MAX).unwrap().matrix, m, "{ext}");
            write_matrix(&path, &ints, true).unwrap();
            let back = read_matrix(&path, u64::MAX).unwrap();
            assert!(back.integer, "{ext}");
            assert_eq!(back.matrix, ints, "{ext}");
            write_matrix(&path, &single, false).unwrap();
            // Text formats read back as f64; the f32 values survive the trip.
            let back = read_matrix(&path, u64::MAX).unwrap().matrix;
            assert_eq!(back.dtype(), if ext == "npy" { Dtype::F32 } else { Dtype::F64 }, "{ext}");
            assert_eq!(back.into_f32(), single.clone().into_f32(), "{ext}");
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers.len(), 3, "no temporary files left: {leftovers:?}");
    }

    /// Bands are told in order, each once, holding their final values when
    /// told: rows from a C-order `.npy`, columns from a Fortran-order one
    /// (as we write them) of floats, all at the end from the rest.
    #[test]
    fn bands_are_told_in_order_as_they_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let (m, k) = (300, 301);
        let floats_at = |i: usize, j: usize| i as f64 * 0.5 - j as f64 * 0.25;
        let floats = DenseMatrix::F64(Matrix::from_fn(m, k, floats_at));
        let ints = DenseMatrix::F64(Matrix::from_fn(m, k, |i, j| (i * 3 + j) as f64));
        let single = DenseMatrix::F32(Matrix::from_fn(m, k, |i, j| i as f32 - j as f32));
        // We write Fortran order; numpy writes C order by default.
        let c_order = |name: &str, descr: &str, by_rows: Vec<u8>| {
            let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({m}, {k}), }}");
            header.push_str(&" ".repeat(64 - (10 + header.len() + 1) % 64));
            header.push('\n');
            let path = dir.path().join(name);
            std::fs::write(&path, [&b"\x93NUMPY\x01\x00"[..], &(header.len() as u16).to_le_bytes(), header.as_bytes(), &by_rows].concat()).unwrap();
            path
        };
        let floats_by_rows = (0..m).flat_map(|i| (0..k).flat_map(move |j| floats_at(i, j).to_le_bytes())).collect();
        let ints_by_rows = (0..m).flat_map(|i| (0..k).flat_map(move |j| ((i * 3 + j) as i32).to_le_bytes())).collect();
        for (name, matrix, integer, bands) in
            [("f.npy", &floats, false, true), ("i.npy", &ints, true, false), ("s.npy", &single, false, true), ("m.csv", &floats, false, false), ("m.mtx", &ints, true, false)]
        {
            let path = dir.path().join(name);
            write_matrix(&path, matrix, integer).unwrap();
            check_bands_told(&path, matrix, integer, bands);
        }
        check_bands_told(&c_order("c.npy", "<f8", floats_by_rows), &floats, false, true);
        check_bands_told(&c_order("ci.npy", "<i4", ints_by_rows), &ints, true, true);
    }

    fn check_bands_told(path: &Path, want: &DenseMatrix, integer: bool, bands: bool) {
        let (m, k) = (want.rows(), want.cols());
        let mut told: Vec<(Range<usize>, Range<usize>)> = Vec::new();
        let as_f64 = |stored: Stored<'_>, at: usize| match stored {
            Stored::F64(v) => v[at],
            Stored::F32(v) => f64::from(v[at]),
        };
        let mut on_filled = |read: Filled<'_>| {
            assert_eq!((read.shape, read.integer, read.stored.dtype()), ((m, k), integer, want.dtype()), "{}", path.display());
            // The next band of rows, or of columns.
            let (rows_next, cols_next) = told.last().map_or((0, 0), |(r, c)| (r.end % m, c.end % k));
            let next = (read.cols == (0..k) && read.rows.start == rows_next) || (read.rows == (0..m) && read.cols.start == cols_next);
            assert!(next, "{}: {:?} by {:?} after {told:?}", path.display(), read.rows, read.cols);
            for i in read.rows.clone() {
                for j in read.cols.clone() {
                    assert_eq!(as_f64(read.stored, j * m + i), want.get_f64(i, j), "{} ({i}, {j})", path.display());
                }
            }
            told.push((read.rows, read.cols));
        };
        let loaded = read_matrix_filling(path, u64::MAX, &mut on_filled).unwrap();
        assert_eq!(&loaded.matrix, want);
        let (rows, cols) = told.last().cloned().unwrap();
        assert!(rows.end == m && cols.end == k, "{}: to the end", path.display());
        assert_eq!(told.len() > 1, bands, "{}: told {told:?}", path.display());
    }

    /// Found by the mtx fuzzer: an empty matrix with a huge other dimension hung the reader.
    #[test]
    fn an_empty_matrix_with_a_huge_dimension_is_refused_at_once() {
        let mtx = b"%%MatrixMarket matrix array real general\n0 99999999999\n1\n";
        let npy = {
            let mut header = "{'descr': '<f8', 'fortran_order': False, 'shape': (0, 99999999999), }".to_owned();
            header.push_str(&" ".repeat(64 - (10 + header.len() + 1) % 64));
            header.push('\n');
            [&b"\x93NUMPY\x01\x00"[..], &(header.len() as u16).to_le_bytes(), header.as_bytes()].concat()
        };
        for (format, bytes) in [(Format::Mtx, &mtx[..]), (Format::Npy, &npy[..])] {
            let started = std::time::Instant::now();
            assert_eq!(parse(format, bytes, u64::MAX).unwrap_err(), "the matrix is empty (0x99999999999)");
            assert!(started.elapsed() < std::time::Duration::from_secs(1), "{format:?} took {:?}", started.elapsed());
        }
    }

    #[test]
    fn bad_names_are_input_errors() {
        assert_eq!(Format::of(Path::new("x.txt")).unwrap_err().to_string(), "x.txt: unknown extension '.txt' (use .npy, .csv or .mtx)");
        assert_eq!(read_matrix(Path::new("/nonexistent/a.npy"), u64::MAX).unwrap_err().to_string(), "/nonexistent/a.npy: no such file");
    }

    #[test]
    fn non_integer_results_are_written_as_floats() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.csv");
        write_matrix(&path, &DenseMatrix::F64(Matrix::from_fn(1, 2, |_, j| j as f64 + 0.5)), true).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "0.5,1.5\n");
    }
}
