//! The archive, one entry after another (Go's `tar.Reader`): extension headers are read and
//! applied to the entry they precede, and each entry's data is read, or skipped, through the
//! reader.

use std::io::{self, BufRead, Read, Seek, SeekFrom};

use crate::block::{self, BLOCK, Block, Format};
use crate::error::Error;
use crate::header::{Header, Kind};
use crate::numbers::{field_number, field_string, parse_decimal};
use crate::pax::{self, Records};
use crate::sparse::{self, PaxFormat};

/// A tar stream read entry by entry.
pub struct Archive<R> {
    inner: R,
    /// What is left of the current entry's data section, and the padding after it.
    data_left: u64,
    padding: u64,
    /// Of a sparse entry: how many data bytes its map still places.
    mapped_left: Option<u64>,
    /// Where reading stands: as in Go, an error stops it for good.
    state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Reading,
    Ended,
    Failed,
}

/// An archive in a file, indexed rather than read: where each entry's data is, its data
/// passed over by seeking.
impl<R: Read + Seek> Archive<R> {
    /// Where the stream stands: just after [`Archive::next_header`], where the entry's data
    /// (as stored: a sparse file's map first) starts.
    pub fn position(&mut self) -> Result<u64, Error> {
        Ok(self.inner.stream_position()?)
    }

    /// Passes over the rest of the current entry's data, and its padding, by seeking.
    pub fn seek_past_data(&mut self) -> Result<(), Error> {
        let skip = self.data_left + self.padding;
        let skip = i64::try_from(skip).map_err(|_| Error::Header("an entry too large to skip"))?;
        self.inner.seek(SeekFrom::Current(skip))?;
        self.data_left = 0;
        self.padding = 0;
        self.mapped_left = None;
        Ok(())
    }
}

impl<R: Read> Archive<R> {
    /// An archive read from `inner`.
    pub fn new(inner: R) -> Archive<R> {
        Archive {
            inner,
            data_left: 0,
            padding: 0,
            mapped_left: None,
            state: State::Reading,
        }
    }

    /// The next entry, once whatever is left of the current one's data is skipped; `None` at
    /// the end of the archive (two zero blocks, or the end of the stream between entries).
    pub fn next_header(&mut self) -> Result<Option<Header>, Error> {
        match self.state {
            State::Reading => {}
            State::Ended => return Ok(None),
            State::Failed => return Err(Error::Stopped),
        }
        let next = self.read_next();
        self.state = match &next {
            Ok(Some(_)) => State::Reading,
            Ok(None) => State::Ended,
            Err(_) => State::Failed,
        };
        next
    }

    /// The current entry's data: a regular file's contents, or a sparse file's data regions
    /// one after the other.
    pub fn data(&mut self) -> Data<'_, R> {
        Data(self)
    }

    /// The stream, wherever reading stopped.
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn read_next(&mut self) -> Result<Option<Header>, Error> {
        let mut records: Option<Records> = None;
        let (mut long_name, mut long_link) = (Vec::new(), Vec::new());
        loop {
            if !self.skip_rest()? {
                return Ok(None);
            }
            let mut block = [0; BLOCK];
            if !self.read_block(&mut block)? {
                return Ok(None);
            }
            if block == [0; BLOCK] {
                if !self.read_block(&mut block)? || block == [0; BLOCK] {
                    return Ok(None);
                }
                return Err(Error::Header("a header after a zero block"));
            }
            let mut header = Header::parse(&block)?;
            self.start_data(&header)?;
            match header.kind {
                // A later PAX header replaces an earlier one whole.
                Kind::Other(b'x') => {
                    records = Some(pax::parse(&self.read_special("a PAX header")?)?)
                }
                Kind::GlobalPax => {
                    let global = pax::parse(&self.read_special("a PAX header")?)?;
                    // Go yields it with its records, unless they do not apply.
                    if pax::merge(&mut header, &global).is_err() {
                        header.pax = None;
                    }
                    return Ok(Some(header));
                }
                Kind::Other(b'L') => {
                    long_name = field_string(&self.read_special("a GNU long name")?).to_vec();
                }
                Kind::Other(b'K') => {
                    long_link = field_string(&self.read_special("a GNU long link name")?).to_vec();
                }
                _ => {
                    if let Some(records) = &records {
                        pax::merge(&mut header, records)?;
                    }
                    // GNU long names win over PAX ones, as in Go.
                    if !long_name.is_empty() {
                        header.name = long_name;
                    }
                    if !long_link.is_empty() {
                        header.link_name = long_link;
                    }
                    // V7 marked directories by a trailing slash alone.
                    if block[block::TYPEFLAG] == 0 && header.name.ends_with(b"/") {
                        header.kind = Kind::Directory;
                    }
                    // The records may have changed the size.
                    self.start_data(&header)?;
                    self.start_sparse(&mut header, &block)?;
                    return Ok(Some(header));
                }
            }
        }
    }

    /// Sets up reading the data section of `header`, which has none if its type has none.
    fn start_data(&mut self, header: &Header) -> Result<(), Error> {
        let size = if header.kind.is_header_only() {
            0
        } else {
            header.size
        };
        let size = u64::try_from(size).map_err(|_| Error::Header("negative size"))?;
        self.data_left = size;
        self.padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        self.mapped_left = None;
        Ok(())
    }

    /// Reads a sparse file's map, if `header` is one: its real size and data regions go into
    /// `header`.
    fn start_sparse(&mut self, header: &mut Header, block: &Block) -> Result<(), Error> {
        let map = if header.kind == Kind::GnuSparse {
            if block::format(block) != Some(Format::Gnu) {
                return Err(Error::Header("an old GNU sparse header not in GNU format"));
            }
            header.size = field_number(&block[block::GNU_REAL_SIZE])
                .ok_or(Error::Header("bad sparse file size"))?;
            sparse::map_from_gnu_header(block, |extension| self.read_extension(extension))?
        } else if let Some(records) = header.pax.take() {
            let map = self.pax_sparse_map(header, &records);
            header.pax = Some(records);
            match map? {
                Some(map) => map,
                None => return Ok(()),
            }
        } else {
            return Ok(());
        };
        if header.kind.is_header_only() {
            return Err(Error::Header("a sparse map on an entry without data"));
        }
        let regions = sparse::regions(&map, header.size).ok_or(Error::Header("bad sparse map"))?;
        self.mapped_left = Some(regions.iter().map(|region| region.length).sum());
        header.sparse = Some(regions);
        Ok(())
    }

    /// The map of a PAX sparse file (formats 0.0, 0.1, 1.0), which also gives its real name
    /// and size; `None` when the records declare none.
    fn pax_sparse_map(
        &mut self,
        header: &mut Header,
        records: &Records,
    ) -> Result<Option<sparse::RawMap>, Error> {
        let Some(format) = sparse::pax_format(records) else {
            return Ok(None);
        };
        let get = |key: &[u8]| records.get(key).filter(|value| !value.is_empty());
        if let Some(name) = get(b"GNU.sparse.name") {
            header.name = name.clone();
        }
        if let Some(size) = get(b"GNU.sparse.size").or_else(|| get(b"GNU.sparse.realsize")) {
            header.size = parse_decimal(size).ok_or(Error::Header("bad sparse file size"))?;
        }
        Ok(Some(match format {
            PaxFormat::InRecords => sparse::map_from_records(records)?,
            PaxFormat::InData => sparse::map_from_data(|block| self.read_data_block(block))?,
        }))
    }

    /// Skips the rest of the current entry's data and its padding. `false`: the stream ended
    /// in the padding, which Go takes as the end of the archive.
    fn skip_rest(&mut self) -> Result<bool, Error> {
        let mut sink = [0; 8192];
        while self.data_left > 0 {
            let want = sink.len().min(self.data_left as usize);
            self.read_data_raw(&mut sink[..want])?;
        }
        let padding = std::mem::take(&mut self.padding) as usize;
        Ok(read_full(&mut self.inner, &mut sink[..padding])? == padding)
    }

    /// The next header block: `false` at the end of the stream.
    fn read_block(&mut self, block: &mut Block) -> Result<bool, Error> {
        match read_full(&mut self.inner, block)? {
            0 => Ok(false),
            BLOCK => Ok(true),
            _ => Err(Error::Truncated("a header")),
        }
    }

    /// An old GNU sparse header's extension block, which its size does not count.
    fn read_extension(&mut self, block: &mut Block) -> Result<(), Error> {
        match self.read_block(block)? {
            true => Ok(()),
            false => Err(Error::Truncated("a sparse map")),
        }
    }

    /// A whole block of the entry's data (where a version 1.0 sparse map is).
    fn read_data_block(&mut self, block: &mut Block) -> Result<(), Error> {
        if self.data_left < BLOCK as u64 {
            return Err(Error::Truncated("a sparse map"));
        }
        let mut filled = 0;
        while filled < BLOCK {
            filled += self.read_data_raw(&mut block[filled..])?;
        }
        Ok(())
    }

    /// An extension header's data, whole: at most [`crate::MAX_SPECIAL`] bytes.
    fn read_special(&mut self, what: &'static str) -> Result<Vec<u8>, Error> {
        if self.data_left > crate::MAX_SPECIAL {
            return Err(Error::TooLong(what));
        }
        let mut data = vec![0; self.data_left as usize];
        let mut filled = 0;
        while filled < data.len() {
            filled += self.read_data_raw(&mut data[filled..])?;
        }
        Ok(data)
    }

    /// Bytes of the data section, as they are stored.
    fn read_data_raw(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let want = buf
            .len()
            .min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let read = loop {
            match self.inner.read(&mut buf[..want]) {
                Ok(0) => return Err(Error::Truncated("an entry's data")),
                Ok(read) => break read,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err.into()),
            }
        };
        self.data_left -= read as u64;
        Ok(read)
    }

    fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let read = self.readable().and_then(|readable| {
            let want = buf
                .len()
                .min(usize::try_from(readable).unwrap_or(usize::MAX));
            if want == 0 {
                return Ok(0);
            }
            let read = self.read_data_raw(&mut buf[..want])?;
            self.advance_mapped(read);
            Ok(read)
        });
        self.fail_on(read)
    }

    /// How many bytes of the current entry's data may be read next (0 at its end): what is
    /// left of its data section, and of a sparse file, no more than its map still places.
    fn readable(&self) -> Result<u64, Error> {
        if self.state == State::Failed {
            return Err(Error::Stopped);
        }
        let Some(mapped_left) = self.mapped_left else {
            return Ok(self.data_left);
        };
        match (mapped_left, self.data_left) {
            (0, 0) => Ok(0),
            (0, _) => Err(Error::UnreferencedData),
            (_, 0) => Err(Error::MissingData),
            (mapped, data) => Ok(mapped.min(data)),
        }
    }

    fn advance_mapped(&mut self, read: usize) {
        if let Some(mapped_left) = &mut self.mapped_left {
            *mapped_left -= read as u64;
        }
    }

    /// Passes `result` on; an error stops reading for good, as in Go.
    fn fail_on<T>(&mut self, result: Result<T, Error>) -> Result<T, Error> {
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }
}

impl<R: BufRead> Archive<R> {
    /// How many bytes of the current entry's data the stream's buffer holds now, at most
    /// `readable`; reads more into it if it is empty.
    fn buffered_data(&mut self) -> Result<usize, Error> {
        let readable = self.readable()?;
        if readable == 0 {
            return Ok(0);
        }
        let buffered = loop {
            match self.inner.fill_buf() {
                Ok(buf) => break buf.len(),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err.into()),
            }
        };
        if buffered == 0 {
            return Err(Error::Truncated("an entry's data"));
        }
        Ok(buffered.min(usize::try_from(readable).unwrap_or(usize::MAX)))
    }
}

/// The current entry's data, read through its archive. A sparse file's data ends with an
/// error, not with 0, when its map and its entry disagree on how much there is.
pub struct Data<'a, R>(&'a mut Archive<R>);

impl<R: Read> Read for Data<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(self.0.read_data(buf)?)
    }
}

/// Over a buffered stream, the data can be read in place: in the stream's own buffer, without
/// a copy.
impl<R: BufRead> BufRead for Data<'_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let buffered = self.0.buffered_data();
        let len = self.0.fail_on(buffered)?;
        if len == 0 {
            return Ok(&[]);
        }
        // The same bytes again, now buffered: no reading.
        Ok(&self.0.inner.fill_buf()?[..len])
    }

    fn consume(&mut self, amount: usize) {
        self.0.inner.consume(amount);
        self.0.data_left -= amount as u64;
        self.0.advance_mapped(amount);
    }
}

/// Fills `buf` as far as the stream allows: short only where it ends.
fn read_full(inner: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match inner.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sparse file whose entry holds more than its map places, then a file.
    fn unreferenced_then_a_file() -> Vec<u8> {
        let mut block = [0u8; BLOCK];
        block[..1].copy_from_slice(b"s");
        block[block::TYPEFLAG] = b'S';
        block[257..265].copy_from_slice(b"ustar  \0");
        block[124..136].copy_from_slice(b"00000000005\0");
        block[block::GNU_REAL_SIZE].copy_from_slice(b"00000000010\0");
        block[386..410].copy_from_slice(b"00000000000\x0000000000001\x00");
        block::seal(&mut block);
        let mut next = [0u8; BLOCK];
        next[..5].copy_from_slice(b"after");
        next[block::TYPEFLAG] = b'0';
        block::seal(&mut next);
        let mut data = [0u8; BLOCK];
        data[..5].copy_from_slice(b"abcde");
        [&block[..], &data, &next, &[0; 1024]].concat()
    }

    #[test]
    fn an_index_seeks_past_data() {
        // A file of 600 bytes (two data blocks), a GNU long name, then a file.
        let file = |name: &[u8], typeflag: u8, size: &[u8; 12]| {
            let mut block = [0u8; BLOCK];
            block[..name.len()].copy_from_slice(name);
            block[block::TYPEFLAG] = typeflag;
            block[124..136].copy_from_slice(size);
            block::seal(&mut block);
            block
        };
        let first = file(b"first", b'0', b"00000001130\0");
        let long = file(b"././@LongLink", b'L', b"00000000006\0");
        let mut long_data = [0u8; BLOCK];
        long_data[..6].copy_from_slice(b"second");
        let second = file(b"short", b'0', b"00000000003\0");
        let whole = [
            &first[..],
            &[1; 600],
            &[0; 424],
            &long,
            &long_data,
            &second,
            b"abc",
            &[0; 509],
            &[0; 1024],
        ]
        .concat();
        let mut archive = Archive::new(io::Cursor::new(&whole));
        let mut index = Vec::new();
        while let Some(header) = archive.next_header().unwrap() {
            index.push((
                header.name.clone(),
                archive.position().unwrap(),
                header.size,
            ));
            archive.seek_past_data().unwrap();
        }
        assert_eq!(
            index,
            [(b"first".to_vec(), 512, 600), (b"second".to_vec(), 3072, 3)]
        );
        assert_eq!(&whole[3072..3075], b"abc");
    }

    #[test]
    fn an_error_stops_reading_for_good() {
        let bytes = unreferenced_then_a_file();
        let mut archive = Archive::new(&bytes[..]);
        let header = archive.next_header().unwrap().unwrap();
        assert_eq!((header.name.as_slice(), header.size), (&b"s"[..], 8));
        let mut data = Vec::new();
        let err = archive.data().read_to_end(&mut data).unwrap_err();
        assert!(err.to_string().contains("more data than its map"), "{err}");
        assert!(matches!(archive.next_header(), Err(Error::Stopped)));
        assert!(archive.data().read(&mut [0; 8]).is_err());
    }

    /// Reads the current entry's data in place, as `copy_data` does.
    fn read_in_place(data: &mut impl BufRead) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let buf = data.fill_buf()?;
            if buf.is_empty() {
                return Ok(out);
            }
            let n = buf.len().min(3);
            out.extend_from_slice(&buf[..n]);
            data.consume(n);
        }
    }

    #[test]
    fn data_read_in_place_is_data_read() {
        let mut header = [0u8; BLOCK];
        header[..1].copy_from_slice(b"f");
        header[block::TYPEFLAG] = b'0';
        header[124..136].copy_from_slice(b"00000000012\0");
        block::seal(&mut header);
        let mut data = [0u8; BLOCK];
        data[..10].copy_from_slice(b"0123456789");
        let whole = [&header[..], &data, &[0; 1024]].concat();
        let mut archive = Archive::new(&whole[..]);
        archive.next_header().unwrap().unwrap();
        assert_eq!(read_in_place(&mut archive.data()).unwrap(), b"0123456789");
        assert!(archive.next_header().unwrap().is_none());

        let cut = &whole[..BLOCK + 4];
        let mut archive = Archive::new(cut);
        archive.next_header().unwrap().unwrap();
        let err = read_in_place(&mut archive.data()).unwrap_err();
        assert!(
            err.to_string().contains("ends inside an entry's data"),
            "{err}"
        );
        assert!(matches!(archive.next_header(), Err(Error::Stopped)));

        let bytes = unreferenced_then_a_file();
        let mut archive = Archive::new(&bytes[..]);
        archive.next_header().unwrap().unwrap();
        let err = read_in_place(&mut archive.data()).unwrap_err();
        assert!(err.to_string().contains("more data than its map"), "{err}");
        assert!(matches!(archive.next_header(), Err(Error::Stopped)));
    }
}
