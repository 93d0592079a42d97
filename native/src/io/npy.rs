//! NumPy's `.npy` format, version 1, 2 and 3: f64, f32 and integer dtypes,
//! C or Fortran order, little- or big-endian.

use std::io::{Read, Write};
use std::ops::Range;
use std::mem::size_of;

use colonnade_core::verify::Stored;
use colonnade_core::{DenseMatrix, Element, Matrix};

use super::{layout, Loaded};

mod header;

use header::{parse_header, Literal};

const MAGIC: &[u8] = b"\x93NUMPY";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Float,
    Int,
    Uint,
    Bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Descr {
    kind: Kind,
    size: usize,
    big_endian: bool,
}

impl Descr {
    fn parse(s: &str) -> Result<Self, String> {
        let unsupported = || format!("unsupported dtype '{s}' (use float64, float32 or an integer type)");
        let (order, rest) = match s.chars().next() {
            Some(c @ ('<' | '>' | '|' | '=')) => (c, &s[1..]),
            _ => ('|', s),
        };
        let mut chars = rest.chars();
        let kind = match chars.next() {
            Some('f') => Kind::Float,
            Some('i') => Kind::Int,
            Some('u') => Kind::Uint,
            Some('b') => Kind::Bool,
            _ => return Err(unsupported()),
        };
        let size: usize = chars.as_str().parse().map_err(|_| unsupported())?;
        let ok = match kind {
            Kind::Float => matches!(size, 4 | 8),
            Kind::Int | Kind::Uint => matches!(size, 1 | 2 | 4 | 8),
            Kind::Bool => size == 1,
        };
        if !ok {
            return Err(unsupported());
        }
        Ok(Self { kind, size, big_endian: order == '>' })
    }
}

/// A structured dtype's descr is a list of fields: `('name', dtype[, shape])`,
/// the name possibly `(title, name)`. Names the first few in the refusal.
fn structured(fields: &[Literal]) -> String {
    const SHOWN: usize = 5;
    let names: Vec<&str> = fields
        .iter()
        .filter_map(|field| match field {
            Literal::Tuple(parts) => match parts.first()? {
                Literal::Str(name) => Some(name.as_str()),
                Literal::Tuple(titled) => match titled.get(1)? {
                    Literal::Str(name) => Some(name.as_str()),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        })
        .filter(|name| !name.is_empty()) // numpy's padding
        .collect();
    let mut list = names.iter().take(SHOWN).copied().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        list.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    let what = if list.is_empty() { "structured dtype".to_owned() } else { format!("structured dtype (fields {list})") };
    format!("{what} is not supported; save a plain float or integer array")
}

fn dimensions(shape: Vec<Literal>) -> Result<Vec<u64>, String> {
    shape
        .into_iter()
        .map(|d| match d {
            Literal::Int(n) => Ok(n),
            _ => Err("corrupt header: the shape holds something other than whole numbers".to_owned()),
        })
        .collect()
}

pub(super) fn parse(bytes: &[u8], limit: u64) -> Result<Loaded, String> {
    read(&mut &bytes[..], bytes.len() as u64, limit, None)
}

/// Reads a `.npy` file of `len` bytes from `input`, straight into the matrix:
/// the data is never held twice.
/// `on_filled`, if given, hears of the matrix band by band (see [`Layout::read`]).
pub(super) fn read(input: &mut (impl Read + Send), len: u64, limit: u64, on_filled: Option<super::OnFilled<'_>>) -> Result<Loaded, String> {
    let mut start = [0u8; 10];
    if len < 10 {
        return Err("not a .npy file (bad magic bytes)".into());
    }
    input.read_exact(&mut start).map_err(io_problem)?;
    if !start.starts_with(MAGIC) {
        return Err("not a .npy file (bad magic bytes)".into());
    }
    // numpy itself refuses any other version, minor ones included.
    let (major, minor) = (start[6], start[7]);
    let (header_len, header_start) = match (major, minor) {
        (1, 0) => (u64::from(u16::from_le_bytes([start[8], start[9]])), 10),
        (2 | 3, 0) => {
            if len < 12 {
                return Err("truncated header".into());
            }
            let mut rest = [0u8; 2];
            input.read_exact(&mut rest).map_err(io_problem)?;
            (u64::from(u32::from_le_bytes([start[8], start[9], rest[0], rest[1]])), 12)
        }
        _ => return Err(format!("unsupported .npy format version {major}.{minor} (numpy writes 1.0, 2.0 and 3.0)")),
    };
    if header_start + header_len > len {
        return Err("truncated header".into());
    }
    let mut header = vec![0u8; header_len as usize];
    input.read_exact(&mut header).map_err(io_problem)?;
    let header = std::str::from_utf8(&header).map_err(|_| "corrupt header: not text")?;
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    for (key, value) in parse_header(header)? {
        match (key.as_str(), value) {
            ("descr", Literal::Str(s)) => descr = Some(Descr::parse(&s)?),
            ("descr", Literal::List(fields)) => return Err(structured(&fields)),
            ("fortran_order", Literal::Bool(b)) => fortran = Some(b),
            ("shape", Literal::Tuple(t)) => shape = Some(dimensions(t)?),
            (k, v) => return Err(format!("corrupt header: unexpected entry '{k}': {v:?}")),
        }
    }
    let descr = descr.ok_or("corrupt header: no 'descr'")?;
    let fortran = fortran.ok_or("corrupt header: no 'fortran_order'")?;
    let shape = shape.ok_or("corrupt header: no 'shape'")?;
    let (rows, cols) = match shape[..] {
        [r, c] => (usize::try_from(r).map_err(|_| "too large")?, usize::try_from(c).map_err(|_| "too large")?),
        _ => {
            return Err(format!(
                "has {} dimensions {:?}; Colonnade multiplies 2-D matrices (reshape it, e.g. to (n, 1))",
                shape.len(),
                shape
            ))
        }
    };
    let data_len = u128::from(len - header_start - header_len);
    let need = (rows as u128) * (cols as u128) * descr.size as u128;
    if data_len < need {
        return Err(format!("truncated: a {rows}x{cols} array needs {need} bytes of data, the file has {data_len}"));
    }
    if data_len > need {
        return Err(format!("corrupt: {} bytes after the {rows}x{cols} array's data", data_len - need));
    }
    let single = descr.kind == Kind::Float && descr.size == 4;
    super::check_dense_size(rows, cols, if single { 4 } else { 8 }, limit)?;
    let integer = descr.kind != Kind::Float;
    let layout = Layout { rows, cols, fortran, integer };
    // One monomorphised reader per dtype: no per-element dispatch.
    let be = descr.big_endian;
    macro_rules! to_f64 {
        ($t:ty) => {
            if be {
                layout.read::<{ size_of::<$t>() }, f64>(input, on_filled, false, |b| <$t>::from_be_bytes(b) as f64)
            } else {
                layout.read::<{ size_of::<$t>() }, f64>(input, on_filled, false, |b| <$t>::from_le_bytes(b) as f64)
            }
            .map(DenseMatrix::F64)
        };
    }
    let matrix = match (descr.kind, descr.size) {
        (Kind::Float, 4) if be => layout.read::<4, f32>(input, on_filled, false, f32::from_be_bytes).map(DenseMatrix::F32),
        (Kind::Float, 4) => layout.read::<4, f32>(input, on_filled, NATIVE, f32::from_le_bytes).map(DenseMatrix::F32),
        (Kind::Float, _) if be => layout.read::<8, f64>(input, on_filled, false, f64::from_be_bytes).map(DenseMatrix::F64),
        (Kind::Float, _) => layout.read::<8, f64>(input, on_filled, NATIVE, f64::from_le_bytes).map(DenseMatrix::F64),
        (Kind::Int, 1) => to_f64!(i8),
        (Kind::Int, 2) => to_f64!(i16),
        (Kind::Int, 4) => to_f64!(i32),
        (Kind::Int, _) => to_f64!(i64),
        (Kind::Uint | Kind::Bool, 1) => to_f64!(u8),
        (Kind::Uint | Kind::Bool, 2) => to_f64!(u16),
        (Kind::Uint | Kind::Bool, 4) => to_f64!(u32),
        (Kind::Uint | Kind::Bool, _) => to_f64!(u64),
    }?;
    Ok(Loaded { matrix, integer })
}

/// Little-endian floats are, on a little-endian machine, the matrix's own bytes.
const NATIVE: bool = cfg!(target_endian = "little");

/// Bytes of the file read (and converted) at a time when the data cannot go
/// straight into the matrix, in the matrix's own order: small enough to stay
/// in the L2 cache.
const CHUNK: usize = if cfg!(test) { 4 << 10 } else { 512 << 10 };

/// The same for a C-order file, read in bands of whole rows. Tall bands make
/// long runs down each column of the matrix (2 KiB for 256 rows of f64 at
/// n=8192): measured, writing the matrix in runs of one cache line per column
/// costs about 6 times as much as in runs of a page. (Tests use small
/// buffers, so that small files cross their edges.)
const BAND: usize = if cfg!(test) { 64 << 10 } else { 16 << 20 };

fn io_problem(e: std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "truncated: the file ended while it was being read".into(),
        _ => super::describe_io(&e),
    }
}

/// Where the file's elements go.
struct Layout {
    rows: usize,
    cols: usize,
    fortran: bool,
    /// For [`super::Filled::integer`].
    integer: bool,
}

impl Layout {
    /// Reads the data into a new matrix of `T`, decoding each element of `N`
    /// bytes with `decode`; `native` if the file's bytes are already `T`'s.
    /// Tells `on_filled` of each band once it is in: of rows in C order, of
    /// columns in Fortran order (little-endian floats; others are told of
    /// whole by the caller, as are rows longer than a band).
    fn read<const N: usize, T: Element>(
        &self,
        input: &mut (impl Read + Send),
        mut on_filled: Option<super::OnFilled<'_>>,
        native: bool,
        decode: impl Fn([u8; N]) -> T + Copy + Send,
    ) -> Result<Matrix<T>, String>
    where
        [u8; N]: bytemuck::Pod,
    {
        let (rows, cols) = (self.rows, self.cols);
        let mut m = layout::zeroed::<T>(rows, cols)?;
        let dst = m.as_mut_slice();
        // A single row or column is laid out the same in either order.
        let column_major = self.fortran || rows == 1 || cols == 1;
        if column_major && native && N == size_of::<T>() {
            // Fortran-order native floats: read into the matrix itself, whole
            // columns a band at a time, each told of while the next is read.
            let Some(on_filled) = on_filled else {
                input.read_exact(bytemuck::cast_slice_mut(dst)).map_err(io_problem)?;
                return Ok(m);
            };
            let per_band = (BAND / N / rows.max(1)).max(1);
            let bands: Vec<Range<usize>> = (0..cols).step_by(per_band).map(|c0| c0..(c0 + per_band).min(cols)).collect();
            let first = bands.first().map_or(0, |band| band.end * rows);
            input.read_exact(bytemuck::cast_slice_mut(&mut dst[..first])).map_err(io_problem)?;
            for (i, band) in bands.iter().enumerate() {
                let (filled, rest) = dst.split_at_mut(band.end * rows);
                let next = bands.get(i + 1).map(|next| bytemuck::cast_slice_mut(&mut rest[..next.len() * rows]));
                let filled = super::Filled { stored: Stored::of(&*filled), shape: (rows, cols), rows: 0..rows, cols: band.clone(), integer: self.integer };
                read_meanwhile(input, next, || on_filled(filled)).map_err(io_problem)?;
            }
            return Ok(m);
        }
        if column_major {
            let mut buf = vec![[0u8; N]; (CHUNK / N).min(dst.len())];
            for piece in dst.chunks_mut(buf.len()) {
                let src = &mut buf[..piece.len()];
                input.read_exact(bytemuck::cast_slice_mut(src)).map_err(io_problem)?;
                layout::convert(src, piece, decode);
            }
            return Ok(m);
        }
        // C order: bands of whole rows, each transposed in tiles, then told
        // of (if asked) while the next is read into a second buffer.
        let mut buf = vec![[0u8; N]; (BAND / N).min(dst.len())];
        layout::advise_huge_pages(bytemuck::cast_slice_mut(&mut buf));
        let transpose = if layout::tile_for::<T>() == 16 { layout::transpose::<16, _, _> } else { layout::transpose::<8, _, _> };
        if cols <= buf.len() {
            let tile = layout::tile_for::<T>();
            let height = (buf.len() / cols).min(rows);
            // Whole tiles where there is room for them.
            let height = if height > tile { height / tile * tile } else { height };
            let bands: Vec<Range<usize>> = (0..rows).step_by(height).map(|i0| i0..(i0 + height).min(rows)).collect();
            let telling = on_filled.is_some();
            let mut next_buf = vec![[0u8; N]; if telling && bands.len() > 1 { buf.len() } else { 0 }];
            layout::advise_huge_pages(bytemuck::cast_slice_mut(&mut next_buf));
            let first = bands.first().map_or(0, |band| band.len() * cols);
            input.read_exact(bytemuck::cast_slice_mut(&mut buf[..first])).map_err(io_problem)?;
            // While the inputs are read the workers wait, so every core can transpose.
            // (Reading the next band during the transposition measured no faster.)
            let threads = crate::compute::available_cores();
            for (i, band) in bands.iter().enumerate() {
                transpose(&buf[..band.len() * cols], band.len(), cols, dst, rows, band.start, 0, decode, threads);
                let into = if telling { &mut next_buf } else { &mut buf };
                let next = bands.get(i + 1).map(|next| bytemuck::cast_slice_mut(&mut into[..next.len() * cols]));
                match on_filled.as_deref_mut() {
                    Some(tell) => {
                        let filled = super::Filled { stored: Stored::of(&*dst), shape: (rows, cols), rows: band.clone(), cols: 0..cols, integer: self.integer };
                        read_meanwhile(input, next, || tell(filled)).map_err(io_problem)?;
                        std::mem::swap(&mut buf, &mut next_buf);
                    }
                    None => next.map_or(Ok(()), |next| input.read_exact(next)).map_err(io_problem)?,
                }
            }
        } else {
            // Rows longer than the buffer: each in pieces.
            for i in 0..rows {
                for c0 in (0..cols).step_by(buf.len()) {
                    let w = buf.len().min(cols - c0);
                    let src = &mut buf[..w];
                    input.read_exact(bytemuck::cast_slice_mut(src)).map_err(io_problem)?;
                    transpose(src, 1, w, dst, rows, i, c0, decode, 1);
                }
            }
        }
        Ok(m)
    }
}

/// Reads `into` (if given) from `input` on a thread of its own while
/// `meanwhile` runs here: the next band arrives while the last is worked on.
fn read_meanwhile(input: &mut (impl Read + Send), into: Option<&mut [u8]>, meanwhile: impl FnOnce()) -> std::io::Result<()> {
    let Some(into) = into else {
        meanwhile();
        return Ok(());
    };
    std::thread::scope(|scope| {
        let reading = scope.spawn(|| input.read_exact(into));
        meanwhile();
        reading.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

pub(super) fn write(out: &mut impl Write, m: &DenseMatrix, integer: bool) -> std::io::Result<()> {
    let descr = match (m, integer) {
        (_, true) => "<i8",
        (DenseMatrix::F32(_), false) => "<f4",
        (DenseMatrix::F64(_), false) => "<f8",
    };
    // Column-major data is Fortran order: no transpose needed.
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': True, 'shape': ({}, {}), }}", m.rows(), m.cols());
    // Pad so the data starts on a 64-byte boundary, as numpy does.
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    out.write_all(MAGIC)?;
    out.write_all(&[1, 0])?;
    out.write_all(&u16::try_from(header.len()).expect("short header").to_le_bytes())?;
    out.write_all(header.as_bytes())?;
    if integer {
        let mut buf = Vec::with_capacity(m.rows() * 8);
        for j in 0..m.cols() {
            buf.clear();
            for i in 0..m.rows() {
                buf.extend_from_slice(&(m.get_f64(i, j) as i64).to_le_bytes());
            }
            out.write_all(&buf)?;
        }
        Ok(())
    } else {
        out.write_all(m.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use colonnade_core::Dtype;

    /// Builds a file the way numpy 1.x writes it.
    fn npy(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        npy_literal(&format!("'{descr}'"), fortran, shape, data)
    }

    /// The same, with the descr given as the Python literal to write.
    fn npy_literal(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut h = format!("{{'descr': {descr}, 'fortran_order': {}, 'shape': {shape}, }}", if fortran { "True" } else { "False" });
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn values(loaded: &Loaded) -> Vec<f64> {
        loaded.matrix.clone().into_f64().into_vec()
    }

    #[test]
    fn reads_every_layout_numpy_writes() {
        // [[1, 2, 3], [4, 5, 6]] column-major is 1 4 2 5 3 6.
        let want: Vec<f64> = vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0];
        let c_order = [1i64, 2, 3, 4, 5, 6];
        let le: Vec<u8> = c_order.iter().flat_map(|v| (*v as f64).to_le_bytes()).collect();
        let be: Vec<u8> = c_order.iter().flat_map(|v| (*v as f64).to_be_bytes()).collect();
        let i32s: Vec<u8> = c_order.iter().flat_map(|v| (*v as i32).to_le_bytes()).collect();
        let u16be: Vec<u8> = c_order.iter().flat_map(|v| (*v as u16).to_be_bytes()).collect();
        let fortran: Vec<u8> = want.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f32s: Vec<u8> = c_order.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect();
        for (descr, f, data, integer) in [
            ("<f8", false, &le, false),
            (">f8", false, &be, false),
            ("<f8", true, &fortran, false),
            ("<i4", false, &i32s, true),
            (">u2", false, &u16be, true),
            ("<f4", false, &f32s, false),
        ] {
            let loaded = parse(&npy(descr, f, "(2, 3)", data), u64::MAX).unwrap();
            assert_eq!((values(&loaded), loaded.integer), (want.clone(), integer), "{descr} fortran={f}");
            assert_eq!(loaded.matrix.shape_string(), "2x3");
        }
        let neg = parse(&npy("|i1", false, "(1, 2)", &[0xff, 0x80]), u64::MAX).unwrap();
        assert_eq!(values(&neg), vec![-1.0, -128.0]);
        assert!(matches!(parse(&npy("<f4", false, "(1, 1)", &[0; 4]), u64::MAX).unwrap().matrix, DenseMatrix::F32(_)));
    }

    #[test]
    fn names_the_problem() {
        let err = |bytes: &[u8]| parse(bytes, u64::MAX).unwrap_err();
        assert_eq!(err(b"hello, world"), "not a .npy file (bad magic bytes)");
        assert!(err(&npy("<f8", false, "(2, 3)", &[0; 40])).starts_with("truncated: a 2x3 array needs 48 bytes"));
        assert!(err(&npy("<c16", false, "(1, 1)", &[0; 16])).starts_with("unsupported dtype '<c16'"));
        assert!(err(&npy("<f8", false, "(3,)", &[0; 24])).starts_with("has 1 dimensions [3]"));
        assert!(err(&npy("<f8", false, "(1, 1)", &[0; 9])).starts_with("corrupt: 1 bytes after"));
        assert!(err(&npy("<f8", false, "(18446744073709551615, 9)", &[])).starts_with("truncated"));
        let mut cut = npy("<f8", false, "(1, 1)", &[0; 8]);
        cut.truncate(30);
        assert_eq!(err(&cut), "truncated header");
        assert_eq!(err(&npy("<f8", false, "(1, x)", &[0; 8])), "corrupt header: unexpected value at byte 54");
        assert_eq!(err(&npy("<f8", false, "('1', 1)", &[0; 8])), "corrupt header: the shape holds something other than whole numbers");
    }

    #[test]
    fn only_the_versions_numpy_reads() {
        let good = npy("<f8", false, "(1, 1)", &[0; 8]);
        for (major, minor) in [(1, 1), (2, 2), (0, 0), (4, 0), (1, 255)] {
            let mut bytes = good.clone();
            bytes[6..8].copy_from_slice(&[major, minor]);
            let want = format!("unsupported .npy format version {major}.{minor} (numpy writes 1.0, 2.0 and 3.0)");
            assert_eq!(parse(&bytes, u64::MAX).unwrap_err(), want);
        }
        // Versions 2.0 and 3.0: the same header behind a 4-byte length.
        for major in [2u8, 3] {
            let mut bytes = good[..8].to_vec();
            bytes[6] = major;
            let header_len = u16::from_le_bytes([good[8], good[9]]);
            bytes.extend_from_slice(&u32::from(header_len).to_le_bytes());
            bytes.extend_from_slice(&good[10..]);
            assert_eq!(values(&parse(&bytes, u64::MAX).unwrap()), vec![0.0], "version {major}.0");
        }
    }

    #[test]
    fn structured_dtypes_are_refused_by_name() {
        let err = |descr: &str| parse(&npy_literal(descr, false, "(2,)", &[0; 32]), u64::MAX).unwrap_err();
        let plain = "save a plain float or integer array";
        assert_eq!(err("[('x', '<f8'), ('y', '<f8')]"), format!("structured dtype (fields x, y) is not supported; {plain}"));
        // Titled fields, numpy's padding, sub-arrays and nested records.
        let mixed = "[(('Title', 'a'), '<f8'), ('', '|V4'), ('b', '<i4', (2, 2)), ('c', [('d', '<f4')])]";
        assert_eq!(err(mixed), format!("structured dtype (fields a, b, c) is not supported; {plain}"));
        let many: Vec<String> = (0..8).map(|i| format!("('f{i}', '<f8')")).collect();
        let many = err(&format!("[{}]", many.join(", ")));
        assert_eq!(many, format!("structured dtype (fields f0, f1, f2, f3, f4 and 3 more) is not supported; {plain}"));
        assert_eq!(err("[]"), format!("structured dtype is not supported; {plain}"));
    }

    /// The reader before it was made fast: one element at a time, decoded to f64.
    fn reference(descr: &Descr, b: &[u8]) -> f64 {
        let mut buf = [0u8; 8];
        buf[..descr.size].copy_from_slice(b);
        if descr.big_endian {
            buf[..descr.size].reverse();
        }
        match (descr.kind, descr.size) {
            (Kind::Float, 4) => f64::from(f32::from_le_bytes(buf[..4].try_into().expect("4 bytes"))),
            (Kind::Float, _) => f64::from_le_bytes(buf),
            (Kind::Int, n) => {
                let shift = 64 - 8 * n as u32;
                ((i64::from_le_bytes(buf) << shift) >> shift) as f64
            }
            (Kind::Uint | Kind::Bool, _) => u64::from_le_bytes(buf) as f64,
        }
    }

    /// Reads `rows`x`cols` of pseudo-random data as `descr` and compares every
    /// element with the reference.
    fn check_against_reference(descr_text: &str, fortran: bool, rows: usize, cols: usize) {
        let descr = Descr::parse(descr_text).unwrap();
        let mut seed = (rows * 31 + cols) as u64 | 1;
        let data: Vec<u8> = (0..rows * cols * descr.size)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let loaded = parse(&npy(descr_text, fortran, &format!("({rows}, {cols})"), &data), u64::MAX).unwrap();
        let what = format!("{descr_text} fortran={fortran} {rows}x{cols}");
        assert_eq!(loaded.integer, descr.kind != Kind::Float, "{what}");
        assert_eq!(loaded.matrix.dtype(), if descr.kind == Kind::Float && descr.size == 4 { Dtype::F32 } else { Dtype::F64 }, "{what}");
        let m = &loaded.matrix;
        assert_eq!((m.rows(), m.cols()), (rows, cols), "{what}");
        let n = descr.size;
        for j in 0..cols {
            for i in 0..rows {
                let at = if fortran { j * rows + i } else { i * cols + j };
                let want = reference(&descr, &data[at * n..at * n + n]);
                let got = m.get_f64(i, j);
                assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{what} at ({i}, {j}): {got} != {want}");
            }
        }
    }

    const EVERY_DTYPE: [&str; 19] =
        ["<f8", ">f8", "<f4", ">f4", "|i1", "<i2", ">i2", "<i4", ">i4", "<i8", ">i8", "|u1", "<u2", ">u2", "<u4", ">u4", "<u8", ">u8", "|b1"];

    #[test]
    fn every_dtype_shape_and_order_matches_the_reference() {
        // Thin, square, tile-sized and ragged against the tiles (8 or 16).
        for (rows, cols) in [(1, 1), (1, 13), (13, 1), (8, 8), (16, 16), (9, 17), (17, 9), (33, 70), (70, 33)] {
            for descr in EVERY_DTYPE {
                for fortran in [false, true] {
                    check_against_reference(descr, fortran, rows, cols);
                }
            }
        }
    }

    #[test]
    fn files_larger_than_the_read_buffer_match_the_reference() {
        // Several bands, the last one short; several chunks of a Fortran file;
        // rows longer than the whole buffer, read in pieces.
        for descr in ["<f8", ">f8", "<f4", "<i4", ">u2"] {
            for fortran in [false, true] {
                check_against_reference(descr, fortran, 300, 301);
            }
        }
        for descr in ["<f8", "<f4", ">i8"] {
            check_against_reference(descr, false, 3, BAND / 4 + 5);
        }
    }

    #[test]
    fn a_file_that_shrinks_in_a_later_band_is_truncated() {
        for (fortran, telling) in [(false, false), (false, true), (true, false), (true, true)] {
            let (rows, cols) = (300, 301);
            let bytes = npy("<f8", fortran, &format!("({rows}, {cols})"), &vec![0; rows * cols * 8]);
            let mut short = &bytes[..bytes.len() - 8];
            let mut told = 0;
            let mut count = |_: super::super::Filled<'_>| told += 1;
            let on_filled: Option<super::super::OnFilled<'_>> = if telling { Some(&mut count) } else { None };
            let err = read(&mut short, bytes.len() as u64, u64::MAX, on_filled).unwrap_err();
            assert_eq!(err, "truncated: the file ended while it was being read", "fortran order: {fortran}, telling: {telling}");
            assert_eq!(told > 1, telling, "the bands before were told of: {told}");
        }
    }

    #[test]
    fn a_file_that_shrinks_while_it_is_read_is_truncated() {
        let bytes = npy("<f8", false, "(2, 3)", &[0; 48]);
        let mut short = &bytes[..bytes.len() - 8];
        let err = read(&mut short, bytes.len() as u64, u64::MAX, None).unwrap_err();
        assert_eq!(err, "truncated: the file ended while it was being read");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let mut bytes = npy("<f8", false, "(2, 2)", &[]);
            bytes.truncate(10 + (tail.len() % 60));
            bytes.extend_from_slice(&tail);
            let _ = parse(&bytes, u64::MAX);
        }
    }
}
