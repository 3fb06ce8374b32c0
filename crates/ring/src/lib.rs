//! A layer's tar stream handed from one process to another without copies: a ring of slots in
//! shared memory, a pipe that announces each filled slot, and a pipe that gives slots back.
//!
//! The writer fills the slots in order and announces each one, with its length, once it is done
//! with it. The reader reads the announced slots in place and gives each back once every use of
//! it has ended; the writer refills a slot only once it is given back. The end of the
//! announcements is the end of the stream. A layer has one ring or two: the inflater writes one
//! that strata reads; strata writes the applier's, hashing each slot before it announces it.
//!
//! The reader maps the ring read-only from a read-only descriptor, and once the writer has
//! mapped it no one else can write it, so a reader can neither change a slot the writer hashed
//! nor map it writable later: what it reads is what was hashed.
//!
//! [`PageBuf`] is the buffer to copy layer bytes into: page-aligned, as the slots are.

#![deny(missing_docs)]

mod buffer;

pub use buffer::PageBuf;

use std::ffi::c_void;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Slots in a ring.
pub const SLOTS: usize = 16;
/// Bytes in a slot: large enough that the announcements cost nothing, small enough that a slot
/// stays in the CPU's cache between its writer and its readers.
pub const SLOT_SIZE: usize = 256 << 10;
const RING_SIZE: usize = SLOTS * SLOT_SIZE;

/// A new ring's shared memory: the descriptor the writer maps, and a read-only one for the
/// reader. Neither can grow or shrink it.
pub fn create() -> io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: plain syscalls; each descriptor is owned once made.
    unsafe {
        let fd = libc::memfd_create(
            c"strata-ring".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let writable = OwnedFd::from_raw_fd(fd);
        check(libc::ftruncate(fd, RING_SIZE as libc::off_t))?;
        // Its writer adds the last seals once it has mapped it (see `writer`).
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
        check(libc::fcntl(fd, libc::F_ADD_SEALS, seals))?;
        // A new open file description of the same memory, read-only: write access cannot be
        // added to it, nor to a mapping of it.
        let readable = File::open(format!("/proc/self/fd/{fd}"))?;
        Ok((writable, readable.into()))
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A ring mapped into this process.
struct Mapping {
    base: NonNull<u8>,
}

// SAFETY: the mapping is plain memory; who touches which slot when is the ring's protocol.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(fd: impl AsFd, prot: libc::c_int) -> io::Result<Self> {
        // SAFETY: a new shared mapping of the ring's size; nothing else uses the address.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RING_SIZE,
                prot,
                libc::MAP_SHARED,
                fd.as_fd().as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            base: NonNull::new(base.cast()).expect("mmap does not return null on success"),
        })
    }

    fn slot_ptr(&self, slot: usize) -> *mut u8 {
        assert!(slot < SLOTS);
        // SAFETY: within the mapping.
        unsafe { self.base.as_ptr().add(slot * SLOT_SIZE) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unused from now on.
        unsafe { libc::munmap(self.base.as_ptr().cast::<c_void>(), RING_SIZE) };
    }
}

/// The writer's two ends, which may live on two threads: the [`Filler`] fills slots once they
/// are given back, the [`Announcer`] hands each filled slot to the reader (after a look at it).
/// `memory` is the writable descriptor of [`create`]; slots are announced on `announce` and
/// come back on `given_back`.
pub fn writer(
    memory: &OwnedFd,
    announce: File,
    given_back: File,
) -> io::Result<(Filler, Announcer)> {
    let ring = Mapping::new(memory, libc::PROT_READ | libc::PROT_WRITE)?;
    // From now on no one can write the ring but through this mapping: not through a descriptor
    // reopened for writing (`/proc/self/fd`), nor a new writable mapping; and no seal comes off.
    let seals = libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a descriptor the caller holds.
    check(unsafe { libc::fcntl(memory.as_raw_fd(), libc::F_ADD_SEALS, seals) })?;
    let shared = Arc::new(Shared {
        ring,
        announced: AtomicU64::new(0),
    });
    let filler = Filler {
        shared: shared.clone(),
        given_back,
        filled: 0,
        taken_back: 0,
    };
    Ok((filler, Announcer { shared, announce }))
}

/// What both ends of a writer share.
struct Shared {
    ring: Mapping,
    /// Slots announced so far: the reader may give back no more than these.
    announced: AtomicU64,
}

/// Fills the slots, in order, each once it is given back.
pub struct Filler {
    shared: Arc<Shared>,
    given_back: File,
    /// Slots filled so far, and given back so far.
    filled: u64,
    taken_back: u64,
}

/// A slot filled and not yet announced: which, and with how many bytes.
#[derive(Debug)]
pub struct Filled {
    slot: usize,
    len: usize,
}

impl Filled {
    /// How many bytes were written in the slot.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the stream ended: nothing was written in the slot.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Filler {
    /// Waits until the next slot is given back, and fills it with `fill`, which returns how
    /// many bytes it wrote (0: the stream ended). `None` if the reader hung up. `fill`'s
    /// errors come back as they are.
    pub fn fill<E: From<io::Error>>(
        &mut self,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<Option<Filled>, E> {
        while self.filled - self.taken_back == SLOTS as u64 {
            let mut back = [0u8; SLOTS];
            let n = match self.given_back.read(&mut back) {
                Ok(0) => return Ok(None),
                Ok(n) => n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            // A slot not yet announced may still be in use here (being hashed): a reader
            // that gives it back has not read it, and is not to be believed.
            let announced = self.shared.announced.load(Ordering::Acquire);
            if self.taken_back + n > announced {
                let why = "the reader gave back a slot it was never given";
                return Err(io::Error::new(io::ErrorKind::InvalidData, why).into());
            }
            self.taken_back += n;
        }
        let slot = (self.filled % SLOTS as u64) as usize;
        // SAFETY: the slot is free: it was given back after it was announced (or never
        // filled), so neither the announcer nor the reader touches it now.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(self.shared.ring.slot_ptr(slot), SLOT_SIZE) };
        let len = fill(bytes)?.min(SLOT_SIZE);
        if len > 0 {
            self.filled += 1;
        }
        Ok(Some(Filled { slot, len }))
    }
}

/// Hands filled slots to the reader.
pub struct Announcer {
    shared: Arc<Shared>,
    announce: File,
}

impl Announcer {
    /// The filled slot's bytes, to look at before they are announced.
    pub fn bytes(&self, filled: &Filled) -> &[u8] {
        // SAFETY: filled and not announced: its filler is done with it, the reader does not
        // know of it.
        unsafe { std::slice::from_raw_parts(self.shared.ring.slot_ptr(filled.slot), filled.len) }
    }

    /// Hands the slot to the reader. An error once the reader hung up.
    pub fn announce(&mut self, filled: Filled) -> io::Result<()> {
        // Counted first: the reader may give it back as soon as the word is written.
        self.shared.announced.fetch_add(1, Ordering::Release);
        let word = ((filled.slot as u64) << 32 | filled.len as u64).to_le_bytes();
        self.announce.write_all(&word)
    }
}

/// The reader's end: the announced slots, in order, read in place.
pub struct Reader {
    announcements: File,
    next: usize,
    shared: Arc<ReaderShared>,
}

/// What the reader shares with the slots it handed out.
struct ReaderShared {
    ring: Mapping,
    give_back: Mutex<GiveBack>,
}

/// Slots are given back in order, whatever order their last uses end in.
struct GiveBack {
    pipe: File,
    done: [bool; SLOTS],
    oldest: usize,
}

impl Reader {
    /// Maps the ring `memory` (the read-only descriptor of [`create`]) read-only; slots are
    /// announced on `announcements` and given back on `give_back`.
    pub fn new(memory: &OwnedFd, announcements: File, give_back: File) -> io::Result<Self> {
        Ok(Reader {
            announcements,
            next: 0,
            shared: Arc::new(ReaderShared {
                ring: Mapping::new(memory, libc::PROT_READ)?,
                give_back: Mutex::new(GiveBack {
                    pipe: give_back,
                    done: [false; SLOTS],
                    oldest: 0,
                }),
            }),
        })
    }

    /// The next announced slot: `None` at the end of the stream.
    pub fn next_slot(&mut self) -> io::Result<Option<Slot>> {
        let mut word = [0u8; 8];
        let mut got = 0;
        while got < word.len() {
            match self.announcements.read(&mut word[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let word = u64::from_le_bytes(word);
        let (slot, len) = ((word >> 32) as usize, (word & 0xffff_ffff) as usize);
        if slot != self.next || len == 0 || len > SLOT_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "slot {slot} of {len} bytes announced where slot {} was due",
                    self.next
                ),
            ));
        }
        self.next = (slot + 1) % SLOTS;
        Ok(Some(Slot {
            shared: self.shared.clone(),
            slot,
            len,
        }))
    }
}

/// An announced slot, read in place; given back once dropped.
pub struct Slot {
    shared: Arc<ReaderShared>,
    slot: usize,
    len: usize,
}

impl std::ops::Deref for Slot {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: announced and not given back: its writer does not touch it.
        unsafe { std::slice::from_raw_parts(self.shared.ring.slot_ptr(self.slot), self.len) }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut give_back = self
            .shared
            .give_back
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        give_back.done[self.slot] = true;
        let mut count = 0;
        while give_back.done[give_back.oldest] {
            let oldest = give_back.oldest;
            give_back.done[oldest] = false;
            give_back.oldest = (oldest + 1) % SLOTS;
            count += 1;
        }
        // A writer that hung up needs nothing back.
        let _ = give_back.pipe.write_all(&[0u8; SLOTS][..count]);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::thread;

    use super::*;

    fn pipe() -> (File, File) {
        let (r, w) = io::pipe().unwrap();
        (File::from(OwnedFd::from(r)), File::from(OwnedFd::from(w)))
    }

    /// A stream of `len` bytes through a ring, filled on one thread and read on another,
    /// with slots held and given back out of order.
    #[test]
    fn a_stream_goes_through_whole_and_in_order() {
        let (writable, readable) = create().unwrap();
        let (announced, announce) = pipe();
        let (given_back, give_back) = pipe();
        let stream: Vec<u8> = (0..SLOT_SIZE * 40 + 123).map(|i| (i % 251) as u8).collect();
        let (mut filler, mut announcer) = writer(&writable, announce, given_back).unwrap();
        let mut reader = Reader::new(&readable, announced, give_back).unwrap();
        thread::scope(|scope| {
            let mut source = &stream[..];
            scope.spawn(move || {
                while let Some(filled) = filler.fill(|slot| source.read(slot)).unwrap() {
                    if filled.is_empty() {
                        break;
                    }
                    announcer.announce(filled).unwrap();
                }
            });
            let mut read = Vec::new();
            let mut held = Vec::new();
            while let Some(slot) = reader.next_slot().unwrap() {
                read.extend_from_slice(&slot);
                held.push(slot);
                if held.len() == 3 {
                    // The newest first: the oldest, given back last, frees all three.
                    held.reverse();
                    held.clear();
                }
            }
            assert!(read == stream);
        });
    }

    /// Fills the next slot to its end.
    fn fill_whole(filler: &mut Filler) -> io::Result<Option<Filled>> {
        filler.fill(|slot| Ok(slot.len()))
    }

    /// Whether the ring can be mapped writable through `fd`.
    fn maps_writable(fd: impl AsFd) -> bool {
        Mapping::new(fd, libc::PROT_READ | libc::PROT_WRITE).is_ok()
    }

    #[test]
    fn the_reader_cannot_write_the_ring() {
        let (_, readable) = create().unwrap();
        assert!(!maps_writable(&readable));
        let mapping = Mapping::new(&readable, libc::PROT_READ).unwrap();
        // SAFETY: asks for write access to the read-only mapping, which must be refused.
        let rc = unsafe {
            libc::mprotect(
                mapping.base.as_ptr().cast(),
                SLOT_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        assert_eq!(rc, -1);
        assert!(File::from(readable).write_all(b"x").is_err());
    }

    #[test]
    fn once_its_writer_has_it_no_one_else_can_write_the_ring() {
        let (writable, readable) = create().unwrap();
        let (_announced, announce) = pipe();
        let (given_back, _give_back) = pipe();
        let (mut filler, _announcer) = writer(&writable, announce, given_back).unwrap();
        // Reopened for writing, as a process that sees /proc could.
        let path = format!("/proc/self/fd/{}", readable.as_raw_fd());
        let options = std::fs::OpenOptions::new().read(true).write(true).clone();
        let mut reopened = options.open(path).unwrap();
        assert!(reopened.write_all(b"x").is_err());
        assert!(!maps_writable(&reopened));
        // The writer's own mapping still writes.
        fill_whole(&mut filler).unwrap().unwrap();
    }

    #[test]
    fn a_slot_given_back_before_it_was_announced_is_refused() {
        let (writable, _) = create().unwrap();
        let (_announced, announce) = pipe();
        let (given_back, mut give_back) = pipe();
        let (mut filler, _announcer) = writer(&writable, announce, given_back).unwrap();
        for _ in 0..SLOTS {
            fill_whole(&mut filler).unwrap().unwrap();
        }
        give_back.write_all(&[0]).unwrap();
        let err = fill_whole(&mut filler).unwrap_err();
        assert!(err.to_string().contains("never given"), "{err}");
    }

    #[test]
    fn a_writer_whose_reader_hung_up_is_told() {
        let (writable, _) = create().unwrap();
        let (announced, announce) = pipe();
        let (given_back, give_back) = pipe();
        let (mut filler, mut announcer) = writer(&writable, announce, given_back).unwrap();
        drop((announced, give_back));
        let filled = fill_whole(&mut filler).unwrap().unwrap();
        assert!(announcer.announce(filled).is_err());
        for _ in 1..SLOTS {
            fill_whole(&mut filler).unwrap().unwrap();
        }
        assert!(fill_whole(&mut filler).unwrap().is_none());
    }
}

#[cfg(test)]
mod stress {
    use std::io::Read;
    use std::sync::mpsc::sync_channel;
    use std::thread;

    use super::*;

    #[test]
    fn filler_announcer_and_reader_on_three_threads() {
        for _ in 0..20 {
            let (writable, readable) = create().unwrap();
            let (announced, announce) = io::pipe().unwrap();
            let (given_back, give_back) = io::pipe().unwrap();
            let (mut filler, mut announcer) = writer(
                &writable,
                File::from(OwnedFd::from(announce)),
                File::from(OwnedFd::from(given_back)),
            )
            .unwrap();
            let mut reader = Reader::new(
                &readable,
                File::from(OwnedFd::from(announced)),
                File::from(OwnedFd::from(give_back)),
            )
            .unwrap();
            let stream = vec![3u8; SLOT_SIZE * 100];
            let (to_announcer, filled) = sync_channel::<Filled>(SLOTS);
            thread::scope(|scope| {
                scope.spawn(move || {
                    for slot in filled {
                        if announcer.announce(slot).is_err() {
                            break;
                        }
                    }
                });
                scope.spawn(move || {
                    let mut total = 0;
                    while let Some(slot) = reader.next_slot().unwrap() {
                        total += slot.len();
                    }
                    assert_eq!(total, SLOT_SIZE * 100);
                });
                let mut source = &stream[..];
                loop {
                    let filled = filler.fill(|slot| source.read(slot)).unwrap().unwrap();
                    if filled.is_empty() {
                        break;
                    }
                    to_announcer.send(filled).unwrap();
                }
                drop(to_announcer);
            });
        }
    }
}
