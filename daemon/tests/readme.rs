//! README.md's shell blocks that are meant to run (marked `<!-- readme-test: run ... -->`) run as
//! printed, with `target/release/` standing for the directory of the binaries under test, in a
//! scratch directory; every command must succeed. (The first block's `cargo run --release` and
//! `tests/run-all.sh` are what CI runs; the package install is the `systemd` VM test; the
//! passthrough launch needs a host device: the `passthrough` VM test.)

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const MARK: &str = "<!-- readme-test: run";

/// The marked blocks of `text`.
fn marked_blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if !l.starts_with(MARK) {
            continue;
        }
        assert_eq!(
            lines.next(),
            Some("```sh"),
            "a marked block must follow its mark"
        );
        let block: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
        out.push(block.join("\n"));
    }
    out
}

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_vhost-user-iommu"))
        .parent()
        .expect("binary directory")
        .to_path_buf()
}

#[test]
fn the_marked_readme_blocks_run_as_printed() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("read README.md");
    let blocks = marked_blocks(&readme);
    assert!(!blocks.is_empty(), "no block of README.md is marked to run");
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the README's commands use /run, which needs root");
        return;
    }
    let bins = bin_dir();
    assert!(
        bins.join("vhost-user-iommu-glue").exists(),
        "build the workspace's binaries first (cargo build --workspace --bins)"
    );
    let dir = std::env::temp_dir().join(format!("vui-readme-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    for block in blocks {
        let script = block.replace("target/release/", &format!("{}/", bins.display()));
        // Background jobs (the daemon) are stopped when the block ends; every other command
        // must succeed.
        let wrapped = format!(
            "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n{script}\nsleep 0.5\n"
        );
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(&wrapped)
            .current_dir(&dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run bash");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while child.try_wait().expect("wait").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("README block did not finish in 60 s:\n{block}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("output");
        assert!(
            out.status.success(),
            "README block failed ({}):\n{block}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn a_marked_block_that_fails_is_caught() {
    let text = format!("{MARK} -->\n```sh\nfalse\n```\nprose\n");
    assert_eq!(marked_blocks(&text), vec!["false".to_string()]);
    let status = Command::new("bash")
        .args(["-c", "set -euo pipefail\nfalse\n"])
        .status()
        .expect("bash");
    assert!(!status.success());
}
