//! The applier's job: apply a tar stream to a root directory with OCI whiteout semantics.

mod apply;
mod handout;
pub mod owner;
pub mod path;
mod resolve;
mod skipped;
mod writers;

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use anyhow::{Result, anyhow};

use crate::chunks::{self, ChunkReader};
use strata_protocol::{Applied, Whiteouts};

/// A tree a layer is applied to.
#[derive(Clone, Copy)]
pub enum Tree<'a> {
    /// A directory of its own: DEST, or a native snapshot.
    Plain(BorrowedFd<'a>),
    /// An overlay mount (the overlay snapshotter): entries go through `merged`, and land in
    /// `upper`; `lowers` are the layers below, top first.
    Overlay {
        merged: BorrowedFd<'a>,
        upper: BorrowedFd<'a>,
        lowers: &'a [BorrowedFd<'a>],
    },
    /// An overlay snapshot's own directory, written with nothing below it mounted (see
    /// [`strata_protocol::Onto::Parentless`]).
    Parentless(BorrowedFd<'a>),
}

impl<'a> Tree<'a> {
    /// Where names are resolved and entries applied.
    pub fn root(&self) -> BorrowedFd<'a> {
        match *self {
            Tree::Plain(root) | Tree::Parentless(root) => root,
            Tree::Overlay { merged, .. } => merged,
        }
    }

    fn upper(&self) -> Option<BorrowedFd<'a>> {
        match *self {
            Tree::Overlay { upper, .. } => Some(upper),
            _ => None,
        }
    }

    fn lowers(&self) -> &'a [BorrowedFd<'a>] {
        match *self {
            Tree::Overlay { lowers, .. } => lowers,
            _ => &[],
        }
    }

    fn is_parentless(&self) -> bool {
        matches!(self, Tree::Parentless(_))
    }

    fn target(&self) -> handout::Target {
        match self {
            Tree::Overlay { .. } => handout::Target::Overlay,
            _ => handout::Target::Plain,
        }
    }
}

/// Applies the tar stream in the ring `input` to each of `trees` (the first one's account of it
/// is returned), reading it to its end. `mapped_ids` is how many ids the caller's user namespace
/// maps from 0; owners beyond them are recorded, not set. `whiteouts` says whether the stream is
/// a layer or a plain archive.
///
/// Every job has its own thread: reading the stream, and applying it to each tree; so creating
/// files, which on most disks is the slower part, overlaps with the rest.
pub fn apply_layer(
    input: strata_ring::Reader,
    trees: &[Tree],
    mapped_ids: u64,
    whiteouts: Whiteouts,
) -> Result<Applied> {
    let (mut readers, mut appliers) = (Vec::new(), Vec::new());
    for &tree in trees {
        let (sender, chunks) = chunks::channel();
        readers.push(sender);
        appliers.push((tree, ChunkReader::new(chunks)));
    }
    let failed = AtomicBool::new(false);
    // Small files get threads of their own only when one tree is written: with two, the two
    // appliers already keep the cores busy, and more threads only add switching and copies.
    let writer_threads = if trees.len() == 1 { 2 } else { 0 };
    thread::scope(|scope| {
        let reader = scope.spawn(|| chunks::broadcast(input, readers, &failed));
        let appliers: Vec<_> = appliers
            .into_iter()
            .map(|(tree, chunks)| {
                let failed = &failed;
                scope.spawn(move || {
                    let applied = extract(chunks, tree, mapped_ids, whiteouts, writer_threads);
                    // The first failure is the one to report: the others may only be
                    // the stream stopping short because of it.
                    let first = applied.is_err() && !failed.swap(true, Ordering::Relaxed);
                    (applied, first)
                })
            })
            .collect();
        let mut results = Vec::new();
        for applier in appliers {
            results.push(
                applier
                    .join()
                    .map_err(|_| anyhow!("an extraction thread panicked"))?,
            );
        }
        let bytes = reader
            .join()
            .map_err(|_| anyhow!("the reading thread panicked"))?;
        // Every failed applier has a failure, and exactly one of them was first.
        if let Some(index) = results.iter().position(|(_, first)| *first) {
            let err = results
                .swap_remove(index)
                .0
                .expect_err("a failure came first");
            return Err(match cut_short(&err) {
                true => err.context(CutShort),
                false => err,
            });
        }
        let (entries, account) = results.swap_remove(0).0?;
        Ok(Applied {
            entries,
            bytes: bytes.map_err(|err| anyhow!(err).context("reading the layer"))?,
            skipped: account.skipped,
            skipped_omitted: account.skipped_omitted,
            root_mode: account.root_mode,
        })
    })
}

/// The mark on an applier's failure that came of its stream ending inside the archive: the
/// inflater's failure, if it had one, explains it better.
#[derive(Debug, thiserror::Error)]
#[error("the layer ends early")]
pub struct CutShort;

/// Whether `err` comes of the tar reader meeting the end of the stream inside the archive.
fn cut_short(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        // An entry's data is read through `io::Read`, which carries the tar reader's error
        // inside an `io::Error` (whose `source` skips it).
        let tar = cause.downcast_ref::<strata_tar::Error>().or_else(|| {
            cause
                .downcast_ref::<io::Error>()
                .and_then(io::Error::get_ref)
                .and_then(|inner| inner.downcast_ref())
        });
        matches!(tar, Some(strata_tar::Error::Truncated(_)))
    })
}

/// Reads the tar stream and applies its entries. The stream may go on after tar's end block
/// (the diff ID covers it): the reading thread counts that, not this.
fn extract(
    stream: ChunkReader,
    tree: Tree,
    mapped_ids: u64,
    whiteouts: Whiteouts,
    writer_threads: usize,
) -> Result<(u64, apply::Account)> {
    thread::scope(|scope| {
        let writers = writers::Writers::start(scope, writer_threads);
        let mut archive = strata_tar::Archive::new(stream);
        let mut applier = apply::Applier::new(tree, mapped_ids, whiteouts, &writers);
        let mut entries = 0u64;
        while let Some(header) = archive
            .next_header()
            .map_err(|err| header_error(err, entries))?
        {
            applier.apply(&header, &mut archive.data()).map_err(|err| {
                if err.is::<writers::EarlierEntry>() {
                    err
                } else {
                    err.context(entry_name(&header.name))
                }
            })?;
            entries += 1;
        }
        Ok((entries, applier.finish()?))
    })
}

/// How errors name an entry: as the layer spells it, cut short if long.
pub(crate) fn entry_name(name: &[u8]) -> String {
    format!("entry {:?}", path::shown_bytes(name))
}

/// A failure to read the next tar header: what the tar reader says, placed in the stream.
fn header_error(err: strata_tar::Error, entries: u64) -> anyhow::Error {
    match entries {
        0 => anyhow::Error::from(err).context("not a valid tar stream"),
        n => anyhow::Error::from(err).context(format!("reading the tar header after entry {n}")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! Extraction into a temporary directory, without namespaces: `openat2(RESOLVE_IN_ROOT)`
    //! alone must keep every entry inside.

    use std::fs;
    use std::os::fd::AsFd;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;

    use super::*;
    use crate::chunks::tests::{Ring, ring};

    enum E<'a> {
        Dir(&'a str),
        File(&'a str, &'a str),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
    }

    fn tar_of(entries: &[E]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for entry in entries {
            let mut header = tar::Header::new_gnu();
            header.set_mtime(1_000_000);
            header.set_uid(0);
            header.set_gid(0);
            let (name, data): (&str, &[u8]) = match entry {
                E::Dir(name) => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(0o755);
                    (name, b"")
                }
                E::File(name, data) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(0o644);
                    (name, data.as_bytes())
                }
                E::Symlink(name, target) | E::Hardlink(name, target) => {
                    let kind = if matches!(entry, E::Symlink(..)) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    };
                    header.set_entry_type(kind);
                    header.set_mode(0o777);
                    header.set_link_name(target).unwrap();
                    (name, b"")
                }
            };
            header.set_size(data.len() as u64);
            // Raw names: the tar crate's path setter would refuse `..` and absolute names.
            let bytes = name.as_bytes();
            header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            header.set_cksum();
            builder.append(&header, data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    /// Applies the tar stream `stream`, through `ring`, to the directory `root`.
    fn apply_through(
        ring: Ring,
        root: &Path,
        stream: &[u8],
        whiteouts: Whiteouts,
    ) -> Result<Applied> {
        let dir = fs::File::open(root).unwrap();
        std::thread::scope(|scope| {
            let input = crate::chunks::tests::streamed(scope, ring, stream);
            apply_layer(input, &[Tree::Plain(dir.as_fd())], 1, whiteouts)
        })
    }

    fn apply_stream(root: &Path, stream: &[u8]) -> Result<Applied> {
        apply_through(ring(), root, stream, Whiteouts::Apply)
    }

    fn apply(root: &Path, entries: &[E]) -> Result<Applied> {
        apply_stream(root, &tar_of(entries))
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap()
    }

    /// Applies a layer of a directory, 200 small files (through the writer threads), a
    /// symlink and a hardlink to `root`, and checks what landed.
    pub(crate) fn apply_a_small_layer(ring: Ring, root: &Path) {
        let names: Vec<String> = (0..200).map(|i| format!("d/f{i}")).collect();
        let mut entries = vec![E::Dir("d")];
        entries.extend(names.iter().map(|name| E::File(name, "small")));
        entries.extend([E::Symlink("s", "d"), E::Hardlink("d/link", "d/f0")]);
        let applied = apply_through(ring, root, &tar_of(&entries), Whiteouts::Apply).unwrap();
        assert_eq!(applied.entries, 203);
        assert_eq!(fs::read_dir(root.join("d")).unwrap().count(), 201);
        assert_eq!(read(&root.join("s/f199")), "small");
    }

    #[test]
    fn a_plain_archive_makes_files_of_what_a_layer_takes_for_whiteouts() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir(root.join("d")).unwrap();
        fs::write(root.join("d/lower"), "lower").unwrap();
        let entries = [
            E::Dir("d"),
            E::File("d/.wh.lower", "kept"),
            E::File("d/.wh..wh..opq", "marker"),
            E::File(".wh..wh.plnk", "aufs"),
        ];
        apply_through(ring(), root, &tar_of(&entries), Whiteouts::Keep).unwrap();
        assert_eq!(read(&root.join("d/lower")), "lower");
        assert_eq!(read(&root.join("d/.wh.lower")), "kept");
        assert_eq!(read(&root.join("d/.wh..wh..opq")), "marker");
        assert_eq!(read(&root.join(".wh..wh.plnk")), "aufs");
    }

    #[test]
    fn whiteouts_spare_same_layer_files_and_remove_lower_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        apply(
            root,
            &[E::Dir("d"), E::File("d/lower", "1"), E::File("d/keep", "1")],
        )
        .unwrap();
        apply(
            root,
            &[
                E::File("d/new", "2"),
                E::File("d/.wh.new", ""),
                E::File("d/.wh.lower", ""),
            ],
        )
        .unwrap();
        assert!(!root.join("d/lower").exists());
        assert_eq!(read(&root.join("d/new")), "2");
        assert_eq!(read(&root.join("d/keep")), "1");
        assert!(!root.join("d/.wh.new").exists());
    }

    #[test]
    fn opaque_marker_after_siblings_hides_only_lower_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        apply(
            root,
            &[
                E::Dir("d"),
                E::File("d/old", "1"),
                E::Dir("d/sub"),
                E::File("d/sub/old", "1"),
            ],
        )
        .unwrap();
        apply(
            root,
            &[
                E::Dir("d/sub"),
                E::File("d/sub/new", "2"),
                E::File("d/.wh..wh..opq", ""),
            ],
        )
        .unwrap();
        assert!(!root.join("d/old").exists());
        assert!(!root.join("d/sub/old").exists());
        assert_eq!(read(&root.join("d/sub/new")), "2");
    }

    #[test]
    fn symlinked_parents_resolve_inside_the_root() {
        let outside = tempfile::tempdir().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let escape = outside.path().to_str().unwrap();
        apply(
            root,
            &[
                E::Symlink("abs", escape),
                E::Symlink("up", "../../../../.."),
                E::File("abs/x", "in"),
            ],
        )
        .unwrap();
        apply(root, &[E::File("up/y", "in")]).unwrap();
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
        assert_eq!(
            read(&root.join(escape.trim_start_matches('/')).join("x")),
            "in"
        );
        assert_eq!(read(&root.join("y")), "in");
        assert_eq!(fs::read_link(root.join("abs")).unwrap(), Path::new(escape));
    }

    #[test]
    fn refuses_dot_dot_and_a_non_directory_root() {
        let tmp = tempfile::tempdir().unwrap();
        let err = apply(tmp.path(), &[E::File("../x", "bad")]).unwrap_err();
        assert!(format!("{err:#}").contains("'..'"), "{err:#}");
        let err = apply(tmp.path(), &[E::Symlink("/", "/etc")]).unwrap_err();
        assert!(format!("{err:#}").contains("root directory"), "{err:#}");
    }

    #[test]
    fn hardlinks_share_inodes_and_replace_existing_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        apply(root, &[E::File("a", "data"), E::File("b", "old")]).unwrap();
        apply(root, &[E::Hardlink("b", "/a"), E::Hardlink("a", "a")]).unwrap();
        let (a, b) = (
            fs::metadata(root.join("a")).unwrap(),
            fs::metadata(root.join("b")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino());
        assert_eq!(a.nlink(), 2);
    }

    #[test]
    fn directories_merge_and_other_types_replace() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        apply(
            root,
            &[
                E::Dir("d"),
                E::File("d/f", "1"),
                E::Dir("x"),
                E::File("x/f", "1"),
            ],
        )
        .unwrap();
        apply(root, &[E::Dir("d"), E::File("x", "now a file")]).unwrap();
        assert_eq!(read(&root.join("d/f")), "1");
        assert_eq!(read(&root.join("x")), "now a file");
        assert_eq!(
            fs::metadata(root.join("d")).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        assert_eq!(fs::metadata(root.join("d")).unwrap().mtime(), 1_000_000);
    }

    #[test]
    fn later_entries_see_files_handed_to_the_writer_threads() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let names: Vec<String> = (0..200).map(|i| format!("d/f{i}")).collect();
        let mut entries = vec![E::Dir("d")];
        entries.extend(names.iter().map(|name| E::File(name, "small")));
        entries.extend([
            E::Hardlink("d/link", "d/f199"),
            E::File("d/f0", "replaced"),
            E::Dir("e"),
            E::File("e/x", "gone with e"),
            E::File("e", "e is a file now"),
        ]);
        apply(root, &entries).unwrap();
        assert_eq!(fs::read_dir(root.join("d")).unwrap().count(), 201);
        assert_eq!(read(&root.join("d/f0")), "replaced");
        assert_eq!(read(&root.join("d/f1")), "small");
        let (link, target) = (
            fs::metadata(root.join("d/link")).unwrap(),
            fs::metadata(root.join("d/f199")).unwrap(),
        );
        assert_eq!(link.ino(), target.ino());
        assert_eq!(read(&root.join("e")), "e is a file now");
        assert_eq!(fs::metadata(root.join("d")).unwrap().mtime(), 1_000_000);
    }

    #[test]
    fn files_handed_out_over_a_lower_layer_replace_only_what_they_name() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let names: Vec<String> = (0..200).map(|i| format!("d/f{i}")).collect();
        let mut lower = vec![E::Dir("d"), E::Dir("d/x"), E::File("d/x/inner", "1")];
        lower.extend(names.iter().map(|name| E::File(name, "lower")));
        lower.extend([
            E::Hardlink("d/h1", "d/f0"),
            E::Symlink("d/s", "f1"),
            E::Dir("t"),
            E::Symlink("d/p", "../t"),
        ]);
        apply(root, &lower).unwrap();

        let contents: Vec<String> = (0..200).map(|i| format!("upper {i}")).collect();
        let mut upper: Vec<E> = names
            .iter()
            .zip(&contents)
            .map(|(name, data)| E::File(name, data))
            .collect();
        upper.extend([
            E::File("d/h1", "h1 alone"),
            E::File("d/s", "a file where a symlink was"),
            E::File("d/x", "a file where a directory was"),
            E::File("d/p", "a file where a link to a directory was"),
            E::File("d/.wh.f5", ""),
            E::File("d/f7", "written twice"),
            E::Hardlink("d/link", "d/f199"),
            E::File("d/new", "new"),
        ]);
        apply(root, &upper).unwrap();

        assert_eq!(read(&root.join("d/f0")), "upper 0");
        assert_eq!(read(&root.join("d/f5")), "upper 5");
        assert_eq!(read(&root.join("d/f7")), "written twice");
        assert_eq!(read(&root.join("d/f198")), "upper 198");
        assert_eq!(read(&root.join("d/h1")), "h1 alone");
        assert_eq!(fs::metadata(root.join("d/f0")).unwrap().nlink(), 1);
        assert_eq!(read(&root.join("d/s")), "a file where a symlink was");
        assert_eq!(read(&root.join("d/x")), "a file where a directory was");
        assert!(fs::symlink_metadata(root.join("d/p")).unwrap().is_file());
        assert!(root.join("t").is_dir());
        let (link, target) = (
            fs::metadata(root.join("d/link")).unwrap(),
            fs::metadata(root.join("d/f199")).unwrap(),
        );
        assert_eq!(link.ino(), target.ino());
        assert_eq!(read(&root.join("d/link")), "upper 199");
        assert_eq!(read(&root.join("d/new")), "new");
        // 200 files, h1, s, x, p, link, new.
        assert_eq!(fs::read_dir(root.join("d")).unwrap().count(), 206);
        // A directory the layer only changed keeps its times.
        assert_eq!(fs::metadata(root.join("d")).unwrap().mtime(), 1_000_000);
    }

    #[test]
    fn a_file_named_through_a_symlink_and_its_real_path_is_one_file() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let names: Vec<String> = (0..100).map(|i| format!("f{i}")).collect();
        let real: Vec<String> = names.iter().map(|name| format!("real/{name}")).collect();
        let link: Vec<String> = names.iter().map(|name| format!("link/{name}")).collect();
        let mut lower = vec![E::Dir("real"), E::Symlink("link", "real")];
        lower.extend(real.iter().map(|path| E::File(path, "lower")));
        lower.push(E::File("real/gone", "lower"));
        apply(root, &lower).unwrap();

        // Each file twice, through the real path and through the symlink, in turn first.
        let mut upper = Vec::new();
        for i in 0..names.len() {
            let (first, second) = if i % 2 == 0 {
                (&real[i], &link[i])
            } else {
                (&link[i], &real[i])
            };
            upper.extend([E::File(first, "first"), E::File(second, "second")]);
        }
        // A file of this layer, then a whiteout of it through the symlink: the same file,
        // which a whiteout of its own layer spares, however it is spelled.
        upper.extend([E::File("real/kept", "upper"), E::File("link/.wh.kept", "")]);
        // A lower file whited out through the symlink, then written through the real path.
        upper.extend([E::File("link/.wh.gone", ""), E::File("real/gone", "upper")]);
        apply(root, &upper).unwrap();

        for path in &real {
            assert_eq!(read(&root.join(path)), "second", "{path}");
        }
        assert_eq!(read(&root.join("real/kept")), "upper");
        assert_eq!(read(&root.join("real/gone")), "upper");
        assert_eq!(fs::read_dir(root.join("real")).unwrap().count(), 102);
    }

    #[test]
    fn the_stream_is_read_to_its_end_past_the_archive() {
        let tmp = tempfile::tempdir().unwrap();
        let mut stream = tar_of(&[E::File("f", "x")]);
        stream.extend_from_slice(&[0u8; 4096]);
        let applied = apply_stream(tmp.path(), &stream).unwrap();
        assert_eq!(applied.bytes, stream.len() as u64);
        assert_eq!(applied.entries, 1);
    }

    #[test]
    fn failures_that_come_of_the_stream_ending_early_are_marked() {
        let stream = tar_of(&[E::File("f", &"x".repeat(3000)), E::File("g", "y")]);
        let mut bad_header = stream.clone();
        bad_header[512 + 3072 + 148] ^= 1;
        for (cut, marked) in [
            (&stream[..100], true),
            (&stream[..1000], true),
            (&stream[..512 + 3072 + 300], true),
            (&bad_header[..], false),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let err = apply_stream(tmp.path(), cut).unwrap_err();
            assert_eq!(err.is::<CutShort>(), marked, "{} bytes: {err:#}", cut.len());
        }
    }
}
