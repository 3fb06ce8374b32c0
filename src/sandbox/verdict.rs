//! What the parent makes of the accounts of a layer: how it passed the tar stream on (from the
//! blob itself, or relayed from an inflater, whose own reply comes with it), and the applier's.
//! Which failure is told when several fail, and what must agree when none does. No helper
//! process vouches for the stream: the parent hashed what it put in the applier's ring (or the
//! blob is the stream, and its digest checked), and the applier must have read it to its last
//! byte.

use anyhow::{Result, anyhow, bail};

use super::pass::{Passed, Relayed};
use crate::digest::{Digest, Hashed};
use crate::protocol::{Applied, NeedsLowers, Reply};

/// A layer applied, as the parent checked it.
#[derive(Debug)]
pub struct AppliedLayer {
    /// The blob's digest and size, as they checked out.
    pub blob: Hashed,
    /// The digest of the stream the applier read: its diff ID.
    pub diff_id: Digest,
    /// The applier's account.
    pub applied: Applied,
}

/// How the applier's stream was passed on.
pub enum Source {
    /// The blob itself, checked on the way: its digest names the stream.
    Blob {
        /// The blob's digest and size.
        hashed: Hashed,
        /// How much of it the applier took.
        passed: Passed,
    },
    /// Relayed from an inflater's ring (or why the relay failed), with the inflater's reply.
    Inflater {
        /// The blob sent to the inflater, checked on the way.
        blob: Hashed,
        /// What the parent relayed.
        relayed: Result<Relayed>,
        /// The inflater's reply.
        reply: Result<Reply>,
    },
}

/// The stream's account, or why there is none.
enum Stream {
    /// The stream the applier was given whole, and the blob it came from.
    Whole {
        stream: Hashed,
        blob: Hashed,
    },
    /// The applier stopped reading after this many bytes.
    HungUp(u64),
    Failed(anyhow::Error),
}

impl Stream {
    fn of(source: Source) -> Stream {
        let (blob, relayed, reply) = match source {
            Source::Blob {
                passed: Passed::HungUp(after),
                ..
            } => return Stream::HungUp(after),
            Source::Blob {
                hashed,
                passed: Passed::Whole,
            } => {
                return Stream::Whole {
                    stream: hashed.clone(),
                    blob: hashed,
                };
            }
            Source::Inflater {
                blob,
                relayed,
                reply,
            } => (blob, relayed, reply),
        };
        // The relay failing (on what the inflater announced) or hung up on came first; the
        // inflater's reply then tells nothing more.
        let hashed = match relayed {
            Err(err) => return Stream::Failed(err),
            Ok(Relayed {
                passed: Passed::HungUp(after),
                ..
            }) => return Stream::HungUp(after),
            Ok(Relayed { hashed, .. }) => hashed,
        };
        match reply {
            Ok(Reply::Inflated { inflated }) if inflated == hashed.bytes => Stream::Whole {
                stream: hashed,
                blob,
            },
            Ok(Reply::Inflated { inflated }) => Stream::Failed(anyhow!(
                "the inflater wrote {inflated} bytes of the layer, yet {} came through its ring",
                hashed.bytes
            )),
            Ok(other) => {
                Stream::Failed(anyhow!("the inflater gave an unexpected reply: {other:?}"))
            }
            Err(err) => Stream::Failed(err),
        }
    }
}

/// The one outcome of a layer whose stream was passed on from `source` and whose applier
/// replied `applier` (its reply, or why it has none). Failures are told in the order they
/// happened in the stream: an applier whose stream ended early (it applied what it got, or its
/// archive was cut short) tells less than the inflater's failure, which came first; an applier
/// that failed of itself, on bytes the inflater had already passed on, came first.
pub fn verdict(source: Source, applier: Result<Reply>) -> Result<AppliedLayer> {
    match (Stream::of(source), applier) {
        (Stream::Failed(err), Ok(Reply::Applied(_) | Reply::CutShort { .. })) => Err(err),
        (_, Err(err)) => Err(err),
        (_, Ok(Reply::CutShort { cut_short })) => Err(anyhow!(cut_short)),
        (_, Ok(Reply::NeedsLowers { needs_lowers })) => Err(NeedsLowers(needs_lowers).into()),
        (Stream::HungUp(after), Ok(Reply::Applied(applied))) => bail!(
            "the helper stopped reading the layer after {after} bytes, yet reports {} read",
            applied.bytes
        ),
        (Stream::Whole { stream, blob }, Ok(Reply::Applied(applied))) => {
            if applied.bytes != stream.bytes {
                bail!(
                    "the helper read {} bytes of the layer, which has {}",
                    applied.bytes,
                    stream.bytes
                );
            }
            Ok(AppliedLayer {
                blob,
                diff_id: stream.digest,
                applied,
            })
        }
        (_, Ok(other)) => bail!("the helper gave an unexpected reply to apply: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(bytes: u64) -> Result<Reply> {
        Ok(Reply::Applied(Applied {
            entries: 3,
            bytes,
            skipped: Vec::new(),
            skipped_omitted: 0,
            root_mode: None,
        }))
    }

    /// A relay that took `bytes` and passed on `passed`, and the inflater's `reply`.
    fn relayed(passed: Passed, bytes: u64, reply: Result<Reply>) -> Source {
        let hashed = Hashed {
            digest: Digest::of_bytes(b"stream"),
            bytes,
        };
        Source::Inflater {
            blob: Hashed {
                digest: Digest::of_bytes(b"blob"),
                bytes: 100,
            },
            relayed: Ok(Relayed { passed, hashed }),
            reply,
        }
    }

    fn inflated(bytes: u64) -> Source {
        relayed(
            Passed::Whole,
            bytes,
            Ok(Reply::Inflated { inflated: bytes }),
        )
    }

    /// An inflater that failed after writing 512 bytes.
    fn inflater_failed(why: &str) -> Source {
        relayed(Passed::Whole, 512, failed(why))
    }

    fn blob(size: u64) -> Source {
        Source::Blob {
            hashed: Hashed {
                digest: Digest::of_bytes(b"blob"),
                bytes: size,
            },
            passed: Passed::Whole,
        }
    }

    fn failed(why: &str) -> Result<Reply> {
        Err(anyhow!("{why}"))
    }

    fn cut_short() -> Result<Reply> {
        Ok(Reply::CutShort {
            cut_short:
                "the layer ends early: entry \"f\": the tar stream ends inside an entry's data"
                    .into(),
        })
    }

    fn hung_up(after: u64) -> Source {
        let reply = Ok(Reply::HungUp {
            hung_up_after: after,
        });
        relayed(Passed::HungUp(after), after, reply)
    }

    #[test]
    fn which_account_wins() {
        let stream: Result<Digest, &str> = Ok(Digest::of_bytes(b"stream"));
        let blob_digest = Ok(Digest::of_bytes(b"blob"));
        let rows = [
            ("both whole", inflated(1024), applied(1024), stream),
            (
                "the blob is the stream",
                blob(2048),
                applied(2048),
                blob_digest,
            ),
            (
                "the applier read less",
                inflated(1024),
                applied(512),
                Err("read 512 bytes of the layer, which has 1024"),
            ),
            (
                "or more",
                blob(1024),
                applied(2048),
                Err("read 2048 bytes of the layer, which has 1024"),
            ),
            (
                "a corrupt stream explains the archive cut short",
                inflater_failed("gzip stream is corrupt"),
                cut_short(),
                Err("gzip stream is corrupt"),
            ),
            (
                "and an applier that took the end for the archive's",
                inflater_failed("gzip stream is truncated"),
                applied(512),
                Err("gzip stream is truncated"),
            ),
            (
                "an applier failing of itself failed first",
                inflater_failed("gzip stream is corrupt"),
                failed("entry \"f\": invalid tar header"),
                Err("invalid tar header"),
            ),
            (
                "the archive itself cut short",
                inflated(1024),
                cut_short(),
                Err("the tar stream ends inside"),
            ),
            (
                "an applier that failed hung up",
                hung_up(4096),
                failed("entry \"f\": No space left on device"),
                Err("No space left on device"),
            ),
            (
                "an applier that hung up cannot have applied the layer",
                hung_up(4096),
                applied(4096),
                Err("stopped reading the layer after 4096 bytes"),
            ),
            (
                "nor one that hung up on the blob",
                Source::Blob {
                    hashed: Hashed {
                        digest: Digest::of_bytes(b"blob"),
                        bytes: 4096,
                    },
                    passed: Passed::HungUp(512),
                },
                applied(4096),
                Err("stopped reading the layer after 512 bytes"),
            ),
            (
                "an inflater that died without a reply",
                inflater_failed("strata-helper was killed by signal 31"),
                applied(0),
                Err("killed by signal 31"),
            ),
            (
                "an inflater that replied as an applier",
                relayed(Passed::Whole, 10, applied(10)),
                applied(10),
                Err("the inflater gave an unexpected reply"),
            ),
            (
                "an applier that replied as an inflater",
                inflated(10),
                Ok(Reply::Inflated { inflated: 10 }),
                Err("unexpected reply to apply"),
            ),
            (
                "an inflater whose count is not what came through",
                relayed(Passed::Whole, 1024, Ok(Reply::Inflated { inflated: 2048 })),
                applied(1024),
                Err("the inflater wrote 2048 bytes of the layer, yet 1024 came through"),
            ),
            (
                "an inflater that says it was hung up on, when its ring went whole",
                relayed(
                    Passed::Whole,
                    1024,
                    Ok(Reply::HungUp { hung_up_after: 512 }),
                ),
                applied(1024),
                Err("the inflater gave an unexpected reply"),
            ),
            (
                "a relay that failed on what the inflater announced",
                Source::Inflater {
                    blob: Hashed {
                        digest: Digest::of_bytes(b"blob"),
                        bytes: 100,
                    },
                    relayed: Err(anyhow!("slot 3 of 10 bytes announced where slot 2 was due")),
                    reply: Ok(Reply::HungUp { hung_up_after: 512 }),
                },
                cut_short(),
                Err("announced where slot 2 was due"),
            ),
            (
                "an applier that failed before the inflater did",
                relayed(Passed::HungUp(4096), 4096, failed("zstd stream is corrupt")),
                failed("entry \"f\": invalid tar header"),
                Err("invalid tar header"),
            ),
        ];
        for (row, source, applier, expected) in rows {
            let outcome = verdict(source, applier);
            match (outcome, expected) {
                (Ok(layer), Ok(diff_id)) => assert_eq!(layer.diff_id, diff_id, "{row}"),
                (Err(err), Err(words)) => {
                    let text = format!("{err:#}");
                    assert!(text.contains(words), "{row}: {text}");
                }
                (outcome, expected) => panic!("{row}: {outcome:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn a_layer_that_needs_its_lowers_says_so_unless_the_stream_failed_after_it() {
        let needs = || {
            Ok(Reply::NeedsLowers {
                needs_lowers: "entry \"a/b\": its directory is in a lower layer".into(),
            })
        };
        let err = verdict(inflated(10), needs()).unwrap_err();
        assert!(err.is::<NeedsLowers>(), "{err:#}");
        let err = verdict(inflater_failed("zstd stream is corrupt"), needs()).unwrap_err();
        assert!(err.is::<NeedsLowers>(), "{err:#}");
    }
}
