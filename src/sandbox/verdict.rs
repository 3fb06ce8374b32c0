//! What the parent makes of the two accounts of a layer: where its tar stream came from (an
//! inflater's diff ID and length, or the blob itself), and the applier's. Which failure is told
//! when both fail, and what must agree when neither does. No process here can vouch for the
//! other: the diff ID never comes from the applier, and the applier must have read the stream
//! the diff ID names, to its last byte.

use anyhow::{Result, anyhow, bail};

use crate::digest::Digest;
use crate::protocol::{Applied, Inflated, NeedsLowers, Reply};

/// A layer applied, as the parent checked it.
#[derive(Debug)]
pub struct AppliedLayer {
    /// The digest of the stream the applier read: its diff ID.
    pub diff_id: Digest,
    /// The applier's account.
    pub applied: Applied,
}

/// Where the applier's stream came from.
pub enum Source {
    /// The blob itself, checked against its descriptor on the way: its digest names the stream.
    Blob {
        /// The blob's digest.
        digest: Digest,
        /// Its size.
        size: u64,
        /// The applier stopped taking it after this many bytes.
        hung_up_after: Option<u64>,
    },
    /// An inflater, and its reply.
    Inflater(Result<Reply>),
}

/// The stream's account, or why there is none.
enum Stream {
    Whole(Inflated),
    /// The applier stopped reading after this many bytes.
    HungUp(u64),
    Failed(anyhow::Error),
}

/// The one outcome of a layer whose stream came from `source` and whose applier replied
/// `applier` (its reply, or why it has none). Failures are told in the order they happened in
/// the stream: an applier whose stream ended early (it applied what it got, or its archive was
/// cut short) tells less than the inflater's failure, which came first; an applier that
/// failed of itself, on bytes the inflater had already passed on, came first.
pub fn verdict(source: Source, applier: Result<Reply>) -> Result<AppliedLayer> {
    let stream = match source {
        Source::Blob {
            hung_up_after: Some(after),
            ..
        } => Stream::HungUp(after),
        Source::Blob { digest, size, .. } => Stream::Whole(Inflated {
            diff_id: digest,
            bytes: size,
        }),
        Source::Inflater(Ok(Reply::Inflated(inflated))) => Stream::Whole(inflated),
        Source::Inflater(Ok(Reply::HungUp { hung_up_after })) => Stream::HungUp(hung_up_after),
        Source::Inflater(Ok(other)) => {
            Stream::Failed(anyhow!("the inflater gave an unexpected reply: {other:?}"))
        }
        Source::Inflater(Err(err)) => Stream::Failed(err),
    };
    match (stream, applier) {
        (Stream::Failed(err), Ok(Reply::Applied(_) | Reply::CutShort { .. })) => Err(err),
        (_, Err(err)) => Err(err),
        (_, Ok(Reply::CutShort { cut_short })) => Err(anyhow!(cut_short)),
        (_, Ok(Reply::NeedsLowers { needs_lowers })) => Err(NeedsLowers(needs_lowers).into()),
        (Stream::HungUp(after), Ok(Reply::Applied(applied))) => bail!(
            "the helper stopped reading the layer after {after} bytes, yet reports {} read",
            applied.bytes
        ),
        (Stream::Whole(stream), Ok(Reply::Applied(applied))) => {
            if applied.bytes != stream.bytes {
                bail!(
                    "the helper read {} bytes of the layer, which has {}",
                    applied.bytes,
                    stream.bytes
                );
            }
            Ok(AppliedLayer {
                diff_id: stream.diff_id,
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
        }))
    }

    fn inflated(bytes: u64) -> Source {
        Source::Inflater(Ok(Reply::Inflated(Inflated {
            diff_id: Digest::of_bytes(b"stream"),
            bytes,
        })))
    }

    fn blob(size: u64) -> Source {
        Source::Blob {
            digest: Digest::of_bytes(b"blob"),
            size,
            hung_up_after: None,
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
        Source::Inflater(Ok(Reply::HungUp {
            hung_up_after: after,
        }))
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
                Source::Inflater(failed("gzip stream is corrupt")),
                cut_short(),
                Err("gzip stream is corrupt"),
            ),
            (
                "and an applier that took the end for the archive's",
                Source::Inflater(failed("gzip stream is truncated")),
                applied(512),
                Err("gzip stream is truncated"),
            ),
            (
                "an applier failing of itself failed first",
                Source::Inflater(failed("gzip stream is corrupt")),
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
                    digest: Digest::of_bytes(b"blob"),
                    size: 4096,
                    hung_up_after: Some(512),
                },
                applied(4096),
                Err("stopped reading the layer after 512 bytes"),
            ),
            (
                "an inflater that died without a reply",
                Source::Inflater(failed("strata-helper was killed by signal 31")),
                applied(0),
                Err("killed by signal 31"),
            ),
            (
                "an inflater that replied as an applier",
                Source::Inflater(applied(10)),
                applied(10),
                Err("the inflater gave an unexpected reply"),
            ),
            (
                "an applier that replied as an inflater",
                inflated(10),
                Ok(Reply::Inflated(Inflated {
                    diff_id: Digest::of_bytes(b"forged"),
                    bytes: 10,
                })),
                Err("unexpected reply to apply"),
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
        let err = verdict(Source::Inflater(failed("zstd stream is corrupt")), needs()).unwrap_err();
        assert!(err.is::<NeedsLowers>(), "{err:#}");
    }
}
