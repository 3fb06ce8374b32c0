#!/usr/bin/env python3
"""Writes examples/hello-image: a small two-layer OCI image layout (gzip and zstd-free, so
only the Python standard library is needed). Deterministic: the same bytes every run."""
import gzip, hashlib, io, json, os, shutil, sys, tarfile

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hello-image")
MTIME = 1700000000


def layer(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data, attrs in entries:
            info = tarfile.TarInfo(name)
            info.mtime, info.uname, info.gname = MTIME, "", ""
            info.mode = 0o755 if kind in "dx" else 0o644
            if kind == "d":
                info.type = tarfile.DIRTYPE
            elif kind == "l":
                info.type, info.linkname, data = tarfile.SYMTYPE, data, b""
            elif kind == "h":
                info.type, info.linkname, data = tarfile.LNKTYPE, data, b""
            for key, value in attrs.items():
                setattr(info, key, value)
            info.size = len(data) if kind in "fx" else 0
            tar.addfile(info, io.BytesIO(data) if kind in "fx" else None)
    return buf.getvalue()


BASE = layer([
    ("etc", "d", b"", {}),
    ("etc/os-release", "f", b'NAME="hello"\nID=hello\n', {}),
    ("etc/motd", "f", b"Unpacked by strata.\n", {}),
    ("etc/shadow", "f", b"root:*:19000::::::\n", {"mode": 0o640, "gid": 42}),
    ("bin", "d", b"", {}),
    ("bin/hello", "x", b"#!/bin/sh\necho hello from the example image\n", {}),
    ("bin/hi", "h", "bin/hello", {}),
    ("home", "d", b"", {}),
    ("home/user", "d", b"", {"uid": 1000, "gid": 1000, "mode": 0o700}),
    ("home/user/notes.txt", "f", b"owned by 1000:1000 in the image\n", {"uid": 1000, "gid": 1000}),
    ("tmp", "d", b"", {"mode": 0o1777}),
    ("usr", "d", b"", {}),
    ("usr/lib", "d", b"", {}),
    ("lib", "l", "usr/lib", {}),
])
TOP = layer([
    ("etc/.wh.motd", "f", b"", {}),
    ("etc/os-release", "f", b'NAME="hello"\nID=hello\nVERSION_ID=2\n', {}),
    ("usr/lib/greeting", "f", b"written through the lib -> usr/lib symlink\n", {}),
])


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(os.path.join(OUT, "blobs", "sha256"))

    def blob(data):
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(OUT, "blobs", "sha256", digest), "wb") as f:
            f.write(data)
        return {"digest": "sha256:" + digest, "size": len(data)}

    layers, diff_ids = [], []
    for tar in (BASE, TOP):
        compressed = gzip.compress(tar, mtime=0)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **blob(compressed)})
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Cmd": ["/bin/hello"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **blob(json.dumps(config, sort_keys=True).encode())}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": layers}
    manifest_desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                     **blob(json.dumps(manifest, sort_keys=True).encode()),
                     "annotations": {"org.opencontainers.image.ref.name": "latest"}}
    with open(os.path.join(OUT, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [manifest_desc]}, f, sort_keys=True)
    with open(os.path.join(OUT, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)


if __name__ == "__main__":
    sys.exit(main())
