//! CSV: one matrix row per line, numbers only, no header.

use std::io::{Read, Write};

use colonnade_core::DenseMatrix;

use super::{check_dense_size, format_value, layout, over_limit, Loaded};

pub(super) fn parse(bytes: &[u8], limit: u64) -> Result<Loaded, String> {
    read(bytes, limit)
}

/// Rows are parsed as they are read: the text is never held whole, only the
/// values, in bands of rows (the row count is unknown until the end), which
/// are then transposed into the matrix. At the peak that is two copies of the
/// values, where there used to be the whole text as well.
pub(super) fn read(input: impl Read, limit: u64) -> Result<Loaded, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .buffer_capacity(64 << 10)
        .from_reader(input);
    let mut bands: Vec<Vec<f64>> = Vec::new();
    let mut band_rows = 0;
    let mut count = 0usize;
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
        let width = match cols {
            None => {
                cols = Some(record.len());
                // Bands of about 1 MiB (at least one row), of whole tiles
                // where there is room for them.
                band_rows = ((BAND / 8) / record.len()).max(1);
                if band_rows > TILE {
                    band_rows = band_rows / TILE * TILE;
                }
                record.len()
            }
            Some(c) if c != record.len() => {
                return Err(format!("row {line} has {} columns, but row 1 has {c}", record.len()));
            }
            Some(c) => c,
        };
        if rows.is_multiple_of(band_rows) {
            // The first band grows as rows come, so a small file stays small;
            // later ones are allocated whole.
            bands.push(if rows == 0 { Vec::new() } else { Vec::with_capacity(band_rows * width) });
        }
        let band = bands.last_mut().expect("a band was just pushed");
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
            band.push(value);
        }
        count += width;
        // The values so far, and the matrix they will become, must fit.
        if count as u128 * 16 > u128::from(limit) {
            return Err(format!("row {line}: the values so far need {}, {}", crate::units::human_bytes(count as u128 * 16), over_limit(limit)));
        }
        rows += 1;
    }
    let cols = cols.unwrap_or(0);
    check_dense_size(rows, cols, 8, limit)?;
    // Row-major in the file; column-major in memory.
    let mut matrix = layout::zeroed::<f64>(rows, cols)?;
    let dst = matrix.as_mut_slice();
    for (k, band) in bands.into_iter().enumerate() {
        let height = band.len() / cols;
        layout::transpose::<TILE, _, _>(&band, height, cols, dst, rows, k * band_rows, 0, |v| v, 1);
    }
    Ok(Loaded { matrix: DenseMatrix::F64(matrix), integer })
}

/// Bytes of values per band.
const BAND: usize = if cfg!(test) { 256 } else { 1 << 20 };
const TILE: usize = layout::tile_for::<f64>();

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

    /// Rows spread over many bands (256 bytes of values each in tests), the
    /// last one short; thin and wide shapes; blank lines between.
    #[test]
    fn many_bands_land_where_they_belong() {
        for (rows, cols) in [(1, 1), (1, 100), (100, 1), (37, 5), (64, 8), (9, 33), (3, 40)] {
            let value = |i: usize, j: usize| (i * 1000 + j) as f64 - 0.5;
            let mut text = String::new();
            for i in 0..rows {
                let row: Vec<String> = (0..cols).map(|j| format!("{:?}", value(i, j))).collect();
                text.push_str(&row.join(","));
                text.push_str(if i % 7 == 3 { "\n\n" } else { "\n" });
            }
            let m = parse(text.as_bytes(), u64::MAX).unwrap().matrix;
            assert_eq!(m.shape_string(), format!("{rows}x{cols}"));
            let want: Vec<f64> = (0..cols).flat_map(|j| (0..rows).map(move |i| value(i, j))).collect();
            assert_eq!(m.into_f64().into_vec(), want, "{rows}x{cols}");
        }
    }

    #[test]
    fn the_limit_is_checked_as_rows_arrive() {
        let text = "1,2,3,4\n".repeat(100);
        assert_eq!(parse(text.as_bytes(), 1000).unwrap_err(), format!("row 16: the values so far need 1.0 KiB, {}", over_limit(1000)));
    }
}
