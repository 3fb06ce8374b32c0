//! Numbers as Go reads them: `strconv.ParseInt` and `ParseUint` in base 10 and 8, and the tar
//! header's numeric fields (octal, or base-256 when the first bit is set).

/// `strconv.ParseUint(s, base, 64)`: digits only, no sign, not empty, no overflow.
fn parse_uint(digits: &[u8], base: u64) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |value, &c| {
        let digit = (c as char).to_digit(base as u32)? as u64;
        value.checked_mul(base)?.checked_add(digit)
    })
}

/// `strconv.ParseInt(s, 10, 64)`: an optional sign, then decimal digits.
pub fn parse_decimal(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, text),
    };
    let magnitude = parse_uint(digits, 10)?;
    if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// A NUL-terminated string field: everything before the first NUL.
pub fn field_string(field: &[u8]) -> &[u8] {
    match field.iter().position(|&c| c == 0) {
        Some(end) => &field[..end],
        None => field,
    }
}

/// A numeric header field: base-256 two's complement when its first bit is set, else octal
/// padded with spaces or NULs. `None` where Go reports an invalid header.
pub fn field_number(field: &[u8]) -> Option<i64> {
    match field.first() {
        Some(&first) if first & 0x80 != 0 => base256(field),
        _ => field_octal(field),
    }
}

fn base256(field: &[u8]) -> Option<i64> {
    // Negative numbers are stored inverted: -a-1 == !a.
    let invert = if field[0] & 0x40 != 0 { 0xff } else { 0 };
    let mut value = 0u64;
    for (i, &byte) in field.iter().enumerate() {
        let mut byte = byte ^ invert;
        if i == 0 {
            byte &= 0x7f;
        }
        if value >> 56 != 0 {
            return None;
        }
        value = value << 8 | u64::from(byte);
    }
    if value >> 63 != 0 {
        return None;
    }
    Some(if invert == 0xff {
        !(value as i64)
    } else {
        value as i64
    })
}

/// Octal, with leading and trailing spaces and NULs ignored; an empty field is 0.
pub fn field_octal(field: &[u8]) -> Option<i64> {
    let padding = |c: &u8| *c == b' ' || *c == 0;
    let start = field.iter().position(|c| !padding(c));
    let Some(start) = start else { return Some(0) };
    let end = field
        .iter()
        .rposition(|c| !padding(c))
        .expect("a start was found")
        + 1;
    // Go reinterprets the unsigned value as signed, as this does.
    parse_uint(field_string(&field[start..end]), 8).map(|value| value as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_numbers_as_strconv_parses_them() {
        let cases: &[(&[u8], Option<i64>)] = &[
            (b"0", Some(0)),
            (b"+17", Some(17)),
            (b"-17", Some(-17)),
            (b"0017", Some(17)),
            (b"9223372036854775807", Some(i64::MAX)),
            (b"9223372036854775808", None),
            (b"-9223372036854775808", Some(i64::MIN)),
            (b"-9223372036854775809", None),
            (b"", None),
            (b"+", None),
            (b"1_000", None),
            (b" 1", None),
            (b"0x10", None),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_decimal(text), *expected, "{:?}", text.escape_ascii());
        }
    }

    #[test]
    fn header_numbers_as_go_parses_them() {
        let cases: &[(&[u8], Option<i64>)] = &[
            (b"0000644\0", Some(0o644)),
            (b"  644 \0\0", Some(0o644)),
            (b"\0\0\0\0\0\0\0\0", Some(0)),
            (b"        ", Some(0)),
            (b"64\x004", Some(0o64)),
            (b"6 44\0", None),
            (b"648\0", None),
            (b"-1\0", None),
            (b"77777777777\0", Some(0o77777777777)),
            (&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0], Some(256)),
            (&[0xff; 8], Some(-1)),
            (&[0xff, 0xff, 0xff, 0xfe], Some(-2)),
            (&[0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], None),
            (&[0x80, 0, 0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0], None),
        ];
        for (field, expected) in cases {
            assert_eq!(field_number(field), *expected, "{:?}", field.escape_ascii());
        }
    }
}
