//! The rules that keep the crates' shape (docs/architecture.md), checked on the source: the
//! federation crate does no IO outside its tests, and no crate's modules import each other in a
//! loop.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The workspace folder.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_owned()
}

/// Every `.rs` file under a folder.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("a readable source folder") {
            let path = entry.expect("a readable entry").path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The code of a file before its test module, without comments; `None` for a file of tests.
fn code(path: &Path) -> Option<String> {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return None;
    }
    let text = std::fs::read_to_string(path).expect("a readable source file");
    let before_tests = text.split("#[cfg(test)]").next().unwrap_or_default();
    Some(
        before_tests
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

#[test]
fn federation_opens_no_socket_file_clock_or_randomness_outside_its_tests() {
    let forbidden = [
        "tokio::net",
        "std::fs",
        "TcpStream",
        "SystemTime::now",
        "Instant::now",
        "thread_rng",
        "OsRng",
        "getrandom",
        "SystemRandom",
    ];
    let mut found = Vec::new();
    for path in sources(&root().join("federation/src")) {
        let Some(code) = code(&path) else { continue };
        for word in forbidden {
            if code.contains(word) {
                found.push(format!("{}: {word}", path.display()));
            }
        }
    }
    assert!(found.is_empty(), "IO inside federation: {found:#?}");
}

/// A module's path in its crate (`peer::dial`) from its file.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("a file of the crate");
    let mut parts: Vec<String> = relative
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts.join("::")
}

/// The modules a module imports: `crate::a::b` paths and `super::sibling` paths, resolved to the
/// longest known module. A module's own ancestors and descendants are not counted: declaring a
/// child is not importing it.
fn imports(module: &str, code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut paths = Vec::new();
    for (prefix, base) in [("crate::", String::new()), ("super::", parent(module))] {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let preceded = rest[..at].chars().last().is_some_and(is_word);
            rest = &rest[at + prefix.len()..];
            if preceded {
                continue;
            }
            // `crate::{a, b::c}` names several paths; `crate::a::b` one.
            let heads: Vec<String> = if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                group[..end]
                    .split(',')
                    .map(|p| p.trim().to_owned())
                    .collect()
            } else {
                let end = rest
                    .find(|c: char| !(is_word(c) || c == ':'))
                    .unwrap_or(rest.len());
                vec![rest[..end].to_owned()]
            };
            for head in heads {
                let segments: Vec<&str> = head
                    .split("::")
                    .filter(|s| s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_'))
                    .collect();
                let mut full: Vec<&str> = if base.is_empty() {
                    Vec::new()
                } else {
                    base.split("::").collect()
                };
                full.extend(segments);
                paths.push(full.join("::"));
            }
        }
    }
    let mut edges = BTreeSet::new();
    for path in paths {
        let mut candidate = path.as_str();
        loop {
            if known.contains(candidate) {
                let related = candidate == module
                    || module.starts_with(&format!("{candidate}::"))
                    || candidate.starts_with(&format!("{module}::"))
                    || candidate.is_empty();
                if !related {
                    edges.insert(candidate.to_owned());
                }
                break;
            }
            match candidate.rfind("::") {
                Some(at) => candidate = &candidate[..at],
                None => break,
            }
        }
    }
    edges
}

fn parent(module: &str) -> String {
    module
        .rsplit_once("::")
        .map(|(p, _)| p.to_owned())
        .unwrap_or_default()
}

/// The loops of a graph: strongly connected components of more than one module.
fn loops(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Two modules are in one loop when each reaches the other.
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(m) = todo.pop() {
            for next in edges.get(&m).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&String, BTreeSet<String>> =
        edges.keys().map(|m| (m, reach(m))).collect();
    let mut found: Vec<Vec<String>> = Vec::new();
    for (module, reaches) in &reached {
        if !reaches.contains(*module) || found.iter().any(|l| l.contains(module)) {
            continue;
        }
        let group: Vec<String> = reaches
            .iter()
            .filter(|other| reached[other].contains(*module))
            .cloned()
            .collect();
        found.push(group);
    }
    found
}

#[test]
fn no_crate_has_modules_that_import_each_other_in_a_loop() {
    let mut report = Vec::new();
    for krate in ["federation", "io", "gateway", "sidecar", "cli", "tests"] {
        let src = root().join(krate).join("src");
        let files: Vec<(String, String)> = sources(&src)
            .into_iter()
            .filter_map(|f| Some((module_of(&src, &f), code(&f)?)))
            .collect();
        let known: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
        let edges: BTreeMap<String, BTreeSet<String>> = files
            .iter()
            .map(|(m, code)| (m.clone(), imports(m, code, &known)))
            .collect();
        for group in loops(&edges) {
            report.push(format!("{krate}: {}", group.join(" <-> ")));
        }
    }
    assert!(report.is_empty(), "import loops: {report:#?}");
}

#[test]
fn the_loop_finder_sees_a_loop_and_its_members() {
    let known: BTreeSet<String> = ["a", "b", "c", "peer", "peer::dial", "peer::drive"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let edges: BTreeMap<String, BTreeSet<String>> = [
        ("a", "use crate::b::Thing;"),
        ("b", "use crate::{c, a::Other};"),
        ("c", ""),
        ("peer", "pub use dial::start;"),
        ("peer::dial", "use super::drive::run;"),
        ("peer::drive", "use crate::peer::dial::Tokens;"),
    ]
    .iter()
    .map(|(m, code)| (m.to_string(), imports(m, code, &known)))
    .collect();
    assert_eq!(edges["b"], ["a".to_owned(), "c".to_owned()].into());
    assert_eq!(
        loops(&edges),
        vec![
            vec!["a".to_owned(), "b".to_owned()],
            vec!["peer::dial".to_owned(), "peer::drive".to_owned()]
        ]
    );
}
