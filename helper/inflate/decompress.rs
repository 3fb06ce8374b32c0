//! Picks the decoder for a layer stream from its magic bytes, checked against what the media
//! type declared, and labels decoder errors so a corrupt stream reads as such.

use std::io::{self, BufRead, Cursor, Read};

use strata_protocol::Compression;

/// The decompressed stream. `declared` gzip or zstd must match the magic; an uncompressed
/// declaration accepts compressed data too (Docker's `…diff.tar` is often gzip).
pub fn decoder<'a>(
    mut input: impl BufRead + Send + 'a,
    declared: Compression,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    let mut head = Vec::with_capacity(Compression::MAGIC_LEN);
    (&mut input)
        .take(Compression::MAGIC_LEN as u64)
        .read_to_end(&mut head)?;
    let found = Compression::sniff(&head);
    if matches!(declared, Compression::Gzip | Compression::Zstd) && found != declared {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the layer's media type says {} but the stream is not (it starts with {})",
                name(declared),
                hex::encode(&head)
            ),
        ));
    }
    let input = Cursor::new(head).chain(input);
    Ok(match found {
        Compression::Gzip => Box::new(Labeled {
            inner: flate2::bufread::MultiGzDecoder::new(input),
            label: "gzip",
        }),
        Compression::Zstd => Box::new(Labeled {
            inner: zstd::stream::read::Decoder::with_buffer(input)?,
            label: "zstd",
        }),
        _ => Box::new(input),
    })
}

fn name(compression: Compression) -> &'static str {
    match compression {
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
        Compression::None | Compression::Detect => "uncompressed",
    }
}

/// Rewords decoder errors so that they say which decoder failed and that the stream (not the
/// disk) is at fault.
struct Labeled<R> {
    inner: R,
    label: &'static str,
}

impl<R: Read> Read for Labeled<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            let what = if e.kind() == io::ErrorKind::UnexpectedEof {
                "truncated"
            } else {
                "corrupt"
            };
            io::Error::new(e.kind(), format!("{} stream is {what}: {e}", self.label))
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// `data` in one gzip member.
    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn decode(blob: &[u8], declared: Compression) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decoder(blob, declared)?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn reads_every_gzip_member() {
        let mut blob = gzip(b"first ");
        blob.extend(gzip(b"second"));
        assert_eq!(decode(&blob, Compression::Gzip).unwrap(), b"first second");
    }

    #[test]
    fn reads_zstd_and_detects_compression() {
        let blob = zstd::encode_all(&b"hello"[..], 3).unwrap();
        assert_eq!(decode(&blob, Compression::Zstd).unwrap(), b"hello");
        assert_eq!(decode(&blob, Compression::Detect).unwrap(), b"hello");
        assert_eq!(decode(&gzip(b"x"), Compression::None).unwrap(), b"x");
        assert_eq!(decode(b"plain", Compression::Detect).unwrap(), b"plain");
        assert_eq!(decode(b"", Compression::None).unwrap(), b"");
    }

    #[test]
    fn refuses_a_stream_that_contradicts_its_media_type() {
        let err = decode(b"plain tar", Compression::Gzip).unwrap_err();
        assert!(err.to_string().contains("says gzip"), "{err}");
    }

    #[test]
    fn reports_truncation_and_corruption() {
        let blob = gzip(&[7u8; 10_000]);
        let err = decode(&blob[..blob.len() / 2], Compression::Gzip).unwrap_err();
        assert!(
            err.to_string().contains("gzip stream is truncated"),
            "{err}"
        );
        let mut bad_crc = blob.clone();
        let crc_at = bad_crc.len() - 8;
        bad_crc[crc_at] ^= 0xff;
        let err = decode(&bad_crc, Compression::Gzip).unwrap_err();
        assert!(err.to_string().contains("gzip stream is corrupt"), "{err}");
    }
}
