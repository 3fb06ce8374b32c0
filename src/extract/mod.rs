//! The helper's half of a layer: decompress, hash, and apply a tar stream to a root directory
//! with OCI whiteout semantics (DESIGN §4.4, §5).

mod apply;
mod decompress;
pub mod owner;
pub mod path;

use std::io::{self, BufRead, Read};
use std::os::fd::BorrowedFd;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread;

use anyhow::{Context, Result, anyhow};

use crate::digest::{Digest, HashingReader};
use crate::protocol::{Applied, Compression};

/// Decompressed bytes travel between the threads in chunks of this size, at most
/// `CHUNKS_IN_FLIGHT` at a time: memory stays bounded whatever the layer's size.
const CHUNK: usize = 256 * 1024;
const CHUNKS_IN_FLIGHT: usize = 8;

/// Applies the compressed layer `input` to the tree at `root`. `mapped_ids` is how many ids the
/// caller's user namespace maps from 0; owners beyond them are recorded, not set.
///
/// Inflating and hashing run on a second thread, so they overlap with creating files, which on
/// most disks is the slower half.
pub fn apply_layer(
    input: impl BufRead + Send,
    compression: Compression,
    root: BorrowedFd,
    mapped_ids: u64,
) -> Result<Applied> {
    let decoder = decompress::decoder(input, compression)?;
    let (sender, receiver) = sync_channel(CHUNKS_IN_FLIGHT);
    thread::scope(|scope| {
        let inflater = scope.spawn(move || inflate(decoder, sender));
        let mut stream = ChunkReader {
            chunks: receiver,
            chunk: Vec::new(),
            offset: 0,
        };
        let applied = extract(&mut stream, root, mapped_ids);
        // Dropping the receiver tells the inflater to stop if extraction failed early.
        drop(stream);
        let hashed = inflater
            .join()
            .map_err(|_| anyhow!("the decompression thread panicked"));
        let (entries, skipped) = applied?;
        let (diff_id, bytes) = hashed??;
        Ok(Applied {
            diff_id,
            entries,
            bytes,
            skipped,
        })
    })
}

/// Reads the tar stream and applies its entries; then reads to the end of the stream, because
/// tar stops at its first end block while the diff ID covers every byte.
fn extract(
    stream: &mut ChunkReader,
    root: BorrowedFd,
    mapped_ids: u64,
) -> Result<(u64, Vec<crate::protocol::Skipped>)> {
    let mut archive = tar::Archive::new(stream);
    let mut applier = apply::Applier::new(root, mapped_ids);
    let mut entries = 0u64;
    for entry in archive.entries().context("reading the layer")? {
        let mut entry = entry.map_err(|err| header_error(err, entries))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        applier
            .apply(&mut entry)
            .with_context(|| format!("entry {name:?}"))?;
        entries += 1;
    }
    let skipped = applier.finish()?;
    io::copy(archive.into_inner(), &mut io::sink()).context("reading past the tar end")?;
    Ok((entries, skipped))
}

/// A failure to read the next tar header: the decoder's own words when the compressed stream is
/// at fault, else what tar says, placed in the stream.
fn header_error(err: io::Error, entries: u64) -> anyhow::Error {
    if decompress::is_stream_error(&err) {
        return err.into();
    }
    match entries {
        0 => anyhow::Error::from(err).context("not a valid tar stream"),
        n => anyhow::Error::from(err).context(format!("reading the tar header after entry {n}")),
    }
}

/// The inflater thread: decompresses and hashes everything, passing chunks on. A decoder error
/// travels down the channel in place of the next chunk.
fn inflate(
    decoder: Box<dyn Read + Send + '_>,
    chunks: SyncSender<io::Result<Vec<u8>>>,
) -> Result<(Digest, u64)> {
    let mut stream = HashingReader::new(decoder);
    loop {
        let mut chunk = vec![0u8; CHUNK];
        match read_chunk(&mut stream, &mut chunk) {
            Ok(0) => return Ok(stream.finish()),
            Ok(n) => {
                chunk.truncate(n);
                if chunks.send(Ok(chunk)).is_err() {
                    // Extraction gave up; its error is the one to report.
                    return Ok(stream.finish());
                }
            }
            Err(err) => {
                let message = err.to_string();
                let _ = chunks.send(Err(err));
                return Err(anyhow!(message));
            }
        }
    }
}

/// Fills `chunk` as far as the stream allows, so chunks are full except the last.
fn read_chunk(stream: &mut impl Read, chunk: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < chunk.len() {
        match stream.read(&mut chunk[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The extraction thread's view of the decompressed stream.
struct ChunkReader {
    chunks: Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    offset: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.offset == self.chunk.len() {
            match self.chunks.recv() {
                Ok(chunk) => (self.chunk, self.offset) = (chunk?, 0),
                // The inflater is done: end of stream.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.offset);
        buf[..n].copy_from_slice(&self.chunk[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    //! Extraction into a temporary directory, without namespaces: `openat2(RESOLVE_IN_ROOT)`
    //! alone must keep every entry inside.

    use std::fs;
    use std::os::fd::AsFd;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;

    use super::*;

    enum E<'a> {
        Dir(&'a str),
        File(&'a str, &'a str),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
    }

    fn tar_of(entries: &[E]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for entry in entries {
            let mut header = tar::Header::new_gnu();
            header.set_mtime(1_000_000);
            header.set_uid(0);
            header.set_gid(0);
            let (name, data): (&str, &[u8]) = match entry {
                E::Dir(name) => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(0o755);
                    (name, b"")
                }
                E::File(name, data) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(0o644);
                    (name, data.as_bytes())
                }
                E::Symlink(name, target) | E::Hardlink(name, target) => {
                    let kind = if matches!(entry, E::Symlink(..)) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    };
                    header.set_entry_type(kind);
                    header.set_mode(0o777);
                    header.set_link_name(target).unwrap();
                    (name, b"")
                }
            };
            header.set_size(data.len() as u64);
            // Raw names: the tar crate's path setter would refuse `..` and absolute names.
            let bytes = name.as_bytes();
            header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            header.set_cksum();
            builder.append(&header, data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn apply(root: &Path, entries: &[E]) -> Result<Applied> {
        let dir = fs::File::open(root).unwrap();
        apply_layer(&tar_of(entries)[..], Compression::None, dir.as_fd(), 1)
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap()
    }

    #[test]
    fn whiteouts_spare_same_layer_files_and_remove_lower_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        apply(
            root,
            &[E::Dir("d"), E::File("d/lower", "1"), E::File("d/keep", "1")],
        )
        .unwrap();
        apply(
            root,
            &[
                E::File("d/new", "2"),
                E::File("d/.wh.new", ""),
                E::File("d/.wh.lower", ""),
            ],
        )
        .unwrap();
        assert!(!root.join("d/lower").exists());
        assert_eq!(read(&root.join("d/new")), "2");
        assert_eq!(read(&root.join("d/keep")), "1");
        assert!(!root.join("d/.wh.new").exists());
    }

    #[test]
    fn opaque_marker_after_siblings_hides_only_lower_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        apply(
            root,
            &[
                E::Dir("d"),
                E::File("d/old", "1"),
                E::Dir("d/sub"),
                E::File("d/sub/old", "1"),
            ],
        )
        .unwrap();
        apply(
            root,
            &[
                E::Dir("d/sub"),
                E::File("d/sub/new", "2"),
                E::File("d/.wh..wh..opq", ""),
            ],
        )
        .unwrap();
        assert!(!root.join("d/old").exists());
        assert!(!root.join("d/sub/old").exists());
        assert_eq!(read(&root.join("d/sub/new")), "2");
    }

    #[test]
    fn symlinked_parents_resolve_inside_the_root() {
        let outside = tempfile::tempdir().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let escape = outside.path().to_str().unwrap();
        apply(
            root,
            &[
                E::Symlink("abs", escape),
                E::Symlink("up", "../../../../.."),
                E::File("abs/x", "in"),
            ],
        )
        .unwrap();
        apply(root, &[E::File("up/y", "in")]).unwrap();
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        assert_eq!(
            read(&root.join(escape.trim_start_matches('/')).join("x")),
            "in"
        );
        assert_eq!(read(&root.join("y")), "in");
        assert_eq!(fs::read_link(root.join("abs")).unwrap(), Path::new(escape));
    }

    #[test]
    fn refuses_dot_dot_and_a_non_directory_root() {
        let tmp = tempfile::tempdir().unwrap();
        let err = apply(tmp.path(), &[E::File("../x", "bad")]).unwrap_err();
        assert!(format!("{err:#}").contains("'..'"), "{err:#}");
        let err = apply(tmp.path(), &[E::Symlink("/", "/etc")]).unwrap_err();
        assert!(format!("{err:#}").contains("root directory"), "{err:#}");
    }

    #[test]
    fn hardlinks_share_inodes_and_replace_existing_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        apply(root, &[E::File("a", "data"), E::File("b", "old")]).unwrap();
        apply(root, &[E::Hardlink("b", "/a"), E::Hardlink("a", "a")]).unwrap();
        let (a, b) = (
            fs::metadata(root.join("a")).unwrap(),
            fs::metadata(root.join("b")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino());
        assert_eq!(a.nlink(), 2);
    }

    #[test]
    fn directories_merge_and_other_types_replace() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        apply(
            root,
            &[
                E::Dir("d"),
                E::File("d/f", "1"),
                E::Dir("x"),
                E::File("x/f", "1"),
            ],
        )
        .unwrap();
        apply(root, &[E::Dir("d"), E::File("x", "now a file")]).unwrap();
        assert_eq!(read(&root.join("d/f")), "1");
        assert_eq!(read(&root.join("x")), "now a file");
        assert_eq!(
            fs::metadata(root.join("d")).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        assert_eq!(fs::metadata(root.join("d")).unwrap().mtime(), 1_000_000);
    }

    #[test]
    fn the_diff_id_covers_trailing_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let mut stream = tar_of(&[E::File("f", "x")]);
        stream.extend_from_slice(&[0u8; 4096]);
        let dir = fs::File::open(tmp.path()).unwrap();
        let applied = apply_layer(&stream[..], Compression::None, dir.as_fd(), 1).unwrap();
        assert_eq!(applied.diff_id, crate::digest::Digest::of_bytes(&stream));
        assert_eq!(applied.bytes, stream.len() as u64);
        assert_eq!(applied.entries, 1);
    }
}
