//! A `.npy` header: a Python dict literal such as
//! `{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }`.

/// A Python literal, as far as `.npy` headers need.
#[derive(Debug, PartialEq)]
pub(super) enum Literal {
    Str(String),
    Bool(bool),
    Int(u64),
    Tuple(Vec<Literal>),
    /// Only a structured dtype's descr is a list: `[('x', '<f8'), ('y', '<f8')]`.
    List(Vec<Literal>),
}

/// Deeper nesting than any dtype needs; the bound keeps hostile headers from
/// exhausting the stack.
const MAX_DEPTH: usize = 32;

/// Parses the header dict into its (key, value) entries.
pub(super) fn parse_header(text: &str) -> Result<Vec<(String, Literal)>, String> {
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
        let value = p.literal(0)?;
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
    fn int(&mut self) -> Result<u64, String> {
        let start = self.i;
        while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        let digits = std::str::from_utf8(&self.s[start..self.i]).expect("ASCII digits");
        // Python may write longs as `3L` (numpy on Python 2).
        self.eat(b'L');
        digits.parse().map_err(|_| format!("corrupt header: bad number at byte {start}"))
    }
    /// The items of a tuple or list, after its opening bracket, up to `close`.
    fn items(&mut self, close: u8, depth: usize) -> Result<Vec<Literal>, String> {
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            if self.eat(close) {
                return Ok(items);
            }
            items.push(self.literal(depth + 1)?);
            self.skip_ws();
            if !self.eat(b',') {
                self.expect(close)?;
                return Ok(items);
            }
        }
    }
    fn literal(&mut self, depth: usize) -> Result<Literal, String> {
        if depth > MAX_DEPTH {
            return Err(format!("corrupt header: nested too deeply at byte {}", self.i));
        }
        let rest = &self.s[self.i..];
        match rest.first() {
            Some(b'\'' | b'"') => Ok(Literal::Str(self.string()?)),
            Some(b'0'..=b'9') => Ok(Literal::Int(self.int()?)),
            Some(b'(') => {
                self.i += 1;
                Ok(Literal::Tuple(self.items(b')', depth)?))
            }
            Some(b'[') => {
                self.i += 1;
                Ok(Literal::List(self.items(b']', depth)?))
            }
            _ if rest.starts_with(b"True") => {
                self.i += 4;
                Ok(Literal::Bool(true))
            }
            _ if rest.starts_with(b"False") => {
                self.i += 5;
                Ok(Literal::Bool(false))
            }
            _ => Err(format!("corrupt header: unexpected value at byte {}", self.i)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Literal::{Int, List, Str, Tuple};

    #[test]
    fn reads_what_numpy_writes() {
        let entries = parse_header("{'descr': [('x', '<f8'), ('y', '<i4', (2,))], 'fortran_order': False, 'shape': (3L, 4), }").unwrap();
        let fields = List(vec![
            Tuple(vec![Str("x".into()), Str("<f8".into())]),
            Tuple(vec![Str("y".into()), Str("<i4".into()), Tuple(vec![Int(2)])]),
        ]);
        assert_eq!(entries[0], ("descr".into(), fields));
        assert_eq!(entries[1], ("fortran_order".into(), Literal::Bool(false)));
        assert_eq!(entries[2], ("shape".into(), Tuple(vec![Int(3), Int(4)])));
    }

    #[test]
    fn names_what_is_wrong_and_where() {
        assert_eq!(parse_header("{'shape': (3, x)}").unwrap_err(), "corrupt header: unexpected value at byte 14");
        assert_eq!(parse_header("{'shape': (99999999999999999999,)}").unwrap_err(), "corrupt header: bad number at byte 11");
        assert_eq!(parse_header("{'descr': [('x', '<f8')}").unwrap_err(), "corrupt header: expected ']' at byte 23");
        let deep = format!("{{'descr': {}}}", "[".repeat(10_000));
        assert_eq!(parse_header(&deep).unwrap_err(), "corrupt header: nested too deeply at byte 43");
    }
}
