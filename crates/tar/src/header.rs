//! One entry's metadata, and how a header block yields it (Go's `readHeader`).

use std::collections::BTreeMap;

use crate::block::{self, Block, Format};
use crate::error::Error;
use crate::numbers::{field_number, field_string};
use crate::sparse::Region;

/// An entry's type: its typeflag, with V7's NUL already read as a file or, for a name
/// ending in `/`, a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `0`, or V7's NUL.
    Regular,
    /// `1`: a hard link to `link_name`.
    Link,
    /// `2`
    Symlink,
    /// `3`
    CharDevice,
    /// `4`
    BlockDevice,
    /// `5`, or V7's NUL with a name ending in `/`.
    Directory,
    /// `6`
    Fifo,
    /// `7`: POSIX's contiguous file, a regular file everywhere.
    Contiguous,
    /// `S`: an old GNU sparse file (its map in [`Header::sparse`]).
    GnuSparse,
    /// `g`: PAX records meant for every later entry, which Go (and so the engines) yields as
    /// an entry of its own and applies to none.
    GlobalPax,
    /// Any other typeflag, which Go yields as it is, with its data (Solaris `X`, GNU's
    /// dumpdir `D`, volume labels…).
    Other(u8),
}

impl Kind {
    /// The kind a typeflag names (NUL reads as [`Kind::Regular`]).
    pub fn from_byte(typeflag: u8) -> Kind {
        match typeflag {
            b'0' | 0 => Kind::Regular,
            b'1' => Kind::Link,
            b'2' => Kind::Symlink,
            b'3' => Kind::CharDevice,
            b'4' => Kind::BlockDevice,
            b'5' => Kind::Directory,
            b'6' => Kind::Fifo,
            b'7' => Kind::Contiguous,
            b'S' => Kind::GnuSparse,
            b'g' => Kind::GlobalPax,
            other => Kind::Other(other),
        }
    }

    /// The typeflag Go reports for this kind.
    pub fn as_byte(self) -> u8 {
        match self {
            Kind::Regular => b'0',
            Kind::Link => b'1',
            Kind::Symlink => b'2',
            Kind::CharDevice => b'3',
            Kind::BlockDevice => b'4',
            Kind::Directory => b'5',
            Kind::Fifo => b'6',
            Kind::Contiguous => b'7',
            Kind::GnuSparse => b'S',
            Kind::GlobalPax => b'g',
            Kind::Other(byte) => byte,
        }
    }

    /// Types whose size field says nothing: no data follows their header (Go's
    /// `isHeaderOnlyType`).
    pub fn is_header_only(self) -> bool {
        matches!(
            self,
            Kind::Link
                | Kind::Symlink
                | Kind::CharDevice
                | Kind::BlockDevice
                | Kind::Directory
                | Kind::Fifo
        )
    }
}

/// A point in time: seconds since the epoch and nanoseconds after them (`0..1e9`, also for
/// times before the epoch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Time {
    /// Seconds since the epoch.
    pub seconds: i64,
    /// Nanoseconds after `seconds`.
    pub nanos: u32,
}

impl Time {
    /// Go's `time.Unix(seconds, nanos)`: `nanos` may be negative, borrowing a second.
    pub(crate) fn unix(seconds: i64, nanos: i64) -> Time {
        let (borrow, nanos) = (
            nanos.div_euclid(1_000_000_000),
            nanos.rem_euclid(1_000_000_000),
        );
        Time {
            seconds: seconds.wrapping_add(borrow),
            nanos: nanos as u32,
        }
    }
}

/// One entry, as Go's `tar.Header` has it once every PAX and GNU extension header before it
/// is applied. Numbers are Go's `int64`s: a size or an id may be negative where the archive
/// says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The path, as stored (PAX `path`, or GNU long name, or ustar prefix and name).
    pub name: Vec<u8>,
    /// A link's target.
    pub link_name: Vec<u8>,
    /// What the entry is.
    pub kind: Kind,
    /// The file's size; of a sparse file, the size with its holes.
    pub size: i64,
    /// The mode field, permission and type bits as stored.
    pub mode: i64,
    /// Owner.
    pub uid: i64,
    /// Group.
    pub gid: i64,
    /// Modification time.
    pub mtime: Time,
    /// The PAX records that applied, the last of each key (`None`: no PAX header).
    pub pax: Option<BTreeMap<Vec<u8>, Vec<u8>>>,
    /// A sparse file's data regions: its data is these regions' bytes, in turn; everything
    /// else up to `size` is a hole. `None`: not sparse, the data is the whole file.
    pub sparse: Option<Vec<Region>>,
}

impl Header {
    /// Reads a header block that is not all zeros.
    pub(crate) fn parse(block: &Block) -> Result<Header, Error> {
        let format = block::format(block).ok_or(Error::Header("bad checksum"))?;
        let number = |field: block::Field, what: &'static str| {
            field_number(&block[field]).ok_or(Error::Header(what))
        };
        let mut header = Header {
            name: field_string(&block[block::NAME]).to_vec(),
            link_name: field_string(&block[block::LINK_NAME]).to_vec(),
            kind: Kind::from_byte(block[block::TYPEFLAG]),
            size: number(block::SIZE, "bad size field")?,
            mode: number(block::MODE, "bad mode field")?,
            uid: number(block::UID, "bad uid field")?,
            gid: number(block::GID, "bad gid field")?,
            mtime: Time::unix(number(block::MTIME, "bad mtime field")?, 0),
            pax: None,
            sparse: None,
        };
        if format == Format::V7 {
            return Ok(header);
        }
        // Unused, but Go refuses the header when they are not numbers.
        number(block::DEV_MAJOR, "bad device number field")?;
        number(block::DEV_MINOR, "bad device number field")?;
        let prefix = match format {
            Format::Ustar => field_string(&block[block::USTAR_PREFIX]),
            Format::Star => {
                number(block::STAR_ATIME, "bad atime field")?;
                number(block::STAR_CTIME, "bad ctime field")?;
                field_string(&block[block::STAR_PREFIX])
            }
            Format::Gnu => gnu_prefix(block),
            Format::V7 => unreachable!("returned above"),
        };
        if !prefix.is_empty() {
            header.name = [prefix, b"/", &header.name].concat();
        }
        Ok(header)
    }
}

/// GNU headers keep access and change times where ustar keeps its prefix. Go before 1.8
/// wrote a prefix there by mistake: when the times are not numbers, an ASCII prefix is read
/// as one (Go's reader does the same, for those archives).
fn gnu_prefix(block: &Block) -> &[u8] {
    let time_ok =
        |field: block::Field| block[field.start] == 0 || field_number(&block[field]).is_some();
    if time_ok(block::GNU_ATIME) && time_ok(block::GNU_CTIME) {
        return b"";
    }
    let prefix = field_string(&block[block::USTAR_PREFIX]);
    if prefix.is_ascii() { prefix } else { b"" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{BLOCK, seal};

    fn ustar(name: &[u8], prefix: &[u8], magic: &[u8; 8]) -> Block {
        let mut block = [0; BLOCK];
        block[..name.len()].copy_from_slice(name);
        block[345..345 + prefix.len()].copy_from_slice(prefix);
        block[257..265].copy_from_slice(magic);
        block[block::TYPEFLAG] = b'0';
        seal(&mut block);
        block
    }

    #[test]
    fn prefixes_join_names_by_format() {
        // Where ustar has its prefix, GNU has times: numbers are times, not a prefix.
        let cases: &[(&[u8; 8], &[u8], &[u8])] = &[
            (b"ustar\x0000", b"pre/fix", b"pre/fix/name"),
            (b"ustar\0 \0", b"pre/fix", b"pre/fix/name"),
            (b"ustar  \0", b"1234", b"name"),
            (b"\0\0\0\0\0\0\0\0", b"pre/fix", b"name"),
        ];
        for (magic, prefix, expected) in cases {
            let header = Header::parse(&ustar(b"name", prefix, magic)).unwrap();
            assert_eq!(header.name, *expected, "{}", magic.escape_ascii());
        }
    }

    #[test]
    fn a_gnu_header_with_a_pre_go_1_8_prefix_keeps_it() {
        let header = Header::parse(&ustar(b"name", b"not/a/time", b"ustar  \0")).unwrap();
        assert_eq!(header.name, b"not/a/time/name");
    }

    #[test]
    fn times_borrow_seconds_for_negative_nanoseconds() {
        assert_eq!(
            Time::unix(0, -500_000_000),
            Time {
                seconds: -1,
                nanos: 500_000_000
            }
        );
        assert_eq!(
            Time::unix(5, 7),
            Time {
                seconds: 5,
                nanos: 7
            }
        );
    }
}
