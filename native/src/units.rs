//! Byte counts as people write and read them: `64K` on the command line,
//! `1.5 GiB` in messages. Its own module, so the file readers and the
//! command line both use it without depending on each other.

/// Parses a byte count for clap: `65536`, `64K`, `8M`, `20G` (powers of 1024).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((i, 'K' | 'k')) => (&text[..i], 10),
        Some((i, 'M' | 'm')) => (&text[..i], 20),
        Some((i, 'G' | 'g')) => (&text[..i], 30),
        Some((i, 'T' | 't')) => (&text[..i], 40),
        _ => (text, 0),
    };
    let n: u64 = digits.parse().map_err(|_| format!("'{text}' is not a size (e.g. 65536, 64K, 8M, 20G)"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("'{text}' is too large"))
}

/// Bytes for people: `1.5 GiB`, `64.0 KiB`, `12 bytes`.
pub fn human_bytes(bytes: u128) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_powers_of_1024_and_print_back() {
        assert_eq!(parse_bytes("65536"), Ok(65536));
        assert_eq!(parse_bytes(" 64K "), Ok(64 << 10));
        assert_eq!(parse_bytes("8m"), Ok(8 << 20));
        assert_eq!(parse_bytes("20G"), Ok(20 << 30));
        assert!(parse_bytes("12Q").unwrap_err().contains("not a size"));
        assert!(parse_bytes("99999999T").unwrap_err().contains("too large"));
        assert_eq!(human_bytes(12), "12 bytes");
        assert_eq!(human_bytes(64 << 10), "64.0 KiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
