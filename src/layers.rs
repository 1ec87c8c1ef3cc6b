//! The floors of the house, held by a test: each layer names only the
//! layers below it, read from the `crate::…` paths of its files (in `use`
//! lines and in code). Run `cargo test --lib layers -- --nocapture` to see
//! the picture: the layers with their files and lines, every import that
//! points up, the circles among files, and the largest files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first; a module's layer is its first path segment
/// under `crate`. Modules on one floor may not name each other.
const FLOORS: &[&[&str]] = &[
    // The ground floor: imports nothing of mama's.
    &["text", "os", "exit", "net"],
    &["error"],
    &["settings"],
    &["model"],
    &["format", "device"],
    &["backend"],
    &["engine"],
    &["cli"],
    // `mama serve`, on the command line's views.
    &["serve"],
];

fn floor_of(module: &str) -> Option<usize> {
    FLOORS.iter().position(|floor| floor.contains(&module))
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text of `source` without its comments (doc links name modules
/// they do not import).
fn code_of(source: &str) -> String {
    source
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module path a file stands for: `backend/file/mod.rs` is
/// `backend::file`.
fn module_path(rel: &Path) -> String {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// The modules `code` names as `crate::a::b…`, longest first match of a
/// file's module.
fn named_modules(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let tail = &rest[at + "crate::".len()..];
        // `crate::{a::x, b}`: each item of the group.
        if let Some(group) = tail.strip_prefix('{') {
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        names.insert(item.trim().trim_end_matches(':').to_string());
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 && c != '}' {
                    item.push(c);
                }
            }
            names.insert(item.trim().trim_end_matches(':').to_string());
            rest = group;
            continue;
        }
        let path: String = tail
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        names.insert(path.trim_end_matches(':').to_string());
        rest = tail;
    }
    names
}

struct Picture {
    /// File (module path) to its lines.
    lines: BTreeMap<String, usize>,
    /// File to the files it names.
    edges: BTreeMap<String, BTreeSet<String>>,
    /// (from file, to module) that point up or sideways across floors.
    upward: Vec<(String, String)>,
}

fn picture() -> Picture {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut lines = BTreeMap::new();
    let mut texts = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap_or(file);
        let text = std::fs::read_to_string(file).unwrap_or_default();
        lines.insert(module_path(rel), text.lines().count());
        texts.insert(module_path(rel), code_of(&text));
    }
    let modules: Vec<String> = lines.keys().cloned().collect();
    // The file a path names: the longest module path it starts with.
    let file_of = |path: &str| {
        modules
            .iter()
            .filter(|m| path == m.as_str() || path.starts_with(&format!("{m}::")))
            .max_by_key(|m| m.len())
            .cloned()
    };
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut upward = Vec::new();
    for (module, code) in &texts {
        let top = module.split("::").next().unwrap_or_default();
        let from = floor_of(top);
        for named in named_modules(code) {
            let to_top = named.split("::").next().unwrap_or_default();
            if let Some(target) = file_of(&named)
                && target != *module
            {
                edges.entry(module.clone()).or_default().insert(target);
            }
            if to_top == top {
                continue;
            }
            match (from, floor_of(to_top)) {
                (Some(from), Some(to)) if to < from => {}
                // The crate's root and the binary may name any floor.
                (None, _) if matches!(top, "lib" | "main" | "layers") => {}
                _ => upward.push((module.clone(), named.clone())),
            }
        }
    }
    Picture {
        lines,
        edges,
        upward,
    }
}

/// The circles among files: strongly connected sets of more than one file
/// (Tarjan's algorithm). A module folder's `mod.rs` and the files it holds
/// count like any others.
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Tarjan<'e> {
        edges: &'e BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<String, usize>,
        low: BTreeMap<String, usize>,
        stack: Vec<String>,
        on_stack: BTreeSet<String>,
        found: Vec<Vec<String>>,
    }
    impl Tarjan<'_> {
        fn visit(&mut self, node: &str) {
            let n = self.index.len();
            self.index.insert(node.to_string(), n);
            self.low.insert(node.to_string(), n);
            self.stack.push(node.to_string());
            self.on_stack.insert(node.to_string());
            let next: Vec<String> = self
                .edges
                .get(node)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
            for to in next {
                if !self.index.contains_key(&to) {
                    self.visit(&to);
                    let low = self.low[&to].min(self.low[node]);
                    self.low.insert(node.to_string(), low);
                } else if self.on_stack.contains(&to) {
                    let low = self.index[&to].min(self.low[node]);
                    self.low.insert(node.to_string(), low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut set = Vec::new();
                while let Some(top) = self.stack.pop() {
                    self.on_stack.remove(&top);
                    let done = top == node;
                    set.push(top);
                    if done {
                        break;
                    }
                }
                if set.len() > 1 {
                    set.sort();
                    self.found.push(set);
                }
            }
        }
    }
    let mut tarjan = Tarjan {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    let nodes: Vec<String> = edges.keys().cloned().collect();
    for node in nodes {
        if !tarjan.index.contains_key(&node) {
            tarjan.visit(&node);
        }
    }
    tarjan.found
}

#[test]
fn grouped_imports_are_read_item_by_item() {
    let names = named_modules("use crate::{cli::render, model::{Lab, field}, os};");
    assert!(
        names.contains("cli::render") && names.contains("model") && names.contains("os"),
        "{names:?}"
    );
}

#[test]
fn every_layer_names_only_the_layers_below_it() {
    let picture = picture();
    println!("floors, lowest first (files, lines):");
    for floor in FLOORS {
        for top in *floor {
            let files: Vec<(&String, &usize)> = picture
                .lines
                .iter()
                .filter(|(m, _)| m.split("::").next() == Some(top))
                .collect();
            let total: usize = files.iter().map(|(_, n)| **n).sum();
            println!("  {top:9} {:3} files {total:6} lines", files.len());
        }
    }
    println!("imports that point up: {}", picture.upward.len());
    for (from, to) in &picture.upward {
        println!("  {from} -> crate::{to}");
    }
    let found = circles(&picture.edges);
    // A folder's mod.rs and its files may name each other (the folder is
    // one idea); a circle that spans folders is a defect.
    let across: Vec<&Vec<String>> = found
        .iter()
        .filter(|set| {
            let folder = |m: &String| {
                m.rsplit_once("::")
                    .map_or(m.clone(), |(f, _)| f.to_string())
            };
            let first = &set[0];
            !set.iter().all(|m| {
                folder(m) == folder(first)
                    || m.starts_with(&format!("{first}::"))
                    || first.starts_with(&format!("{m}::"))
                    || folder(m) == *first
                    || folder(first) == *m
            })
        })
        .collect();
    println!(
        "circles among files: {} ({} across folders)",
        found.len(),
        across.len()
    );
    for set in &found {
        println!("  {}", set.join(" <-> "));
    }
    let mut largest: Vec<(&String, &usize)> = picture.lines.iter().collect();
    largest.sort_by(|a, b| b.1.cmp(a.1));
    println!("largest files:");
    for (module, lines) in largest.iter().take(8) {
        println!("  {lines:6} {module}");
    }
    assert!(
        picture.upward.is_empty(),
        "imports that point up: {:?}",
        picture.upward
    );
    assert!(across.is_empty(), "circles across folders: {across:?}");
}
