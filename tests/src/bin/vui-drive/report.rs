//! The `VUI-RESULT <name> PASS|FAIL <detail>` lines the VM test (tests/vm) collects.

use vhost_user_iommu_tests::Daemon;

/// The checks of one run: prints each, counts the failures.
#[derive(Debug, Default)]
pub struct Report {
    pub failed: usize,
}

impl Report {
    pub fn check(&mut self, name: &str, r: Result<String, String>) {
        match r {
            Ok(d) => println!("VUI-RESULT {name} PASS {d}"),
            Err(d) => {
                self.failed += 1;
                println!("VUI-RESULT {name} FAIL {d}");
            }
        }
    }

    /// After a failure, the daemon's log as `VUI-NOTE <who>: <line>` lines.
    pub fn note_log_if_failed(&self, who: &str, daemon: &Daemon) {
        if self.failed > 0 {
            for line in daemon.stderr().lines() {
                println!("VUI-NOTE {who}: {line}");
            }
        }
    }
}

pub fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}
