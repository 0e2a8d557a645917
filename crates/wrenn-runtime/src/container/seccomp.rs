//! The capsule's seccomp filter: compiled once per runtime start, loaded by the agent.
//!
//! **Default deny.** Only the syscalls in [`ALLOWED`] (modelled on Docker's default profile for
//! a container without `CAP_SYS_ADMIN`, `CAP_SYS_PTRACE`, `CAP_SYS_NICE`, `CAP_SYS_TIME`, …) and
//! a few with argument checks reach the kernel; every other number, including syscalls added to
//! future kernels, fails with `EPERM`. The program is written as raw classic BPF
//! (`struct sock_filter[]`, native endianness, 8 bytes per instruction) to
//! `data_dir/runtime/seccomp.bpf`; the agent reads that file and installs it with
//! `seccomp(SECCOMP_SET_MODE_FILTER)` before serving, so each capsule pays only the ~1 ms load
//! and never the 8–20 ms compilation.
//!
//! Program layout:
//! 1. arch check (anything but x86_64 → kill; i386 binaries cannot enter through `int 0x80`'s
//!    other table),
//! 2. `clone3` → `ENOSYS`, so libc falls back to `clone`, whose flags a filter can inspect,
//! 3. x32 syscall numbers (bit 30) → `EPERM`,
//! 4. the seccompiler program: [`ALLOWED`] → allow; `clone` without any `CLONE_NEW*` flag →
//!    allow; `personality` with one of the harmless values → allow; `socket` and `socketpair`
//!    with any domain but `AF_VSOCK` → allow (as Docker: vsock reaches the hypervisor and other
//!    VMs' services, past the capsule's network namespace); everything else → `EPERM`.
//!
//! Deliberately absent (each reachable only with a capability the capsule lacks, or a kernel
//! attack surface no workload needs): the mount API, `unshare`, `setns`, `bpf`,
//! `perf_event_open`, `userfaultfd`, `io_uring_*`, the keyring, module loading, `kexec`, `reboot`,
//! swap, clock setting, `syslog`, `kcmp`, `process_vm_*`, `open_by_handle_at`,
//! `name_to_handle_at`, NUMA policy (`mbind`, `set_mempolicy`, `migrate_pages`, `move_pages`),
//! `listmount`/`statmount`, `fanotify_init`, `acct`, `quotactl`, `iopl`/`ioperm`, `vhangup`.
//!
//! Limitations: x86_64 only. ptrace is allowed on purpose (as Docker on kernels ≥ 4.8): the
//! pid namespace and the missing CAP_SYS_PTRACE confine it.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Syscalls allowed with any arguments.
pub const ALLOWED: &[(&str, i64)] = &[
    ("accept", libc::SYS_accept),
    ("accept4", libc::SYS_accept4),
    ("access", libc::SYS_access),
    ("alarm", libc::SYS_alarm),
    ("arch_prctl", libc::SYS_arch_prctl),
    ("bind", libc::SYS_bind),
    ("brk", libc::SYS_brk),
    ("cachestat", 451),
    ("capget", libc::SYS_capget),
    ("capset", libc::SYS_capset),
    ("chdir", libc::SYS_chdir),
    ("chmod", libc::SYS_chmod),
    ("chown", libc::SYS_chown),
    ("chroot", libc::SYS_chroot),
    ("clock_getres", libc::SYS_clock_getres),
    ("clock_gettime", libc::SYS_clock_gettime),
    ("clock_nanosleep", libc::SYS_clock_nanosleep),
    ("close", libc::SYS_close),
    ("close_range", libc::SYS_close_range),
    ("connect", libc::SYS_connect),
    ("copy_file_range", libc::SYS_copy_file_range),
    ("creat", libc::SYS_creat),
    ("dup", libc::SYS_dup),
    ("dup2", libc::SYS_dup2),
    ("dup3", libc::SYS_dup3),
    ("epoll_create", libc::SYS_epoll_create),
    ("epoll_create1", libc::SYS_epoll_create1),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("epoll_ctl_old", libc::SYS_epoll_ctl_old),
    ("epoll_pwait", libc::SYS_epoll_pwait),
    ("epoll_pwait2", libc::SYS_epoll_pwait2),
    ("epoll_wait", libc::SYS_epoll_wait),
    ("epoll_wait_old", libc::SYS_epoll_wait_old),
    ("eventfd", libc::SYS_eventfd),
    ("eventfd2", libc::SYS_eventfd2),
    ("execve", libc::SYS_execve),
    ("execveat", libc::SYS_execveat),
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
    ("faccessat", libc::SYS_faccessat),
    ("faccessat2", libc::SYS_faccessat2),
    ("fadvise64", libc::SYS_fadvise64),
    ("fallocate", libc::SYS_fallocate),
    ("fanotify_mark", libc::SYS_fanotify_mark),
    ("fchdir", libc::SYS_fchdir),
    ("fchmod", libc::SYS_fchmod),
    ("fchmodat", libc::SYS_fchmodat),
    ("fchmodat2", libc::SYS_fchmodat2),
    ("fchown", libc::SYS_fchown),
    ("fchownat", libc::SYS_fchownat),
    ("fcntl", libc::SYS_fcntl),
    ("fdatasync", libc::SYS_fdatasync),
    ("fgetxattr", libc::SYS_fgetxattr),
    ("flistxattr", libc::SYS_flistxattr),
    ("flock", libc::SYS_flock),
    ("fork", libc::SYS_fork),
    ("fremovexattr", libc::SYS_fremovexattr),
    ("fsetxattr", libc::SYS_fsetxattr),
    ("fstat", libc::SYS_fstat),
    ("fstatfs", libc::SYS_fstatfs),
    ("fsync", libc::SYS_fsync),
    ("ftruncate", libc::SYS_ftruncate),
    ("futex", libc::SYS_futex),
    ("futex_requeue", 456),
    ("futex_wait", 455),
    ("futex_waitv", libc::SYS_futex_waitv),
    ("futex_wake", 454),
    ("futimesat", libc::SYS_futimesat),
    ("get_robust_list", libc::SYS_get_robust_list),
    ("get_thread_area", libc::SYS_get_thread_area),
    ("getcpu", libc::SYS_getcpu),
    ("getcwd", libc::SYS_getcwd),
    ("getdents", libc::SYS_getdents),
    ("getdents64", libc::SYS_getdents64),
    ("getegid", libc::SYS_getegid),
    ("geteuid", libc::SYS_geteuid),
    ("getgid", libc::SYS_getgid),
    ("getgroups", libc::SYS_getgroups),
    ("getitimer", libc::SYS_getitimer),
    ("getpeername", libc::SYS_getpeername),
    ("getpgid", libc::SYS_getpgid),
    ("getpgrp", libc::SYS_getpgrp),
    ("getpid", libc::SYS_getpid),
    ("getppid", libc::SYS_getppid),
    ("getpriority", libc::SYS_getpriority),
    ("getrandom", libc::SYS_getrandom),
    ("getresgid", libc::SYS_getresgid),
    ("getresuid", libc::SYS_getresuid),
    ("getrlimit", libc::SYS_getrlimit),
    ("getrusage", libc::SYS_getrusage),
    ("getsid", libc::SYS_getsid),
    ("getsockname", libc::SYS_getsockname),
    ("getsockopt", libc::SYS_getsockopt),
    ("gettid", libc::SYS_gettid),
    ("gettimeofday", libc::SYS_gettimeofday),
    ("getuid", libc::SYS_getuid),
    ("getxattr", libc::SYS_getxattr),
    ("inotify_add_watch", libc::SYS_inotify_add_watch),
    ("inotify_init", libc::SYS_inotify_init),
    ("inotify_init1", libc::SYS_inotify_init1),
    ("inotify_rm_watch", libc::SYS_inotify_rm_watch),
    ("io_cancel", libc::SYS_io_cancel),
    ("io_destroy", libc::SYS_io_destroy),
    ("io_getevents", libc::SYS_io_getevents),
    ("io_pgetevents", 333),
    ("io_setup", libc::SYS_io_setup),
    ("io_submit", libc::SYS_io_submit),
    ("ioctl", libc::SYS_ioctl),
    ("ioprio_get", libc::SYS_ioprio_get),
    ("ioprio_set", libc::SYS_ioprio_set),
    ("kill", libc::SYS_kill),
    ("landlock_add_rule", libc::SYS_landlock_add_rule),
    ("landlock_create_ruleset", libc::SYS_landlock_create_ruleset),
    ("landlock_restrict_self", libc::SYS_landlock_restrict_self),
    ("lchown", libc::SYS_lchown),
    ("lgetxattr", libc::SYS_lgetxattr),
    ("link", libc::SYS_link),
    ("linkat", libc::SYS_linkat),
    ("listen", libc::SYS_listen),
    ("listxattr", libc::SYS_listxattr),
    ("llistxattr", libc::SYS_llistxattr),
    ("lremovexattr", libc::SYS_lremovexattr),
    ("lseek", libc::SYS_lseek),
    ("lsetxattr", libc::SYS_lsetxattr),
    ("lstat", libc::SYS_lstat),
    ("madvise", libc::SYS_madvise),
    ("map_shadow_stack", 453),
    ("membarrier", libc::SYS_membarrier),
    ("memfd_create", libc::SYS_memfd_create),
    ("memfd_secret", libc::SYS_memfd_secret),
    ("mincore", libc::SYS_mincore),
    ("mkdir", libc::SYS_mkdir),
    ("mkdirat", libc::SYS_mkdirat),
    ("mknod", libc::SYS_mknod),
    ("mknodat", libc::SYS_mknodat),
    ("mlock", libc::SYS_mlock),
    ("mlock2", libc::SYS_mlock2),
    ("mlockall", libc::SYS_mlockall),
    ("mmap", libc::SYS_mmap),
    ("modify_ldt", libc::SYS_modify_ldt),
    ("mprotect", libc::SYS_mprotect),
    ("mq_getsetattr", libc::SYS_mq_getsetattr),
    ("mq_notify", libc::SYS_mq_notify),
    ("mq_open", libc::SYS_mq_open),
    ("mq_timedreceive", libc::SYS_mq_timedreceive),
    ("mq_timedsend", libc::SYS_mq_timedsend),
    ("mq_unlink", libc::SYS_mq_unlink),
    ("mremap", libc::SYS_mremap),
    ("mseal", 462),
    ("msgctl", libc::SYS_msgctl),
    ("msgget", libc::SYS_msgget),
    ("msgrcv", libc::SYS_msgrcv),
    ("msgsnd", libc::SYS_msgsnd),
    ("msync", libc::SYS_msync),
    ("munlock", libc::SYS_munlock),
    ("munlockall", libc::SYS_munlockall),
    ("munmap", libc::SYS_munmap),
    ("nanosleep", libc::SYS_nanosleep),
    ("newfstatat", libc::SYS_newfstatat),
    ("open", libc::SYS_open),
    ("openat", libc::SYS_openat),
    ("openat2", libc::SYS_openat2),
    ("pause", libc::SYS_pause),
    ("pidfd_open", libc::SYS_pidfd_open),
    ("pidfd_send_signal", libc::SYS_pidfd_send_signal),
    ("pipe", libc::SYS_pipe),
    ("pipe2", libc::SYS_pipe2),
    ("pkey_alloc", libc::SYS_pkey_alloc),
    ("pkey_free", libc::SYS_pkey_free),
    ("pkey_mprotect", libc::SYS_pkey_mprotect),
    ("poll", libc::SYS_poll),
    ("ppoll", libc::SYS_ppoll),
    ("prctl", libc::SYS_prctl),
    ("pread64", libc::SYS_pread64),
    ("preadv", libc::SYS_preadv),
    ("preadv2", libc::SYS_preadv2),
    ("prlimit64", libc::SYS_prlimit64),
    ("process_mrelease", libc::SYS_process_mrelease),
    ("pselect6", libc::SYS_pselect6),
    ("ptrace", libc::SYS_ptrace),
    ("pwrite64", libc::SYS_pwrite64),
    ("pwritev", libc::SYS_pwritev),
    ("pwritev2", libc::SYS_pwritev2),
    ("read", libc::SYS_read),
    ("readahead", libc::SYS_readahead),
    ("readlink", libc::SYS_readlink),
    ("readlinkat", libc::SYS_readlinkat),
    ("readv", libc::SYS_readv),
    ("recvfrom", libc::SYS_recvfrom),
    ("recvmmsg", libc::SYS_recvmmsg),
    ("recvmsg", libc::SYS_recvmsg),
    ("remap_file_pages", libc::SYS_remap_file_pages),
    ("removexattr", libc::SYS_removexattr),
    ("rename", libc::SYS_rename),
    ("renameat", libc::SYS_renameat),
    ("renameat2", libc::SYS_renameat2),
    ("restart_syscall", libc::SYS_restart_syscall),
    ("rmdir", libc::SYS_rmdir),
    ("rseq", libc::SYS_rseq),
    ("rt_sigaction", libc::SYS_rt_sigaction),
    ("rt_sigpending", libc::SYS_rt_sigpending),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("rt_sigqueueinfo", libc::SYS_rt_sigqueueinfo),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("rt_sigsuspend", libc::SYS_rt_sigsuspend),
    ("rt_sigtimedwait", libc::SYS_rt_sigtimedwait),
    ("rt_tgsigqueueinfo", libc::SYS_rt_tgsigqueueinfo),
    ("sched_get_priority_max", libc::SYS_sched_get_priority_max),
    ("sched_get_priority_min", libc::SYS_sched_get_priority_min),
    ("sched_getaffinity", libc::SYS_sched_getaffinity),
    ("sched_getattr", libc::SYS_sched_getattr),
    ("sched_getparam", libc::SYS_sched_getparam),
    ("sched_getscheduler", libc::SYS_sched_getscheduler),
    ("sched_rr_get_interval", libc::SYS_sched_rr_get_interval),
    ("sched_setaffinity", libc::SYS_sched_setaffinity),
    ("sched_setattr", libc::SYS_sched_setattr),
    ("sched_setparam", libc::SYS_sched_setparam),
    ("sched_setscheduler", libc::SYS_sched_setscheduler),
    ("sched_yield", libc::SYS_sched_yield),
    ("seccomp", libc::SYS_seccomp),
    ("select", libc::SYS_select),
    ("semctl", libc::SYS_semctl),
    ("semget", libc::SYS_semget),
    ("semop", libc::SYS_semop),
    ("semtimedop", libc::SYS_semtimedop),
    ("sendfile", libc::SYS_sendfile),
    ("sendmmsg", libc::SYS_sendmmsg),
    ("sendmsg", libc::SYS_sendmsg),
    ("sendto", libc::SYS_sendto),
    ("set_robust_list", libc::SYS_set_robust_list),
    ("set_thread_area", libc::SYS_set_thread_area),
    ("set_tid_address", libc::SYS_set_tid_address),
    ("setdomainname", libc::SYS_setdomainname),
    ("setfsgid", libc::SYS_setfsgid),
    ("setfsuid", libc::SYS_setfsuid),
    ("setgid", libc::SYS_setgid),
    ("setgroups", libc::SYS_setgroups),
    ("sethostname", libc::SYS_sethostname),
    ("setitimer", libc::SYS_setitimer),
    ("setpgid", libc::SYS_setpgid),
    ("setpriority", libc::SYS_setpriority),
    ("setregid", libc::SYS_setregid),
    ("setresgid", libc::SYS_setresgid),
    ("setresuid", libc::SYS_setresuid),
    ("setreuid", libc::SYS_setreuid),
    ("setrlimit", libc::SYS_setrlimit),
    ("setsid", libc::SYS_setsid),
    ("setsockopt", libc::SYS_setsockopt),
    ("setuid", libc::SYS_setuid),
    ("setxattr", libc::SYS_setxattr),
    ("shmat", libc::SYS_shmat),
    ("shmctl", libc::SYS_shmctl),
    ("shmdt", libc::SYS_shmdt),
    ("shmget", libc::SYS_shmget),
    ("shutdown", libc::SYS_shutdown),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("signalfd", libc::SYS_signalfd),
    ("signalfd4", libc::SYS_signalfd4),
    ("splice", libc::SYS_splice),
    ("stat", libc::SYS_stat),
    ("statfs", libc::SYS_statfs),
    ("statx", libc::SYS_statx),
    ("symlink", libc::SYS_symlink),
    ("symlinkat", libc::SYS_symlinkat),
    ("sync", libc::SYS_sync),
    ("sync_file_range", libc::SYS_sync_file_range),
    ("syncfs", libc::SYS_syncfs),
    ("sysinfo", libc::SYS_sysinfo),
    ("tee", libc::SYS_tee),
    ("tgkill", libc::SYS_tgkill),
    ("time", libc::SYS_time),
    ("timer_create", libc::SYS_timer_create),
    ("timer_delete", libc::SYS_timer_delete),
    ("timer_getoverrun", libc::SYS_timer_getoverrun),
    ("timer_gettime", libc::SYS_timer_gettime),
    ("timer_settime", libc::SYS_timer_settime),
    ("timerfd_create", libc::SYS_timerfd_create),
    ("timerfd_gettime", libc::SYS_timerfd_gettime),
    ("timerfd_settime", libc::SYS_timerfd_settime),
    ("times", libc::SYS_times),
    ("tkill", libc::SYS_tkill),
    ("truncate", libc::SYS_truncate),
    ("umask", libc::SYS_umask),
    ("uname", libc::SYS_uname),
    ("unlink", libc::SYS_unlink),
    ("unlinkat", libc::SYS_unlinkat),
    ("utime", libc::SYS_utime),
    ("utimensat", libc::SYS_utimensat),
    ("utimes", libc::SYS_utimes),
    ("vfork", libc::SYS_vfork),
    ("vmsplice", libc::SYS_vmsplice),
    ("wait4", libc::SYS_wait4),
    ("waitid", libc::SYS_waitid),
    ("write", libc::SYS_write),
    ("writev", libc::SYS_writev),
];

/// `CLONE_NEW*` flags that `clone` may not carry.
const CLONE_NS_FLAGS: u64 = libc::CLONE_NEWNS as u64
    | libc::CLONE_NEWCGROUP as u64
    | libc::CLONE_NEWUTS as u64
    | libc::CLONE_NEWIPC as u64
    | libc::CLONE_NEWUSER as u64
    | libc::CLONE_NEWPID as u64
    | libc::CLONE_NEWNET as u64
    | 0x80; // CLONE_NEWTIME

/// `personality(2)` values Docker allows: PER_LINUX, PER_LINUX32, UNAME26 variants, query.
const PERSONALITY_ALLOWED: &[u64] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// Socket domains that `socket` and `socketpair` may not create.
const DENIED_SOCKET_DOMAINS: &[u64] = &[libc::AF_VSOCK as u64];

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Why compiling the filter failed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompCompileError {
    /// seccompiler rejected a rule.
    #[error("building seccomp rules")]
    Rules(#[source] seccompiler::BackendError),
    /// seccompiler could not turn the rules into BPF.
    #[error("compiling seccomp filter to bpf")]
    Compile(#[source] seccompiler::BackendError),
    /// Writing the program file failed.
    #[error("writing {path}")]
    Write {
        /// Target file.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SeccompCompileError> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value)
        .map_err(SeccompCompileError::Rules)
}

/// Compiles the capsule filter to a BPF program.
pub fn compile() -> Result<BpfProgram, SeccompCompileError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, nr) in ALLOWED {
        rules.insert(*nr, Vec::new());
    }
    let rule = |conds| SeccompRule::new(conds).map_err(SeccompCompileError::Rules);
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(
            0,
            SeccompCmpOp::MaskedEq(CLONE_NS_FLAGS),
            0,
        )?])?],
    );
    let personality = PERSONALITY_ALLOWED
        .iter()
        .map(|v| rule(vec![cond(0, SeccompCmpOp::Eq, *v)?]))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_personality, personality);
    for nr in [libc::SYS_socket, libc::SYS_socketpair] {
        // `domain` is an int: compare the low 32 bits only (the upper half is not defined).
        let domain_ok = DENIED_SOCKET_DOMAINS
            .iter()
            .map(|d| {
                SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, *d)
                    .map_err(SeccompCompileError::Rules)
            })
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(nr, vec![rule(domain_ok)?]);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(SeccompCompileError::Rules)?;
    let body: BpfProgram = filter.try_into().map_err(SeccompCompileError::Compile)?;

    let ins = |code: u16, jt: u8, jf: u8, k: u32| seccompiler::sock_filter { code, jt, jf, k };
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;
    let mut prog = vec![
        ins(LD_W_ABS, 0, 0, 4), // seccomp_data.arch
        ins(JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        ins(RET_K, 0, 0, RET_KILL_PROCESS),
        ins(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        ins(JEQ_K, 0, 1, libc::SYS_clone3 as u32),
        ins(RET_K, 0, 0, RET_ERRNO | libc::ENOSYS as u32),
        ins(JGE_K, 0, 1, X32_SYSCALL_BIT),
        ins(RET_K, 0, 0, RET_ERRNO | libc::EPERM as u32),
    ];
    prog.extend(body);
    Ok(prog)
}

/// Raw bytes of a program, as the agent's `--seccomp FILE` expects them.
pub fn to_bytes(prog: &[seccompiler::sock_filter]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prog.len() * 8);
    for i in prog {
        out.extend_from_slice(&i.code.to_ne_bytes());
        out.push(i.jt);
        out.push(i.jf);
        out.extend_from_slice(&i.k.to_ne_bytes());
    }
    out
}

/// Compiles the filter and writes it to `path` (atomically: temp file + rename).
pub fn write_filter(path: &Path) -> Result<usize, SeccompCompileError> {
    let prog = compile()?;
    let bytes = to_bytes(&prog);
    let tmp = path.with_extension("tmp");
    let werr = |source| SeccompCompileError::Write {
        path: path.display().to_string(),
        source,
    };
    std::fs::write(&tmp, &bytes).map_err(werr)?;
    // Read by the agent as capsule root, an unprivileged host uid.
    std::fs::set_permissions(
        &tmp,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644),
    )
    .map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)?;
    Ok(prog.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_to_a_loadable_size() {
        let prog = compile().expect("compile");
        // The kernel's BPF_MAXINSNS is 4096.
        assert!(
            prog.len() > 60 && prog.len() < 4096,
            "{} instructions",
            prog.len()
        );
        assert_eq!(to_bytes(&prog).len(), prog.len() * 8);
    }

    /// Runs `prog` on one `seccomp_data` (x86_64, little endian) with a tiny classic-BPF
    /// interpreter covering the instructions seccompiler and [`compile`] emit.
    fn run(prog: &[seccompiler::sock_filter], nr: i64, args: [u64; 6]) -> u32 {
        let mut data = Vec::with_capacity(64);
        data.extend_from_slice(&(nr as u32).to_ne_bytes());
        data.extend_from_slice(&AUDIT_ARCH_X86_64.to_ne_bytes());
        data.extend_from_slice(&0u64.to_ne_bytes()); // instruction pointer
        for a in args {
            data.extend_from_slice(&a.to_ne_bytes());
        }
        let (mut acc, mut pc) = (0u32, 0usize);
        loop {
            let i = &prog[pc];
            pc += 1;
            let (class, op, src_x) = (i.code & 0x07, i.code & 0xf0, i.code & 0x08 != 0);
            assert!(!src_x, "unexpected X-register instruction {:#x}", i.code);
            match class {
                0x00 => {
                    assert_eq!(i.code, 0x20, "only LD|W|ABS");
                    let k = i.k as usize;
                    acc = u32::from_ne_bytes(data[k..k + 4].try_into().expect("4 bytes"));
                }
                0x04 => match op {
                    0x50 => acc &= i.k,
                    0x40 => acc |= i.k,
                    other => panic!("alu op {other:#x}"),
                },
                0x05 => {
                    let taken = match op {
                        0x00 => {
                            pc += i.k as usize;
                            continue;
                        }
                        0x10 => acc == i.k,
                        0x20 => acc > i.k,
                        0x30 => acc >= i.k,
                        0x40 => acc & i.k != 0,
                        other => panic!("jmp op {other:#x}"),
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                0x06 => return i.k,
                other => panic!("class {other:#x}"),
            }
        }
    }

    #[test]
    fn vsock_sockets_are_refused_other_domains_allowed() {
        let prog = compile().expect("compile");
        let eperm = RET_ERRNO | libc::EPERM as u32;
        let allow = 0x7fff_0000;
        let vsock = libc::AF_VSOCK as u64;
        // Garbage in the upper half of the int argument does not matter.
        for domain in [vsock, vsock | 0xdead_0000_0000] {
            let args = [domain, libc::SOCK_STREAM as u64, 0, 0, 0, 0];
            assert_eq!(run(&prog, libc::SYS_socket, args), eperm);
            assert_eq!(run(&prog, libc::SYS_socketpair, args), eperm);
        }
        for domain in [
            libc::AF_INET,
            libc::AF_INET6,
            libc::AF_UNIX,
            libc::AF_NETLINK,
        ] {
            let args = [domain as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0];
            assert_eq!(run(&prog, libc::SYS_socket, args), allow, "{domain}");
            assert_eq!(run(&prog, libc::SYS_socketpair, args), allow, "{domain}");
        }
        // Sanity of the interpreter against the rest of the program.
        assert_eq!(run(&prog, libc::SYS_mount, [0; 6]), eperm);
        assert_eq!(run(&prog, libc::SYS_getpid, [0; 6]), allow);
        assert_eq!(
            run(&prog, libc::SYS_clone3, [0; 6]),
            RET_ERRNO | libc::ENOSYS as u32
        );
    }

    const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;
    const ALLOW: u32 = 0x7fff_0000;

    #[test]
    fn default_is_deny_and_the_allow_list_is_allowed() {
        let prog = compile().expect("compile");
        for (name, nr) in ALLOWED {
            assert_eq!(run(&prog, *nr, [0; 6]), ALLOW, "{name}");
        }
        let refused: &[(&str, i64)] = &[
            ("mount", libc::SYS_mount),
            ("umount2", libc::SYS_umount2),
            ("pivot_root", libc::SYS_pivot_root),
            ("move_mount", libc::SYS_move_mount),
            ("open_tree", libc::SYS_open_tree),
            ("fsopen", libc::SYS_fsopen),
            ("unshare", libc::SYS_unshare),
            ("setns", libc::SYS_setns),
            ("bpf", libc::SYS_bpf),
            ("perf_event_open", libc::SYS_perf_event_open),
            ("userfaultfd", libc::SYS_userfaultfd),
            ("io_uring_setup", libc::SYS_io_uring_setup),
            ("keyctl", libc::SYS_keyctl),
            ("add_key", libc::SYS_add_key),
            ("init_module", libc::SYS_init_module),
            ("finit_module", libc::SYS_finit_module),
            ("kexec_load", libc::SYS_kexec_load),
            ("reboot", libc::SYS_reboot),
            ("swapon", libc::SYS_swapon),
            ("clock_settime", libc::SYS_clock_settime),
            ("settimeofday", libc::SYS_settimeofday),
            ("adjtimex", libc::SYS_adjtimex),
            ("syslog", libc::SYS_syslog),
            ("kcmp", libc::SYS_kcmp),
            ("process_vm_readv", libc::SYS_process_vm_readv),
            ("open_by_handle_at", libc::SYS_open_by_handle_at),
            ("name_to_handle_at", libc::SYS_name_to_handle_at),
            ("mbind", libc::SYS_mbind),
            ("set_mempolicy", libc::SYS_set_mempolicy),
            ("migrate_pages", libc::SYS_migrate_pages),
            ("move_pages", libc::SYS_move_pages),
            ("statmount", 457),
            ("listmount", 458),
            ("fanotify_init", libc::SYS_fanotify_init),
            ("acct", libc::SYS_acct),
            ("iopl", libc::SYS_iopl),
            ("vhangup", libc::SYS_vhangup),
            ("pidfd_getfd", libc::SYS_pidfd_getfd),
            ("a future syscall", 600),
            ("a huge number", 0x3fff_ffff),
        ];
        for (name, nr) in refused {
            assert!(
                !ALLOWED.iter().any(|(_, a)| a == nr),
                "{name} is on the allow-list"
            );
            assert_eq!(run(&prog, *nr, [0; 6]), EPERM, "{name}");
        }
        // x32 numbers never reach the table.
        assert_eq!(run(&prog, 0x4000_0000 | libc::SYS_getpid, [0; 6]), EPERM);
    }

    #[test]
    fn allow_list_has_no_duplicates() {
        let mut nrs: Vec<i64> = ALLOWED.iter().map(|(_, n)| *n).collect();
        nrs.sort_unstable();
        nrs.dedup();
        assert_eq!(nrs.len(), ALLOWED.len());
    }

    #[test]
    fn clone_may_make_threads_and_processes_but_no_namespace() {
        let prog = compile().expect("compile");
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        let fork = (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD) as u64;
        assert_eq!(run(&prog, libc::SYS_clone, [thread, 0, 0, 0, 0, 0]), ALLOW);
        assert_eq!(run(&prog, libc::SYS_clone, [fork, 0, 0, 0, 0, 0]), ALLOW);
        for ns in [
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWNS,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWCGROUP,
            libc::CLONE_NEWIPC,
            libc::CLONE_NEWUTS,
            0x80,
        ] {
            let flags = fork | ns as u64;
            assert_eq!(run(&prog, libc::SYS_clone, [flags, 0, 0, 0, 0, 0]), EPERM);
        }
    }

    #[test]
    fn personality_allows_only_the_harmless_values() {
        let prog = compile().expect("compile");
        for v in PERSONALITY_ALLOWED {
            assert_eq!(
                run(&prog, libc::SYS_personality, [*v, 0, 0, 0, 0, 0]),
                ALLOW
            );
        }
        // ADDR_NO_RANDOMIZE would switch off ASLR for the capsule's children.
        assert_eq!(
            run(&prog, libc::SYS_personality, [0x0040000, 0, 0, 0, 0, 0]),
            EPERM
        );
    }
}
