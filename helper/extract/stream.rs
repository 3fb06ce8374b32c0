//! The decompressed layer, shared without copying: one thread inflates it into chunks and hands
//! each chunk to every reader of the layer (the hasher, and a tar parser per tree it is applied
//! to), each of which runs on its own thread.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use super::decompress;
use strata_protocol::{Digest, Hasher};

/// Decompressed bytes travel in chunks of this size, at most `CHUNKS_IN_FLIGHT` ahead of the
/// slowest reader: memory stays bounded whatever the layer's size.
const CHUNK: usize = 256 * 1024;
const CHUNKS_IN_FLIGHT: usize = 16;

type Chunk = Arc<Vec<u8>>;
/// A decoder error travels in place of the next chunk, to every reader.
type Item = Result<Chunk, Arc<io::Error>>;

/// One reader's end of the broadcast.
pub fn channel() -> (SyncSender<Item>, Receiver<Item>) {
    sync_channel(CHUNKS_IN_FLIGHT)
}

/// Inflates `decoder` and passes every chunk to each of `readers`. A reader that hangs up has
/// all it wants (a tar parser past the end block) and is left out from then on; once `abort`
/// is set (a reader failed), the rest of the stream is not worth inflating. Returns the
/// decoder's error, if any.
pub fn inflate(
    mut decoder: impl Read,
    mut readers: Vec<SyncSender<Item>>,
    abort: &AtomicBool,
) -> io::Result<()> {
    // Chunks come back for reuse once every reader has dropped them; zeroing fresh ones would
    // cost as much as a copy.
    let mut sent: VecDeque<Chunk> = VecDeque::new();
    while !readers.is_empty() && !abort.load(Ordering::Relaxed) {
        let mut chunk = match sent.front_mut().and_then(Arc::get_mut) {
            Some(_) => sent.pop_front().expect("front exists"),
            None => Arc::new(vec![0u8; CHUNK]),
        };
        let buf = Arc::get_mut(&mut chunk).expect("no reader holds this chunk");
        buf.resize(CHUNK, 0);
        let item = match read_full(&mut decoder, buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                buf.truncate(n);
                Ok(chunk.clone())
            }
            Err(err) => Err(Arc::new(err)),
        };
        readers.retain(|reader| reader.send(item.clone()).is_ok());
        match item {
            Ok(_) => sent.push_back(chunk),
            Err(err) => return Err(decompress::duplicate(&err)),
        }
        if sent.len() > CHUNKS_IN_FLIGHT * 2 {
            sent.pop_front();
        }
    }
    Ok(())
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

/// The hasher's loop: the digest and length of everything that arrives (the diff ID, when
/// the stream was read to its end).
pub fn hash(chunks: Receiver<Item>) -> (Digest, u64) {
    let mut hasher = Hasher::new();
    while let Ok(Ok(chunk)) = chunks.recv() {
        hasher.update(&chunk);
    }
    hasher.finish()
}

/// A tar parser's view of the stream.
pub struct ChunkReader {
    chunks: Receiver<Item>,
    chunk: Chunk,
    offset: usize,
}

impl ChunkReader {
    pub fn new(chunks: Receiver<Item>) -> Self {
        ChunkReader {
            chunks,
            chunk: Arc::new(Vec::new()),
            offset: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.offset == self.chunk.len() {
            match self.chunks.recv() {
                Ok(Ok(chunk)) => (self.chunk, self.offset) = (chunk, 0),
                Ok(Err(err)) => return Err(decompress::duplicate(&err)),
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
