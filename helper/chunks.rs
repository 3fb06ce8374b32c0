//! The tar stream shared without copies: one thread reads the ring's slots as they are
//! announced and hands each to every reader of the stream (a tar parser per tree), each on a
//! thread of its own. A slot goes back to its writer once every reader is done with it, so
//! memory stays bounded whatever the stream's length.

use std::io::{self, BufRead, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use strata_ring::{Reader, SLOTS, Slot};

/// A read error travels in place of the next slot, to every reader.
type Item = Result<Arc<Slot>, Arc<io::Error>>;

/// One reader's end of the broadcast: it can hold every slot, so a slow reader is the one
/// that holds up the writer.
pub fn channel() -> (SyncSender<Item>, Receiver<Item>) {
    sync_channel(SLOTS)
}

/// Reads the stream to its end and passes every slot to each of `readers`; returns how many
/// bytes it read. A reader that hangs up has all it wants (a tar parser past the end block)
/// and is left out from then on, while the rest is still read and counted. Once `stop` is set
/// (a reader failed), the rest of the stream is not worth reading.
pub fn broadcast(
    mut stream: Reader,
    mut readers: Vec<SyncSender<Item>>,
    stop: &AtomicBool,
) -> io::Result<u64> {
    let mut total = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let item = match stream.next_slot() {
            Ok(None) => return Ok(total),
            Ok(Some(slot)) => {
                total += slot.len() as u64;
                Ok(Arc::new(slot))
            }
            Err(err) => Err(Arc::new(err)),
        };
        readers.retain(|reader| reader.send(item.clone()).is_ok());
        if let Err(err) = item {
            return Err(duplicate(&err));
        }
    }
    Ok(total)
}

/// An equal error for another reader of the same stream (io::Error is not Clone).
fn duplicate(err: &io::Error) -> io::Error {
    io::Error::new(err.kind(), err.to_string())
}

/// A reader's view of the stream, for a tar parser.
pub struct ChunkReader {
    slots: Receiver<Item>,
    slot: Option<Arc<Slot>>,
    offset: usize,
}

impl ChunkReader {
    pub fn new(slots: Receiver<Item>) -> Self {
        ChunkReader {
            slots,
            slot: None,
            offset: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = buf.len().min(available.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// The slot being read, in place: a file's contents are written straight out of the ring.
impl BufRead for ChunkReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self
            .slot
            .as_ref()
            .is_none_or(|slot| self.offset == slot.len())
        {
            // Given back before the next one is awaited.
            self.slot = None;
            match self.slots.recv() {
                Ok(Ok(slot)) => (self.slot, self.offset) = (Some(slot), 0),
                Ok(Err(err)) => return Err(duplicate(&err)),
                // The stream is read whole: its end.
                Err(_) => return Ok(&[]),
            }
        }
        Ok(self.slot.as_ref().map_or(&[], |slot| &slot[self.offset..]))
    }

    fn consume(&mut self, amount: usize) {
        self.offset += amount;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::fs::File;
    use std::os::fd::OwnedFd;
    use std::thread;

    use strata_ring::SLOT_SIZE;

    use super::*;

    /// A ring and its pipes: the writer's two ends and the reader.
    pub(crate) type Ring = (strata_ring::Filler, strata_ring::Announcer, Reader);

    /// A new [`Ring`] (made before a seccomp wall goes up: making one takes calls it refuses).
    pub(crate) fn ring() -> Ring {
        let (writable, readable) = strata_ring::create().unwrap();
        let (announced, announce) = io::pipe().unwrap();
        let (given_back, give_back) = io::pipe().unwrap();
        let file = |end: OwnedFd| File::from(end);
        let (filler, announcer) =
            strata_ring::writer(&writable, file(announce.into()), file(given_back.into())).unwrap();
        let reader =
            Reader::new(&readable, file(announced.into()), file(give_back.into())).unwrap();
        (filler, announcer, reader)
    }

    /// Writes `stream` into `ring` on a thread of its own (which `scope` joins); returns the
    /// reader's end.
    pub(crate) fn streamed<'s>(
        scope: &'s thread::Scope<'s, '_>,
        (mut filler, mut announcer, reader): Ring,
        stream: &'s [u8],
    ) -> Reader {
        scope.spawn(move || {
            let mut source = stream;
            while let Ok(Some(filled)) = filler.fill(|slot| source.read(slot)) {
                if filled.is_empty() || announcer.announce(filled).is_err() {
                    break;
                }
            }
        });
        reader
    }

    #[test]
    fn every_reader_gets_the_whole_stream_and_hung_up_ones_do_not_stop_the_count() {
        let stream: Vec<u8> = (0..SLOT_SIZE * 40 + 17).map(|i| (i % 251) as u8).collect();
        let stop = AtomicBool::new(false);
        let (to_quitter, quitter) = channel();
        let (to_parser, parser) = channel();
        thread::scope(|scope| {
            let reader = streamed(scope, ring(), &stream);
            let quit = scope.spawn(move || {
                let mut first = [0u8; 10];
                ChunkReader::new(quitter).read_exact(&mut first).unwrap();
                first
            });
            let parsed = scope.spawn(move || {
                let mut all = Vec::new();
                ChunkReader::new(parser).read_to_end(&mut all).unwrap();
                all
            });
            let total = broadcast(reader, vec![to_quitter, to_parser], &stop);
            assert_eq!(total.unwrap(), stream.len() as u64);
            assert_eq!(quit.join().unwrap(), stream[..10]);
            assert!(parsed.join().unwrap() == stream);
        });
    }
}
