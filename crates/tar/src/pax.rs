//! PAX extended headers: records, and how they change the entry after them (Go's `parsePAX`
//! and `mergePAX`).

use std::collections::BTreeMap;

use crate::error::Error;
use crate::header::{Header, Time};
use crate::numbers::parse_decimal;

/// Records by key; a key given twice keeps its last value, as in Go, GNU tar and Python.
pub type Records = BTreeMap<Vec<u8>, Vec<u8>>;

const SPARSE_OFFSET: &[u8] = b"GNU.sparse.offset";
const SPARSE_NUMBYTES: &[u8] = b"GNU.sparse.numbytes";
pub const SPARSE_MAP: &[u8] = b"GNU.sparse.map";

/// Parses an extended header's records (`LEN key=value\n` each). GNU's sparse format 0.0
/// repeats `GNU.sparse.offset` and `GNU.sparse.numbytes` per region: they are gathered, in
/// order, into one `GNU.sparse.map` as format 0.1 writes it.
pub fn parse(mut data: &[u8]) -> Result<Records, Error> {
    let mut records = Records::new();
    let mut sparse_map: Vec<&[u8]> = Vec::new();
    while !data.is_empty() {
        let (key, value, rest) = record(data).ok_or(Error::Header("bad PAX record"))?;
        data = rest;
        if key == SPARSE_OFFSET || key == SPARSE_NUMBYTES {
            let expected = if sparse_map.len().is_multiple_of(2) {
                SPARSE_OFFSET
            } else {
                SPARSE_NUMBYTES
            };
            if key != expected || value.contains(&b',') {
                return Err(Error::Header("bad GNU sparse 0.0 records"));
            }
            sparse_map.push(value);
        } else {
            records.insert(key.to_vec(), value.to_vec());
        }
    }
    if !sparse_map.is_empty() {
        records.insert(SPARSE_MAP.to_vec(), sparse_map.join(&b","[..]));
    }
    Ok(records)
}

/// One record: its key, value, and what follows it.
fn record(data: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let space = data.iter().position(|&c| c == b' ')?;
    let length = parse_decimal(&data[..space])?;
    if length < 5 || length > data.len() as i64 {
        return None;
    }
    let length = length as usize;
    // The length counts itself and the space.
    if length <= space + 1 {
        return None;
    }
    let (record, rest) = data.split_at(length);
    let record = record[space + 1..].strip_suffix(b"\n")?;
    let equals = record.iter().position(|&c| c == b'=')?;
    let (key, value) = (&record[..equals], &record[equals + 1..]);
    let names_a_path = matches!(key, b"path" | b"linkpath" | b"uname" | b"gname");
    let nul_where_forbidden = if names_a_path {
        value.contains(&0)
    } else {
        key.contains(&0)
    };
    if key.is_empty() || nul_where_forbidden {
        return None;
    }
    Some((key, value, rest))
}

/// Applies the records to the entry they precede. An empty value keeps the header's own.
pub fn merge(header: &mut Header, records: &Records) -> Result<(), Error> {
    let decimal = |value: &[u8], what| parse_decimal(value).ok_or(Error::Header(what));
    for (key, value) in records {
        if value.is_empty() {
            continue;
        }
        match key.as_slice() {
            b"path" => header.name = value.clone(),
            b"linkpath" => header.link_name = value.clone(),
            b"uid" => header.uid = decimal(value, "bad PAX uid")?,
            b"gid" => header.gid = decimal(value, "bad PAX gid")?,
            b"size" => header.size = decimal(value, "bad PAX size")?,
            b"mtime" => header.mtime = time(value).ok_or(Error::Header("bad PAX mtime"))?,
            // Unused, but Go refuses the entry when they are not times.
            b"atime" | b"ctime" => drop(time(value).ok_or(Error::Header("bad PAX time"))?),
            _ => {}
        }
    }
    header.pax = Some(records.clone());
    Ok(())
}

/// A PAX time: decimal seconds, optionally a fraction (cut to nanoseconds), which counts
/// away from zero with the seconds.
fn time(value: &[u8]) -> Option<Time> {
    let (seconds, fraction) = match value.iter().position(|&c| c == b'.') {
        Some(dot) => (&value[..dot], &value[dot + 1..]),
        None => (value, &b""[..]),
    };
    let whole = parse_decimal(seconds)?;
    if !fraction.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let nanos = fraction
        .iter()
        .chain(std::iter::repeat(&b'0'))
        .take(9)
        .fold(0i64, |nanos, digit| nanos * 10 + i64::from(digit - b'0'));
    let negative = seconds.first() == Some(&b'-');
    Some(Time::unix(whole, if negative { -nanos } else { nanos }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `LEN key=value\n`, its length right.
    fn record_of(key: &str, value: &str) -> Vec<u8> {
        let body = format!(" {key}={value}\n");
        let digits = (body.len() + 1).to_string().len();
        let length =
            body.len() + digits + usize::from((body.len() + digits).to_string().len() > digits);
        format!("{length}{body}").into_bytes()
    }

    fn records(data: &[u8]) -> Result<Vec<(String, String)>, Error> {
        Ok(parse(data)?
            .into_iter()
            .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
            .collect())
    }

    #[test]
    fn the_last_record_of_a_key_wins() {
        let found = records(b"16 path=first/x\n13 path=last\n").unwrap();
        assert_eq!(found, [("path".into(), "last".into())]);
    }

    #[test]
    fn malformed_records_are_refused() {
        for bad in [
            &b"4 a=\n"[..],
            b"7 path=x",
            b"99 path=x\n",
            b"x path=x\n",
            b"8 pathx\n\n",
            b"6 =xy\n",
            b"12 path=a\0b\n",
            b"9 a\0b=cd\n",
            &record_of("GNU.sparse.numbytes", "1"),
        ] {
            assert!(records(bad).is_err(), "{:?}", bad.escape_ascii());
        }
        // A NUL in a value is allowed except in names.
        assert!(records(b"9 a=b\0cd\n").is_ok());
    }

    #[test]
    fn sparse_0_0_records_become_one_map() {
        let data = [
            record_of("GNU.sparse.offset", "0"),
            record_of("GNU.sparse.numbytes", "5"),
            record_of("GNU.sparse.offset", "100"),
            record_of("GNU.sparse.numbytes", "7"),
        ]
        .concat();
        let found = parse(&data).unwrap();
        assert_eq!(found[SPARSE_MAP], b"0,5,100,7");
    }

    #[test]
    fn times_as_go_reads_them() {
        type Case = (&'static [u8], Option<(i64, u32)>);
        let cases: &[Case] = &[
            (b"1600000000.5", Some((1_600_000_000, 500_000_000))),
            (b"12", Some((12, 0))),
            (b"12.", Some((12, 0))),
            (b"-1.25", Some((-2, 750_000_000))),
            (b"-0.5", Some((-1, 500_000_000))),
            (b"1.1234567899", Some((1, 123_456_789))),
            (b".5", None),
            (b"1.x", None),
            (b"1.-5", None),
            (b"x", None),
        ];
        for (value, expected) in cases {
            let found = time(value).map(|t| (t.seconds, t.nanos));
            assert_eq!(found, *expected, "{:?}", value.escape_ascii());
        }
    }
}
