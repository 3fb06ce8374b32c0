//! How far a layer's blob has been read: what a progress display shows while it streams.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of a blob read so far, shared between the thread that reads the blob and whoever
/// shows progress. Cloning it shares it.
#[derive(Clone, Debug, Default)]
pub struct Meter(Arc<AtomicU64>);

impl Meter {
    /// Bytes read so far.
    pub fn read(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// The blob has been read up to `offset` (bytes read again count once).
    pub(crate) fn reached(&self, offset: u64) {
        self.0.fetch_max(offset, Ordering::Relaxed);
    }
}
