//! The crate's structure, read from its source: every `crate::…` path in `builder-api/src`
//! (imports and inline paths, test modules left out) is an edge from the file it is written in
//! to the file that defines it. Two rules hold, the way ArchUnit and `cargo-modules` users keep
//! them:
//!
//! - **Layers, top to bottom** ([`LAYERS`], written once here): a top-level module imports only
//!   modules of its own layer or below.
//! - **No cycles** between files: within a layer modules may use each other, but never round in a
//!   circle (so `Context` holds handles defined in files that do not import `Context`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, top to bottom. A module imports only its own layer and the ones below.
const LAYERS: &[(&str, &[&str])] = &[
    ("entry points", &["main", "cli", "server", "devtools"]),
    ("HTTP", &["router", "handlers", "hooks", "web", "auth", "audit", "error"]),
    // `Context` is how the services reach each other; it holds handles from their leaf files.
    ("services", &["context", "scheduler", "executor", "replication", "rollout", "steps", "apm", "logs", "gitlab_status", "notify", "peers", "leadership"]),
    ("model and storage", &["store", "plan", "config"]),
    ("leaf utilities", &["validate", "branch_filter", "ratelimit", "json_file", "failure_line", "outbound", "metrics"]),
];

/// A file of the crate as a module path: `["executor", "kube", "render"]` for
/// `executor/kube/render.rs`, `["scheduler"]` for `scheduler/mod.rs`, `["main"]` for `main.rs`.
type ModPath = Vec<String>;

fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments and without `#[cfg(test)]` items (a test module may use
/// anything).
fn production_code(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(|l| match l.find("//") {
        // A `//` inside a string (a URL) is rare in paths that matter; cut at the first one
        // that starts a comment after only whitespace, else keep the line.
        Some(i) if l[..i].trim().is_empty() => "",
        _ => l,
    }).collect();
    let code = lines.join("\n");
    let mut out = String::with_capacity(code.len());
    let mut rest = code.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        // Skip the item: to the end of its braces, or of its line when it has none.
        let line_end = after.find('\n').unwrap_or(after.len());
        let brace = after.find('{');
        match brace {
            Some(b) if b < after.find(';').unwrap_or(usize::MAX) => {
                let mut depth = 0usize;
                let mut end = after.len();
                for (i, c) in after[b..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                rest = &after[end..];
            }
            _ => rest = &after[line_end..],
        }
    }
    out.push_str(rest);
    out
}

/// Every path written after `crate::`, with `use` groups expanded: `crate::a::{b::C, d}` gives
/// `a::b::C` and `a::d`.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut paths = vec![];
    let bytes = code.as_bytes();
    let mut i = 0;
    while let Some(at) = code[i..].find("crate::") {
        let start = i + at;
        // `foo_crate::x` is another identifier.
        if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            i = start + 7;
            continue;
        }
        let mut pos = start + "crate::".len();
        tree(code, &mut pos, vec![], &mut paths);
        i = pos.max(start + 7);
    }
    paths
}

fn skip_ws(code: &str, pos: &mut usize) {
    while code[*pos..].starts_with(|c: char| c.is_whitespace()) {
        *pos += code[*pos..].chars().next().unwrap().len_utf8();
    }
}

fn ident(code: &str, pos: &mut usize) -> Option<String> {
    let s = &code[*pos..];
    let len = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    if len == 0 {
        return None;
    }
    *pos += len;
    Some(s[..len].to_string())
}

/// One use-tree at `pos` below `prefix`.
fn tree(code: &str, pos: &mut usize, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    loop {
        skip_ws(code, pos);
        if code[*pos..].starts_with('{') {
            *pos += 1;
            loop {
                skip_ws(code, pos);
                if code[*pos..].starts_with('}') {
                    *pos += 1;
                    return;
                }
                tree(code, pos, prefix.clone(), out);
                skip_ws(code, pos);
                if code[*pos..].starts_with(',') {
                    *pos += 1;
                } else if code[*pos..].starts_with('}') {
                    *pos += 1;
                    return;
                } else {
                    return;
                }
            }
        }
        if code[*pos..].starts_with('*') {
            *pos += 1;
            out.push(prefix);
            return;
        }
        match ident(code, pos) {
            Some(name) if name != "self" => prefix.push(name),
            Some(_) => {}
            None => {
                if !prefix.is_empty() {
                    out.push(prefix);
                }
                return;
            }
        }
        if code[*pos..].starts_with("::") {
            *pos += 2;
        } else {
            out.push(prefix);
            return;
        }
    }
}

/// The file a path leads into: the longest prefix of it that is a module of the crate.
fn defining_module(modules: &BTreeSet<ModPath>, path: &[String]) -> Option<ModPath> {
    (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| modules.contains(p))
}

/// The crate as files and the edges between them.
struct Graph {
    /// file → the files it uses (itself left out).
    edges: BTreeMap<ModPath, BTreeSet<ModPath>>,
}

impl Graph {
    fn from_sources(sources: &[(ModPath, String)]) -> Graph {
        let modules: BTreeSet<ModPath> = sources.iter().map(|(m, _)| m.clone()).collect();
        let mut edges = BTreeMap::new();
        for (module, text) in sources {
            let used: BTreeSet<ModPath> = crate_paths(&production_code(text))
                .iter()
                .filter_map(|p| defining_module(&modules, p))
                .filter(|m| m != module)
                .collect();
            edges.insert(module.clone(), used);
        }
        Graph { edges }
    }

    fn read(src: &Path) -> Graph {
        let mut files = vec![];
        rust_files(src, &mut files);
        files.sort();
        let sources: Vec<(ModPath, String)> = files
            .iter()
            .map(|f| (module_of(src, f), std::fs::read_to_string(f).unwrap()))
            .filter(|(m, _)| m.as_slice() != ["lib"])
            .collect();
        Graph::from_sources(&sources)
    }

    /// Each import of a module in a higher layer, as `a/b.rs (services) uses router (HTTP)`.
    fn layer_violations(&self) -> Vec<String> {
        let layer_of = |m: &ModPath| LAYERS.iter().position(|(_, mods)| mods.contains(&m[0].as_str()));
        let mut found = vec![];
        for (from, tos) in &self.edges {
            let Some(lf) = layer_of(from) else {
                found.push(format!("{} is in no layer: add its top-level module to LAYERS", from.join("::")));
                continue;
            };
            for to in tos {
                match layer_of(to) {
                    Some(lt) if lt < lf => found.push(format!(
                        "{} ({}) uses {} ({}), a layer above it",
                        from.join("::"),
                        LAYERS[lf].0,
                        to.join("::"),
                        LAYERS[lt].0
                    )),
                    _ => {}
                }
            }
        }
        found
    }

    /// A cycle of files, if there is one (each written as the path round it).
    fn cycles(&self) -> Vec<String> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Open,
            Done,
        }
        fn visit(g: &Graph, m: &ModPath, marks: &mut BTreeMap<ModPath, Mark>, stack: &mut Vec<ModPath>, found: &mut Vec<String>) {
            marks.insert(m.clone(), Mark::Open);
            stack.push(m.clone());
            for next in g.edges.get(m).into_iter().flatten() {
                match marks.get(next) {
                    Some(Mark::Open) => {
                        let start = stack.iter().position(|s| s == next).unwrap();
                        let round: Vec<String> = stack[start..].iter().chain(std::iter::once(next)).map(|s| s.join("::")).collect();
                        found.push(round.join(" → "));
                    }
                    Some(Mark::Done) => {}
                    None => visit(g, next, marks, stack, found),
                }
            }
            stack.pop();
            marks.insert(m.clone(), Mark::Done);
        }
        let mut marks = BTreeMap::new();
        let mut found = vec![];
        for m in self.edges.keys() {
            if !marks.contains_key(m) {
                visit(self, m, &mut marks, &mut vec![], &mut found);
            }
        }
        found
    }
}

impl Graph {
    /// The graph of top-level modules (`executor::kube::render` counts as `executor`), without
    /// `except`.
    fn top_level(&self, except: &str) -> Graph {
        let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
        for (from, tos) in &self.edges {
            if from[0] == except {
                continue;
            }
            let entry = edges.entry(vec![from[0].clone()]).or_default();
            entry.extend(tos.iter().filter(|t| t[0] != from[0] && t[0] != except).map(|t| vec![t[0].clone()]));
        }
        Graph { edges }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn architecture_every_module_imports_only_its_own_layer_and_below() {
    let violations = Graph::read(&src()).layer_violations();
    assert!(violations.is_empty(), "imports against the layers (LAYERS in tests/architecture.rs):\n{}", violations.join("\n"));
}

#[test]
fn architecture_no_file_imports_round_in_a_circle() {
    let cycles = Graph::read(&src()).cycles();
    assert!(cycles.is_empty(), "import cycles between files:\n{}", cycles.join("\n"));
}

/// Between top-level modules too, no cycle — except through `Context`, which holds the services'
/// handles and is handed to their loops: there the rule holds file by file (above).
#[test]
fn architecture_no_module_imports_round_in_a_circle() {
    let cycles = Graph::read(&src()).top_level("context").cycles();
    assert!(cycles.is_empty(), "import cycles between modules:\n{}", cycles.join("\n"));
}

/// The checker itself: a cycle and an upward import written into sources are found, named by
/// file, and a use group is read path by path.
#[test]
fn architecture_checker_finds_a_reintroduced_cycle_and_an_upward_import() {
    let m = |s: &str| s.split("::").map(String::from).collect::<ModPath>();
    let sources = vec![
        (m("store"), "use crate::validate;\n".to_string()),
        (m("validate"), "pub fn ok() {}\n#[cfg(test)]\nmod tests {\n    use crate::router;\n}\n".to_string()),
        (m("rollout::policy"), "use crate::{branch_filter::matches, store::{self, Tenant}};\n".to_string()),
        (m("branch_filter"), "// crate::rollout is only named in a comment\npub fn matches() {}\n".to_string()),
        (m("router"), String::new()),
    ];
    let g = Graph::from_sources(&sources);
    assert!(g.cycles().is_empty(), "{:?}", g.cycles());
    assert!(g.layer_violations().is_empty(), "{:?}", g.layer_violations());
    assert_eq!(g.edges[&m("rollout::policy")], BTreeSet::from([m("branch_filter"), m("store")]));

    // Rollout policies import from the branch filter, which imports rollout back: a cycle.
    let mut cyclic = sources.clone();
    cyclic[3].1.push_str("use crate::rollout::policy;\n");
    let g = Graph::from_sources(&cyclic);
    assert_eq!(g.cycles(), ["branch_filter → rollout::policy → branch_filter"]);
    assert_eq!(g.layer_violations(), ["branch_filter (leaf utilities) uses rollout::policy (services), a layer above it"]);
}
