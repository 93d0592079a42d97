//! NumPy's `.npy` format, version 1, 2 and 3: f64, f32 and integer dtypes,
//! C or Fortran order, little- or big-endian.

use std::io::Write;

use colonnade_core::{DenseMatrix, Matrix};

use super::Loaded;

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

/// A Python literal, as far as `.npy` headers need.
#[derive(Debug, PartialEq)]
enum Literal {
    Str(String),
    Bool(bool),
    Tuple(Vec<u64>),
}

/// Parses `{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }`.
fn parse_header(text: &str) -> Result<Vec<(String, Literal)>, String> {
    let mut p = Parser { s: text.trim().as_bytes(), i: 0 };
    p.expect(b'{')?;
    let mut entries = Vec::new();
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.skip_ws();
        p.expect(b':')?;
        p.skip_ws();
        let value = p.literal()?;
        entries.push((key, value));
        p.skip_ws();
        if !p.eat(b',') {
            p.skip_ws();
            p.expect(b'}')?;
            break;
        }
    }
    Ok(entries)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        let hit = self.s.get(self.i) == Some(&c);
        self.i += usize::from(hit);
        hit
    }
    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("corrupt header: expected '{}' at byte {}", c as char, self.i))
        }
    }
    fn string(&mut self) -> Result<String, String> {
        let quote = *self.s.get(self.i).ok_or("corrupt header: ends early")?;
        if quote != b'\'' && quote != b'"' {
            return Err(format!("corrupt header: expected a string at byte {}", self.i));
        }
        self.i += 1;
        let start = self.i;
        while self.s.get(self.i).is_some_and(|&c| c != quote) {
            self.i += 1;
        }
        let out = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        self.expect(quote)?;
        Ok(out)
    }
    fn literal(&mut self) -> Result<Literal, String> {
        match self.s.get(self.i) {
            Some(b'\'' | b'"') => Ok(Literal::Str(self.string()?)),
            Some(b'(') => {
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_ws();
                    if self.eat(b')') {
                        break;
                    }
                    let start = self.i;
                    while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
                        self.i += 1;
                    }
                    // Python may write longs as `3L` (numpy on Python 2).
                    let digits = std::str::from_utf8(&self.s[start..self.i]).expect("ASCII digits");
                    self.eat(b'L');
                    items.push(digits.parse().map_err(|_| format!("corrupt header: bad dimension at byte {start}"))?);
                    self.skip_ws();
                    if !self.eat(b',') {
                        self.expect(b')')?;
                        break;
                    }
                }
                Ok(Literal::Tuple(items))
            }
            _ if self.s[self.i..].starts_with(b"True") => {
                self.i += 4;
                Ok(Literal::Bool(true))
            }
            _ if self.s[self.i..].starts_with(b"False") => {
                self.i += 5;
                Ok(Literal::Bool(false))
            }
            _ => Err(format!("corrupt header: unexpected value at byte {}", self.i)),
        }
    }
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
            ("fortran_order", Literal::Bool(b)) => fortran = Some(b),
            ("shape", Literal::Tuple(t)) => shape = Some(t),
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
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}", if fortran { "True" } else { "False" });
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
