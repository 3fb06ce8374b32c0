//! The 512-byte header block: where each format keeps its fields, and how Go tells the
//! formats apart (by checksum, magic, version and star's trailer, nothing else).

use crate::numbers::field_octal;

pub const BLOCK: usize = 512;
pub type Block = [u8; BLOCK];

/// A field's place in the block.
pub type Field = std::ops::Range<usize>;

pub const NAME: Field = 0..100;
pub const MODE: Field = 100..108;
pub const UID: Field = 108..116;
pub const GID: Field = 116..124;
pub const SIZE: Field = 124..136;
pub const MTIME: Field = 136..148;
pub const CHECKSUM: Field = 148..156;
pub const TYPEFLAG: usize = 156;
pub const LINK_NAME: Field = 157..257;
const MAGIC: Field = 257..263;
const VERSION: Field = 263..265;
pub const DEV_MAJOR: Field = 329..337;
pub const DEV_MINOR: Field = 337..345;
/// ustar's name prefix; star's is shorter, and GNU keeps times there instead.
pub const USTAR_PREFIX: Field = 345..500;
pub const STAR_PREFIX: Field = 345..476;
pub const STAR_ATIME: Field = 476..488;
pub const STAR_CTIME: Field = 488..500;
const STAR_TRAILER: Field = 508..512;
pub const GNU_ATIME: Field = 345..357;
pub const GNU_CTIME: Field = 357..369;
/// An old GNU sparse header's four map entries (offset and length, 12 bytes each), the flag
/// saying extension blocks follow, and the file's real size.
pub const GNU_SPARSE: usize = 386;
pub const GNU_SPARSE_ENTRIES: usize = 4;
pub const GNU_IS_EXTENDED: usize = 482;
pub const GNU_REAL_SIZE: Field = 483..495;
/// An extension block of old GNU sparse map: 21 entries, then its own flag.
pub const EXTENSION_ENTRIES: usize = 21;
pub const EXTENSION_IS_EXTENDED: usize = 504;

/// The header formats, as Go guesses them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    V7,
    /// `ustar\0` magic: ustar or PAX, whatever the version field says.
    Ustar,
    Gnu,
    Star,
}

/// The block's format, or `None` when its checksum is wrong. Go accepts the checksum summed
/// over unsigned bytes and over signed ones (as some old tars wrote it).
pub fn format(block: &Block) -> Option<Format> {
    let recorded = field_octal(&block[CHECKSUM])?;
    let (unsigned, signed) = checksums(block);
    if recorded != unsigned && recorded != signed {
        return None;
    }
    let (magic, version) = (&block[MAGIC], &block[VERSION]);
    Some(if magic == b"ustar\0" && &block[STAR_TRAILER] == b"tar\0" {
        Format::Star
    } else if magic == b"ustar\0" {
        Format::Ustar
    } else if magic == b"ustar " && version == b" \0" {
        Format::Gnu
    } else {
        Format::V7
    })
}

/// The block's sum with the checksum field counted as spaces, over unsigned and signed bytes.
fn checksums(block: &Block) -> (i64, i64) {
    block
        .iter()
        .enumerate()
        .map(|(i, &c)| if CHECKSUM.contains(&i) { b' ' } else { c })
        .fold((0, 0), |(unsigned, signed), c| {
            (unsigned + i64::from(c), signed + i64::from(c as i8))
        })
}

/// Writes the checksum a block must carry (for tests that build blocks by hand).
#[cfg(test)]
pub fn seal(block: &mut Block) {
    let (unsigned, _) = checksums(block);
    block[CHECKSUM].copy_from_slice(format!("{unsigned:06o}\0 ").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(magic: &[u8], version: &[u8], trailer: &[u8]) -> Block {
        let mut block = [0; BLOCK];
        block[MAGIC].copy_from_slice(magic);
        block[VERSION].copy_from_slice(version);
        block[STAR_TRAILER].copy_from_slice(trailer);
        seal(&mut block);
        block
    }

    #[test]
    fn formats_are_told_by_magic_version_and_trailer_alone() {
        type Case = (&'static [u8], &'static [u8], &'static [u8], Format);
        let cases: &[Case] = &[
            (b"ustar\0", b"00", b"\0\0\0\0", Format::Ustar),
            // POSIX magic with GNU's version: still ustar, prefix and all.
            (b"ustar\0", b" \0", b"\0\0\0\0", Format::Ustar),
            (b"ustar\0", b"00", b"tar\0", Format::Star),
            (b"ustar ", b" \0", b"\0\0\0\0", Format::Gnu),
            (b"ustar ", b"00", b"\0\0\0\0", Format::V7),
            (b"\0\0\0\0\0\0", b"\0\0", b"\0\0\0\0", Format::V7),
        ];
        for (magic, version, trailer, expected) in cases {
            assert_eq!(format(&block(magic, version, trailer)), Some(*expected));
        }
    }

    #[test]
    fn checksums_may_be_signed_but_must_match() {
        let mut high = [0; BLOCK];
        high[0] = 0xe9;
        let (_, signed) = checksums(&high);
        high[CHECKSUM].copy_from_slice(format!("{signed:06o}\0 ").as_bytes());
        assert_eq!(format(&high), Some(Format::V7));
        high[1] = 1;
        assert_eq!(format(&high), None);
    }
}
