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

/// A stream's digest and length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hashed {
    /// Its SHA-256.
    pub digest: Digest,
    /// Its length.
    pub bytes: u64,
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
    pub fn finish(self) -> Hashed {
        Hashed {
            digest: Digest::from_hasher(self.sha),
            bytes: self.bytes,
        }
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

/// What a blob must be.
#[derive(Clone, Debug)]
pub enum Expected {
    /// What its descriptor says: this digest and this size.
    Descriptor {
        /// Its digest.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// This digest, whatever its size: a digest the user gave (`strata extract --sha256`).
    Digest(Digest),
    /// Anything: its digest is only computed.
    Anything,
}

/// Checks a blob against what it must be as its bytes go by: one byte more than its descriptor
/// declares fails at once, and at the end its size and digest must match.
pub struct Verifier {
    hasher: Hasher,
    expected: Expected,
}

/// A blob that is not what it must be.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BlobMismatch(String);

impl Verifier {
    /// Checks for a blob that must be `expected`.
    pub fn new(expected: Expected) -> Self {
        Verifier {
            hasher: Hasher::new(),
            expected,
        }
    }

    /// The next bytes of the blob; an error as soon as there are too many.
    pub fn update(&mut self, bytes: &[u8]) -> Result<(), BlobMismatch> {
        self.hasher.update(bytes);
        match &self.expected {
            Expected::Descriptor { digest, size } if self.hasher.bytes() > *size => {
                Err(BlobMismatch(format!(
                    "blob {digest} is larger than the {size} bytes its descriptor declares"
                )))
            }
            _ => Ok(()),
        }
    }

    /// How many more bytes may come, plus one to notice a blob that is too long.
    pub fn wanted(&self) -> u64 {
        match &self.expected {
            Expected::Descriptor { size, .. } => (size - self.hasher.bytes()).saturating_add(1),
            _ => u64::MAX,
        }
    }

    /// At the end of the blob: its digest and length, if it is what it must be.
    pub fn finish(self) -> Result<Hashed, BlobMismatch> {
        let hashed = self.hasher.finish();
        let (actual, seen) = (&hashed.digest, hashed.bytes);
        match self.expected {
            Expected::Descriptor { digest, size } if seen != size => Err(BlobMismatch(format!(
                "blob {digest} has {seen} bytes but its descriptor declares {size}"
            ))),
            Expected::Descriptor { digest, .. } if *actual != digest => Err(BlobMismatch(format!(
                "blob {digest} does not match its content (digest {actual})"
            ))),
            Expected::Digest(digest) if *actual != digest => Err(BlobMismatch(format!(
                "its digest is {actual}, not {digest}"
            ))),
            _ => Ok(hashed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_checks_size_and_digest() {
        let digest = Digest::of_bytes(b"blob");
        let check = |data: &[u8], expected: Expected| {
            let mut verifier = Verifier::new(expected);
            for byte in data.chunks(1) {
                verifier.update(byte)?;
            }
            verifier.finish()
        };
        let descriptor = |size| Expected::Descriptor {
            digest: digest.clone(),
            size,
        };
        let message = |result: Result<Hashed, BlobMismatch>| result.unwrap_err().to_string();
        assert_eq!(check(b"blob", descriptor(4)).unwrap().digest, digest);
        assert!(message(check(b"blob", descriptor(3))).contains("larger than the 3 bytes"));
        assert!(message(check(b"blo", descriptor(3))).contains("does not match"));
        assert!(message(check(b"blob", descriptor(5))).contains("has 4 bytes"));
        assert_eq!(
            check(b"blob", Expected::Digest(digest.clone()))
                .unwrap()
                .digest,
            digest
        );
        let other = Digest::of_bytes(b"other");
        let err = message(check(b"other", Expected::Digest(digest.clone())));
        assert!(err.contains(&format!("is {other}, not {digest}")), "{err}");
        assert_eq!(check(b"other", Expected::Anything).unwrap().digest, other);
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
        let hashed = hasher.finish();
        assert_eq!(hashed.bytes, 3);
        assert_eq!(
            hashed.digest.as_str(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
