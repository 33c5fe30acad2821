//! The source layout rules of docs/ARCHITECTURE.md, checked on the tree: the layers of each
//! crate form no cycle, the device model stays free of files, sockets and service crates, no
//! `#[path]` hides where a module lives, no non-test source file grows past 1000 lines, and the
//! daemon crate keeps a handful of top-level files.

#![allow(clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file under `dir` (recursively, `target` skipped), sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "target") {
                    todo.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The non-test part of a source file: nothing for a test-only file (`tests.rs`,
/// `*_tests.rs`), else the text before its `#[cfg(test)]` module.
fn non_test(path: &Path) -> String {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name == "tests.rs" || name.ends_with("_tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(path).expect("read source");
    let mut kept = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        if l.trim() == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|n| n.trim_start().starts_with("mod "))
        {
            // A test module declared in this file: inline (`mod tests {`, the rest of the
            // file) or a file of its own (`mod tests;`, nothing more of it here).
            if lines.peek().is_some_and(|n| n.trim_end().ends_with('{')) {
                break;
            }
            lines.next();
            continue;
        }
        kept.push(l);
    }
    kept.join("\n")
}

/// The top-level module a file of `src` belongs to (None for the crate roots).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" => None,
        f => Some(f.trim_end_matches(".rs").to_string()),
    }
}

/// `crate::NAME` references of non-test code, per top-level module.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in rust_files(src) {
        let Some(from) = top_module(src, &f) else {
            continue;
        };
        let deps = graph.entry(from.clone()).or_default();
        // Code only: a doc link to a higher layer is not a dependency.
        let text: String = non_test(&f)
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for (i, _) in text.match_indices("crate::") {
            let name: String = text[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != from {
                deps.insert(name);
            }
        }
    }
    graph
}

/// A cycle of the graph, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            let mut cycle = path[at..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for d in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let g = |edges: &[(&str, &str)]| {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            m.entry(a.to_string()).or_default().insert(b.to_string());
        }
        m
    };
    assert_eq!(find_cycle(&g(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
    assert_eq!(
        find_cycle(&g(&[("a", "b"), ("b", "c"), ("c", "a")])),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}

#[test]
fn no_crate_has_a_module_cycle() {
    for src in [
        "daemon/src",
        "daemon/model/src",
        "pagetables/src",
        "pasid/src",
    ] {
        let graph = module_graph(&repo().join(src));
        assert!(!graph.is_empty(), "{src}: no modules found");
        if let Some(c) = find_cycle(&graph) {
            panic!("{src}: module cycle {}", c.join(" -> "));
        }
    }
}

#[test]
fn the_model_has_no_files_sockets_or_service_dependencies() {
    let manifest = std::fs::read_to_string(repo().join("daemon/model/Cargo.toml")).expect("read");
    for dep in [
        "vhost",
        "seccompiler",
        "sd-notify",
        "clap",
        "toml",
        "signal-hook",
        "env_logger",
    ] {
        assert!(
            !manifest
                .lines()
                .any(|l| l.starts_with(&format!("{dep} ")) || l.starts_with(&format!("{dep}."))),
            "daemon/model depends on {dep}"
        );
    }
    for f in rust_files(&repo().join("daemon/model/src")) {
        let text = non_test(&f);
        for banned in [
            "std::fs",
            "std::net",
            "UnixStream",
            "UnixListener",
            "vhost_user",
        ] {
            assert!(!text.contains(banned), "{}: uses {banned}", f.display());
        }
    }
    let fuzz = std::fs::read_to_string(repo().join("fuzz/Cargo.toml")).expect("read");
    assert!(
        !fuzz.contains("path = \"../daemon\""),
        "the fuzz crate depends on the daemon crate instead of the model"
    );
}

#[test]
fn no_path_attributes_and_no_source_file_over_1000_lines() {
    let mut long = Vec::new();
    for dir in ["daemon", "pagetables", "pasid", "vmm-glue", "tests", "fuzz"] {
        for f in rust_files(&repo().join(dir)) {
            let text = std::fs::read_to_string(&f).expect("read");
            assert!(
                !text.lines().any(|l| l.trim_start().starts_with("#[path")),
                "{}: #[path] hides where a module lives",
                f.display()
            );
            let n = non_test(&f).lines().count();
            if n > 1000 {
                long.push(format!("{} ({n} non-test lines)", f.display()));
            }
        }
    }
    assert!(long.is_empty(), "source files over 1000 lines: {long:?}");
}

#[test]
fn the_daemon_crate_has_a_handful_of_top_level_files() {
    let files: Vec<String> = std::fs::read_dir(repo().join("daemon/src"))
        .expect("read_dir")
        .flatten()
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .collect();
    assert!(
        files.len() <= 4,
        "daemon/src has {} top-level files: {files:?}",
        files.len()
    );
}
