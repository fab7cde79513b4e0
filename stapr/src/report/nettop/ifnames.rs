//! Names of the devices receives arrive on: the probes give an interface index and the
//! reader's network namespace; the name is looked up here, once per pair.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use probes_common::IFNAME_LEN;

pub struct IfNames {
    /// Inode of stapr's own network namespace.
    own: u32,
    known: HashMap<(u32, u32), [u8; IFNAME_LEN]>,
}

impl IfNames {
    pub fn new() -> Self {
        IfNames {
            own: ns_inode(Path::new("/proc/self/ns/net")).unwrap_or(0),
            known: HashMap::new(),
        }
    }

    /// The name of interface `ifindex` in namespace `netns`, where process `pid` (the
    /// reader) is or was; `if<N>` when the device or every process in the namespace is gone.
    pub fn name(&mut self, netns: u32, ifindex: u32, pid: u32) -> [u8; IFNAME_LEN] {
        let own = self.own;
        *self.known.entry((netns, ifindex)).or_insert_with(|| {
            let name = if netns == own || netns == 0 {
                index_to_name(ifindex)
            } else {
                in_namespace(netns, pid, ifindex)
            };
            let name = name.unwrap_or_else(|| format!("if{ifindex}"));
            let mut out = [0u8; IFNAME_LEN];
            let n = name.len().min(IFNAME_LEN - 1);
            out[..n].copy_from_slice(&name.as_bytes()[..n]);
            out
        })
    }
}

fn ns_inode(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.ino() as u32)
}

fn index_to_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// Entries of a directory, as paths (none when it cannot be read).
fn entries(dir: &str) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
}

/// Looks the index up from inside namespace `netns`: a short-lived thread joins it
/// (setns changes only the calling thread) through the reader `pid`, a namespace named
/// by `ip netns`, or any process that lives there.
fn in_namespace(netns: u32, pid: u32, ifindex: u32) -> Option<String> {
    let path = std::iter::once(PathBuf::from(format!("/proc/{pid}/ns/net")))
        .chain(entries("/run/netns"))
        .chain(
            entries("/proc")
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .map(|p| p.join("ns/net")),
        )
        .find(|p| ns_inode(p) == Some(netns))?;
    let ns = std::fs::File::open(path).ok()?;
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd as _;
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return None;
        }
        index_to_name(ifindex)
    })
    .join()
    .ok()
    .flatten()
}
