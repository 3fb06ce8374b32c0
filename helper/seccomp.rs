//! The helper's seccomp wall: after its lockdown, the kernel answers only the calls its jobs
//! make (listed from traces of every job in every mode); anything else is refused with ENOSYS,
//! as if the kernel lacked it. A compromised parser would find no io_uring, bpf, keyring,
//! ptrace, mounts, sockets or new namespaces.
//!
//! ENOSYS rather than EPERM: glibc starts threads with `clone3`, whose flags a filter cannot
//! see, and falls back to `clone`, whose flags it can, only on ENOSYS.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// Calls allowed whatever their arguments.
const ALLOWED: &[libc::c_long] = &[
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
fn program() -> Result<BpfProgram> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|&call| (call, Vec::new())).collect();
    // A thread, not a namespace: the flags (the first argument) hold none of those.
    let no_namespace = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(NAMESPACE_FLAGS),
        0,
    )?;
    rules.insert(libc::SYS_clone, vec![SeccompRule::new(vec![no_namespace])?]);
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

/// Installs the filter on this thread, and so on every thread it starts. Needs no_new_privs.
pub fn install() -> Result<()> {
    let program = program().context("building the seccomp filter")?;
    seccompiler::apply_filter(&program).context("installing the seccomp filter")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The filter is tried in a process of its own (this test binary run again, for this test
    //! alone): it cannot be taken off once installed.

    use std::process::Command;

    use super::*;

    const CHILD: &str = "STRATA_SECCOMP_TEST_CHILD";

    /// What the child does under the filter: apply a layer with threads, as a helper does,
    /// then try what a compromised helper would.
    fn child() {
        let tmp = tempfile::tempdir().unwrap();
        nix::sys::prctl::set_no_new_privs().unwrap();
        install().unwrap();
        crate::extract::tests::apply_a_small_layer(tmp.path());
        let refused = |name: &str, result: libc::c_long| {
            let errno = std::io::Error::last_os_error().raw_os_error();
            assert_eq!(
                (result, errno),
                (-1, Some(libc::ENOSYS)),
                "{name} was not refused"
            );
        };
        // SAFETY: each call is made with arguments it rejects or ignores when refused; none
        // gets through (that is the test).
        unsafe {
            refused(
                "io_uring_setup",
                libc::syscall(libc::SYS_io_uring_setup, 1, 0),
            );
            refused("bpf", libc::syscall(libc::SYS_bpf, 0, 0, 0));
            refused("keyctl", libc::syscall(libc::SYS_keyctl, 0, 0));
            refused("ptrace", libc::syscall(libc::SYS_ptrace, 0, 0, 0, 0));
            refused("mount", libc::syscall(libc::SYS_mount, 0, 0, 0, 0, 0));
            refused("fsopen", libc::syscall(libc::SYS_fsopen, 0, 0));
            refused(
                "socket",
                libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0),
            );
            refused(
                "unshare",
                libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER),
            );
            let flags = (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_long;
            refused(
                "clone(CLONE_NEWUSER)",
                libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0),
            );
            refused("userfaultfd", libc::syscall(libc::SYS_userfaultfd, 0));
            refused(
                "perf_event_open",
                libc::syscall(libc::SYS_perf_event_open, 0, 0, 0, 0, 0),
            );
        }
    }

    #[test]
    fn under_the_filter_layers_apply_and_the_rest_is_refused() {
        if std::env::var_os(CHILD).is_some() {
            return child();
        }
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "seccomp::tests::under_the_filter_layers_apply_and_the_rest_is_refused",
            ])
            .args(["--nocapture", "--test-threads", "1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{printed}");
        assert!(printed.contains("1 passed"), "{printed}");
    }
}
