//! ARCHITECTURE.md's rules about imports, checked on the source: no import cycle between
//! the modules of any crate, and the supervisor's layers point one way (nothing under `job`
//! or `lease` knows the wire, and lower layers never import higher ones).
//!
//! Imports are read from `crate::` and `super::` paths in each file, leaving out comments
//! and `#[cfg(test)] mod tests` blocks (tests may reach anywhere). A module is a file (or a
//! directory's `mod.rs`); cycles are looked for with modules collapsed to their first one,
//! two and three path segments, so `a::x -> b::y -> a::z` counts as a cycle between `a` and
//! `b`, and a parent and its child importing each other counts too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every module of the crate whose sources are in `src`, with its code (comments and test
/// modules removed).
fn modules(src: &Path) -> BTreeMap<Vec<String>, String> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read a source directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut name: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                name.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                name.pop();
            }
            let text = std::fs::read_to_string(&path).expect("read a source file");
            found.insert(name, code(&text));
        }
    }
    found
}

/// The code without comments and without `#[cfg(test)] mod tests { ... }`.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `crate::` and `super::` paths a module names, resolved to absolute segment lists.
fn paths(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start) {
            let at = from + at;
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let rest: String = code[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let segments: Vec<&str> = rest.split("::").filter(|s| !s.is_empty()).collect();
            let mut base: Vec<String> = module.to_vec();
            let mut i = 0;
            if segments.first() == Some(&"crate") {
                base.clear();
                i = 1;
            }
            while segments.get(i) == Some(&"super") {
                base.pop();
                i += 1;
            }
            base.extend(segments[i..].iter().map(|s| s.to_string()));
            out.push(base);
        }
    }
    out
}

/// Edges between modules collapsed to `depth` segments.
fn graph(src: &Path, depth: usize) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules(src);
    let collapse = |m: &[String]| m.iter().take(depth).cloned().collect::<Vec<_>>().join("::");
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, code) in &modules {
        for path in paths(name, code) {
            // The longest prefix of the path that is a module is what is imported.
            let Some(target) = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains_key(p))
            else {
                continue;
            };
            let (a, b) = (collapse(name), collapse(&target));
            if a != b {
                edges.entry(a).or_default().insert(b);
            }
        }
    }
    edges
}

fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut found = stack[at..].to_vec();
            found.push(node.to_string());
            return Some(found);
        }
        if !done.insert(node.to_string()) {
            return None;
        }
        stack.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, edges, stack, done) {
                return Some(found);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(found) = visit(node, edges, &mut Vec::new(), &mut done) {
            return Some(found);
        }
    }
    None
}

const CRATES: [&str; 6] = [
    "src",
    "supervisor/src",
    "torch/src",
    "tts-client/src",
    "tts-service/src",
    "video-service/src",
];

#[test]
fn no_crate_has_an_import_cycle() {
    for krate in CRATES {
        for depth in 1..=3 {
            let edges = graph(&root().join(krate), depth);
            if let Some(found) = cycle(&edges) {
                panic!(
                    "{krate}: import cycle between modules (depth {depth}): {}",
                    found.join(" -> ")
                );
            }
        }
    }
}

#[test]
fn the_check_sees_a_cycle_when_there_is_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lib.rs"), "mod a;\nmod b;\n").unwrap();
    std::fs::write(dir.path().join("a.rs"), "use crate::b::B;\npub struct A;\n").unwrap();
    std::fs::write(
        dir.path().join("b.rs"),
        "// use crate::a::A; in a comment is not an import\npub struct B;\n",
    )
    .unwrap();
    assert_eq!(cycle(&graph(dir.path(), 1)), None);
    std::fs::write(dir.path().join("b.rs"), "use super::a::A;\npub struct B;\n").unwrap();
    assert_eq!(
        cycle(&graph(dir.path(), 1)),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
}

/// The supervisor's layers, lowest first: a module may import only from its own layer or
/// lower ones (ARCHITECTURE.md, the supervisor's invariants).
#[test]
fn the_supervisors_layers_point_one_way() {
    let layers: [&[&str]; 6] = [
        &["budget", "gpu", "pool"],
        &["lease"],
        &["config", "compute", "sampler", "job"],
        &["rpc", "metrics", "kubernetes"],
        &["client", "cli", "logging"],
        &["server", "main"],
    ];
    let layer_of = |m: &str| layers.iter().position(|l| l.contains(&m));
    let src = root().join("supervisor/src");
    let edges = graph(&src, 1);
    for (from, targets) in &edges {
        for to in targets {
            let (Some(a), Some(b)) = (layer_of(from), layer_of(to)) else {
                continue;
            };
            assert!(
                b <= a,
                "supervisor: `{from}` (layer {a}) imports `{to}` (layer {b}), a higher layer"
            );
        }
    }
    // Nothing under `job` or `lease` knows the wire.
    for (name, code) in modules(&src) {
        if matches!(name.first().map(String::as_str), Some("job" | "lease")) {
            assert!(
                !code.contains("arbiter::pb") && !code.contains("tonic::"),
                "supervisor::{} names the wire: prost and tonic types stay in `rpc`",
                name.join("::")
            );
        }
    }
}

/// The crates that must never load libtorch (ARCHITECTURE.md: the root crate, the
/// supervisor, and the thin `arbiter-tts` of `tts-client`) name none of the crates that link
/// it among their dependencies (`tts-client/tests/thin.rs` checks the built binary too).
#[test]
fn crates_without_libtorch_do_not_depend_on_it() {
    const LINK_LIBTORCH: [&str; 4] = ["tch", "torch-sys", "arbiter-torch", "arbiter-tts"];
    for manifest in [
        "Cargo.toml",
        "supervisor/Cargo.toml",
        "tts-client/Cargo.toml",
    ] {
        let text = std::fs::read_to_string(root().join(manifest)).expect("read a manifest");
        let mut section = "";
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line;
                continue;
            }
            if !matches!(section, "[dependencies]" | "[build-dependencies]") {
                continue;
            }
            let Some(name) = line.split(['=', '.']).next().map(str::trim) else {
                continue;
            };
            assert!(
                !LINK_LIBTORCH.contains(&name),
                "{manifest} depends on {name}, which links libtorch"
            );
        }
    }
}
