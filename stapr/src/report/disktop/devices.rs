//! DEVICE and fstype of each row: a block device by its kernel name (`vda`, `dm-0`,
//! `nvme0n1p2`) from sysfs; a network filesystem by the server side of its mount
//! (`nfs1:/export/www`) from mountinfo. Nothing on a network mount is read to name it, so
//! an unreachable server cannot stall the report.

use std::collections::HashMap;

use super::aggregate::major_minor;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Device {
    pub name: String,
    /// The filesystem type mounted from it (`ext4`, `nfs4`), when a mount of it is seen.
    pub fstype: Option<String>,
}

/// Names looked up once per device number.
#[derive(Default)]
pub struct DevNames(HashMap<u32, Device>);

impl DevNames {
    /// `pid` is a process that used the device: a mount in another mount namespace (a
    /// container's) is found in that process's mountinfo.
    pub fn name(&mut self, dev: u32, pid: u32) -> Device {
        if let Some(d) = self.0.get(&dev) {
            return d.clone();
        }
        let d = lookup(dev, pid);
        self.0.insert(dev, d.clone());
        d
    }
}

fn lookup(dev: u32, pid: u32) -> Device {
    let (major, minor) = major_minor(dev);
    let mount = [
        "/proc/self/mountinfo".to_owned(),
        format!("/proc/{pid}/mountinfo"),
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .find_map(|text| mount_of(&text, major, minor));
    let fstype = mount.as_ref().map(|m| m.fstype.clone());
    let name = if major == 0 {
        // No block device: a network filesystem, named by its source.
        mount.map(|m| short_source(&m.source))
    } else {
        sysfs_name(major, minor)
    };
    Device {
        name: name.unwrap_or_else(|| format!("{major}:{minor}")),
        fstype,
    }
}

fn sysfs_name(major: u32, minor: u32) -> Option<String> {
    std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .map(str::to_owned)
}

#[derive(Debug, PartialEq, Eq)]
pub struct Mount {
    pub fstype: String,
    pub source: String,
}

/// The first mount of device `major:minor` in a mountinfo text:
/// `id parent MAJ:MIN root point options [optional...] - fstype source superoptions`.
pub fn mount_of(text: &str, major: u32, minor: u32) -> Option<Mount> {
    let want = format!("{major}:{minor}");
    text.lines().find_map(|l| {
        let mut f = l.split(' ');
        if f.nth(2)? != want {
            return None;
        }
        let mut after = f.skip_while(|x| *x != "-").skip(1);
        Some(Mount {
            fstype: after.next()?.to_owned(),
            source: unescape(after.next()?),
        })
    })
}

/// mountinfo's octal escapes (`\040` for a space, `\134` for a backslash).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(o)) => {
                out.push(o.iter().fold(0u8, |n, c| n.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The server side of a mount, its host names cut to their first label:
/// `nfs1.example.com:/export/www` → `nfs1:/export/www`, `//fs1.corp.example/share` →
/// `//fs1/share`. Addresses, Ceph monitor lists and 9p tags are kept as they are.
pub fn short_source(src: &str) -> String {
    let short_host = |h: &str| -> String {
        let is_name = h.chars().any(|c| c.is_ascii_alphabetic())
            && !h.contains(':')
            && !h.starts_with('[')
            && h.contains('.');
        if is_name {
            h.split('.').next().unwrap_or(h).to_owned()
        } else {
            h.to_owned()
        }
    };
    if let Some(rest) = src.strip_prefix("//") {
        // SMB: //server/share
        let (host, share) = rest.split_once('/').unwrap_or((rest, ""));
        let sep = if share.is_empty() && !rest.contains('/') {
            ""
        } else {
            "/"
        };
        return format!("//{}{sep}{share}", short_host(host));
    }
    match src.split_once(":/") {
        // NFS: server:/path (an IPv6 server is in brackets; a Ceph list has more colons).
        Some((host, path))
            if !host.contains(',') && (host.starts_with('[') || !host.contains(':')) =>
        {
            format!("{}:/{path}", short_host(host))
        }
        _ => src.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:53 / /srv/www rw,relatime shared:20 - nfs4 10.0.2.2:/export rw,vers=4.1,addr=10.0.2.2
41 22 0:54 / /mnt/my\\040share rw - cifs //fs1.corp.example/web\\040data rw
42 22 0:25 / /tmp rw,nosuid shared:5 master:2 - tmpfs tmpfs rw
";

    #[test]
    fn mounts_are_found_by_device_number() {
        assert_eq!(
            mount_of(MOUNTINFO, 0, 53),
            Some(Mount {
                fstype: "nfs4".into(),
                source: "10.0.2.2:/export".into()
            })
        );
        assert_eq!(
            mount_of(MOUNTINFO, 254, 0).map(|m| m.fstype),
            Some("ext4".into())
        );
        // Optional fields (shared:, master:) before the separator.
        assert_eq!(
            mount_of(MOUNTINFO, 0, 25).map(|m| m.source),
            Some("tmpfs".into())
        );
        assert_eq!(
            mount_of(MOUNTINFO, 0, 54).map(|m| m.source),
            Some("//fs1.corp.example/web data".into())
        );
        assert_eq!(mount_of(MOUNTINFO, 0, 99), None);
    }

    #[test]
    fn sources_are_shortened_to_the_server_and_its_export() {
        for (src, short) in [
            ("nfs1.example.com:/export/www", "nfs1:/export/www"),
            ("10.0.2.2:/export", "10.0.2.2:/export"),
            ("[fd00::2]:/export", "[fd00::2]:/export"),
            ("storage:/", "storage:/"),
            ("//fs1.corp.example/web data", "//fs1/web data"),
            ("//10.1.2.3/share", "//10.1.2.3/share"),
            (
                "192.168.1.1:6789,192.168.1.2:6789:/cephfs",
                "192.168.1.1:6789,192.168.1.2:6789:/cephfs",
            ),
            ("hostshare", "hostshare"),
        ] {
            assert_eq!(short_source(src), short, "{src}");
        }
    }
}
