//! cgroup v2: the ids the probes record (`bpf_get_current_cgroup_id`) → paths below the
//! cgroup2 root and short container names; `--cgroup` → the in-kernel filter.
//!
//! A cgroup's id is its directory's inode number on the cgroup2 mount, so the table is
//! built by walking that mount. It is kept for the whole run: a cgroup removed after it
//! was seen keeps its last path.

use std::{
    collections::HashMap,
    os::unix::fs::{DirEntryExt, MetadataExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Result;
use probes_common::CgroupFilter;

use super::user_error;

/// A cgroup as the reports show it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Named {
    /// Path below the cgroup2 root (`/` for the root), `None` when the id is unknown: a
    /// cgroup created and removed between two walks of the tree.
    pub path: Option<String>,
    /// [`container_name`] of the path; `?` when the path is unknown.
    pub container: String,
}

impl Default for Named {
    fn default() -> Self {
        Named::of(None)
    }
}

impl Named {
    pub fn of(path: Option<String>) -> Named {
        let container = path.as_deref().map_or("?".into(), container_name);
        Named { path, container }
    }

    /// `cgroup` and `container` for a JSON object.
    pub fn json_fields(&self, obj: &mut serde_json::Map<String, serde_json::Value>) {
        obj.insert("cgroup".into(), self.path.clone().into());
        obj.insert("container".into(), self.container.clone().into());
    }
}

/// The cgroup2 mount and what is known of its tree.
pub struct Cgroups {
    root: PathBuf,
    paths: HashMap<u64, String>,
    walked: Instant,
}

/// A miss walks the tree again, at most this often.
const REWALK: Duration = Duration::from_millis(500);

/// The cgroup2 root directory (mounted in a private mount namespace when there is none).
pub fn root() -> Result<PathBuf> {
    match find_mount()? {
        Some(root) => Ok(root),
        None => mount_private(),
    }
}

impl Cgroups {
    /// Finds the cgroup2 mount (mounting one in a private mount namespace when there is
    /// none) and walks it.
    pub fn open() -> Result<Cgroups> {
        let root = root()?;
        let mut c = Cgroups {
            root,
            paths: HashMap::new(),
            walked: Instant::now(),
        };
        c.walk();
        Ok(c)
    }

    fn walk(&mut self) {
        if let Ok(m) = std::fs::metadata(&self.root) {
            self.paths.insert(m.ino(), "/".into());
        }
        let mut stack = vec![(self.root.clone(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let path = format!("{rel}/{}", e.file_name().to_string_lossy());
                self.paths.insert(e.ino(), path.clone());
                stack.push((e.path(), path));
            }
        }
        self.walked = Instant::now();
    }

    /// The path and container of cgroup `id`.
    pub fn name(&mut self, id: u64) -> Named {
        if !self.paths.contains_key(&id) && self.walked.elapsed() >= REWALK {
            self.walk();
        }
        Named::of(self.paths.get(&id).cloned())
    }

    /// The cgroup of a live process (`0::PATH` in /proc/PID/cgroup).
    pub fn of_process(&mut self, pid: u32) -> Named {
        let path = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .map(|p| p.trim_end_matches(" (deleted)").to_owned())
            });
        Named::of(path)
    }

    /// `--cgroup ARG`: a path below the cgroup2 root (or under its mount point), or a
    /// container id prefix of at least 6 hex digits.
    pub fn filter(&mut self, arg: &str) -> Result<CgroupFilter> {
        let walk = walk_offsets()?;
        self.walk();
        let path = match self.by_container(arg)? {
            Some(p) => p,
            None => {
                let rel = Path::new(arg)
                    .strip_prefix(&self.root)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| arg.to_owned());
                let rel = rel.trim_matches('/');
                let dir = self.root.join(rel);
                if rel.split('/').any(|c| c == "..") || !dir.is_dir() {
                    return Err(user_error(format!(
                        "--cgroup {arg}: no such cgroup under {} and no container id starts with it",
                        self.root.display()
                    )));
                }
                format!("/{rel}")
            }
        };
        let dir = self.root.join(path.trim_start_matches('/'));
        let id = std::fs::metadata(&dir)
            .map_err(|e| user_error(format!("--cgroup {arg}: {}: {e}", dir.display())))?
            .ino();
        Ok(CgroupFilter {
            on: 1,
            level: path.split('/').filter(|c| !c.is_empty()).count() as u32,
            id,
            ..walk
        })
    }

    /// The cgroup of the one container whose id starts with `prefix`.
    fn by_container(&self, prefix: &str) -> Result<Option<String>> {
        if prefix.len() < 6 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let prefix = prefix.to_ascii_lowercase();
        // The shallowest cgroup of each container (its own scope, not what runs inside).
        let mut found: HashMap<&str, &str> = HashMap::new();
        for path in self.paths.values() {
            let Some(last) = path.rsplit('/').next() else {
                continue;
            };
            if let Some(id) = container_id(last).filter(|id| id.starts_with(&prefix)) {
                let best = found.entry(id).or_insert(path);
                if path.len() < best.len() {
                    *best = path;
                }
            }
        }
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.into_values().next().map(str::to_owned)),
            n => {
                let mut ids: Vec<&str> = found.keys().map(|id| &id[..12]).collect();
                ids.sort();
                Err(user_error(format!(
                    "--cgroup {prefix}: {n} containers start with it ({}): give more digits",
                    ids.join(", ")
                )))
            }
        }
    }
}

/// The cgroup2 mount point in /proc/self/mountinfo.
fn find_mount() -> Result<Option<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| user_error(format!("reading /proc/self/mountinfo: {e}")))?;
    Ok(cgroup2_mount(&info))
}

/// Pure: the first cgroup2 mount point in a mountinfo text (fields: id, parent, dev,
/// root, mount point, options, optional fields, `-`, fstype, ...; octal escapes for
/// spaces).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape(point)))
    })
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// No cgroup2 mount: stapr enters a mount namespace of its own and mounts cgroup2 over
/// /sys/fs/cgroup there, seen by no other process and gone when stapr exits.
fn mount_private() -> Result<PathBuf> {
    let target = "/sys/fs/cgroup";
    let why = |what: &str, e: std::io::Error| {
        user_error(format!(
            "no cgroup2 filesystem is mounted and stapr could not mount one privately ({what}: {e}); mount one with: mount -t cgroup2 none {target}"
        ))
    };
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(why("unshare", std::io::Error::last_os_error()));
    }
    let root = c"/";
    let flags = libc::MS_REC | libc::MS_PRIVATE;
    if unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(why("making / private", std::io::Error::last_os_error()));
    }
    super::mount("cgroup2", target).map_err(|e| why("mount", e))?;
    Ok(PathBuf::from(target))
}

/// Pure: the 64-hex container id in one path component (`docker-<id>.scope`,
/// `cri-containerd-<id>.scope`, `libpod-<id>.scope`, `crio-<id>.scope`,
/// `...:cri-containerd:<id>`, `<id>`).
fn container_id(component: &str) -> Option<&str> {
    let c = component.strip_suffix(".scope").unwrap_or(component);
    let id = c.rsplit(['-', ':']).next()?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// Pure: a short name for a cgroup path: the first 12 hex digits of a container id
/// (docker, containerd/CRI, podman, CRI-O, Kubernetes), else the last component (a
/// systemd unit such as `nginx.service`), `-` for the root.
pub fn container_name(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if let Some(id) = parts.iter().rev().find_map(|c| container_id(c)) {
        return id[..12].to_owned();
    }
    parts.last().map_or("-".into(), |c| (*c).to_owned())
}

/// How the probes find a task's ancestor cgroup: through
/// `bpf_get_current_ancestor_cgroup_id` where tracing programs have it (5.14), else by
/// reading the ids the kernel keeps in each cgroup (`ancestor_ids`, which 5.19 replaced,
/// long after the helper came), at offsets from its BTF.
fn walk_offsets() -> Result<CgroupFilter> {
    use super::features::{btf, check, Facility};
    if check(Facility::AncestorCgroup).is_ok() {
        return Ok(CgroupFilter::default());
    }
    let lacks = |why: String| {
        user_error(format!(
            "--cgroup: this kernel lacks {} in tracing programs (Linux 5.14) and {why}; use -c/-p, or --containers without --cgroup",
            Facility::AncestorCgroup.name()
        ))
    };
    if !btf() {
        return Err(lacks("has no BTF to find a cgroup's ancestors with".into()));
    }
    let kbtf = super::btf::Btf::from_sys_fs()?;
    let off = |s: &str, m: &str| {
        kbtf.member_offset(s, m)
            .map_err(|_| lacks(format!("its BTF has no {s}.{m}")))
    };
    Ok(CgroupFilter {
        walk: 1,
        task_cgroups: off("task_struct", "cgroups")?,
        cset_dfl_cgrp: off("css_set", "dfl_cgrp")?,
        cgrp_level: off("cgroup", "level")?,
        cgrp_ancestor_ids: off("cgroup", "ancestor_ids")?,
        ..CgroupFilter::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4c2a1b9d8e7f60112233445566778899aabbccddeeff00112233445566778a";

    #[test]
    fn container_names() {
        let cases = [
            ("/", "-"),
            ("", "-"),
            (&format!("/system.slice/docker-{ID}.scope"), "3f4c2a1b9d8e"),
            (&format!("/docker/{ID}"), "3f4c2a1b9d8e"),
            (
                &format!("/system.slice/containerd.service/kubepods-besteffort-pod1.slice:cri-containerd:{ID}"),
                "3f4c2a1b9d8e",
            ),
            (
                &format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e.slice/cri-containerd-{ID}.scope"),
                "3f4c2a1b9d8e",
            ),
            (&format!("/machine.slice/libpod-{ID}.scope/container"), "3f4c2a1b9d8e"),
            (&format!("/kubepods/burstable/pod0f1e-22/{ID}"), "3f4c2a1b9d8e"),
            ("/system.slice/nginx.service", "nginx.service"),
            ("/web.slice/httpd.service", "httpd.service"),
            ("/user.slice/user-1000.slice/session-3.scope", "session-3.scope"),
            ("/system.slice/docker-abc.scope", "docker-abc.scope"),
        ];
        for (path, want) in cases {
            assert_eq!(container_name(path), want, "{path}");
        }
    }

    #[test]
    fn finds_the_cgroup2_mount() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
            32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let spaced = "30 23 0:26 / /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(cgroup2_mount(spaced), Some(PathBuf::from("/mnt/my cg")));
        assert_eq!(
            cgroup2_mount("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"),
            None
        );
    }

    #[test]
    fn unknown_ids_are_named_as_such() {
        assert_eq!(
            Named::of(None),
            Named {
                path: None,
                container: "?".into()
            }
        );
    }
}
