//! The parent's hand in a layer's tar stream: it alone writes the applier's ring, from the blob
//! itself when the blob is the stream, or else from the inflater's ring; and it takes in every
//! slot after writing it and before announcing it. What it takes in is what the applier reads:
//! the ring is the parent's to write, and the applier maps it read-only.
//!
//! From the inflater's ring, each slot is copied and the copy hashed: the inflater may still
//! write its own slot, so hashing that one could name bytes other than the applier's. The diff
//! ID is thus computed by no process that parses layer data.

use anyhow::{Context, Result};
use strata_ring::{Announcer, Filler, Reader};

use crate::digest::{Hashed, Hasher};

/// How much of the stream the applier took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Passed {
    /// All of it, to its end.
    Whole,
    /// This many bytes; then it hung up.
    HungUp(u64),
}

/// Where the bytes come from, and what takes them in on their way.
pub trait Stream {
    /// Writes the next bytes into `slot`; 0 at the end of the stream.
    fn read_into(&mut self, slot: &mut [u8]) -> Result<usize>;

    /// Takes in `bytes`, as they lie in the applier's ring, before the applier may read them.
    fn take_in(&mut self, bytes: &[u8]) -> Result<()>;
}

/// Passes `stream` into the applier's ring, which `filler` and `announcer` write.
pub fn pass(
    stream: &mut impl Stream,
    (mut filler, mut announcer): (Filler, Announcer),
) -> Result<Passed> {
    let mut passed = 0u64;
    loop {
        let Some(filled) = filler.fill(|slot| stream.read_into(slot))? else {
            return Ok(Passed::HungUp(passed));
        };
        if filled.is_empty() {
            return Ok(Passed::Whole);
        }
        stream.take_in(announcer.bytes(&filled))?;
        let len = filled.len() as u64;
        if announcer.announce(filled).is_err() {
            return Ok(Passed::HungUp(passed));
        }
        passed += len;
    }
}

/// The inflater's ring, copied into the applier's and hashed there.
pub struct Relay {
    inflated: Reader,
    hasher: Hasher,
}

/// What a relay passed on, and the hash of it (all of the stream when it went whole).
pub struct Relayed {
    /// How much the applier took.
    pub passed: Passed,
    /// What it took.
    pub hashed: Hashed,
}

impl Relay {
    /// Relays the stream the inflater announces in `inflated` into the applier's ring.
    pub fn run(inflated: Reader, ring: (Filler, Announcer)) -> Result<Relayed> {
        let mut relay = Relay {
            inflated,
            hasher: Hasher::new(),
        };
        let passed = pass(&mut relay, ring).context("relaying the layer to the helper")?;
        Ok(Relayed {
            passed,
            hashed: relay.hasher.finish(),
        })
    }
}

impl Stream for Relay {
    fn read_into(&mut self, slot: &mut [u8]) -> Result<usize> {
        let next = self
            .inflated
            .next_slot()
            .context("reading the inflater's ring")?;
        Ok(next.map_or(0, |inflated| {
            // Slots are the same size in both rings.
            slot[..inflated.len()].copy_from_slice(&inflated);
            inflated.len()
        }))
    }

    fn take_in(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        Ok(())
    }
}
