//! Where a layer's names lead, without syscalls.
//!
//! The kernel resolves a name inside the root through symlinks (`openat2(RESOLVE_IN_ROOT)`):
//! `s/x` with `s -> d` is `d/x`. The applier keys what it knows of a layer (names it wrote,
//! directories it made, files out with the writers, directories to fix up) by that resolved
//! path, through real directories alone: its *canonical* path. Keyed by spelling, `s/x` and
//! `d/x` would be two files, and what a whiteout spares or a writer may race with would depend
//! on how the layer spells a name.
//!
//! [`canonical`] is the kernel's walk done by hand over a [`Lookup`] of the tree: `..` climbs
//! (never above the root), an absolute target restarts at the root, at most [`MAX_SYMLINKS`]
//! symlinks are followed. Each symlink's resolution is remembered in [`Symlinks`], so a chain
//! of them costs its walk once, not once per entry that goes through it.

use std::collections::HashMap;
use std::io;
use std::path::{Component, Path, PathBuf};

/// As the kernel's `MAXSYMLINKS`: more in one resolution is `ELOOP`.
pub const MAX_SYMLINKS: u32 = 40;

/// Resolutions remembered at most: past that, they are forgotten and found again.
const REMEMBERED: usize = 4096;

/// What is at a canonical path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Dir,
    Symlink(PathBuf),
    /// Anything else: a name below it is `ENOTDIR`.
    Other,
    Missing,
}

/// The tree a walk looks at, by canonical path (never the root, which is a directory).
pub trait Lookup {
    fn node(&mut self, path: &Path) -> io::Result<Node>;
    /// Makes the missing directory `path` (its parent is a directory).
    fn make_dir(&mut self, path: &Path) -> io::Result<()>;
}

/// What a walk does with a missing directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// Makes it, as `mkdir -p` inside a chroot would, through a dangling symlink too
    /// (`var/run -> /run` before `/run`).
    Make,
    /// Stops there.
    Stop,
}

/// Where a walk ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Walked {
    /// The directory the name leads to, at this canonical path.
    Dir(PathBuf),
    /// With [`Missing::Stop`]: the first missing name, at this canonical path (its parent is
    /// a directory that was looked in).
    Missing(PathBuf),
}

/// Where the symlinks met so far lead, by canonical path of the link. What a walk found
/// through existing names stays true until a directory or symlink is removed (the applier then
/// forgets it all): made names appear only where a name was missing, which is checked again.
#[derive(Default)]
pub struct Symlinks(HashMap<PathBuf, Known, foldhash::fast::RandomState>);

/// Where a symlink leads, and how many symlinks further on the way.
enum Known {
    Dir(PathBuf, u32),
    /// To a name missing then.
    Missing(PathBuf, u32),
    /// Through more symlinks than the limit, however it is reached.
    Loop,
}

impl Symlinks {
    /// Forgets every resolution: something they may go through is gone.
    pub fn forget(&mut self) {
        self.0.clear();
    }

    fn remember(&mut self, link: PathBuf, known: Known) {
        if self.0.len() >= REMEMBERED {
            self.forget();
        }
        self.0.insert(link, known);
    }
}

/// Resolves the directory `path` (a normalised name, relative to the root) to its canonical
/// path.
pub fn canonical(
    tree: &mut impl Lookup,
    symlinks: &mut Symlinks,
    path: &Path,
    missing: Missing,
) -> io::Result<Walked> {
    let mut followed = 0;
    walk(tree, symlinks, PathBuf::new(), path, missing, &mut followed)
}

/// Walks `path` from the canonical directory `from`, counting symlinks in `followed`.
fn walk(
    tree: &mut impl Lookup,
    symlinks: &mut Symlinks,
    from: PathBuf,
    path: &Path,
    missing: Missing,
    followed: &mut u32,
) -> io::Result<Walked> {
    let mut at = from;
    for component in path.components() {
        let name = match component {
            Component::RootDir => {
                at.clear();
                continue;
            }
            Component::CurDir | Component::Prefix(_) => continue,
            Component::ParentDir => {
                at.pop();
                continue;
            }
            Component::Normal(name) => name,
        };
        let next = at.join(name);
        match tree.node(&next)? {
            Node::Dir => at = next,
            Node::Other => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
            Node::Missing if missing == Missing::Make => {
                tree.make_dir(&next)?;
                at = next;
            }
            Node::Missing => return Ok(Walked::Missing(next)),
            Node::Symlink(target) => {
                *followed += 1;
                within_limit(*followed)?;
                match follow(tree, symlinks, next, &target, at, missing, followed)? {
                    Walked::Dir(dir) => at = dir,
                    missing => return Ok(missing),
                }
            }
        }
    }
    Ok(Walked::Dir(at))
}

/// Where the symlink `link` in the canonical directory `from`, pointing at `target`, leads:
/// as remembered, else walked and remembered.
fn follow(
    tree: &mut impl Lookup,
    symlinks: &mut Symlinks,
    link: PathBuf,
    target: &Path,
    from: PathBuf,
    missing: Missing,
    followed: &mut u32,
) -> io::Result<Walked> {
    match symlinks.0.get(&link) {
        Some(Known::Dir(dir, inner)) => {
            *followed += inner;
            within_limit(*followed)?;
            return Ok(Walked::Dir(dir.clone()));
        }
        Some(Known::Loop) => return Err(io::Error::from_raw_os_error(libc::ELOOP)),
        // Where names are made, the walk goes on to make them.
        Some(Known::Missing(name, inner)) if missing == Missing::Stop => {
            let (name, inner) = (name.clone(), *inner);
            if tree.node(&name)? == Node::Missing {
                *followed += inner;
                within_limit(*followed)?;
                return Ok(Walked::Missing(name));
            }
        }
        Some(Known::Missing(..)) | None => {}
    }
    let before = *followed;
    let walked = walk(tree, symlinks, from, target, missing, followed);
    let known = match &walked {
        Ok(Walked::Dir(dir)) => Known::Dir(dir.clone(), *followed - before),
        Ok(Walked::Missing(name)) => Known::Missing(name.clone(), *followed - before),
        // Over the limit from the first symlink of a walk: from any.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) && before == 1 => Known::Loop,
        Err(_) => return walked,
    };
    symlinks.remember(link, known);
    walked
}

fn within_limit(followed: u32) -> io::Result<()> {
    if followed > MAX_SYMLINKS {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A tree of canonical paths: `d` a directory, `l>target` a symlink, `f` anything else.
    struct Fake {
        nodes: BTreeMap<PathBuf, Node>,
        lookups: usize,
    }

    impl Fake {
        fn new(spec: &[&str]) -> Fake {
            let nodes = spec
                .iter()
                .map(|line| match line.split_once('>') {
                    Some((link, target)) => (PathBuf::from(link), Node::Symlink(target.into())),
                    None if line.ends_with('/') => {
                        (PathBuf::from(line.trim_end_matches('/')), Node::Dir)
                    }
                    None => (PathBuf::from(line), Node::Other),
                })
                .collect();
            Fake { nodes, lookups: 0 }
        }
    }

    impl Lookup for Fake {
        fn node(&mut self, path: &Path) -> io::Result<Node> {
            self.lookups += 1;
            Ok(self.nodes.get(path).cloned().unwrap_or(Node::Missing))
        }
        fn make_dir(&mut self, path: &Path) -> io::Result<()> {
            self.nodes.insert(path.to_owned(), Node::Dir);
            Ok(())
        }
    }

    fn resolve(spec: &[&str], path: &str, missing: Missing) -> Result<Walked, i32> {
        let mut tree = Fake::new(spec);
        canonical(
            &mut tree,
            &mut Symlinks::default(),
            Path::new(path),
            missing,
        )
        .map_err(|e| e.raw_os_error().unwrap())
    }

    fn dir(path: &str) -> Result<Walked, i32> {
        Ok(Walked::Dir(PathBuf::from(path)))
    }

    #[test]
    fn resolves_as_the_kernel_does_in_a_root() {
        let tree = [
            "d/",
            "d/e/",
            "f",
            "s>d",
            "up>../d",
            "abs>/d/e",
            "dots>d/../d/./e",
            "far>../../../../d",
            "chain>s",
            "file>f",
            "dangling>new/dir",
            "self>self",
        ];
        let stop = Missing::Stop;
        let cases = [
            ("", dir("")),
            ("d", dir("d")),
            ("d/e", dir("d/e")),
            ("s", dir("d")),
            ("s/e", dir("d/e")),
            ("up", dir("d")),
            ("abs", dir("d/e")),
            ("dots", dir("d/e")),
            ("far/e", dir("d/e")),
            ("chain/e", dir("d/e")),
            ("f", Err(libc::ENOTDIR)),
            ("file", Err(libc::ENOTDIR)),
            ("s/x/y", Ok(Walked::Missing("d/x".into()))),
            ("dangling", Ok(Walked::Missing("new".into()))),
            ("self", Err(libc::ELOOP)),
        ];
        for (path, want) in cases {
            assert_eq!(resolve(&tree, path, stop), want, "{path}");
        }
    }

    #[test]
    fn makes_missing_directories_through_dangling_symlinks() {
        let mut tree = Fake::new(&["var/", "var/run>/run"]);
        let walked = canonical(
            &mut tree,
            &mut Symlinks::default(),
            Path::new("var/run/lock"),
            Missing::Make,
        );
        assert_eq!(walked.unwrap(), Walked::Dir("run/lock".into()));
        assert_eq!(tree.nodes.get(Path::new("run")), Some(&Node::Dir));
        assert_eq!(tree.nodes.get(Path::new("run/lock")), Some(&Node::Dir));
    }

    #[test]
    fn follows_at_most_forty_symlinks_counting_nested_ones() {
        // l0 -> l1 -> … -> l39 -> d: 40 symlinks, resolvable; l0 through one more is not.
        let mut spec: Vec<String> = (0..40).map(|i| format!("l{i}>l{}", i + 1)).collect();
        spec.push("l40>d".into());
        spec.push("d/".into());
        spec.push("m>l0".into());
        let spec: Vec<&str> = spec.iter().map(String::as_str).collect();
        assert_eq!(resolve(&spec, "l1", Missing::Stop), dir("d"));
        assert_eq!(resolve(&spec, "l0", Missing::Stop), Err(libc::ELOOP));
        assert_eq!(resolve(&spec, "m", Missing::Stop), Err(libc::ELOOP));
    }

    #[test]
    fn a_dangling_or_looping_symlink_is_walked_once_until_its_name_appears() {
        let mut spec = vec!["a/".to_string()];
        for i in 0..30 {
            spec.push(format!("c{i}>a/../a/../a/../c{}", i + 1));
        }
        spec.push("c30>a/gone".into());
        spec.push("loop>loop".into());
        let spec: Vec<&str> = spec.iter().map(String::as_str).collect();
        let mut tree = Fake::new(&spec);
        let mut symlinks = Symlinks::default();
        let stop = Missing::Stop;
        let path = Path::new("c0/x");
        let walked = canonical(&mut tree, &mut symlinks, path, stop).unwrap();
        assert_eq!(walked, Walked::Missing("a/gone".into()));
        let cold = tree.lookups;
        for _ in 0..100 {
            canonical(&mut tree, &mut symlinks, path, stop).unwrap();
        }
        // The name, and whether the missing one is still missing.
        assert_eq!(tree.lookups, cold + 200);
        tree.nodes.insert("a/gone".into(), Node::Dir);
        let walked = canonical(&mut tree, &mut symlinks, path, stop).unwrap();
        assert_eq!(walked, Walked::Missing("a/gone/x".into()));

        let looping = Path::new("loop");
        let err = canonical(&mut tree, &mut symlinks, looping, stop).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
        let cold = tree.lookups;
        for _ in 0..100 {
            canonical(&mut tree, &mut symlinks, looping, stop).unwrap_err();
        }
        assert_eq!(tree.lookups, cold + 100);
    }

    #[test]
    fn a_symlink_is_walked_once_however_many_names_go_through_it() {
        // Each link of the chain climbs back and forth before going on.
        let mut spec = vec!["a/".to_string()];
        for i in 0..30 {
            spec.push(format!("c{i}>a/../a/../a/../c{}", i + 1));
        }
        spec.push("c30>a".into());
        let spec: Vec<&str> = spec.iter().map(String::as_str).collect();
        let mut tree = Fake::new(&spec);
        let mut symlinks = Symlinks::default();
        let path = Path::new("c0");
        let first = canonical(&mut tree, &mut symlinks, path, Missing::Stop).unwrap();
        assert_eq!(first, Walked::Dir("a".into()));
        let cold = tree.lookups;
        for _ in 0..1000 {
            canonical(&mut tree, &mut symlinks, path, Missing::Stop).unwrap();
        }
        assert_eq!(
            tree.lookups,
            cold + 1000,
            "one lookup per name once remembered"
        );
        symlinks.forget();
        canonical(&mut tree, &mut symlinks, path, Missing::Stop).unwrap();
        assert_eq!(tree.lookups, 2 * cold + 1000);
    }
}
