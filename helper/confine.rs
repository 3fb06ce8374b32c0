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

fn restrict_filesystem(
    root: Reach,
    readable: &[BorrowedFd],
    writable: &[BorrowedFd],
) -> Result<()> {
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
    Ok(())
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
    //! Landlock's rules, tried from a process of its own (see
    //! `seccomp::tests::in_own_process`): the whole filesystem stands for the root.

    use std::fs;
    use std::io::ErrorKind;

    use super::*;
    use crate::seccomp::tests::in_own_process;

    /// A job that only reads its root can read it, and change nothing in it.
    fn read_only_child() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("passwd");
        fs::write(&file, "root:x:0:0::/root:/bin/sh\n").unwrap();
        prctl::set_no_new_privs().unwrap();
        restrict_filesystem(Reach::Read, &[], &[]).unwrap();

        assert_eq!(fs::read(&file).unwrap(), b"root:x:0:0::/root:/bin/sh\n");
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
        let refused = |what: &str, result: std::io::Result<()>| {
            let err = result.expect_err(what);
            assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{what}: {err}");
        };
        refused("writing", fs::write(&file, "root::0:0::/:/bin/sh\n"));
        refused("creating", fs::write(tmp.path().join("new"), ""));
        refused("making a directory", fs::create_dir(tmp.path().join("dir")));
        refused("removing", fs::remove_file(&file));
        refused("renaming", fs::rename(&file, tmp.path().join("moved")));
        refused(
            "linking",
            std::os::unix::fs::symlink("/", tmp.path().join("link")),
        );
    }

    #[test]
    fn a_job_that_only_reads_its_root_changes_nothing_in_it() {
        in_own_process(
            "confine::tests::a_job_that_only_reads_its_root_changes_nothing_in_it",
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
