//! Where reading starts (`-o`), in kcat's words.

use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Beginning,
    End,
    /// The first record at or after this timestamp (ms), per partition.
    Timestamp(i64),
    /// This offset (a GSN) in every partition: offsets are global, so this is one point
    /// of the global order.
    Offset(i64),
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("bad start {0:?}: expected beginning, end, s@<unix ms> or an offset >= 0")]
pub struct StartError(String);

impl std::str::FromStr for Start {
    type Err = StartError;

    fn from_str(s: &str) -> Result<Start, StartError> {
        let bad = || StartError(s.to_string());
        match s {
            "beginning" => Ok(Start::Beginning),
            "end" => Ok(Start::End),
            _ => match s.strip_prefix("s@") {
                Some(ms) => ms
                    .parse::<i64>()
                    .ok()
                    .filter(|ms| *ms >= 0)
                    .map(Start::Timestamp)
                    .ok_or_else(bad),
                None => s
                    .parse::<i64>()
                    .ok()
                    .filter(|o| *o >= 0)
                    .map(Start::Offset)
                    .ok_or_else(bad),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kcat_spellings() {
        assert_eq!("beginning".parse(), Ok(Start::Beginning));
        assert_eq!("end".parse(), Ok(Start::End));
        assert_eq!(
            "s@1700000000000".parse(),
            Ok(Start::Timestamp(1_700_000_000_000))
        );
        assert_eq!("42".parse(), Ok(Start::Offset(42)));
    }

    #[test]
    fn refuses_the_rest() {
        for bad in ["", "-1", "s@", "s@-5", "s@x", "begin", "12a"] {
            assert!(bad.parse::<Start>().is_err(), "{bad}");
        }
    }
}
