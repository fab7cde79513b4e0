//! The few bpf(2) commands aya does not offer: a bare map create (doctor's ring buffer
//! check, without an object file), loading a program with an expected attach
//! type and attach BTF id of our choosing (kprobe.multi, one fentry/fexit copy per
//! function), `BPF_LINK_CREATE` for kprobe.multi and uprobe.multi, `BPF_RAW_TRACEPOINT_OPEN`
//! for fentry, finding a module's BTF object, and the map-in-map update that waits for
//! running programs. `union bpf_attr` and its members come from aya-obj's bindings of
//! include/uapi/linux/bpf.h.

use std::{
    collections::HashMap,
    ffi::CString,
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use anyhow::{anyhow, Context as _, Result};
use aya_obj::generated::{
    bpf_attach_type, bpf_attr, bpf_btf_info, bpf_cmd, bpf_map_type, bpf_prog_info, bpf_prog_type,
    BPF_F_KPROBE_MULTI_RETURN, BPF_F_UPROBE_MULTI_RETURN,
};

pub const PROG_TYPE_KPROBE: u32 = bpf_prog_type::BPF_PROG_TYPE_KPROBE as u32;
pub const PROG_TYPE_TRACING: u32 = bpf_prog_type::BPF_PROG_TYPE_TRACING as u32;
pub const ATTACH_TRACE_FENTRY: u32 = bpf_attach_type::BPF_TRACE_FENTRY as u32;
pub const ATTACH_TRACE_FEXIT: u32 = bpf_attach_type::BPF_TRACE_FEXIT as u32;
pub const ATTACH_TRACE_KPROBE_MULTI: u32 = bpf_attach_type::BPF_TRACE_KPROBE_MULTI as u32;
pub const ATTACH_TRACE_UPROBE_MULTI: u32 = bpf_attach_type::BPF_TRACE_UPROBE_MULTI as u32;

/// A zeroed `union bpf_attr`: the kernel wants the bytes a command does not use to be zero.
fn attr() -> bpf_attr {
    // SAFETY: bpf_attr is plain old data; all zeroes is its documented empty value.
    unsafe { std::mem::zeroed() }
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    // SAFETY: `attr` is a valid, zero-filled bpf_attr of the size passed; pointers in it
    // refer to live buffers of the caller.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as i32,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fd_result(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
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
        let mut a = attr();
        // SAFETY: writing the BPF_PROG_LOAD member of a zeroed union.
        let p = unsafe { &mut a.__bindgen_anon_3 };
        p.prog_type = spec.prog_type;
        p.insn_cnt = insns.len() as u32;
        p.insns = insns.as_ptr() as u64;
        p.license = license.as_ptr() as u64;
        p.expected_attach_type = spec.expected_attach_type;
        p.attach_btf_id = spec.attach_btf_id;
        if let Some(fd) = spec.attach_btf_obj {
            p.__bindgen_anon_1.attach_btf_obj_fd = fd.as_raw_fd() as u32;
        }
        for (d, s) in p.prog_name.iter_mut().zip(spec.name.bytes().take(15)) {
            *d = s as _;
        }
        if let Some(buf) = log {
            p.log_level = 1;
            p.log_size = buf.len() as u32;
            p.log_buf = buf.as_mut_ptr() as u64;
        }
        fd_result(bpf_cmd::BPF_PROG_LOAD, &mut a)
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
    let mut a = attr();
    // SAFETY: writing the BPF_LINK_CREATE member of a zeroed union.
    let l = unsafe { &mut a.link_create };
    l.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
    l.attach_type = ATTACH_TRACE_KPROBE_MULTI;
    // SAFETY: as above, its kprobe_multi member.
    let m = unsafe { &mut l.__bindgen_anon_3.kprobe_multi };
    m.flags = if retprobe {
        BPF_F_KPROBE_MULTI_RETURN
    } else {
        0
    };
    m.cnt = ptrs.len() as u32;
    m.syms = ptrs.as_ptr() as u64;
    m.cookies = cookies.as_ptr() as u64;
    fd_result(bpf_cmd::BPF_LINK_CREATE, &mut a).map_err(anyhow::Error::from)
}

/// One uprobe.multi link of `prog` on the file offsets `offsets` of the ELF file `path`,
/// in every process, with one cookie per offset; `retprobe` makes it fire on return. One
/// link: closing it detaches every probe in one step.
pub fn uprobe_multi(
    prog: BorrowedFd,
    path: &std::path::Path,
    offsets: &[u64],
    cookies: &[u64],
    retprobe: bool,
) -> Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = CString::new(path.as_os_str().as_bytes()).context("a path holds a NUL byte")?;
    let mut a = attr();
    // SAFETY: writing the BPF_LINK_CREATE member of a zeroed union.
    let l = unsafe { &mut a.link_create };
    l.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
    l.attach_type = ATTACH_TRACE_UPROBE_MULTI;
    // SAFETY: as above, its uprobe_multi member.
    let m = unsafe { &mut l.__bindgen_anon_3.uprobe_multi };
    m.flags = if retprobe {
        BPF_F_UPROBE_MULTI_RETURN
    } else {
        0
    };
    m.path = path.as_ptr() as u64;
    m.cnt = offsets.len() as u32;
    m.offsets = offsets.as_ptr() as u64;
    m.cookies = cookies.as_ptr() as u64;
    fd_result(bpf_cmd::BPF_LINK_CREATE, &mut a).map_err(anyhow::Error::from)
}

/// A ring buffer map of `bytes` (a power of two, at least a page).
pub fn ringbuf_create(bytes: u32) -> io::Result<OwnedFd> {
    let mut a = attr();
    // SAFETY: writing the BPF_MAP_CREATE member of a zeroed union.
    let m = unsafe { &mut a.__bindgen_anon_1 };
    m.map_type = bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32;
    m.max_entries = bytes;
    fd_result(bpf_cmd::BPF_MAP_CREATE, &mut a)
}

/// Returns once every BPF program already running on any CPU has finished: the kernel
/// waits for an RCU grace period after a map-in-map update (`maybe_wait_bpf_programs`,
/// 4.20), and tracing programs other than sleepable ones run inside an RCU read-side
/// section. A probe preempted between reading a switch and writing what it counted is
/// then done before its old slot is read. `false` when the maps cannot be made (the
/// caller waits a moment instead).
pub fn wait_for_running_programs() -> bool {
    static MAPS: std::sync::OnceLock<Option<(OwnedFd, OwnedFd)>> = std::sync::OnceLock::new();
    let Some((outer, inner)) = MAPS.get_or_init(|| map_in_map().ok()) else {
        return false;
    };
    let key = 0u32;
    let value = inner.as_raw_fd() as u32;
    let mut a = attr();
    // SAFETY: writing the BPF_MAP_*_ELEM member of a zeroed union; key and value outlive
    // the call.
    let e = unsafe { &mut a.__bindgen_anon_2 };
    e.map_fd = outer.as_raw_fd() as u32;
    e.key = &key as *const u32 as u64;
    e.__bindgen_anon_1.value = &value as *const u32 as u64;
    bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut a).is_ok()
}

/// A one-slot array of arrays and the array it holds.
fn map_in_map() -> io::Result<(OwnedFd, OwnedFd)> {
    let create = |map_type: bpf_map_type, inner: Option<&OwnedFd>| {
        let mut a = attr();
        // SAFETY: writing the BPF_MAP_CREATE member of a zeroed union.
        let m = unsafe { &mut a.__bindgen_anon_1 };
        m.map_type = map_type as u32;
        m.key_size = 4;
        m.value_size = 4;
        m.max_entries = 1;
        m.inner_map_fd = inner.map_or(0, |f| f.as_raw_fd() as u32);
        fd_result(bpf_cmd::BPF_MAP_CREATE, &mut a)
    };
    let inner = create(bpf_map_type::BPF_MAP_TYPE_ARRAY, None)?;
    let outer = create(bpf_map_type::BPF_MAP_TYPE_ARRAY_OF_MAPS, Some(&inner))?;
    Ok((outer, inner))
}

/// How many times the kernel skipped `prog` because a program was already running on
/// its CPU (`recursion_misses`, 5.12; 0 where the kernel does not count them). Probes
/// that may be preempted mid-run (kernels with full or lazy preemption) meet it whenever
/// another task hits the same probe on that CPU meanwhile.
pub fn prog_recursion_misses(prog: BorrowedFd) -> io::Result<u64> {
    // SAFETY: bpf_prog_info is plain old data; zeroes are its empty value.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut a = attr();
    a.info.bpf_fd = prog.as_raw_fd() as u32;
    a.info.info_len = std::mem::size_of::<bpf_prog_info>() as u32;
    a.info.info = (&raw mut info) as u64;
    bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut a)?;
    Ok(info.recursion_misses)
}

/// Attaches a loaded fentry/fexit program to the function it was loaded for.
pub fn tracing_attach(prog: BorrowedFd) -> io::Result<OwnedFd> {
    let mut a = attr();
    a.raw_tracepoint.prog_fd = prog.as_raw_fd() as u32;
    fd_result(bpf_cmd::BPF_RAW_TRACEPOINT_OPEN, &mut a)
}

/// The kernel's BTF objects of loaded modules, by module name.
pub fn module_btf_fds() -> Result<HashMap<String, OwnedFd>> {
    let mut out = HashMap::new();
    let mut id = 0u32;
    loop {
        let mut a = attr();
        a.__bindgen_anon_6.__bindgen_anon_1.start_id = id;
        match bpf(bpf_cmd::BPF_BTF_GET_NEXT_ID, &mut a) {
            // SAFETY: the member BPF_BTF_GET_NEXT_ID fills in.
            Ok(_) => id = unsafe { a.__bindgen_anon_6.next_id },
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => return Err(e).context("listing BTF objects"),
        }
        let mut a = attr();
        a.__bindgen_anon_6.__bindgen_anon_1.btf_id = id;
        let Ok(fd) = fd_result(bpf_cmd::BPF_BTF_GET_FD_BY_ID, &mut a) else {
            continue; // gone meanwhile
        };
        let mut name = [0u8; 64];
        // SAFETY: bpf_btf_info is plain old data; zeroes are its empty value.
        let mut info: bpf_btf_info = unsafe { std::mem::zeroed() };
        info.name = name.as_mut_ptr() as u64;
        info.name_len = name.len() as u32;
        let mut a = attr();
        a.info.bpf_fd = fd.as_raw_fd() as u32;
        a.info.info_len = std::mem::size_of::<bpf_btf_info>() as u32;
        a.info.info = (&raw mut info) as u64;
        if bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut a).is_err() {
            continue;
        }
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        let name = String::from_utf8_lossy(&name[..end]).into_owned();
        if info.kernel_btf == 1 && !name.is_empty() && name != "vmlinux" {
            out.insert(name, fd);
        }
    }
}
