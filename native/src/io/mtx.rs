//! Matrix Market: `array` and `coordinate` (read as dense), `real`, `integer`
//! and `pattern` fields, `general`, `symmetric` and `skew-symmetric`.

use std::io::{BufRead, Write};

use colonnade_core::{DenseMatrix, Matrix};

use super::{check_dense_size, format_value, layout, Loaded};

#[derive(Clone, Copy, PartialEq)]
enum Symmetry {
    General,
    Symmetric,
    Skew,
}

pub(super) fn parse(bytes: &[u8], limit: u64) -> Result<Loaded, String> {
    read(bytes, bytes.len() as u64, limit)
}

/// Reads a file of `len` bytes line by line: the text is never held whole.
pub(super) fn read(input: impl BufRead, len: u64, limit: u64) -> Result<Loaded, String> {
    let mut lines = Lines { input, line: String::new(), number: 0 };
    lines.next()?.ok_or("empty file")?;
    let words: Vec<String> = lines.text().split_whitespace().map(str::to_ascii_lowercase).collect();
    if words.len() != 5 || words[0] != "%%matrixmarket" || words[1] != "matrix" {
        return Err("not a Matrix Market file (expected '%%MatrixMarket matrix <format> <field> <symmetry>')".into());
    }
    let coordinate = match words[2].as_str() {
        "array" => false,
        "coordinate" => true,
        other => return Err(format!("unsupported format '{other}' (use array or coordinate)")),
    };
    let (integer, pattern) = match words[3].as_str() {
        "real" | "double" => (false, false),
        "integer" => (true, false),
        "pattern" if coordinate => (true, true),
        other => return Err(format!("unsupported field '{other}' (use real, integer or pattern)")),
    };
    let symmetry = match words[4].as_str() {
        "general" => Symmetry::General,
        "symmetric" => Symmetry::Symmetric,
        "skew-symmetric" => Symmetry::Skew,
        other => return Err(format!("unsupported symmetry '{other}' (use general or symmetric)")),
    };
    let size_line = lines.next_data()?.ok_or("no size line")?;
    let dims: Vec<usize> = lines
        .text()
        .split_whitespace()
        .map(|w| w.parse().map_err(|_| format!("line {size_line}: bad size '{w}'")))
        .collect::<Result<_, _>>()?;
    let (rows, cols, entries) = match (coordinate, &dims[..]) {
        (false, &[r, c]) => (r, c, None),
        (true, &[r, c, nnz]) => (r, c, Some(nnz)),
        _ => return Err(format!("line {size_line}: expected {} numbers on the size line", if coordinate { 3 } else { 2 })),
    };
    if symmetry != Symmetry::General && rows != cols {
        return Err(format!("a {} matrix must be square, this one is {rows}x{cols}", words[4]));
    }
    if !coordinate {
        // Every array entry takes at least two bytes; refuse sizes the file cannot hold.
        let stored = if symmetry == Symmetry::General { rows as u128 * cols as u128 } else { rows as u128 * (rows as u128 + 1) / 2 };
        if stored > u128::from(len) / 2 + 1 {
            return Err(format!("truncated: a {rows}x{cols} array needs {stored} values"));
        }
    }
    check_dense_size(rows, cols, 8, limit)?;
    let mut m = layout::zeroed::<f64>(rows, cols)?;
    let number = |line: usize, w: &str| -> Result<f64, String> {
        w.parse::<f64>().map_err(|_| format!("line {line}: '{w}' is not a number"))
    };
    let put = |m: &mut Matrix<f64>, i: usize, j: usize, v: f64| {
        m.as_mut_slice()[j * rows + i] += v;
        match symmetry {
            Symmetry::Symmetric if i != j => m.as_mut_slice()[i * rows + j] += v,
            Symmetry::Skew if i != j => m.as_mut_slice()[i * rows + j] -= v,
            _ => {}
        }
    };
    let mut count = 0usize;
    if let Some(nnz) = entries {
        while let Some(line) = lines.next_data()? {
            let w: Vec<&str> = lines.text().split_whitespace().collect();
            let want = if pattern { 2 } else { 3 };
            if w.len() != want {
                return Err(format!("line {line}: expected {want} fields, found {}", w.len()));
            }
            let index = |s: &str, max: usize| -> Result<usize, String> {
                match s.parse::<usize>() {
                    Ok(x) if (1..=max).contains(&x) => Ok(x - 1),
                    _ => Err(format!("line {line}: index '{s}' is outside 1..={max}")),
                }
            };
            let (i, j) = (index(w[0], rows)?, index(w[1], cols)?);
            let v = if pattern { 1.0 } else { number(line, w[2])? };
            put(&mut m, i, j, v);
            count += 1;
            if count == nnz {
                break;
            }
        }
        if count != nnz {
            return Err(format!("truncated: the size line promises {nnz} entries, the file has {count}"));
        }
    } else {
        let mut cells = (0..cols).flat_map(|j| {
            let start = if symmetry == Symmetry::General { 0 } else { j + usize::from(symmetry == Symmetry::Skew) };
            (start..rows).map(move |i| (i, j))
        });
        while let Some(line) = lines.next_data()? {
            for w in lines.text().split_whitespace() {
                let Some((i, j)) = cells.next() else {
                    return Err(format!("line {line}: more values than a {rows}x{cols} array holds"));
                };
                put(&mut m, i, j, number(line, w)?);
                count += 1;
            }
        }
        if cells.next().is_some() {
            return Err(format!("truncated: the array has {count} values, fewer than its {rows}x{cols} size needs"));
        }
    }
    if let Some(line) = lines.next_data()? {
        return Err(format!("line {line}: more entries than the size line promises"));
    }
    Ok(Loaded { matrix: DenseMatrix::F64(m), integer })
}

/// The file's lines, one at a time in one reused buffer.
struct Lines<R> {
    input: R,
    line: String,
    number: usize,
}

impl<R: BufRead> Lines<R> {
    /// Moves to the next line and returns its number (from 1), or None at the end.
    fn next(&mut self) -> Result<Option<usize>, String> {
        self.line.clear();
        match self.input.read_line(&mut self.line) {
            Ok(0) => Ok(None),
            Ok(_) => {
                self.number += 1;
                Ok(Some(self.number))
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err("not a text file".into()),
            Err(e) => Err(super::describe_io(&e)),
        }
    }
    /// Moves to the next line that is neither blank nor a comment.
    fn next_data(&mut self) -> Result<Option<usize>, String> {
        while let Some(number) = self.next()? {
            let text = self.text();
            if !text.is_empty() && !text.starts_with('%') {
                return Ok(Some(number));
            }
        }
        Ok(None)
    }
    /// The current line, trimmed.
    fn text(&self) -> &str {
        self.line.trim()
    }
}

pub(super) fn write(out: &mut impl Write, m: &DenseMatrix, integer: bool) -> std::io::Result<()> {
    let field = if integer { "integer" } else { "real" };
    writeln!(out, "%%MatrixMarket matrix array {field} general")?;
    writeln!(out, "{} {}", m.rows(), m.cols())?;
    let f32_precision = matches!(m, DenseMatrix::F32(_));
    for j in 0..m.cols() {
        for i in 0..m.rows() {
            format_value(out, m.get_f64(i, j), integer, f32_precision)?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense(text: &str) -> Vec<f64> {
        parse(text.as_bytes(), u64::MAX).unwrap().matrix.into_f64().into_vec()
    }

    #[test]
    fn reads_every_variant() {
        assert_eq!(dense("%%MatrixMarket matrix array real general\n% c\n2 2\n1\n2\n3\n4\n"), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(dense("%%MatrixMarket matrix array real symmetric\n2 2\n1\n2\n3\n"), vec![1.0, 2.0, 2.0, 3.0]);
        assert_eq!(dense("%%MatrixMarket matrix coordinate real general\n2 3 2\n1 3 5.5\n2 1 -1\n"), vec![0.0, -1.0, 0.0, 0.0, 5.5, 0.0]);
        assert_eq!(dense("%%MatrixMarket matrix coordinate pattern symmetric\n2 2 1\n2 1\n"), vec![0.0, 1.0, 1.0, 0.0]);
        assert_eq!(dense("%%MatrixMarket matrix coordinate real skew-symmetric\n2 2 1\n2 1 3\n"), vec![0.0, 3.0, -3.0, 0.0]);
        assert!(parse(b"%%MatrixMarket matrix coordinate integer general\n1 1 1\n1 1 7\n", u64::MAX).unwrap().integer);
    }

    #[test]
    fn reads_line_by_line_through_a_small_buffer() {
        let text = "%%MatrixMarket matrix array real general\r\n% comment\r\n\r\n2 3\r\n1 2\n3\n  4 5 6\n";
        let m = read(std::io::BufReader::with_capacity(3, text.as_bytes()), text.len() as u64, u64::MAX).unwrap();
        assert_eq!(m.matrix.into_f64().into_vec(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let err = |b: &[u8]| parse(b, u64::MAX).unwrap_err();
        assert_eq!(err(b"\xff\xfe\n"), "not a text file");
        assert_eq!(err(b"%%MatrixMarket matrix array real general\n1 1\n1\n% \xff\n"), "not a text file");
        assert_eq!(err(b""), "empty file");
        assert_eq!(err(b"%%MatrixMarket matrix array real general\n% only comments\n"), "no size line");
        assert_eq!(err(b"%%MatrixMarket matrix array real general\n1 1\n1\n2\n"), "line 4: more values than a 1x1 array holds");
    }

    #[test]
    fn names_the_problem() {
        let err = |t: &str| parse(t.as_bytes(), u64::MAX).unwrap_err();
        assert!(err("hello\n").starts_with("not a Matrix Market file"));
        assert!(err("%%MatrixMarket matrix array complex general\n").starts_with("unsupported field 'complex'"));
        assert_eq!(err("%%MatrixMarket matrix coordinate real general\n2 2 1\n3 1 1\n"), "line 3: index '3' is outside 1..=2");
        assert!(err("%%MatrixMarket matrix coordinate real general\n2 2 3\n1 1 1\n").starts_with("truncated"));
        assert!(err("%%MatrixMarket matrix array real general\n2 2\n1\n2\n").starts_with("truncated"));
        assert!(err("%%MatrixMarket matrix array real general\n1000000 1000000\n1\n").starts_with("truncated"));
        assert_eq!(err("%%MatrixMarket matrix array real general\n1 1\nx\n"), "line 3: 'x' is not a number");
    }
}
