//! The invariants of ARCHITECTURE.md, checked: dependency rules (from its table, against
//! `cargo metadata`), a leading `//!` on every `.rs` file, no source file over 1,000 lines,
//! and no environment, signals or child processes outside the binary crate.
//!
//! Each check collects every violation and fails once with all of them, so one run shows
//! everything to fix.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The most lines a source file may have (tests and generated code excepted).
const MAX_LINES: usize = 1_000;

/// Source files over [`MAX_LINES`] that are known and due to be split by concern. Each entry
/// is a debt, not a licence: the test fails when a listed file shrinks below the limit (so
/// the entry is removed) and when any other file grows past it.
const TOO_LONG_FOR_NOW: &[&str] = &[];

/// Crates allowed to read the environment and touch signals and child processes.
const PROCESS_CRATES: &[&str] = &[
    "trellis",
    "trellis-test-support",
    "trellis-bench",
    "trellis-tidy",
];

/// What a file outside those crates must not contain.
const PROCESS_PATTERNS: &[&str] = &[
    "env::var",
    "env::vars",
    "process::Command",
    "tokio::process",
    "tokio::signal",
    "nix::sys::signal",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// Every `.rs` file of the workspace, relative to its root, skipping build output and
/// installed packages.
fn rust_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().unwrap().to_string_lossy();
            if path.is_dir() {
                if !matches!(name.as_ref(), "target" | "node_modules" | ".git")
                    && !name.starts_with('.')
                {
                    walk(&path, out);
                }
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out.into_iter()
        .map(|p| p.strip_prefix(root).unwrap().to_path_buf())
        .collect()
}

/// The crate directory name of a file under `crates/`.
fn crate_of(path: &Path) -> Option<String> {
    let mut parts = path.components();
    (parts.next()?.as_os_str() == "crates")
        .then(|| {
            parts
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
        })
        .flatten()
}

/// Test code: integration tests, test modules in files of their own, test suites,
/// examples, and the test-support crate.
fn is_test_code(path: &Path) -> bool {
    let name = path.file_name().unwrap().to_string_lossy();
    path.components()
        .any(|c| matches!(c.as_os_str().to_str(), Some("tests" | "examples")))
        || name == "tests.rs"
        || name == "conformance.rs"
        || crate_of(path).as_deref() == Some("trellis-test-support")
}

fn is_generated(text: &str) -> bool {
    text.lines().take(5).any(|l| l.contains("@generated"))
}

#[test]
fn every_rust_file_opens_with_a_doc_comment() {
    let root = workspace_root();
    let missing: Vec<_> = rust_files(&root)
        .into_iter()
        .filter(|p| {
            let text = std::fs::read_to_string(root.join(p)).unwrap();
            !text.trim_start().starts_with("//!")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "these files do not open with a `//!` comment saying what they are for: {missing:#?}"
    );
}

#[test]
fn no_source_file_is_too_long() {
    let root = workspace_root();
    let mut too_long = Vec::new();
    let mut paid_off = Vec::new();
    for path in rust_files(&root) {
        if is_test_code(&path) {
            continue;
        }
        let text = std::fs::read_to_string(root.join(&path)).unwrap();
        if is_generated(&text) {
            continue;
        }
        let lines = text.lines().count();
        let listed = TOO_LONG_FOR_NOW.iter().any(|l| Path::new(l) == path);
        if lines > MAX_LINES && !listed {
            too_long.push(format!("{} ({lines} lines)", path.display()));
        }
        if lines <= MAX_LINES && listed {
            paid_off.push(path.display().to_string());
        }
    }
    for listed in TOO_LONG_FOR_NOW {
        assert!(
            root.join(listed).exists(),
            "{listed} is gone: remove it from TOO_LONG_FOR_NOW"
        );
    }
    assert!(
        too_long.is_empty(),
        "split these by concern (at most {MAX_LINES} lines): {too_long:#?}"
    );
    assert!(
        paid_off.is_empty(),
        "these are short enough now: remove them from TOO_LONG_FOR_NOW: {paid_off:#?}"
    );
}

#[test]
fn only_the_binary_reads_the_environment_or_touches_processes() {
    let root = workspace_root();
    let mut found = Vec::new();
    for path in rust_files(&root) {
        let Some(krate) = crate_of(&path) else {
            continue;
        };
        // A build script's interface is its environment (`OUT_DIR` and friends).
        let build_script = path.file_name().is_some_and(|f| f == "build.rs");
        if PROCESS_CRATES.contains(&krate.as_str()) || is_test_code(&path) || build_script {
            continue;
        }
        let text = std::fs::read_to_string(root.join(&path)).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for pattern in PROCESS_PATTERNS {
                if code.contains(pattern) {
                    found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "only the binary crate may read the environment or touch signals and child \
         processes (ARCHITECTURE.md); pass the value in instead: {found:#?}"
    );
}

/// The table under "## Dependency rules" in ARCHITECTURE.md: crate → allowed Trellis crates.
fn dependency_rules(architecture: &str) -> BTreeMap<String, BTreeSet<String>> {
    let section = architecture
        .split("## Dependency rules")
        .nth(1)
        .expect("ARCHITECTURE.md has a \"## Dependency rules\" section");
    let section = section.split("\n## ").next().unwrap_or_default();
    let names = |cell: &str| -> BTreeSet<String> {
        cell.split(',')
            .filter_map(|n| {
                n.trim()
                    .strip_prefix('`')?
                    .strip_suffix('`')
                    .map(str::to_string)
            })
            .collect()
    };
    section
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line
                .trim()
                .strip_prefix('|')?
                .strip_suffix('|')?
                .split('|')
                .collect();
            let [krate, allowed] = cells.as_slice() else {
                return None;
            };
            let krate = names(krate).into_iter().next()?;
            Some((krate, names(allowed)))
        })
        .collect()
}

#[test]
fn crates_depend_only_as_architecture_allows() {
    let root = workspace_root();
    let rules = dependency_rules(&std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap());
    assert!(
        rules.len() >= 5,
        "the dependency table did not parse: {rules:?}"
    );

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    let members: BTreeSet<String> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    let mut problems = Vec::new();
    for package in metadata["packages"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap();
        let Some(allowed) = rules.get(name) else {
            problems.push(format!(
                "{name} is not in ARCHITECTURE.md's dependency table"
            ));
            continue;
        };
        for dep in package["dependencies"].as_array().unwrap() {
            let dep_name = dep["name"].as_str().unwrap();
            if !members.contains(dep_name) {
                continue;
            }
            let dev = dep["kind"].as_str() == Some("dev");
            let fine = allowed.contains(dep_name)
                || (dev && (dep_name == name || dep_name == "trellis-test-support"));
            if !fine {
                let kind = if dev { "dev-dependency" } else { "dependency" };
                problems.push(format!(
                    "{name} has a {kind} on {dep_name}, which the table does not allow"
                ));
            }
        }
    }
    for krate in rules.keys() {
        if !members.contains(krate) {
            problems.push(format!(
                "ARCHITECTURE.md lists {krate}, which is no workspace member"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "dependency rules broken: {problems:#?}"
    );
}

#[test]
fn the_rules_table_parses_as_written() {
    let table = "## Dependency rules\n\n| crate | may depend on |\n|---|---|\n\
                 | `a` | (none) |\n| `b` | `a`, `c` |\n\n## Next\n| `x` | `y` |\n";
    let rules = dependency_rules(table);
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert!(rules["a"].is_empty());
    assert_eq!(
        rules["b"],
        BTreeSet::from(["a".to_string(), "c".to_string()])
    );
}
