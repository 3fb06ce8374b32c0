//! Archives to compare with Go: other projects' test data; archives GNU tar and bsdtar write
//! in each of their formats; and a generated corpus, one or more per class of header where
//! readers disagree, in every header format, built byte by byte so that nothing a writer
//! would normalise away is lost.

use std::fs;
use std::os::unix::fs::{FileExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A header block and the data after it, each field set as raw bytes.
#[derive(Clone)]
pub struct Raw {
    block: [u8; 512],
    data: Vec<u8>,
    /// Write the checksum over signed bytes, as some old tars did.
    signed_checksum: bool,
}

const MAGIC: std::ops::Range<usize> = 257..265;

impl Raw {
    /// A ustar entry of type `kind`, mode 0644, owner 0:0, at time 1,000,000,000.
    pub fn new(kind: u8, name: &[u8]) -> Raw {
        let mut raw = Raw {
            block: [0; 512],
            data: Vec::new(),
            signed_checksum: false,
        };
        raw.block[156] = kind;
        raw.set(0..100, name)
            .set(100..108, b"0000644\0")
            .set(108..116, b"0000000\0")
            .set(116..124, b"0000000\0")
            .set(136..148, b"07346545000\0")
            .set(MAGIC, b"ustar\x0000")
            .set(124..136, b"00000000000\0")
    }

    pub fn file(name: &str, data: &[u8]) -> Raw {
        Raw::new(b'0', name.as_bytes()).data(data)
    }

    /// Overwrites `range` with `bytes`, NUL-padded.
    pub fn set(mut self, range: std::ops::Range<usize>, bytes: &[u8]) -> Raw {
        assert!(bytes.len() <= range.len(), "{range:?} too small");
        self.block[range.clone()].fill(0);
        self.block[range.start..range.start + bytes.len()].copy_from_slice(bytes);
        self
    }

    /// Data after the header, and the size field saying how much.
    pub fn data(mut self, data: &[u8]) -> Raw {
        self.data = data.to_vec();
        self.set(124..136, format!("{:011o}\0", data.len()).as_bytes())
    }

    /// Data after the header that the size field does not announce.
    pub fn raw_data(mut self, data: &[u8]) -> Raw {
        self.data = data.to_vec();
        self
    }

    pub fn size_field(self, size: &[u8]) -> Raw {
        self.set(124..136, size)
    }

    pub fn link(self, target: &[u8]) -> Raw {
        self.set(157..257, target)
    }

    pub fn prefix(self, prefix: &[u8]) -> Raw {
        self.set(345..500, prefix)
    }

    pub fn gnu(self) -> Raw {
        self.set(MAGIC, b"ustar  \0")
    }

    pub fn v7(self) -> Raw {
        self.set(MAGIC, b"")
    }

    pub fn star(self) -> Raw {
        self.set(508..512, b"tar\0")
    }

    pub fn signed_checksum(mut self) -> Raw {
        self.signed_checksum = true;
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut block = self.block;
        block[148..156].fill(b' ');
        let sum: i64 = if self.signed_checksum {
            block.iter().map(|&c| i64::from(c as i8)).sum()
        } else {
            block.iter().map(|&c| i64::from(c)).sum()
        };
        block[148..156].copy_from_slice(format!("{:06o}\0 ", sum & 0o777777).as_bytes());
        let mut out = block.to_vec();
        out.extend_from_slice(&self.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }
}

/// Writes a header block's checksum anew.
pub fn reseal(block: &mut [u8]) {
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|&c| u32::from(c)).sum();
    block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// A PAX record, its length right.
pub fn record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = [b" ", key.as_bytes(), b"=", value, b"\n"].concat();
    let mut length = body.len() + 1;
    while (length.to_string().len() + body.len()) != length {
        length += 1;
    }
    [length.to_string().as_bytes(), &body].concat()
}

/// A PAX extended header (`x`, or `g` for a global one) holding `records`.
pub fn pax(kind: u8, records: &[(&str, &[u8])]) -> Raw {
    let data: Vec<u8> = records
        .iter()
        .flat_map(|(key, value)| record(key, value))
        .collect();
    Raw::new(kind, b"PaxHeaders/x").data(&data)
}

/// A GNU long-name (`L`) or long-link (`K`) header.
pub fn gnu_long(kind: u8, name: &[u8]) -> Raw {
    Raw::new(kind, b"././@LongLink").gnu().data(name)
}

/// The end of an archive: two zero blocks.
pub const END: [u8; 1024] = [0; 1024];

pub fn archive(parts: &[Raw]) -> Vec<u8> {
    let mut out: Vec<u8> = parts.iter().flat_map(Raw::bytes).collect();
    out.extend_from_slice(&END);
    out
}

/// An old GNU sparse header (`S`) of a file of `real_size` bytes, whose map is `map` and a
/// last empty region at the end, as GNU tar writes it (and needs it): four entries in the
/// header, the rest in extension blocks.
pub fn gnu_sparse(name: &str, real_size: u64, map: &[(u64, u64)], data: &[u8]) -> Vec<u8> {
    let map = [map, &[(real_size, 0)]].concat();
    let mut raw = Raw::new(b'S', name.as_bytes()).gnu().data(data);
    raw = raw.set(483..495, format!("{real_size:012o}").as_bytes());
    let entry = |(offset, length): (u64, u64)| format!("{offset:012o}{length:012o}").into_bytes();
    for (i, &pair) in map.iter().take(4).enumerate() {
        raw = raw.set(386 + 24 * i..386 + 24 * (i + 1), &entry(pair));
    }
    let rest: Vec<_> = map.iter().skip(4).collect();
    if !rest.is_empty() {
        raw = raw.set(482..483, b"\x01");
    }
    let mut bytes = raw.bytes();
    let header_len = 512;
    let mut extensions = Vec::new();
    let chunks: Vec<_> = rest.chunks(21).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let mut block = [0u8; 512];
        for (j, &&pair) in chunk.iter().enumerate() {
            block[24 * j..24 * (j + 1)].copy_from_slice(&entry(pair));
        }
        block[504] = u8::from(i + 1 < chunks.len());
        extensions.extend_from_slice(&block);
    }
    bytes.splice(header_len..header_len, extensions);
    bytes
}

/// The generated corpus: (what it shows, archive).
pub fn generated() -> Vec<(String, Vec<u8>)> {
    let mut corpus: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>| corpus.push((name.to_string(), bytes));
    let after = Raw::file("after", b"the entry after");

    // Formats, each with a name prefix where it has one.
    add(
        "v7",
        archive(&[Raw::file("v7-file", b"v7").v7(), after.clone().v7()]),
    );
    add(
        "ustar",
        archive(&[
            Raw::file("name", b"u").prefix(b"some/prefix"),
            after.clone(),
        ]),
    );
    add(
        "gnu",
        archive(&[Raw::file("gnu-file", b"g").gnu(), after.clone().gnu()]),
    );
    add(
        "star",
        archive(&[
            Raw::file("name", b"s").star().prefix(b"star/prefix"),
            after.clone(),
        ]),
    );
    add(
        "pax",
        archive(&[
            pax(b'x', &[("path", b"pax/path"), ("mtime", b"1.5")]),
            Raw::file("short", b"p"),
            after.clone(),
        ]),
    );
    // Class 5: POSIX magic with GNU's version keeps its prefix.
    add(
        "ustar-magic-gnu-version",
        archive(&[Raw::file("name", b"x")
            .set(257..265, b"ustar\0 \0")
            .prefix(b"kept/prefix")]),
    );
    add(
        "gnu-pre-go-1.8-prefix",
        archive(&[Raw::file("name", b"x").gnu().prefix(b"not/a/time")]),
    );
    add(
        "v7-directory",
        archive(&[
            Raw::new(0, b"old-dir/").v7(),
            Raw::new(0, b"old-file").v7().data(b"f"),
        ]),
    );
    add(
        "nul-typeflag-ustar",
        archive(&[Raw::new(0, b"dir/"), Raw::new(0, b"file").data(b"f")]),
    );

    // Class 3: header-only types with a size field read no data.
    for kind in [b'1', b'2', b'3', b'4', b'5', b'6'] {
        let entry = Raw::new(kind, b"header-only")
            .link(b"target")
            .size_field(b"00000001000\0");
        add(
            &format!("header-only-{}", kind as char),
            archive(&[entry, after.clone()]),
        );
    }
    add(
        "header-only-pax-size",
        archive(&[
            pax(b'x', &[("size", b"4096")]),
            Raw::new(b'5', b"dir/"),
            after.clone(),
        ]),
    );
    add(
        "regular-with-size",
        archive(&[Raw::file("data", &[7; 700]), after.clone()]),
    );

    // Class 4: duplicate records; the last wins.
    add(
        "duplicate-pax-path",
        archive(&[
            pax(b'x', &[("path", b"etc/sudoers.d/x"), ("path", b"harmless")]),
            Raw::file("f", b"x"),
        ]),
    );
    add(
        "duplicate-pax-size",
        archive(&[
            pax(b'x', &[("size", b"1"), ("size", b"3")]),
            Raw::file("f", b"abc"),
            after.clone(),
        ]),
    );
    add(
        "empty-pax-value",
        archive(&[
            pax(
                b'x',
                &[("path", b""), ("uid", b""), ("SCHILY.xattr.user.e", b"")],
            ),
            Raw::file("kept", b"x"),
        ]),
    );

    // Class 6: other types, with data; Solaris X is no PAX header to Go.
    add(
        "solaris-x",
        archive(&[
            Raw::new(b'X', b"x-header").data(&record("path", b"renamed")),
            Raw::file("f", b"x"),
        ]),
    );
    add(
        "gnu-dumpdir",
        archive(&[
            Raw::new(b'D', b"dir/").gnu().data(b"Yfile\0\0"),
            after.clone(),
        ]),
    );
    add(
        "contiguous",
        archive(&[Raw::new(b'7', b"cont").data(b"contiguous")]),
    );
    add(
        "unknown-type",
        archive(&[Raw::new(b'Z', b"z").data(b"zzz"), after.clone()]),
    );

    // Class 7: what Go reads where others refuse.
    add(
        "nul-in-gnu-long-name",
        archive(&[
            gnu_long(b'L', b"long/name\0ignored"),
            Raw::file("short", b"x").gnu(),
        ]),
    );
    add(
        "repeated-gnu-long-names",
        archive(&[
            gnu_long(b'L', b"first"),
            gnu_long(b'L', b"second"),
            gnu_long(b'K', b"l1"),
            gnu_long(b'K', b"l2"),
            Raw::new(b'2', b"s").gnu(),
        ]),
    );
    add(
        "repeated-pax-headers",
        archive(&[
            pax(b'x', &[("path", b"first"), ("uid", b"5")]),
            pax(b'x', &[("path", b"second")]),
            Raw::file("f", b"x"),
        ]),
    );
    add(
        "gnu-long-name-over-pax-path",
        archive(&[
            pax(b'x', &[("path", b"pax-name"), ("linkpath", b"pax-link")]),
            gnu_long(b'L', b"gnu-name"),
            Raw::new(b'2', b"s").gnu(),
        ]),
    );
    add(
        "empty-numeric-fields",
        archive(&[Raw::file("f", b"x")
            .set(108..116, b"")
            .set(116..124, b"        ")
            .set(136..148, b"")]),
    );
    add(
        "pax-header-at-the-end",
        archive(&[Raw::file("f", b"x"), pax(b'x', &[("path", b"nothing")])]),
    );
    add(
        "gnu-long-name-at-the-end",
        archive(&[Raw::file("f", b"x"), gnu_long(b'L', b"nothing")]),
    );
    add(
        "signed-checksum",
        archive(&[Raw::file("f", b"x")
            .set(265..297, "\u{e9}l\u{e8}ve".as_bytes())
            .signed_checksum()]),
    );
    add(
        "global-header",
        archive(&[
            pax(b'g', &[("path", b"global"), ("mtime", b"5")]),
            Raw::file("f", b"x"),
        ]),
    );
    add(
        "global-header-bad-uid",
        archive(&[pax(b'g', &[("uid", b"x")]), Raw::file("f", b"x")]),
    );

    // Numbers: base-256, negative, overflowing, malformed.
    add(
        "base-256-size-and-ids",
        archive(&[Raw::file("f", b"abc")
            .size_field(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3])
            .set(108..116, &[0x80, 0, 0, 0, 0x0a, 0x4b, 0x56, 0x50])
            .set(116..124, &[0xff; 8])]),
    );
    add(
        "negative-mtime",
        archive(&[Raw::file("f", b"x").set(136..148, &[0xff; 12])]),
    );
    add(
        "pax-negative-mtime",
        archive(&[pax(b'x', &[("mtime", b"-1.25")]), Raw::file("f", b"x")]),
    );
    add(
        "pax-huge-uid",
        archive(&[
            pax(b'x', &[("uid", b"172761424"), ("gid", b"-3")]),
            Raw::file("f", b"x"),
        ]),
    );
    add(
        "bad-octal",
        archive(&[Raw::file("f", b"x").set(100..108, b"0006 44\0")]),
    );
    add(
        "bad-devmajor",
        archive(&[Raw::file("f", b"x").set(329..337, b"xyz")]),
    );
    add(
        "bad-devmajor-v7",
        archive(&[Raw::file("f", b"x").set(329..337, b"xyz").v7()]),
    );
    add(
        "bad-pax-mtime",
        archive(&[pax(b'x', &[("mtime", b"1.x")]), Raw::file("f", b"x")]),
    );
    add(
        "bad-pax-atime",
        archive(&[pax(b'x', &[("atime", b"soon")]), Raw::file("f", b"x")]),
    );
    add(
        "negative-pax-size",
        archive(&[pax(b'x', &[("size", b"-1")]), Raw::file("f", b"x")]),
    );
    add("bad-checksum", {
        let mut bytes = archive(&[Raw::file("f", b"x")]);
        bytes[0] ^= 1;
        bytes
    });

    // Ends and truncations.
    add(
        "zero-block-then-header",
        [
            Raw::file("f", b"x").bytes(),
            vec![0; 512],
            Raw::file("g", b"y").bytes(),
        ]
        .concat(),
    );
    add(
        "one-zero-block",
        [Raw::file("f", b"x").bytes(), vec![0; 512]].concat(),
    );
    add("no-end-blocks", Raw::file("f", b"x").bytes());
    add(
        "truncated-padding",
        Raw::file("f", b"x").bytes()[..600].to_vec(),
    );
    add(
        "truncated-data",
        Raw::file("f", &[1; 700]).bytes()[..900].to_vec(),
    );
    add(
        "truncated-header",
        Raw::file("f", b"x").bytes()[..300].to_vec(),
    );
    add(
        "trailing-garbage",
        [archive(&[Raw::file("f", b"x")]), b"garbage".to_vec()].concat(),
    );

    // xattrs.
    add(
        "xattrs",
        archive(&[
            pax(
                b'x',
                &[
                    ("SCHILY.xattr.user.a", b"1"),
                    (
                        "SCHILY.xattr.security.capability",
                        &[
                            1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                        ],
                    ),
                    ("LIBARCHIVE.xattr.user.b", b"Mg"),
                ],
            ),
            Raw::file("f", b"x"),
        ]),
    );

    // Class 8: limits.
    add(
        "pax-header-over-1-MiB",
        archive(&[
            pax(b'x', &[("comment", &vec![b'c'; 1 << 20])]),
            Raw::file("f", b"x"),
        ]),
    );
    add("pax-header-at-1-MiB", {
        let value = vec![b'c'; (1 << 20) - 17];
        let header = pax(b'x', &[("comment", &value)]);
        assert_eq!(header.data.len(), 1 << 20);
        archive(&[header, Raw::file("f", b"x")])
    });
    add(
        "gnu-long-name-over-1-MiB",
        archive(&[
            gnu_long(b'L', &vec![b'n'; (1 << 20) + 1]),
            Raw::file("f", b"x").gnu(),
        ]),
    );

    // Classes 1 and 2: sparse files.
    let data = b"0123456789abcdef";
    add(
        "gnu-sparse",
        gnu_sparse(
            "sparse",
            1 << 30,
            &[(0, 4), (1 << 20, 4), (1 << 29, 8)],
            data,
        ),
    );
    add(
        "gnu-sparse-60-GB",
        gnu_sparse("big", 60_000_000_000, &[(59_999_999_984, 16)], data),
    );
    let many: Vec<(u64, u64)> = (0..60).map(|i| (i * 100, 1)).collect();
    add(
        "gnu-sparse-extension-blocks",
        gnu_sparse("many", 10_000, &many, &[b'm'; 60]),
    );
    add(
        "gnu-sparse-missing-data",
        gnu_sparse("short", 100, &[(0, 10), (50, 10)], b"only ten b"),
    );
    add(
        "gnu-sparse-unreferenced-data",
        gnu_sparse("long", 100, &[(0, 4)], b"more than four"),
    );
    add(
        "gnu-sparse-overlapping",
        gnu_sparse("overlap", 100, &[(0, 10), (5, 10)], &[1; 20]),
    );
    add(
        "gnu-sparse-past-the-end",
        gnu_sparse("past", 10, &[(5, 10)], &[1; 10]),
    );
    add("gnu-sparse-not-gnu", {
        let mut bytes = gnu_sparse("ustar-s", 10, &[(0, 1)], b"x");
        bytes[257..265].copy_from_slice(b"ustar\x0000");
        reseal(&mut bytes[..512]);
        [bytes, END.to_vec()].concat()
    });
    let pax_sparse = |records: &[(&str, &[u8])], data: &[u8]| {
        archive(&[
            pax(b'x', records),
            Raw::file("GNUSparseFile.0/f", data),
            after.clone(),
        ])
    };
    add(
        "pax-sparse-0.0",
        pax_sparse(
            &[
                ("GNU.sparse.size", b"1000"),
                ("GNU.sparse.numblocks", b"3"),
                ("GNU.sparse.offset", b"10"),
                ("GNU.sparse.numbytes", b"3"),
                ("GNU.sparse.offset", b"900"),
                ("GNU.sparse.numbytes", b"4"),
                ("GNU.sparse.offset", b"1000"),
                ("GNU.sparse.numbytes", b"0"),
                ("GNU.sparse.name", b"real/name"),
            ],
            b"abcdefg",
        ),
    );
    add(
        "pax-sparse-0.0-out-of-order",
        pax_sparse(
            &[
                ("GNU.sparse.numblocks", b"1"),
                ("GNU.sparse.numbytes", b"3"),
                ("GNU.sparse.offset", b"10"),
            ],
            b"abc",
        ),
    );
    add(
        "pax-sparse-0.1",
        pax_sparse(
            &[
                ("GNU.sparse.size", b"1000"),
                ("GNU.sparse.numblocks", b"3"),
                ("GNU.sparse.map", b"10,3,900,4,1000,0"),
                ("GNU.sparse.name", b"real/name"),
            ],
            b"abcdefg",
        ),
    );
    add(
        "pax-sparse-0.1-count-mismatch",
        pax_sparse(
            &[
                ("GNU.sparse.size", b"1000"),
                ("GNU.sparse.numblocks", b"3"),
                ("GNU.sparse.map", b"10,3,900,4"),
            ],
            b"abcdefg",
        ),
    );
    add(
        "pax-sparse-0.1-no-count",
        pax_sparse(
            &[("GNU.sparse.size", b"1000"), ("GNU.sparse.map", b"10,3")],
            b"abc",
        ),
    );
    let map_1_0 = |text: &[u8], data: &[u8]| {
        let mut section = text.to_vec();
        section.resize(text.len().div_ceil(512) * 512, 0);
        section.extend_from_slice(data);
        section
    };
    add(
        "pax-sparse-1.0",
        pax_sparse(
            &[
                ("GNU.sparse.major", b"1"),
                ("GNU.sparse.minor", b"0"),
                ("GNU.sparse.realsize", b"1000"),
                ("GNU.sparse.name", b"real/name"),
            ],
            &map_1_0(b"3\n10\n3\n900\n4\n1000\n0\n", b"abcdefg"),
        ),
    );
    add(
        "pax-sparse-1.0-60-GB",
        pax_sparse(
            &[
                ("GNU.sparse.major", b"1"),
                ("GNU.sparse.minor", b"0"),
                ("GNU.sparse.realsize", b"60000000000"),
                ("GNU.sparse.name", b"big"),
            ],
            &map_1_0(b"2\n59999999996\n4\n60000000000\n0\n", b"tail"),
        ),
    );
    add(
        "pax-sparse-1.0-bad-count",
        pax_sparse(
            &[
                ("GNU.sparse.major", b"1"),
                ("GNU.sparse.minor", b"0"),
                ("GNU.sparse.realsize", b"10"),
            ],
            &map_1_0(b"x\n", b""),
        ),
    );
    add(
        "pax-sparse-1.0-map-short",
        pax_sparse(
            &[
                ("GNU.sparse.major", b"1"),
                ("GNU.sparse.minor", b"0"),
                ("GNU.sparse.realsize", b"10"),
            ],
            b"5\n1\n1\n",
        ),
    );
    add(
        "pax-sparse-unknown-version",
        pax_sparse(
            &[
                ("GNU.sparse.major", b"2"),
                ("GNU.sparse.minor", b"0"),
                ("GNU.sparse.map", b"0,1"),
            ],
            b"x",
        ),
    );
    add(
        "pax-sparse-on-a-symlink",
        archive(&[
            pax(
                b'x',
                &[("GNU.sparse.numblocks", b"0"), ("GNU.sparse.map", b"")],
            ),
            Raw::new(b'2', b"s").link(b"t"),
        ]),
    );
    add(
        "pax-sparse-map-on-a-symlink",
        archive(&[
            pax(
                b'x',
                &[("GNU.sparse.numblocks", b"1"), ("GNU.sparse.map", b"0,1")],
            ),
            Raw::new(b'2', b"s").link(b"t"),
        ]),
    );
    corpus
}

/// Go's and Python's own test archives.
pub fn test_data() -> Vec<PathBuf> {
    let goroot = Command::new("go")
        .args(["env", "GOROOT"])
        .output()
        .expect("running go");
    let goroot = String::from_utf8(goroot.stdout).unwrap();
    let go = Path::new(goroot.trim()).join("src/archive/tar/testdata");
    let mut paths: Vec<PathBuf> = fs::read_dir(&go)
        .unwrap_or_else(|err| panic!("{}: {err}", go.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "tar"))
        .collect();
    assert!(paths.len() > 30, "Go's test archives: {paths:?}");
    let python = Command::new("python3")
        .args([
            "-c",
            "import test, os; print(os.path.dirname(test.__file__))",
        ])
        .output();
    if let Ok(output) = python {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        for name in [
            "testtar.tar",
            "archivetestdata/testtar.tar",
            "recursion.tar",
            "archivetestdata/recursion.tar",
        ] {
            if dir.join(name).is_file() {
                paths.push(dir.join(name));
            }
        }
    }
    paths.sort();
    paths
}

/// A tree with what writers encode differently: long names and link targets, a sparse
/// file, links, a FIFO, owners and modes.
fn sample_tree(root: &Path, long_names: bool) {
    fs::create_dir_all(root.join("dir/sub")).unwrap();
    fs::write(root.join("dir/file"), "contents\n").unwrap();
    fs::hard_link(root.join("dir/file"), root.join("dir/hardlink")).unwrap();
    symlink("file", root.join("dir/symlink")).unwrap();
    nix::unistd::mkfifo(
        &root.join("dir/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .ok();
    let sparse = fs::File::create(root.join("sparse")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    sparse.write_all_at(b"start", 0).unwrap();
    sparse.write_all_at(&[b'm'; 10000], 20 << 20).unwrap();
    sparse.write_all_at(b"end", (64 << 20) - 3).unwrap();
    if long_names {
        let long = root.join("l".repeat(120)).join("n".repeat(150));
        fs::create_dir_all(long.parent().unwrap()).unwrap();
        fs::write(&long, "long\n").unwrap();
        symlink("t".repeat(200), root.join("long-target")).unwrap();
    }
}

/// Archives of a sample tree (made in `scratch`) by GNU tar and bsdtar, in each of their
/// formats, sparse ones included.
pub fn written_by_tools(scratch: &Path) -> Vec<(String, Vec<u8>)> {
    let (short, long) = (scratch.join("short"), scratch.join("long"));
    sample_tree(&short, false);
    sample_tree(&long, true);
    let mut named = Vec::new();
    let mut make = |name: String, tool: &str, args: &[&str], tree: &Path| {
        let output = Command::new(tool)
            .args(args)
            .args(["-cf", "-", "-C"])
            .arg(tree)
            .arg(".")
            .output();
        let output = output.unwrap_or_else(|err| panic!("{tool}: {err}"));
        assert!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        named.push((name, output.stdout));
    };
    // (v7 has no FIFOs.)
    let v7 = ["--format", "v7", "--exclude", "./dir/fifo"];
    make("GNU tar --format=v7".into(), "tar", &v7, &short);
    make(
        "GNU tar --format=ustar".into(),
        "tar",
        &["--format", "ustar"],
        &short,
    );
    for format in ["oldgnu", "gnu", "posix"] {
        make(
            format!("GNU tar --format={format}"),
            "tar",
            &["--format", format],
            &long,
        );
    }
    make(
        "GNU tar --format=gnu --sparse".into(),
        "tar",
        &["--format=gnu", "--sparse"],
        &long,
    );
    for version in ["0.0", "0.1", "1.0"] {
        let args = ["--format=posix", "--sparse", "--sparse-version", version];
        make(
            format!("GNU tar --sparse-version={version}"),
            "tar",
            &args,
            &long,
        );
    }
    make("bsdtar --format=v7".into(), "bsdtar", &v7, &short);
    make(
        "bsdtar --format=ustar".into(),
        "bsdtar",
        &["--format", "ustar"],
        &short,
    );
    for format in ["pax", "gnutar"] {
        make(
            format!("bsdtar --format={format}"),
            "bsdtar",
            &["--format", format],
            &long,
        );
    }
    named
}
