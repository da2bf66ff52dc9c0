//! An in-kernel echo: an eBPF `sk_skb` stream-verdict program attached to a
//! `SOCKHASH`, loaded through raw `bpf(2)` (no libbpf, no clang), and the socket
//! counters (`TCP_INFO`) a user space that never sees the bytes still needs.
//!
//! The program is forty-one instructions, assembled here with named opcodes and
//! helpers ([`echo_program`]): it builds the 4-tuple of the socket a segment arrived
//! on (the key user space inserted that socket under, [`SockKey`]: both addresses in
//! their IPv6 form, IPv4 ones mapped, so one layout serves IPv4, IPv6 and dual-stack
//! sockets) on its stack and calls `bpf_sk_redirect_hash(skb, map, &key, 0)`, which
//! queues the segment for the *egress* of the socket found (the same one): every
//! byte comes back without the server process waking. A socket that is not in the
//! map has its segments dropped (the helper's verdict), which never happens to a
//! socket user space inserted and has not removed.
//!
//! [`EchoMap::new`] creates the map, loads the program (on failure, again with the
//! verifier's log, which the error carries) and attaches it to the map.
//! [`EchoMap::insert`] adds an accepted socket and then sets `SO_RCVLOWAT` to 1, which
//! makes TCP call the socket's data-ready callback, now the verdict's: bytes that
//! arrived between `accept` and the insertion are echoed too instead of waiting for
//! the next segment. Closing a socket removes it from the map (the kernel does it);
//! dropping the `EchoMap` detaches the program and frees the map.
//!
//! [`probe`] does all of that once with a throwaway map, so that a machine where eBPF
//! is not allowed (no `CAP_BPF`/`CAP_NET_ADMIN`, `kernel.unprivileged_bpf_disabled`),
//! has no sockmap, or whose verifier refuses the program, says so with the reason.
#![allow(unsafe_code)]

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

// bpf(2) commands (include/uapi/linux/bpf.h, `enum bpf_cmd`).
const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_MAP_DELETE_ELEM: libc::c_int = 3;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;

/// `BPF_MAP_TYPE_SOCKHASH`.
const MAP_TYPE_SOCKHASH: u32 = 18;
/// `BPF_PROG_TYPE_SK_SKB`.
const PROG_TYPE_SK_SKB: u32 = 14;
/// `BPF_SK_SKB_STREAM_VERDICT`: without a stream parser, each received skb is judged.
const ATTACH_SK_SKB_STREAM_VERDICT: u32 = 5;
/// `BPF_NOEXIST`: insert only, never replace another socket.
const BPF_NOEXIST: u64 = 1;

/// Largest SOCKHASH we create (the kernel sizes its buckets from it up front).
pub const MAX_ENTRIES: u32 = 1 << 20;

/// The verifier's log buffer (a failed load is retried with it).
const LOG_SIZE: usize = 64 * 1024;

/// One eBPF instruction (`struct bpf_insn`): opcode, destination and source
/// registers (4 bits each), offset, immediate.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// The eBPF registers used here: `R0` return value, `R1`..`R5` arguments, `R6`
/// callee-saved, `R10` the read-only frame pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reg {
    /// Return value of calls and of the program.
    R0 = 0,
    /// First argument (the context on entry).
    R1 = 1,
    /// Second argument.
    R2 = 2,
    /// Third argument.
    R3 = 3,
    /// Fourth argument.
    R4 = 4,
    /// Fifth argument.
    R5 = 5,
    /// Callee-saved.
    R6 = 6,
    /// Frame pointer (the stack grows down from it, 512 bytes).
    R10 = 10,
}

/// Kernel helpers the program calls (`enum bpf_func_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Helper {
    /// `long bpf_sk_redirect_hash(skb, map, key, flags)`: redirect to the socket
    /// stored under `key` (egress unless `BPF_F_INGRESS`); `SK_PASS` or `SK_DROP`.
    SkRedirectHash = 72,
    /// `long bpf_skb_store_bytes(skb, offset, from, len, flags)`: overwrite the
    /// segment's bytes (the experiment that reads the `__sk_buff` address fields).
    SkbStoreBytes = 9,
}

/// Instruction builders, named after the kernel's `BPF_*` macros.
pub mod asm {
    use super::{Helper, Insn, Reg};

    // Instruction classes, sizes, modes and operations (include/uapi/linux/bpf.h).
    const LD: u8 = 0x00;
    const LDX: u8 = 0x01;
    const ST: u8 = 0x02;
    const STX: u8 = 0x03;
    const JMP: u8 = 0x05;
    const ALU64: u8 = 0x07;
    const W: u8 = 0x00;
    const DW: u8 = 0x18;
    const IMM: u8 = 0x00;
    const MEM: u8 = 0x60;
    const K: u8 = 0x00;
    const X: u8 = 0x08;
    const ADD: u8 = 0x00;
    const MOV: u8 = 0xb0;
    const JNE: u8 = 0x50;
    const CALL: u8 = 0x80;
    const EXIT: u8 = 0x90;
    /// `BPF_PSEUDO_MAP_FD`: the immediate of a 64-bit load is a map's descriptor.
    const PSEUDO_MAP_FD: u8 = 1;

    const fn insn(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs: (dst as u8) | ((src as u8) << 4),
            off,
            imm,
        }
    }

    /// `dst = src` (64-bit).
    pub const fn mov64_reg(dst: Reg, src: Reg) -> Insn {
        insn(ALU64 | MOV | X, dst, src, 0, 0)
    }

    /// `dst = imm` (64-bit, sign-extended).
    pub const fn mov64_imm(dst: Reg, imm: i32) -> Insn {
        insn(ALU64 | MOV | K, dst, Reg::R0, 0, imm)
    }

    /// `dst += imm` (64-bit).
    pub const fn add64_imm(dst: Reg, imm: i32) -> Insn {
        insn(ALU64 | ADD | K, dst, Reg::R0, 0, imm)
    }

    /// `dst = *(u32 *)(src + off)`.
    pub const fn ldx_w(dst: Reg, src: Reg, off: i16) -> Insn {
        insn(LDX | MEM | W, dst, src, off, 0)
    }

    /// `*(u32 *)(dst + off) = src`.
    pub const fn stx_w(dst: Reg, off: i16, src: Reg) -> Insn {
        insn(STX | MEM | W, dst, src, off, 0)
    }

    /// `*(u32 *)(dst + off) = imm`.
    pub const fn st_w(dst: Reg, off: i16, imm: i32) -> Insn {
        insn(ST | MEM | W, dst, Reg::R0, off, imm)
    }

    /// `if dst != imm goto +off` (64-bit compare; `off` counts the instructions
    /// skipped after this one).
    pub const fn jne_imm(dst: Reg, imm: i32, off: i16) -> Insn {
        insn(JMP | JNE | K, dst, Reg::R0, off, imm)
    }

    /// `dst = &map` for the map open as descriptor `fd` (two instruction slots).
    pub const fn ld_map_fd(dst: Reg, fd: i32) -> [Insn; 2] {
        [
            Insn {
                code: LD | DW | IMM,
                regs: (dst as u8) | (PSEUDO_MAP_FD << 4),
                off: 0,
                imm: fd,
            },
            Insn {
                code: 0,
                regs: 0,
                off: 0,
                imm: 0,
            },
        ]
    }

    /// Call a kernel helper (arguments in R1..R5, result in R0).
    pub const fn call(helper: Helper) -> Insn {
        insn(JMP | CALL, Reg::R0, Reg::R0, 0, helper as i32)
    }

    /// Return R0.
    pub const fn exit() -> Insn {
        insn(JMP | EXIT, Reg::R0, Reg::R0, 0, 0)
    }
}

/// Offsets in `struct __sk_buff` (include/uapi/linux/bpf.h) of the fields an `sk_skb`
/// program may read about its socket, each a 4-byte load: the family, addresses in
/// network order (an `AF_INET` socket's in the IPv4 fields, an `AF_INET6` socket's in
/// the IPv6 fields, IPv4-mapped for an IPv4 peer), the remote port in network order
/// in the upper half on little-endian machines, the local port in host order.
mod skb {
    pub(super) const FAMILY: i16 = 88;
    pub(super) const REMOTE_IP4: i16 = 92;
    pub(super) const LOCAL_IP4: i16 = 96;
    pub(super) const REMOTE_IP6: i16 = 100;
    pub(super) const LOCAL_IP6: i16 = 116;
    pub(super) const REMOTE_PORT: i16 = 132;
    pub(super) const LOCAL_PORT: i16 = 136;
}

/// Where the program builds the key, below the frame pointer ([`SockKey`]'s layout).
mod key {
    pub(super) const REMOTE_IP6: i16 = -40;
    pub(super) const LOCAL_IP6: i16 = -24;
    pub(super) const REMOTE_PORT: i16 = -8;
    pub(super) const LOCAL_PORT: i16 = -4;
}

/// The third word of an IPv4-mapped address (`::ffff:a.b.c.d`: bytes 00 00 ff ff) as
/// a 4-byte store writes it.
const MAPPED_WORD: i32 = i32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// The size of [`SockKey`], the map's key size.
const KEY_SIZE: usize = std::mem::size_of::<SockKey>();

/// The key a socket is stored under: its 4-tuple exactly as the program builds it
/// from the `__sk_buff` of a segment that arrived on it. Addresses are in their IPv6
/// form (an IPv4 address IPv4-mapped, `::ffff:a.b.c.d`), so an `AF_INET` socket, an
/// `AF_INET6` socket and a dual-stack one with an IPv4 peer all have one layout.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SockKey {
    remote_ip6: [u8; 16],
    local_ip6: [u8; 16],
    remote_port: u32,
    local_port: u32,
}

impl SockKey {
    /// The key of a connection from `remote` to our `local` address: the socket's
    /// `getpeername` and `getsockname` (our address must be the connection's, not a
    /// wildcard listener's). Either family, or IPv4-mapped IPv6 addresses.
    pub fn new(local: SocketAddr, remote: SocketAddr) -> Self {
        SockKey {
            remote_ip6: ipv6_form(remote.ip()).octets(),
            local_ip6: ipv6_form(local.ip()).octets(),
            // `skc_dport` (network order) read as a 32-bit field: the kernel shifts
            // it into the upper half on little-endian machines.
            remote_port: remote_port_field(remote.port()),
            local_port: u32::from(local.port()),
        }
    }

    fn as_bytes(&self) -> [u8; KEY_SIZE] {
        let mut b = [0u8; KEY_SIZE];
        b[0..16].copy_from_slice(&self.remote_ip6);
        b[16..32].copy_from_slice(&self.local_ip6);
        b[32..36].copy_from_slice(&self.remote_port.to_ne_bytes());
        b[36..40].copy_from_slice(&self.local_port.to_ne_bytes());
        b
    }
}

/// An address as the key holds it: IPv6, an IPv4 one mapped.
fn ipv6_form(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

#[cfg(target_endian = "little")]
fn remote_port_field(port: u16) -> u32 {
    u32::from(port.to_be()) << 16
}

#[cfg(target_endian = "big")]
fn remote_port_field(port: u16) -> u32 {
    u32::from(port)
}

/// The verdict program for the map open as `map_fd`: build the segment's 4-tuple on
/// the stack (40 bytes below the frame pointer, in [`SockKey`]'s layout) and redirect
/// the segment to the egress of the socket stored under it. Returns the helper's
/// verdict (`SK_PASS` when redirected, `SK_DROP` when no socket has that key).
///
/// The addresses: the IPv6 fields (an `AF_INET6` socket's, IPv4-mapped for an IPv4
/// peer); then, for an `AF_INET` socket, its IPv4 fields written over them as
/// IPv4-mapped addresses. The IPv6 fields of an `AF_INET` socket are not UAPI (this
/// kernel fills them with the mapped addresses too; one without `CONFIG_IPV6` reads
/// zeros), so the program does not rely on them.
pub fn echo_program(map_fd: i32) -> Vec<Insn> {
    use Reg::*;
    use asm::*;
    let mut p = vec![mov64_reg(R6, R1)];
    for (field, slot) in [
        (skb::REMOTE_IP6, key::REMOTE_IP6),
        (skb::LOCAL_IP6, key::LOCAL_IP6),
    ] {
        for word in 0..4 {
            p.push(ldx_w(R2, R6, field + 4 * word));
            p.push(stx_w(R10, slot + 4 * word, R2));
        }
    }
    let mut ipv4 = Vec::new();
    for (field, slot) in [
        (skb::REMOTE_IP4, key::REMOTE_IP6),
        (skb::LOCAL_IP4, key::LOCAL_IP6),
    ] {
        ipv4.extend([
            st_w(R10, slot, 0),
            st_w(R10, slot + 4, 0),
            st_w(R10, slot + 8, MAPPED_WORD),
            ldx_w(R2, R6, field),
            stx_w(R10, slot + 12, R2),
        ]);
    }
    p.push(ldx_w(R2, R6, skb::FAMILY));
    p.push(jne_imm(R2, libc::AF_INET, ipv4.len() as i16));
    p.extend(ipv4);
    p.extend([
        ldx_w(R2, R6, skb::REMOTE_PORT),
        stx_w(R10, key::REMOTE_PORT, R2),
        ldx_w(R2, R6, skb::LOCAL_PORT),
        stx_w(R10, key::LOCAL_PORT, R2),
        mov64_reg(R1, R6),
    ]);
    p.extend(ld_map_fd(R2, map_fd));
    p.extend([
        mov64_reg(R3, R10),
        add64_imm(R3, i32::from(key::REMOTE_IP6)),
        mov64_imm(R4, 0),
        call(Helper::SkRedirectHash),
        exit(),
    ]);
    p
}

/// Which step of setting up the in-kernel echo failed, why, and the verifier's log
/// when the load was refused.
#[derive(Debug)]
pub struct BpfError {
    /// "creating the SOCKHASH", "loading the verdict program", ...
    pub step: &'static str,
    /// The error bpf(2) returned.
    pub error: io::Error,
    /// The verifier's log of a refused load.
    pub verifier_log: Option<String>,
}

impl BpfError {
    fn new(step: &'static str, error: io::Error) -> Self {
        BpfError {
            step,
            error,
            verifier_log: None,
        }
    }

    /// One line: the step, the error and what it usually means, and the last lines
    /// of the verifier's log.
    pub fn one_line(&self) -> String {
        let mut s = format!("{}: {}", self.step, self.error);
        match self.error.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => {
                s.push_str(&format!(
                    " (needs CAP_BPF and CAP_NET_ADMIN{})",
                    unprivileged_note()
                ));
            }
            Some(libc::EINVAL) if self.step.starts_with("creating") => {
                s.push_str(" (this kernel has no SOCKHASH: CONFIG_BPF_STREAM_PARSER)");
            }
            Some(libc::ENOSYS) => s.push_str(" (this kernel has no bpf(2): CONFIG_BPF_SYSCALL)"),
            _ => {}
        }
        if let Some(log) = &self.verifier_log {
            let tail: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = &tail[tail.len().saturating_sub(3)..];
            s.push_str(&format!("; verifier: {}", tail.join(" | ")));
        }
        s
    }
}

impl fmt::Display for BpfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

impl std::error::Error for BpfError {}

/// `; kernel.unprivileged_bpf_disabled=N` when the sysctl forbids unprivileged eBPF.
fn unprivileged_note() -> String {
    match std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled") {
        Ok(v) if v.trim() != "0" => {
            format!("; kernel.unprivileged_bpf_disabled={}", v.trim())
        }
        _ => String::new(),
    }
}

/// bpf(2) with `attr` (a `#[repr(C)]` prefix of `union bpf_attr`).
///
/// # Safety
///
/// `attr` must be the prefix of `union bpf_attr` that `cmd` reads, and every pointer
/// it holds must be valid for what the kernel does with it during the call (read the
/// instructions, license and key, read or write the value and log buffer).
unsafe fn sys_bpf<T>(cmd: libc::c_int, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: the caller promises `attr` is a valid prefix of `union bpf_attr` for
    // `cmd` with valid pointers; its size is passed, the kernel zero-fills the rest.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Takes ownership of a descriptor bpf(2) returned.
fn owned_fd(r: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(r).map_err(|_| io::Error::other("bpf(2) returned a bad fd"))?;
    // SAFETY: bpf(2) just returned this new descriptor, which nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

fn name16(name: &str) -> [u8; 16] {
    let mut b = [0u8; 16];
    let n = name.len().min(15);
    b[..n].copy_from_slice(&name.as_bytes()[..n]);
    b
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    // Descriptors are never negative.
    fd.as_raw_fd() as u32
}

fn create_sockhash(max_entries: u32) -> Result<OwnedFd, BpfError> {
    let mut attr = MapCreateAttr {
        map_type: MAP_TYPE_SOCKHASH,
        key_size: KEY_SIZE as u32,
        value_size: 4,
        max_entries: max_entries.clamp(1, MAX_ENTRIES),
        map_flags: 0,
        inner_map_fd: 0,
        numa_node: 0,
        map_name: name16("c10k_conns"),
    };
    // SAFETY: a map-create attribute prefix with no pointers.
    let r = unsafe { sys_bpf(BPF_MAP_CREATE, &mut attr) }
        .map_err(|e| BpfError::new("creating the SOCKHASH", e))?;
    owned_fd(r).map_err(|e| BpfError::new("creating the SOCKHASH", e))
}

fn load_program(insns: &[Insn]) -> Result<OwnedFd, BpfError> {
    const LICENSE: &[u8] = b"Dual MIT/GPL\0";
    let step = "loading the verdict program";
    let insn_cnt = u32::try_from(insns.len())
        .map_err(|_| BpfError::new(step, io::Error::other("program too long")))?;
    let mut log = vec![0u8; LOG_SIZE];
    let mut first_error = None;
    // First without a log (cheap), then again with the verifier's log if refused.
    for log_level in [0u32, 1] {
        let mut attr = ProgLoadAttr {
            prog_type: PROG_TYPE_SK_SKB,
            insn_cnt,
            insns: insns.as_ptr() as u64,
            license: LICENSE.as_ptr() as u64,
            log_level,
            log_size: if log_level == 0 { 0 } else { LOG_SIZE as u32 },
            log_buf: if log_level == 0 {
                0
            } else {
                log.as_mut_ptr() as u64
            },
            kern_version: 0,
            prog_flags: 0,
            prog_name: name16("c10k_echo"),
            prog_ifindex: 0,
            expected_attach_type: ATTACH_SK_SKB_STREAM_VERDICT,
        };
        // SAFETY: `insns` (insn_cnt instructions), the NUL-terminated license and
        // the log buffer (LOG_SIZE writable bytes, or none) outlive the call.
        match unsafe { sys_bpf(BPF_PROG_LOAD, &mut attr) } {
            Ok(r) => return owned_fd(r).map_err(|e| BpfError::new(step, e)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]).into_owned();
    let error = first_error.unwrap_or_else(|| io::Error::other("refused"));
    Err(BpfError {
        step,
        error,
        verifier_log: (!text.trim().is_empty()).then_some(text),
    })
}

fn attach_cmd(cmd: libc::c_int, map: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = AttachAttr {
        target_fd: fd_u32(map),
        attach_bpf_fd: fd_u32(prog),
        attach_type: ATTACH_SK_SKB_STREAM_VERDICT,
        attach_flags: 0,
    };
    // SAFETY: an attach/detach attribute prefix with no pointers.
    unsafe { sys_bpf(cmd, &mut attr) }.map(drop)
}

/// A SOCKHASH with the echo verdict program attached: every socket inserted has each
/// received segment sent back out of itself by the kernel.
#[derive(Debug)]
pub struct EchoMap {
    map: OwnedFd,
    prog: OwnedFd,
    attached: bool,
}

impl EchoMap {
    /// Create the map (room for `max_entries` sockets, at most [`MAX_ENTRIES`]),
    /// load the program and attach it.
    pub fn new(max_entries: u32) -> Result<Self, BpfError> {
        Self::with_program(max_entries, echo_program)
    }

    /// Like [`new`](Self::new), with another verdict program (built for the map's
    /// descriptor).
    fn with_program(
        max_entries: u32,
        program: impl FnOnce(i32) -> Vec<Insn>,
    ) -> Result<Self, BpfError> {
        let map = create_sockhash(max_entries)?;
        let prog = load_program(&program(map.as_raw_fd()))?;
        attach_cmd(BPF_PROG_ATTACH, map.as_fd(), prog.as_fd())
            .map_err(|e| BpfError::new("attaching the program to the SOCKHASH", e))?;
        Ok(EchoMap {
            map,
            prog,
            attached: true,
        })
    }

    fn elem(&self, cmd: libc::c_int, key: &SockKey, value: Option<u32>) -> io::Result<()> {
        let key = key.as_bytes();
        let value = value.unwrap_or(0);
        let mut attr = MapElemAttr {
            map_fd: fd_u32(self.map.as_fd()),
            pad: 0,
            key: key.as_ptr() as u64,
            // The delete command's last field is the key: the rest must be zero.
            value: if cmd == BPF_MAP_UPDATE_ELEM {
                std::ptr::from_ref(&value) as u64
            } else {
                0
            },
            flags: if cmd == BPF_MAP_UPDATE_ELEM {
                BPF_NOEXIST
            } else {
                0
            },
        };
        // SAFETY: `key` (KEY_SIZE bytes, the map's key size) and `value` (4 bytes, its
        // value size) live on this stack frame for the whole call; the kernel only
        // reads them.
        unsafe { sys_bpf(cmd, &mut attr) }.map(drop)
    }

    /// Insert an established TCP socket under `key` (its 4-tuple, [`SockKey::new`]);
    /// from now on the kernel echoes what it receives, including what it had already
    /// received (see the module's documentation). `EEXIST` if the key is taken,
    /// `E2BIG`/`ENOMEM` when the map is full.
    pub fn insert(&self, key: &SockKey, socket: BorrowedFd<'_>) -> io::Result<()> {
        self.elem(BPF_MAP_UPDATE_ELEM, key, Some(fd_u32(socket)))?;
        kick(socket)
    }

    /// Remove the socket stored under `key` (closing a socket removes it too).
    pub fn remove(&self, key: &SockKey) -> io::Result<()> {
        self.elem(BPF_MAP_DELETE_ELEM, key, None)
    }

    /// Detach the program (sockets still in the map stop being echoed).
    pub fn detach(&mut self) -> io::Result<()> {
        if !self.attached {
            return Ok(());
        }
        self.attached = false;
        attach_cmd(BPF_PROG_DETACH, self.map.as_fd(), self.prog.as_fd())
    }
}

impl Drop for EchoMap {
    fn drop(&mut self) {
        // The descriptors close after this; the kernel frees the map and the
        // program with their last reference either way.
        let _ = self.detach();
    }
}

/// Set `SO_RCVLOWAT` to 1, which makes TCP call the socket's data-ready callback when
/// it holds data: once the socket is in the map, that callback is the verdict's.
fn kick(socket: BorrowedFd<'_>) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `one` is a valid c_int for the duration of the call; the descriptor is
    // borrowed, so it is open.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            std::ptr::from_ref(&one).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this process may run the in-kernel echo here: creates a map, loads and
/// attaches the program, then drops them. `Err` says why not, in one line.
pub fn probe() -> Result<(), String> {
    EchoMap::new(1).map(drop).map_err(|e| e.one_line())
}

/// What TCP knows of a connection whose bytes user space never sees (`TCP_INFO`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// `tcpi_state` (1 = established).
    pub state: u8,
    /// Bytes received from the peer (`tcpi_bytes_received`).
    pub bytes_received: u64,
    /// Bytes we sent that the peer acknowledged (`tcpi_bytes_acked`).
    pub bytes_acked: u64,
    /// Since data was last received (`tcpi_last_data_recv`, ms precision).
    pub since_recv: Duration,
    /// Since data was last sent (`tcpi_last_data_sent`, ms precision).
    pub since_sent: Duration,
}

/// `getsockopt(TCP_INFO)` on a TCP socket.
pub fn tcp_counters(socket: BorrowedFd<'_>) -> io::Result<TcpCounters> {
    let mut buf = [0u8; 232];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf` is writable for `len` bytes and `len` is a valid socklen_t the
    // kernel updates; the descriptor is borrowed, so it is open.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            buf.as_mut_ptr().cast::<libc::c_void>(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = len as usize;
    if len < 136 {
        return Err(io::Error::other(format!(
            "TCP_INFO is {len} bytes: this kernel has no byte counters (needs 4.1+)"
        )));
    }
    let u32_at = |o: usize| u32::from_ne_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]]);
    let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
    // Offsets in `struct tcp_info` (include/uapi/linux/tcp.h).
    Ok(TcpCounters {
        state: buf[0],
        since_sent: Duration::from_millis(u64::from(u32_at(44))),
        since_recv: Duration::from_millis(u64::from(u32_at(52))),
        bytes_acked: u64_at(120),
        bytes_received: u64_at(128),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_encode_like_the_kernel_macros() {
        // BPF_MOV64_REG(BPF_REG_6, BPF_REG_1) = bf 16 00 00 00000000
        assert_eq!(
            asm::mov64_reg(Reg::R6, Reg::R1),
            Insn {
                code: 0xbf,
                regs: 0x16,
                off: 0,
                imm: 0
            }
        );
        // BPF_LDX_MEM(BPF_W, BPF_REG_2, BPF_REG_6, 92) = 61 62 5c00
        assert_eq!(
            asm::ldx_w(Reg::R2, Reg::R6, 92),
            Insn {
                code: 0x61,
                regs: 0x62,
                off: 92,
                imm: 0
            }
        );
        // BPF_STX_MEM(BPF_W, BPF_REG_10, BPF_REG_2, -16) = 63 2a f0ff
        assert_eq!(asm::stx_w(Reg::R10, -16, Reg::R2).regs, 0x2a);
        // BPF_ST_MEM(BPF_W, BPF_REG_10, -32, 0xffff0000) = 62 0a e0ff 0000ffff
        assert_eq!(
            asm::st_w(Reg::R10, -32, MAPPED_WORD),
            Insn {
                code: 0x62,
                regs: 0x0a,
                off: -32,
                imm: MAPPED_WORD
            }
        );
        assert_eq!(MAPPED_WORD.to_ne_bytes(), [0, 0, 0xff, 0xff]);
        // BPF_JMP_IMM(BPF_JNE, BPF_REG_2, AF_INET, 10) = 55 02 0a00 02000000
        assert_eq!(
            asm::jne_imm(Reg::R2, 2, 10),
            Insn {
                code: 0x55,
                regs: 0x02,
                off: 10,
                imm: 2
            }
        );
        assert_eq!(asm::ld_map_fd(Reg::R2, 7)[0].regs, 0x12);
        assert_eq!(asm::ld_map_fd(Reg::R2, 7)[0].code, 0x18);
        assert_eq!(asm::call(Helper::SkRedirectHash).code, 0x85);
        assert_eq!(asm::call(Helper::SkRedirectHash).imm, 72);
        assert_eq!(asm::exit().code, 0x95);
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        assert_eq!(echo_program(3).len(), 41);
    }

    #[test]
    fn the_key_has_the_layout_the_program_builds() {
        assert_eq!(KEY_SIZE, 40);
        assert_eq!(key::REMOTE_IP6, -(KEY_SIZE as i16));
        let k = SockKey::new(
            "127.0.0.1:7000".parse().unwrap(),
            "127.0.0.2:40000".parse().unwrap(),
        );
        let b = k.as_bytes();
        let mapped = |last: u8| [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, last];
        assert_eq!(b[0..16], mapped(2));
        assert_eq!(b[16..32], mapped(1));
        assert_eq!(
            u32::from_ne_bytes(b[32..36].try_into().unwrap()),
            remote_port_field(40000)
        );
        assert_eq!(u32::from_ne_bytes(b[36..40].try_into().unwrap()), 7000);
        // An IPv4 peer of a dual-stack socket (IPv4-mapped addresses) has the key of
        // the same peer of an IPv4 socket.
        let dual = SockKey::new(
            "[::ffff:127.0.0.1]:7000".parse().unwrap(),
            "[::ffff:127.0.0.2]:40000".parse().unwrap(),
        );
        assert_eq!(dual, k);
        let v6 = SockKey::new(
            "[::1]:7000".parse().unwrap(),
            "[fe80::2]:40000".parse().unwrap(),
        );
        assert_eq!(b[32..], v6.as_bytes()[32..]);
        assert_eq!(
            v6.as_bytes()[0..16],
            "fe80::2".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(v6.as_bytes()[16..32], Ipv6Addr::LOCALHOST.octets());
    }
}

/// Real sockets over loopback (needs CAP_BPF and CAP_NET_ADMIN: fails with the reason
/// otherwise, never passes silently).
#[cfg(test)]
mod loopback {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};

    fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
        pair_via(l, None)
    }

    /// A connection to `l`, to its port on `connect_to` if given (an IPv4 client of a
    /// dual-stack listener).
    fn pair_via(l: &TcpListener, connect_to: Option<&str>) -> (TcpStream, TcpStream) {
        let to = match connect_to {
            Some(ip) => SocketAddr::new(ip.parse().unwrap(), l.local_addr().unwrap().port()),
            None => l.local_addr().unwrap(),
        };
        let c = TcpStream::connect(to).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    fn insert(m: &EchoMap, s: &TcpStream) -> SockKey {
        let key = SockKey::new(s.local_addr().unwrap(), s.peer_addr().unwrap());
        m.insert(&key, s.as_fd()).unwrap();
        key
    }

    fn echo_map() -> EchoMap {
        EchoMap::new(16).unwrap_or_else(|e| panic!("the in-kernel echo cannot run here: {e}"))
    }

    /// The words of `__sk_buff` from `family` to `local_port` (13 of them, 52 bytes).
    const FIELD_WORDS: i16 = 13;

    /// An experiment, not the echo: copy the `__sk_buff` fields from `family` to
    /// `local_port` over the first 52 bytes of the segment and pass it to the
    /// socket's own receive queue (`SK_PASS`), where user space reads them.
    fn fields_program(_map_fd: i32) -> Vec<Insn> {
        use Reg::*;
        use asm::*;
        let mut p = vec![mov64_reg(R6, R1)];
        for i in 0..FIELD_WORDS {
            p.push(ldx_w(R2, R6, skb::FAMILY + 4 * i));
            p.push(stx_w(R10, -4 * FIELD_WORDS + 4 * i, R2));
        }
        p.extend([
            mov64_reg(R1, R6),
            mov64_imm(R2, 0),
            mov64_reg(R3, R10),
            add64_imm(R3, -4 * i32::from(FIELD_WORDS)),
            mov64_imm(R4, 4 * i32::from(FIELD_WORDS)),
            mov64_imm(R5, 0),
            call(Helper::SkbStoreBytes),
            mov64_imm(R0, 1),
            exit(),
        ]);
        p
    }

    /// What the program reads about the socket a segment arrived on.
    #[derive(Debug, PartialEq, Eq)]
    struct SkbFields {
        family: u32,
        remote_ip4: Ipv4Addr,
        local_ip4: Ipv4Addr,
        remote_ip6: Ipv6Addr,
        local_ip6: Ipv6Addr,
        remote_port_field: u32,
        local_port_field: u32,
    }

    /// Connect a client to `listen` (through `connect_to` if given), insert the
    /// accepted socket into a map running [`fields_program`], send 64 bytes and read
    /// back, on the server's side, the fields the program wrote over them.
    fn skb_fields(listen: &str, connect_to: Option<&str>) -> SkbFields {
        let m = EchoMap::with_program(16, fields_program)
            .unwrap_or_else(|e| panic!("the experiment cannot run here: {e}"));
        let l = TcpListener::bind(listen).unwrap();
        let port = l.local_addr().unwrap().port();
        let to = match connect_to {
            Some(ip) => SocketAddr::new(ip.parse().unwrap(), port),
            None => l.local_addr().unwrap(),
        };
        let mut c = TcpStream::connect(to).unwrap();
        let (mut s, _) = l.accept().unwrap();
        // Any key will do: this program looks nothing up.
        let key = SockKey::new(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        m.insert(&key, s.as_fd()).unwrap();
        c.write_all(&[0xaa; 64]).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = [0u8; 64];
        s.read_exact(&mut got).unwrap();
        let word = |i: usize| u32::from_ne_bytes(got[4 * i..4 * i + 4].try_into().unwrap());
        let v6 = |i: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&got[4 * i..4 * i + 16]).unwrap());
        let v4 = |i: usize| Ipv4Addr::from(<[u8; 4]>::try_from(&got[4 * i..4 * i + 4]).unwrap());
        assert_eq!(
            &got[52..],
            &[0xaa; 12],
            "the bytes after the fields are the client's"
        );
        let f = SkbFields {
            family: word(0),
            remote_ip4: v4(1),
            local_ip4: v4(2),
            remote_ip6: v6(3),
            local_ip6: v6(7),
            remote_port_field: word(11),
            local_port_field: word(12),
        };
        let client_port = c.local_addr().unwrap().port();
        assert_eq!(f.remote_port_field, remote_port_field(client_port), "{f:?}");
        assert_eq!(f.local_port_field, u32::from(port), "{f:?}");
        f
    }

    /// What this kernel gives an `sk_skb` program in the address fields, for the
    /// three kinds of TCP socket a listener can hand out. Asserted: what the echo's
    /// key is built from (the IPv4 fields of an `AF_INET` socket, the IPv6 fields of
    /// an `AF_INET6` one, mapped or not), and the family it branches on. Printed
    /// only (6.18, `--nocapture`): an `AF_INET` socket's IPv6 fields hold its
    /// addresses IPv4-mapped too (`sk_daddr_set` keeps both; zero on a kernel
    /// without `CONFIG_IPV6`), and an IPv6 socket's IPv4 fields hold 127.0.0.6
    /// (`LOOPBACK4_IPV6`, a placeholder).
    #[test]
    fn the_skb_address_fields_of_each_kind_of_socket() {
        let lo4 = Ipv4Addr::LOCALHOST;
        let mapped = lo4.to_ipv6_mapped();
        // An IPv4 socket.
        let f = skb_fields("127.0.0.1:0", None);
        eprintln!("AF_INET:         {f:?}");
        assert_eq!(f.family, libc::AF_INET as u32);
        assert_eq!((f.remote_ip4, f.local_ip4), (lo4, lo4));
        // An IPv6 socket (bound to an IPv4-mapped address, so it is dual-stack but
        // takes only 127.0.0.1) with an IPv4 peer.
        let f = skb_fields("[::ffff:127.0.0.1]:0", Some("127.0.0.1"));
        eprintln!("AF_INET6 mapped: {f:?}");
        assert_eq!(f.family, libc::AF_INET6 as u32);
        assert_eq!((f.remote_ip6, f.local_ip6), (mapped, mapped));
        assert_eq!((f.remote_ip4, f.local_ip4), (lo4, lo4));
        // An IPv6 socket with an IPv6 peer.
        let f = skb_fields("[::1]:0", None);
        eprintln!("AF_INET6:        {f:?}");
        assert_eq!(f.family, libc::AF_INET6 as u32);
        assert_eq!(
            (f.remote_ip6, f.local_ip6),
            (Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST)
        );
    }

    #[test]
    fn an_inserted_socket_echoes_including_bytes_that_came_before() {
        echoes_over(&echo_map(), "127.0.0.1:0", None);
    }

    #[test]
    fn an_ipv6_socket_echoes_over_the_ipv6_loopback() {
        echoes_over(&echo_map(), "[::1]:0", None);
    }

    /// A dual-stack socket (bound to `::ffff:127.0.0.1`) with an IPv4 peer: the
    /// program reads its IPv6 fields, which hold the mapped addresses.
    #[test]
    fn a_dual_stack_socket_echoes_an_ipv4_peer() {
        echoes_over(&echo_map(), "[::ffff:127.0.0.1]:0", Some("127.0.0.1"));
    }

    /// This kernel also fills an `AF_INET` socket's IPv6 fields (mapped), so the
    /// test above passes whatever the program's IPv4 branch does. Here the loads of
    /// the IPv6 fields are replaced by `r2 = 0`, as a kernel without `CONFIG_IPV6`
    /// rewrites them: the key of an IPv4 socket comes from the branch alone.
    #[test]
    fn ipv4_is_echoed_from_the_ipv4_fields_alone() {
        let ipv6_fields = skb::REMOTE_IP6..skb::LOCAL_IP6 + 16;
        let without_ipv6 = |fd| {
            let p: Vec<Insn> = echo_program(fd)
                .into_iter()
                .map(|i| {
                    let load = asm::ldx_w(Reg::R2, Reg::R6, i.off);
                    if i == load && ipv6_fields.contains(&i.off) {
                        asm::mov64_imm(Reg::R2, 0)
                    } else {
                        i
                    }
                })
                .collect();
            let zeros = p.iter().filter(|&&i| i == asm::mov64_imm(Reg::R2, 0));
            assert_eq!(zeros.count(), 8, "the eight loads of IPv6 words");
            p
        };
        let m = EchoMap::with_program(16, without_ipv6).unwrap();
        echoes_over(&m, "127.0.0.1:0", None);
    }

    /// Bytes written before the insert, then 1 MB, come back; the counters agree.
    fn echoes_over(m: &EchoMap, listen: &str, connect_to: Option<&str>) {
        let l = TcpListener::bind(listen).unwrap();
        let (mut c, s) = pair_via(&l, connect_to);
        c.write_all(b"early").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        insert(m, &s);
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = [0u8; 5];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"early");
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut w = c.try_clone().unwrap();
        let d = data.clone();
        let t = std::thread::spawn(move || w.write_all(&d).unwrap());
        let mut back = vec![0u8; data.len()];
        c.read_exact(&mut back).unwrap();
        t.join().unwrap();
        assert!(back == data, "1 MB comes back byte for byte");
        let tc = tcp_counters(s.as_fd()).unwrap();
        assert_eq!(tc.bytes_received, 1_000_005);
        assert_eq!(tc.state, 1);
    }

    #[test]
    fn a_removed_socket_is_not_echoed_and_keys_are_unique() {
        let m = echo_map();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let (mut c, s) = pair(&l);
        let key = insert(&m, &s);
        let err = m.insert(&key, s.as_fd()).unwrap_err();
        assert!(err.raw_os_error().is_some(), "{err}");
        m.remove(&key).unwrap();
        c.write_all(b"x").unwrap();
        let mut s = s;
        let mut got = [0u8; 1];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x", "back in user space after removal");
    }

    #[test]
    fn a_load_refused_by_the_verifier_carries_its_log() {
        // R0 is never set: the verifier refuses "R0 !read_ok".
        let err = load_program(&[asm::exit()]).unwrap_err();
        let log = err.verifier_log.as_deref().unwrap_or("");
        assert!(log.contains("R0"), "{log}");
        assert!(err.one_line().contains("verifier: "), "{}", err.one_line());
    }
}
