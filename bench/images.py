"""Deterministic benchmark images for bench/run (Python standard library, gzip and zstd tools).

One *content model* is built in memory: six layers made of this machine's own files (Python's
library, headers, docs: thousands of small real files) plus seeded synthetic parts (large random
and compressible files, symlinks, hardlinks within and across layers, odd owners, setuid, sticky),
and later layers that whiteout files and directories, make a directory opaque, overwrite files
and change entry types. The same final tree is also written as one squashed layer, so the
1-layer and 6-layer images unpack to the same root filesystem. Each is written as an OCI layout
with gzip, zstd and uncompressed layers, and the expected final tree (kind, mode, owner, size,
SHA-256, symlink target, hardlink groups) is saved so bench/run can check what each tool made.

Nothing depends on the clock or on the network: tar headers have a fixed mtime, empty user and
group names, entries sorted by name, `gzip -n`. The cache key hashes this file, the preset and
the stat() of every host file used, so the same machine rebuilds only when its files changed.
"""

import concurrent.futures
import glob
import hashlib
import io
import json
import os
import random
import shutil
import stat
import subprocess
import tarfile

MTIME = 1_700_000_000
HOST_ROOT = "/"

# Per preset: the host trees of layers 1-3 (globs; missing ones are skipped, the filler makes
# up the entry count), the sizes of the big synthetic files, the scale of the synthetic parts.
PRESETS = {
    "full": {
        "host": [
            ["usr/lib/python3.*", "usr/share/perl", "usr/share/zoneinfo"],
            ["usr/include", "usr/share/i18n"],
            ["usr/share/doc"],
        ],
        "random_mib": 64,
        "log_mib": 128,
        "scale": 1.0,
        "min_entries": 15000,
        "startup_layers": 16,
    },
    "small": {
        "host": [["usr/share/zoneinfo"], [], []],
        "random_mib": 4,
        "log_mib": 8,
        "scale": 0.25,
        "min_entries": 2500,
        "startup_layers": 4,
    },
}

COMPRESSIONS = {
    # name: (media type, command that compresses stdin to stdout, or None)
    "gzip": ("application/vnd.oci.image.layer.v1.tar+gzip", ["gzip", "-6", "-n", "-c"]),
    "zstd": ("application/vnd.oci.image.layer.v1.tar+zstd", ["zstd", "-3", "-q", "-c"]),
    "none": ("application/vnd.oci.image.layer.v1.tar", None),
}


class Node:
    """One entry of a layer or of the tree. Regular files that are the same Node object are
    hardlinks of each other. kind: d dir, f file, l symlink, h hardlink entry (layer only),
    w whiteout, o opaque marker."""

    __slots__ = ("kind", "mode", "uid", "gid", "size", "src", "target")

    def __init__(self, kind, mode=0o644, uid=0, gid=0, size=0, src=None, target=""):
        self.kind, self.mode, self.uid, self.gid = kind, mode, uid, gid
        self.size, self.src, self.target = size, src, target


def directory(mode=0o755, uid=0, gid=0):
    return Node("d", mode, uid, gid)


def data_file(data, mode=0o644, uid=0, gid=0):
    return Node("f", mode, uid, gid, len(data), ("data", data))


# ---- synthetic contents -------------------------------------------------------------------

WORDS = None


def words():
    """A fixed vocabulary, so synthetic text compresses like text."""
    global WORDS
    if WORDS is None:
        rng = random.Random("vocabulary")
        letters = "etaoinshrdlucmfwypvbgkjqxz"
        weights = [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1]
        WORDS = ["".join(rng.choices(letters, weights, k=rng.randint(2, 9))) for _ in range(2000)]
    return WORDS


def text_bytes(seed, size):
    rng = random.Random(seed)
    vocab, out, n = words(), [], 0
    while n < size:
        line = " ".join(rng.choices(vocab, k=rng.randint(4, 14))) + "\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def log_bytes(seed, size):
    """A large, compressible log (about 5:1 with gzip, like real logs)."""
    rng = random.Random(seed)
    paths = ["/api/v1/%s/%d" % (w, i) for i, w in enumerate(words()[:300])]
    levels = ["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"]
    out, n, t = [], 0, MTIME * 1000
    while n < size:
        t += rng.randrange(1, 40)
        line = "%d.%03d %-5s worker-%02d req=%08x %s status=%d bytes=%d dur=%dms\n" % (
            t // 1000, t % 1000, rng.choice(levels), rng.randrange(16), rng.getrandbits(32),
            rng.choice(paths), rng.choice((200, 200, 200, 304, 404, 500)),
            rng.randrange(100, 90000), rng.randrange(1, 900))
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def random_bytes(seed, size):
    """Incompressible bytes, the same on every machine."""
    return hashlib.shake_256(("strata-bench:" + seed).encode()).digest(size)


BIG_CACHE = {}


def contents(node):
    """A file object with the node's bytes (big generated contents are made once)."""
    kind = node.src[0]
    if kind == "host":
        return open(node.src[1], "rb")
    if kind == "data":
        return io.BytesIO(node.src[1])
    if node.src not in BIG_CACHE:
        make = {"text": text_bytes, "log": log_bytes, "random": random_bytes}[kind]
        BIG_CACHE[node.src] = make(node.src[1], node.src[2])
    return io.BytesIO(BIG_CACHE[node.src])


def generated(kind, seed, size, mode=0o644, uid=0, gid=0):
    return Node("f", mode, uid, gid, size, (kind, seed, size))


# ---- the content model --------------------------------------------------------------------


class Model:
    """Layers as dicts path -> Node, and the tree they add up to."""

    def __init__(self):
        self.layers = []  # committed layers
        self.layer = None  # the layer being built
        self.tree = {}  # the tree after the committed layers
        self.inodes = {}  # host (dev, ino) -> (node, first path, layer index)

    def begin(self):
        self.layer = {}

    def add(self, path, node):
        assert path not in self.layer, path
        self.layer[path] = node

    def whiteout(self, path):
        parent, name = os.path.split(path)
        assert path in self.tree, "whiteout of %s, which no lower layer has" % path
        self.add(os.path.join(parent, ".wh." + name), Node("w"))

    def opaque(self, path):
        assert self.tree.get(path) and self.tree[path].kind == "d", path
        self.add(path + "/.wh..wh..opq", Node("w"))

    def link(self, path, target):
        self.add(path, Node("h", target=target))

    def add_host_tree(self, rel):
        """Adds /rel (sorted walk, no crossing of mount points) to the current layer. Files seen
        before under another name become hardlinks, across layers too."""
        root = os.path.join(HOST_ROOT, rel)
        for path, st in host_walk(root):
            name = os.path.relpath(path, HOST_ROOT)
            mode = st.st_mode & 0o7777
            if stat.S_ISDIR(st.st_mode):
                # Dirs stay owner-writable: GNU tar, run unprivileged, cannot fill a read-only
                # directory a lower layer made.
                self.add_if_new(name, Node("d", mode | 0o700, st.st_uid, st.st_gid))
            elif stat.S_ISLNK(st.st_mode):
                self.add_if_new(name, Node("l", 0o777, st.st_uid, st.st_gid, target=os.readlink(path)))
            else:
                key = (st.st_dev, st.st_ino)
                seen = self.inodes.get(key)
                if seen and seen[2] < len(self.layers) and self.tree.get(seen[1]) is seen[0]:
                    self.add_if_new(name, Node("h", target=seen[1]))
                elif seen and seen[2] == len(self.layers):
                    self.add_if_new(name, seen[0])  # same node: a link within the layer
                else:
                    node = Node("f", mode, st.st_uid, st.st_gid, st.st_size, ("host", path))
                    self.inodes[key] = (node, name, len(self.layers))
                    self.add_if_new(name, node)

    def add_if_new(self, path, node):
        """Host trees may overlap what the layer already has (a tree's top directory)."""
        if path not in self.layer:
            self.add(path, node)

    def commit(self):
        """Completes the layer with its entries' parent directories (as docker does: a layer
        names the directories it changes), then applies it to the tree."""
        for path in list(self.layer):
            parent = os.path.dirname(path)
            while parent and parent not in self.layer:
                old = self.tree.get(parent)
                assert old is None or old.kind == "d", "layer writes through %s" % parent
                self.layer[parent] = old or directory()
                parent = os.path.dirname(parent)
        self.tree = apply_layer(self.tree, self.layer)
        self.layers.append(self.layer)
        self.layer = None

    def files_under(self, prefix, only_single=True):
        """Regular files of the tree under prefix, sorted; only_single: not hardlinked."""
        counts = {}
        for node in self.tree.values():
            counts[id(node)] = counts.get(id(node), 0) + 1
        return [p for p, n in sorted(self.tree.items())
                if p.startswith(prefix + "/") and n.kind == "f"
                and (not only_single or counts[id(n)] == 1)]

    def subdirs(self, prefix):
        return [p for p, n in sorted(self.tree.items())
                if n.kind == "d" and os.path.dirname(p) == prefix]


def host_walk(root):
    """(path, lstat) of root and everything below, sorted by name, same filesystem only.
    Sockets, FIFOs and devices are left out (they are not what images are made of)."""
    if not os.path.isdir(root) or os.path.islink(root):
        return
    dev = os.lstat(root).st_dev
    stack = [root]
    out = []
    while stack:
        path = stack.pop()
        st = os.lstat(path)
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            continue
        out.append((path, st))
        if stat.S_ISDIR(st.st_mode) and st.st_dev == dev:
            try:
                names = sorted(os.listdir(path), reverse=True)
            except PermissionError:
                continue
            stack.extend(os.path.join(path, n) for n in names)
    out.sort(key=lambda e: e[0])
    yield from out


def remove_subtree(tree, path, keep_root=False):
    prefix = path + "/"
    for p in [p for p in tree if p.startswith(prefix)]:
        del tree[p]
    if not keep_root:
        tree.pop(path, None)


def apply_layer(tree, layer):
    """The image-spec changeset rules on the model: opaque markers and whiteouts hide lower
    entries, directories merge, anything else replaces."""
    tree = dict(tree)
    for path in sorted(layer):
        parent, name = os.path.split(path)
        if name == ".wh..wh..opq":
            remove_subtree(tree, parent, keep_root=True)
        elif name.startswith(".wh."):
            remove_subtree(tree, os.path.join(parent, name[4:]))
    for path in sorted(layer):
        node = layer[path]
        if node.kind == "w":
            continue
        if node.kind == "h":
            node = tree[node.target]
            assert node.kind == "f", path
        old = tree.get(path)
        if old is not None and old.kind == "d" and node.kind != "d":
            remove_subtree(tree, path)
        tree[path] = node
    return tree


def build_model(preset):
    """The six layers. Returns the model (its tree is the final root filesystem)."""
    cfg = PRESETS[preset]
    scale = lambda n: max(2, int(n * cfg["scale"]))  # noqa: E731
    m = Model()
    hosts = [[p for pattern in layer for p in sorted(glob.glob(os.path.join(HOST_ROOT, pattern)))]
             for layer in cfg["host"]]
    hosts = [[os.path.relpath(p, HOST_ROOT) for p in layer] for layer in hosts]

    # Layer 1: a base system: skeleton, odd owners and modes, symlinks, a hardlink group.
    m.begin()
    for d, mode, uid in (("etc", 0o755, 0), ("tmp", 0o1777, 0), ("root", 0o700, 0),
                         ("var/lib", 0o755, 0), ("var/log", 0o755, 0), ("opt", 0o755, 0),
                         ("usr/bin", 0o755, 0), ("usr/lib", 0o755, 0), ("usr/local/bin", 0o755, 0),
                         ("home/user", 0o700, 1000), ("var/www", 0o755, 33)):
        m.add(d, directory(mode, uid, uid))
    m.add("bin", Node("l", 0o777, target="usr/bin"))
    m.add("lib", Node("l", 0o777, target="usr/lib"))
    m.add("etc/os-release", data_file(b'NAME="strata-bench"\nID=bench\n'))
    m.add("etc/shadow", data_file(b"root:*:19000::::::\n", 0o640, 0, 42))
    m.add("usr/bin/hello", data_file(b"#!/bin/sh\necho hello\n", 0o755))
    m.add("usr/bin/su-ish", generated("text", "suid", 20000, 0o4755))
    m.add("usr/bin/sg-ish", generated("text", "sgid", 20000, 0o2755, 0, 42))
    for i in range(scale(20)):
        m.add("home/user/note%02d.txt" % i, generated("text", "home%d" % i, 900 + 37 * i, 0o600, 1000, 1000))
    for i in range(scale(40)):
        m.add("var/www/page%03d.html" % i, generated("text", "www%d" % i, 3000 + 71 * i, 0o644, 33, 33))
    m.add("var/lib/nobody", data_file(b"owned by nobody\n", 0o644, 65534, 65534))
    # An owner no subordinate range covers (SSSD-style uid): kept in user.rootlesscontainers.
    m.add("opt/far-owner", data_file(b"owned by 172761424\n", 0o644, 172761424, 172761424))
    for i in range(scale(60)):
        m.add("var/lib/old/state%03d" % i, generated("text", "old%d" % i, 500 + 13 * i))
    for i in range(scale(400)):
        m.add("opt/app/cache/c%04d.bin" % i, generated("random", "cache%d" % i, 256 + 97 * (i % 50)))
    for i in range(scale(400)):
        m.add("usr/lib/gen/f%04d" % i, generated("text", "gen%d" % i, 200 + 53 * (i % 90)))
    original = generated("random", "hl", 300000)
    for name in ("original", "link1", "link2", "link3"):
        m.add("usr/lib/hl/" + name, original)  # one node: hardlinks within the layer
    for i in range(scale(300)):
        target = ("../gen/f%04d" % i) if i % 3 else "/usr/share/zoneinfo/UTC"
        m.add("usr/lib/links/s%04d" % i, Node("l", 0o777, target=target))
    for rel in hosts[0]:
        m.add_host_tree(rel)
    m.commit()

    # Layer 2: thousands of small headers.
    m.begin()
    for i in range(scale(200)):
        m.add("usr/share/bench/h%04d.h" % i, generated("text", "h%d" % i, 300 + 41 * i))
    for rel in hosts[1]:
        m.add_host_tree(rel)
    m.commit()

    # Layer 3: documentation, and filler files up to the preset's entry count (this machine may
    # lack some of the host trees).
    m.begin()
    for rel in hosts[2]:
        m.add_host_tree(rel)
    rng = random.Random("filler")
    for i in range(max(0, cfg["min_entries"] - len(m.tree) - len(m.layer))):
        size = min(65536, int(rng.lognormvariate(7.5, 1.2)))
        m.add("usr/share/filler/d%02d/f%05d.txt" % (i % 50, i), generated("text", "fill%d" % i, size))
    m.commit()

    # Layer 4: the large files, and hardlinks into layer 1.
    m.begin()
    m.add("opt/data/random.bin", generated("random", "big", cfg["random_mib"] << 20))
    m.add("var/log/app.log", generated("log", "log", cfg["log_mib"] << 20))
    m.link("opt/data/hl-into-base", "usr/lib/hl/original")
    m.link("opt/data/hl-gen", "usr/lib/gen/f0003")
    m.commit()

    # Layer 5: changes: whiteouts, a whited-out directory, an opaque directory, overwritten
    # files, type changes.
    m.begin()
    gen = m.files_under("usr/lib/gen")
    for path in gen[0::4]:
        m.whiteout(path)
    for i, path in enumerate(gen[1::4]):
        m.add(path, generated("text", "gen-v2-%d" % i, 700 + i))
    m.add(gen[2], Node("l", 0o777, target="f0000"))  # file -> symlink
    m.add(gen[6], directory())  # file -> directory
    m.add(gen[6] + "/inside", data_file(b"a directory where a file was\n"))
    m.add("usr/lib/links/s0001", data_file(b"a file where a symlink was\n"))  # symlink -> file
    m.whiteout("var/lib/old")
    m.opaque("opt/app/cache")
    for i in range(scale(150)):
        m.add("opt/app/cache/n%04d.bin" % i, generated("random", "cache-v2-%d" % i, 300 + 89 * (i % 40)))
    if hosts[0]:
        for path in m.files_under(hosts[0][0])[0::8]:
            m.whiteout(path)
    for rel in hosts[1][:1]:
        for i, path in enumerate(m.files_under(rel)[5::50]):
            m.add(path, generated("text", "hdr-v2-%d" % i, 1500 + i))
    m.commit()

    # Layer 6: an application layer; whiteouts of whole documentation directories.
    m.begin()
    for i in range(scale(300)):
        owner = (0, 33, 1000)[i % 3]
        m.add("etc/app/conf.d/%03d.conf" % i, generated("text", "conf%d" % i, 100 + 29 * i, 0o640, owner, owner))
    for i in range(scale(20)):
        m.add("usr/local/bin/tool%02d" % i, generated("text", "tool%d" % i, 4000 + 101 * i, 0o755))
    for path in m.files_under("var/www")[:5]:
        m.whiteout(path)
    for rel in hosts[2][:1]:
        for path in m.subdirs(rel)[3::40]:
            m.whiteout(path)
    m.commit()
    return m


# ---- writing tars and layouts -------------------------------------------------------------


class HashingReader:
    def __init__(self, f):
        self.f, self.h = f, hashlib.sha256()

    def read(self, n=-1):
        data = self.f.read(n)
        self.h.update(data)
        return data


def write_tar(path, entries, digests=None):
    """Writes entries (path, Node), sorted, as a PAX tar. Regular-file nodes met again become
    hardlinks to their first name. digests: if a dict, gets path -> sha256 of each file."""
    first = {}
    with open(path, "wb") as out, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, node in sorted(entries, key=lambda e: e[0]):
            info = tarfile.TarInfo(name)
            info.mtime, info.uname, info.gname = MTIME, "", ""
            info.uid, info.gid, info.mode = node.uid, node.gid, node.mode
            fileobj = None
            if node.kind == "d":
                info.type = tarfile.DIRTYPE
            elif node.kind == "l":
                info.type, info.linkname = tarfile.SYMTYPE, node.target
            elif node.kind == "h":
                info.type, info.linkname = tarfile.LNKTYPE, node.target
            elif node.kind == "w":
                info.mode = 0o644
            elif id(node) in first:
                info.type, info.linkname = tarfile.LNKTYPE, first[id(node)]
            else:
                first[id(node)] = name
                info.size = node.size
                fileobj = contents(node)
                if digests is not None:
                    fileobj = HashingReader(fileobj)
            tar.addfile(info, fileobj)
            if fileobj is not None:
                if digests is not None:
                    digests[name] = fileobj.h.hexdigest()
                    fileobj.f.close()
                else:
                    fileobj.close()


def expected_tree(tree, digests):
    """The final tree as bench/run checks it: path -> [kind, mode, uid, gid, size, sha256 or
    symlink target, first name of its hardlink group]."""
    first, out = {}, {}
    for path, node in sorted(tree.items()):
        leader = first.setdefault(id(node), path) if node.kind == "f" else None
        extra = digests.get(leader) if node.kind == "f" else node.target if node.kind == "l" else None
        out[path] = [node.kind, node.mode, node.uid, node.gid,
                     node.size if node.kind == "f" else 0, extra, leader]
    return out


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def compress(src, dst, command):
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        subprocess.run(command, stdin=fin, stdout=fout, check=True)


def oci_arch():
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
            "s390x": "s390x", "riscv64": "riscv64", "i686": "386"}.get(machine, machine)


def write_layout(out, blobs_dir, layers, media_type):
    """An OCI layout at out, tagged latest; layers: [(blob hex, size, diff hex)]. Blobs are
    hardlinked from blobs_dir."""
    bdir = os.path.join(out, "blobs", "sha256")
    os.makedirs(bdir)

    def blob(data):
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(bdir, digest), "wb") as f:
            f.write(data)
        return {"digest": "sha256:" + digest, "size": len(data)}

    for hexd, _, _ in layers:
        if not os.path.exists(os.path.join(bdir, hexd)):
            os.link(os.path.join(blobs_dir, hexd), os.path.join(bdir, hexd))
    config = {"architecture": oci_arch(), "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + d for _, _, d in layers]},
              "history": [{"created_by": "strata bench layer %d" % i} for i in range(len(layers))]}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           **blob(json.dumps(config, sort_keys=True).encode())},
                "layers": [{"mediaType": media_type, "digest": "sha256:" + h, "size": s}
                           for h, s, _ in layers]}
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **blob(json.dumps(manifest, sort_keys=True).encode()),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(index, f, sort_keys=True)
    with open(os.path.join(out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)


def cache_key(preset):
    """Hash of this file, the preset and the stat() of every host file the preset reads."""
    h = hashlib.sha256()
    with open(__file__, "rb") as f:
        h.update(f.read())
    h.update(json.dumps(PRESETS[preset], sort_keys=True).encode())
    for layer in PRESETS[preset]["host"]:
        for pattern in layer:
            for root in sorted(glob.glob(os.path.join(HOST_ROOT, pattern))):
                for path, st in host_walk(root):
                    h.update(("%s %o %d %d %d %d\n" % (path, st.st_mode, st.st_uid, st.st_gid,
                                                       st.st_size, st.st_mtime_ns)).encode())
    return h.hexdigest()[:16]


def ensure_images(cache_dir, preset, log=print):
    """The images of preset, built under cache_dir/<preset>-<key> unless already there.
    Returns that directory: layouts/<compression>-<layers>, layouts/startup-<n>, expected.json,
    info.json."""
    key = cache_key(preset)
    final = os.path.join(cache_dir, "%s-%s" % (preset, key))
    if os.path.exists(os.path.join(final, "info.json")):
        return final
    os.makedirs(cache_dir, exist_ok=True)
    os.chmod(cache_dir, 0o755)
    for old in glob.glob(os.path.join(cache_dir, preset + "-*")):
        log("removing the outdated image cache %s" % old)
        shutil.rmtree(old)
    work = final + ".building"
    shutil.rmtree(work, ignore_errors=True)
    tars, blobs = os.path.join(work, "tars"), os.path.join(work, "blobs")
    os.makedirs(tars)
    os.makedirs(blobs)

    log("building the %s benchmark image (cached in %s)..." % (preset, final))
    model = build_model(preset)
    names = []
    for i, layer in enumerate(model.layers):
        names.append("layer%d.tar" % (i + 1))
        write_tar(os.path.join(tars, names[-1]), layer.items())
    digests = {}
    write_tar(os.path.join(tars, "squashed.tar"), model.tree.items(), digests)
    names.append("squashed.tar")
    n = PRESETS[preset]["startup_layers"]
    for i in range(n):
        names.append("tiny%02d.tar" % i)
        write_tar(os.path.join(tars, names[-1]),
                  [("tiny%02d" % i, data_file(b"a tiny layer for timing helper start-up %d\n" % i))])
    BIG_CACHE.clear()

    diff = {name: sha256_file(os.path.join(tars, name)) for name in names}
    blob_of = {}  # (name, compression) -> (hex, size)
    jobs = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for name in names:
            for comp, (_, command) in COMPRESSIONS.items():
                if comp != "gzip" and name.startswith("tiny"):
                    continue
                src = os.path.join(tars, name)
                if command is None:
                    jobs[(name, comp)] = None
                else:
                    dst = os.path.join(tars, name + "." + comp)
                    jobs[(name, comp)] = pool.submit(compress, src, dst, command)
        for (name, comp), job in jobs.items():
            src = os.path.join(tars, name)
            if job is not None:
                job.result()
                src += "." + comp
            hexd = sha256_file(src)
            os.replace(src, os.path.join(blobs, hexd)) if job is not None else os.link(src, os.path.join(blobs, hexd))
            blob_of[(name, comp)] = (hexd, os.path.getsize(os.path.join(blobs, hexd)))

    six = names[:6]
    variants = {}
    for comp, (media_type, _) in COMPRESSIONS.items():
        for label, layer_names in (("6", six), ("1", ["squashed.tar"])):
            layers = [(*blob_of[(nm, comp)], diff[nm]) for nm in layer_names]
            vname = "%s-%s" % (comp, label)
            write_layout(os.path.join(work, "layouts", vname), blobs, layers, media_type)
            variants[vname] = {
                "compression": comp, "layers": len(layers),
                "blob_bytes": sum(s for _, s, _ in layers),
                "tar_bytes": sum(os.path.getsize(os.path.join(tars, nm)) for nm in layer_names)}
    for count in (1, n):
        layers = [(*blob_of[(nm, "gzip")], diff[nm]) for nm in names[7:7 + count]]
        write_layout(os.path.join(work, "layouts", "startup-%d" % count), blobs,
                     layers, COMPRESSIONS["gzip"][0])

    expected = expected_tree(model.tree, digests)
    with open(os.path.join(work, "expected.json"), "w") as f:
        json.dump(expected, f, sort_keys=True)
    info = {
        "preset": preset, "key": key, "variants": variants, "startup_layers": n,
        "entries": len(expected),
        "layer_entries": [len(layer) for layer in model.layers],
        "files_bytes": sum(v[4] for v in expected.values() if v[0] == "f"),
        "whiteouts": sum(1 for layer in model.layers for p in layer if "/.wh." in "/" + p),
        "hardlinks": sum(1 for p, v in expected.items() if v[0] == "f" and v[6] != p),
        "symlinks": sum(1 for v in expected.values() if v[0] == "l"),
    }
    with open(os.path.join(work, "info.json"), "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)
    shutil.rmtree(tars)
    # Readable by the unprivileged user the tools run as.
    for dirpath, dirnames, filenames in os.walk(work):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)
    os.rename(work, final)
    return final


if __name__ == "__main__":
    import sys

    print(ensure_images(sys.argv[2] if len(sys.argv) > 2 else "/var/tmp/strata-bench",
                        sys.argv[1] if len(sys.argv) > 1 else "small"))
