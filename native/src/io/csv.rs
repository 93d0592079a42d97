//! CSV: one matrix row per line, numbers only, no header.

use std::io::Write;

use colonnade_core::{DenseMatrix, Matrix};

use super::{check_dense_size, format_value, over_limit, Loaded};

pub(super) fn parse(bytes: &[u8], limit: u64) -> Result<Loaded, String> {
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).trim(csv::Trim::All).from_reader(bytes);
    let mut values: Vec<f64> = Vec::new();
    let mut cols = None;
    let mut rows = 0usize;
    let mut integer = true;
    let mut record = csv::ByteRecord::new();
    while reader.read_byte_record(&mut record).map_err(|e| format!("unreadable CSV: {e}"))? {
        let line = rows + 1;
        // A blank line (one empty field) ends nothing and holds nothing.
        if record.len() == 1 && record[0].is_empty() {
            continue;
        }
        match cols {
            None => cols = Some(record.len()),
            Some(c) if c != record.len() => {
                return Err(format!("row {line} has {} columns, but row 1 has {c}", record.len()));
            }
            Some(_) => {}
        }
        for (j, cell) in record.iter().enumerate() {
            let text = std::str::from_utf8(cell).unwrap_or("");
            let value = if let Ok(i) = text.parse::<i64>() {
                i as f64
            } else if let Ok(f) = text.parse::<f64>() {
                integer = false;
                f
            } else {
                let shown: String = String::from_utf8_lossy(cell).chars().take(40).collect();
                return Err(format!("row {line}, column {}: '{shown}' is not a number", j + 1));
            };
            values.push(value);
        }
        // The values so far, and the matrix they will become, must fit.
        if values.len() as u128 * 16 > u128::from(limit) {
            return Err(format!("row {line}: the values so far need {}, {}", crate::cli::human_bytes(values.len() as u128 * 16), over_limit(limit)));
        }
        rows += 1;
    }
    let cols = cols.unwrap_or(0);
    check_dense_size(rows, cols, 8, limit)?;
    // Row-major in the file; column-major in memory.
    let matrix = Matrix::from_fn(rows, cols, |i, j| values[i * cols + j]);
    Ok(Loaded { matrix: DenseMatrix::F64(matrix), integer })
}

pub(super) fn write(out: &mut impl Write, m: &DenseMatrix, integer: bool) -> std::io::Result<()> {
    let f32_precision = matches!(m, DenseMatrix::F32(_));
    for i in 0..m.rows() {
        for j in 0..m.cols() {
            if j > 0 {
                out.write_all(b",")?;
            }
            format_value(out, m.get_f64(i, j), integer, f32_precision)?;
        }
        out.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rows_into_columns() {
        let l = parse(b"1,2,3\n4, 5 ,6\n\n", u64::MAX).unwrap();
        assert!(l.integer);
        assert_eq!(l.matrix.shape_string(), "2x3");
        assert_eq!(l.matrix.into_f64().into_vec(), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        let f = parse(b"1.5,-2e3\n", u64::MAX).unwrap();
        assert!(!f.integer);
        assert_eq!(f.matrix.into_f64().into_vec(), vec![1.5, -2000.0]);
    }

    #[test]
    fn names_the_bad_cell_and_the_ragged_row() {
        assert_eq!(parse(b"1,2\n3,x\n", u64::MAX).unwrap_err(), "row 2, column 2: 'x' is not a number");
        assert_eq!(parse(b"1,2\n3,\n", u64::MAX).unwrap_err(), "row 2, column 2: '' is not a number");
        assert_eq!(parse(b"1,2\n3\n", u64::MAX).unwrap_err(), "row 2 has 1 columns, but row 1 has 2");
        assert_eq!(parse(b"", u64::MAX).unwrap_err(), "the matrix is empty (0x0)");
    }
}
