//! Pure: what the serial console of a test boot says, line by line: markers the init
//! prints, libtest's results, and a kernel's panic or RCU stall.

use std::time::Duration;

/// Markers the init prints on the console.
pub const BOOTED: &str = "STAPR-VM-BOOTED";
pub const DONE: &str = "STAPR-VM-DONE";
pub const RESULT: &str = "STAPR-VM-RESULT";
pub const METHOD: &str = "STAPR-VM-METHOD";

/// What one boot showed.
#[derive(Default, Debug)]
pub struct Outcome {
    pub booted: bool,
    pub done: bool,
    pub panic: Option<String>,
    pub stall: Option<String>,
    pub timed_out: bool,
    /// (test binary, exit code)
    /// (test binary, exit code, seconds it ran: 0 when the init did not say)
    pub results: Vec<(String, i32, u64)>,
    pub methods: Vec<String>,
    pub failures: Vec<String>,
    /// (test, seconds) of every test that said how long it took (libtest's
    /// `--report-time`).
    pub times: Vec<(String, f64)>,
    pub passed: u64,
    pub failed: u64,
}

impl Outcome {
    /// Takes one console line; returns true when the boot is over for the harness (the
    /// kernel panicked).
    pub fn feed(&mut self, line: &str) -> bool {
        if line.contains(BOOTED) {
            self.booted = true;
        }
        if line.contains("Kernel panic") {
            self.panic = Some(line.to_owned());
        }
        if line.contains("rcu_sched self-detected stall") || line.contains("rcu: INFO: rcu_") {
            self.stall.get_or_insert(line.to_owned());
        }
        if let Some(m) = line.strip_prefix(METHOD) {
            self.methods.push(m.trim().to_owned());
        }
        if let Some(r) = line.strip_prefix(RESULT) {
            let mut it = r.split_whitespace();
            if let (Some(t), Some(rc)) = (it.next(), it.next()) {
                let secs = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                self.results
                    .push((t.to_owned(), rc.parse().unwrap_or(-1), secs));
            }
        }
        // libtest: "test name ... FAILED" (with `--report-time`, "... ok <1.234s>") and
        // the per-binary summary.
        if let Some(rest) = line.strip_prefix("test ") {
            let (verdict, secs) = match rest.rsplit_once(" <") {
                Some((v, t)) => (v, t.strip_suffix("s>").and_then(|t| t.parse::<f64>().ok())),
                None => (rest, None),
            };
            if let (Some((name, _)), Some(secs)) = (verdict.split_once(" ... "), secs) {
                self.times.push((name.to_owned(), secs));
            }
            if verdict.ends_with(" ... FAILED") {
                self.failures.push(format!("test {verdict}"));
            }
        }
        if line.starts_with("test result: ") {
            for part in line.split(';') {
                let w: Vec<&str> = part.split_whitespace().collect();
                let n = w
                    .len()
                    .checked_sub(2)
                    .and_then(|i| w[i].parse::<u64>().ok())
                    .unwrap_or(0);
                match w.last() {
                    Some(&"passed") => self.passed += n,
                    Some(&"failed") => self.failed += n,
                    _ => {}
                }
            }
        }
        if line.contains(DONE) {
            self.done = true;
        }
        self.panic.is_some()
    }

    /// None when the boot passed: it ran to the end, `expected_results` test binaries
    /// reported, none failed and at least one test passed. Otherwise why not.
    pub fn verdict(&self, expected_results: usize, timeout: Duration) -> Option<String> {
        if let Some(p) = &self.panic {
            Some(format!("kernel panic: {p}"))
        } else if let Some(s) = &self.stall {
            Some(format!("RCU stall: {s}"))
        } else if self.timed_out {
            Some(format!("timed out after {} s", timeout.as_secs()))
        } else if !self.booted {
            Some("did not reach the test stage".to_owned())
        } else if !self.done {
            Some("stopped before the tests finished".to_owned())
        } else if self.results.len() != expected_results
            || self.results.iter().any(|(_, rc, _)| *rc != 0)
            || self.failed > 0
        {
            Some(format!("tests failed: {}", self.failures.join(", ")))
        } else if self.passed == 0 {
            Some("no test ran".to_owned())
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed(lines: &str) -> Outcome {
        let mut o = Outcome::default();
        for l in lines.lines() {
            if o.feed(l) {
                break;
            }
        }
        o
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_passing_boot() {
        let o = fed("[    1.2] random kernel line
STAPR-VM-BOOTED 6.12.57+deb13-amd64
STAPR-VM-METHOD nettop: stapr nettop: BTF tracepoints (tp_btf) on net:net_dev_xmit; reporting every 1 s. Ctrl-C to end.
running 3 tests
test a ... ok
test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.00s
STAPR-VM-RESULT nettop 0 12
running 2 tests
test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s
STAPR-VM-RESULT cli 0
STAPR-VM-DONE");
        assert!(o.booted && o.done);
        assert_eq!((o.passed, o.failed), (5, 0));
        assert_eq!(
            o.results,
            [("nettop".to_owned(), 0, 12), ("cli".to_owned(), 0, 0)]
        );
        assert_eq!(o.methods.len(), 1);
        assert!(o.methods[0].starts_with("nettop: stapr nettop: BTF"));
        assert_eq!(o.verdict(2, MINUTE), None);
        assert_eq!(
            o.verdict(3, MINUTE).as_deref(),
            Some("tests failed: "),
            "a binary that never reported"
        );
    }

    #[test]
    fn a_failing_test() {
        let o = fed("STAPR-VM-BOOTED 6.1.0
test nettop::counts ... FAILED
test result: FAILED. 4 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out
STAPR-VM-RESULT nettop 101
STAPR-VM-DONE");
        assert_eq!((o.passed, o.failed), (4, 1));
        assert_eq!(
            o.verdict(1, MINUTE).as_deref(),
            Some("tests failed: test nettop::counts ... FAILED")
        );
    }

    #[test]
    fn report_times_name_each_test() {
        let o = fed("test disktop::a ... ok <12.500s>
test disktop::b ... FAILED <3.000s>
test disktop::c ... ignored, needs a VM");
        assert_eq!(
            o.times,
            [
                ("disktop::a".to_owned(), 12.5),
                ("disktop::b".to_owned(), 3.0)
            ]
        );
        assert_eq!(o.failures, ["test disktop::b ... FAILED"]);
    }

    #[test]
    fn a_panic_ends_the_boot() {
        let mut o = Outcome::default();
        assert!(!o.feed("STAPR-VM-BOOTED 6.1.0"));
        assert!(o.feed("[   9.1] Kernel panic - not syncing: sysrq triggered crash"));
        assert!(o.verdict(1, MINUTE).unwrap().starts_with("kernel panic: "));
    }

    #[test]
    fn stalls_time_outs_and_early_ends() {
        let o = fed("STAPR-VM-BOOTED 6.1.0
[  30.0] rcu: INFO: rcu_preempt self-detected stall on CPU
STAPR-VM-DONE");
        assert!(o.verdict(0, MINUTE).unwrap().starts_with("RCU stall: "));
        let mut o = fed("STAPR-VM-BOOTED 6.1.0");
        assert_eq!(
            o.verdict(0, MINUTE).as_deref(),
            Some("stopped before the tests finished")
        );
        o.timed_out = true;
        assert_eq!(
            o.verdict(0, MINUTE).as_deref(),
            Some("timed out after 60 s")
        );
        assert_eq!(
            fed("booting...").verdict(0, MINUTE).as_deref(),
            Some("did not reach the test stage")
        );
        assert_eq!(
            fed("STAPR-VM-BOOTED x\nSTAPR-VM-DONE")
                .verdict(0, MINUTE)
                .as_deref(),
            Some("no test ran")
        );
    }
}
