//! The inflater: a process of its own that turns the compressed layer on stdin into the tar
//! stream, in a ring (`strata-ring`) that the parent reads. It runs as the user, in no
//! namespace, with nothing open but its pipes and the ring, behind a seccomp wall that lets it
//! read, write, allocate and wait (`seccomp::Wall::Inflater`).
//!
//! It hashes nothing. The parent copies each slot into the applier's ring and hashes the copy,
//! which only the parent can write: an exploit of the decoder can send any stream, but cannot
//! name it (the diff ID is the hash of what the applier got), and an exploit of the applier
//! cannot change it. Keeping the decoder apart from the applier also keeps a decoder exploit
//! away from the sandbox's privileges, and a tar exploit away from the decoder's input.

mod decompress;

use std::io::{self, BufRead, Read};

use anyhow::{Context, Result};
use strata_protocol::{Compression, Reply};
use strata_ring::{Announcer, Filler, PageBuf};

use crate::seccomp;

/// Inflates `input`, declared `declared`, into the ring `filler` and `announcer` write, and
/// accounts for it: the whole stream ([`Reply::Inflated`]), or how much of it the reader took
/// before hanging up ([`Reply::HungUp`]). The wall is up before the first byte is decoded.
pub fn inflate(
    input: impl BufRead + Send,
    (mut filler, mut announcer): (Filler, Announcer),
    declared: Compression,
) -> Result<Reply> {
    seccomp::install_on_every_thread(seccomp::Wall::Inflater)?;
    let mut decoder = decompress::decoder(input, declared).context("inflating the layer")?;
    let mut written = 0u64;
    loop {
        let filled = filler
            .fill(|slot| read_full(&mut decoder, slot))
            .context("inflating the layer")?;
        let Some(filled) = filled else {
            return Ok(Reply::HungUp {
                hung_up_after: written,
            });
        };
        if filled.is_empty() {
            return Ok(Reply::Inflated { inflated: written });
        }
        let len = filled.len() as u64;
        if announcer.announce(filled).is_err() {
            return Ok(Reply::HungUp {
                hung_up_after: written,
            });
        }
        written += len;
    }
}

/// A buffered reader whose buffer is page-aligned (see `strata_ring::PageBuf`): the
/// compressed layer is read through one of these, in small reads, which the kernel copies into
/// a buffer still in the CPU's cache.
pub struct AlignedReader<R> {
    inner: R,
    buf: PageBuf,
    start: usize,
    end: usize,
}

impl<R: Read> AlignedReader<R> {
    pub fn new(inner: R, capacity: usize) -> Self {
        AlignedReader {
            inner,
            buf: PageBuf::new(capacity),
            start: 0,
            end: 0,
        }
    }
}

impl<R: Read> Read for AlignedReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = {
            let available = self.fill_buf()?;
            let n = available.len().min(out.len());
            out[..n].copy_from_slice(&available[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for AlignedReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.start == self.end {
            self.end = loop {
                match self.inner.read(&mut self.buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    read => break read?,
                }
            };
            self.start = 0;
        }
        Ok(&self.buf[self.start..self.end])
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }
}

/// Fills `buf` as far as the stream allows: short only where the stream ends.
fn read_full(stream: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    //! The inflater under its own wall, in a process of its own (see
    //! `seccomp::tests::in_own_process`).

    use std::sync::Barrier;
    use std::thread;

    use super::decompress::tests::gzip;
    use super::*;
    use crate::chunks::tests::ring;
    use crate::seccomp::tests::{assert_refused, in_own_process};

    /// Inflates `blob` into a ring whose reader, on a thread started first, reads at most
    /// `take` bytes; returns the reply and what the reader got.
    fn inflate_into_reader(blob: &[u8], take: usize) -> (Result<Reply>, Vec<u8>) {
        let (filler, announcer, mut reader) = ring();
        // As in `inflate`: the wall goes up on every thread, so this one must be running.
        let running = &Barrier::new(2);
        thread::scope(|scope| {
            // It owns the reader, which hangs up when the thread ends.
            let read = scope.spawn(move || {
                running.wait();
                let mut got = Vec::new();
                while got.len() < take {
                    match reader.next_slot() {
                        Ok(Some(slot)) => got.extend_from_slice(&slot),
                        _ => break,
                    }
                }
                got
            });
            running.wait();
            let reply = inflate(blob, (filler, announcer), Compression::Gzip);
            (reply, read.join().unwrap())
        })
    }

    /// Inflates a stream of many slots behind the wall, then tries what a compromised decoder
    /// would: open a file, a socket, executable memory, another process.
    fn inflater_child() {
        let stream: Vec<u8> = (0..9_000_000u32).map(|i| (i % 253) as u8).collect();
        let (reply, read) = inflate_into_reader(&gzip(&stream), usize::MAX);
        let reply = reply.unwrap();
        assert!(
            matches!(reply, Reply::Inflated { inflated } if inflated == stream.len() as u64),
            "{reply:?}"
        );
        assert!(read == stream);
        let path = c"/etc/passwd";
        // SAFETY: each call is made with arguments it rejects or ignores when refused; none
        // gets through (that is the test).
        unsafe {
            assert_refused(
                "openat",
                libc::syscall(libc::SYS_openat, libc::AT_FDCWD, path.as_ptr(), 0),
            );
            assert_refused(
                "socket",
                libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0),
            );
            let prot = (libc::PROT_READ | libc::PROT_EXEC) as libc::c_long;
            let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as libc::c_long;
            assert_refused(
                "mmap(PROT_EXEC)",
                libc::syscall(libc::SYS_mmap, 0, 4096, prot, flags, -1, 0),
            );
            assert_refused(
                "mprotect(PROT_EXEC)",
                libc::syscall(
                    libc::SYS_mprotect,
                    read.as_ptr() as usize & !4095,
                    4096,
                    prot,
                ),
            );
            assert_refused("kill", libc::syscall(libc::SYS_kill, 1, 0));
            assert_refused("ptrace", libc::syscall(libc::SYS_ptrace, 0, 0, 0, 0));
            assert_refused(
                "execve",
                libc::syscall(libc::SYS_execve, path.as_ptr(), 0, 0),
            );
            assert_refused(
                "io_uring_setup",
                libc::syscall(libc::SYS_io_uring_setup, 1, 0),
            );
            assert_refused(
                "clone",
                libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0),
            );
        }
    }

    #[test]
    fn behind_its_wall_the_inflater_inflates_and_can_do_nothing_else() {
        in_own_process(
            "inflate::tests::behind_its_wall_the_inflater_inflates_and_can_do_nothing_else",
            inflater_child,
        );
    }

    #[test]
    fn a_reader_that_hangs_up_is_told_apart_from_a_bad_stream() {
        in_own_process(
            "inflate::tests::a_reader_that_hangs_up_is_told_apart_from_a_bad_stream",
            || {
                let blob = gzip(&vec![1u8; 16 << 20]);
                let (reply, read) = inflate_into_reader(&blob, 100);
                let reply = reply.unwrap();
                assert!(
                    matches!(reply, Reply::HungUp { hung_up_after } if hung_up_after >= read.len() as u64),
                    "{reply:?}"
                );
            },
        );
    }

    #[test]
    fn a_truncated_stream_is_an_error() {
        in_own_process("inflate::tests::a_truncated_stream_is_an_error", || {
            let blob = gzip(&vec![1u8; 8 << 20]);
            let (reply, _) = inflate_into_reader(&blob[..blob.len() / 2], usize::MAX);
            let err = reply.unwrap_err();
            assert!(
                format!("{err:#}").contains("gzip stream is truncated"),
                "{err:#}"
            );
        });
    }
}
