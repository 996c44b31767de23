//! The tree's structure, checked: the layers and rooms of ARCHITECTURE.md hold in `src/`.
//!
//! It reads the layer list from ARCHITECTURE.md (between `<!-- layers -->` markers, highest
//! layer first) and every `crate::…` path in `src/`, and fails on
//! - an import from a lower layer to a higher one, or a module the list does not place;
//! - an import cycle between top-level modules, or between the children of one module folder;
//! - a table of `store::tables::<room>` named outside that room's bundle `src/<room>/tables.rs`;
//! - a source file whose first line is not a `//!` line saying what it is for.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read src dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The layers, lowest first: each a set of top-level module names.
fn layers(architecture: &str) -> Vec<Vec<String>> {
    let start = architecture
        .find("<!-- layers -->")
        .expect("ARCHITECTURE.md has a <!-- layers --> block");
    let rest = &architecture[start + "<!-- layers -->".len()..];
    let end = rest
        .find("<!-- /layers -->")
        .expect("the layers block ends with <!-- /layers -->");
    let mut layers: Vec<Vec<String>> = rest[..end]
        .lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .filter(|line| !line.trim().starts_with("```"))
        .map(|line| line.split_whitespace().map(str::to_string).collect())
        .filter(|names: &Vec<String>| !names.is_empty())
        .collect();
    layers.reverse();
    layers
}

/// The source with comments and string literals blanked out, so paths in docs and messages do
/// not count as imports.
fn code_only(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let bytes = source.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &source[i..];
        if rest.starts_with("//") {
            let end = rest.find('\n').map_or(source.len(), |n| i + n);
            out.push_str(&" ".repeat(end - i));
            i = end;
        } else if rest.starts_with("r#\"") || rest.starts_with("r\"") {
            let hashes = rest[1..].chars().take_while(|c| *c == '#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let body = 2 + hashes;
            let end = rest[body..]
                .find(&close)
                .map_or(source.len(), |n| i + body + n + close.len());
            out.push_str(&" ".repeat(end - i));
            i = end;
        } else if bytes[i] == b'"' {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != b'"' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(bytes.len());
            out.push_str(&" ".repeat(end - i));
            i = end;
        } else if rest.starts_with("'\"'") {
            out.push_str("   ");
            i += 3;
        } else {
            let c = rest.chars().next().expect("a char");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The first segments after `prefix::` everywhere in `code`, including each item of a group
/// `prefix::{a, b::c}`: (segment, the rest of the path as written).
fn paths_after(code: &str, prefix: &str) -> Vec<(String, String)> {
    let needle = format!("{prefix}::");
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find(&needle) {
        let start = from + at;
        from = start + needle.len();
        if code[..start].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 || (depth == 1 && c == ',') {
                    let item_path = item.trim().trim_start_matches('{').to_string();
                    let first: String = item_path.chars().take_while(|c| is_ident(*c)).collect();
                    if !first.is_empty() {
                        out.push((first, item_path.clone()));
                    }
                    item.clear();
                    if depth == 0 {
                        break;
                    }
                } else {
                    item.push(c);
                }
            }
        } else {
            let path: String = rest
                .chars()
                .take_while(|c| is_ident(*c) || *c == ':')
                .collect();
            let first: String = path.chars().take_while(|c| is_ident(*c)).collect();
            if !first.is_empty() {
                out.push((first, path));
            }
        }
    }
    out
}

/// A source file: its path relative to `src/`, top-level module and code.
struct SourceFile {
    relative: String,
    module: String,
    code: String,
    first_line: String,
}

fn sources() -> Vec<SourceFile> {
    let src = root().join("src");
    rust_files(&src)
        .into_iter()
        .map(|path| {
            let relative = path
                .strip_prefix(&src)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/");
            let module = relative
                .split('/')
                .next()
                .expect("a component")
                .trim_end_matches(".rs")
                .to_string();
            let text = std::fs::read_to_string(&path).expect("read source");
            SourceFile {
                relative,
                module,
                first_line: text.lines().next().unwrap_or("").to_string(),
                code: code_only(&text),
            }
        })
        .collect()
}

/// Imports between top-level modules: (from, to) → the files that make them.
fn module_imports(files: &[SourceFile]) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut edges: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for file in files {
        if file.module == "lib" {
            continue;
        }
        let prefix = if file.module == "main" {
            "keel"
        } else {
            "crate"
        };
        for (target, _) in paths_after(&file.code, prefix) {
            if target != file.module {
                edges
                    .entry((file.module.clone(), target))
                    .or_default()
                    .insert(file.relative.clone());
            }
        }
    }
    edges
}

/// A cycle in `edges`, as the list of nodes around it, if there is one.
fn find_cycle(edges: &BTreeSet<(String, String)>) -> Option<Vec<String>> {
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges {
        graph.entry(from).or_default().push(to);
    }
    fn visit<'a>(
        node: &'a str,
        graph: &BTreeMap<&'a str, Vec<&'a str>>,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(node, 1);
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next) {
                Some(1) => {
                    let at = path.iter().position(|n| n == next).expect("on the path");
                    let mut cycle: Vec<String> = path[at..].iter().map(|s| s.to_string()).collect();
                    cycle.push(next.to_string());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(cycle) = visit(next, graph, state, path) {
                        return Some(cycle);
                    }
                }
            }
        }
        path.pop();
        state.insert(node, 2);
        None
    }
    let mut state = BTreeMap::new();
    let nodes: Vec<&str> = graph.keys().copied().collect();
    for node in nodes {
        if !state.contains_key(node)
            && let Some(cycle) = visit(node, &graph, &mut state, &mut Vec::new())
        {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn imports_point_down_the_layers_of_architecture_md() {
    let architecture =
        std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("read ARCHITECTURE.md");
    let layers = layers(&architecture);
    let layer_of: BTreeMap<&str, usize> = layers
        .iter()
        .enumerate()
        .flat_map(|(n, names)| names.iter().map(move |m| (m.as_str(), n)))
        .collect();
    let files = sources();
    let mut problems = Vec::new();
    let modules: BTreeSet<&str> = files
        .iter()
        .map(|f| f.module.as_str())
        .filter(|m| *m != "lib")
        .collect();
    for module in &modules {
        if !layer_of.contains_key(module) {
            problems.push(format!(
                "module `{module}` is in no layer of ARCHITECTURE.md"
            ));
        }
    }
    for listed in layer_of.keys() {
        if !modules.contains(listed) {
            problems.push(format!(
                "ARCHITECTURE.md places `{listed}`, which is not a module of src/"
            ));
        }
    }
    for ((from, to), places) in module_imports(&files) {
        let (Some(&low), Some(&high)) = (layer_of.get(to.as_str()), layer_of.get(from.as_str()))
        else {
            continue;
        };
        if low > high {
            problems.push(format!(
                "`{from}` (layer {high}) imports `{to}` (layer {low}), a higher layer, in {}",
                places.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn no_import_cycles_between_modules_or_their_children() {
    let files = sources();
    let imports = module_imports(&files);
    let edges: BTreeSet<(String, String)> = imports.keys().cloned().collect();
    if let Some(cycle) = find_cycle(&edges) {
        let detail: Vec<String> = cycle
            .windows(2)
            .map(|w| {
                let places = &imports[&(w[0].clone(), w[1].clone())];
                format!(
                    "{} -> {} (in {})",
                    w[0],
                    w[1],
                    places.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            })
            .collect();
        panic!("import cycle between modules:\n{}", detail.join("\n"));
    }
    // Inside each module folder: its children (files and folders other than mod.rs) import one
    // another one way only.
    let mut children: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let parts: Vec<&str> = file.relative.split('/').collect();
        if parts.len() >= 2 && parts[1] != "mod.rs" {
            children
                .entry(parts[0].to_string())
                .or_default()
                .insert(parts[1].trim_end_matches(".rs").to_string());
        }
    }
    let mut cycles = Vec::new();
    for (module, kids) in &children {
        let mut edges = BTreeSet::new();
        for file in files.iter().filter(|f| &f.module == module) {
            let parts: Vec<&str> = file.relative.split('/').collect();
            if parts.len() < 2 || parts[1] == "mod.rs" {
                continue;
            }
            let from = parts[1].trim_end_matches(".rs").to_string();
            let mut targets: Vec<String> = paths_after(&file.code, &format!("crate::{module}"))
                .into_iter()
                .map(|(first, _)| first)
                .collect();
            if parts.len() == 2 {
                targets.extend(paths_after(&file.code, "super").into_iter().map(|(f, _)| f));
            }
            for to in targets {
                if kids.contains(&to) && to != from {
                    edges.insert((from.clone(), to));
                }
            }
        }
        if let Some(cycle) = find_cycle(&edges) {
            cycles.push(format!(
                "import cycle between the children of `{module}`: {}",
                cycle.join(" -> ")
            ));
        }
    }
    assert!(cycles.is_empty(), "{}", cycles.join("\n"));
}

/// The rooms that own tables: the `pub mod` groups of `src/store/tables.rs`.
fn table_rooms() -> Vec<String> {
    let tables = std::fs::read_to_string(root().join("src/store/tables.rs")).expect("read tables");
    code_only(&tables)
        .lines()
        .filter_map(|line| line.trim().strip_prefix("pub mod "))
        .map(|rest| rest.trim_end_matches(['{', ' ']).to_string())
        .collect()
}

/// Whether `code` names the table group `room` (`tables::room::…`, `tables::room;` or inside a
/// group `tables::{room::…}`).
fn names_tables_of(code: &str, room: &str) -> bool {
    paths_after(code, "tables")
        .into_iter()
        .any(|(first, _)| first == room)
}

#[test]
fn tables_are_named_only_by_their_rooms_bundle() {
    let rooms = table_rooms();
    assert!(rooms.len() >= 5, "found the table groups: {rooms:?}");
    let mut problems = Vec::new();
    for file in sources() {
        if file.module == "store" {
            continue;
        }
        for room in &rooms {
            let bundle = format!("{room}/tables.rs");
            if names_tables_of(&file.code, room) && file.relative != bundle {
                problems.push(format!(
                    "src/{} names `tables::{room}`: only src/{bundle} may open the {room} room's tables",
                    file.relative
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_module_says_what_it_is_for() {
    let missing: Vec<String> = sources()
        .into_iter()
        .filter(|f| !f.first_line.starts_with("//!"))
        .map(|f| format!("src/{} does not start with a `//!` line", f.relative))
        .collect();
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn the_checks_see_imports_groups_and_cycles() {
    let code = code_only(
        "use crate::{audit::Audit, store::{Store, codec}};\n// crate::http in a comment\nlet s = \"crate::app\"; crate::queue::Queue::new();",
    );
    let found: Vec<String> = paths_after(&code, "crate")
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    assert_eq!(found, ["audit", "store", "queue"]);
    let grouped = code_only("use crate::store::tables::{queue::TASKS, exec::CIRCUITS};");
    assert!(names_tables_of(&grouped, "exec") && names_tables_of(&grouped, "queue"));
    assert!(!names_tables_of(&grouped, "cycles"));
    let edges: BTreeSet<(String, String)> = [("a", "b"), ("b", "c"), ("c", "a")]
        .iter()
        .map(|(x, y)| (x.to_string(), y.to_string()))
        .collect();
    assert_eq!(
        find_cycle(&edges),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let acyclic: BTreeSet<(String, String)> = [("a", "b"), ("a", "c"), ("b", "c")]
        .iter()
        .map(|(x, y)| (x.to_string(), y.to_string()))
        .collect();
    assert_eq!(find_cycle(&acyclic), None);
}

#[test]
fn the_readme_lists_every_route_with_its_role() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("read README.md");
    let mut missing = Vec::new();
    for route in keel::http::routes() {
        let written = format!("{} {}", route.method, route.path);
        // The route as written in a table row: `METHOD /path`, maybe with `?query` after it.
        let row = readme.lines().find(|line| {
            line.starts_with('|')
                && line.match_indices(&format!("`{written}")).any(|(at, _)| {
                    matches!(
                        line[at + written.len() + 1..].chars().next(),
                        Some('`' | '?')
                    )
                })
        });
        match row {
            None => missing.push(format!("{written} is in no table of README.md")),
            Some(row) => {
                let role = match route.access {
                    keel::http::Access::Public => None,
                    keel::http::Access::Role(role) | keel::http::Access::Session(role) => {
                        Some(role.as_str())
                    }
                };
                if let Some(role) = role
                    && !row.contains(role)
                {
                    missing.push(format!(
                        "the README row of {written} does not name its role {role}"
                    ));
                }
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}
