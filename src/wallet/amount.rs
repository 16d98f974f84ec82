//! TIME amounts as text: up to 8 decimals, no floating point anywhere.

use crate::protocol::types::COIN;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AmountError {
    #[error("amount {0:?} is not a number like 1.5 or 0.00000546")]
    Format(String),
    #[error("amount {0:?} has more than 8 decimals")]
    Precision(String),
    #[error("amount {0:?} is too large")]
    Overflow(String),
    #[error("amount {0:?} is negative: give a positive amount in TIME, e.g. 1.5")]
    Negative(String),
}

/// "1.5" -> 150_000_000 base units.
pub fn parse_amount(s: &str) -> Result<u64, AmountError> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(AmountError::Negative(s.into()));
    }
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    if whole.is_empty() && frac.is_empty()
        || !whole.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
    {
        return Err(AmountError::Format(s.into()));
    }
    if frac.len() > 8 {
        return Err(AmountError::Precision(s.into()));
    }
    let w: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| AmountError::Overflow(s.into()))?
    };
    let f: u64 = format!("{frac:0<8}").parse().unwrap_or(0);
    w.checked_mul(COIN)
        .and_then(|v| v.checked_add(f))
        .ok_or_else(|| AmountError::Overflow(s.into()))
}

pub fn format_amount(units: u64) -> String {
    format!("{}.{:08}", units / COIN, units % COIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        assert_eq!(parse_amount("1.5"), Ok(150_000_000));
        assert_eq!(parse_amount("0.00000546"), Ok(546));
        assert_eq!(parse_amount("3"), Ok(300_000_000));
        assert_eq!(parse_amount(".5"), Ok(50_000_000));
        assert!(matches!(
            parse_amount("1.123456789"),
            Err(AmountError::Precision(_))
        ));
        assert!(matches!(parse_amount("abc"), Err(AmountError::Format(_))));
        assert!(matches!(parse_amount("-1"), Err(AmountError::Negative(_))));
        assert!(matches!(parse_amount("."), Err(AmountError::Format(_))));
        assert!(matches!(
            parse_amount("999999999999999"),
            Err(AmountError::Overflow(_))
        ));
        assert_eq!(format_amount(150_000_546), "1.50000546");
    }
}
