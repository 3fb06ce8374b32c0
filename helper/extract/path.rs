//! Pure rules for tar entry names: normalisation, whiteouts, and the set of paths a layer
//! wrote (which whiteouts must spare). No syscalls here.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::hash::{BuildHasher, RandomState};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use strata_protocol::Whiteouts;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// AUFS bookkeeping names (`.wh..wh.plnk`, `.wh..wh.aufs`) share this prefix.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name contains a '..' component")]
    DotDot,
    #[error("name contains a NUL byte")]
    Nul,
    #[error("bare whiteout '.wh.' names nothing to remove")]
    BareWhiteout,
    #[error("whiteout names '{0}', which is not a sibling")]
    WhiteoutEscape(String),
}

/// Turns a tar entry name into a path relative to the root: leading `/` and `./` are stripped,
/// `.` components dropped, and `..` refused rather than clamped (a layer that needs `..` in a
/// name is broken or hostile). The empty path is the root itself.
pub fn normalize(name: &[u8]) -> Result<PathBuf, NameError> {
    if name.contains(&0) {
        return Err(NameError::Nul);
    }
    let mut path = PathBuf::new();
    for component in Path::new(OsStr::from_bytes(name)).components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err(NameError::DotDot),
            Component::Prefix(_) => unreachable!("no path prefixes on unix"),
        }
    }
    Ok(path)
}

/// The most of a name that error text and the report quote: a layer's names may be up to
/// 1 MiB long.
const SHOWN: usize = 256;

/// A name as messages quote it: lossy UTF-8, cut after 256 bytes with `…`.
pub fn shown_bytes(name: &[u8]) -> String {
    match name.get(..SHOWN) {
        Some(start) if name.len() > SHOWN => String::from_utf8_lossy(start).into_owned() + "…",
        _ => String::from_utf8_lossy(name).into_owned(),
    }
}

/// A path as messages quote it (see [`shown_bytes`]).
pub fn shown(path: &Path) -> String {
    shown_bytes(path.as_os_str().as_bytes())
}

/// What a normalised entry path asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Create or replace the path.
    Create,
    /// `dir/.wh.NAME`: remove `dir/NAME` as it exists in lower layers.
    Whiteout { target: PathBuf },
    /// `dir/.wh..wh..opq`: hide everything lower layers put in `dir`.
    Opaque { dir: &'a Path },
    /// AUFS bookkeeping that means nothing to an OCI rootfs.
    AufsMeta,
}

/// What `path` asks for under `whiteouts`: in a plain archive ([`Whiteouts::Keep`]), every
/// name is a name.
pub fn classify(path: &Path, whiteouts: Whiteouts) -> Result<Action<'_>, NameError> {
    if whiteouts == Whiteouts::Keep {
        return Ok(Action::Create);
    }
    let Some(name) = path.file_name().map(OsStrExt::as_bytes) else {
        return Ok(Action::Create);
    };
    let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) else {
        return Ok(Action::Create);
    };
    let dir = path.parent().unwrap_or(Path::new(""));
    if name == OPAQUE_MARKER {
        return Ok(Action::Opaque { dir });
    }
    if name.starts_with(AUFS_META_PREFIX) {
        return Ok(Action::AufsMeta);
    }
    match target {
        b"" => Err(NameError::BareWhiteout),
        b"." | b".." => Err(NameError::WhiteoutEscape(shown_bytes(target))),
        _ => Ok(Action::Whiteout {
            target: dir.join(OsStr::from_bytes(target)),
        }),
    }
}

/// A set of normalized layer paths, kept as 128-bit keyed hashes rather than as paths: a
/// layer's memory then grows by some twenty bytes a name however long its names are, where a
/// million paths of a kilobyte would take a gigabyte. The key is two SipHash values of the
/// path under a key drawn per process, so a layer cannot pick paths that collide, and chance
/// collisions are as likely as guessing a 128-bit number.
pub struct PathSet {
    keys: HashSet<u128, foldhash::fast::RandomState>,
    hasher: RandomState,
}

impl Default for PathSet {
    fn default() -> Self {
        PathSet {
            keys: HashSet::default(),
            hasher: RandomState::new(),
        }
    }
}

impl PathSet {
    fn key(&self, path: &Path) -> u128 {
        let bytes = path.as_os_str().as_bytes();
        let half = |domain: u8| u128::from(self.hasher.hash_one((domain, bytes)));
        half(0) << 64 | half(1)
    }

    /// Whether `path` was new.
    pub fn insert(&mut self, path: &Path) -> bool {
        self.keys.insert(self.key(path))
    }

    pub fn contains(&self, path: &Path) -> bool {
        // Often empty (nothing out with the writers, nothing settled): no hashing then.
        !self.keys.is_empty() && self.keys.contains(&self.key(path))
    }

    pub fn count(&self) -> usize {
        self.keys.len()
    }

    pub fn clear(&mut self) {
        self.keys.clear();
    }
}

/// Paths this layer created, with all their ancestors. A whiteout or opaque marker removes only
/// what lower layers left: anything in this set survives it (image-spec layer.md: "Files that
/// are present in the same layer as a whiteout file can only be hidden by whiteout files in
/// subsequent layers"), and an ancestor is descended into rather than removed whole.
#[derive(Default)]
pub struct UpperPaths(PathSet);

impl UpperPaths {
    pub fn insert(&mut self, path: &Path) {
        let mut current = Some(path);
        while let Some(p) = current {
            if p.as_os_str().is_empty() || !self.0.insert(p) {
                break;
            }
            current = p.parent();
        }
    }

    pub fn contains(&self, path: &Path) -> bool {
        self.0.contains(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(name: &str) -> Result<PathBuf, NameError> {
        normalize(name.as_bytes())
    }

    #[test]
    fn a_path_set_holds_what_was_put_in_it() {
        let mut set = PathSet::default();
        let long = "x/".repeat(2000);
        for path in ["a", "a/b", &long] {
            assert!(set.insert(Path::new(path)), "{path}");
            assert!(!set.insert(Path::new(path)), "{path}");
        }
        for (path, held) in [
            ("a", true),
            ("a/b", true),
            (&long, true),
            ("b", false),
            ("", false),
        ] {
            assert_eq!(set.contains(Path::new(path)), held, "{path}");
        }
        assert_eq!(set.count(), 3);
        set.clear();
        assert!(!set.contains(Path::new("a")));
    }

    #[test]
    fn strips_absolute_and_dot_prefixes() {
        assert_eq!(norm("/etc/passwd").unwrap(), Path::new("etc/passwd"));
        assert_eq!(norm("./etc/./passwd").unwrap(), Path::new("etc/passwd"));
        assert_eq!(norm("etc//hosts/").unwrap(), Path::new("etc/hosts"));
        assert_eq!(norm("/").unwrap(), Path::new(""));
        assert_eq!(norm("./").unwrap(), Path::new(""));
        assert_eq!(norm("").unwrap(), Path::new(""));
    }

    #[test]
    fn refuses_dot_dot_anywhere() {
        for name in ["..", "../x", "a/../b", "/../etc", "a/b/..", "./.."] {
            assert_eq!(norm(name), Err(NameError::DotDot), "{name}");
        }
        assert_eq!(norm("a..b/..c").unwrap(), Path::new("a..b/..c"));
    }

    #[test]
    fn refuses_nul() {
        assert_eq!(normalize(b"a\0b"), Err(NameError::Nul));
    }

    #[test]
    fn classifies_whiteouts_in_a_layer_and_keeps_them_in_an_archive() {
        let whiteout = |target: &str| {
            Ok(Action::Whiteout {
                target: PathBuf::from(target),
            })
        };
        let rows: [(&str, Result<Action, NameError>); 9] = [
            ("etc/.wh.passwd", whiteout("etc/passwd")),
            (".wh.top", whiteout("top")),
            (
                "var/.wh..wh..opq",
                Ok(Action::Opaque {
                    dir: Path::new("var"),
                }),
            ),
            (".wh..wh..opq", Ok(Action::Opaque { dir: Path::new("") })),
            ("x/.wh..wh.plnk", Ok(Action::AufsMeta)),
            ("etc/passwd.wh.x", Ok(Action::Create)),
            ("", Ok(Action::Create)),
            ("a/.wh.", Err(NameError::BareWhiteout)),
            ("a/.wh...", Err(NameError::WhiteoutEscape("..".into()))),
        ];
        for (name, in_a_layer) in rows {
            let path = norm(name).unwrap();
            assert_eq!(classify(&path, Whiteouts::Apply), in_a_layer, "{name:?}");
            assert_eq!(
                classify(&path, Whiteouts::Keep),
                Ok(Action::Create),
                "{name:?}"
            );
        }
    }

    #[test]
    fn upper_paths_include_ancestors() {
        let mut upper = UpperPaths::default();
        upper.insert(Path::new("a/b/c"));
        assert!(upper.contains(Path::new("a/b/c")));
        assert!(upper.contains(Path::new("a/b")));
        assert!(upper.contains(Path::new("a")));
        assert!(!upper.contains(Path::new("a/x")));
        assert!(!upper.contains(Path::new("")));
    }
}
