//! The sandbox the helper builds around itself, in the order it must happen:
//! user and mount namespaces, pivot into the target, then lockdown. Each step is one function
//! that checks every syscall on the spot.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::BorrowedFd;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use caps::{CapSet, Capability, CapsHashSet};
use landlock::{
    ABI, Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope,
};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::sys::statvfs::{FsFlags, statvfs};
use nix::unistd::{Pid, chdir, getgid, getppid, getuid, pivot_root, setgroups};
use strata_protocol::IdMap;
use strata_protocol::{MAPS_READY, MAPS_WANTED};

/// The newest Landlock ABI this code was tested against; older kernels get what they support.
const LANDLOCK_ABI: ABI = ABI::V6;

/// What changing a tree needs from root in the namespace: owners, modes, writing into
/// read-only directories, setuid bits and file capabilities. Everything else goes.
const WRITING_CAPABILITIES: [Capability; 6] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_SETFCAP,
    Capability::CAP_MKNOD,
];

/// What reading a tree needs: files of any owner and mode, as the image's root reads them.
const READING_CAPABILITIES: [Capability; 1] = [Capability::CAP_DAC_READ_SEARCH];

/// What a job may do to the tree it is pivoted into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Change it: apply a layer, copy a tree into it, clear it.
    Write,
    /// Only read it: look up the image's user.
    Read,
}

impl Reach {
    fn capabilities(self) -> &'static [Capability] {
        match self {
            Reach::Write => &WRITING_CAPABILITIES,
            Reach::Read => &READING_CAPABILITIES,
        }
    }

    fn access(self) -> landlock::BitFlags<AccessFs> {
        match self {
            Reach::Write => AccessFs::from_all(LANDLOCK_ABI),
            Reach::Read => AccessFs::from_read(LANDLOCK_ABI),
        }
    }
}

const USERNS_HINT: &str = "user namespaces are unavailable; allow unprivileged ones with \
     `sysctl -w user.max_user_namespaces=15000` (and `kernel.unprivileged_userns_clone=1` on \
     older Debian, `kernel.apparmor_restrict_unprivileged_userns=0` on Ubuntu 23.10 and later)";

/// Closes every fd from `first` up: nothing the parent leaked may reach the sandbox.
pub fn close_fds_from(first: i32) -> Result<()> {
    // SAFETY: close_range only closes descriptors, none of which this process still uses.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, 0u32) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("close_range");
    }
    Ok(())
}

/// Enters new user, mount, network and IPC namespaces in which the calling user is root:
/// alone (the single map, written here), or with its subordinate ids, which only the parent can
/// map (it runs `newuidmap`; `results` and `control` carry the handshake).
pub fn enter_user_namespace(idmap: &IdMap, results: &mut File, control: File) -> Result<()> {
    let (uid, gid) = (getuid(), getgid());
    let flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC;
    unshare(flags).with_context(|| format!("unshare: {USERNS_HINT}"))?;
    match idmap {
        IdMap::Single => {
            // setgroups must be denied before an unprivileged process may write gid_map
            // (CVE-2014-8989).
            let maps = [
                ("/proc/self/setgroups", "deny".to_string()),
                ("/proc/self/uid_map", format!("0 {uid} 1")),
                ("/proc/self/gid_map", format!("0 {gid} 1")),
            ];
            for (file, content) in maps {
                // EPERM here is how AppArmor's userns restriction shows itself.
                fs::write(file, content)
                    .with_context(|| format!("writing {file}: {USERNS_HINT}"))?;
            }
        }
        IdMap::Subordinate { .. } => {
            wait_for_maps(results, control)?;
            // The user's supplementary groups mean nothing inside; newgidmap left setgroups
            // allowed for a range map, so drop them.
            match setgroups(&[]) {
                Ok(()) | Err(Errno::EPERM) => {}
                Err(e) => return Err(e).context("dropping supplementary groups"),
            }
        }
    }
    // No nested user namespaces: a compromised helper could otherwise regain a full capability
    // set in a fresh one. The limit is per namespace; the host's value is untouched.
    fs::write("/proc/sys/user/max_user_namespaces", "0")
        .context("forbidding nested user namespaces")?;
    Ok(())
}

fn wait_for_maps(results: &mut File, mut control: File) -> Result<()> {
    results
        .write_all(&MAPS_WANTED)
        .context("asking strata for the id maps")?;
    let mut answer = [0u8];
    match control.read_exact(&mut answer) {
        Ok(()) if answer == MAPS_READY => Ok(()),
        _ => bail!("strata could not map the subordinate ids"),
    }
}

/// Detaches this mount namespace from the host's: no mount made here propagates back.
pub fn make_mounts_private() -> Result<()> {
    let none = None::<&str>;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none).context("making / private")
}

/// Mounts the overlay of `lowers` (top first), with `upper` and its work directory if given
/// (else read-only), at `target`. Layers are named as `/proc/self/fd/N` of fds opened here, so
/// no store path can break the option string (`:` and `,` separate options) and up to a few
/// hundred layers fit in its one page. `userxattr`: the kernel requires it in a user namespace,
/// and it keeps overlay metadata in `user.overlay.*` xattrs.
pub fn mount_overlay(
    target: &Path,
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
) -> Result<()> {
    let open = |dir: &Path| {
        nix::fcntl::open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening overlay layer {}", dir.display()))
    };
    let name = |fd: &OwnedFd| format!("/proc/self/fd/{}", fd.as_raw_fd());
    let lower_fds = lowers
        .iter()
        .map(|dir| open(dir))
        .collect::<Result<Vec<_>>>()?;
    let lowerdir: Vec<String> = lower_fds.iter().map(name).collect();
    let mut options = format!("lowerdir={},userxattr", lowerdir.join(":"));
    let upper_fds = match upper {
        Some((upper, work)) => {
            let fds = (open(upper)?, open(work)?);
            // volatile: no syncs reach the upper filesystem, above all not the full syncfs()
            // that unmounting (our namespace's exit) would do, which costs writing back every
            // layer so far. strata never syncs a snapshot: commit is a rename, as for DEST.
            options.push_str(&format!(
                ",upperdir={},workdir={},volatile",
                name(&fds.0),
                name(&fds.1)
            ));
            Some(fds)
        }
        None => None,
    };
    let flags = if upper_fds.is_some() {
        MsFlags::empty()
    } else {
        MsFlags::MS_RDONLY
    };
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        flags,
        Some(options.as_str()),
    )
    .with_context(|| {
        format!(
            "mounting an overlay of {} layers at {}",
            lowers.len(),
            target.display()
        )
    })
}

/// Makes `root` the whole visible filesystem: nothing of the host stays mounted, and no mount
/// event propagates back to it.
pub fn pivot_into(root: &Path) -> Result<()> {
    let none = None::<&str>;
    // pivot_root needs the new root to be a mount point.
    mount(
        Some(root),
        root,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )
    .with_context(|| format!("bind-mounting {}", root.display()))?;
    chdir(root).with_context(|| format!("entering {}", root.display()))?;
    // Stacking the old root under the new one, then detaching it, needs no scratch directory
    // inside the target (which would otherwise end up in the snapshot).
    pivot_root(".", ".").context("pivot_root")?;
    umount2(".", MntFlags::MNT_DETACH).context("detaching the old root")?;
    chdir("/").context("entering the new root")?;
    Ok(())
}

/// Landlock, then capabilities, then no_new_privs and the parent-death signal. `root` is what
/// the job may do to the tree it is pivoted into; `readable` are trees outside the root the
/// helper may read (the snapshot a copy comes from, an overlay's lower layers), `writable`
/// trees it may change (DEST, filled along with a snapshot; an overlay's upper directory).
pub fn lock_down(
    root: Reach,
    readable: &[BorrowedFd],
    writable: &[BorrowedFd],
    parent: Pid,
) -> Result<()> {
    if root == Reach::Read {
        make_read_only(Path::new("/"))?;
    }
    restrict_filesystem(root, readable, writable)?;
    drop_capabilities(root)?;
    prctl::set_no_new_privs().context("setting no_new_privs")?;
    // Also set by the parent before exec; set again because credential changes may clear it.
    prctl::set_pdeathsig(Signal::SIGKILL).context("setting the parent-death signal")?;
    if getppid() != parent {
        bail!("strata exited before the helper was ready");
    }
    // Last: the calls above are not among those the jobs need.
    crate::seccomp::install(crate::seccomp::Wall::Applier)
}

/// Remounts the mount at `mount_point` read-only: a file's mode, owner, times and xattrs,
/// which Landlock does not guard, cannot change either. The flags it has stay, as a user
/// namespace must keep those it was given (nosuid, nodev, noexec, the atime rule).
fn make_read_only(mount_point: &Path) -> Result<()> {
    let has = statvfs(mount_point)
        .with_context(|| format!("reading the flags of {}", mount_point.display()))?
        .flags();
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
    for (kept, flag) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if has.contains(kept) {
            flags |= flag;
        }
    }
    let none = None::<&str>;
    mount(none, mount_point, none, flags, none)
        .with_context(|| format!("remounting {} read-only", mount_point.display()))
}

/// Landlock's rules; what the kernel made of them.
fn restrict_filesystem(
    root: Reach,
    readable: &[BorrowedFd],
    writable: &[BorrowedFd],
) -> Result<RulesetStatus> {
    let all = AccessFs::from_all(LANDLOCK_ABI);
    let mut ruleset = Ruleset::default()
        .handle_access(all)?
        .scope(Scope::from_all(LANDLOCK_ABI))?
        .create()?
        .add_rule(PathBeneath::new(PathFd::new("/")?, root.access()))?;
    for &fd in readable {
        ruleset = ruleset.add_rule(PathBeneath::new(fd, AccessFs::from_read(LANDLOCK_ABI)))?;
    }
    for &fd in writable {
        ruleset = ruleset.add_rule(PathBeneath::new(fd, all))?;
    }
    let status = ruleset
        .restrict_self()
        .context("applying the Landlock ruleset")?;
    // Without Landlock in the kernel the pivot and openat2 walls still stand.
    if status.ruleset == RulesetStatus::NotEnforced {
        eprintln!("strata-helper: Landlock is not available; continuing without it");
    }
    Ok(status.ruleset)
}

fn drop_capabilities(root: Reach) -> Result<()> {
    let kept: CapsHashSet = root.capabilities().iter().copied().collect();
    caps::clear(None, CapSet::Bounding).context("clearing the bounding set")?;
    caps::clear(None, CapSet::Ambient).context("clearing ambient capabilities")?;
    caps::clear(None, CapSet::Inheritable).context("clearing inheritable capabilities")?;
    // capset refuses an effective set larger than the permitted one: shrink effective first.
    caps::set(None, CapSet::Effective, &kept).context("reducing effective capabilities")?;
    caps::set(None, CapSet::Permitted, &kept).context("reducing permitted capabilities")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The walls of a read-only job, tried from a process of its own (see
    //! `seccomp::tests::in_own_process_with_scratch`), in namespaces of its own.

    use std::fs;
    use std::io::ErrorKind;
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;
    use crate::seccomp::tests::in_own_process_with_scratch;

    const PASSWD: &[u8] = b"root:x:0:0::/root:/bin/sh\n";

    /// `scratch/mounted` is remounted read-only, `scratch/landlocked` is left to Landlock.
    /// Both are open to anyone, so that only the walls refuse: the child's user namespace
    /// maps no id, so being an owner gives it nothing.
    fn fill(scratch: &Path) {
        for dir in ["mounted", "landlocked"] {
            let dir = scratch.join(dir);
            fs::create_dir(&dir).unwrap();
            fs::write(dir.join("passwd"), PASSWD).unwrap();
            fs::set_permissions(dir.join("passwd"), fs::Permissions::from_mode(0o666)).unwrap();
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        }
        fs::set_permissions(scratch, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn refused(what: &str, result: std::io::Result<()>, kind: ErrorKind) {
        let err = result.expect_err(what);
        assert_eq!(err.kind(), kind, "{what}: {err}");
    }

    /// Runs `body` in a fork of this process: single-threaded, as a user namespace needs
    /// (the test harness runs each test on a thread of its own).
    fn in_fork(body: impl FnOnce()) {
        // SAFETY: the test harness's other thread only waits for this one; the fork runs
        // `body` and exits without returning.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let passed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).is_ok();
                // SAFETY: ends the fork at once, as a fork should.
                unsafe { libc::_exit(if passed { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }

    fn read_only_child(scratch: &Path) {
        in_fork(|| read_only_walls(scratch));
    }

    fn read_only_walls(scratch: &Path) {
        unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS).unwrap();
        make_mounts_private().unwrap();
        let mounted = scratch.join("mounted");
        let none = None::<&str>;
        mount(Some(&mounted), &mounted, none, MsFlags::MS_BIND, none).unwrap();
        make_read_only(&mounted).unwrap();
        let file = mounted.join("passwd");
        assert_eq!(fs::read(&file).unwrap(), PASSWD);
        // What Landlock does not guard, the mount does.
        let read_only = ErrorKind::ReadOnlyFilesystem;
        let mode = fs::Permissions::from_mode(0o600);
        refused("chmod", fs::set_permissions(&file, mode), read_only);
        let epoch = fs::FileTimes::new().set_modified(std::time::SystemTime::UNIX_EPOCH);
        let set_times = fs::File::open(&file).unwrap().set_times(epoch);
        refused("setting times", set_times, read_only);
        refused("writing", fs::write(&file, "x"), read_only);

        prctl::set_no_new_privs().unwrap();
        let enforced = restrict_filesystem(Reach::Read, &[], &[]).unwrap();
        if enforced == RulesetStatus::NotEnforced {
            eprintln!("note: no Landlock in this kernel; its part of the test is skipped");
            return;
        }
        let dir = scratch.join("landlocked");
        let file = dir.join("passwd");
        assert_eq!(fs::read(&file).unwrap(), PASSWD);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        let denied = ErrorKind::PermissionDenied;
        refused("writing", fs::write(&file, "x"), denied);
        refused("creating", fs::write(dir.join("new"), ""), denied);
        refused(
            "making a directory",
            fs::create_dir(dir.join("dir")),
            denied,
        );
        refused("removing", fs::remove_file(&file), denied);
        refused("renaming", fs::rename(&file, dir.join("moved")), denied);
        refused("linking", symlink("/", dir.join("link")), denied);
    }

    #[test]
    fn a_job_that_only_reads_its_root_changes_nothing_in_it() {
        in_own_process_with_scratch(
            "confine::tests::a_job_that_only_reads_its_root_changes_nothing_in_it",
            fill,
            read_only_child,
        );
    }

    #[test]
    fn reading_keeps_only_the_capability_to_read() {
        assert_eq!(
            Reach::Read.capabilities(),
            [Capability::CAP_DAC_READ_SEARCH]
        );
        assert!(
            !Reach::Write
                .capabilities()
                .contains(&Capability::CAP_SYS_ADMIN)
        );
    }
}
