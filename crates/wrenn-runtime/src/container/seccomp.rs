//! The capsule's seccomp filter: compiled once per runtime start, loaded by the agent.
//!
//! The filter allows by default and denies what Docker's default profile denies (see
//! [`DENIED`]). It is written as a raw classic-BPF program (`struct sock_filter[]`, native
//! endianness, 8 bytes per instruction) to `data_dir/runtime/seccomp.bpf`; the agent reads that
//! file and installs it with `seccomp(SECCOMP_SET_MODE_FILTER)` before serving, so each capsule
//! pays only the ~1 ms load and never the 8–20 ms compilation.
//!
//! Program layout:
//! 1. arch check (anything but x86_64 → kill),
//! 2. `clone3` → `ENOSYS`, so libc falls back to `clone`, whose flags a filter can inspect,
//! 3. x32 syscall numbers (bit 30) → `EPERM`,
//! 4. the seccompiler program: listed syscalls → `EPERM`, `clone` with any `CLONE_NEW*` flag →
//!    `EPERM`, `personality` other than the harmless values → `EPERM`, `socket` and
//!    `socketpair` with domain `AF_VSOCK` → `EPERM` (as Docker: vsock reaches the hypervisor
//!    and other VMs' services, past the capsule's network namespace).
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

/// Syscalls denied outright with `EPERM` (Docker's default profile denies them for a container
/// without CAP_SYS_ADMIN & co.).
pub const DENIED: &[(&str, i64)] = &[
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("create_module", 174),
    ("get_kernel_syms", 177),
    ("query_module", 178),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("add_key", libc::SYS_add_key),
    ("keyctl", libc::SYS_keyctl),
    ("request_key", libc::SYS_request_key),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("acct", libc::SYS_acct),
    ("quotactl", libc::SYS_quotactl),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("syslog", libc::SYS_syslog),
    ("uselib", libc::SYS_uselib),
    ("nfsservctl", libc::SYS_nfsservctl),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("kcmp", libc::SYS_kcmp),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("_sysctl", libc::SYS__sysctl),
    ("ustat", libc::SYS_ustat),
    ("sysfs", libc::SYS_sysfs),
    ("vhangup", libc::SYS_vhangup),
    ("fanotify_init", libc::SYS_fanotify_init),
];

/// `CLONE_NEW*` flags that `clone` may not carry.
const CLONE_NS_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    0x80, // CLONE_NEWTIME
];

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
    for (_, nr) in DENIED {
        rules.insert(*nr, Vec::new());
    }
    let clone_rules = CLONE_NS_FLAGS
        .iter()
        .map(|f| {
            SeccompRule::new(vec![cond(0, SeccompCmpOp::MaskedEq(*f), *f)?])
                .map_err(SeccompCompileError::Rules)
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    let personality = PERSONALITY_ALLOWED
        .iter()
        .map(|v| cond(0, SeccompCmpOp::Ne, *v))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(
        libc::SYS_personality,
        vec![SeccompRule::new(personality).map_err(SeccompCompileError::Rules)?],
    );
    for nr in [libc::SYS_socket, libc::SYS_socketpair] {
        // `domain` is an int: compare the low 32 bits only (the upper half is not defined).
        let domain_rules = DENIED_SOCKET_DOMAINS
            .iter()
            .map(|d| {
                let c = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *d)
                    .map_err(SeccompCompileError::Rules)?;
                SeccompRule::new(vec![c]).map_err(SeccompCompileError::Rules)
            })
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(nr, domain_rules);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
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
}
