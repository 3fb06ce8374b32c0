//! The helper's seccomp walls, one per role: after its setup, the kernel answers only the calls
//! the role makes (listed from traces of every job in every mode); anything else is refused
//! with ENOSYS, as if the kernel lacked it. A compromised parser would find no io_uring, bpf,
//! keyring, ptrace, mounts, sockets or new namespaces; a compromised decoder, not even a file
//! to open.
//!
//! ENOSYS rather than EPERM: glibc starts threads with `clone3`, whose flags a filter cannot
//! see, and falls back to `clone`, whose flags it can, only on ENOSYS.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// Which process a wall is for.
#[derive(Clone, Copy, Debug)]
pub enum Wall {
    /// The applier (and the copy and clear jobs): files, metadata, threads.
    Applier,
    /// The inflater: its pipes and the ring, memory that cannot be made executable, locks,
    /// and ending a thread or the process.
    Inflater,
}

/// The applier's calls allowed whatever their arguments.
const APPLIER: &[libc::c_long] = &[
    // Reading the layer, writing the reply, files and their contents.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_dup,
    libc::SYS_fcntl,
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_getdents64,
    libc::SYS_ftruncate,
    libc::SYS_copy_file_range,
    // Copies between an overlay mount and another filesystem.
    libc::SYS_sendfile,
    // Making and removing names.
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_symlinkat,
    libc::SYS_linkat,
    libc::SYS_unlinkat,
    libc::SYS_readlinkat,
    // Metadata.
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_utimensat,
    libc::SYS_fsetxattr,
    libc::SYS_fgetxattr,
    libc::SYS_flistxattr,
    libc::SYS_fremovexattr,
    // Memory, threads, time.
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    // Signals (a panic aborts), ids, the end.
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getppid,
    libc::SYS_geteuid,
    libc::SYS_getegid,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The inflater's calls allowed whatever their arguments: `mmap` and `mprotect` are allowed
/// only without `PROT_EXEC`.
const INFLATER: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_brk,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// Flags that would make a new namespace: `clone` with any of them is refused.
const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWTIME) as u64;

/// The filter, for this machine's architecture.
fn program(wall: Wall) -> Result<BpfProgram> {
    let allowed = match wall {
        Wall::Applier => APPLIER,
        Wall::Inflater => INFLATER,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        allowed.iter().map(|&call| (call, Vec::new())).collect();
    match wall {
        Wall::Applier => {
            // A thread, not a namespace: the flags (the first argument) hold none of those.
            rules.insert(libc::SYS_clone, vec![none_of(0, NAMESPACE_FLAGS)?]);
        }
        Wall::Inflater => {
            // Memory, never code: the protection (the third argument) is not executable.
            let not_exec = none_of(2, libc::PROT_EXEC as u64)?;
            rules.insert(libc::SYS_mmap, vec![not_exec.clone()]);
            rules.insert(libc::SYS_mprotect, vec![not_exec]);
        }
    }
    let arch = std::env::consts::ARCH
        .try_into()
        .context("seccomp filters for this architecture")?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::ENOSYS as u32),
        SeccompAction::Allow,
        arch,
    )?;
    Ok(filter.try_into()?)
}

/// A rule that holds when argument `arg` has none of the bits of `flags`.
fn none_of(arg: u8, flags: u64) -> Result<SeccompRule> {
    let condition = SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(flags),
        0,
    )?;
    Ok(SeccompRule::new(vec![condition])?)
}

/// Installs `wall` on this thread, and so on every thread it starts. Needs no_new_privs.
pub fn install(wall: Wall) -> Result<()> {
    let program = program(wall).context("building the seccomp filter")?;
    seccompiler::apply_filter(&program).context("installing the seccomp filter")?;
    Ok(())
}

/// Sets no_new_privs and installs `wall` on every thread of the process at once, the ones
/// already running included.
pub fn install_on_every_thread(wall: Wall) -> Result<()> {
    nix::sys::prctl::set_no_new_privs().context("setting no_new_privs")?;
    let program = program(wall).context("building the seccomp filter")?;
    seccompiler::apply_filter_all_threads(&program).context("installing the seccomp filter")?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    //! A wall is tried in a process of its own (this test binary run again, for one test
    //! alone): it cannot be taken off once installed.

    use std::path::Path;
    use std::process::Command;

    use super::*;

    const CHILD: &str = "STRATA_SECCOMP_TEST_CHILD";

    /// Where [`in_own_process_with_scratch`] tells the child its scratch directory.
    const SCRATCH: &str = "STRATA_SECCOMP_TEST_SCRATCH";

    /// Runs `child` in a process of its own: this test binary, run again for the test `name`
    /// (its full path) alone. Fails if `child` does.
    pub(crate) fn in_own_process(name: &str, child: fn()) {
        if std::env::var_os(CHILD).is_some() {
            return child();
        }
        run_child(name, None);
    }

    /// [`in_own_process`], with a scratch directory that `fill` fills in this process and
    /// `child` gets in its own; this process removes it after, whatever walls the child put
    /// up.
    pub(crate) fn in_own_process_with_scratch(name: &str, fill: fn(&Path), child: fn(&Path)) {
        if std::env::var_os(CHILD).is_some() {
            let scratch = std::env::var_os(SCRATCH).expect("the parent names the scratch");
            return child(Path::new(&scratch));
        }
        let scratch = tempfile::tempdir().unwrap();
        fill(scratch.path());
        run_child(name, Some(scratch.path()));
    }

    /// Runs this test binary again for the test `name` alone, as the child.
    fn run_child(name: &str, scratch: Option<&Path>) {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["--exact", name, "--nocapture", "--test-threads", "1"])
            .env(CHILD, "1");
        if let Some(scratch) = scratch {
            command.env(SCRATCH, scratch);
        }
        let out = command.output().unwrap();
        let printed = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{}: {printed}", out.status);
        assert!(printed.contains("1 passed"), "{printed}");
    }

    /// Asserts that the call `name`, which returned `result`, was refused by the wall.
    pub(crate) fn assert_refused(name: &str, result: libc::c_long) {
        let errno = std::io::Error::last_os_error().raw_os_error();
        assert_eq!(
            (result, errno),
            (-1, Some(libc::ENOSYS)),
            "{name} was not refused"
        );
    }

    /// Under the applier's wall: apply a layer with threads, as a helper does, then try what
    /// a compromised helper would.
    fn applier_child() {
        let tmp = tempfile::tempdir().unwrap();
        // The parent makes the ring, before the helper starts.
        let ring = crate::chunks::tests::ring();
        nix::sys::prctl::set_no_new_privs().unwrap();
        install(Wall::Applier).unwrap();
        crate::extract::tests::apply_a_small_layer(ring, tmp.path());
        // SAFETY: each call is made with arguments it rejects or ignores when refused; none
        // gets through (that is the test).
        unsafe {
            assert_refused(
                "io_uring_setup",
                libc::syscall(libc::SYS_io_uring_setup, 1, 0),
            );
            assert_refused("bpf", libc::syscall(libc::SYS_bpf, 0, 0, 0));
            assert_refused("keyctl", libc::syscall(libc::SYS_keyctl, 0, 0));
            assert_refused("ptrace", libc::syscall(libc::SYS_ptrace, 0, 0, 0, 0));
            assert_refused("mount", libc::syscall(libc::SYS_mount, 0, 0, 0, 0, 0));
            assert_refused("fsopen", libc::syscall(libc::SYS_fsopen, 0, 0));
            assert_refused(
                "socket",
                libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0),
            );
            assert_refused(
                "unshare",
                libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER),
            );
            let flags = (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_long;
            assert_refused(
                "clone(CLONE_NEWUSER)",
                libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0),
            );
            assert_refused("userfaultfd", libc::syscall(libc::SYS_userfaultfd, 0));
            assert_refused(
                "perf_event_open",
                libc::syscall(libc::SYS_perf_event_open, 0, 0, 0, 0, 0),
            );
        }
    }

    #[test]
    fn under_the_applier_wall_layers_apply_and_the_rest_is_refused() {
        in_own_process(
            "seccomp::tests::under_the_applier_wall_layers_apply_and_the_rest_is_refused",
            applier_child,
        );
    }
}
