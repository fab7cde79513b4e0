//! The few bpf(2) commands aya does not offer: a bare map create (doctor's ring buffer
//! check, without an object file), loading a program with an expected attach
//! type and attach BTF id of our choosing (kprobe.multi, one fentry/fexit copy per
//! function), `BPF_LINK_CREATE` for kprobe.multi, `BPF_RAW_TRACEPOINT_OPEN` for fentry, and
//! finding a module's BTF object. Layouts: `union bpf_attr` in include/uapi/linux/bpf.h.

use std::{
    collections::HashMap,
    ffi::CString,
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use anyhow::{anyhow, Context as _, Result};

const BPF_MAP_CREATE: i32 = 0;
const BPF_OBJ_GET_INFO_BY_FD: i32 = 15;
const BPF_RAW_TRACEPOINT_OPEN: i32 = 17;
const BPF_BTF_GET_FD_BY_ID: i32 = 19;
const BPF_BTF_GET_NEXT_ID: i32 = 23;
const BPF_PROG_LOAD: i32 = 5;
const BPF_LINK_CREATE: i32 = 28;

pub const PROG_TYPE_KPROBE: u32 = 2;
pub const PROG_TYPE_TRACING: u32 = 26;
pub const ATTACH_TRACE_FENTRY: u32 = 24;
pub const ATTACH_TRACE_FEXIT: u32 = 25;
pub const ATTACH_TRACE_KPROBE_MULTI: u32 = 42;
const KPROBE_MULTI_RETURN: u32 = 1;
const MAP_TYPE_RINGBUF: u32 = 27;

/// A zeroed `union bpf_attr` (larger than any layout used here; the kernel wants the
/// bytes it does not know to be zero).
#[repr(C, align(8))]
struct Attr([u8; 144]);

impl Attr {
    fn new() -> Self {
        Attr([0; 144])
    }

    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn get_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().unwrap_or_default())
    }
}

fn bpf(cmd: i32, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: `attr` is a valid, zero-filled bpf_attr of the size passed; pointers in it
    // refer to live buffers of the caller.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fd_result(cmd: i32, attr: &mut Attr) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What a program load needs beyond its instructions.
pub struct LoadSpec<'a> {
    pub prog_type: u32,
    pub expected_attach_type: u32,
    pub name: &'a str,
    /// fentry/fexit: the traced function's BTF type id...
    pub attach_btf_id: u32,
    /// ...and, for a module's function, the module's BTF object.
    pub attach_btf_obj: Option<BorrowedFd<'a>>,
}

/// Loads `insns` (8-byte eBPF instructions, relocated). On failure the error carries the
/// end of the verifier's log.
pub fn prog_load(spec: &LoadSpec, insns: &[u64]) -> Result<OwnedFd> {
    let license = CString::new("GPL").unwrap_or_default();
    let attempt = |log: Option<&mut Vec<u8>>| {
        let mut a = Attr::new();
        a.u32(0, spec.prog_type)
            .u32(4, insns.len() as u32)
            .u64(8, insns.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64)
            .u32(68, spec.expected_attach_type)
            .u32(108, spec.attach_btf_id);
        if let Some(fd) = spec.attach_btf_obj {
            a.u32(112, fd.as_raw_fd() as u32);
        }
        let name = spec.name.as_bytes();
        let n = name.len().min(15);
        a.0[48..48 + n].copy_from_slice(&name[..n]);
        if let Some(buf) = log {
            a.u32(24, 1)
                .u32(28, buf.len() as u32)
                .u64(32, buf.as_mut_ptr() as u64);
        }
        fd_result(BPF_PROG_LOAD, &mut a)
    };
    match attempt(None) {
        Ok(fd) => Ok(fd),
        Err(err) => {
            let mut log = vec![0u8; 256 * 1024];
            let _ = attempt(Some(&mut log));
            let end = log.iter().position(|&b| b == 0).unwrap_or(0);
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: Vec<&str> = text.lines().rev().take(3).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            if tail.is_empty() {
                Err(anyhow!("loading {}: {err}", spec.name))
            } else {
                Err(anyhow!(
                    "loading {}: {err} ({})",
                    spec.name,
                    tail.join(" / ")
                ))
            }
        }
    }
}

/// One kprobe.multi link of `prog` on `syms`, with one cookie per symbol; `retprobe`
/// makes it fire on return.
pub fn kprobe_multi(
    prog: BorrowedFd,
    syms: &[String],
    cookies: &[u64],
    retprobe: bool,
) -> Result<OwnedFd> {
    let names: Vec<CString> = syms
        .iter()
        .map(|s| CString::new(s.as_str()))
        .collect::<Result<_, _>>()
        .context("a function name holds a NUL byte")?;
    let ptrs: Vec<u64> = names.iter().map(|c| c.as_ptr() as u64).collect();
    let mut a = Attr::new();
    a.u32(0, prog.as_raw_fd() as u32)
        .u32(8, ATTACH_TRACE_KPROBE_MULTI)
        .u32(16, if retprobe { KPROBE_MULTI_RETURN } else { 0 })
        .u32(20, ptrs.len() as u32)
        .u64(24, ptrs.as_ptr() as u64)
        .u64(40, cookies.as_ptr() as u64);
    fd_result(BPF_LINK_CREATE, &mut a).map_err(anyhow::Error::from)
}

/// A ring buffer map of `bytes` (a power of two, at least a page).
pub fn ringbuf_create(bytes: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    // map_type, key_size, value_size, max_entries
    a.u32(0, MAP_TYPE_RINGBUF).u32(12, bytes);
    fd_result(BPF_MAP_CREATE, &mut a)
}

/// Attaches a loaded fentry/fexit program to the function it was loaded for.
pub fn tracing_attach(prog: BorrowedFd) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    a.u32(8, prog.as_raw_fd() as u32);
    fd_result(BPF_RAW_TRACEPOINT_OPEN, &mut a)
}

/// The kernel's BTF objects of loaded modules, by module name.
pub fn module_btf_fds() -> Result<HashMap<String, OwnedFd>> {
    let mut out = HashMap::new();
    let mut id = 0u32;
    loop {
        let mut a = Attr::new();
        a.u32(0, id);
        match bpf(BPF_BTF_GET_NEXT_ID, &mut a) {
            Ok(_) => id = a.get_u32(4),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => return Err(e).context("listing BTF objects"),
        }
        let mut a = Attr::new();
        a.u32(0, id);
        let Ok(fd) = fd_result(BPF_BTF_GET_FD_BY_ID, &mut a) else {
            continue; // gone meanwhile
        };
        // struct bpf_btf_info { u64 btf; u32 btf_size; u32 id; u64 name; u32 name_len;
        // u32 kernel_btf; }
        let mut name = [0u8; 64];
        let mut info = [0u8; 32];
        info[16..24].copy_from_slice(&(name.as_mut_ptr() as u64).to_ne_bytes());
        info[24..28].copy_from_slice(&(name.len() as u32).to_ne_bytes());
        let mut a = Attr::new();
        a.u32(0, fd.as_raw_fd() as u32)
            .u32(4, info.len() as u32)
            .u64(8, info.as_mut_ptr() as u64);
        if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut a).is_err() {
            continue;
        }
        let kernel = u32::from_ne_bytes(info[28..32].try_into().unwrap_or_default()) == 1;
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        let name = String::from_utf8_lossy(&name[..end]).into_owned();
        if kernel && !name.is_empty() && name != "vmlinux" {
            out.insert(name, fd);
        }
    }
}
