//! One module per report: `probes` (the only part that touches the kernel), `aggregate`
//! (pure: kernel data to a snapshot) and `render` (pure: snapshot to text).

pub mod calltree;
pub mod disktop;
pub mod nettop;
pub mod slowopen;

/// The process filters every report takes: `-p/--pid`, `-u/--uid`, `-c/--comm`.
#[derive(Debug, Clone, Default)]
pub struct ProcessFilter {
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    /// Matches commands that contain this text.
    pub comm: Option<String>,
}

impl ProcessFilter {
    pub fn matches(&self, pid: u32, uid: u32, comm: &str) -> bool {
        self.pid.is_none_or(|p| pid == p)
            && self.uid.is_none_or(|u| uid == u)
            && self.comm.as_deref().is_none_or(|c| comm.contains(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_filter() {
        let all = ProcessFilter::default();
        assert!(all.matches(1, 0, "init"));
        let f = ProcessFilter {
            pid: Some(7),
            uid: Some(48),
            comm: Some("ttp".into()),
        };
        assert!(f.matches(7, 48, "httpd"));
        assert!(!f.matches(8, 48, "httpd"));
        assert!(!f.matches(7, 0, "httpd"));
        assert!(!f.matches(7, 48, "nginx"));
    }
}
