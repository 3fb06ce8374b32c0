//! A layer blob on its way into the helper's stdin, checked against its descriptor as it goes.
//! The bytes move from the page cache to the pipe by `splice`, never through this process; the
//! parent reads them once more, from the page cache, only to hash them.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{SpliceFFlags, splice};
use nix::sys::uio::pread;

use crate::digest::{Digest, Verifier};

/// How large the pipe is made: the fewer times it fills, the fewer wake-ups of the helper.
const PIPE_SIZE: usize = 1 << 20;
/// How much is hashed and then passed on at a time: small enough to stay in the CPU's cache
/// between the read and the hash, and to wake the helper, which reads as little at a time, as
/// soon as there is something for it.
const STEP: usize = 64 << 10;

/// A layer's blob, to send to a helper and check on the way.
pub struct Blob {
    file: File,
    digest: Digest,
    size: u64,
}

impl Blob {
    /// The blob open as `file`, which must have `digest` and `size`.
    pub fn new(file: File, digest: &Digest, size: u64) -> Self {
        Blob {
            file,
            digest: digest.clone(),
            size,
        }
    }

    /// An empty layer, to try out what the helper can do.
    pub fn empty() -> Result<Self> {
        let file = File::open("/dev/null").context("opening /dev/null")?;
        Ok(Blob::new(file, &Digest::of_bytes(b""), 0))
    }

    /// Writes the blob into `pipe`. The helper quitting early (a broken pipe) is not an error
    /// here: its reply says why, unless the rest of the blob fails verification, which then
    /// explains the helper's failure better (a corrupt blob is first of all a mismatch).
    pub fn send(&self, pipe: &mut (impl Write + AsFd)) -> Result<()> {
        // Best effort: the user's pipe quota may not allow it.
        let _ = nix::fcntl::fcntl(
            pipe.as_fd(),
            nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32),
        );
        let mut verifier = Verifier::new(&self.digest, self.size);
        let mut buf = vec![0u8; STEP];
        let mut offset = 0u64;
        let mut helper_reading = true;
        loop {
            let len = buf
                .len()
                .min(usize::try_from(verifier.wanted()).unwrap_or(STEP));
            let n = pread(&self.file, &mut buf[..len], offset as i64)
                .with_context(|| format!("reading blob {}", self.digest))?;
            if n == 0 {
                return Ok(verifier.finish()?);
            }
            verifier.update(&buf[..n])?;
            if helper_reading {
                match self.pass_on(offset, &buf[..n], pipe) {
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => helper_reading = false,
                    other => other.context("writing the layer to the helper")?,
                }
            }
            offset += n as u64;
        }
    }

    /// Moves the `bytes` just hashed, found at `offset` in the file, into the pipe.
    fn pass_on(&self, offset: u64, bytes: &[u8], pipe: &mut (impl Write + AsFd)) -> io::Result<()> {
        let mut from = offset as i64;
        let end = from + bytes.len() as i64;
        while from < end {
            let left = (end - from) as usize;
            match splice(
                &self.file,
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
        let sent = (from - offset as i64) as usize;
        pipe.write_all(&bytes[sent..])
    }
}
