//! Content digests: what a blob, a layer's stream and a chain of layers are named by; how they
//! are hashed; and checking a blob against its descriptor. Only strata hashes: the helper
//! never computes a digest the parent believes.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// A validated `sha256:<64 lowercase hex>` digest. strata accepts no other algorithm, so a
/// digest is always safe to turn into a `blobs/sha256/<hex>` path or a store directory name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

/// Text that is not a digest strata accepts.
#[derive(Debug, thiserror::Error)]
#[error("invalid digest {0:?}: expected sha256:<64 lowercase hex digits>")]
pub struct InvalidDigest(pub String);

impl Digest {
    /// `text` if it is `sha256:` and 64 lowercase hex digits.
    pub fn parse(text: &str) -> Result<Self, InvalidDigest> {
        match text.strip_prefix("sha256:") {
            Some(hex)
                if hex.len() == 64
                    && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
            {
                Ok(Digest(text.to_owned()))
            }
            _ => Err(InvalidDigest(text.to_owned())),
        }
    }

    /// The digest of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    fn from_hasher(hasher: Sha256) -> Self {
        Digest(format!("sha256:{}", hex::encode(hasher.finalize())))
    }

    /// The 64 hex digits without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// `sha256:` and the hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for messages meant for people.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Digest::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// SHA-256 and length of the bytes fed to it.
#[derive(Clone, Default)]
pub struct Hasher {
    sha: Sha256,
    bytes: u64,
}

impl Hasher {
    /// Nothing hashed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Hashes `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.bytes += bytes.len() as u64;
    }

    /// How many bytes were hashed.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The digest and length of everything hashed.
    pub fn finish(self) -> (Digest, u64) {
        (Digest::from_hasher(self.sha), self.bytes)
    }
}

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
    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_only_lowercase_sha256() {
        assert!(Digest::parse(EMPTY).is_ok());
        assert!(Digest::parse(&EMPTY.to_uppercase()).is_err());
        assert!(Digest::parse("sha512:abcd").is_err());
        assert!(Digest::parse("sha256:../../etc/passwd").is_err());
        assert!(Digest::parse(&EMPTY[..70]).is_err());
    }

    #[test]
    fn hashes_bytes() {
        assert_eq!(Digest::of_bytes(b"").as_str(), EMPTY);
        let mut hasher = Hasher::new();
        hasher.update(b"a");
        hasher.update(b"bc");
        let (digest, bytes) = hasher.finish();
        assert_eq!(bytes, 3);
        assert_eq!(
            digest.as_str(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
