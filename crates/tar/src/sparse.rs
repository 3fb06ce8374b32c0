//! Sparse files: the maps of GNU's old `S` headers and of its PAX formats 0.0, 0.1 and 1.0,
//! checked as Go checks them (BSD tar's rules) and reduced to the data regions.

use crate::block::{self, BLOCK, Block};
use crate::error::Error;
use crate::numbers::{field_number, parse_decimal};
use crate::pax::{Records, SPARSE_MAP};

/// A stretch of a sparse file that holds data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// Where it starts in the file.
    pub offset: u64,
    /// How many bytes of data.
    pub length: u64,
}

/// A map as an archive gives it: (offset, length) pairs, not yet checked.
pub type RawMap = Vec<(i64, i64)>;

/// The PAX sparse format an entry's records declare, if any.
pub enum PaxFormat {
    /// 0.0 or 0.1: the map is in the records.
    InRecords,
    /// 1.0: the map opens the entry's data.
    InData,
}

/// Which PAX sparse format the records declare (Go's guess where no version is given).
pub fn pax_format(records: &Records) -> Option<PaxFormat> {
    let get = |key: &[u8]| records.get(key).map_or(&b""[..], Vec::as_slice);
    match (get(b"GNU.sparse.major"), get(b"GNU.sparse.minor")) {
        (b"0", b"0" | b"1") => Some(PaxFormat::InRecords),
        (b"1", b"0") => Some(PaxFormat::InData),
        (b"", b"") if !get(SPARSE_MAP).is_empty() => Some(PaxFormat::InRecords),
        _ => None,
    }
}

/// The map of formats 0.0 and 0.1: `GNU.sparse.numblocks` pairs in `GNU.sparse.map`.
pub fn map_from_records(records: &Records) -> Result<RawMap, Error> {
    let bad = Error::Header("bad GNU sparse map");
    let count = records
        .get(&b"GNU.sparse.numblocks"[..])
        .and_then(|value| parse_decimal(value))
        .filter(|&count| count >= 0)
        .ok_or(Error::Header("bad GNU sparse map"))?;
    let map = records.get(SPARSE_MAP).map_or(&b""[..], Vec::as_slice);
    let numbers: Vec<&[u8]> = if map.is_empty() {
        Vec::new()
    } else {
        map.split(|&c| c == b',').collect()
    };
    if numbers.len() as u128 != 2 * count as u128 {
        return Err(bad);
    }
    numbers
        .chunks(2)
        .map(|pair| Some((parse_decimal(pair[0])?, parse_decimal(pair[1])?)))
        .collect::<Option<_>>()
        .ok_or(bad)
}

/// The map of format 1.0, which opens the entry's data: a count, then an offset and a
/// length per region, each on a line of its own, in whole blocks read by `next_block`.
pub fn map_from_data(
    mut next_block: impl FnMut(&mut Block) -> Result<(), Error>,
) -> Result<RawMap, Error> {
    let mut text = Vec::new();
    let mut lines_buffered = 0usize;
    let mut lines_wanted = 1u128;
    let mut consumed = 0usize;
    let mut block = [0; BLOCK];
    let mut next_line = |text: &mut Vec<u8>, lines_buffered: &mut usize, wanted: u128| {
        while (*lines_buffered as u128) < wanted {
            if text.len() as u64 >= crate::MAX_SPECIAL {
                return Err(Error::TooLong("a sparse map"));
            }
            next_block(&mut block)?;
            text.extend_from_slice(&block);
            *lines_buffered += block.iter().filter(|&&c| c == b'\n').count();
        }
        Ok(())
    };
    let mut take = |text: &[u8], lines_buffered: &mut usize| {
        let end = consumed
            + text[consumed..]
                .iter()
                .position(|&c| c == b'\n')
                .expect("a line is buffered");
        let line = &text[consumed..end];
        consumed = end + 1;
        *lines_buffered -= 1;
        parse_decimal(line)
    };
    next_line(&mut text, &mut lines_buffered, lines_wanted)?;
    let count = take(&text, &mut lines_buffered)
        .filter(|&count| count >= 0)
        .ok_or(Error::Header("bad GNU sparse map"))?;
    lines_wanted = 2 * count as u128;
    next_line(&mut text, &mut lines_buffered, lines_wanted)?;
    (0..count)
        .map(|_| {
            let offset = take(&text, &mut lines_buffered);
            let length = take(&text, &mut lines_buffered);
            offset
                .zip(length)
                .ok_or(Error::Header("bad GNU sparse map"))
        })
        .collect()
}

/// The map of an old GNU sparse header, and of the extension blocks `next_block` reads
/// after it while the last one says more follow.
pub fn map_from_gnu_header(
    header: &Block,
    mut next_block: impl FnMut(&mut Block) -> Result<(), Error>,
) -> Result<RawMap, Error> {
    let mut map = Vec::new();
    let mut block = *header;
    let (mut start, mut entries, mut extended_at) = (
        block::GNU_SPARSE,
        block::GNU_SPARSE_ENTRIES,
        block::GNU_IS_EXTENDED,
    );
    let mut extension_blocks = 0u64;
    loop {
        for entry in block[start..start + 24 * entries].chunks(24) {
            // GNU and BSD tar stop at an offset that starts with NUL.
            if entry[0] == 0 {
                break;
            }
            let (offset, length) = (field_number(&entry[..12]), field_number(&entry[12..]));
            map.push(
                offset
                    .zip(length)
                    .ok_or(Error::Header("bad GNU sparse map"))?,
            );
        }
        if block[extended_at] == 0 {
            return Ok(map);
        }
        extension_blocks += 1;
        if extension_blocks * BLOCK as u64 > crate::MAX_SPECIAL {
            return Err(Error::TooLong("a sparse map"));
        }
        next_block(&mut block)?;
        (start, entries, extended_at) = (0, block::EXTENSION_ENTRIES, block::EXTENSION_IS_EXTENDED);
    }
}

/// The data regions of a file of `size` bytes, if `map` describes one: regions in order, not
/// overlapping, inside the file. Empty regions are dropped and touching ones joined.
pub fn regions(map: &RawMap, size: i64) -> Option<Vec<Region>> {
    if size < 0 {
        return None;
    }
    let mut regions: Vec<Region> = Vec::new();
    let mut end = 0i64;
    for &(offset, length) in map {
        if offset < 0 || length < 0 || offset > i64::MAX - length {
            return None;
        }
        if offset + length > size || end > offset {
            return None;
        }
        end = offset + length;
        let (offset, length) = (offset as u64, length as u64);
        match regions.last_mut() {
            _ if length == 0 => {}
            Some(last) if last.offset + last.length == offset => last.length += length,
            _ => regions.push(Region { offset, length }),
        }
    }
    Some(regions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(offset: u64, length: u64) -> Region {
        Region { offset, length }
    }

    #[test]
    fn maps_are_checked_and_reduced() {
        type Case = (&'static [(i64, i64)], i64, Option<Vec<Region>>);
        let cases: &[Case] = &[
            (&[], 10, Some(vec![])),
            (&[], -1, None),
            (&[(0, 5), (5, 5)], 10, Some(vec![region(0, 10)])),
            (&[(2, 0), (4, 2), (8, 0)], 10, Some(vec![region(4, 2)])),
            (&[(0, 5), (4, 2)], 10, None),
            (&[(4, 2), (0, 1)], 10, None),
            (&[(8, 3)], 10, None),
            (&[(-1, 1)], 10, None),
            (&[(1, -1)], 10, None),
            (&[(i64::MAX, 1)], i64::MAX, None),
        ];
        for (map, size, expected) in cases {
            assert_eq!(
                regions(&map.to_vec(), *size),
                *expected,
                "{map:?} in {size}"
            );
        }
    }

    fn blocks_of(text: &[u8]) -> impl FnMut(&mut Block) -> Result<(), Error> + use<> {
        let mut data = text.to_vec();
        data.resize(data.len().div_ceil(BLOCK) * BLOCK, 0);
        let mut at = 0;
        move |block: &mut Block| {
            let next = data
                .get(at..at + BLOCK)
                .ok_or(Error::Truncated("a sparse map"))?;
            block.copy_from_slice(next);
            at += BLOCK;
            Ok(())
        }
    }

    #[test]
    fn version_1_0_maps_are_lines_in_the_data() {
        let map = map_from_data(blocks_of(b"2\n0\n5\n100\n7\n")).unwrap();
        assert_eq!(map, [(0, 5), (100, 7)]);
        let long: Vec<u8> = std::iter::once("300\n".to_string())
            .chain((0..300).map(|i| format!("{}\n1\n", i * 10)))
            .collect::<String>()
            .into_bytes();
        assert_eq!(map_from_data(blocks_of(&long)).unwrap().len(), 300);
        assert!(map_from_data(blocks_of(b"2\n0\n5\n")).is_err());
        assert!(map_from_data(blocks_of(b"-1\n")).is_err());
        assert!(map_from_data(blocks_of(b"1\nx\n1\n")).is_err());
    }

    #[test]
    fn a_version_1_0_map_over_the_limit_is_refused() {
        let mut endless = blocks_of(&vec![b'7'; 2 << 20]);
        let err = map_from_data(&mut endless).unwrap_err();
        assert!(matches!(err, Error::TooLong(_)), "{err}");
    }
}
