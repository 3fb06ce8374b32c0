//! The inflater: a process of its own that turns the compressed layer on stdin into the tar
//! stream, in the ring the applier reads (`strata-ring`), and hashes that stream on the way
//! (the diff ID, which names the layer's snapshot): each slot is hashed before it is announced
//! to the applier, which maps the ring read-only. It runs as the user, in no namespace, with
//! nothing open but its pipes and the ring, behind a seccomp wall that lets it read, write,
//! allocate and wait (`seccomp::Wall::Inflater`).
//!
//! Keeping it apart is what lets the parent trust the diff ID over the applier, which parses
//! tar and writes files: it never computes it and cannot change what was hashed. The decoder
//! is still trusted with it: an exploit of the decoder, on this process's thread, could claim
//! any diff ID (its wall leaves it nothing else to do).

mod decompress;

use std::io::{self, BufRead, Read};
use std::sync::Barrier;
use std::sync::mpsc::sync_channel;
use std::thread;

use anyhow::{Context, Result, anyhow};
use strata_protocol::{Compression, Hasher, Inflated, Reply};
use strata_ring::{Announcer, Filled, Filler, PageBuf, SLOTS};

use crate::seccomp;

/// Inflates `input`, declared `declared`, into the ring `filler` and `announcer` write, and
/// accounts for it: the whole stream ([`Reply::Inflated`]), or how much of it the reader took
/// before hanging up ([`Reply::HungUp`]). The decoder runs on this thread and fills the slots;
/// the hasher hashes each slot and only then announces it. Both are behind the wall before the
/// first byte is decoded.
pub fn inflate(
    input: impl BufRead + Send,
    (mut filler, mut announcer): (Filler, Announcer),
    declared: Compression,
) -> Result<Reply> {
    let (to_hasher, filled) = sync_channel::<Filled>(SLOTS);
    // The wall goes up once the hasher is running: starting a thread makes calls it refuses.
    let running = Barrier::new(2);
    thread::scope(|scope| {
        let hasher = scope.spawn(|| {
            running.wait();
            let mut hasher = Hasher::new();
            for slot in filled {
                hasher.update(announcer.bytes(&slot));
                if announcer.announce(slot).is_err() {
                    return (hasher, Stream::HungUp);
                }
            }
            (hasher, Stream::Whole)
        });
        running.wait();
        // On failure, the sender dropped on the way out ends the hasher.
        seccomp::install_on_every_thread(seccomp::Wall::Inflater)?;
        let decoded = (|| -> io::Result<Stream> {
            let mut decoder = decompress::decoder(input, declared)?;
            loop {
                match filler.fill(|slot| read_full(&mut decoder, slot))? {
                    Some(slot) if slot.is_empty() => return Ok(Stream::Whole),
                    Some(slot) => {
                        if to_hasher.send(slot).is_err() {
                            return Ok(Stream::HungUp);
                        }
                    }
                    None => return Ok(Stream::HungUp),
                }
            }
        })();
        drop(to_hasher);
        let (hasher, announced) = hasher
            .join()
            .map_err(|_| anyhow!("the hashing thread panicked"))?;
        let decoded = decoded.context("inflating the layer")?;
        let (diff_id, bytes) = hasher.finish();
        Ok(match (decoded, announced) {
            (Stream::Whole, Stream::Whole) => Reply::Inflated(Inflated { diff_id, bytes }),
            _ => Reply::HungUp {
                hung_up_after: bytes,
            },
        })
    })
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

/// How far the stream got.
enum Stream {
    Whole,
    /// The reader hung up first.
    HungUp,
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

    use strata_protocol::Digest;

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
        let expected = Inflated {
            diff_id: Digest::of_bytes(&stream),
            bytes: stream.len() as u64,
        };
        let reply = reply.unwrap();
        assert!(
            matches!(reply, Reply::Inflated(ref i) if *i == expected),
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
