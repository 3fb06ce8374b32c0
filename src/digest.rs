//! OCI chain IDs, and checking a blob against its descriptor (the digest type itself is the
//! protocol's: the helper reports diff IDs in it).

pub use strata_protocol::{Digest, Hasher, InvalidDigest};

/// Chain IDs per image-spec config.md: `ChainID(L0) = DiffID(L0)`,
/// `ChainID(L0..n) = sha256(ChainID(L0..n-1) + " " + DiffID(Ln))`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut chain: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => Digest::of_bytes(format!("{parent} {diff_id}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

/// Checks a blob against its descriptor as its bytes go by: one byte too many fails at once,
/// and at the end both the size and the digest must match.
pub struct Verifier {
    hasher: Hasher,
    digest: Digest,
    size: u64,
}

/// A blob that is not what its descriptor says.
#[derive(Debug, thiserror::Error)]
#[error("blob {digest} {what}")]
pub struct BlobMismatch {
    digest: Digest,
    what: String,
}

impl Verifier {
    /// Checks for a blob of `size` bytes with `digest`.
    pub fn new(digest: &Digest, size: u64) -> Self {
        Verifier {
            hasher: Hasher::new(),
            digest: digest.clone(),
            size,
        }
    }

    /// The next bytes of the blob; an error as soon as there are too many.
    pub fn update(&mut self, bytes: &[u8]) -> Result<(), BlobMismatch> {
        self.hasher.update(bytes);
        if self.hasher.bytes() > self.size {
            return Err(self.mismatch(format!(
                "is larger than the {} bytes its descriptor declares",
                self.size
            )));
        }
        Ok(())
    }

    /// How many more bytes the descriptor allows, plus one to notice a blob that is too long.
    pub fn wanted(&self) -> u64 {
        (self.size - self.hasher.bytes()).saturating_add(1)
    }

    /// At the end of the blob.
    pub fn finish(self) -> Result<(), BlobMismatch> {
        let seen = self.hasher.bytes();
        if seen != self.size {
            return Err(self.mismatch(format!(
                "has {seen} bytes but its descriptor declares {}",
                self.size
            )));
        }
        let (actual, _) = self.hasher.clone().finish();
        if actual != self.digest {
            return Err(self.mismatch(format!("does not match its content (digest {actual})")));
        }
        Ok(())
    }

    fn mismatch(&self, what: String) -> BlobMismatch {
        BlobMismatch {
            digest: self.digest.clone(),
            what,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_checks_size_and_digest() {
        let digest = Digest::of_bytes(b"blob");
        let check = |data: &[u8], size: u64| {
            let mut verifier = Verifier::new(&digest, size);
            for byte in data.chunks(1) {
                verifier.update(byte)?;
            }
            verifier.finish()
        };
        assert!(check(b"blob", 4).is_ok());
        let message = |result: Result<(), BlobMismatch>| result.unwrap_err().to_string();
        assert!(message(check(b"blob", 3)).contains("larger than the 3 bytes"));
        assert!(message(check(b"blo", 3)).contains("does not match"));
        assert!(message(check(b"blob", 5)).contains("has 4 bytes"));
    }

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = Digest::of_bytes(b"a");
        let b = Digest::of_bytes(b"b");
        let c = Digest::of_bytes(b"c");
        let chain = chain_ids(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(chain[0], a);
        let ab = Digest::of_bytes(format!("{a} {b}").as_bytes());
        assert_eq!(chain[1], ab);
        assert_eq!(chain[2], Digest::of_bytes(format!("{ab} {c}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }
}
