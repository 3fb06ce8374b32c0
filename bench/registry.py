"""A registry on loopback for the pull benchmark: Debian's docker-registry, its storage kept
beside the cached images, each image pushed once by skopeo as it is (--preserve-digests)."""

import os
import shutil
import socket
import subprocess
import time

from harness import log

NEEDED = ("docker-registry", "skopeo")


def available():
    return all(shutil.which(tool) for tool in NEEDED)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    def __init__(self, imgdir):
        self.root = os.path.join(imgdir, "registry")
        os.makedirs(self.root, exist_ok=True)
        self.addr = "127.0.0.1:%d" % free_port()
        config = os.path.join(self.root, "config.yml")
        with open(config, "w") as f:
            f.write("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                    "    rootdirectory: %s\nhttp:\n  addr: %s\n" % (os.path.join(self.root, "data"), self.addr))
        self.proc = subprocess.Popen(["docker-registry", "serve", config], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", int(self.addr.split(":")[1])), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("docker-registry did not start on %s" % self.addr)
                time.sleep(0.05)

    def image(self, variant):
        return "docker://%s/bench/%s:latest" % (self.addr, variant.name)

    def push(self, variant):
        """Pushes the variant's layout unless an earlier run did (its storage is kept)."""
        marker = os.path.join(self.root, "pushed-" + variant.name)
        if os.path.exists(marker):
            return
        log("pushing %s to the registry (once)" % variant.name)
        subprocess.run(["skopeo", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false",
                        "oci:" + variant.image, self.image(variant)], check=True)
        open(marker, "w").close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
