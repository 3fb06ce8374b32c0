"""Running the tools as the benchmark user: wall-clock timing, peak RSS, the scratch filesystem."""

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


START = time.monotonic()


def log(msg):
    """Progress goes to stderr, with the seconds since the start; stdout carries only the report."""
    print("[%6.1f] %s" % (time.monotonic() - START, msg), file=sys.stderr, flush=True)


class Run:
    """One measured command (or sequence of commands)."""

    def __init__(self, seconds, maxrss_kb, ok, error="", out_path=None):
        self.seconds, self.maxrss_kb, self.ok, self.error = seconds, maxrss_kb, ok, error
        self.out_path = out_path


class Runner:
    """Starts commands as the benchmark user: as root, that is uid:gid with no supplementary
    groups (Popen's user/group/extra_groups make the same setgroups/setregid/setreuid calls as
    `setpriv --reuid --regid --clear-groups`, and leave no capabilities); otherwise the user
    running the benchmark."""

    def __init__(self, uid, gid, home, logs):
        self.uid, self.gid, self.logs = uid, gid, logs
        # Peak RSS comes from GNU time: wait4's ru_maxrss of a process this (large) Python
        # process starts directly includes Python's own peak, which the kernel carries over
        # exec; a small launcher's children start small.
        self.gnu_time = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
        self.switch = os.geteuid() == 0 and uid != 0
        self.env = {"PATH": PATH, "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}
        self.current = None  # the process group to kill if we are interrupted
        self.count = 0

    def spawn(self, argv, stdout, stderr):
        ids = {"user": self.uid, "group": self.gid, "extra_groups": []} if self.switch else {}
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                env=self.env, start_new_session=True, **ids)
        self.current = proc.pid
        return proc

    def reap(self, proc):
        _, status, _ = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        self.current = None
        return proc.returncode

    def with_time(self, argv, rss_path):
        """argv under `/usr/bin/time -f %M`: the ru_maxrss of its child, the largest of that
        process and of the descendants it waited for (one process, not a sum)."""
        return [self.gnu_time, "-f", "%M", "-o", rss_path] + argv if self.gnu_time else argv

    @staticmethod
    def read_rss(rss_path):
        try:
            with open(rss_path) as f:
                return int(f.read().split()[-1])  # after "Command exited with ..." if any
        except (OSError, ValueError, IndexError):
            return None

    def log_paths(self):
        self.count += 1
        base = os.path.join(self.logs, "%05d" % self.count)
        return base + ".out", base + ".err"

    def timed(self, argvs, rss=True):
        """Runs argvs one after the other, stopping at a failure. Wall time from the first start
        to the last exit on the monotonic clock; max RSS over the commands (GNU time, which
        costs about a millisecond per command: not for the start-up figures)."""
        out_path, err_path = self.log_paths()
        rss_path = out_path[:-4] + ".rss"
        maxrss = None
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            start = time.monotonic()
            for argv in argvs:
                code = self.reap(self.spawn(self.with_time(argv, rss_path) if rss else argv, out, err))
                if rss and self.gnu_time:
                    maxrss = max(maxrss or 0, self.read_rss(rss_path) or 0)
                if code != 0:
                    seconds = time.monotonic() - start
                    return Run(seconds, maxrss, False, failure(argv, code, err_path), out_path)
            seconds = time.monotonic() - start
        return Run(seconds, maxrss, True, "", out_path)

    def sampled(self, argv, interval=0.001):
        """Runs argv while sampling VmHWM (the kernel's peak-RSS mark, which only grows) and
        VmRSS of it and of each descendant from /proc, every `interval` seconds. The helper is
        strata's child and strata reaps it, so wait4 (GNU time) cannot tell its peak from the
        parent's; sampling can. A process's growth within its last interval can be missed, and so
        can a process that lives less than an interval; GNU time's %M over the whole run is
        returned too, as a cross-check. Untimed: the sampling costs CPU."""
        out_path, err_path = self.log_paths()
        rss_path = out_path[:-4] + ".rss"
        peaks = {}  # pid -> [name, max VmHWM kB]
        total = 0  # the largest sum of VmRSS over the tree at one sample
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = self.spawn(self.with_time(argv, rss_path), out, err)
            while True:
                pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                now = 0
                # Under GNU time, the tool is time's child: time itself is not sampled.
                tree = descendants(proc.pid) if self.gnu_time else [proc.pid] + descendants(proc.pid)
                for p in tree:
                    name, hwm, rss = vm_status(p)
                    if hwm is None:
                        continue
                    now += rss
                    entry = peaks.setdefault(p, [name, 0])
                    if name != entry[0]:  # exec'd since the last sample: a new image
                        entry[:] = [name, 0]
                    entry[1] = max(entry[1], hwm)
                total = max(total, now)
                time.sleep(interval)
        proc.returncode = os.waitstatus_to_exitcode(status)
        self.current = None
        ok = proc.returncode == 0
        return {"ok": ok, "error": "" if ok else failure(argv, proc.returncode, err_path),
                "tree_max_kb": self.read_rss(rss_path), "total_max_kb": total,
                "processes": [(p, name, hwm) for p, (name, hwm) in sorted(peaks.items())]}

    def check(self, argv):
        """Runs an untimed command; returns (ok, stdout text, error line)."""
        out_path, err_path = self.log_paths()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            code = self.reap(self.spawn(argv, out, err))
        with open(out_path, errors="replace") as f:
            text = f.read()
        return code == 0, text, "" if code == 0 else failure(argv, code, err_path)

    def kill_current(self):
        if self.current:
            try:
                os.killpg(self.current, signal.SIGKILL)
            except ProcessLookupError:
                pass


def failure(argv, code, err_path):
    with open(err_path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    return "%s exited %d: %s" % (os.path.basename(argv[0]), code, lines[-1] if lines else "no output")


def descendants(pid):
    """Children (of every thread), recursively, from /proc/PID/task/TID/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tids = os.listdir("/proc/%d/task" % p)
        except OSError:
            continue
        for tid in tids:
            try:
                with open("/proc/%d/task/%s/children" % (p, tid)) as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


def vm_status(pid):
    """(Name, VmHWM, VmRSS in kB) from /proc/PID/status; None for the sizes of a zombie or a
    vanished process."""
    name, hwm, rss = None, None, None
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("Name:"):
                    name = line.split(None, 1)[1].strip()
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
                elif line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                    break
    except OSError:
        pass
    return name, (hwm if rss is not None else None), rss


def bench_user():
    """(uid, gid) the tools run as: STRATA_BENCH_UID (default 4242, `strata-test`) as root,
    else the current user."""
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    uid = int(os.environ.get("STRATA_BENCH_UID", "4242"))
    try:
        return uid, pwd.getpwuid(uid).pw_gid
    except KeyError:
        sys.exit("bench: uid %d has no passwd entry; create it as .ci/run does "
                 "(useradd -u 4242 -U -M strata-test) or set STRATA_BENCH_UID" % uid)


def subordinate_range(uid, path):
    """(start, count) of the user's range in /etc/subuid or /etc/subgid, or None."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = None
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] in (name, str(uid)):
                    return int(parts[1]), int(parts[2])
    except OSError:
        pass
    return None


class Scratch:
    """Where the tools write. As root: a fresh ext4 on a sparse loop-mounted file, because a
    long-lived filesystem slows down after mass create/delete (this machine's root filesystem
    by about tenfold), which would swamp the comparison; mkfs initialises the inode tables and
    journal now (lazy init would write them in the background during the measurements). Not
    root, or without loop devices: a temporary directory, with a note in the report."""

    def __init__(self, size, use_loop, owner):
        self.size, self.use_loop, self.owner = size, use_loop, owner
        self.image = self.device = self.mount = None
        self.note = ""

    def __enter__(self):
        base = os.environ.get("STRATA_BENCH_SCRATCH", "/var/tmp")
        if self.use_loop and os.geteuid() == 0:
            try:
                self.mount = self.loop(base)
            except (OSError, subprocess.CalledProcessError) as e:
                self.cleanup()
                self.note = "no loop-mounted ext4 (%s): results are on %s's filesystem" % (e, base)
        elif self.use_loop:
            self.note = "not root, so no loop-mounted ext4: results are on %s's filesystem" % base
        else:
            self.note = "--no-loop: results are on %s's filesystem" % base
        if self.mount is None:
            self.mount = tempfile.mkdtemp(prefix="strata-bench.", dir=base)
        work = os.path.join(self.mount, "work")
        os.mkdir(work, 0o755)
        if os.geteuid() == 0:
            os.chown(work, *self.owner)
        self.work = work
        return self

    def loop(self, base):
        fd, self.image = tempfile.mkstemp(prefix="strata-bench.", suffix=".ext4", dir=base)
        os.ftruncate(fd, self.size)  # sparse
        os.close(fd)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
                        self.image], check=True)
        # Direct I/O on the backing file: its pages are not cached a second time.
        self.device = subprocess.run(["losetup", "--find", "--show", "--direct-io=on", self.image],
                                     check=True, capture_output=True, text=True).stdout.strip()
        mount = tempfile.mkdtemp(prefix="strata-bench-mnt.", dir=base)
        subprocess.run(["mount", "-o", "noatime", self.device, mount], check=True)
        self.mounted = mount
        return mount

    def cleanup(self):
        mounted = getattr(self, "mounted", None)
        if mounted:
            for args in (["umount", mounted], ["umount", "-l", mounted]):
                if subprocess.run(args, stderr=subprocess.DEVNULL).returncode == 0:
                    break
                time.sleep(1)
            os.rmdir(mounted)
            self.mounted = None
        elif self.mount and os.path.isdir(self.mount):
            shutil.rmtree(self.mount, ignore_errors=True)
        if self.device:
            subprocess.run(["losetup", "-d", self.device], stderr=subprocess.DEVNULL)
            self.device = None
        if self.image and os.path.exists(self.image):
            os.unlink(self.image)
            self.image = None

    def __exit__(self, *exc):
        self.cleanup()


def du_kb(path, apparent=False):
    """Disk use in KiB, hardlinks counted once (du -sk)."""
    args = ["du", "-sk"] + (["--apparent-size"] if apparent else []) + [path]
    res = subprocess.run(args, capture_output=True, text=True)
    try:
        return int(res.stdout.split()[0])
    except (IndexError, ValueError):
        return None


def drop_caches():
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
