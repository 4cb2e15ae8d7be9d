//! Output lines in the style of kcat's `-f`: `%o` offset, `%t` topic, `%p` partition,
//! `%k` key, `%s` value, `%T` timestamp (ms, -1 if none), `%K` / `%S` key / value size
//! in bytes (-1 for null), `%%` a percent sign; `\n`, `\t`, `\r`, `\\` escapes. A null key
//! or value prints as nothing, as kcat does. The format is parsed once, at start.

use std::io::{self, Write};

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("unknown format token %{0} (known: %o %t %p %k %s %T %K %S %%)")]
    UnknownToken(char),
    #[error("format ends with a lone %")]
    TrailingPercent,
    #[error("unknown escape \\{0} (known: \\n \\t \\r \\\\)")]
    UnknownEscape(char),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(Vec<u8>),
    Offset,
    Topic,
    Partition,
    Key,
    Value,
    Timestamp,
    KeySize,
    ValueSize,
}

/// One record as printed.
pub struct Fields<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub timestamp: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pieces: Vec<Piece>,
}

impl Format {
    pub fn parse(spec: &str) -> Result<Format, FormatError> {
        let mut pieces = Vec::new();
        let mut text = Vec::new();
        let mut chars = spec.chars();
        while let Some(c) = chars.next() {
            match c {
                '%' => {
                    let token = match chars.next().ok_or(FormatError::TrailingPercent)? {
                        '%' => {
                            text.push(b'%');
                            continue;
                        }
                        'o' => Piece::Offset,
                        't' => Piece::Topic,
                        'p' => Piece::Partition,
                        'k' => Piece::Key,
                        's' => Piece::Value,
                        'T' => Piece::Timestamp,
                        'K' => Piece::KeySize,
                        'S' => Piece::ValueSize,
                        other => return Err(FormatError::UnknownToken(other)),
                    };
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(token);
                }
                '\\' => {
                    let escaped = match chars.next() {
                        Some('n') => b'\n',
                        Some('t') => b'\t',
                        Some('r') => b'\r',
                        Some('\\') | None => b'\\',
                        Some(other) => return Err(FormatError::UnknownEscape(other)),
                    };
                    text.push(escaped);
                }
                c => {
                    let mut buf = [0u8; 4];
                    text.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Format { pieces })
    }

    pub fn write(&self, out: &mut impl Write, f: &Fields<'_>) -> io::Result<()> {
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.write_all(t)?,
                Piece::Offset => write!(out, "{}", f.offset)?,
                Piece::Topic => out.write_all(f.topic.as_bytes())?,
                Piece::Partition => write!(out, "{}", f.partition)?,
                Piece::Key => out.write_all(f.key.unwrap_or_default())?,
                Piece::Value => out.write_all(f.value.unwrap_or_default())?,
                Piece::Timestamp => write!(out, "{}", f.timestamp.unwrap_or(-1))?,
                Piece::KeySize => write!(out, "{}", f.key.map_or(-1, |k| k.len() as i64))?,
                Piece::ValueSize => write!(out, "{}", f.value.map_or(-1, |v| v.len() as i64))?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(spec: &str, f: &Fields<'_>) -> String {
        let mut out = Vec::new();
        Format::parse(spec).unwrap().write(&mut out, f).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn rec() -> Fields<'static> {
        Fields {
            topic: "orders",
            partition: 3,
            offset: 1234,
            key: Some(b"k1"),
            value: Some(b"hello"),
            timestamp: Some(1_700_000_000_000),
        }
    }

    #[test]
    fn every_token() {
        assert_eq!(
            render("%o %t %p %k %s %T %K %S 100%%\\n", &rec()),
            "1234 orders 3 k1 hello 1700000000000 2 5 100%\n"
        );
    }

    #[test]
    fn nulls_print_as_nothing_and_sizes_as_minus_one() {
        let f = Fields {
            key: None,
            value: None,
            timestamp: None,
            ..rec()
        };
        assert_eq!(render("[%k][%s] %K %S %T", &f), "[][] -1 -1 -1");
    }

    #[test]
    fn escapes_and_unicode_text() {
        assert_eq!(render("é\\t%p\\r\\\\", &rec()), "é\t3\r\\");
    }

    #[test]
    fn bad_formats_are_refused() {
        assert_eq!(Format::parse("%x"), Err(FormatError::UnknownToken('x')));
        assert_eq!(Format::parse("abc%"), Err(FormatError::TrailingPercent));
        assert_eq!(Format::parse("\\q"), Err(FormatError::UnknownEscape('q')));
    }
}
