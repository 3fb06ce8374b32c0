"""Checks an unpacked tree against the expected tree bench/images.py recorded: kinds, modes,
sizes, contents, symlink targets, hardlink groups, mtimes, and owners (on disk, and in umoci's
`user.rootlesscontainers` xattr where the owner could not be mapped)."""

import hashlib
import os
import stat

from images import MTIME

XATTR = "user.rootlesscontainers"
UNCHECKED = "unchecked (unreadable as non-root)"
NO_CHANGE = 0xFFFFFFFF


class Owners:
    """How image owners land on disk. kind: 'subordinate' (container 0 -> the user, 1..count
    -> start..), 'single' (everything the user's), or None (not checked)."""

    def __init__(self, kind, uid=0, gid=0, uids=(0, 0), gids=(0, 0)):
        self.kind, self.uid, self.gid, self.uids, self.gids = kind, uid, gid, uids, gids

    def disk(self, img_id, own, rng):
        """(on-disk id, whether the image id had to be recorded in the xattr)."""
        if img_id == 0:
            return own, False
        if self.kind == "subordinate" and 1 <= img_id <= rng[1]:
            return rng[0] + img_id - 1, False
        return own, True


def read_varint(data, i):
    shift = value = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def decode_rootless(data):
    """umoci's protobuf Resource {uint32 uid = 1; uint32 gid = 2;}: (uid, gid), None = no change."""
    fields, i = {}, 0
    while i < len(data):
        key, i = read_varint(data, i)
        value, i = read_varint(data, i)
        fields[key >> 3] = value
    uid, gid = fields.get(1, NO_CHANGE), fields.get(2, NO_CHANGE)
    return (None if uid == NO_CHANGE else uid, None if gid == NO_CHANGE else gid)


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def walk(root):
    """path (relative) -> lstat of everything below root, and the directories that could not be
    listed (as non-root: subordinate-owned ones with mode 0700)."""
    out, unreadable, stack = {}, [], [""]
    while stack:
        rel = stack.pop()
        try:
            it = os.scandir(os.path.join(root, rel))
        except PermissionError:
            unreadable.append(rel)
            continue
        with it:
            for entry in it:
                path = os.path.join(rel, entry.name)
                st = entry.stat(follow_symlinks=False)
                out[path] = st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(path)
    return out, unreadable


def compare(root, expected, owners):
    """Differences between the tree at root and expected: {category: [examples]}, empty when
    they match. What cannot be read (only as non-root) is left out and listed under UNCHECKED."""
    diffs = {}

    def bad(category, path, detail=""):
        diffs.setdefault(category, []).append(path + (": " + detail if detail else ""))

    try:
        actual, unreadable = walk(root)
    except OSError as e:
        return {"missing": ["the whole tree: %s" % e]}
    hidden = tuple(d + "/" for d in unreadable)
    skipped = [p for p in expected if p.startswith(hidden)]
    if skipped:
        diffs[UNCHECKED] = ["%d entries below %s" % (len(skipped), ", ".join(sorted(unreadable)[:3]))]
    expected = {p: e for p, e in expected.items() if not p.startswith(hidden)}
    for path in sorted(set(expected) - set(actual)):
        bad("missing", path)
    for path in sorted(set(actual) - set(expected)):
        bad("unexpected", path)

    kinds = {"d": stat.S_ISDIR, "f": stat.S_ISREG, "l": stat.S_ISLNK}
    groups_expected, groups_actual = {}, {}
    for path in sorted(set(expected) & set(actual)):
        kind, mode, uid, gid, size, extra, leader = expected[path]
        st = actual[path]
        if not kinds[kind](st.st_mode):
            bad("kind", path, "expected %s, mode %o" % (kind, st.st_mode))
            continue
        if kind != "l" and stat.S_IMODE(st.st_mode) != mode:
            bad("mode", path, "%04o, expected %04o" % (stat.S_IMODE(st.st_mode), mode))
        if st.st_mtime_ns != MTIME * 10**9:
            bad("mtime", path, "%d" % st.st_mtime)
        full = os.path.join(root, path)
        if kind == "f":
            groups_expected.setdefault(leader, set()).add(path)
            groups_actual.setdefault(st.st_ino, set()).add(path)
            if st.st_size != size:
                bad("size", path, "%d, expected %d" % (st.st_size, size))
            elif path == leader:
                try:
                    if sha256_of(full) != extra:
                        bad("content", path)
                except PermissionError:
                    bad(UNCHECKED, path, "unreadable")
        elif kind == "l" and os.readlink(full) != extra:
            bad("target", path, "%r, expected %r" % (os.readlink(full), extra))
        if owners.kind is not None:
            check_owner(full, path, kind, st, uid, gid, owners, bad)
    if {frozenset(g) for g in groups_expected.values()} != {frozenset(g) for g in groups_actual.values()}:
        wrong = {frozenset(g) for g in groups_actual.values()} ^ {frozenset(g) for g in groups_expected.values()}
        for group in sorted(wrong, key=sorted)[:5]:
            bad("hardlinks", " = ".join(sorted(group)))
    return diffs


def check_owner(full, path, kind, st, uid, gid, owners, bad):
    disk_uid, rec_uid = owners.disk(uid, owners.uid, owners.uids)
    disk_gid, rec_gid = owners.disk(gid, owners.gid, owners.gids)
    if (st.st_uid, st.st_gid) != (disk_uid, disk_gid):
        bad("owner", path, "%d:%d, expected %d:%d (image %d:%d)" % (
            st.st_uid, st.st_gid, disk_uid, disk_gid, uid, gid))
    if kind == "l":
        return  # symlinks cannot carry user.* xattrs
    want = (uid if rec_uid else None, gid if rec_gid else None)
    try:
        got = decode_rootless(os.getxattr(full, XATTR, follow_symlinks=False))
    except OSError:
        got = (None, None)
    if got != want:
        bad("owner xattr", path, "%s, expected %s" % (got, want))


def real(diffs):
    """The differences, without what was only left unchecked."""
    return {cat: items for cat, items in diffs.items() if cat != UNCHECKED}


def summary(diffs, limit=3):
    """One line per category: count and a few examples."""
    return ["%s: %d (%s)" % (cat, len(items), "; ".join(items[:limit]))
            for cat, items in sorted(diffs.items())]
