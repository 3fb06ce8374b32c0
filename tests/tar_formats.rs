//! The tree a layer makes is the one the engines make from it: every archive of the tar
//! reader's comparison with Go (other projects' test data, GNU tar's and bsdtar's formats,
//! the generated corpus), wrapped as a one-layer image, unpacks in every mode to the tree
//! umoci makes of it (Go's reader too), or bsdtar where umoci refuses the type (old GNU
//! sparse, contiguous files, global headers) or would write a sparse file densely; and fails
//! where they fail.
//! Sparse files keep their holes everywhere: DEST, both snapshotters, every mode.

mod common;

#[path = "../crates/tar/tests/common/corpus.rs"]
#[allow(dead_code)]
mod corpus;
#[path = "../crates/tar/tests/common/oracle.rs"]
#[allow(dead_code)]
mod oracle;
#[path = "../crates/tar/tests/common/view.rs"]
#[allow(dead_code)]
mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};

use serde_json::Value;

use common::*;

/// What strata and the reference must agree on for one path: not owners (the umoci test
/// covers them) nor the times of directories the layer does not name.
fn comparable(node: &Node) -> String {
    let dir = node.kind == Kind::Dir;
    let user_xattrs: Vec<_> = node
        .xattrs
        .iter()
        // umoci 0.4.7 reads xattrs from Go's deprecated `Xattrs`, which drops empty values;
        // containerd and moby read `PAXRecords`, which keeps them, as strata does.
        .filter(|(name, value)| {
            name.starts_with("user.") && *name != ROOTLESS_XATTR && !value.is_empty()
        })
        .collect();
    format!(
        "{:?} {:o} size={:?} hash={:?} target={:?} nlink={} mtime={:?} xattrs={user_xattrs:?}",
        node.kind,
        node.mode,
        (!dir).then_some(node.size),
        node.hash,
        node.target,
        node.nlink,
        (!dir).then_some(node.mtime.0),
    )
}

fn differences(ours: &Tree, theirs: &Tree) -> Vec<String> {
    let describe = |tree: &Tree| -> BTreeMap<String, String> {
        tree.iter()
            .filter(|(path, _)| *path != ".")
            .map(|(path, node)| (path.clone(), comparable(node)))
            .collect()
    };
    let (ours, theirs) = (describe(ours), describe(theirs));
    let paths: BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
    paths
        .into_iter()
        .filter(|path| ours.get(*path) != theirs.get(*path))
        .map(|path| {
            format!(
                "{path}:\n  strata    {:?}\n  reference {:?}",
                ours.get(path),
                theirs.get(path)
            )
        })
        .collect()
}

/// The largest size an entry of `view` declares, and whether umoci cannot be the reference:
/// it refuses old GNU sparse files, contiguous files and global PAX headers (which Go yields
/// and containerd skips), and writes sparse files densely.
fn traits(view: &Value) -> (i64, bool) {
    let entries = view["entries"].as_array().unwrap();
    let largest = entries
        .iter()
        .filter_map(|e| e["size"].as_i64())
        .max()
        .unwrap_or(0);
    let not_umoci = entries
        .iter()
        .any(|e| matches!(e["kind"].as_u64(), Some(55 | 83 | 103)) || !e["holes"].is_null());
    (largest, not_umoci)
}

/// Types strata leaves out (devices, and what no engine creates): the trees differ there by
/// design, checked on their own below.
fn has_types_strata_skips(view: &Value) -> bool {
    let created = [b'0', b'1', b'2', b'5', b'6', b'7', b'S', b'g'].map(u64::from);
    view["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| !created.contains(&e["kind"].as_u64().unwrap()))
}

/// Unpacks `layer` with the reference tool, umoci or else bsdtar (GNU tar fails on sparse
/// files it did not write), into a new directory; its error if it fails.
fn reference(
    env: &TestEnv,
    name: &str,
    layer: &[u8],
    image: &str,
    bsdtar: bool,
) -> Result<Tree, String> {
    let dir = env.path().join(format!("reference-{name}"));
    let out = if bsdtar {
        env.mkdir(&format!("reference-{name}"));
        let tar = env.path().join(format!("{name}.tar"));
        fs::write(&tar, layer).unwrap();
        env.own(&tar);
        run(env
            .command("bsdtar")
            .args(["-x", "-p", "--no-same-owner", "-f"])
            .arg(&tar)
            .arg("-C")
            .arg(&dir))
    } else {
        run(env
            .command("umoci")
            .args(["raw", "unpack", "--rootless", "--image", image])
            .arg(&dir))
    };
    match out.status.success() {
        true => Ok(Tree::scan(&dir)),
        // The last line, past umoci's progress output.
        false => Err(out
            .stderr
            .trim()
            .rsplit(['\r', '\n'])
            .next()
            .unwrap_or_default()
            .to_owned()),
    }
}

#[test]
fn every_archive_unpacks_as_the_engines_unpack_it() {
    if std::process::Command::new("umoci")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(std::env::var_os("CI").is_none(), "CI must have umoci");
        eprintln!("skipped: needs umoci");
        return;
    }
    let env = TestEnv::new();
    let tools = env.mkdir("tools");
    let mut archives: Vec<(String, Vec<u8>)> = corpus::generated();
    archives.extend(corpus::written_by_tools(&tools));
    for path in corpus::test_data() {
        archives.push((
            path.file_name().unwrap().to_string_lossy().into_owned(),
            fs::read(&path).unwrap(),
        ));
    }
    let mut oracle = oracle::Oracle::start();
    let (mut compared, mut refused) = (0, 0);
    let mut found = Vec::new();
    for (i, (name, bytes)) in archives.iter().enumerate() {
        let go = oracle.view(bytes);
        let go_failed = !go["error"].as_str().unwrap().is_empty();
        let (largest, not_umoci) = traits(&go);
        // Over 1 GiB a dense reference would fill the disk; the large sparse files are
        // checked on their own below.
        if (!go_failed && has_types_strata_skips(&go)) || largest > 1 << 30 {
            continue;
        }
        let layout = env.path().join(format!("image-{i}"));
        Image::new()
            .layer(Layer::from_tar(bytes))
            .tag("t")
            .write(&layout);
        env.own(&layout);
        let image = format!("{}:t", layout.display());
        let reference = match go_failed {
            true => Err("Go's reader fails".to_owned()),
            false => reference(&env, &i.to_string(), bytes, &image, not_umoci),
        };
        let outcomes = [Mode::Store, Mode::NoStore, Mode::SideBySide, Mode::Store].map(|mode| {
            let dest = fresh_dest(&env, mode);
            let out = run_unpack(&env, mode, &[], image.as_ref(), &dest);
            (mode, out.status.success().then(|| Tree::scan(&dest)), out)
        });
        match reference {
            // What Go refuses (or the engines cannot apply), strata refuses in every mode,
            // in one short line.
            Err(why) => {
                for (mode, tree, out) in &outcomes {
                    let line = out.stderr.lines().last().unwrap_or_default();
                    if tree.is_some() || !line.starts_with("strata: layer 1/1") || line.len() > 1024
                    {
                        found.push(format!(
                            "{name}: {mode:?}: the reference failed ({why}), strata: {out}"
                        ));
                    }
                }
                refused += 1;
            }
            Ok(reference) => {
                for (mode, tree, out) in &outcomes {
                    let Some(tree) = tree else {
                        found.push(format!(
                            "{name}: {mode:?}: the reference succeeded, strata: {out}"
                        ));
                        continue;
                    };
                    let found_here = differences(tree, &reference);
                    found.extend(
                        found_here
                            .into_iter()
                            .map(|d| format!("{name}: {mode:?}: {d}")),
                    );
                }
                compared += 1;
            }
        }
    }
    assert!(
        found.is_empty(),
        "{} differences:\n{}",
        found.len(),
        found.join("\n")
    );
    assert!(
        compared > 60 && refused > 20,
        "{compared} compared, {refused} refused"
    );
}

/// One layer's tar stream from parts (headers with their data, and sparse files), ended.
fn stream(parts: &[Vec<u8>]) -> Vec<u8> {
    [parts.concat(), corpus::END.to_vec()].concat()
}

fn image_of(env: &TestEnv, name: &str, tar: Vec<u8>) -> String {
    let layout = env.path().join(name);
    Image::new()
        .layer(Layer::from_tar(tar))
        .tag("t")
        .write(&layout);
    env.own(&layout);
    format!("{}:t", layout.display())
}

#[test]
fn sparse_files_keep_their_holes_in_every_mode() {
    const SIZE: u64 = 60_000_000_000;
    let env = TestEnv::new();
    let map_1_0 = b"3\n1048576\n4\n59999999996\n4\n60000000000\n0\n";
    let mut data_1_0 = map_1_0.to_vec();
    data_1_0.resize(512, 0);
    data_1_0.extend_from_slice(b"headtail");
    let pax_1_0 = corpus::pax(
        b'x',
        &[
            ("GNU.sparse.major", b"1"),
            ("GNU.sparse.minor", b"0"),
            ("GNU.sparse.realsize", b"60000000000"),
            ("GNU.sparse.name", b"pax-1.0"),
        ],
    );
    let tar = stream(&[
        corpus::gnu_sparse("old-gnu", SIZE, &[(1 << 20, 4), (SIZE - 4, 4)], b"headtail"),
        pax_1_0.bytes(),
        corpus::Raw::file("GNUSparseFile.0/pax-1.0", &data_1_0).bytes(),
    ]);
    assert!(tar.len() < 5000, "a layer of {} bytes", tar.len());
    let image = image_of(&env, "sparse", tar);
    let [store, no_store] = unpack_both(&env, &image);
    let mut copies: Vec<_> = [&store.dest, &no_store.dest]
        .iter()
        .flat_map(|dest| ["old-gnu", "pax-1.0"].map(|name| dest.join(name)))
        .collect();
    for name in ["old-gnu", "pax-1.0"] {
        copies.extend(
            fs::read_dir(env.store().join("snapshots"))
                .unwrap()
                .filter_map(|snapshot| {
                    let copy = snapshot.unwrap().path().join("fs").join(name);
                    copy.exists().then_some(copy)
                }),
        );
    }
    assert!(copies.len() >= 6, "{copies:?}");
    for copy in copies {
        let meta = fs::metadata(&copy).unwrap();
        assert_eq!(meta.len(), SIZE, "{}", copy.display());
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "{}: {} blocks",
            copy.display(),
            meta.blocks()
        );
        let file = fs::File::open(&copy).unwrap();
        let mut buf = [0xff; 8];
        for (offset, expected) in [
            (0, [0; 8]),
            ((1 << 20) - 2, *b"\0\0head\0\0"),
            (SIZE - 8, *b"\0\0\0\0tail"),
        ] {
            file.read_exact_at(&mut buf, offset).unwrap();
            assert_eq!(buf, expected, "{} at {offset}", copy.display());
        }
    }
}

#[test]
fn entries_strata_does_not_create_leave_no_trace() {
    let env = TestEnv::new();
    let tar = corpus::archive(&[
        corpus::Raw::new(b'X', b"solaris/dir/x").data(&corpus::record("path", b"elsewhere")),
        corpus::Raw::new(b'D', b"dumpdir/sub/")
            .gnu()
            .data(b"Yfile\0\0"),
        corpus::Raw::new(b'Z', b"unknown/z").data(b"zz"),
        corpus::Raw::new(b'3', b"devices/null").set(329..345, b"0000001\x000000003\x00"),
        corpus::Raw::file("after", b"after"),
    ]);
    let image = image_of(&env, "skipped", tar);
    let [store, _] = unpack_both(&env, &image);
    let paths: Vec<_> = store.tree.keys().collect();
    assert_eq!(paths, [".", "after"]);
    let reasons: Vec<_> = store.report["layers"][0]["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|skip| {
            format!(
                "{} {}",
                skip["path"].as_str().unwrap(),
                skip["reason"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "solaris/dir/x unsupported entry type 'X'",
            "dumpdir/sub unsupported entry type 'D'",
            "unknown/z unsupported entry type 'Z'",
            "devices/null device node",
        ]
    );
}

#[test]
fn headers_mean_what_they_mean_to_go() {
    let env = TestEnv::new();
    let tar = corpus::archive(&[
        // A directory's size field announces no data: the next header follows at once.
        corpus::Raw::new(b'5', b"dir/").size_field(b"00000001000\0"),
        corpus::Raw::file("dir/next", b"not swallowed"),
        // Of two records for one key, the last counts.
        corpus::pax(b'x', &[("path", b"etc/sudoers.d/x"), ("path", b"harmless")]),
        corpus::Raw::file("f", b"where does this go?"),
        // POSIX magic with GNU's version: the prefix is part of the name.
        corpus::Raw::file("name", b"p")
            .set(257..265, b"ustar\0 \0")
            .prefix(b"kept/prefix"),
        // A V7 directory: type NUL and a trailing slash.
        corpus::Raw::new(0, b"v7dir/").v7(),
        // A GNU long name ends at its first NUL; the last of two counts.
        corpus::gnu_long(b'L', b"first"),
        corpus::gnu_long(b'L', b"long/name\0ignored"),
        corpus::Raw::file("short", b"l").gnu(),
    ]);
    let image = image_of(&env, "headers", tar);
    let [store, _] = unpack_both(&env, &image);
    let tree = &store.tree;
    assert_eq!(tree.node("dir/next").size, 13);
    assert_eq!(tree.node("harmless").size, 19);
    assert!(!tree.contains_key("etc") && !tree.contains_key("f"));
    assert_eq!(tree.node("kept/prefix/name").kind, Kind::File);
    assert_eq!(tree.node("v7dir").kind, Kind::Dir);
    assert_eq!(tree.node("long/name").size, 1);
    assert!(!tree.contains_key("first") && !tree.contains_key("short"));
}

#[test]
fn oversized_headers_and_names_fail_in_one_short_line() {
    let env = TestEnv::new();
    let over = vec![b'c'; (1 << 20) + 1];
    let cases = [
        (
            "pax",
            corpus::archive(&[
                corpus::pax(b'x', &[("comment", &over)]),
                corpus::Raw::file("f", b"x"),
            ]),
            "a PAX header is over the limit of 1 MiB",
        ),
        (
            "gnu",
            corpus::archive(&[
                corpus::gnu_long(b'L', &over),
                corpus::Raw::file("f", b"x").gnu(),
            ]),
            "a GNU long name is over the limit of 1 MiB",
        ),
        // Within the limit, but refused: the name quoted is cut short.
        (
            "long",
            corpus::archive(&[
                corpus::gnu_long(b'L', &[&vec![b'n'; 900_000][..], b"/../x"].concat()),
                corpus::Raw::file("f", b"x").gnu(),
            ]),
            "'..'",
        ),
    ];
    for (name, tar, expected) in cases {
        let image = image_of(&env, name, tar);
        for line in fail_both(&env, &image) {
            assert!(line.contains(expected), "{name}: {line}");
            assert!(
                line.len() < 1024,
                "{name}: an error of {} bytes",
                line.len()
            );
        }
    }
}
