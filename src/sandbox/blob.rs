//! A blob on its way into a helper, checked as it goes against what it must be: into an
//! inflater's stdin, moved from the page cache to the pipe by `splice` after a read to hash
//! it; or, when the blob is the tar stream, read straight into the applier's ring. A layer's
//! blob is a file; an archive given to `strata extract` may also be a pipe, read once.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsFd;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::fcntl::{SpliceFFlags, splice};
use nix::sys::uio::pread;

use super::pass::{Passed, Stream, pass};
use crate::digest::{Digest, Expected, Hashed, Verifier};
use crate::image::BlobInput;
use crate::meter::Meter;
use crate::protocol::Compression;
use strata_ring::{Announcer, Filler, PageBuf};

/// How large the pipe is made: the fewer times it fills, the fewer wake-ups of the helper.
const PIPE_SIZE: usize = 1 << 20;
/// How much is hashed and then passed on at a time: small enough to stay in the CPU's cache
/// between the read and the hash, and to wake the helper, which reads as little at a time, as
/// soon as there is something for it.
const STEP: usize = 64 << 10;

/// A blob, to send to a helper and check on the way.
pub struct Blob {
    input: Input,
    /// What it is called in messages: its digest, or the archive's name.
    name: String,
    expected: Expected,
    compression: Compression,
    /// How far it has been read.
    meter: Meter,
}

/// Where a blob's bytes are read.
enum Input {
    /// A file, or the part of it from `start` to `end` (a member of an archive), read at
    /// offsets: its pages can be spliced, and read again.
    File {
        file: File,
        start: u64,
        end: Option<u64>,
    },
    /// A pipe or another stream, read once, in order.
    Stream(Mutex<Once>),
}

/// A stream read once: its first bytes are kept, as the compression is read from them before
/// the stream is sent.
struct Once {
    input: Box<dyn Read + Send>,
    head: Vec<u8>,
    /// Bytes of the stream read from `input` so far, the head's included.
    taken: u64,
}

impl Input {
    /// `input`, which is a stream if it is not a regular file: its first bytes read already.
    fn new(input: BlobInput, name: &str) -> Result<Self> {
        let stream = match input {
            BlobInput::File(mut file) => {
                let metadata = file.metadata().with_context(|| format!("reading {name}"))?;
                if metadata.is_file() {
                    // From where it stands, as a read would: stdin may have been read from.
                    let start = file
                        .stream_position()
                        .with_context(|| format!("reading {name}"))?;
                    return Ok(Input::File {
                        file,
                        start,
                        end: None,
                    });
                }
                Box::new(file)
            }
            BlobInput::Slice { file, start, len } => {
                return Ok(Input::File {
                    file,
                    start,
                    end: Some(start + len),
                });
            }
            BlobInput::Stream(stream) => stream,
        };
        let mut once = Once {
            input: stream,
            head: Vec::with_capacity(Compression::MAGIC_LEN),
            taken: 0,
        };
        (&mut once.input)
            .take(Compression::MAGIC_LEN as u64)
            .read_to_end(&mut once.head)
            .with_context(|| format!("reading {name}"))?;
        once.taken = once.head.len() as u64;
        Ok(Input::Stream(Mutex::new(once)))
    }
}

impl Blob {
    /// A layer's blob, open as `input`, which must have `digest` and `size`, and whose media
    /// type declares `compression`.
    pub fn new(
        input: BlobInput,
        digest: &Digest,
        size: u64,
        compression: Compression,
    ) -> Result<Self> {
        let name = format!("blob {digest}");
        Ok(Blob {
            input: Input::new(input, &name)?,
            name,
            expected: Expected::Descriptor {
                digest: digest.clone(),
                size,
            },
            compression,
            meter: Meter::default(),
        })
    }

    /// The blob, telling `meter` how far it has been read.
    pub fn metered(self, meter: Meter) -> Self {
        Blob { meter, ..self }
    }

    /// An archive read from `input` (a file, or a stream read once), named `name` in messages,
    /// which must be `expected`. `compression`: what the user said it is.
    pub fn archive(
        input: File,
        name: String,
        expected: Expected,
        compression: Compression,
    ) -> Result<Self> {
        Ok(Blob {
            input: Input::new(BlobInput::File(input), &name)?,
            name,
            expected,
            compression,
            meter: Meter::default(),
        })
    }

    /// An empty layer, to try out what the helper can do.
    pub fn empty() -> Result<Self> {
        let file = File::open("/dev/null").context("opening /dev/null")?;
        Blob::new(
            BlobInput::File(file),
            &Digest::of_bytes(b""),
            0,
            Compression::None,
        )
    }

    /// What is declared of its compression.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Whether an inflater must turn it into the tar stream: it is declared compressed, or its
    /// first bytes say so. Otherwise the blob is the stream, and its digest the diff ID.
    pub fn needs_inflating(&self) -> Result<bool> {
        let mut head = [0u8; Compression::MAGIC_LEN];
        let mut read = 0;
        while read < head.len() {
            match self.read_at(&mut head[read..], read as u64)? {
                0 => break,
                n => read += n,
            }
        }
        Ok(self.compression.needs_inflating(&head[..read]))
    }

    /// Writes the blob into `pipe` (an inflater's stdin) and returns its digest and length. The helper
    /// quitting early (a broken pipe) is not an error here: its reply says why, unless the
    /// rest of the blob fails verification, which then explains the helper's failure better (a
    /// corrupt blob is first of all a mismatch).
    pub fn send(&self, pipe: &mut (impl Write + AsFd)) -> Result<Hashed> {
        widen(&*pipe);
        let mut verifier = Verifier::new(self.expected.clone());
        let mut buf = PageBuf::new(STEP);
        let mut offset = 0u64;
        loop {
            let n = self.read_at(&mut buf[..wanted(&verifier, STEP)], offset)?;
            if n == 0 {
                return Ok(verifier.finish()?);
            }
            verifier.update(&buf[..n])?;
            match self.pass_on(offset, &buf[..n], pipe) {
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    return self.verify_rest(verifier, offset + n as u64);
                }
                other => other.context("writing the layer to the helper")?,
            }
            offset += n as u64;
        }
    }

    /// Reads the blob, which is a tar stream, into the applier's ring (see [`pass`]),
    /// verifying it on the way; returns how much the applier took, and the whole blob's digest
    /// and length. As with [`Blob::send`], a reader that hangs up is not an error here: the
    /// rest is still verified.
    pub fn fill(&self, ring: (Filler, Announcer)) -> Result<(Passed, Hashed)> {
        let mut stream = BlobStream {
            blob: self,
            verifier: Verifier::new(self.expected.clone()),
            read: 0,
        };
        let passed = pass(&mut stream, ring)
            .with_context(|| format!("passing {} to the helper", self.name))?;
        let hashed = match passed {
            Passed::Whole => stream.verifier.finish()?,
            Passed::HungUp(_) => self.verify_rest(stream.verifier, stream.read)?,
        };
        Ok((passed, hashed))
    }

    /// Verifies the rest of the blob, from `offset`, once its reader has hung up; returns its
    /// digest and length.
    fn verify_rest(&self, mut verifier: Verifier, mut offset: u64) -> Result<Hashed> {
        let mut buf = PageBuf::new(STEP);
        loop {
            let n = self.read_at(&mut buf[..wanted(&verifier, STEP)], offset)?;
            if n == 0 {
                return Ok(verifier.finish()?);
            }
            verifier.update(&buf[..n])?;
            offset += n as u64;
        }
    }

    /// Reads at `offset`: anywhere in a file (up to the end of its part); in a stream, in its
    /// head or where it was left.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let read = match &self.input {
            Input::File { file, start, end } => {
                let at = start + offset;
                let left = end.map_or(buf.len() as u64, |end| end.saturating_sub(at));
                let len = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                loop {
                    match pread(file, &mut buf[..len], at as i64) {
                        Err(Errno::EINTR) => {}
                        read => break read.map_err(io::Error::from),
                    }
                }
            }
            Input::Stream(once) => {
                let mut once = once.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if let Some(head) = once.head.get(offset as usize..).filter(|h| !h.is_empty()) {
                    let n = head.len().min(buf.len());
                    buf[..n].copy_from_slice(&head[..n]);
                    Ok(n)
                } else if offset != once.taken {
                    bail!("{} is a stream: it cannot be read again", self.name);
                } else {
                    let read = loop {
                        match once.input.read(buf) {
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            read => break read,
                        }
                    };
                    if let Ok(n) = read {
                        once.taken += n as u64;
                    }
                    read
                }
            }
        };
        let read = read.with_context(|| format!("reading {}", self.name))?;
        self.meter.reached(offset + read as u64);
        Ok(read)
    }

    /// Moves the `bytes` just hashed, found at `offset` in the blob, into the pipe: from a
    /// layer's file, by `splice`. `splice` passes the page cache's pages, which a concurrent
    /// writer of the file could change after they were hashed: for a layer the diff ID, hashed
    /// downstream, still names what was applied; an archive has nothing else, so the very
    /// bytes hashed are written.
    fn pass_on(&self, offset: u64, bytes: &[u8], pipe: &mut (impl Write + AsFd)) -> io::Result<()> {
        let (Input::File { file, start, .. }, Expected::Descriptor { .. }) =
            (&self.input, &self.expected)
        else {
            return pipe.write_all(bytes);
        };
        let first = (start + offset) as i64;
        let mut from = first;
        let end = from + bytes.len() as i64;
        while from < end {
            let left = (end - from) as usize;
            match splice(
                file,
                Some(&mut from),
                pipe.as_fd(),
                None,
                left,
                SpliceFFlags::empty(),
            ) {
                Ok(0) => break,
                Ok(_) => {}
                Err(Errno::EINTR) => {}
                // A filesystem that cannot splice: copy what is left.
                Err(Errno::EINVAL | Errno::ENOSYS) => break,
                Err(e) => return Err(e.into()),
            }
        }
        // The file shrank since it was read, or could not be spliced: send what was hashed.
        let sent = (from - first) as usize;
        pipe.write_all(&bytes[sent..])
    }
}

/// A blob read into the applier's ring, verified as it goes.
struct BlobStream<'a> {
    blob: &'a Blob,
    verifier: Verifier,
    /// Bytes read so far.
    read: u64,
}

impl Stream for BlobStream<'_> {
    fn read_into(&mut self, slot: &mut [u8]) -> Result<usize> {
        let len = wanted(&self.verifier, slot.len());
        let n = self.blob.read_at(&mut slot[..len], self.read)?;
        self.read += n as u64;
        Ok(n)
    }

    fn take_in(&mut self, bytes: &[u8]) -> Result<()> {
        Ok(self.verifier.update(bytes)?)
    }
}

/// How much to read next, at most `limit`: one byte past the blob's declared end, to catch a
/// longer blob.
fn wanted(verifier: &Verifier, limit: usize) -> usize {
    limit.min(usize::try_from(verifier.wanted()).unwrap_or(limit))
}

/// Makes `pipe` hold more, so that its two ends wake each other less often. Best effort: the
/// user's pipe quota may not allow it.
fn widen(pipe: &impl AsFd) {
    let _ = nix::fcntl::fcntl(
        pipe.as_fd(),
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32),
    );
}
