//! NumPy's `.npy` format, version 1, 2 and 3: f64, f32 and integer dtypes,
//! C or Fortran order, little- or big-endian.

use std::io::Write;

use colonnade_core::{DenseMatrix, Matrix};

use super::Loaded;

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

    /// Decodes one element to f64.
    fn read(&self, b: &[u8]) -> f64 {
        let mut buf = [0u8; 8];
        buf[..self.size].copy_from_slice(b);
        if self.big_endian {
            buf[..self.size].reverse();
        }
        match (self.kind, self.size) {
            (Kind::Float, 4) => f64::from(f32::from_le_bytes(buf[..4].try_into().expect("4 bytes"))),
            (Kind::Float, _) => f64::from_le_bytes(buf),
            (Kind::Int, n) => {
                let shift = 64 - 8 * n as u32;
                ((i64::from_le_bytes(buf) << shift) >> shift) as f64
            }
            (Kind::Uint | Kind::Bool, _) => u64::from_le_bytes(buf) as f64,
        }
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
    if bytes.len() < 10 || !bytes.starts_with(MAGIC) {
        return Err("not a .npy file (bad magic bytes)".into());
    }
    // numpy itself refuses any other version, minor ones included.
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, header_start) = match (major, minor) {
        (1, 0) => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        (2 | 3, 0) => {
            let len = bytes.get(8..12).ok_or("truncated header")?;
            (u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize, 12)
        }
        _ => return Err(format!("unsupported .npy format version {major}.{minor} (numpy writes 1.0, 2.0 and 3.0)")),
    };
    let header = bytes.get(header_start..header_start + header_len).ok_or("truncated header")?;
    let header = std::str::from_utf8(header).map_err(|_| "corrupt header: not text")?;
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
    let data = &bytes[header_start + header_len..];
    let need = (rows as u128) * (cols as u128) * descr.size as u128;
    if (data.len() as u128) < need {
        return Err(format!("truncated: a {rows}x{cols} array needs {need} bytes of data, the file has {}", data.len()));
    }
    if (data.len() as u128) > need {
        return Err(format!("corrupt: {} bytes after the {rows}x{cols} array's data", data.len() as u128 - need));
    }
    let single = descr.kind == Kind::Float && descr.size == 4;
    super::check_dense_size(rows, cols, if single { 4 } else { 8 }, limit)?;
    // Index of the element at (i, j) in the file's order.
    let at = |i: usize, j: usize| if fortran { j * rows + i } else { i * cols + j };
    let integer = descr.kind != Kind::Float;
    let matrix = if single {
        let e = |i, j| descr.read(&data[at(i, j) * 4..at(i, j) * 4 + 4]) as f32;
        DenseMatrix::F32(Matrix::from_fn(rows, cols, e))
    } else if fortran && descr.kind == Kind::Float && !descr.big_endian {
        // Already column-major little-endian f64: one copy.
        DenseMatrix::F64(Matrix::from_le_bytes(rows, cols, data).map_err(|e| e.to_string())?)
    } else {
        let n = descr.size;
        DenseMatrix::F64(Matrix::from_fn(rows, cols, |i, j| descr.read(&data[at(i, j) * n..at(i, j) * n + n])))
    };
    Ok(Loaded { matrix, integer })
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
